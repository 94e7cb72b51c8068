//! From the data plane to the telemetry thread. Every thread that records gets a ring of its
//! own (single producer, single consumer: a push is one store and one release, with no
//! read-modify-write on a cache line another core writes), registered with the hub the first
//! time that thread records. The telemetry thread drains all rings; nothing wakes it. A full
//! ring drops the event and counts it: the hot path never waits.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::SystemTime;

use super::RequestEvent;

/// The handle the data plane keeps.
#[derive(Clone)]
pub struct Telemetry {
    hub: Arc<Hub>,
}

/// What a request keeps to record itself when it ends: a plain number, so taking one costs
/// no reference count.
#[derive(Clone, Copy)]
pub struct Sink {
    hub: u64,
}

/// The consumer side, owned by the telemetry thread.
pub struct Events {
    hub: Arc<Hub>,
}

struct Hub {
    id: u64,
    capacity: usize,
    rings: Mutex<Vec<Ring>>,
    /// Drops counted by rings whose thread has ended.
    retired_drops: AtomicU64,
}

struct Ring {
    events: rtrb::Consumer<RequestEvent>,
    dropped: Arc<AtomicU64>,
}

struct Producer {
    hub: u64,
    events: rtrb::Producer<RequestEvent>,
    dropped: Arc<AtomicU64>,
}

thread_local! {
    static PRODUCERS: RefCell<Vec<Producer>> = const { RefCell::new(Vec::new()) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Live hubs by id, consulted only when a thread records into a hub for the first time.
fn hubs() -> &'static Mutex<Vec<(u64, Weak<Hub>)>> {
    static HUBS: Mutex<Vec<(u64, Weak<Hub>)>> = Mutex::new(Vec::new());
    &HUBS
}

impl Telemetry {
    /// A hub whose rings hold up to `capacity` events per recording thread.
    pub fn new(capacity: usize) -> (Telemetry, Events) {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let hub = Arc::new(Hub {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            capacity: capacity.max(1),
            rings: Mutex::new(Vec::new()),
            retired_drops: AtomicU64::new(0),
        });
        let mut all = lock(hubs());
        all.retain(|(_, h)| h.strong_count() > 0);
        all.push((hub.id, Arc::downgrade(&hub)));
        (Telemetry { hub: hub.clone() }, Events { hub })
    }

    pub fn sink(&self) -> Sink {
        Sink { hub: self.hub.id }
    }

    /// Events dropped because a ring was full (the hot path never waits).
    pub fn dropped(&self) -> u64 {
        let live: u64 = lock(&self.hub.rings).iter().map(|r| r.dropped.load(Ordering::Relaxed)).sum();
        live + self.hub.retired_drops.load(Ordering::Relaxed)
    }
}

impl Sink {
    /// Queues `e` on this thread's ring. Dropped (and counted) when the ring is full; dropped
    /// silently when the hub is gone or the thread is ending.
    pub fn record(self, e: RequestEvent) {
        let _ = PRODUCERS.try_with(|producers| {
            let Ok(mut producers) = producers.try_borrow_mut() else { return };
            let i = match producers.iter().position(|p| p.hub == self.hub) {
                Some(i) => i,
                None => {
                    producers.retain(|p| !p.events.is_abandoned());
                    let Some(p) = register(self.hub) else { return };
                    producers.push(p);
                    producers.len() - 1
                }
            };
            if let Some(p) = producers.get_mut(i)
                && p.events.push(e).is_err()
            {
                p.dropped.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}

/// A new ring for the calling thread, its consumer handed to the hub.
fn register(id: u64) -> Option<Producer> {
    let hub = lock(hubs()).iter().find(|(i, _)| *i == id).and_then(|(_, h)| h.upgrade())?;
    let (events, consumer) = rtrb::RingBuffer::new(hub.capacity);
    let dropped = Arc::new(AtomicU64::new(0));
    lock(&hub.rings).push(Ring { events: consumer, dropped: dropped.clone() });
    Some(Producer { hub: id, events, dropped })
}

impl Events {
    /// Hands up to `limit` of the events queued when it starts to `f`, merged across threads
    /// by start time (each ring is in completion order, so the merge is close to, not
    /// exactly, start order), and forgets the rings of threads that have ended. Returns how
    /// many it handed; fewer than `limit` means the queue was emptied (as far as it was when
    /// the drain started). A thread recording for the first time waits for the drain to end:
    /// keep `f` short.
    pub fn drain(&mut self, limit: usize, mut f: impl FnMut(RequestEvent)) -> usize {
        let mut rings = lock(&self.hub.rings);
        // Bounded by what is queued now: a drain ends even while recording goes on.
        let queued: usize = rings.iter().map(|r| r.events.slots()).sum();
        let mut handed = 0;
        for _ in 0..queued.min(limit) {
            let mut first: Option<(usize, SystemTime)> = None;
            for (i, r) in rings.iter().enumerate() {
                if let Ok(e) = r.events.peek()
                    && first.is_none_or(|(_, t)| e.ts < t)
                {
                    first = Some((i, e.ts));
                }
            }
            let Some(e) = first.and_then(|(i, _)| rings.get_mut(i)).and_then(|r| r.events.pop().ok()) else {
                break;
            };
            f(e);
            handed += 1;
        }
        rings.retain(|r| {
            let ended = r.events.is_abandoned() && r.events.is_empty();
            if ended {
                self.hub.retired_drops.fetch_add(r.dropped.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            !ended
        });
        handed
    }

    /// No [`Telemetry`] handle is left: whatever is still queued is the last of it.
    pub fn closed(&self) -> bool {
        Arc::strong_count(&self.hub) == 1
    }

    /// The ring size per recording thread.
    pub fn capacity(&self) -> usize {
        self.hub.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::test_event;
    use std::time::Duration;

    fn at(ms: u64) -> RequestEvent {
        let mut e = test_event();
        e.ts = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        e.status = ms as u16;
        e
    }

    #[test]
    fn events_from_several_threads_arrive_in_start_order_and_full_rings_count_drops() {
        let (t, mut events) = Telemetry::new(4);
        let sink = t.sink();
        // Two recording threads, interleaved start times; the second overfills its ring.
        std::thread::scope(|s| {
            s.spawn(|| [1, 4, 6].into_iter().for_each(|ms| sink.record(at(ms))));
            s.spawn(|| [2, 3, 5, 7, 8].into_iter().for_each(|ms| sink.record(at(ms))));
        });
        t.sink().record(at(0));
        let mut out = Vec::new();
        // In chunks: a limited drain hands the earliest, and the next one goes on from there.
        assert_eq!(events.drain(3, |e| out.push(e)), 3);
        assert_eq!(events.drain(usize::MAX, |e| out.push(e)), 5);
        let order: Vec<u16> = out.iter().map(|e| e.status).collect();
        assert_eq!(order, [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(t.dropped(), 1, "the fifth event of a 4-slot ring is dropped, and counted");
        // The two threads have ended (their thread-locals go just after `join` returns): their
        // rings are forgotten by a later drain, their drops kept.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while lock(&events.hub.rings).len() > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            assert_eq!(events.drain(usize::MAX, |e| out.push(e)), 0);
        }
        assert_eq!(lock(&events.hub.rings).len(), 1);
        assert_eq!(t.dropped(), 1);
        assert!(!events.closed());
        drop(t);
        assert!(events.closed());
        // A request still holding a sink after the hub is gone: nothing breaks, and the next
        // registration on this thread forgets the dead ring.
        drop(events);
        sink.record(at(9));
        let (t2, mut events2) = Telemetry::new(4);
        t2.sink().record(at(10));
        assert_eq!(PRODUCERS.with(|p| p.borrow().len()), 1);
        out.clear();
        assert_eq!(events2.drain(usize::MAX, |e| out.push(e)), 1);
        assert_eq!(out[0].status, 10, "hubs keep their own rings");
    }
}

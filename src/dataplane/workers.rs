//! Data-plane worker threads, as Envoy's: each accepted connection is handed (round robin) to
//! one worker, a single-threaded runtime that runs it and every upstream connection it opens.
//! Connection pools are per worker ([`PerWorker`]), so a request never crosses threads; that
//! halves the cycles per request compared with a work-stealing runtime (docs/PERFORMANCE.md).
//!
//! Every sidecar and gateway of a mesh lives in this one process, so a mesh hop (a sidecar or
//! the gateway calling another sidecar's inbound listener) is a connection from devmesh to
//! itself. Its accepted end goes to the worker that runs its connecting end ([`LocalEnd`]):
//! a request then crosses the hop without waking another thread, where Envoy sidecars in two
//! pods wake two. Other connections are dealt round robin.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::mpsc;

use super::tcp::Tcp;

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the worker running the caller (0 outside workers).
pub fn current() -> usize {
    index().unwrap_or(0)
}

/// The index of the worker running the caller, `None` outside workers.
pub fn index() -> Option<usize> {
    WORKER.with(|w| w.get())
}

/// devmesh's own connections to loopback addresses: the workers running their connecting
/// ends, by the connections' local addresses, and the connects still in flight, by
/// destination (a connection can be accepted before its local address is known: on
/// loopback the handshake completes inside the `connect` call).
#[derive(Default)]
struct Ends {
    by_local: HashMap<SocketAddr, usize>,
    /// (destination, worker) of every connect in flight; a handful at a time.
    connecting: Vec<(SocketAddr, usize)>,
}

impl Ends {
    /// The worker connecting to `dest`, when exactly one is.
    fn connecting_to(&self, dest: SocketAddr) -> Option<usize> {
        let mut workers = self.connecting.iter().filter(|(d, _)| *d == dest).map(|(_, w)| *w);
        let first = workers.next()?;
        workers.all(|w| w == first).then_some(first)
    }

    fn forget_connect(&mut self, dest: SocketAddr, worker: usize) {
        if let Some(i) = self.connecting.iter().position(|e| *e == (dest, worker)) {
            self.connecting.swap_remove(i);
        }
    }
}

fn local_ends() -> &'static Mutex<Ends> {
    static ENDS: OnceLock<Mutex<Ends>> = OnceLock::new();
    ENDS.get_or_init(Mutex::default)
}

fn ends() -> std::sync::MutexGuard<'static, Ends> {
    match local_ends().lock() {
        Ok(e) => e,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A connect from a worker to a loopback address, in flight: recorded before the `connect`
/// call, so that devmesh, accepting the connection before its local address is known, can
/// still tell which worker makes it. Becomes a [`LocalEnd`] once the local address is known;
/// dropped (a failed connect), it is forgotten.
#[derive(Debug)]
pub struct Connecting {
    dest: SocketAddr,
    worker: usize,
}

impl Connecting {
    pub fn start(dest: SocketAddr, worker: usize) -> Connecting {
        ends().connecting.push((dest, worker));
        Connecting { dest, worker }
    }

    /// The connection has its local address: from now on it is known by it.
    pub fn established(self, local: SocketAddr) -> LocalEnd {
        let mut e = ends();
        e.by_local.insert(local, self.worker);
        e.forget_connect(self.dest, self.worker);
        std::mem::forget(self);
        LocalEnd(local)
    }
}

impl Drop for Connecting {
    fn drop(&mut self) {
        ends().forget_connect(self.dest, self.worker);
    }
}

/// The connecting end of one of devmesh's connections to a loopback address, recorded with
/// the worker running it for as long as the connection lives, so that devmesh, accepting the
/// other end, runs it on the same worker. Recorded once per upstream connection (pools keep
/// them) and looked up once per accepted connection from a loopback address.
#[derive(Debug)]
pub struct LocalEnd(SocketAddr);

impl LocalEnd {
    #[cfg(test)]
    pub fn record(local: SocketAddr, worker: usize) -> LocalEnd {
        ends().by_local.insert(local, worker);
        LocalEnd(local)
    }
}

impl Drop for LocalEnd {
    fn drop(&mut self) {
        ends().by_local.remove(&self.0);
    }
}

/// The worker running the connecting end of a connection devmesh accepted from `peer`, when
/// devmesh made it.
fn worker_of(peer: SocketAddr) -> Option<usize> {
    if !peer.ip().is_loopback() {
        return None;
    }
    ends().by_local.get(&peer).copied()
}

/// [`worker_of`], or, while the connecting end's address is not recorded yet, the one worker
/// connecting to `local` (the accepted connection's own address), if only one is.
fn worker_for(peer: SocketAddr, local: impl FnOnce() -> Option<SocketAddr>) -> Option<usize> {
    if !peer.ip().is_loopback() {
        return None;
    }
    {
        let e = ends();
        if let Some(w) = e.by_local.get(&peer) {
            return Some(*w);
        }
        if e.connecting.is_empty() {
            return None;
        }
    }
    // A system call: not under the lock.
    let local = local()?;
    ends().connecting_to(local)
}

pub struct Workers {
    senders: Senders,
    next: AtomicUsize,
}

type Senders = Arc<[mpsc::UnboundedSender<Job>]>;

/// How many workers: `DEVMESH_CONCURRENCY`, else one per core up to 4.
pub fn default_count() -> usize {
    std::env::var("DEVMESH_CONCURRENCY")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()).min(4))
        .max(1)
}

impl Workers {
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let mut senders = Vec::with_capacity(count);
        for i in 0..count.max(1) {
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            // I/O and timers (the same as `enable_all`). With tokio's `process` feature on,
            // the I/O driver carries the process driver, which tries a global lock for
            // orphaned children at every park (~0.3% of a worker's cycles under load).
            let rt = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
            std::thread::Builder::new().name(format!("devmesh-worker-{i}")).spawn(move || {
                WORKER.with(|w| w.set(Some(i)));
                rt.block_on(async move {
                    while let Some(job) = rx.recv().await {
                        tokio::spawn(job);
                    }
                });
            })?;
            senders.push(tx);
        }
        Ok(Workers { senders: senders.into(), next: AtomicUsize::new(0) })
    }

    pub fn count(&self) -> usize {
        self.senders.len()
    }

    /// Runs a connection on a worker (the one running its other end when devmesh made it,
    /// else the next one): `handle` gets the stream registered with that worker's runtime.
    pub fn connection<F, Fut>(&self, stream: tokio::net::TcpStream, peer: SocketAddr, handle: F)
    where
        F: FnOnce(Tcp, SocketAddr) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let found = worker_for(peer, || stream.local_addr().ok());
        // devmesh's own hops may use the reserve above the cap for outside connections.
        let Some(permit) = super::admission::admit(found.is_some()) else {
            return;
        };
        let handle = move |s: Tcp, p: SocketAddr| {
            let conn = handle(s, p);
            async move {
                conn.await;
                drop(permit);
            }
        };
        let std = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot hand a connection to a worker: {e}");
                return;
            }
        };
        let (i, known) = match found {
            Some(i) if i < self.senders.len() => (i, true),
            _ => (self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len(), false),
        };
        // devmesh's own connecting end records its address right after its `connect` call,
        // and the accept can come first: such a connection is looked up again on its worker.
        let look_again = !known && peer.ip().is_loopback();
        dispatch(self.senders.clone(), i, std, peer, handle, look_again);
    }
}

/// Sends a connection to worker `i`; with `look_again`, the worker first checks whether
/// another worker runs its other end and passes it on (nothing read or registered yet).
fn dispatch<F, Fut>(senders: Senders, i: usize, std: std::net::TcpStream, peer: SocketAddr, handle: F, look_again: bool)
where
    F: FnOnce(Tcp, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let to = senders.clone();
    let job: Job = Box::pin(async move {
        if look_again
            && let Some(j) = worker_of(peer)
            && j != i
            && j < senders.len()
        {
            return dispatch(senders, j, std, peer, handle, false);
        }
        match Tcp::from_std(std) {
            Ok(s) => handle(s, peer).await,
            Err(e) => tracing::warn!("worker cannot register a connection: {e}"),
        }
    });
    if to[i].send(job).is_err() {
        tracing::warn!("worker {i} is gone; connection from {peer} dropped");
    }
}

/// One value per worker (connection pools), reached from the worker that runs the caller.
pub struct PerWorker<T> {
    items: Vec<T>,
}

impl<T> PerWorker<T> {
    pub fn new(count: usize, make: impl Fn() -> T) -> PerWorker<T> {
        PerWorker { items: (0..count.max(1)).map(|_| make()).collect() }
    }

    pub fn get(&self) -> &T {
        &self.items[current() % self.items.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_run_on_workers_round_robin() {
        let workers = Workers::start(2).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        for _ in 0..4 {
            let _client = std::net::TcpStream::connect(addr).unwrap();
            let (s, peer) = listener.accept().await.unwrap();
            let tx = tx.clone();
            workers.connection(s, peer, move |_s, _| async move {
                let _ = tx.send((current(), std::thread::current().name().map(str::to_string)));
            });
        }
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(rx.recv().await.unwrap());
        }
        seen.sort();
        assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), [0, 0, 1, 1]);
        assert!(seen.iter().all(|(i, name)| name.as_deref() == Some(&format!("devmesh-worker-{i}")[..])));
        let per = PerWorker::new(2, || 7);
        assert_eq!(*per.get(), 7);
    }

    #[tokio::test]
    async fn a_worker_connecting_to_a_closed_loopback_port_is_refused_as_tokio_would_say() {
        let workers = Workers::start(1).unwrap();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::pin(async move {
            let _ = tx.send((index(), Tcp::connect(closed).await.map(|_| ()).map_err(|e| e.kind())));
        });
        assert!(workers.senders[0].send(job).is_ok());
        let (on, result) = rx.await.unwrap();
        assert_eq!(on, Some(0), "the recording connect path ran");
        assert_eq!(result, Err(std::io::ErrorKind::ConnectionRefused));
    }

    #[tokio::test]
    async fn a_connection_devmesh_makes_to_itself_is_accepted_on_the_worker_that_made_it() {
        let workers = std::sync::Arc::new(Workers::start(2).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ran_on, mut ran) = mpsc::unbounded_channel();
        let (made_tx, mut made) = mpsc::unbounded_channel();
        let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
        // Worker 1 opens four connections (a sidecar's pool) and keeps them until told.
        let connecting = workers.senders[1].clone();
        let job: Job = Box::pin(async move {
            let mut held = Vec::new();
            for _ in 0..4 {
                let tcp = Tcp::connect(addr).await.unwrap();
                made_tx.send((current(), tcp.local_addr().unwrap())).unwrap();
                held.push(tcp);
            }
            let _ = done.await;
        });
        assert!(connecting.send(job).is_ok());
        let mut locals = Vec::new();
        for _ in 0..4 {
            let (s, peer) = listener.accept().await.unwrap();
            let (by, local) = made.recv().await.unwrap();
            locals.push(local);
            assert_eq!((by, local), (1, peer), "made on worker 1, from the address devmesh accepts");
            let ran_on = ran_on.clone();
            workers.connection(s, peer, move |_s, _| async move {
                let _ = ran_on.send(current());
            });
        }
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(ran.recv().await.unwrap());
        }
        assert_eq!(seen, [1, 1, 1, 1], "round robin would have given 0 and 1 in turn");
        // Closed connections are forgotten; a connection from elsewhere is dealt round robin.
        assert!(locals.iter().all(|l| worker_of(*l) == Some(1)));
        done_tx.send(()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while locals.iter().any(|l| worker_of(*l).is_some()) {
            assert!(std::time::Instant::now() < deadline, "closed connections stay recorded");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let client = std::net::TcpStream::connect(addr).unwrap();
        assert_eq!(worker_of(client.local_addr().unwrap()), None);

        // Accepted before its other end was recorded: worker 0 (round robin; held busy here
        // until the record exists) passes it on to worker 1, which runs the other end.
        let fresh = Workers::start(2).unwrap();
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let busy: Job = Box::pin(async move {
            let _ = hold.recv();
        });
        assert!(fresh.senders[0].send(busy).is_ok());
        let (s, peer) = listener.accept().await.unwrap();
        let ran_on = ran_on.clone();
        fresh.connection(s, peer, move |_s, _| async move {
            let _ = ran_on.send(current());
        });
        let _end = LocalEnd::record(peer, 1);
        release.send(()).unwrap();
        assert_eq!(ran.recv().await.unwrap(), 1, "looked up again on the worker it was dealt to");
        drop(client);
    }

    #[tokio::test]
    async fn a_connection_accepted_while_its_connect_is_in_flight_runs_on_the_connecting_worker() {
        // On loopback the handshake completes inside `connect`, so devmesh can accept a
        // connection before the connecting worker has learnt (and recorded) its local
        // address; with one vCPU the accepting thread often runs first. The connect in
        // flight is known by its destination: here a plain client stands for it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ran_on, mut ran) = mpsc::unbounded_channel();
        let run = |workers: &Workers, s, peer| {
            let ran_on = ran_on.clone();
            workers.connection(s, peer, move |_s, _| async move {
                let _ = ran_on.send(current());
            });
        };

        let workers = Workers::start(2).unwrap();
        let in_flight = Connecting::start(addr, 1);
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let (s, peer) = listener.accept().await.unwrap();
        run(&workers, s, peer);
        assert_eq!(ran.recv().await.unwrap(), 1, "round robin would have dealt it to worker 0");

        // Two workers connecting to the same place: no telling which, so round robin.
        let other = Connecting::start(addr, 0);
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let (s, peer) = listener.accept().await.unwrap();
        run(&workers, s, peer);
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let (s, peer) = listener.accept().await.unwrap();
        run(&workers, s, peer);
        let mut dealt = [ran.recv().await.unwrap(), ran.recv().await.unwrap()];
        dealt.sort();
        assert_eq!(dealt, [0, 1]);

        // Established, the connect is known by its local address only; failed, it is forgotten.
        let local: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let end = in_flight.established(local);
        assert_eq!(worker_of(local), Some(1));
        drop(other);
        assert_eq!(ends().connecting_to(addr), None, "nothing in flight to {addr}");
        drop(end);
        assert_eq!(worker_of(local), None);
    }
}

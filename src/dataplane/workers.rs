//! Data-plane worker threads, as Envoy's: each accepted connection is handed (round robin) to
//! one worker, a single-threaded runtime that runs it and every upstream connection it opens.
//! Connection pools are per worker ([`PerWorker`]), so a request never crosses threads; that
//! halves the cycles per request compared with a work-stealing runtime (docs/PERFORMANCE.md).

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

use super::tcp::Tcp;

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The index of the worker running the caller (0 outside workers).
pub fn current() -> usize {
    WORKER.with(|w| w.get())
}

pub struct Workers {
    senders: Vec<mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
}

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
                WORKER.with(|w| w.set(i));
                rt.block_on(async move {
                    while let Some(job) = rx.recv().await {
                        tokio::spawn(job);
                    }
                });
            })?;
            senders.push(tx);
        }
        Ok(Workers { senders, next: AtomicUsize::new(0) })
    }

    pub fn count(&self) -> usize {
        self.senders.len()
    }

    /// Runs a connection on the next worker: `handle` gets the stream registered with that
    /// worker's runtime.
    pub fn connection<F, Fut>(&self, stream: tokio::net::TcpStream, peer: SocketAddr, handle: F)
    where
        F: FnOnce(Tcp, SocketAddr) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let std = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot hand a connection to a worker: {e}");
                return;
            }
        };
        let job: Job = Box::pin(async move {
            match Tcp::from_std(std) {
                Ok(s) => handle(s, peer).await,
                Err(e) => tracing::warn!("worker cannot register a connection: {e}"),
            }
        });
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        if self.senders[i].send(job).is_err() {
            tracing::warn!("worker {i} is gone; connection from {peer} dropped");
        }
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
}

//! Listening: accept loops with an owner and a stop signal, protocol sniffing of the first
//! bytes (TLS, HTTP/1, HTTP/2 preface), and serving HTTP on any byte stream.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::body::{Body, ProxyBody};
use super::clock;
use super::h1_server;
use super::rewind::Rewind;

/// How long to wait for a client's first bytes before treating a connection as opaque TCP
/// (server-first protocols send nothing). Istio's protocol detection timeout is similar.
pub const SNIFF_TIMEOUT: Duration = Duration::from_millis(100);

/// Accepts connections until `stop`; each goes to `on_conn` (which spawns its own task).
pub async fn accept_loop(listener: TcpListener, stop: CancellationToken, on_conn: impl Fn(TcpStream, SocketAddr)) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    on_conn(stream, peer);
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept on {:?} failed: {e}", listener.local_addr().ok());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    Tls,
    Http1,
    Http2,
    /// Anything else, including silence (server-first protocols).
    Opaque,
}

const METHODS: [&[u8]; 9] =
    [b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE "];
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Classifies the first bytes seen so far: `None` means "need more".
pub fn classify(buf: &[u8]) -> Option<Sniffed> {
    if buf.is_empty() {
        return None;
    }
    if buf[0] == 0x16 {
        return Some(Sniffed::Tls);
    }
    let n = buf.len();
    if H2_PREFACE.starts_with(&buf[..n.min(H2_PREFACE.len())]) {
        return if n >= H2_PREFACE.len() { Some(Sniffed::Http2) } else { None };
    }
    let mut maybe = false;
    for m in METHODS {
        if n >= m.len() && buf.starts_with(m) {
            return Some(Sniffed::Http1);
        }
        if n < m.len() && m.starts_with(buf) {
            maybe = true;
        }
    }
    if maybe { None } else { Some(Sniffed::Opaque) }
}

/// Peeks at the first bytes of a connection without consuming them.
pub async fn sniff(stream: &TcpStream, wait: Duration) -> Sniffed {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 24];
    loop {
        let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await;
        let n = match peeked {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Sniffed::Opaque,
            Ok(Ok(n)) => n,
        };
        if let Some(kind) = classify(&buf[..n]) {
            return kind;
        }
        if tokio::time::Instant::now() >= deadline {
            return Sniffed::Opaque;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpMode {
    /// HTTP/1.1 or HTTP/2 prior knowledge, detected.
    Auto,
    Http1,
    Http2,
}

/// Serves HTTP on `io` until the connection ends; `handle` answers every request. HTTP/1.1
/// goes through the in-task server (`h1_server.rs`), which hands a connection to hyper's
/// server when a request needs it (and for HTTP/2).
pub async fn serve_http<I, F, Fut>(io: I, mode: HttpMode, handle: F)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Body>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    if mode == HttpMode::Http2 {
        return serve_hyper(io, mode, handle).await;
    }
    h1_server::serve(io, handle, move |read, io, handle| serve_hyper(Rewind::new(read, io), mode, handle)).await;
}

/// Serves HTTP on `io` with hyper's server.
pub async fn serve_hyper<I, F, Fut>(io: I, mode: HttpMode, handle: F)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Body>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let limits = super::admission::limits();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .writev(false)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_headers_timeout)
        // A client that shuts down its write side after its request still gets the response.
        .half_close(true)
        // hyper's head limit is its read buffer (at least 8 KiB): 431 beyond it.
        .max_buf_size(limits.max_head.max(8192));
    builder.http2().timer(TokioTimer::new()).max_header_list_size(limits.max_head as u32);
    match mode {
        HttpMode::Auto => {}
        HttpMode::Http1 => builder = builder.http1_only(),
        HttpMode::Http2 => builder = builder.http2_only(),
    }
    // The request future is boxed once: it is several KB, and hyper would otherwise move it
    // by value (memmove) on its way into the connection's in-flight slot.
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let mut req = req.map(Body::Incoming);
        let fut = super::headers::check_target(&mut req).map(|()| Box::pin(handle(req)));
        async move {
            Ok::<_, Infallible>(match fut {
                Ok(fut) => fut.await,
                Err(e) => {
                    let mut r = e.response();
                    r.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                    r
                }
            })
        }
    });
    // hyper has no idle timeout of its own: a connection that moves no bytes either way for
    // the stream idle timeout is closed (Envoy's `stream_idle_timeout`, 5 min by default),
    // which also ends a stalled upload or a client that stopped reading.
    let last = Arc::new(AtomicU64::new(clock::monotonic_ms()));
    let io = Activity { io, last: last.clone() };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let idle = idle_watch(last, limits.stream_idle_timeout);
    tokio::select! {
        r = conn => if let Err(e) = r {
            tracing::trace!("connection ended: {e}");
        },
        () = idle => tracing::debug!("connection closed after {:?} without traffic", limits.stream_idle_timeout),
    }
}

/// Resolves once `last` (a coarse monotonic time in ms) is older than `limit`.
async fn idle_watch(last: Arc<AtomicU64>, limit: Duration) {
    let limit_ms = limit.as_millis() as u64;
    let mut wait = limit;
    loop {
        tokio::time::sleep(wait).await;
        let idle_ms = clock::monotonic_ms().saturating_sub(last.load(Ordering::Relaxed));
        if idle_ms >= limit_ms {
            return;
        }
        wait = Duration::from_millis(limit_ms - idle_ms);
    }
}

/// A stream that notes when bytes last moved, for the idle watch.
struct Activity<I> {
    io: I,
    last: Arc<AtomicU64>,
}

impl<I> Activity<I> {
    fn touch(&self) {
        self.last.store(clock::monotonic_ms(), Ordering::Relaxed);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Activity<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Activity<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_classification() {
        assert_eq!(classify(b"\x16\x03\x01"), Some(Sniffed::Tls));
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Sniffed::Http1));
        assert_eq!(classify(b"CONNECT a:1 HTTP/1.1"), Some(Sniffed::Http1));
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nSM"), Some(Sniffed::Http2));
        assert_eq!(classify(b"PRI * HT"), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"\x00\x01binary"), Some(Sniffed::Opaque));
        assert_eq!(classify(b"HELLO"), Some(Sniffed::Opaque));
    }
}

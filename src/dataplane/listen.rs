//! Listening: accept loops with an owner and a stop signal, protocol sniffing of the first
//! bytes (TLS, HTTP/1, HTTP/2 preface), and serving HTTP on any byte stream.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::body::{Body, ProxyBody};
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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().writev(false);
    match mode {
        HttpMode::Auto => {}
        HttpMode::Http1 => builder = builder.http1_only(),
        HttpMode::Http2 => builder = builder.http2_only(),
    }
    // The request future is boxed once: it is several KB, and hyper would otherwise move it
    // by value (memmove) on its way into the connection's in-flight slot.
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let fut = Box::pin(handle(req.map(Body::Incoming)));
        async move { Ok::<_, Infallible>(fut.await) }
    });
    if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(io), service).await {
        tracing::trace!("connection ended: {e}");
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

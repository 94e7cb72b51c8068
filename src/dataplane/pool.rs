//! Upstream connections: keep-alive HTTP/1.1 pools and one shared (multiplexed) HTTP/2
//! connection per endpoint, over plain TCP (to applications, passthrough) or mTLS (between
//! sidecars, peer SPIFFE ID checked after the handshake).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::addr_map::AddrMap;
use super::body::{Body, ProxyBody};
use super::error::ProxyError;
use super::h1;
use super::tcp::Tcp;
use crate::identity::tls::{Alpn, WorkloadTls, endpoint_server_name, spiffe_of};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_IDLE_PER_ENDPOINT: usize = 256;
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    H1,
    H2,
}

/// How to reach an upstream. Borrowed from the configuration for the request's lifetime:
/// taking reference counts on shared identities would cost every request an atomic on a
/// cache line all workers write.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub addr: SocketAddr,
    pub version: Version,
    /// mTLS: our identity and the SPIFFE ID the peer must present.
    pub mtls: Option<(&'a Arc<WorkloadTls>, &'a Arc<str>)>,
}

impl Target<'_> {
    fn mtls(&self) -> Option<(&WorkloadTls, &str)> {
        self.mtls.map(|(t, e)| (t.as_ref(), e.as_ref()))
    }
}

/// A connected byte stream: plain or mTLS.
pub enum Stream {
    Plain(Tcp),
    Tls(Box<tokio_rustls::client::TlsStream<Tcp>>),
}

/// Connects to `addr`, with mTLS when asked (checking the peer's SPIFFE ID).
pub async fn connect(addr: SocketAddr, mtls: Option<(&WorkloadTls, &str)>, alpn: Alpn) -> Result<Stream, ProxyError> {
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, Tcp::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = match e.raw_os_error() {
                Some(code) => format!("delayed connect error: {code}"),
                None => e.to_string(),
            };
            return Err(ProxyError::ConnectFailed(reason));
        }
        Err(_) => return Err(ProxyError::ConnectFailed("connection timeout".into())),
    };
    let _ = tcp.set_nodelay(true);
    let Some((tls, expect)) = mtls else {
        return Ok(Stream::Plain(tcp));
    };
    let connector = tokio_rustls::TlsConnector::from(tls.client(alpn));
    let stream =
        match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(endpoint_server_name(addr.port()), tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(ProxyError::ConnectFailed(format!("TLS error: {e}"))),
            Err(_) => return Err(ProxyError::ConnectFailed("TLS handshake timeout".into())),
        };
    let peer = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(spiffe_of);
    if peer.as_deref() != Some(expect) {
        // Secure naming: an endpoint presenting another identity is refused, and said.
        tracing::warn!(
            "refused {addr}: it presented {} but this endpoint's identity is {expect} (secure naming)",
            peer.as_deref().unwrap_or("no SPIFFE ID")
        );
        return Err(ProxyError::ConnectFailed(format!(
            "TLS error: peer identity {} is not the expected {expect}",
            peer.as_deref().unwrap_or("(none)")
        )));
    }
    Ok(Stream::Tls(Box::new(stream)))
}

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

/// hyper's connections to one endpoint (streamed bodies, upgrades, HTTP/2).
struct Pool {
    addr: SocketAddr,
    mtls: Option<(Arc<WorkloadTls>, Arc<str>)>,
    idle: Mutex<Vec<Idle>>,
    h2: tokio::sync::Mutex<Option<http2::SendRequest<Body>>>,
}

/// All upstream pools of one proxy (a sidecar direction or a gateway), one per worker. The
/// in-task client's connections live in per-thread lists named by `id` (`h1::Idle`).
pub struct Pools {
    id: u64,
    pools: RwLock<AddrMap<(SocketAddr, Version, bool), Arc<Pool>>>,
}

impl Default for Pools {
    fn default() -> Self {
        Pools { id: h1::owner_id(), pools: RwLock::default() }
    }
}

impl Pools {
    pub fn new() -> Self {
        Self::default()
    }

    fn pool(&self, target: &Target<'_>) -> Arc<Pool> {
        let key = (target.addr, target.version, target.mtls.is_some());
        if let Ok(map) = self.pools.read()
            && let Some(p) = map.get(&key)
        {
            return p.clone();
        }
        let mut map = match self.pools.write() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(key)
            .or_insert_with(|| {
                Arc::new(Pool {
                    addr: target.addr,
                    mtls: target.mtls.map(|(t, e)| (t.clone(), e.clone())),
                    idle: Mutex::new(Vec::new()),
                    h2: tokio::sync::Mutex::new(None),
                })
            })
            .clone()
    }

    /// Sends an HTTP/1.1 request head (origin form, see `headers::to_upstream_parts`) with the
    /// complete body `data`, borrowing both: a request that may be retried is not copied.
    /// The head must pass `h1::eligible_head`.
    pub async fn send_complete(
        &self,
        target: &Target<'_>,
        parts: &http::request::Parts,
        data: &[u8],
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let idle = h1::Idle::of(self.id, target.addr, target.mtls.is_some());
        h1::send(idle, IDLE_TIMEOUT, parts, data, || connect(target.addr, target.mtls(), Alpn::Http1)).await
    }

    /// Sends `req` (origin-form URI for HTTP/1.1, absolute for HTTP/2) and returns the
    /// response head; the body streams, and an HTTP/1.1 connection goes back to the pool
    /// when it ends.
    ///
    /// The request is taken apart before the future is built and hyper's client paths are
    /// boxed, so the common case (a complete HTTP/1.1 request) makes a small future.
    pub fn send(
        &self,
        target: &Target<'_>,
        req: Request<Body>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send + use<> {
        let complete = target.version == Version::H1 && h1::eligible_request(&req);
        let pool = (!complete).then(|| self.pool(target));
        let idle = h1::Idle::of(self.id, target.addr, target.mtls.is_some());
        // Owned for the future (only mTLS targets have anything to count).
        let (addr, mtls) = (target.addr, target.mtls.map(|(t, e)| (t.clone(), e.clone())));
        let version = target.version;
        let (parts, body) = req.into_parts();
        async move {
            match (pool, version) {
                (None, _) => {
                    let data = match &body {
                        Body::Full(Some(b)) => &b[..],
                        _ => &[],
                    };
                    let mtls = mtls.as_ref().map(|(t, e)| (t.as_ref(), e.as_ref()));
                    h1::send(idle, IDLE_TIMEOUT, &parts, data, || connect(addr, mtls, Alpn::Http1)).await
                }
                (Some(pool), Version::H1) => Box::pin(pool.send_h1(Request::from_parts(parts, body))).await,
                (Some(pool), Version::H2) => Box::pin(pool.send_h2(Request::from_parts(parts, body))).await,
            }
        }
    }
}

impl Pool {
    fn mtls(&self) -> Option<(&WorkloadTls, &str)> {
        self.mtls.as_ref().map(|(t, e)| (t.as_ref(), e.as_ref()))
    }

    fn take_idle(&self) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(i) = idle.pop() {
            if !i.sender.is_closed() && i.sender.is_ready() && i.since.elapsed() < IDLE_TIMEOUT {
                return Some(i.sender);
            }
        }
        None
    }

    fn put_idle(&self, sender: http1::SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE_PER_ENDPOINT
        {
            idle.push(Idle { sender, since: Instant::now() });
        }
    }

    async fn connect_h1(&self) -> Result<http1::SendRequest<Body>, ProxyError> {
        let stream = connect(self.addr, self.mtls(), Alpn::Http1).await?;
        let mut builder = http1::Builder::new();
        // Envoy's response head limit (60 KiB) on the hyper path too: 502 `UPE` beyond it.
        builder.max_buf_size(60 * 1024);
        let handshake = match stream {
            Stream::Plain(s) => {
                let (sender, conn) = builder.handshake(TokioIo::new(s)).await.map_err(reset)?;
                tokio::spawn(async move {
                    let _ = conn.with_upgrades().await;
                });
                sender
            }
            Stream::Tls(s) => {
                let (sender, conn) = builder.handshake(TokioIo::new(s)).await.map_err(reset)?;
                tokio::spawn(async move {
                    let _ = conn.with_upgrades().await;
                });
                sender
            }
        };
        Ok(handshake)
    }

    async fn send_h1(self: Arc<Self>, mut req: Request<Body>) -> Result<Response<ProxyBody>, ProxyError> {
        // A pooled connection may have been closed by the peer just now; hyper then hands the
        // unsent request back and we try another (bounded).
        for _ in 0..4 {
            let mut sender = match self.take_idle() {
                Some(s) => s,
                // Boxed: connecting (TCP, TLS) is a large future, and rare on a warm pool.
                None => Box::pin(self.connect_h1()).await?,
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let upgraded = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
                    let (parts, incoming) = resp.into_parts();
                    let mut body = ProxyBody::new(Body::Incoming(incoming));
                    if !upgraded {
                        let pool = self.clone();
                        body.on_end(move |o| {
                            if o.complete {
                                pool.put_idle(sender);
                            }
                        });
                    }
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(reset(e.into_error())),
                },
            }
        }
        Err(ProxyError::UpstreamReset("connections closed before the request could be sent".into()))
    }

    async fn h2_sender(&self) -> Result<http2::SendRequest<Body>, ProxyError> {
        let mut slot = self.h2.lock().await;
        if let Some(s) = slot.as_ref()
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let stream = Box::pin(connect(self.addr, self.mtls(), Alpn::Http2)).await?;
        let builder = http2::Builder::new(TokioExecutor::new());
        let sender = match stream {
            Stream::Plain(s) => {
                let (sender, conn) = builder.handshake(TokioIo::new(s)).await.map_err(reset)?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                sender
            }
            Stream::Tls(s) => {
                let (sender, conn) = builder.handshake(TokioIo::new(s)).await.map_err(reset)?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                sender
            }
        };
        *slot = Some(sender.clone());
        Ok(sender)
    }

    async fn send_h2(self: Arc<Self>, mut req: Request<Body>) -> Result<Response<ProxyBody>, ProxyError> {
        for _ in 0..2 {
            let mut sender = self.h2_sender().await?;
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let (parts, incoming) = resp.into_parts();
                    return Ok(Response::from_parts(parts, ProxyBody::new(Body::Incoming(incoming))));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) => {
                        req = unsent;
                        *self.h2.lock().await = None;
                    }
                    None => return Err(reset(e.into_error())),
                },
            }
        }
        Err(ProxyError::UpstreamReset("HTTP/2 connection closed before the request could be sent".into()))
    }
}

fn reset(e: hyper::Error) -> ProxyError {
    if e.is_user() {
        // The request's own body failed: the downstream sent a malformed body (a bad chunk),
        // its fault, not the upstream's: 400 `DPE`, as Envoy answers a downstream codec error.
        return ProxyError::BadRequest("Bad Request");
    }
    if e.is_parse_too_large() {
        return ProxyError::UpstreamProtocol(e.to_string());
    }
    ProxyError::UpstreamReset(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An upstream that counts the connections it accepts (HTTP/1.1 and h2c).
    async fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        (addr, count)
    }

    fn get(version: Version, addr: SocketAddr) -> Request<Body> {
        let uri = match version {
            Version::H1 => "/".to_string(),
            Version::H2 => format!("http://{addr}/"),
        };
        let mut req = Request::get(uri).body(Body::Empty).unwrap();
        if version == Version::H1 {
            req.headers_mut().insert(http::header::HOST, addr.to_string().parse().unwrap());
        } else {
            *req.version_mut() = http::Version::HTTP_2;
        }
        req
    }

    #[tokio::test]
    async fn http1_connections_are_kept_alive_and_reused() {
        let (addr, accepted) = counting_upstream().await;
        let pools = Pools::new();
        let target = Target { addr, version: Version::H1, mtls: None };
        for _ in 0..5 {
            let resp = pools.send(&target, get(Version::H1, addr)).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "five sequential requests share one connection");
    }

    #[tokio::test]
    async fn http2_requests_are_multiplexed_on_one_connection() {
        let (addr, accepted) = counting_upstream().await;
        let pools = Arc::new(Pools::new());
        let target = Target { addr, version: Version::H2, mtls: None };
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (pools, target) = (pools.clone(), target);
            tasks.push(tokio::spawn(async move {
                let resp = pools.send(&target, get(Version::H2, addr)).await.unwrap();
                resp.into_body().collect().await.unwrap().to_bytes()
            }));
        }
        for t in tasks {
            assert_eq!(&t.await.unwrap()[..], b"ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_refused_connection_is_uf() {
        let addr = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let err = Pools::new().send(&Target { addr, version: Version::H1, mtls: None }, get(Version::H1, addr)).await;
        match err {
            Err(e) => {
                assert_eq!(e.flag().to_string(), "UF");
                assert!(e.body().contains("delayed connect error: "), "{}", e.body());
            }
            Ok(_) => panic!("connected to a closed port"),
        }
    }
}

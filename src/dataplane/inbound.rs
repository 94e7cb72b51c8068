//! The inbound side of a sidecar: one listener per service port of an instance. It accepts
//! mTLS from other sidecars and, on the same port, plaintext (Istio's PERMISSIVE default),
//! told apart by the first byte; then HTTP or opaque TCP to the application.
//!
//! Every connection is described by a [`Peer`] before any byte reaches the application, so
//! PeerAuthentication (require TLS) and AuthorizationPolicy (check the peer and request)
//! slot in at [`Inbound::admit`] and [`Inbound::request`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::{Request, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::body::{Body, ProxyBody};
use super::forward::{Pending, content_length, protocol_name, splice_upgrade};
use super::headers::{self, ISTIO_ENVOY, X_ENVOY_UPSTREAM_SERVICE_TIME, X_FORWARDED_CLIENT_CERT, X_FORWARDED_PROTO};
use super::listen::{self, HttpMode, Sniffed};
use super::pool::{self, Pools, Target, Version};
use super::tcp::Tcp;
use super::workers::{PerWorker, Workers};
use crate::identity::tls::{ALPN_H2, ALPN_HTTP11, ALPN_TCP, WorkloadTls, cert_hash, spiffe_of};
use crate::model::topology::{Instance, InstancePort};
use crate::telemetry::{Flags, Name, Reporter, RequestEvent, Telemetry, Texts};

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an HTTP port waits for a client's first bytes.
const HTTP_SNIFF_TIMEOUT: Duration = Duration::from_secs(10);

/// What is known of a downstream connection.
#[derive(Clone, Debug)]
pub struct Peer {
    pub tls: Option<PeerTls>,
}

#[derive(Clone, Debug)]
pub struct PeerTls {
    /// The client's SPIFFE ID (`source.principal`).
    pub spiffe: Option<Name>,
    /// The `x-forwarded-client-cert` this connection's requests carry to the application,
    /// built once per connection.
    pub xfcc: Option<HeaderValue>,
}

impl PeerTls {
    /// `cert_hash`: the client certificate's SHA-256; `by`: this workload's SPIFFE ID.
    pub fn new(spiffe: Option<Name>, cert_hash: &str, by: &str) -> PeerTls {
        let uri = spiffe.as_deref().unwrap_or("");
        let xfcc = HeaderValue::from_str(&format!("By={by};Hash={cert_hash};Subject=\"\";URI={uri}")).ok();
        PeerTls { spiffe, xfcc }
    }
}

/// Names every record of this listener shares.
pub struct Names {
    pub proxy: Name,
    pub service: Name,
    pub cluster: Name,
    pub unknown: Name,
}

impl Names {
    pub fn new(instance: &Instance, port: &InstancePort) -> Names {
        Names {
            proxy: Name::new(&instance.name),
            service: Name::new(&instance.service_name),
            cluster: Name::new(&format!("inbound|{}||", port.port)),
            unknown: Name::from_static("unknown"),
        }
    }
}

pub struct Inbound {
    pub names: Names,
    pub instance: Arc<Instance>,
    pub port: InstancePort,
    pub tls: Arc<WorkloadTls>,
    /// Connections to the application, per worker.
    pub pools: PerWorker<Pools>,
    pub telemetry: Telemetry,
}

impl Inbound {
    pub async fn run(self: Arc<Self>, listener: TcpListener, stop: CancellationToken, workers: Arc<Workers>) {
        let this = self.clone();
        listen::accept_loop(listener, stop, move |stream, addr| {
            let this = this.clone();
            workers.connection(stream, addr, move |s, a| async move { this.connection(s, a).await });
        })
        .await;
    }

    async fn connection(self: Arc<Self>, stream: Tcp, addr: SocketAddr) {
        // An HTTP port's clients always speak first, so waiting longer for their first bytes
        // costs nothing and keeps a slow peer's TLS hello (a loaded machine) from being taken
        // for opaque TCP, as Envoy's TLS inspector waits (15 s). Other ports may carry
        // server-first protocols and keep the short wait.
        let wait = if self.port.protocol.is_http() { HTTP_SNIFF_TIMEOUT } else { listen::SNIFF_TIMEOUT };
        match listen::sniff(&stream, wait).await {
            Sniffed::Tls => {
                let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.server.clone());
                let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(instance = %self.instance.name, "inbound TLS handshake from {addr} failed: {e}");
                        return;
                    }
                    Err(_) => return,
                };
                let (_, conn) = tls.get_ref();
                let cert = conn.peer_certificates().and_then(|c| c.first());
                let peer = Peer {
                    tls: Some(PeerTls::new(
                        cert.and_then(spiffe_of).map(|s| Name::new(&s)),
                        &cert.map(cert_hash).unwrap_or_default(),
                        &self.tls.spiffe,
                    )),
                };
                let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
                if !self.admit(&peer) {
                    return;
                }
                match alpn.as_deref() {
                    Some(ALPN_H2) => self.serve(tls, peer, HttpMode::Http2).await,
                    Some(ALPN_HTTP11) => self.serve(tls, peer, HttpMode::Http1).await,
                    Some(ALPN_TCP) => self.tcp(tls).await,
                    _ if self.port.protocol.is_http() => self.serve(tls, peer, HttpMode::Auto).await,
                    _ => self.tcp(tls).await,
                }
            }
            kind => {
                let peer = Peer { tls: None };
                if !self.admit(&peer) {
                    return;
                }
                if matches!(kind, Sniffed::Http1 | Sniffed::Http2) || self.port.protocol.is_http() {
                    self.serve(stream, peer, HttpMode::Auto).await
                } else {
                    self.tcp(stream).await
                }
            }
        }
    }

    /// Connection-level admission (PeerAuthentication plugs in here): PERMISSIVE admits all.
    fn admit(&self, _peer: &Peer) -> bool {
        true
    }

    async fn serve<I>(self: &Arc<Self>, io: I, peer: Peer, mode: HttpMode)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // A handle of this connection's own: requests clone it, not the proxy's `Arc`,
        // whose count every worker would write per request.
        let this = Arc::new(self.clone());
        listen::serve_http(io, mode, move |req| this.clone().request(&peer, req)).await;
    }

    /// Opaque TCP: the bytes go to the application as they are.
    async fn tcp<I>(&self, mut io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        match pool::connect(self.port.app, None, crate::identity::tls::Alpn::Tcp).await {
            Ok(pool::Stream::Plain(mut app)) => {
                let _ = tokio::io::copy_bidirectional(&mut io, &mut app).await;
            }
            Ok(pool::Stream::Tls(_)) => {}
            Err(e) => {
                tracing::debug!(instance = %self.instance.name, "inbound TCP to app failed: {e}")
            }
        }
    }

    /// One request: to the application, answered with `server: istio-envoy`. Prepared before
    /// the future is built, so the future holds only what the response needs.
    #[allow(clippy::redundant_allocation)] // the outer Arc is the connection's own handle
    fn request(
        self: Arc<Arc<Self>>,
        peer: &Peer,
        mut req: Request<Body>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + use<> {
        let start = Instant::now();
        let upgrade = headers::is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let (body, received) = body.counted();
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::ensure_request_id(&mut parts.headers);
        // The Host header first (the URI's authority is the caller's view of the address).
        let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let authority = match (host, parts.uri.authority()) {
            (Some(h), _) => headers::Authority::new(h),
            (None, Some(a)) => headers::Authority::new(a.as_str()),
            (None, None) => headers::Authority::new(""),
        };
        match peer.tls.as_ref().and_then(|t| t.xfcc.clone()) {
            Some(v) => {
                parts.headers.insert(X_FORWARDED_CLIENT_CERT.clone(), v);
            }
            None => {
                parts.headers.remove(&X_FORWARDED_CLIENT_CERT);
            }
        }
        // One lookup: the custom name is hashed once.
        let proto = if peer.tls.is_some() { "https" } else { "http" };
        parts.headers.entry(X_FORWARDED_PROTO.clone()).or_insert_with(|| HeaderValue::from_static(proto));
        let event = RequestEvent {
            ts: SystemTime::now(),
            reporter: Reporter::Destination,
            proxy: self.names.proxy,
            source_workload: self.names.unknown,
            source_principal: peer.tls.as_ref().and_then(|t| t.spiffe),
            destination_service: Some(self.names.service),
            destination_workload: Some(self.instance.workload),
            upstream_cluster: Some(self.names.cluster),
            upstream_host: Some(self.port.app),
            route_name: None,
            subset: None,
            method: parts.method.clone(),
            texts: Texts::new(
                parts.uri.path_and_query().map_or("/", |p| p.as_str()),
                authority.as_str(),
                parts.headers.get(&headers::X_REQUEST_ID),
                parts.headers.get(header::USER_AGENT),
            ),
            protocol: protocol_name(parts.version),
            status: 0,
            response_flags: crate::telemetry::Flags::NONE,
            duration_ms: 0,
            upstream_service_time_ms: None,
            bytes_sent: 0,
            bytes_received: content_length(&parts.headers).unwrap_or(0),
            attempts: 1,
            mtls: peer.tls.is_some(),
        };
        let version = if self.port.protocol.app_speaks_h2() { Version::H2 } else { Version::H1 };
        let upstream = headers::to_upstream(Request::from_parts(parts, body), version, authority.as_str(), "http");
        let target = Target { addr: self.port.app, version, mtls: None };
        let sent = Instant::now();
        let send = self.pools.get().send(&target, upstream);
        // Recorded by the response's body, or as cancelled (`0 DC`) if dropped before it.
        let mut pending = Pending { event: Some(event), sink: self.telemetry.sink(), start, received };
        async move {
            let Some(event) = pending.event.as_mut() else {
                return super::error::local_reply(http::StatusCode::INTERNAL_SERVER_ERROR, "no request record".into());
            };
            let mut resp = match send.await {
                Ok(mut r) => {
                    let ms = sent.elapsed().as_millis() as u64;
                    event.upstream_service_time_ms = Some(ms);
                    headers::strip_hop_by_hop(r.headers_mut());
                    r.headers_mut().insert(X_ENVOY_UPSTREAM_SERVICE_TIME.clone(), headers::service_time(ms));
                    r
                }
                Err(e) => {
                    event.response_flags = e.flag();
                    e.response()
                }
            };
            resp.headers_mut().insert(header::SERVER, ISTIO_ENVOY.clone());
            if let Some(down) = upgrade
                && resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
            {
                splice_upgrade(down, &mut resp);
            }
            event.status = resp.status().as_u16();
            let Some(mut event) = pending.event.take() else { return resp };
            let (sink, received) = (pending.sink, pending.received.take());
            resp.body_mut().on_end(move |o| {
                if !o.complete {
                    event.response_flags.add(if o.upstream_failed { Flags::UC } else { Flags::DC });
                }
                event.bytes_sent = o.bytes;
                if let Some(n) = received {
                    event.bytes_received = n.load(std::sync::atomic::Ordering::Relaxed);
                }
                event.duration_ms = start.elapsed().as_millis() as u64;
                sink.record(event);
            });
            resp
        }
    }
}

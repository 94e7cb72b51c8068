//! The outbound side of a sidecar, as its application sees it: the HTTP proxy
//! (`HTTP_PROXY`: absolute-form and Host-based requests, `CONNECT` tunnels) and one listener
//! per service port behind `<SERVICE>_SERVICE_HOST/PORT` (HTTP, sniffed, or opaque TCP).
//! Registry services the instance's Sidecar scope lets it see are routed by their tables
//! (HTTP, or TCP/TLS with SNI); other hosts pass through (ALLOW_ANY) or are refused
//! (REGISTRY_ONLY), as Istio's PassthroughCluster and BlackHoleCluster.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use http::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::addr_map::AddrMap;
use super::body::{Body, ProxyBody};
use super::error::{ProxyError, local_reply};
use super::forward::{Forwarder, Routing};
use super::headers;
use super::listen::{self, HttpMode, Sniffed};
use super::local_snapshot;
use super::pool;
use super::resolve;
use super::rewind::Rewind;
use super::sni;
use super::tcp::Tcp;
use super::workers::Workers;
use crate::config::mesh::{OutboundMode, Protocol};
use crate::identity::tls::Alpn;
use crate::model::cluster::{Address, Transport};
use crate::model::hosts::split_authority;
use crate::model::routes::{self, ConnView};
use crate::model::snapshot::{MeshSnapshot, Shared};
use crate::model::topology::Instance;

/// The largest ClientHello read while looking for a server name.
const MAX_HELLO: usize = 16 * 1024;

pub struct Outbound {
    pub instance: Arc<Instance>,
    /// Index of the instance in the topology (its Sidecar scope in the snapshot).
    pub index: usize,
    pub forwarder: Forwarder,
    pub snapshot: Shared,
    /// This instance's per-upstream listener addresses → (service, port).
    pub listeners: AddrMap<SocketAddr, (usize, u16)>,
}

/// Where a request or connection from the application goes.
enum Dest {
    /// A registry service port the instance may see.
    Service(usize, u16),
    /// A mesh service port hidden by the Sidecar scope: reached as an outside host would be.
    Hidden(usize, u16),
    /// Not in the registry; the address when the authority is an IP literal with a port
    /// (parsed once here, not again when connecting).
    Unknown(Option<SocketAddr>),
}

impl Outbound {
    pub fn new(instance: Arc<Instance>, index: usize, forwarder: Forwarder, snapshot: Shared) -> Outbound {
        let mut listeners = AddrMap::default();
        for u in &instance.upstreams {
            for (port, addr) in &u.ports {
                listeners.insert(*addr, (u.service, *port));
            }
        }
        Outbound { instance, index, forwarder, snapshot, listeners }
    }

    /// The HTTP proxy listener (`HTTP_PROXY`).
    pub async fn run_proxy(self: Arc<Self>, listener: TcpListener, stop: CancellationToken, workers: Arc<Workers>) {
        let this = self.clone();
        listen::accept_loop(listener, stop, move |stream, peer| {
            let this = this.clone();
            workers.connection(stream, peer, move |stream, _| async move {
                // A handle of this connection's own: requests clone it, not the proxy's `Arc`,
                // whose count every worker would write per request.
                let this = Arc::new(this);
                listen::serve_http(stream, HttpMode::Auto, move |req| this.clone().proxy_request(req)).await;
            });
        })
        .await;
    }

    /// A per-upstream listener for a service port.
    pub async fn run_upstream(
        self: Arc<Self>,
        listener: TcpListener,
        service: usize,
        port: u16,
        stop: CancellationToken,
        workers: Arc<Workers>,
    ) {
        let this = self.clone();
        listen::accept_loop(listener, stop, move |stream, peer| {
            let this = this.clone();
            workers.connection(
                stream,
                peer,
                move |s, _| async move { this.upstream_connection(s, service, port).await },
            );
        })
        .await;
    }

    async fn upstream_connection(self: Arc<Self>, stream: Tcp, service: usize, port: u16) {
        let protocol = self.protocol(service, port);
        let http = if protocol.is_http() {
            true
        } else if protocol == Protocol::Unknown {
            matches!(listen::sniff(&stream, listen::SNIFF_TIMEOUT).await, Sniffed::Http1 | Sniffed::Http2)
        } else {
            false
        };
        if http {
            self.serve_for(stream, service, port).await;
        } else {
            self.tcp(stream, BytesMut::new(), service, port, None).await;
        }
    }

    fn protocol(&self, service: usize, port: u16) -> Protocol {
        let snap = self.snapshot.load();
        snap.registry.get(service).and_then(|s| s.port(port)).map(|p| p.protocol).unwrap_or(Protocol::Unknown)
    }

    async fn serve_for<I>(self: &Arc<Self>, io: I, service: usize, port: u16)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // A handle of this connection's own: requests clone it, not the proxy's `Arc`,
        // whose count every worker would write per request.
        let this = Arc::new(self.clone());
        listen::serve_http(io, HttpMode::Auto, move |req| {
            let authority = headers::authority(&req);
            this.clone().http(req, authority, Some((service, port)))
        })
        .await;
    }

    /// A request to the HTTP proxy listener: absolute-form, or `CONNECT`.
    #[allow(clippy::redundant_allocation)] // the outer Arc is the connection's own handle
    fn proxy_request(self: Arc<Arc<Self>>, req: Request<Body>) -> impl Future<Output = Response<ProxyBody>> + Send {
        let authority = headers::authority(&req);
        self.http(req, authority, None)
    }

    /// Which registry service port an authority names, as the sidecar resolves it: a host in
    /// any Kubernetes form or a ServiceEntry host (or address), one of this instance's
    /// `*_SERVICE_HOST` addresses, or (for per-upstream listeners) the listener's service.
    /// `host` and `port` are the authority's, split once by the caller.
    fn resolve(
        &self,
        snap: &MeshSnapshot,
        (host, port): (&str, Option<u16>),
        listener: Option<(usize, u16)>,
        default_port: u16,
    ) -> Dest {
        let mut literal = None;
        let hit = snap
            .registry
            .hosts
            .resolve_split(host, port)
            .and_then(|(si, port)| {
                let svc = snap.registry.get(si)?;
                match port {
                    Some(p) => svc.port(p).map(|_| (si, p)),
                    None => svc.default_port(default_port).map(|p| (si, p)),
                }
            })
            .or_else(|| {
                literal = port.and_then(|p| resolve::literal(host, p));
                literal.and_then(|a| self.listeners.get(&a).copied())
            })
            .or(listener);
        let Some((si, port)) = hit else { return Dest::Unknown(literal) };
        let visible = match (snap.registry.get(si), snap.scopes.get(self.index)) {
            (Some(svc), Some(scope)) => scope.sees(svc, &self.instance.namespace),
            (Some(svc), None) => svc.visible_to(&self.instance.namespace),
            (None, _) => false,
        };
        match (visible, snap.registry.get(si).is_some_and(|s| s.is_mesh())) {
            (true, _) => Dest::Service(si, port),
            (false, true) => Dest::Hidden(si, port),
            (false, false) => Dest::Unknown(None),
        }
    }

    fn mode(&self, snap: &MeshSnapshot) -> OutboundMode {
        snap.scopes.get(self.index).map_or(snap.outbound_mode, |s| s.mode)
    }

    /// Routes and forwards one request: from the HTTP proxy listener (`listener` is `None`),
    /// or from a per-upstream listener, which names the service when the authority does not.
    /// One `forward` call at the end and no `async fn` arguments keep this future small:
    /// futures are moved whole into their parent's state on every request.
    #[allow(clippy::manual_async_fn)] // an `async fn` would store its arguments twice
    #[allow(clippy::redundant_allocation)] // the outer Arc is the connection's own handle
    fn http(
        self: Arc<Arc<Self>>,
        req: Request<Body>,
        authority: Option<headers::Authority>,
        listener: Option<(usize, u16)>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send {
        async move {
            if listener.is_none() && req.method() == Method::CONNECT {
                // Boxed: a tunnel's future (it may serve HTTP inside) is large and rare.
                return Box::pin((*self).clone().connect(req)).await;
            }
            let authority = match (&authority, listener) {
                (Some(a), _) => a.as_str(),
                (None, Some(_)) => "",
                (None, None) => return ProxyError::BadRequest("missing Host").response(),
            };
            let snap = local_snapshot::current(&self.snapshot);
            let split = split_authority(authority);
            let hidden_authority;
            let routing = match self.resolve(&snap, split, listener, 80) {
                Dest::Service(si, port) => {
                    let Some(table) = snap.mesh_routes.get(&(si, port)) else {
                        return ProxyError::NoRoute.response();
                    };
                    let service = snap.registry.get(si).map(|s| s.name);
                    Routing {
                        snapshot: &snap,
                        table,
                        authority,
                        port,
                        gateway: None,
                        service,
                        source: &self.instance.name,
                        original: None,
                    }
                }
                Dest::Hidden(si, port) => {
                    // Reached directly (original destination), named by its service host so a
                    // `*_SERVICE_HOST` address does not loop back into this sidecar.
                    let host = snap.registry.get(si).map_or("", |s| s.host.as_str());
                    hidden_authority = format!("{host}:{port}");
                    let mut r = self.outside(&snap, &hidden_authority, port);
                    r.service = snap.registry.get(si).map(|s| s.name);
                    r
                }
                Dest::Unknown(literal) => {
                    let mut r = self.outside(&snap, authority, split.1.unwrap_or(80));
                    r.original = literal;
                    r
                }
            };
            // Boxed: the forwarding future is most of a request's state, and each level that
            // holds it by value copies it whole (several KB) on every request.
            Box::pin(self.forwarder.forward(routing, req)).await
        }
    }

    /// A host outside what the instance may see: PassthroughCluster or BlackHoleCluster.
    fn outside<'a>(&'a self, snap: &'a MeshSnapshot, authority: &'a str, port: u16) -> Routing<'a> {
        let table = match self.mode(snap) {
            OutboundMode::RegistryOnly => &snap.blackhole,
            OutboundMode::AllowAny => &snap.passthrough,
        };
        Routing {
            snapshot: snap,
            table,
            authority,
            port,
            gateway: None,
            service: None,
            source: &self.instance.name,
            original: None,
        }
    }

    /// `CONNECT host:port`: registry services are routed (HTTP inside by their HTTP routes,
    /// TLS by SNI, the rest as TCP); other hosts get a plain tunnel under ALLOW_ANY and a
    /// refusal under REGISTRY_ONLY.
    async fn connect(self: Arc<Self>, mut req: Request<Body>) -> Response<ProxyBody> {
        let Some(authority) = req.uri().authority().map(|a| a.as_str().to_string()) else {
            return ProxyError::BadRequest("CONNECT needs host:port").response();
        };
        let snap = self.snapshot.load_full();
        let on_upgrade = hyper::upgrade::on(&mut req);
        let (target_host, target_port) = match self.resolve(&snap, split_authority(&authority), None, 443) {
            Dest::Service(si, port) => {
                tokio::spawn(async move {
                    if let Ok(up) = on_upgrade.await {
                        self.tunnel(TokioIo::new(up), si, port, authority).await;
                    }
                });
                return Response::new(ProxyBody::empty());
            }
            Dest::Hidden(si, port) => (snap.registry.get(si).map_or(String::new(), |s| s.host.clone()), port),
            Dest::Unknown(_) => {
                let (h, p) = split_authority(&authority);
                (h.to_string(), p.unwrap_or(443))
            }
        };
        if self.mode(&snap) == OutboundMode::RegistryOnly {
            return local_reply(
                StatusCode::FORBIDDEN,
                format!("CONNECT to {authority} refused: outboundTrafficPolicy is REGISTRY_ONLY\n"),
            );
        }
        let addr =
            match resolve::original_destination(&format!("{target_host}:{target_port}"), target_port, &snap).await {
                Ok(a) => a,
                Err(e) => return e.response(),
            };
        let mut upstream = match pool::connect(addr, None, Alpn::Tcp).await {
            Ok(pool::Stream::Plain(s)) => s,
            Ok(pool::Stream::Tls(_)) => return ProxyError::ConnectFailed("unexpected TLS".into()).response(),
            Err(e) => return e.response(),
        };
        tokio::spawn(async move {
            if let Ok(up) = on_upgrade.await {
                let mut down = TokioIo::new(up);
                let _ = tokio::io::copy_bidirectional(&mut down, &mut upstream).await;
            }
        });
        Response::new(ProxyBody::empty())
    }

    /// A tunnel to a registry service: HTTP inside is routed like any request; anything else
    /// goes through the TCP/TLS routes.
    async fn tunnel<I>(self: Arc<Self>, mut io: I, service: usize, port: u16, authority: String)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut buf = BytesMut::with_capacity(512);
        let kind = loop {
            let read = tokio::time::timeout(listen::SNIFF_TIMEOUT, io.read_buf(&mut buf)).await;
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => {
                    if let Some(k) = listen::classify(&buf) {
                        break k;
                    }
                }
                Err(_) => break Sniffed::Opaque,
            }
        };
        match kind {
            Sniffed::Http1 | Sniffed::Http2 => self.serve_for(Rewind::new(buf.freeze(), io), service, port).await,
            _ => self.tcp(io, buf, service, port, Some(&authority)).await,
        }
    }

    /// Opaque TCP (or TLS passthrough) to a service port through its `tcp[]`/`tls[]` routes.
    /// `prefix` holds bytes already read from `io`; `authority` is where the client asked to
    /// go (for original-destination endpoints).
    async fn tcp<I>(&self, mut io: I, mut prefix: BytesMut, service: usize, port: u16, authority: Option<&str>)
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let snap = self.snapshot.load_full();
        let Some(table) = snap.tcp_routes.get(&(service, port)) else { return };
        let needs_sni = table.routes.iter().any(|r| r.matches.iter().any(|m| !m.sni_hosts.is_empty()));
        let sni = if needs_sni { client_hello_sni(&mut io, &mut prefix).await } else { None };
        let conn = ConnView {
            port,
            sni: sni.as_deref(),
            source_labels: &self.instance.labels,
            source_namespace: &self.instance.namespace,
            gateway: None,
        };
        let Some(route) = routes::find_tcp(table, &conn) else {
            tracing::debug!(instance = %self.instance.name, "TCP to service #{service}:{port}: no matching route");
            return;
        };
        let r = if route.total_weight > 0 { fastrand::u32(0..route.total_weight) } else { 0 };
        let Some(dest) = routes::pick_weighted(&route.destinations, r) else { return };
        let cluster = &dest.cluster;
        let Some(ei) = cluster.pick(None, &[]) else {
            tracing::debug!(instance = %self.instance.name, "TCP to {}: no healthy upstream", cluster.name);
            return;
        };
        let ep = &cluster.endpoints[ei];
        let fallback = snap.registry.get(service).map(|s| format!("{}:{port}", s.host)).unwrap_or_default();
        let addr = match &ep.address {
            Address::Socket(a) => Ok(*a),
            Address::Dns(h, p) => resolve::host(h, *p).await,
            Address::OriginalDestination => {
                let target = match (sni.as_deref(), authority) {
                    (_, Some(a)) => a.to_string(),
                    (Some(s), None) => format!("{s}:{port}"),
                    (None, None) => fallback,
                };
                resolve::original_destination(&target, port, &snap).await
            }
        };
        let addr = match addr {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(instance = %self.instance.name, "TCP to {}: {e}", cluster.name);
                return;
            }
        };
        let mtls = match (&cluster.transport, &ep.instance) {
            (Transport::IstioMutual, Some(i)) => Some((self.forwarder.tls.as_ref(), i.identity.as_ref())),
            _ => None,
        };
        let mut io = Rewind::new(prefix.freeze(), io);
        match pool::connect(addr, mtls, Alpn::Tcp).await {
            Ok(pool::Stream::Tls(mut s)) => {
                let _ = tokio::io::copy_bidirectional(&mut io, &mut s).await;
            }
            Ok(pool::Stream::Plain(mut s)) => {
                let _ = tokio::io::copy_bidirectional(&mut io, &mut s).await;
            }
            Err(e) => tracing::debug!(instance = %self.instance.name, "TCP to {}: {e}", cluster.name),
        }
    }
}

/// Reads (into `buf`) until a whole ClientHello is there, and returns its server name.
async fn client_hello_sni<I: AsyncRead + Unpin>(io: &mut I, buf: &mut BytesMut) -> Option<String> {
    loop {
        match sni::parse(buf) {
            sni::Hello::Tls(name) => return name,
            sni::Hello::NotTls => return None,
            sni::Hello::Incomplete => {}
        }
        if buf.len() > MAX_HELLO {
            return None;
        }
        match tokio::time::timeout(listen::SNIFF_TIMEOUT, io.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

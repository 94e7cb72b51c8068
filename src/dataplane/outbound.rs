//! The outbound side of a sidecar, as its application sees it: the HTTP proxy
//! (`HTTP_PROXY`: absolute-form and Host-based requests, `CONNECT` tunnels) and one listener
//! per service port behind `<SERVICE>_SERVICE_HOST/PORT` (HTTP, sniffed, or opaque TCP).
//! Mesh destinations go through [`Forwarder`]; unknown hosts pass through (ALLOW_ANY) or are
//! refused (REGISTRY_ONLY).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::{Method, Request, Response, StatusCode, Version as HttpVersion};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::body::{Body, ProxyBody};
use super::error::{ProxyError, local_reply};
use super::forward::{Forwarder, Routing};
use super::headers;
use super::listen::{self, HttpMode, Sniffed};
use super::pool::{self, Pools, Target, Version};
use super::rewind::Rewind;
use super::workers::{PerWorker, Workers};
use crate::config::mesh::{OutboundMode, Protocol};
use crate::identity::tls::Alpn;
use crate::model::cluster::ClusterKey;
use crate::model::hosts::split_authority;
use crate::model::snapshot::{MeshSnapshot, Shared};
use crate::model::topology::Instance;

pub struct Outbound {
    pub instance: Arc<Instance>,
    pub forwarder: Forwarder,
    pub snapshot: Shared,
    /// Connections to destinations outside the mesh, per worker.
    pub passthrough: PerWorker<Pools>,
    /// This instance's per-upstream listener addresses → (service, port).
    pub listeners: HashMap<SocketAddr, (usize, u16)>,
}

impl Outbound {
    pub fn new(instance: Arc<Instance>, forwarder: Forwarder, snapshot: Shared, workers: usize) -> Outbound {
        let mut listeners = HashMap::new();
        for u in &instance.upstreams {
            for (port, addr) in &u.ports {
                listeners.insert(*addr, (u.service, *port));
            }
        }
        Outbound { instance, forwarder, snapshot, passthrough: PerWorker::new(workers, Pools::new), listeners }
    }

    /// The HTTP proxy listener (`HTTP_PROXY`).
    pub async fn run_proxy(self: Arc<Self>, listener: TcpListener, stop: CancellationToken, workers: Arc<Workers>) {
        let this = self.clone();
        listen::accept_loop(listener, stop, move |stream, peer| {
            let this = this.clone();
            workers.connection(stream, peer, move |stream, _| async move {
                listen::serve_http(stream, HttpMode::Auto, move |req| {
                    let this = this.clone();
                    async move { this.proxy_request(req).await }
                })
                .await;
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

    async fn upstream_connection(self: Arc<Self>, stream: TcpStream, service: usize, port: u16) {
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
            self.tcp_to_service(stream, service, port).await;
        }
    }

    fn protocol(&self, service: usize, port: u16) -> Protocol {
        let snap = self.snapshot.load();
        snap.topology.services.get(service).and_then(|s| s.port(port)).map(|p| p.protocol).unwrap_or(Protocol::Unknown)
    }

    async fn serve_for<I>(self: &Arc<Self>, io: I, service: usize, port: u16)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let this = self.clone();
        listen::serve_http(io, HttpMode::Auto, move |req| {
            let this = this.clone();
            async move {
                let authority = headers::authority(&req);
                this.http(req, authority.as_ref().map_or("", |a| a.as_str()), Some((service, port))).await
            }
        })
        .await;
    }

    async fn proxy_request(self: Arc<Self>, req: Request<Incoming>) -> Response<ProxyBody> {
        if req.method() == Method::CONNECT {
            return self.connect(req).await;
        }
        match headers::authority(&req) {
            Some(a) => self.http(req, a.as_str(), None).await,
            None => ProxyError::BadRequest("missing Host").response(),
        }
    }

    /// Which mesh service port an authority names, as the sidecar resolves it: a service
    /// name in any Kubernetes form, one of this instance's `*_SERVICE_HOST` addresses, or
    /// (for per-upstream listeners) the listener's own service.
    fn resolve(&self, snap: &MeshSnapshot, authority: &str, listener: Option<(usize, u16)>) -> Option<(usize, u16)> {
        if let Some((si, port)) = snap.hosts.resolve(authority) {
            let svc = &snap.topology.services[si];
            match port {
                Some(p) if svc.port(p).is_some() => return Some((si, p)),
                Some(_) => {}
                None => {
                    let default = svc.port(80).or_else(|| svc.ports.iter().find(|p| p.protocol.is_http()));
                    if let Some(p) = default.or(svc.ports.first()) {
                        return Some((si, p.port));
                    }
                }
            }
        }
        if let Ok(addr) = authority.parse::<SocketAddr>()
            && let Some(hit) = self.listeners.get(&addr)
        {
            return Some(*hit);
        }
        listener
    }

    async fn http(
        &self,
        req: Request<Incoming>,
        authority: &str,
        listener: Option<(usize, u16)>,
    ) -> Response<ProxyBody> {
        let snap = self.snapshot.load_full();
        let Some((si, port)) = self.resolve(&snap, authority, listener) else {
            return self.passthrough(&snap, req, authority).await;
        };
        let Some(table) = snap.mesh_routes.get(&(si, port)) else {
            return ProxyError::NoRoute.response();
        };
        let service = &snap.topology.services[si].fqdn;
        let routing = Routing { table, authority, port, gateway: None, service };
        self.forwarder.forward(routing, req).await
    }

    /// A destination outside the mesh (Istio's PassthroughCluster / BlackHoleCluster).
    async fn passthrough(&self, snap: &MeshSnapshot, req: Request<Incoming>, authority: &str) -> Response<ProxyBody> {
        if snap.outbound_mode == OutboundMode::RegistryOnly {
            return local_reply(StatusCode::BAD_GATEWAY, String::new());
        }
        let addr = match resolve_addr(authority, 80).await {
            Ok(a) => a,
            Err(e) => return e.response(),
        };
        let version = if req.version() == HttpVersion::HTTP_2 { Version::H2 } else { Version::H1 };
        let (mut parts, body) = req.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        let upstream =
            headers::to_upstream(Request::from_parts(parts, Body::Incoming(body)), version, authority, "http");
        let target = Target { addr, version, mtls: None };
        let start = Instant::now();
        match self.passthrough.get().send(&target, upstream).await {
            Ok(mut r) => {
                headers::strip_hop_by_hop(r.headers_mut());
                let ms = start.elapsed().as_millis() as u64;
                r.headers_mut().insert(headers::X_ENVOY_UPSTREAM_SERVICE_TIME.clone(), headers::service_time(ms));
                r
            }
            Err(e) => e.response(),
        }
    }

    /// `CONNECT host:port`: into the mesh for mesh services, else a plain TCP tunnel.
    async fn connect(self: Arc<Self>, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let Some(authority) = req.uri().authority().map(|a| a.as_str().to_string()) else {
            return ProxyError::BadRequest("CONNECT needs host:port").response();
        };
        let snap = self.snapshot.load_full();
        let on_upgrade = hyper::upgrade::on(&mut req);
        if let Some((si, port)) = self.resolve(&snap, &authority, None) {
            tokio::spawn(async move {
                if let Ok(up) = on_upgrade.await {
                    self.tunnel_into_mesh(TokioIo::new(up), si, port).await;
                }
            });
            return Response::new(ProxyBody::empty());
        }
        if snap.outbound_mode == OutboundMode::RegistryOnly {
            return local_reply(
                StatusCode::FORBIDDEN,
                format!("CONNECT to {authority} refused: outboundTrafficPolicy is REGISTRY_ONLY\n"),
            );
        }
        let addr = match resolve_addr(&authority, 443).await {
            Ok(a) => a,
            Err(e) => return e.response(),
        };
        let mut upstream = match pool::connect(addr, None, Alpn::Tcp).await {
            Ok(pool::Stream::Plain(s)) => s,
            Ok(pool::Stream::Tls(_)) => {
                return ProxyError::ConnectFailed("unexpected TLS".into()).response();
            }
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

    /// A tunnel to a mesh service: HTTP inside is routed like any request; anything else is
    /// opaque TCP over mTLS.
    async fn tunnel_into_mesh<I>(self: Arc<Self>, mut io: I, service: usize, port: u16)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut buf = BytesMut::with_capacity(64);
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
        let io = Rewind::new(buf.freeze(), io);
        match kind {
            Sniffed::Http1 | Sniffed::Http2 => self.serve_for(io, service, port).await,
            _ => self.tcp_to_service(io, service, port).await,
        }
    }

    /// Opaque TCP to a mesh service port, over mTLS to the picked endpoint.
    async fn tcp_to_service<I>(&self, mut io: I, service: usize, port: u16)
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let snap = self.snapshot.load_full();
        let Some(svc) = snap.topology.services.get(service) else {
            return;
        };
        let key = ClusterKey { host: svc.fqdn.clone(), subset: None, port };
        let Some(cluster) = snap.clusters.get(&key) else {
            return;
        };
        let Some(ep) = cluster.pick() else {
            tracing::debug!(instance = %self.instance.name, "TCP to {}: no healthy upstream", svc.name);
            return;
        };
        let mtls = (self.forwarder.tls.as_ref(), ep.instance.identity.as_ref());
        match pool::connect(ep.addr, Some(mtls), Alpn::Tcp).await {
            Ok(pool::Stream::Tls(mut s)) => {
                let _ = tokio::io::copy_bidirectional(&mut io, &mut s).await;
            }
            Ok(pool::Stream::Plain(_)) => {}
            Err(e) => tracing::debug!(instance = %self.instance.name, "TCP to {}: {e}", svc.name),
        }
    }
}

/// Resolves `host[:port]` (DNS through the system resolver, off the runtime threads).
async fn resolve_addr(authority: &str, default_port: u16) -> Result<SocketAddr, ProxyError> {
    let (host, port) = split_authority(authority);
    let port = port.unwrap_or(default_port);
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let lookup = tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host((host, port))).await;
    match lookup {
        Ok(Ok(mut addrs)) => addrs.next().ok_or_else(|| ProxyError::ConnectFailed(format!("no address for {host}"))),
        Ok(Err(e)) => Err(ProxyError::ConnectFailed(format!("DNS resolution failed for {host}: {e}"))),
        Err(_) => Err(ProxyError::ConnectFailed(format!("DNS resolution timed out for {host}"))),
    }
}

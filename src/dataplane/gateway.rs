//! Ingress gateways: listeners on 127.0.0.1 for the mesh file's gateway ports, routing by
//! the virtual hosts that Gateway servers and their bound VirtualServices define. The gateway
//! is the edge: it appends `x-forwarded-for` and drops `x-envoy-*` headers from clients.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use http::header::HeaderValue;
use http::{Request, Response};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::body::{Body, ProxyBody};
use super::error::ProxyError;
use super::forward::{Forwarder, Routing};
use super::headers::{self, X_ENVOY_EXTERNAL_ADDRESS, X_FORWARDED_FOR};
use super::listen::{self, HttpMode};
use super::workers::Workers;
use crate::model::hosts::{normalize, split_authority};
use crate::model::routes::RouteTable;
use crate::model::snapshot::Shared;

static NO_ROUTES: LazyLock<RouteTable> = LazyLock::new(RouteTable::default);

pub struct Gateway {
    /// Index in `Topology::gateways`.
    pub index: usize,
    pub forwarder: Forwarder,
    pub snapshot: Shared,
}

impl Gateway {
    /// Serves one listener; `server_port` is the Gateway server port it stands for.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        server_port: u16,
        stop: CancellationToken,
        workers: Arc<Workers>,
    ) {
        let this = self.clone();
        listen::accept_loop(listener, stop, move |stream, peer| {
            let this = this.clone();
            workers.connection(stream, peer, move |stream, peer| async move {
                listen::serve_http(stream, HttpMode::Auto, move |req| {
                    let this = this.clone();
                    async move { this.request(server_port, peer, req).await }
                })
                .await;
            });
        })
        .await;
    }

    async fn request(&self, server_port: u16, peer: SocketAddr, mut req: Request<Body>) -> Response<ProxyBody> {
        let Some(authority) = headers::authority(&req).map(|a| a.as_str().to_string()) else {
            return ProxyError::BadRequest("missing Host").response();
        };
        edge_headers(req.headers_mut(), peer);
        let snap = self.snapshot.load_full();
        let host = normalize(split_authority(&authority).0).into_owned();
        let vhost = snap.gateway_routes.get(&(self.index, server_port)).and_then(|l| l.virtual_host(&host));
        let source = peer.ip().to_string();
        let routing = match vhost {
            Some(vh) => Routing {
                snapshot: &snap,
                table: &vh.table,
                authority: &authority,
                port: server_port,
                gateway: Some(&vh.gateway),
                service: "",
                source: &source,
            },
            None => Routing {
                snapshot: &snap,
                table: &NO_ROUTES,
                authority: &authority,
                port: server_port,
                gateway: None,
                service: "",
                source: &source,
            },
        };
        self.forwarder.forward(routing, req).await
    }
}

/// What an edge proxy does to a client's headers: internal `x-envoy-*` headers are not
/// trusted, the client address is appended to `x-forwarded-for`.
fn edge_headers(h: &mut http::HeaderMap, peer: SocketAddr) {
    let internal: Vec<_> = h.keys().filter(|k| k.as_str().starts_with("x-envoy-")).cloned().collect();
    for k in internal {
        h.remove(k);
    }
    let ip = peer.ip().to_string();
    let xff = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.is_empty() => format!("{prev}, {ip}"),
        _ => ip.clone(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(&ip) {
        h.insert(X_ENVOY_EXTERNAL_ADDRESS.clone(), v);
    }
    h.insert(headers::X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_appends_xff_and_drops_internal_headers() {
        let mut h = http::HeaderMap::new();
        h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        h.insert("x-envoy-attempt-count", "9".parse().unwrap());
        edge_headers(&mut h, "127.0.0.1:5555".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert!(h.get("x-envoy-attempt-count").is_none());
        assert_eq!(h["x-envoy-external-address"], "127.0.0.1");
    }
}

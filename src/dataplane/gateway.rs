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
use super::local_snapshot;
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
                // The client address, as text and as a header value, once per connection.
                let client = Client::new(peer);
                // A handle of this connection's own: requests clone it, not the proxy's `Arc`,
                // whose count every worker would write per request.
                let this = Arc::new(this);
                listen::serve_http(stream, HttpMode::Auto, move |req| {
                    this.clone().request(server_port, client.clone(), req)
                })
                .await;
            });
        })
        .await;
    }

    /// One request at a gateway server port. An async block, not an `async fn` (whose
    /// arguments would be stored twice): futures are moved whole on every request.
    #[allow(clippy::redundant_allocation)] // the outer Arc is the connection's own handle
    fn request(
        self: Arc<Arc<Self>>,
        server_port: u16,
        client: Client,
        mut req: Request<Body>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send {
        let authority = headers::authority(&req);
        edge_headers(req.headers_mut(), &client);
        async move {
            let Some(authority) = authority.as_ref().map(|a| a.as_str()) else {
                return ProxyError::BadRequest("missing Host").response();
            };
            let snap = local_snapshot::current(&self.snapshot);
            let host = normalize(split_authority(authority).0);
            let vhost = snap.gateway_routes.get(&(self.index, server_port)).and_then(|l| l.virtual_host(&host));
            let (table, gateway) = match vhost {
                Some(vh) => (&vh.table, Some(vh.gateway.as_str())),
                None => (&*NO_ROUTES, None),
            };
            let routing = Routing {
                snapshot: &snap,
                table,
                authority,
                port: server_port,
                gateway,
                service: None,
                source: &client.ip,
                original: None,
            };
            // Boxed, as in the sidecar's outbound side: the forwarding future is several KB.
            Box::pin(self.forwarder.forward(routing, req)).await
        }
    }
}

/// A downstream client's address.
#[derive(Clone)]
struct Client {
    ip: Arc<str>,
    /// `ip` as a header value (`None` cannot happen for an IP address; kept fallible).
    value: Option<HeaderValue>,
}

impl Client {
    fn new(peer: SocketAddr) -> Client {
        let ip = peer.ip().to_string();
        Client { value: HeaderValue::from_str(&ip).ok(), ip: Arc::from(ip) }
    }
}

/// What an edge proxy does to a client's headers: internal `x-envoy-*` headers are not
/// trusted, the client address is appended to `x-forwarded-for`.
fn edge_headers(h: &mut http::HeaderMap, client: &Client) {
    if h.keys().any(|k| k.as_str().starts_with("x-envoy-")) {
        let internal: Vec<_> = h.keys().filter(|k| k.as_str().starts_with("x-envoy-")).cloned().collect();
        for k in internal {
            h.remove(k);
        }
    }
    let Some(ip_value) = client.value.clone() else { return };
    let xff = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.is_empty() => HeaderValue::from_str(&format!("{prev}, {}", client.ip)).ok(),
        _ => Some(ip_value.clone()),
    };
    if let Some(v) = xff {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
    h.insert(X_ENVOY_EXTERNAL_ADDRESS.clone(), ip_value);
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
        edge_headers(&mut h, &Client::new("127.0.0.1:5555".parse().unwrap()));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert!(h.get("x-envoy-attempt-count").is_none());
        assert_eq!(h["x-envoy-external-address"], "127.0.0.1");
    }
}

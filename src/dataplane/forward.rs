//! Forwarding into the mesh, shared by a sidecar's outbound side and the gateways, in named
//! phases: route → destination (weighted) → endpoint (load balancer) → attempt over mTLS →
//! respond → record. Failures are answered as Envoy does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Version as HttpVersion};
use hyper::body::Incoming;

use super::body::{Body, ProxyBody};
use super::error::ProxyError;
use super::headers::{self, ISTIO_ENVOY, X_ENVOY_ATTEMPT_COUNT, X_ENVOY_UPSTREAM_SERVICE_TIME, X_FORWARDED_PROTO};
use super::pool::{Pools, Target, Version};
use super::workers::PerWorker;
use crate::identity::tls::WorkloadTls;
use crate::model::cluster::Cluster;
use crate::model::routes::{self, Action, RequestView, Route, RouteTable};
use crate::telemetry::{Reporter, RequestEvent, Telemetry, Texts};

/// A proxy that sends requests into the mesh.
pub struct Forwarder {
    /// The instance or gateway name (access log, events).
    pub proxy: Arc<str>,
    pub workload: Arc<str>,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub tls: Arc<WorkloadTls>,
    /// Upstream connections, per worker.
    pub pools: PerWorker<Pools>,
    pub telemetry: Telemetry,
    /// Gateways set `server: istio-envoy` and are the edge for `x-forwarded-*`.
    pub gateway: bool,
}

/// Where a request is headed, as resolved by the listener that received it.
pub struct Routing<'a> {
    pub table: &'a RouteTable,
    pub authority: &'a str,
    /// Service port (sidecar) or gateway server port.
    pub port: u16,
    /// `namespace/name` of the Gateway resource, for gateways.
    pub gateway: Option<&'a str>,
    /// For the record when no route matches.
    pub service: &'a str,
}

pub fn protocol_name(v: HttpVersion) -> &'static str {
    match v {
        HttpVersion::HTTP_2 => "HTTP/2",
        HttpVersion::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

impl Forwarder {
    pub async fn forward(&self, routing: Routing<'_>, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let start = Instant::now();
        let upgrade = headers::is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        let request_id = headers::ensure_request_id(&mut parts.headers);
        if !parts.headers.contains_key(&X_FORWARDED_PROTO) {
            parts.headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
        }
        let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut event = self.event(&parts, &path, routing.authority, &request_id, routing.service);

        // Route.
        let view = RequestView {
            method: parts.method.as_str(),
            scheme: "http",
            authority: routing.authority,
            path: path.as_str(),
            headers: &parts.headers,
            port: routing.port,
            source_labels: &self.labels,
            source_namespace: &self.namespace,
            gateway: routing.gateway,
        };
        let result = match routes::find(routing.table, &view) {
            None => Err(ProxyError::NoRoute),
            Some(route) => {
                event.route_name = Some(route.name.clone());
                match self.destination(route) {
                    Err(e) => Err(e),
                    Ok(cluster) => {
                        event.upstream_cluster = Some(cluster.name.clone());
                        event.subset = cluster.subset.clone();
                        event.destination_service = cluster.host.clone();
                        self.attempt(&cluster, parts, body, routing.authority, &mut event).await
                    }
                }
            }
        };
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                event.response_flags = e.flag().as_str();
                let mut r = e.response();
                r.headers_mut().insert(header::SERVER, ISTIO_ENVOY.clone());
                r
            }
        };
        if self.gateway {
            resp.headers_mut().insert(header::SERVER, ISTIO_ENVOY.clone());
        }
        if let Some(down) = upgrade
            && resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
        {
            splice_upgrade(down, &mut resp);
        }
        event.status = resp.status().as_u16();
        let telemetry = self.telemetry.clone();
        resp.body_mut().on_end(move |o| {
            event.bytes_sent = o.bytes;
            event.duration_ms = start.elapsed().as_millis() as u64;
            telemetry.record(event);
        });
        resp
    }

    /// Destination phase: the weighted pick among the route's clusters.
    fn destination(&self, route: &Route) -> Result<Arc<Cluster>, ProxyError> {
        let Action::Route { destinations, total_weight } = &route.action;
        let r = if *total_weight > 0 { fastrand::u32(0..*total_weight) } else { 0 };
        routes::pick_weighted(destinations, r).map(|d| d.cluster.clone()).ok_or(ProxyError::NoRoute)
    }

    /// Endpoint + attempt phases.
    async fn attempt(
        &self,
        cluster: &Cluster,
        mut parts: http::request::Parts,
        body: Incoming,
        authority: &str,
        event: &mut RequestEvent,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Some(endpoint) = cluster.pick() else {
            return Err(if cluster.service.is_none() { ProxyError::NoCluster } else { ProxyError::NoHealthyUpstream });
        };
        event.upstream_host = Some(endpoint.addr);
        event.destination_workload = Some(endpoint.instance.workload.clone());
        event.attempts = 1;
        let version = if parts.version == HttpVersion::HTTP_2 || cluster.protocol.app_speaks_h2() {
            Version::H2
        } else {
            Version::H1
        };
        parts.headers.insert(X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from_static("1"));
        let req = headers::to_upstream(Request::from_parts(parts, Body::Incoming(body)), version, authority, "http");
        let target =
            Target { addr: endpoint.addr, version, mtls: Some((self.tls.clone(), endpoint.instance.identity.clone())) };
        let sent = Instant::now();
        let mut resp = self.pools.get().send(&target, req).await?;
        let upstream_ms = sent.elapsed().as_millis() as u64;
        event.upstream_service_time_ms = Some(upstream_ms);
        event.mtls = true;
        headers::strip_hop_by_hop(resp.headers_mut());
        resp.headers_mut().insert(X_ENVOY_UPSTREAM_SERVICE_TIME.clone(), headers::service_time(upstream_ms));
        Ok(resp)
    }

    fn event(
        &self,
        parts: &http::request::Parts,
        path: &PathAndQuery,
        authority: &str,
        request_id: &HeaderValue,
        service: &str,
    ) -> RequestEvent {
        RequestEvent {
            ts: SystemTime::now(),
            reporter: Reporter::Source,
            proxy: self.proxy.clone(),
            source_workload: self.workload.clone(),
            source_principal: Some(self.tls.spiffe_arc.clone()),
            destination_service: Arc::from(service),
            destination_workload: None,
            upstream_cluster: None,
            upstream_host: None,
            route_name: None,
            subset: None,
            method: parts.method.clone(),
            texts: Texts::new(
                path.as_str(),
                Some(&authority_value(parts, authority)),
                Some(request_id),
                parts.headers.get(header::USER_AGENT),
            ),
            protocol: protocol_name(parts.version),
            status: 0,
            response_flags: "",
            duration_ms: 0,
            upstream_service_time_ms: None,
            bytes_sent: 0,
            bytes_received: content_length(&parts.headers),
            attempts: 0,
            mtls: false,
        }
    }
}

/// The request's authority as a header value, shared with the request where possible.
pub fn authority_value(parts: &http::request::Parts, authority: &str) -> HeaderValue {
    match parts.headers.get(header::HOST) {
        Some(h) if h.as_bytes() == authority.as_bytes() => h.clone(),
        _ => HeaderValue::from_str(authority).unwrap_or(HeaderValue::from_static("-")),
    }
}

pub fn content_length(h: &http::HeaderMap) -> u64 {
    h.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Joins a downstream upgrade (WebSocket, ...) to the upstream's once both sides switched.
pub fn splice_upgrade(down: hyper::upgrade::OnUpgrade, resp: &mut Response<ProxyBody>) {
    let up = hyper::upgrade::on(&mut *resp);
    tokio::spawn(async move {
        let (Ok(down), Ok(up)) = (down.await, up.await) else {
            return;
        };
        let mut down = hyper_util::rt::TokioIo::new(down);
        let mut up = hyper_util::rt::TokioIo::new(up);
        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
    });
}

//! The admin API (DESIGN.md §4), HTTP/1.1 on loopback: `/ready`, `/workloads`,
//! `/config_dump`, `/resources` (list, apply, delete), `/proxy-config`, `/shutdown`.
//! Requests from non-loopback peers are refused, and so is every request a web page could
//! make the browser send (see [`guard`]): a `Host` that is not the admin's own address (DNS
//! rebinding), a foreign `Origin` (CSRF), a state change without the run's bearer token or
//! with a content type a form can send.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};

use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::mesh::Mesh;
use crate::control::ControlPlane;
use crate::dataplane::body::{Body, ProxyBody};
use crate::dataplane::listen::{self, HttpMode};

use super::{proxy_config, resources};
use crate::model::snapshot::Shared;
use crate::model::topology::{ProcState, Topology};

/// CPU and memory of a process, sampled in the background.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ProcSample {
    pub cpu_percent: f32,
    pub memory_bytes: u64,
}

pub type ProcStats = Arc<Mutex<HashMap<u32, ProcSample>>>;

/// What the admin API reads.
pub struct State {
    pub mesh: Mesh,
    pub topology: Arc<Topology>,
    pub snapshot: Shared,
    pub stop: CancellationToken,
    pub stats: ProcStats,
    pub started: Instant,
    /// The resource store and the reload path (warnings of the running configuration too).
    pub control: Arc<ControlPlane>,
    pub telemetry: crate::telemetry::Telemetry,
    /// Where the admin API listens (the `Host` values it answers are derived from it).
    pub addr: SocketAddr,
    /// The run's bearer token (`super::token`).
    pub token: String,
    /// The mesh CA's root certificate, PEM.
    pub ca_root: String,
}

impl State {
    pub fn ready(&self) -> bool {
        self.topology.instances.iter().filter(|i| i.def.replicas > 0).all(|i| i.status.is_ready())
    }

    pub fn workloads(&self) -> serde_json::Value {
        let stats = self.stats.lock().map(|s| s.clone()).unwrap_or_default();
        let mut out = Vec::new();
        for i in &self.topology.instances {
            let pid = i.status.pid.load(std::sync::atomic::Ordering::Relaxed);
            let sample = stats.get(&pid).copied().unwrap_or_default();
            let state = i.status.state();
            let upstreams: serde_json::Map<String, serde_json::Value> = i
                .upstreams
                .iter()
                .map(|u| {
                    let ports: serde_json::Map<String, serde_json::Value> =
                        u.ports.iter().map(|(p, a)| (p.to_string(), json!(a.port()))).collect();
                    (u.service_name.clone(), json!({"host": u.ip.to_string(), "ports": ports}))
                })
                .collect();
            out.push(json!({
                "kind": "workload",
                "name": i.name,
                "workload": i.workload,
                "service": i.service_name,
                "namespace": i.namespace,
                "labels": i.labels,
                "identity": i.identity.as_ref(),
                "pid": if pid == 0 { serde_json::Value::Null } else { json!(pid) },
                "state": state.label(),
                "ready": i.status.is_ready(),
                "restarts": i.status.restarts.load(std::sync::atomic::Ordering::Relaxed),
                "backoff_ms": i.status.backoff_ms.load(std::sync::atomic::Ordering::Relaxed),
                "exit_code": match state { ProcState::Exited { code, .. } => json!(code), _ => serde_json::Value::Null },
                "cpu_percent": sample.cpu_percent,
                "memory_bytes": sample.memory_bytes,
                "ports": i.ports.iter().map(|p| json!({
                    "port": p.port,
                    "name": p.name,
                    "protocol": p.protocol,
                    "app": p.app.to_string(),
                    "inbound": p.inbound.to_string(),
                })).collect::<Vec<_>>(),
                "outbound_proxy": i.outbound.to_string(),
                "upstreams": upstreams,
            }));
        }
        for g in &self.topology.gateways {
            out.push(json!({
                "kind": "gateway",
                "name": g.name,
                "namespace": g.namespace,
                "labels": g.labels,
                "identity": g.identity.as_ref(),
                "state": "Ready",
                "ready": true,
                "listeners": g.listeners.iter().map(|(port, addr)| json!({"server_port": port, "address": addr.to_string()})).collect::<Vec<_>>(),
            }));
        }
        serde_json::Value::Array(out)
    }

    pub fn config_dump(&self) -> serde_json::Value {
        let snap = self.snapshot.load_full();
        let warnings: Vec<String> = self.control.warnings().iter().map(|d| d.to_string()).collect();
        json!({
            "version": snap.version,
            "uptime_ms": self.started.elapsed().as_millis() as u64,
            "mesh": &self.mesh,
            "topology": &*self.topology,
            "resources": &*snap.resources,
            "warnings": warnings,
            "telemetry": {"dropped_events": self.telemetry.dropped()},
            "connections": {
                "open": crate::dataplane::admission::counts().0,
                "refused": crate::dataplane::admission::counts().1,
                "limit": crate::dataplane::admission::limits().edge,
                "limit_with_reserve": crate::dataplane::admission::limits().internal,
            },
            "compiled": &*snap,
        })
    }
}

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<ProxyBody> {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    let mut r = Response::new(ProxyBody::full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

fn text(status: StatusCode, s: &str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(Bytes::from(s.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Only clients on this machine's loopback may use the admin API.
fn allowed(peer: SocketAddr) -> bool {
    peer.ip().is_loopback() || peer.ip().to_canonical().is_loopback()
}

/// The largest request body the admin API reads (an `apply` of many files).
pub const MAX_BODY: usize = 32 * 1024 * 1024;

/// The answer to a request body over [`MAX_BODY`].
fn too_large() -> Response<ProxyBody> {
    let msg =
        format!("request body larger than the admin API's limit of {} MiB; apply fewer files at once", MAX_BODY >> 20);
    let mut r = json_response(StatusCode::PAYLOAD_TOO_LARGE, &json!({ "errors": [msg] }));
    r.headers_mut().insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    r
}

/// Reads what is left of a refused body and drops it, for at most 1 GiB or 30 s.
async fn drain(mut body: Body) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seen = 0usize;
    while seen < 1 << 30 {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(f))) => seen += f.data_ref().map_or(0, Bytes::len),
            _ => return,
        }
    }
}

/// Read-only telemetry that scripts and Prometheus read without the token (still only with
/// the admin's own `Host` and no foreign `Origin`).
fn tokenless(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && (matches!(path, "/ready" | "/workloads" | "/ca" | "/stats/prometheus" | "/events" | "/traces")
            || path.starts_with("/traces/"))
}

/// Is `host` (a `Host` header or an origin's authority) this admin's own address: the bound
/// `ip:port`, `localhost:port`, or any loopback address on the port when bound to all?
fn own_host(bound: SocketAddr, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let Some((name, port)) = host.rsplit_once(':') else { return false };
    if port.parse::<u16>().ok() != Some(bound.port()) {
        return false;
    }
    if name == "localhost" {
        return true;
    }
    let ip: Option<std::net::IpAddr> = name.trim_start_matches('[').trim_end_matches(']').parse().ok();
    match ip {
        Some(ip) if bound.ip().is_unspecified() => ip.is_loopback(),
        Some(ip) => ip == bound.ip(),
        None => false,
    }
}

fn refused(status: StatusCode, msg: &str) -> (StatusCode, String) {
    (status, msg.to_string())
}

fn refuse(status: StatusCode, msg: &str) -> Response<ProxyBody> {
    let mut r = json_response(status, &json!({"errors": [msg]}));
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer realm=\"devmesh\""));
    }
    r
}

/// What protects the API from the browser next to it and from other users of the machine:
/// the `Host` must be the admin's own (a DNS-rebinding page sends its own name), an `Origin`
/// must be the admin's own (a cross-site form or fetch carries the page's), a state change
/// must carry a content type a form cannot send, and everything but read-only telemetry needs
/// the run's bearer token (a custom header, so a browser would also need a CORS preflight,
/// which the API never grants).
pub fn guard<B>(
    bound: SocketAddr,
    token: &str,
    peer: SocketAddr,
    req: &Request<B>,
) -> Result<(), (StatusCode, String)> {
    if !allowed(peer) {
        return Err(refused(StatusCode::FORBIDDEN, "the admin API answers loopback clients only"));
    }
    let host = req.uri().authority().map(|a| a.as_str().to_string()).or_else(|| {
        let mut hosts = req.headers().get_all(header::HOST).iter();
        let first = hosts.next()?.to_str().ok()?.to_string();
        hosts.next().is_none().then_some(first)
    });
    let Some(host) = host.filter(|h| own_host(bound, h)) else {
        return Err(refused(
            StatusCode::FORBIDDEN,
            &format!(
                "Host {:?} is not this admin API's address ({bound} or localhost:{}); refused (DNS rebinding guard)",
                req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or(""),
                bound.port()
            ),
        ));
    };
    for origin in req.headers().get_all(header::ORIGIN) {
        let o = origin.to_str().unwrap_or("");
        let ok = o.strip_prefix("http://").is_some_and(|a| own_host(bound, a) && a.eq_ignore_ascii_case(&host));
        if !ok {
            return Err(refused(StatusCode::FORBIDDEN, &format!("cross-origin request from {o:?} refused")));
        }
    }
    let method = req.method();
    if tokenless(method, req.uri().path()) {
        return Ok(());
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    match given {
        Some(t) if super::token::same(t.as_bytes(), token.as_bytes()) => {}
        Some(_) => {
            return Err(refused(
                StatusCode::UNAUTHORIZED,
                "wrong admin token (this mesh's is in <state dir>/admin-token)",
            ));
        }
        None => {
            return Err(refused(
                StatusCode::UNAUTHORIZED,
                "this request needs the admin token: the devmesh CLI finds it for --admin ADDR; \
                 scripts send `Authorization: Bearer $(cat <state dir>/admin-token)`",
            ));
        }
    }
    let changes = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    let has_body =
        req.headers().contains_key(header::CONTENT_LENGTH) || req.headers().contains_key(header::TRANSFER_ENCODING);
    if changes && has_body && method == Method::POST {
        let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        let empty = req.headers().get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() == b"0");
        if !empty && !matches!(mime.as_str(), "application/json" | "application/yaml" | "application/x-yaml") {
            return Err(refused(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!("Content-Type {ct:?} refused: send application/json or application/yaml"),
            ));
        }
    }
    Ok(())
}

async fn handle(state: Arc<State>, peer: SocketAddr, req: Request<Body>) -> Response<ProxyBody> {
    if let Err((status, why)) = guard(state.addr, &state.token, peer, &req) {
        return refuse(status, &why);
    }
    let path = req.uri().path().to_string();
    let q = resources::query(req.uri().query());
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/ready") => {
            if state.ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                let waiting: Vec<&str> = state
                    .topology
                    .instances
                    .iter()
                    .filter(|i| i.def.replicas > 0 && !i.status.is_ready())
                    .map(|i| i.name.as_str())
                    .collect();
                text(StatusCode::SERVICE_UNAVAILABLE, &format!("not ready: {}\n", waiting.join(", ")))
            }
        }
        (Method::GET, "/workloads") => json_response(StatusCode::OK, &state.workloads()),
        // The mesh's root certificate (public: what clients need to trust the gateway).
        (Method::GET, "/ca") => {
            let mut r = text(StatusCode::OK, &state.ca_root);
            r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-pem-file"));
            r
        }
        (Method::GET, "/config_dump") => json_response(StatusCode::OK, &state.config_dump()),
        (Method::POST, "/shutdown") => {
            state.stop.cancel();
            text(StatusCode::OK, "shutting down\n")
        }
        (Method::GET, "/resources") => match resources::list(&state.control, &q) {
            Ok(v) => json_response(StatusCode::OK, &v),
            Err(e) => json_response(StatusCode::NOT_FOUND, &json!({"errors": [e]})),
        },
        (Method::POST, "/resources")
            if req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .is_some_and(|n| n > MAX_BODY as u64) =>
        {
            // Read and dropped (not kept), so the client, still sending, reads the answer
            // instead of a reset ("Broken pipe").
            drain(req.into_body()).await;
            too_large()
        }
        (Method::POST, "/resources") => {
            let json_body = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
            let mut body = req.into_body();
            let mut kept = bytes::BytesMut::new();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            if kept.len() + d.len() > MAX_BODY {
                                drain(body).await;
                                return too_large();
                            }
                            kept.extend_from_slice(d);
                        }
                    }
                    Err(e) => {
                        return json_response(
                            StatusCode::BAD_REQUEST,
                            &json!({"errors": [format!("request body: {e}")]}),
                        );
                    }
                }
            }
            let body = kept.freeze();
            let control = state.control.clone();
            let result = tokio::task::spawn_blocking(move || resources::apply(&control, &q, json_body, &body)).await;
            match result {
                Ok((status, v)) => json_response(StatusCode::from_u16(status).unwrap_or(StatusCode::OK), &v),
                Err(e) => json_response(StatusCode::INTERNAL_SERVER_ERROR, &json!({"errors": [e.to_string()]})),
            }
        }
        (Method::DELETE, p) if p.starts_with("/resources/") => {
            let control = state.control.clone();
            let rest = p["/resources/".len()..].to_string();
            match tokio::task::spawn_blocking(move || resources::delete(&control, &rest)).await {
                Ok((status, v)) => json_response(StatusCode::from_u16(status).unwrap_or(StatusCode::OK), &v),
                Err(e) => json_response(StatusCode::INTERNAL_SERVER_ERROR, &json!({"errors": [e.to_string()]})),
            }
        }
        (Method::GET, p) if p.starts_with("/proxy-config/") => {
            let snap = state.control.current();
            let mut it = p["/proxy-config/".len()..].splitn(2, '/');
            let (what, name) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
            let v = match what {
                "routes" => proxy_config::routes(&snap, name),
                "clusters" => proxy_config::clusters(&snap, name),
                "endpoints" => proxy_config::endpoints(&snap, name),
                "listeners" => proxy_config::listeners(&snap, name),
                _ => {
                    return json_response(
                        StatusCode::NOT_FOUND,
                        &json!({"errors": ["expected /proxy-config/{routes|clusters|endpoints|listeners}/{workload}"]}),
                    );
                }
            };
            match v {
                Some(v) => json_response(StatusCode::OK, &v),
                None => json_response(
                    StatusCode::NOT_FOUND,
                    &json!({"errors": [format!("no workload or gateway named {name:?}; known: {}", proxy_config::names(&snap).join(", "))]}),
                ),
            }
        }
        (_, "/ready" | "/workloads" | "/config_dump" | "/shutdown" | "/resources") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /ready, /workloads, /config_dump, /resources, /proxy-config/routes/NAME, POST /shutdown\n",
        ),
    }
}

pub async fn serve(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    listen::accept_loop(listener, stop, move |stream, peer| {
        let state = state.clone();
        // The admin API uses the reserve above the cap for outside connections.
        let Some(permit) = crate::dataplane::admission::admit(true) else { return };
        tokio::spawn(async move {
            let _permit = permit;
            listen::serve_http(stream, HttpMode::Http1, move |req| handle(state.clone(), peer, req)).await;
        });
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_peers_are_allowed() {
        assert!(allowed("127.0.0.1:5000".parse().unwrap()));
        assert!(allowed("127.9.9.9:5000".parse().unwrap()));
        assert!(allowed("[::1]:5000".parse().unwrap()));
        assert!(allowed("[::ffff:127.0.0.1]:5000".parse().unwrap()));
        assert!(!allowed("192.168.1.10:5000".parse().unwrap()));
        assert!(!allowed("[2001:db8::1]:5000".parse().unwrap()));
    }

    #[test]
    fn only_the_admins_own_host_is_answered() {
        let bound: SocketAddr = "127.0.0.1:15000".parse().unwrap();
        assert!(own_host(bound, "127.0.0.1:15000"));
        assert!(own_host(bound, "LOCALHOST:15000"));
        assert!(!own_host(bound, "localhost"), "no port: not ours");
        assert!(!own_host(bound, "localhost:15001"));
        assert!(!own_host(bound, "127.0.0.2:15000"));
        assert!(!own_host(bound, "evil.example:15000"));
        assert!(!own_host(bound, "127.0.0.1.evil.example:15000"));
        let any: SocketAddr = "0.0.0.0:15000".parse().unwrap();
        assert!(own_host(any, "127.0.0.9:15000"));
        assert!(own_host(any, "[::1]:15000"));
        assert!(!own_host(any, "10.0.0.1:15000"));
        let v6: SocketAddr = "[::1]:15000".parse().unwrap();
        assert!(own_host(v6, "[::1]:15000"));
        assert!(!own_host(v6, "127.0.0.1:15000"));
    }
}

//! Forwarding into the mesh, shared by a sidecar's outbound side and the gateways, in named
//! phases as Envoy's filter chain runs them: route → CORS → fault → action (direct response,
//! redirect or forward) → destination (weighted) → attempts (load balancer, per-try timeout,
//! retries with back-off, route timeout) → respond → record. Failures answer as Envoy does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Version as HttpVersion};
use http_body::Body as _;
use http_body_util::BodyExt;

use super::body::{Body, ProxyBody};
use super::error::ProxyError;
use super::h1;
use super::headers::{self, ISTIO_ENVOY, X_ENVOY_ATTEMPT_COUNT, X_ENVOY_UPSTREAM_SERVICE_TIME, X_FORWARDED_PROTO};
use super::pool::{Pools, Target, Version};
use super::resolve;
use super::workers::PerWorker;
use crate::identity::tls::WorkloadTls;
use crate::model::cluster::{Active, Address, Cluster, Endpoint, HashInput, Transport};
use crate::model::lb::{Lb, fnv1a};
use crate::model::policy::{Abort, AttemptFailure, Cors, Mirror};
use crate::model::routes::{self, Action, Forward, RequestView, Route, RouteTable};
use crate::model::snapshot::MeshSnapshot;
use crate::telemetry::{Flags, Name, Reporter, RequestEvent, Telemetry, Texts};

/// Request bodies up to this size are buffered so retries and mirrors can replay them
/// (Envoy's default buffer limit); larger or unsized bodies stream and are not retried.
const MAX_REPLAY_BODY: u64 = 1024 * 1024;

/// A proxy that sends requests into the mesh.
pub struct Forwarder {
    /// The instance or gateway name (access log, events).
    pub proxy: Name,
    pub workload: Name,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub tls: Arc<WorkloadTls>,
    /// Upstream connections, per worker.
    pub pools: PerWorker<Arc<Pools>>,
    pub telemetry: Telemetry,
    /// Gateways set `server: istio-envoy` and are the edge for `x-forwarded-*`.
    pub gateway: bool,
}

/// Where a request is headed, as resolved by the listener that received it.
pub struct Routing<'a> {
    pub snapshot: &'a MeshSnapshot,
    pub table: &'a RouteTable,
    pub authority: &'a str,
    /// Service port (sidecar) or gateway server port.
    pub port: u16,
    /// `namespace/name` of the Gateway resource, for gateways.
    pub gateway: Option<&'a str>,
    /// For the record when no route matches: the registry service, or `None` for a host
    /// outside it (the record's authority names it).
    pub service: Option<Name>,
    /// What `useSourceIp` hashes: the client address at a gateway, the workload instance in
    /// a sidecar (every instance shares 127.0.0.1).
    pub source: &'a str,
    /// The original destination, when the authority was already parsed as an IP literal
    /// with a port while resolving it.
    pub original: Option<SocketAddr>,
}

/// The request's path and query, as routes match it.
fn path_of(uri: &http::Uri) -> &str {
    uri.path_and_query().map_or("/", |p| p.as_str())
}

pub fn protocol_name(v: HttpVersion) -> &'static str {
    match v {
        HttpVersion::HTTP_2 => "HTTP/2",
        HttpVersion::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

/// A request body as the attempts see it.
enum Replay {
    Empty,
    Buffered(Bytes),
    /// Streams once: the request gets one attempt.
    Stream(Option<Body>),
}

impl Replay {
    fn replayable(&self) -> bool {
        !matches!(self, Replay::Stream(_))
    }

    /// The body as bytes, for a replayable one.
    fn bytes(&self) -> &[u8] {
        match self {
            Replay::Buffered(b) => b,
            _ => &[],
        }
    }

    fn body(&mut self) -> Body {
        match self {
            Replay::Empty => Body::Empty,
            Replay::Buffered(b) => Body::full(b.clone()),
            Replay::Stream(s) => s.take().unwrap_or(Body::Empty),
        }
    }
}

/// What the route phase decided.
enum Routed<'t> {
    Matched {
        route: &'t Route,
        /// The prefix a `prefix` match matched, for rewrites and redirects.
        matched_prefix: Option<&'t str>,
        /// The origin to allow on the way back (CORS).
        cors_origin: Option<(&'t Cors, HeaderValue)>,
    },
    /// No route, or a CORS preflight: the answer.
    Answered(Result<Response<ProxyBody>, ProxyError>),
}

/// What the forward phase leaves for the record.
#[derive(Default)]
struct Extra {
    /// A LEAST_REQUEST endpoint stays counted until the response body ends.
    active: Option<Active>,
}

/// One attempt: the in-task client borrows the head of a complete HTTP/1.1 request (no copy
/// per attempt); anything else goes through hyper's client, the last attempt taking the head
/// (`parts` is then left empty, and `taken` set).
async fn attempt_once(
    pools: &Pools,
    target: &Target<'_>,
    complete: bool,
    last: bool,
    (parts, taken): (&mut Parts, &mut bool),
    replay: &mut Replay,
) -> Result<Response<ProxyBody>, ProxyError> {
    if *taken {
        return Err(ProxyError::BadRequest("request already sent"));
    }
    if complete {
        return pools.send_complete(target, parts, replay.bytes()).await;
    }
    let p = if last {
        *taken = true;
        std::mem::replace(parts, Request::new(()).into_parts().0)
    } else {
        clone_parts(parts)
    };
    // Boxed: hyper's client path is the rare one here, and unboxed it would double the size
    // of every attempt's future (futures are moved whole into their parent's state).
    Box::pin(pools.send(target, Request::from_parts(p, replay.body()))).await
}

fn roll(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && fastrand::f64() * 100.0 < percent)
}

/// A request's record while it is in flight. The response's body takes it and records the
/// request when it ends; if the request's future is dropped first (the client went away
/// before the response, so the server cancelled it), it is recorded here as Envoy logs a
/// downstream cancel: status 0, flag `DC`.
pub(super) struct Pending {
    pub(super) event: Option<RequestEvent>,
    pub(super) sink: crate::telemetry::queue::Sink,
    pub(super) start: Instant,
    /// The count of a streamed request body's bytes (see `Body::counted`).
    pub(super) received: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut e) = self.event.take() {
            if let Some(n) = &self.received {
                e.bytes_received = n.load(std::sync::atomic::Ordering::Relaxed);
            }
            e.status = 0;
            e.response_flags.add(Flags::DC);
            e.duration_ms = self.start.elapsed().as_millis() as u64;
            self.sink.record(e);
        }
    }
}

impl Forwarder {
    /// Forwards one request. The request is prepared before the future is built, so the
    /// future holds the prepared parts once (an `async fn` would also keep its arguments), and
    /// the phases below borrow them: futures are moved whole into their parent's state, so
    /// their size is paid for on every request.
    pub fn forward<'a>(
        &'a self,
        routing: Routing<'a>,
        mut req: Request<Body>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'a {
        let start = Instant::now();
        let upgrade = headers::is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        // A body of unknown length (gRPC, chunked) is counted for the record's bytes received.
        let (mut body, received) = body.counted();
        // Room for what the proxy adds (request id, x-forwarded-proto, attempt count, Host):
        // one allocation instead of a growth per insert.
        parts.headers.reserve(4);
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::ensure_request_id(&mut parts.headers);
        parts.headers.entry(X_FORWARDED_PROTO.clone()).or_insert_with(|| HeaderValue::from_static("http"));
        let event = self.event(&parts, path_of(&parts.uri), routing.authority, routing.service);
        let mut pending = Pending { event: Some(event), sink: self.telemetry.sink(), start, received };
        // An async block, not an `async fn`: its captures are stored once (an `async fn`
        // keeps its arguments beside the locals they are moved into).
        async move {
            let Some(event) = pending.event.as_mut() else {
                return local(StatusCode::INTERNAL_SERVER_ERROR, Bytes::from_static(b"no request record"));
            };
            let mut extra = Extra::default();
            // The phases run as plain functions; only the waits are awaited, here, so no
            // intermediate future is built and copied per request.
            let result = 'handle: {
                let (route, matched_prefix, cors_origin) = match self.route_phase(&routing, &parts, event) {
                    Routed::Matched { route, matched_prefix, cors_origin } => (route, matched_prefix, cors_origin),
                    Routed::Answered(answer) => break 'handle answer,
                };
                if let Some((delay, pct)) = route.fault.as_ref().and_then(|f| f.delay)
                    && roll(pct)
                {
                    event.response_flags.add(Flags::DI);
                    tokio::time::sleep(delay).await;
                }
                if let Some(aborted) = Self::abort_phase(route, event) {
                    break 'handle aborted;
                }
                let mut resp = match &route.action {
                    Action::Route(fwd) => {
                        match self
                            .send(&routing, route, fwd, matched_prefix, &mut parts, &mut body, event, &mut extra)
                            .await
                        {
                            Ok(r) => r,
                            Err(e) => break 'handle Err(e),
                        }
                    }
                    Action::DirectResponse { status, body } => {
                        local(StatusCode::from_u16(*status).unwrap_or(StatusCode::OK), body.clone())
                    }
                    Action::Redirect(r) => Self::redirect(&routing, &parts, r, matched_prefix),
                };
                Self::respond_phase(route, cors_origin, &mut resp);
                Ok(resp)
            };
            let mut resp = match result {
                Ok(r) => r,
                Err(e) => {
                    event.response_flags.add(e.flag());
                    let mut r = e.response();
                    r.headers_mut().insert(header::SERVER, ISTIO_ENVOY.clone());
                    r
                }
            };
            if self.gateway {
                resp.headers_mut().insert(header::SERVER, ISTIO_ENVOY.clone());
            }
            if let Some(down) = upgrade
                && resp.status() == StatusCode::SWITCHING_PROTOCOLS
            {
                splice_upgrade(down, &mut resp);
            }
            event.status = resp.status().as_u16();
            // From here the response's body records the request; dropped before, the request
            // was cancelled and `Pending` records it.
            let Some(mut event) = pending.event.take() else { return resp };
            let sink = pending.sink;
            let received = pending.received.take();
            let active = extra.active.take();
            resp.body_mut().on_end(move |o| {
                drop(active);
                // Cut short: by the upstream (UC) or by the client going away mid-response (DC).
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

    /// Fault phase, the abort half (the delay is awaited by the caller): the answer, when
    /// this request is aborted.
    fn abort_phase(route: &Route, event: &mut RequestEvent) -> Option<Result<Response<ProxyBody>, ProxyError>> {
        let (abort, pct) = route.fault.as_ref()?.abort?;
        if !roll(pct) {
            return None;
        }
        Some(match abort {
            Abort::Http(code) => {
                Err(ProxyError::FaultAbort(StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)))
            }
            Abort::Grpc(code) => {
                event.response_flags.add(Flags::FI);
                Ok(grpc_abort(code))
            }
        })
    }

    /// A redirect route's answer.
    fn redirect(
        routing: &Routing<'_>,
        parts: &Parts,
        r: &crate::model::policy::Redirect,
        matched_prefix: Option<&str>,
    ) -> Response<ProxyBody> {
        let location = r.location("http", routing.authority, path_of(&parts.uri), matched_prefix);
        let mut resp = local(StatusCode::from_u16(r.code).unwrap_or(StatusCode::MOVED_PERMANENTLY), Bytes::new());
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        resp
    }

    /// The route's response header operations and CORS headers, on the way back.
    fn respond_phase(route: &Route, cors_origin: Option<(&Cors, HeaderValue)>, resp: &mut Response<ProxyBody>) {
        route.headers.response.apply(resp.headers_mut());
        if let Some((cors, origin)) = cors_origin {
            let h = resp.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            if cors.allow_credentials {
                h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
            }
            if let Some(v) = cors.expose_headers.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
            }
        }
    }

    /// Route and CORS phases: the matched route, or the answer when there is no route or
    /// this is a preflight.
    fn route_phase<'t>(&self, routing: &Routing<'t>, parts: &Parts, event: &mut RequestEvent) -> Routed<'t> {
        let view = RequestView {
            method: parts.method.as_str(),
            scheme: "http",
            authority: routing.authority,
            path: path_of(&parts.uri),
            headers: &parts.headers,
            port: routing.port,
            source_labels: &self.labels,
            source_namespace: &self.namespace,
            gateway: routing.gateway,
        };
        let Some((route, matched)) = routes::find(routing.table, &view) else {
            return Routed::Answered(Err(ProxyError::NoRoute));
        };
        event.route_name = Some(route.name);
        let matched_prefix = matched.and_then(|m| m.matched_prefix());

        // CORS: preflights are answered here; other requests get the headers on the way back.
        let mut cors_origin = None;
        if let (Some(cors), Some(origin)) = (&route.cors, parts.headers.get(header::ORIGIN)) {
            let allowed = origin.to_str().is_ok_and(|o| cors.allows(o));
            let preflight =
                parts.method == Method::OPTIONS && parts.headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
            if preflight && allowed {
                return Routed::Answered(Ok(preflight_response(cors, origin.clone())));
            }
            if preflight && !cors.forward_unmatched_preflights {
                return Routed::Answered(Ok(local(StatusCode::OK, Bytes::new())));
            }
            if allowed {
                cors_origin = Some((cors, origin.clone()));
            }
        }
        Routed::Matched { route, matched_prefix, cors_origin }
    }

    /// Destination and attempt phases of a forwarding route.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        routing: &Routing<'_>,
        route: &Route,
        fwd: &Forward,
        matched_prefix: Option<&str>,
        parts: &mut Parts,
        body: &mut Body,
        event: &mut RequestEvent,
        extra: &mut Extra,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let r = if fwd.total_weight > 0 { fastrand::u32(0..fwd.total_weight) } else { 0 };
        let dest = routes::pick_weighted(&fwd.destinations, r).ok_or(ProxyError::NoRoute)?;
        let cluster = &dest.cluster;
        event.upstream_cluster = Some(cluster.name);
        event.subset = cluster.subset;
        if cluster.service.is_some() {
            event.destination_service = Some(cluster.host);
        }
        if cluster.missing_subset || (cluster.service.is_none() && cluster.endpoints.is_empty()) {
            return Err(ProxyError::NoCluster);
        }

        // Request rewriting: header operations (route, then destination), then rewrite.
        route.headers.request.apply(&mut parts.headers);
        dest.headers.request.apply(&mut parts.headers);
        let mut authority: std::borrow::Cow<'_, str> = std::borrow::Cow::Borrowed(routing.authority);
        if let Some(rw) = &fwd.rewrite {
            if let Some(new_path) = rw.path(path_of(&parts.uri), matched_prefix)
                && let Ok(pq) = PathAndQuery::try_from(new_path)
            {
                let mut uri = std::mem::take(&mut parts.uri).into_parts();
                uri.path_and_query = Some(pq);
                parts.uri = http::Uri::from_parts(uri).unwrap_or_default();
            }
            if let Some(a) = &rw.authority {
                parts.headers.insert(header::HOST, a.clone());
                authority = std::borrow::Cow::Owned(a.to_str().unwrap_or_default().to_string());
            }
        }

        // Hashed after the header operations and rewrites, as Envoy computes the hash once
        // the route has finalized the request headers.
        let (hash, set_cookie) = match cluster.hash_input(&parts.headers, parts.uri.query(), routing.source) {
            HashInput::None => (None, None),
            HashInput::Hash(h) => (Some(h), None),
            HashInput::SetCookie { name, path, ttl } => {
                let value = format!("{:016x}", fastrand::u64(..));
                let mut cookie = format!("{name}=\"{value}\"");
                if !ttl.is_zero() {
                    cookie.push_str(&format!("; Max-Age={}", ttl.as_secs()));
                }
                if let Some(p) = path {
                    cookie.push_str(&format!("; Path={p}"));
                }
                cookie.push_str("; HttpOnly");
                (Some(fnv1a(value.as_bytes())), HeaderValue::from_str(&cookie).ok())
            }
        };

        let retry = &fwd.retry;
        let mut replay = if body.is_end_stream() {
            Replay::Empty
        } else if (retry.attempts > 0 || !fwd.mirrors.is_empty())
            && content_length(&parts.headers).is_some_and(|n| n <= MAX_REPLAY_BODY)
        {
            let limited = http_body_util::Limited::new(std::mem::replace(body, Body::Empty), MAX_REPLAY_BODY as usize);
            match Box::pin(limited.collect()).await {
                Ok(c) => Replay::Buffered(c.to_bytes()),
                Err(_) => return Err(ProxyError::BadRequest("request body could not be read")),
            }
        } else {
            Replay::Stream(Some(std::mem::replace(body, Body::Empty)))
        };

        for m in &fwd.mirrors {
            if roll(m.percent) && replay.replayable() {
                self.mirror(m, parts, &mut replay, &authority);
            }
        }

        let version = if parts.version == HttpVersion::HTTP_2 || cluster.protocol.app_speaks_h2() {
            Version::H2
        } else {
            Version::H1
        };
        let max_attempts = 1 + if replay.replayable() { retry.attempts } else { 0 };
        let deadline = fwd.timeout.map(|t| Instant::now() + t);
        let mut tried = [usize::MAX; 8];
        let mut attempt: u32 = 0;
        headers::to_upstream_parts(parts, version, &authority, "http");
        // A complete body over HTTP/1.1 goes through the in-task client, which borrows the
        // head: no copy per attempt.
        let complete =
            version == Version::H1 && replay.replayable() && h1::eligible_head(&parts.method, &parts.headers);
        let mut taken = false;
        loop {
            attempt += 1;
            event.attempts = attempt;
            let excluded = &tried[..(attempt as usize - 1).min(tried.len())];
            let Some(ei) = cluster.pick(hash, excluded) else {
                return Err(ProxyError::NoHealthyUpstream);
            };
            if let Some(slot) = tried.get_mut(attempt as usize - 1) {
                *slot = ei;
            }
            let ep = &cluster.endpoints[ei];
            event.destination_workload = ep.instance.as_ref().map(|i| i.workload);
            let last = attempt >= max_attempts;
            parts.headers.insert(X_ENVOY_ATTEMPT_COUNT.clone(), attempt_count(attempt));
            // The literal parsed while resolving holds only while the authority is the request's.
            let original = if matches!(authority, std::borrow::Cow::Borrowed(_)) { routing.original } else { None };
            let target = match self.target(cluster, ep, version, (&authority, original), routing.snapshot).await {
                Ok(t) => t,
                Err(e) => {
                    if !last && retry.retriable_failure(AttemptFailure::ConnectFailure) {
                        self.back_off(retry, attempt, deadline).await?;
                        continue;
                    }
                    if attempt > 1 {
                        event.response_flags.add(Flags::URX);
                    }
                    return Err(e);
                }
            };
            event.upstream_host = Some(target.addr);
            event.mtls = target.mtls.is_some();
            let active = matches!(cluster.lb, Lb::LeastRequest).then(|| Active::start(cluster, ei));

            let now = Instant::now();
            let remaining = deadline.map(|d| d.saturating_duration_since(now));
            let limit = match (retry.per_try_timeout, remaining) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let per_try_binding = retry.per_try_timeout.is_some_and(|pt| remaining.is_none_or(|r| pt < r));
            let pools = self.pools.get();
            // The attempt future is built inside each arm (not held in a local across the
            // await), so this state machine holds it once.
            let outcome = match limit {
                None => {
                    attempt_once(pools, &target, complete, last, (parts, &mut taken), &mut replay).await.map_err(Some)
                }
                Some(l) => {
                    match tokio::time::timeout(
                        l,
                        attempt_once(pools, &target, complete, last, (parts, &mut taken), &mut replay),
                    )
                    .await
                    {
                        Ok(r) => r.map_err(Some),
                        Err(_) => Err(None),
                    }
                }
            };
            match outcome {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    if retry.retriable_response(status, resp.headers()) {
                        if !last {
                            drop(resp);
                            self.back_off(retry, attempt, deadline).await?;
                            continue;
                        }
                        if attempt > 1 {
                            event.response_flags.add(Flags::URX);
                        }
                    }
                    let upstream_ms = now.elapsed().as_millis() as u64;
                    event.upstream_service_time_ms = Some(upstream_ms);
                    headers::strip_hop_by_hop(resp.headers_mut());
                    let h = resp.headers_mut();
                    h.insert(X_ENVOY_UPSTREAM_SERVICE_TIME.clone(), headers::service_time(upstream_ms));
                    dest.headers.response.apply(h);
                    if let Some(c) = set_cookie {
                        h.append(header::SET_COOKIE, c);
                    }
                    extra.active = active;
                    return Ok(resp);
                }
                Err(None) if !per_try_binding => return Err(ProxyError::Timeout),
                // The downstream's own malformed body: not the upstream's failure, no retry.
                Err(Some(e @ ProxyError::BadRequest(_))) => return Err(e),
                Err(failure) => {
                    let (kind, err) = match failure {
                        None => (AttemptFailure::PerTryTimeout, ProxyError::Timeout),
                        Some(e @ ProxyError::ConnectFailed(_)) => (AttemptFailure::ConnectFailure, e),
                        Some(ProxyError::UpstreamReset(m)) if m.contains("refused stream") => {
                            (AttemptFailure::RefusedStream, ProxyError::UpstreamReset(m))
                        }
                        Some(e) => (AttemptFailure::Reset, e),
                    };
                    let retriable = retry.retriable_failure(kind);
                    if !last && retriable {
                        self.back_off(retry, attempt, deadline).await?;
                        continue;
                    }
                    if attempt > 1 && retriable {
                        event.response_flags.add(Flags::URX);
                    }
                    return Err(err);
                }
            }
        }
    }

    /// Waits before retry `attempt + 1`; the route timeout still applies.
    async fn back_off(
        &self,
        retry: &crate::model::policy::RetryPolicy,
        attempt: u32,
        deadline: Option<Instant>,
    ) -> Result<(), ProxyError> {
        let wait = retry.backoff(attempt, fastrand::f64());
        match deadline {
            Some(d) if Instant::now() + wait >= d => {
                tokio::time::sleep_until(d.into()).await;
                Err(ProxyError::Timeout)
            }
            _ => {
                tokio::time::sleep(wait).await;
                Ok(())
            }
        }
    }

    /// Where and how to connect to an endpoint.
    async fn target<'a>(
        &'a self,
        cluster: &Cluster,
        ep: &'a Endpoint,
        version: Version,
        (authority, original): (&str, Option<SocketAddr>),
        snapshot: &MeshSnapshot,
    ) -> Result<Target<'a>, ProxyError> {
        let mtls = match (&cluster.transport, &ep.instance) {
            (Transport::IstioMutual, Some(i)) => Some((&self.tls, &i.identity)),
            _ => None,
        };
        let addr = match &ep.address {
            Address::Socket(a) => *a,
            Address::Dns(host, port) => resolve::host(host, *port).await?,
            Address::OriginalDestination => {
                let default = if cluster.key.port == 0 { 80 } else { cluster.key.port };
                match original.or_else(|| resolve::literal_destination(authority, default)) {
                    Some(a) => a,
                    None => Box::pin(resolve::original_destination(authority, default, snapshot)).await?,
                }
            }
        };
        Ok(Target { addr, version, mtls })
    }

    /// Sends a copy of the request to a mirror cluster and forgets it: `Host` gets `-shadow`,
    /// the response is discarded, the copy is recorded like any request.
    fn mirror(&self, m: &Mirror, parts: &Parts, replay: &mut Replay, authority: &str) {
        let cluster = m.cluster.clone();
        let Some(ei) = cluster.pick(None, &[]) else { return };
        let mut p = clone_parts(parts);
        let shadow = shadow_authority(authority);
        if let Ok(v) = HeaderValue::from_str(&shadow) {
            p.headers.insert(header::HOST, v);
        }
        let body = replay.body();
        let pools = self.pools.get().clone();
        let sink = self.telemetry.sink();
        let mut event = self.event(&p, path_of(&p.uri), &shadow, Some(cluster.host));
        event.upstream_cluster = Some(cluster.name);
        event.subset = cluster.subset;
        event.route_name = Some(Name::from_static("mirror"));
        event.attempts = 1;
        let version = if cluster.protocol.app_speaks_h2() { Version::H2 } else { Version::H1 };
        let endpoint = &cluster.endpoints[ei];
        let address = endpoint.address.clone();
        let mtls = match (&cluster.transport, &endpoint.instance) {
            (Transport::IstioMutual, Some(i)) => Some((self.tls.clone(), i.identity.clone())),
            _ => None,
        };
        tokio::spawn(async move {
            let start = Instant::now();
            let addr = match address {
                Address::Socket(a) => a,
                Address::Dns(h, port) => match resolve::host(&h, port).await {
                    Ok(a) => a,
                    Err(_) => return,
                },
                // A mirror to a host outside the registry has nowhere to go.
                Address::OriginalDestination => return,
            };
            event.upstream_host = Some(addr);
            event.mtls = mtls.is_some();
            let target = Target { addr, version, mtls: mtls.as_ref().map(|(t, i)| (t, i)) };
            let req = headers::to_upstream(Request::from_parts(p, body), version, &shadow, "http");
            let result = tokio::time::timeout(Duration::from_secs(30), pools.send(&target, req)).await;
            let status = match result {
                Ok(Ok(resp)) => {
                    let status = resp.status().as_u16();
                    let mut body = resp.into_body();
                    let mut bytes = 0u64;
                    while let Some(Ok(frame)) = body.frame().await {
                        bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
                    }
                    event.bytes_sent = bytes;
                    status
                }
                Ok(Err(e)) => {
                    event.response_flags.add(e.flag());
                    e.status().as_u16()
                }
                Err(_) => {
                    event.response_flags.add(Flags::UT);
                    504
                }
            };
            event.status = status;
            event.duration_ms = start.elapsed().as_millis() as u64;
            sink.record(event);
        });
    }

    fn event(&self, parts: &Parts, path: &str, authority: &str, service: Option<Name>) -> RequestEvent {
        RequestEvent {
            ts: SystemTime::now(),
            reporter: Reporter::Source,
            proxy: self.proxy,
            source_workload: self.workload,
            source_principal: Some(self.tls.spiffe_name),
            destination_service: service,
            destination_workload: None,
            upstream_cluster: None,
            upstream_host: None,
            route_name: None,
            subset: None,
            method: parts.method.clone(),
            texts: Texts::new(
                path,
                authority,
                parts.headers.get(&headers::X_REQUEST_ID),
                parts.headers.get(header::USER_AGENT),
            ),
            protocol: protocol_name(parts.version),
            status: 0,
            response_flags: Flags::NONE,
            duration_ms: 0,
            upstream_service_time_ms: None,
            bytes_sent: 0,
            bytes_received: content_length(&parts.headers).unwrap_or(0),
            attempts: 0,
            mtls: false,
        }
    }
}

/// `x-envoy-attempt-count` values, without formatting for the common ones.
fn attempt_count(n: u32) -> HeaderValue {
    static SMALL: [HeaderValue; 5] = [
        HeaderValue::from_static("0"),
        HeaderValue::from_static("1"),
        HeaderValue::from_static("2"),
        HeaderValue::from_static("3"),
        HeaderValue::from_static("4"),
    ];
    match SMALL.get(n as usize) {
        Some(v) => v.clone(),
        None => HeaderValue::from(n),
    }
}

/// Envoy's shadow host: `-shadow` after the host name, before any port.
pub fn shadow_authority(authority: &str) -> String {
    match crate::model::hosts::split_authority(authority) {
        (host, Some(port)) if !host.contains(':') => format!("{host}-shadow:{port}"),
        _ => format!("{authority}-shadow"),
    }
}

fn clone_parts(p: &Parts) -> Parts {
    let (mut out, ()) = Request::new(()).into_parts();
    out.method = p.method.clone();
    out.uri = p.uri.clone();
    out.version = p.version;
    out.headers = p.headers.clone();
    out
}

/// A local reply of the proxy (direct response, redirect, preflight).
fn local(status: StatusCode, body: Bytes) -> Response<ProxyBody> {
    let len = body.len();
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if len > 0 {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

fn preflight_response(cors: &Cors, origin: HeaderValue) -> Response<ProxyBody> {
    let mut resp = local(StatusCode::OK, Bytes::new());
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    let set = |h: &mut http::HeaderMap, name: header::HeaderName, v: Option<&str>| {
        if let Some(v) = v.and_then(|v| HeaderValue::from_str(v).ok()) {
            h.insert(name, v);
        }
    };
    set(h, header::ACCESS_CONTROL_ALLOW_METHODS, cors.allow_methods.as_deref());
    set(h, header::ACCESS_CONTROL_ALLOW_HEADERS, cors.allow_headers.as_deref());
    if let Some(age) = cors.max_age_secs {
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(age));
    }
    if cors.allow_credentials {
        h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    }
    resp
}

/// A gRPC abort: HTTP 200 with `grpc-status` (trailers-only style).
fn grpc_abort(code: u32) -> Response<ProxyBody> {
    let mut resp = local(StatusCode::OK, Bytes::new());
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(code));
    h.insert("grpc-message", HeaderValue::from_static("fault filter abort"));
    resp
}

/// A message's declared body length.
pub fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH).and_then(|v| headers::parse_content_length(v.as_bytes()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_hosts_keep_the_port() {
        assert_eq!(shadow_authority("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_authority("httpbin"), "httpbin-shadow");
        assert_eq!(attempt_count(3), "3");
        assert_eq!(attempt_count(12), "12");
    }

    #[test]
    fn percentages_roll_at_the_edges() {
        assert!((0..100).all(|_| roll(100.0)));
        assert!((0..100).all(|_| !roll(0.0)));
        let hits = (0..10_000).filter(|_| roll(25.0)).count();
        assert!((2000..3000).contains(&hits), "{hits}");
    }
}

//! Istio's validation rules (VALIDATION.md) for the kinds devmesh reads, each error at the
//! line and column of the offending field, with Istio's wording.

use std::sync::Arc;

use crate::config::diag::{Diagnostics, Pos};
use crate::config::duration;
use crate::config::names;
use crate::config::yaml::{OrderedMap, Spanned};

use super::gateway::{GatewaySpec, Server, TlsMode};
use super::virtual_service::*;
use super::{Resource, Spec};

struct V<'a> {
    file: Arc<str>,
    diags: &'a mut Diagnostics,
}

impl V<'_> {
    fn err(&mut self, pos: Pos, msg: impl Into<String>) {
        self.diags.error(&self.file, pos, msg);
    }
    fn warn(&mut self, pos: Pos, msg: impl Into<String>) {
        self.diags.warning(&self.file, pos, msg);
    }
}

/// Checks one resource; problems go to `diags` against the resource's file.
pub fn validate(res: &Resource, diags: &mut Diagnostics) {
    let mut v = V { file: res.origin.file.clone(), diags };
    match &res.spec {
        Spec::VirtualService(vs) => virtual_service(&mut v, res, vs),
        Spec::Gateway(gw) => gateway(&mut v, res, gw),
        Spec::Opaque(_) => {}
    }
}

/// Compiles an Istio regex as Envoy uses it (RE2 semantics, whole-string match).
pub fn compile_regex(pattern: &str) -> Result<regex::Regex, String> {
    if pattern.len() > 1024 {
        return Err("regex is too large, max length allowed is 1024".into());
    }
    regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        let detail = e.to_string();
        let last =
            detail.lines().rfind(|l| l.starts_with("error:")).unwrap_or("invalid regex").trim_start_matches("error: ");
        format!("{last}; Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)")
    })
}

fn duration(v: &mut V, d: &Spanned<String>) {
    if let Err(e) = duration::parse_istio(d) {
        v.err(d.pos, e);
    }
}

fn port(v: &mut V, p: &Spanned<u32>) {
    if p.value < 1 || p.value > 65535 {
        v.err(p.pos, format!("port number {} must be in the range 1..65535", p.value));
    }
}

fn string_match(v: &mut V, what: &str, m: &Spanned<StringMatch>, allow_empty_prefix: bool) {
    if m.count() > 1 {
        v.err(m.pos, format!("{what:?}: only one of `exact`, `prefix` or `regex` may be set"));
    }
    if let Some(p) = &m.prefix
        && p.is_empty()
        && !allow_empty_prefix
    {
        v.err(p.pos, format!("{what:?}: prefix string match should not be empty"));
    }
    if let Some(r) = &m.regex {
        if r.is_empty() {
            v.err(r.pos, format!("{what:?}: regex string match should not be empty"));
        } else if let Err(e) = compile_regex(r) {
            v.err(r.pos, format!("{what:?}: {e}"));
        }
    }
}

fn header_map(v: &mut V, what: &str, map: &OrderedMap<Spanned<String>, Spanned<StringMatch>>, without: bool) {
    for (name, m) in map.iter() {
        let ok = names::is_http_token(name)
            || matches!(name.as_str(), ":method" | ":scheme" | ":authority" | ":path" | ":status")
            || name.starts_with("@request.auth.claims.");
        if name.is_empty() {
            v.err(name.pos, "header name cannot be empty");
        } else if !ok {
            v.err(name.pos, format!("header name {} is not a valid header name", name.value));
        }
        if without && m.regex.as_ref().map(|r| r.as_str()) == Some("*") {
            continue;
        }
        string_match(v, what, m, false);
    }
}

fn destination(v: &mut V, d: &Destination) {
    if d.host.is_empty() {
        v.err(d.at.0, "missing field `host`: destination host is required");
    } else if d.host.as_str() == "*" {
        v.err(d.host.pos, "invalid destination host *");
    } else if let Err(e) = names::check_wildcard_domain(&d.host) {
        v.err(d.host.pos, e);
    }
    if let Some(s) = &d.subset {
        if s.is_empty() {
            v.err(s.pos, "subset name cannot be empty");
        } else if !names::is_dns1123_label(s) {
            v.err(s.pos, format!("subset name is invalid: {}", s.value));
        }
    }
    if let Some(p) = &d.port {
        port(v, &p.number);
    }
}

fn weights(v: &mut V, items: &[(Pos, Option<&Spanned<i32>>)]) {
    let mut total: i64 = 0;
    for (_, w) in items {
        if let Some(w) = w {
            if w.value < 0 {
                v.err(w.pos, format!("weight {} < 0", w.value));
            }
            total += i64::from(w.value.max(0));
        }
    }
    if items.len() > 1 && total == 0 {
        v.err(items[0].0, "total destination weight = 0");
    }
}

fn gateway_ref(v: &mut V, g: &Spanned<String>) {
    if g.as_str() == "mesh" {
        return;
    }
    if let Some((ns, name)) = g.split_once('/') {
        if ns.is_empty() || name.is_empty() {
            v.err(g.pos, "config namespace and gateway name cannot be empty");
        } else if !names::is_dns1123_label(ns) {
            v.err(g.pos, format!("invalid value for namespace: {ns:?}"));
        } else if !names::is_dns1123_label(name) {
            v.err(g.pos, format!("invalid value for gateway name: {name:?}"));
        }
    } else if let Err(e) = names::check_fqdn(g) {
        v.err(g.pos, e);
    } else if g.contains('.') {
        let (name, ns) = g.split_once('.').unwrap_or((g.as_str(), ""));
        v.warn(
            g.pos,
            format!(
                "using legacy gatewayName format {:?}; prefer the <namespace>/<name> format: \"{ns}/{name}\"",
                g.value
            ),
        );
    }
}

fn header_ops(v: &mut V, h: &Headers) {
    for (ops, request) in [(&h.request, true), (&h.response, false)] {
        let Some(ops) = ops else { continue };
        for (name, value) in ops.set.iter().chain(ops.add.iter()) {
            header_op_name(v, name, request, true);
            if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                v.err(name.pos, format!("header value configuration {value} is invalid"));
            }
        }
        for name in &ops.remove {
            header_op_name(v, name, request, false);
        }
    }
}

fn header_op_name(v: &mut V, name: &Spanned<String>, request: bool, set_or_add: bool) {
    let lower = name.to_ascii_lowercase();
    if name.is_empty() {
        v.err(name.pos, "header name cannot be empty");
    } else if request && set_or_add {
        if lower.starts_with(':') && lower != ":authority" {
            v.err(name.pos, format!("invalid header {:?}: header cannot have \":\" prefix", name.value));
        }
    } else if lower == "host" {
        v.err(name.pos, format!("invalid header {:?}: cannot set Host header", name.value));
    } else if lower.starts_with(':') {
        v.err(name.pos, format!("invalid header {:?}: header cannot have \":\" prefix", name.value));
    }
}

fn percent(v: &mut V, p: &Spanned<Percent>) {
    let x = p.value.value;
    if !(x == 0.0 || (0.0001..=100.0).contains(&x)) {
        v.err(p.pos, format!("percentage {x} is neither 0.0, nor in range [0.0001, 100.0]"));
    }
}

const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

pub const GRPC_CODES: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn is_known_status(code: u16) -> bool {
    http::StatusCode::from_u16(code).ok().and_then(|s| s.canonical_reason()).is_some()
}

fn retries(v: &mut V, r: &Spanned<HttpRetry>) {
    let attempts = r.attempts.as_ref().map(|a| a.value).unwrap_or(0);
    if let Some(a) = &r.attempts
        && a.value < 0
    {
        v.err(a.pos, "attempts cannot be negative");
    }
    if attempts == 0 && (r.per_try_timeout.is_some() || r.retry_on.is_some() || r.retry_remote_localities.is_some()) {
        v.err(r.pos, "http retry policy configured when attempts are set to 0 (disabled)");
    }
    if let Some(t) = &r.per_try_timeout {
        duration(v, t);
    }
    if let Some(b) = &r.backoff {
        duration(v, b);
    }
    if let Some(on) = &r.retry_on {
        for item in on.split(',').map(str::trim) {
            let ok = RETRY_ON.contains(&item) || item.parse::<u16>().map(is_known_status).unwrap_or(false);
            if !ok {
                v.err(on.pos, format!("{item:?} is not a valid retryOn policy"));
            }
        }
    }
}

fn fault(v: &mut V, f: &Spanned<HttpFaultInjection>) {
    if f.delay.is_none() && f.abort.is_none() {
        v.err(f.pos, "HTTP fault injection must have an abort and/or a delay");
    }
    if let Some(a) = &f.abort {
        if let Some(p) = &a.percentage {
            percent(v, p);
        }
        if let Some(s) = &a.http_status
            && !(200..=600).contains(&s.value)
        {
            v.err(s.pos, format!("HTTP status {} is not in range 200-599", s.value));
        }
        if let Some(g) = &a.grpc_status
            && !GRPC_CODES.contains(&g.as_str())
        {
            v.err(
                g.pos,
                format!(
                    "gRPC status {:?} is not supported. See https://github.com/grpc/grpc/blob/master/doc/statuscodes.md \
                     for a list of supported codes, for example 'NOT_FOUND'",
                    g.value
                ),
            );
        }
        if let Some(h) = &a.http2_error {
            v.err(h.pos, "HTTP/2 abort fault injection not supported yet");
        }
        if a.http_status.is_none() && a.grpc_status.is_none() && a.http2_error.is_none() {
            v.warn(a.pos, "abort configured, but error type not set");
        }
    }
    if let Some(d) = &f.delay {
        if let Some(p) = &d.percentage {
            percent(v, p);
        }
        if let Some(fd) = &d.fixed_delay {
            duration(v, fd);
        }
        if let Some(e) = &d.exponential_delay {
            v.err(e.pos, "exponentialDelay not supported yet");
        }
    }
}

fn http_route(v: &mut V, r: &HttpRoute, delegate_vs: bool) {
    let has_route = !r.route.is_empty();
    if r.delegate.is_some() {
        if delegate_vs {
            v.err(r.at.0, "delegate HTTP route cannot contain delegate");
        }
        let name = r.name.clone().unwrap_or_default();
        if has_route {
            v.err(r.at.0, format!("root HTTP route {name} must not specify route"));
        }
        if r.redirect.is_some() {
            v.err(r.at.0, format!("root HTTP route {name} must not specify redirect"));
        }
    } else if !has_route && r.redirect.is_none() && r.direct_response.is_none() {
        v.err(r.at.0, "HTTP route, redirect or direct_response is required");
    }
    if let Some(red) = &r.redirect {
        if has_route {
            v.err(red.pos, "HTTP route cannot contain both route and redirect");
        }
        if r.fault.is_some() {
            v.err(red.pos, "HTTP route cannot contain both fault and redirect");
        }
        if r.rewrite.is_some() {
            v.err(red.pos, "HTTP route rule cannot contain both rewrite and redirect");
        }
        if r.direct_response.is_some() {
            v.err(red.pos, "HTTP route rule cannot contain both direct_response and redirect");
        }
        if red.uri.is_some() && red.prefix_rewrite.is_some() {
            v.err(red.pos, "redirect may only specify one of uri or prefix_rewrite");
        }
        if red.prefix_rewrite.is_some() && r.matches.iter().any(|m| m.uri.as_ref().is_some_and(|u| u.prefix.is_none()))
        {
            v.err(red.pos, "redirect prefix_rewrite requires all URI matches to use prefix match type");
        }
        if red.uri.is_none()
            && red.prefix_rewrite.is_none()
            && red.authority.is_none()
            && red.port.is_none()
            && red.derive_port.is_none()
            && red.scheme.is_none()
        {
            v.err(red.pos, "redirect must specify URI, authority, scheme, or port");
        }
        if let Some(c) = &red.redirect_code
            && c.value != 0
            && !(300..=399).contains(&c.value)
        {
            v.err(c.pos, format!("{} is not a valid redirect code, must be 3xx", c.value));
        }
        if let Some(s) = &red.scheme
            && s != "http"
            && s != "https"
        {
            v.err(red.pos, "invalid redirect scheme, must be \"http\" or \"https\"");
        }
        if let Some(p) = &red.port {
            port(v, p);
        }
    }
    if let Some(dr) = &r.direct_response {
        if has_route {
            v.err(dr.pos, "HTTP route cannot contain both route and direct_response");
        }
        if r.fault.is_some() {
            v.err(dr.pos, "HTTP route cannot contain both fault and direct_response");
        }
        if r.rewrite.is_some() {
            v.err(dr.pos, "HTTP route rule cannot contain both rewrite and direct_response");
        }
        if !(200..=600).contains(&dr.status.value) {
            v.err(dr.status.pos, format!("HTTP status {} is not in range 200-599", dr.status.value));
        }
        let len = match &dr.body {
            Some(HttpBody::String(s)) => s.len(),
            Some(HttpBody::Bytes(b)) => b.len() * 3 / 4,
            None => 0,
        };
        if len > 1 << 20 {
            v.err(dr.pos, "large direct_responses may impact control plane performance, must be less than 1MB");
        } else if len > 100 << 10 {
            v.warn(dr.pos, "large direct_responses may impact control plane performance");
        }
    }
    if r.mirror.is_some() && !r.mirrors.is_empty() {
        v.err(r.at.0, "HTTP route cannot contain both mirror and mirrors");
    }
    if let Some(t) = &r.timeout {
        duration(v, t);
    }
    if let Some(rt) = &r.retries {
        retries(v, rt);
    }
    if let Some(f) = &r.fault {
        fault(v, f);
    }
    if let Some(m) = &r.mirror {
        destination(v, m);
    }
    for m in &r.mirrors {
        match &m.destination {
            Some(d) => destination(v, d),
            None => v.err(m.at.0, "destination is required for mirrors"),
        }
        if let Some(p) = &m.percentage {
            if p.value.value > 100.0 {
                v.err(p.pos, format!("mirror percentage must have a max value of 100 (it has {})", p.value.value));
            } else if p.value.value < 0.0 {
                v.err(p.pos, format!("mirror percentage must have a min value of 0 (it has {})", p.value.value));
            }
        }
    }
    if let Some(p) = &r.mirror_percentage {
        if p.value.value > 100.0 {
            v.err(p.pos, format!("mirror_percentage must have a max value of 100 (it has {})", p.value.value));
        } else if p.value.value < 0.0 {
            v.err(p.pos, format!("mirror_percentage must have a min value of 0 (it has {})", p.value.value));
        }
    }
    if let Some(p) = &r.mirror_percent {
        if p.value > 100 {
            v.err(p.pos, format!("mirror_percent must have a max value of 100 (it has {})", p.value));
        }
        v.warn(p.pos, "using deprecated setting \"mirrorPercent\", use \"mirrorPercentage\" instead");
    }
    if let Some(rw) = &r.rewrite {
        if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
            v.err(rw.pos, "rewrite may only contain one of URI or UriRegexRewrite");
        }
        if rw.uri.is_none() && rw.uri_regex_rewrite.is_none() && rw.authority.is_none() {
            v.err(
                rw.pos,
                "rewrite must specify at least one of URI, UriRegexRewrite, or authority. Only one of URI or \
                 UriRegexRewrite may be specified",
            );
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            if rr.matches.is_empty() || rr.rewrite.is_empty() {
                v.err(rr.pos, "UriRegexRewrite requires both Rewrite and Match fields to be specified");
            } else if let Err(e) = compile_regex(&rr.matches) {
                v.err(rr.matches.pos, format!("\"HTTPRewrite.UriRegexRewrite.Match\": {e}"));
            }
        }
    }
    if let Some(c) = &r.cors_policy {
        for o in &c.allow_origins {
            let empty = o.get().is_none_or(|(_, s)| s.is_empty());
            if empty {
                v.err(o.pos, format!("'{:?}' is not a valid match type for CORS allow origins", o.value));
            } else {
                string_match(v, "corsPolicy.allowOrigins", o, false);
            }
        }
        for m in &c.allow_methods {
            if !matches!(
                m.as_str(),
                "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "CONNECT" | "OPTIONS" | "TRACE" | "*"
            ) {
                v.err(c.pos, format!("{m:?} is not a supported HTTP method"));
            }
        }
        for h in c.allow_headers.iter().chain(&c.expose_headers) {
            if h.is_empty() {
                v.err(c.pos, "header name cannot be empty");
            } else if h != "*" && !names::is_http_token(h) {
                v.err(c.pos, format!("header name {h} is not a valid header name"));
            }
        }
        if let Some(m) = &c.max_age {
            match duration::parse_istio(m) {
                Ok(d) if d.subsec_nanos() != 0 => {
                    v.err(m.pos, "max_age duration is accurate only to seconds precision")
                }
                Ok(_) => {}
                Err(e) => v.err(m.pos, e),
            }
        }
    }
    if let Some(h) = &r.headers {
        header_ops(v, h);
    }
    for m in &r.matches {
        if let Some(u) = &m.uri {
            string_match(v, "uri", u, true);
        }
        for (what, sm) in [("scheme", &m.scheme), ("method", &m.method), ("authority", &m.authority)] {
            if let Some(sm) = sm {
                string_match(v, what, sm, false);
            }
        }
        header_map(v, "headers", &m.headers, false);
        header_map(v, "withoutHeaders", &m.without_headers, true);
        for (_, q) in m.query_params.iter() {
            string_match(v, "queryParams", q, false);
        }
        if let Some(p) = &m.port {
            port(v, p);
        }
        for (k, val) in &m.source_labels {
            if let Err(e) = names::check_label_key(k).and_then(|_| names::check_label_value(val)) {
                v.err(m.at.0, e);
            }
        }
        for g in &m.gateways {
            gateway_ref(v, g);
        }
        if let Some(ns) = &m.source_namespace
            && !names::is_dns1123_label(ns)
        {
            v.err(ns.pos, format!("sourceNamespace match {} is invalid", ns.value));
        }
    }
    for d in &r.route {
        match &d.destination {
            Some(dest) => destination(v, dest),
            None => v.err(d.at.0, "destination is required"),
        }
        if let Some(h) = &d.headers {
            header_ops(v, h);
        }
    }
    let ws: Vec<_> = r.route.iter().map(|d| (d.at.0, d.weight.as_ref())).collect();
    weights(v, &ws);
}

fn l4_routes(v: &mut V, what: &str, routes: &[RouteDestination], at: Pos) {
    if routes.is_empty() {
        v.err(at, format!("{what} route is required"));
    }
    for d in routes {
        match &d.destination {
            Some(dest) => destination(v, dest),
            None => v.err(d.at.0, "destination is required"),
        }
    }
    let ws: Vec<_> = routes.iter().map(|d| (d.at.0, d.weight.as_ref())).collect();
    weights(v, &ws);
}

fn virtual_service(v: &mut V, res: &Resource, vs: &VirtualServiceSpec) {
    let at = if vs.at.0 == Pos::default() { res.origin.pos } else { vs.at.0 };
    let delegate = vs.hosts.is_empty();
    let bound_to_mesh = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g.as_str() == "mesh");
    if delegate {
        if !vs.gateways.is_empty() {
            v.err(at, "delegate virtual service must have no gateways specified");
        }
        if !vs.tls.is_empty() {
            v.err(at, "delegate virtual service must have no tls route specified");
        }
        if !vs.tcp.is_empty() {
            v.err(at, "delegate virtual service must have no tcp route specified");
        }
    }
    let mut hosts_ok = true;
    for h in &vs.hosts {
        if h.parse::<std::net::IpAddr>().is_ok() {
            continue;
        }
        if let Err(e) = names::check_wildcard_domain(h) {
            v.err(h.pos, e);
            hosts_ok = false;
        } else if h.as_str() == "*" && bound_to_mesh {
            v.err(h.pos, "wildcard host * is not allowed for virtual services bound to the mesh gateway");
        }
    }
    if hosts_ok {
        for (i, a) in vs.hosts.iter().enumerate() {
            for b in &vs.hosts[i + 1..] {
                if hosts_overlap(a, b) {
                    v.err(b.pos, format!("duplicate hosts in virtual service: {} & {}", a.value, b.value));
                }
            }
        }
    }
    for g in &vs.gateways {
        gateway_ref(v, g);
    }
    if vs.http.is_empty() && vs.tcp.is_empty() && vs.tls.is_empty() {
        v.err(at, "http, tcp or tls must be provided in virtual service");
    }
    for r in &vs.http {
        http_route(v, r, delegate);
    }
    unreachable_rules(v, vs);
    for t in &vs.tcp {
        l4_routes(v, "TCP", &t.route, t.at.0);
        for m in &t.matches {
            if let Some(p) = &m.port {
                port(v, p);
            }
            for g in &m.gateways {
                gateway_ref(v, g);
            }
        }
    }
    for t in &vs.tls {
        if t.matches.is_empty() {
            v.err(t.at.0, "TLS route must have at least one match condition");
        }
        for m in &t.matches {
            if m.sni_hosts.is_empty() {
                v.err(m.at.0, "TLS match must have at least one SNI host");
            }
            for sni in &m.sni_hosts {
                if sni.parse::<std::net::IpAddr>().is_ok() {
                    v.warn(
                        sni.pos,
                        format!(
                            "using an IP address ({:?}) goes against SNI spec and most clients do not support this",
                            sni.value
                        ),
                    );
                } else if !vs.hosts.iter().any(|h| host_covers(h, sni) || host_covers(sni, h)) {
                    let hosts: Vec<&str> = vs.hosts.iter().map(|h| h.as_str()).collect();
                    v.err(
                        sni.pos,
                        format!(
                            "SNI host {:?} is not a compatible subset of any of the virtual service hosts: [{}]",
                            sni.value,
                            hosts.join(", ")
                        ),
                    );
                }
            }
            if let Some(p) = &m.port {
                port(v, p);
            }
            for g in &m.gateways {
                gateway_ref(v, g);
            }
        }
        l4_routes(v, "TLS", &t.route, t.at.0);
    }
    export_to(v, &vs.export_to, false);
}

/// Warnings for rules that can never match (Istio's analysis; warnings only).
fn unreachable_rules(v: &mut V, vs: &VirtualServiceSpec) {
    let mut catch_all: Option<usize> = None;
    for (i, r) in vs.http.iter().enumerate() {
        if let Some(prev) = catch_all {
            let _ = prev;
            v.warn(r.at.0, format!("virtualService rule #{i} not used (route without matches defined before)"));
            continue;
        }
        let matches_all = r.matches.is_empty()
            || r.matches.iter().any(|m| {
                *m == HttpMatchRequest::default()
                    || (m.uri.as_ref().is_some_and(|u| matches!(u.prefix.as_ref().map(|p| p.as_str()), Some("/" | "")))
                        && m.headers.is_empty()
                        && m.without_headers.is_empty()
                        && m.query_params.is_empty()
                        && m.scheme.is_none()
                        && m.method.is_none()
                        && m.authority.is_none()
                        && m.port.is_none()
                        && m.source_labels.is_empty()
                        && m.gateways.is_empty()
                        && m.source_namespace.is_none())
            });
        if matches_all && i + 1 < vs.http.len() {
            catch_all = Some(i);
        }
    }
}

fn export_to(v: &mut V, entries: &[Spanned<String>], service_entry: bool) {
    let mut seen: Vec<&str> = Vec::new();
    for e in entries {
        let s = e.as_str();
        if s == "~" && !service_entry {
            v.err(e.pos, "exportTo ~ (none) is not allowed for Istio configuration objects");
        } else if !(s == "." || s == "*" || s == "~" || names::is_dns1123_label(s)) {
            v.err(e.pos, "only .,*, or a valid DNS 1123 label is allowed as exportTo entry");
        }
        if seen.contains(&s) {
            v.err(e.pos, format!("duplicate entries in exportTo for entry {s}"));
        }
        seen.push(s);
    }
    if seen.contains(&"*")
        && seen.len() > 1
        && let Some(e) = entries.first()
    {
        v.err(e.pos, "cannot have both public (*) and non-public exportTo values for a resource");
    }
}

/// Whether wildcard host `a` matches host `b` (`*.bar` covers `foo.bar` and `*.foo.bar`).
pub fn host_covers(a: &str, b: &str) -> bool {
    if a == b || a == "*" {
        return true;
    }
    match a.strip_prefix('*') {
        Some(suffix) => b.ends_with(suffix) && b.len() > suffix.len(),
        None => false,
    }
}

fn hosts_overlap(a: &str, b: &str) -> bool {
    host_covers(a, b) || host_covers(b, a)
}

fn gateway(v: &mut V, res: &Resource, gw: &GatewaySpec) {
    let at = if gw.at.0 == Pos::default() { res.origin.pos } else { gw.at.0 };
    if gw.servers.is_empty() {
        v.err(at, "gateway must have at least one server");
    }
    let mut port_names: Vec<&str> = Vec::new();
    for s in &gw.servers {
        server(v, s, &mut port_names);
    }
    for (k, val) in gw.selector.iter() {
        if k.is_empty() {
            v.err(k.pos, format!("empty key is not supported in selector: {:?}", k.value));
        } else if k.contains('*') || val.contains('*') {
            v.err(k.pos, format!("wildcard is not supported in selector: {:?}", k.value));
        }
    }
}

fn server<'a>(v: &mut V, s: &'a Server, port_names: &mut Vec<&'a str>) {
    if s.hosts.is_empty() {
        v.err(s.at.0, "server config must contain at least one host");
    }
    for h in &s.hosts {
        if let Err(e) = names::check_gateway_host(h) {
            v.err(h.pos, e);
        }
    }
    let Some(p) = &s.port else {
        v.err(s.at.0, "port is required");
        return;
    };
    match &p.name {
        Some(n) if !n.is_empty() => {
            if port_names.contains(&n.as_str()) {
                v.err(n.pos, format!("port names in servers must be unique: duplicate name {}", n.value));
            }
            port_names.push(n.as_str());
        }
        _ => v.err(p.at.0, "port name must be set: missing field `name`"),
    }
    let unix = s.bind.as_ref().is_some_and(|b| b.starts_with("unix://"));
    match &p.number {
        Some(n) if unix && n.value != 0 => {
            v.err(n.pos, format!("port number must be 0 for unix domain socket: {}", n.value))
        }
        Some(n) if !unix && !(1..=65535).contains(&n.value) => {
            v.err(n.pos, format!("port number {} must be in the range 1..65535", n.value))
        }
        None if !unix => v.err(p.at.0, "missing field `number`"),
        _ => {}
    }
    if let Some(t) = &p.target_port {
        v.err(t.pos, "targetPort has no impact on Gateways");
    }
    if let Some(b) = &s.bind
        && !unix
        && b.parse::<std::net::IpAddr>().is_err()
    {
        v.err(b.pos, format!("{} is not a valid IP", b.value));
    }
    let protocol = match &p.protocol {
        Some(pr) => {
            let up = pr.to_ascii_uppercase();
            let known = ["HTTP", "HTTPS", "HTTP2", "GRPC", "GRPC-WEB", "TCP", "TLS", "MONGO", "REDIS", "MYSQL"];
            if !known.contains(&up.as_str()) {
                v.err(
                    pr.pos,
                    format!(
                        "invalid protocol {:?}, supported protocols are HTTP, HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP",
                        pr.value
                    ),
                );
            }
            up
        }
        None => {
            v.err(p.at.0, "missing field `protocol`");
            String::new()
        }
    };
    let tls_proto = protocol == "HTTPS" || protocol == "TLS";
    match &s.tls {
        None if tls_proto => v.err(s.at.0, "server must have TLS settings for HTTPS/TLS protocols"),
        Some(t) if !tls_proto => {
            let redirect_only = t.https_redirect
                && t.mode.is_none()
                && t.credential_name.is_none()
                && t.server_certificate.is_none()
                && t.private_key.is_none();
            if protocol == "HTTP" && !redirect_only {
                v.err(t.pos, "server cannot have TLS settings for plain text HTTP ports");
            } else if protocol != "HTTP" && !protocol.is_empty() {
                v.err(t.pos, "server cannot have TLS settings for non HTTPS/TLS ports");
            }
        }
        Some(t) if t.mode == Some(TlsMode::IstioMutual) => {
            for (set, what) in [
                (t.server_certificate.is_some(), "server certificate"),
                (t.private_key.is_some(), "private key"),
                (t.ca_certificates.is_some(), "CA bundle"),
                (!t.tls_certificates.is_empty(), "tlsCertificates"),
                (t.credential_name.is_some(), "credentialName"),
                (!t.credential_names.is_empty(), "credentialNames"),
            ] {
                if set {
                    v.err(t.pos, format!("ISTIO_MUTUAL TLS cannot have associated {what}"));
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::istio::read_resources;
    use crate::config::source::parse_documents;

    fn check(text: &str) -> String {
        let mut diags = Diagnostics::new();
        let docs = parse_documents(Arc::from("v.yaml"), text, &mut diags);
        for r in read_resources(&docs, "default", &mut diags) {
            validate(&r, &mut diags);
        }
        diags.render()
    }

    const VS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n";

    #[test]
    fn regex_is_anchored_and_errors_name_re2() {
        let re = compile_regex("/api/v[0-9]+").unwrap();
        assert!(re.is_match("/api/v12") && !re.is_match("/api/v12/x"));
        assert!(
            compile_regex("(")
                .unwrap_err()
                .ends_with("Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)")
        );
    }

    #[test]
    fn virtual_service_rules_with_positions() {
        let text = format!(
            "{VS}  hosts: [reviews, \"*\"]\n  http:\n  - match:\n    - uri: {{regex: \"(\"}}\n    route:\n    - destination: {{host: reviews, subset: Bad_Subset}}\n      weight: -1\n  - timeout: 10\n    redirect: {{uri: /x}}\n    route:\n    - destination: {{host: ratings}}\n"
        );
        let out = check(&text);
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines.contains(
                &"v.yaml:5:20: error: wildcard host * is not allowed for virtual services bound to the mesh gateway"
            ),
            "{out}"
        );
        assert!(lines.iter().any(|l| l.starts_with("v.yaml:8:20: error: \"uri\": ")), "{out}");
        assert!(lines.contains(&"v.yaml:10:44: error: subset name is invalid: Bad_Subset"), "{out}");
        assert!(lines.contains(&"v.yaml:11:15: error: weight -1 < 0"), "{out}");
        assert!(lines.contains(&"v.yaml:12:14: error: time: missing unit in duration \"10\""), "{out}");
        assert!(lines.contains(&"v.yaml:13:15: error: HTTP route cannot contain both route and redirect"), "{out}");
    }

    #[test]
    fn unreachable_rule_after_catch_all_is_a_warning() {
        let text = format!(
            "{VS}  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews}}\n  - match: [{{uri: {{prefix: /a}}}}]\n    route:\n    - destination: {{host: reviews}}\n"
        );
        assert_eq!(
            check(&text),
            "v.yaml:9:5: warning: virtualService rule #1 not used (route without matches defined before)\n"
        );
    }

    #[test]
    fn gateway_rules() {
        let text = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [reviews]\n  - port: {number: 443, name: http, protocol: HTTPS}\n    hosts: [\"*\"]\n";
        assert_eq!(
            check(text),
            "v.yaml:8:13: error: short names (non FQDN) are not allowed\n\
             v.yaml:9:5: error: server must have TLS settings for HTTPS/TLS protocols\n\
             v.yaml:9:31: error: port names in servers must be unique: duplicate name http\n"
        );
    }

    #[test]
    fn istio_bookinfo_gateway_is_valid() {
        let text = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: bookinfo-gateway\nspec:\n  selector:\n    istio: ingressgateway\n  servers:\n  - port:\n      number: 8080\n      name: http\n      protocol: HTTP\n    hosts:\n    - \"*\"\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: bookinfo\nspec:\n  hosts:\n  - \"*\"\n  gateways:\n  - bookinfo-gateway\n  http:\n  - match:\n    - uri:\n        exact: /productpage\n    - uri:\n        prefix: /static\n    route:\n    - destination:\n        host: productpage\n        port:\n          number: 9080\n";
        assert_eq!(check(text), "");
    }
}

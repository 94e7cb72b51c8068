//! VirtualService rules (VALIDATION.md §1).

use crate::config::diag::Pos;
use crate::config::duration;
use crate::config::istio::Resource;
use crate::config::istio::virtual_service::*;
use crate::config::names;
use crate::config::yaml::Spanned;

use super::{
    V, check_duration, compile_regex, export_to, gateway_ref, header_map, host_covers, hosts_overlap, port,
    string_match,
};

pub(super) fn destination(v: &mut V, d: &Destination) {
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

pub(super) fn percent(v: &mut V, p: &Spanned<Percent>) {
    let x = p.value.value;
    if !(x == 0.0 || (0.0001..=100.0).contains(&x)) {
        v.err(p.pos, format!("percentage {x} is neither 0.0, nor in range [0.0001, 100.0]"));
    }
}

pub const RETRY_ON: &[&str] = &[
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
        check_duration(v, t);
    }
    if let Some(b) = &r.backoff {
        check_duration(v, b);
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
            check_duration(v, fd);
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
        check_duration(v, t);
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

pub(super) fn virtual_service(v: &mut V, res: &Resource, vs: &VirtualServiceSpec) {
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

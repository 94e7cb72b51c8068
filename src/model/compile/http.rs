//! VirtualService `http[]` routes compiled to [`Route`]s: matches (with delegate matches
//! AND-ed under their root's), the action (forward, redirect, direct response) and the route
//! policies (timeout, retries, fault, mirrors, rewrite, CORS, header operations).

use std::collections::HashMap;

use base64::Engine;
use http::header::{HeaderName, HeaderValue};

use super::clusters::Clusters;
use crate::config::duration;
use crate::config::istio::Resource;
use crate::config::istio::validate::compile_regex;
use crate::config::istio::virtual_service::{
    CorsPolicy, Destination, Headers, HttpBody, HttpFaultInjection, HttpMatchRequest, HttpRoute, MatchKind,
    RedirectPortSelection, StringMatch, UnmatchedPreflights, VirtualServiceSpec,
};
use crate::config::yaml::{OrderedMap, Spanned};
use crate::model::hosts;
use crate::model::policy::{
    Abort, Cors, Fault, HeaderOps, Mirror, Ops, Redirect, RedirectPort, RetryPolicy, Rewrite, grpc_code, substitution,
};
use crate::model::registry::Registry;
use crate::model::routes::{
    Action, Forward, RequestMatch, Route, RouteOrigin, StrMatch, ValueMatch, WeightedCluster, normalize_weights,
};

/// VirtualServices by `(namespace, name)`, for delegation.
pub type ByName<'a> = HashMap<(String, String), (&'a Resource, &'a VirtualServiceSpec)>;

pub struct HttpCompiler<'a, 'b> {
    pub clusters: &'b mut Clusters<'a>,
    pub registry: &'a Registry,
    pub by_name: &'b ByName<'a>,
    /// The namespace of the proxies these routes are for (DestinationRule lookup).
    pub client_ns: &'b str,
}

impl<'a> HttpCompiler<'a, '_> {
    /// The routes of one VirtualService; `port` is the service or gateway port they serve.
    pub fn routes(&mut self, res: &'a Resource, vs: &'a VirtualServiceSpec, port: Option<u16>) -> Vec<Route> {
        let mut out = Vec::new();
        for (index, r) in vs.http.iter().enumerate() {
            self.route(res, index, r, port, &[], &mut out);
        }
        out
    }

    fn route(
        &mut self,
        res: &'a Resource,
        index: usize,
        r: &'a HttpRoute,
        port: Option<u16>,
        parent: &[RequestMatch],
        out: &mut Vec<Route>,
    ) {
        let ns = &res.metadata.namespace;
        let own: Vec<RequestMatch> = r.matches.iter().map(|m| compile_match(m, ns)).collect();
        let matches = merge_matches(parent, own);
        if let Some(d) = &r.delegate {
            let dns = d.namespace.clone().unwrap_or_else(|| ns.clone());
            let Some((dres, dvs)) = self.by_name.get(&(dns, d.name.clone())).copied() else { return };
            if !dvs.hosts.is_empty() {
                return;
            }
            for (i, dr) in dvs.http.iter().enumerate() {
                if dr.delegate.is_none() {
                    self.route(dres, i, dr, port, &matches, out);
                }
            }
            return;
        }
        let Some(action) = self.action(r, ns, port) else { return };
        let origin =
            RouteOrigin { virtual_service: format!("{ns}/{}", res.metadata.name), index, name: r.name.clone() };
        let mut route = Route::new(origin, matches, action);
        route.fault = r.fault.as_ref().and_then(|f| fault(f));
        route.cors = r.cors_policy.as_ref().map(|c| cors(c));
        route.headers = header_ops(r.headers.as_ref());
        out.push(route);
    }

    fn action(&mut self, r: &HttpRoute, ns: &str, port: Option<u16>) -> Option<Action> {
        if let Some(d) = &r.direct_response {
            let body = match &d.body {
                None => bytes::Bytes::new(),
                Some(HttpBody::String(s)) => bytes::Bytes::from(s.clone()),
                Some(HttpBody::Bytes(b)) => {
                    bytes::Bytes::from(base64::engine::general_purpose::STANDARD.decode(b.as_bytes()).ok()?)
                }
            };
            let status = u16::try_from(d.status.value).ok()?;
            return Some(Action::DirectResponse { status, body });
        }
        if let Some(rd) = &r.redirect {
            let port = match (rd.port.as_ref(), rd.derive_port) {
                (Some(p), _) => u16::try_from(p.value).ok().map(RedirectPort::Fixed),
                (None, Some(RedirectPortSelection::FromProtocolDefault)) => Some(RedirectPort::FromProtocolDefault),
                (None, Some(RedirectPortSelection::FromRequestPort)) => Some(RedirectPort::FromRequestPort),
                (None, None) => None,
            };
            return Some(Action::Redirect(Redirect {
                uri: rd.uri.clone(),
                prefix_rewrite: rd.prefix_rewrite.clone(),
                authority: rd.authority.clone(),
                port,
                scheme: rd.scheme.clone(),
                code: rd.redirect_code.as_ref().and_then(|c| u16::try_from(c.value).ok()).unwrap_or(301),
            }));
        }
        if r.route.is_empty() {
            return None;
        }
        let mut destinations = Vec::new();
        for d in &r.route {
            let Some(dest) = &d.destination else { continue };
            let cluster = self.destination(dest, ns, port);
            let weight = match &d.weight {
                Some(w) => w.value.max(0) as u32,
                None if r.route.len() == 1 => 100,
                None => 0,
            };
            destinations.push(WeightedCluster { cluster, weight, headers: header_ops(d.headers.as_ref()) });
        }
        let total_weight = normalize_weights(&mut destinations);
        if destinations.is_empty() {
            return None;
        }
        let faulty = r.fault.is_some();
        // As Istio documents: a route with a client-side fault gets no timeout or retries.
        let timeout = if faulty {
            None
        } else {
            r.timeout.as_ref().and_then(|t| duration::parse_go(t).ok()).filter(|d| !d.is_zero())
        };
        let retry = if faulty {
            RetryPolicy::none()
        } else {
            match &r.retries {
                None => RetryPolicy::istio_default(),
                Some(rt) => {
                    let attempts = rt.attempts.as_ref().map(|a| a.value).unwrap_or(0);
                    if attempts <= 0 {
                        RetryPolicy::none()
                    } else {
                        RetryPolicy::from_parts(
                            attempts as u32,
                            rt.per_try_timeout
                                .as_ref()
                                .and_then(|t| duration::parse_go(t).ok())
                                .filter(|d| !d.is_zero()),
                            rt.retry_on.as_ref().map(|s| s.as_str()),
                            rt.backoff.as_ref().and_then(|t| duration::parse_go(t).ok()),
                        )
                    }
                }
            }
        };
        let mut mirrors = Vec::new();
        if let Some(m) = &r.mirror {
            let percent = match (&r.mirror_percentage, &r.mirror_percent) {
                (Some(p), _) => p.value.value,
                (None, Some(p)) => f64::from(p.value),
                (None, None) => 100.0,
            };
            mirrors.push(Mirror { cluster: self.destination(m, ns, port), percent: percent.clamp(0.0, 100.0) });
        }
        for m in &r.mirrors {
            let Some(dest) = &m.destination else { continue };
            let percent = m.percentage.as_ref().map(|p| p.value.value).unwrap_or(100.0);
            mirrors.push(Mirror { cluster: self.destination(dest, ns, port), percent: percent.clamp(0.0, 100.0) });
        }
        let rewrite = r.rewrite.as_ref().map(|rw| Rewrite {
            uri: rw.uri.clone(),
            regex: rw
                .uri_regex_rewrite
                .as_ref()
                .and_then(|x| Some((regex::Regex::new(&x.matches).ok()?, substitution(&x.rewrite)))),
            authority: rw.authority.as_ref().and_then(|a| HeaderValue::from_str(a).ok()),
        });
        Some(Action::Route(Box::new(Forward { destinations, total_weight, timeout, retry, mirrors, rewrite })))
    }

    fn destination(
        &mut self,
        d: &Destination,
        ns: &str,
        request_port: Option<u16>,
    ) -> std::sync::Arc<crate::model::cluster::Cluster> {
        let service = self.registry.find(&d.host, ns);
        let fqdn = match service.and_then(|i| self.registry.get(i)) {
            Some(s) => s.host.clone(),
            None => hosts::qualify(&d.host, ns),
        };
        let explicit = d.port.as_ref().and_then(|p| u16::try_from(p.number.value).ok());
        let port = self.destination_port(service, explicit, request_port);
        self.clusters.get(self.client_ns, service, &fqdn, d.subset.as_ref().map(|s| s.as_str()), port)
    }

    /// The destination port: explicit, else the only port of the service, else the port the
    /// request arrived for, else the first port.
    fn destination_port(&self, service: Option<usize>, explicit: Option<u16>, request_port: Option<u16>) -> u16 {
        if let Some(p) = explicit {
            return p;
        }
        let Some(svc) = service.and_then(|i| self.registry.get(i)) else {
            return request_port.unwrap_or(80);
        };
        if svc.ports.len() == 1 {
            return svc.ports[0].port;
        }
        if let Some(rp) = request_port
            && svc.port(rp).is_some()
        {
            return rp;
        }
        svc.ports.first().map(|p| p.port).unwrap_or(80)
    }
}

/// A delegate's match entries under its root's: each pair AND-ed.
fn merge_matches(parent: &[RequestMatch], own: Vec<RequestMatch>) -> Vec<RequestMatch> {
    if parent.is_empty() {
        return own;
    }
    if own.is_empty() {
        return parent.to_vec();
    }
    let mut out = Vec::with_capacity(parent.len() * own.len());
    for p in parent {
        for o in &own {
            let mut m = o.clone();
            m.and.push(p.clone());
            out.push(m);
        }
    }
    out
}

fn percent(p: Option<&Spanned<crate::config::istio::virtual_service::Percent>>, legacy: Option<&Spanned<i32>>) -> f64 {
    match (p, legacy) {
        (Some(p), _) => p.value.value.clamp(0.0, 100.0),
        (None, Some(l)) => f64::from(l.value).clamp(0.0, 100.0),
        // Istio: without a percentage no request is faulted.
        (None, None) => 0.0,
    }
}

fn fault(f: &HttpFaultInjection) -> Option<Fault> {
    let delay = f.delay.as_ref().and_then(|d| {
        let fixed = duration::parse_go(d.fixed_delay.as_ref()?).ok()?;
        Some((fixed, percent(d.percentage.as_ref(), d.percent.as_ref())))
    });
    let abort = f.abort.as_ref().and_then(|a| {
        let kind = if let Some(s) = &a.http_status {
            Abort::Http(u16::try_from(s.value).ok()?)
        } else if let Some(g) = &a.grpc_status {
            Abort::Grpc(grpc_code(g).or_else(|| g.parse().ok())?)
        } else {
            return None;
        };
        Some((kind, percent(a.percentage.as_ref(), None)))
    });
    if delay.is_none() && abort.is_none() {
        return None;
    }
    Some(Fault { delay, abort })
}

fn cors(c: &CorsPolicy) -> Cors {
    let mut origins: Vec<StrMatch> = c.allow_origins.iter().filter_map(|m| str_match(m)).collect();
    for o in &c.allow_origin {
        origins.push(if o == "*" { StrMatch::Prefix(String::new()) } else { StrMatch::Exact(o.clone()) });
    }
    let join = |v: &[String], sep: &str| if v.is_empty() { None } else { Some(v.join(sep)) };
    Cors {
        origins,
        allow_methods: join(&c.allow_methods, ","),
        allow_headers: join(&c.allow_headers, ","),
        expose_headers: join(&c.expose_headers, ","),
        max_age_secs: c.max_age.as_ref().and_then(|m| duration::parse_go(m).ok()).map(|d| d.as_secs()),
        allow_credentials: c.allow_credentials.unwrap_or(false),
        forward_unmatched_preflights: c.unmatched_preflights != Some(UnmatchedPreflights::Ignore),
    }
}

fn ops(o: Option<&crate::config::istio::virtual_service::HeaderOperations>) -> Ops {
    let Some(o) = o else { return Ops::default() };
    let pair = |(k, v): &(Spanned<String>, String)| {
        Some((HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).ok()?, HeaderValue::from_str(v).ok()?))
    };
    Ops {
        set: o.set.iter().filter_map(pair).collect(),
        add: o.add.iter().filter_map(pair).collect(),
        remove: o
            .remove
            .iter()
            .filter_map(|k| HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).ok())
            .collect(),
    }
}

pub fn header_ops(h: Option<&Headers>) -> HeaderOps {
    match h {
        None => HeaderOps::default(),
        Some(h) => HeaderOps { request: ops(h.request.as_ref()), response: ops(h.response.as_ref()) },
    }
}

pub fn str_match(m: &StringMatch) -> Option<StrMatch> {
    match m.get()? {
        (MatchKind::Exact, v) => Some(StrMatch::Exact(v.to_string())),
        (MatchKind::Prefix, v) => Some(StrMatch::Prefix(v.to_string())),
        (MatchKind::Regex, v) => compile_regex(v).ok().map(StrMatch::Regex),
    }
}

fn value_matches(map: &OrderedMap<Spanned<String>, Spanned<StringMatch>>, without: bool) -> Vec<ValueMatch> {
    map.iter()
        // Istio ignores the keys `uri`, `scheme`, `method` and `authority` here.
        .filter(|(k, _)| without || !matches!(k.as_str(), "uri" | "scheme" | "method" | "authority"))
        .map(|(k, v)| {
            // An empty match (`{}`), or `regex: "*"` under withoutHeaders, tests presence.
            let presence = v.count() == 0 || (without && v.regex.as_ref().map(|r| r.as_str()) == Some("*"));
            let value = if presence { None } else { str_match(v) };
            ValueMatch { name: k.to_ascii_lowercase(), value }
        })
        .collect()
}

/// Resolves a gateway reference of a VirtualService in `namespace` to `ns/name` (or `mesh`).
pub fn qualify_gateway(g: &str, namespace: &str) -> String {
    if g == "mesh" || g.contains('/') {
        return g.to_string();
    }
    match g.split_once('.') {
        Some((name, ns)) => format!("{ns}/{name}"),
        None => format!("{namespace}/{g}"),
    }
}

pub fn compile_match(m: &HttpMatchRequest, namespace: &str) -> RequestMatch {
    RequestMatch {
        uri: m.uri.as_ref().and_then(|u| str_match(u)),
        ignore_uri_case: m.ignore_uri_case,
        scheme: m.scheme.as_ref().and_then(|u| str_match(u)),
        method: m.method.as_ref().and_then(|u| str_match(u)),
        authority: m.authority.as_ref().and_then(|u| str_match(u)),
        headers: value_matches(&m.headers, false),
        without_headers: value_matches(&m.without_headers, true),
        query_params: m
            .query_params
            .iter()
            .map(|(k, v)| ValueMatch { name: k.value.clone(), value: if v.count() == 0 { None } else { str_match(v) } })
            .collect(),
        port: m.port.as_ref().and_then(|p| u16::try_from(p.value).ok()),
        source_labels: m.source_labels.clone(),
        source_namespace: m.source_namespace.as_ref().map(|s| s.value.clone()),
        gateways: m.gateways.iter().map(|g| qualify_gateway(g, namespace)).collect(),
        and: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delegate_matches_are_anded_under_the_root() {
        let root = vec![RequestMatch { uri: Some(StrMatch::Prefix("/reviews".into())), ..Default::default() }];
        let own = vec![
            RequestMatch { method: Some(StrMatch::Exact("GET".into())), ..Default::default() },
            RequestMatch { method: Some(StrMatch::Exact("POST".into())), ..Default::default() },
        ];
        let merged = merge_matches(&root, own);
        assert_eq!(merged.len(), 2);
        assert!(merged.iter().all(|m| m.and.len() == 1 && m.and[0].uri.is_some()));
        assert_eq!(merge_matches(&root, vec![]).len(), 1);
        assert_eq!(merge_matches(&[], vec![RequestMatch::default()]).len(), 1);
    }

    #[test]
    fn gateway_references_qualify_in_the_virtual_service_namespace() {
        assert_eq!(qualify_gateway("bookinfo-gateway", "default"), "default/bookinfo-gateway");
        assert_eq!(qualify_gateway("istio-system/gw", "default"), "istio-system/gw");
        assert_eq!(qualify_gateway("gw.prod", "default"), "prod/gw");
        assert_eq!(qualify_gateway("mesh", "default"), "mesh");
    }
}

//! Compiled HTTP routes and the one pure function that chooses a route for a request:
//! match entries are OR-ed, the fields of an entry AND-ed, the first matching route wins
//! (VirtualService semantics, as Envoy evaluates them).

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderMap;
use regex::Regex;
use serde::Serialize;

use super::cluster::Cluster;
use super::policy::{Cors, Fault, HeaderOps, Mirror, Redirect, RetryPolicy, Rewrite};

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StrMatch {
    Exact(String),
    Prefix(String),
    Regex(#[serde(serialize_with = "ser_regex")] Regex),
}

fn ser_regex<S: serde::Serializer>(r: &Regex, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(unanchored(r.as_str()))
}

fn unanchored(p: &str) -> &str {
    p.strip_prefix("^(?:").and_then(|p| p.strip_suffix(")$")).unwrap_or(p)
}

fn regex_source(m: &StrMatch) -> &str {
    match m {
        StrMatch::Regex(r) => unanchored(r.as_str()),
        StrMatch::Exact(s) | StrMatch::Prefix(s) => s,
    }
}

impl StrMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StrMatch::Exact(e) => value == e,
            StrMatch::Prefix(p) => value.starts_with(p.as_str()),
            StrMatch::Regex(r) => r.is_match(value),
        }
    }

    fn matches_ignore_case(&self, value: &str) -> bool {
        match self {
            StrMatch::Exact(e) => value.eq_ignore_ascii_case(e),
            StrMatch::Prefix(p) => {
                value.len() >= p.len() && value.is_char_boundary(p.len()) && value[..p.len()].eq_ignore_ascii_case(p)
            }
            StrMatch::Regex(r) => r.is_match(value),
        }
    }
}

/// A header (or query parameter) condition; `None` means "present".
#[derive(Clone, Debug, Serialize)]
pub struct ValueMatch {
    pub name: String,
    pub value: Option<StrMatch>,
}

/// One `HTTPMatchRequest`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RequestMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<StrMatch>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ignore_uri_case: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StrMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<StrMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<StrMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub without_headers: Vec<ValueMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
    /// Qualified `namespace/name` of Gateway resources, or `mesh`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Conditions that must hold too (a delegate's match under its root's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub and: Vec<RequestMatch>,
}

/// What routing looks at in a request.
pub struct RequestView<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    pub authority: &'a str,
    /// The full `:path`, query included.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// The destination port (service port for sidecars, server port for gateways).
    pub port: u16,
    pub source_labels: &'a BTreeMap<String, String>,
    pub source_namespace: &'a str,
    /// `namespace/name` of the Gateway resource serving the request; `None` in the mesh.
    pub gateway: Option<&'a str>,
}

impl RequestView<'_> {
    fn path_only(&self) -> &str {
        self.path.split_once('?').map_or(self.path, |(p, _)| p)
    }

    fn query(&self) -> Option<&str> {
        self.path.split_once('?').map(|(_, q)| q)
    }

    /// All values of a header joined with `,` as Envoy's header matcher sees them.
    fn header(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        let mut values = self.headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
        let first = values.next()?;
        match values.next() {
            None => Some(std::borrow::Cow::Borrowed(first)),
            Some(second) => {
                let mut joined = format!("{first},{second}");
                for v in values {
                    joined.push(',');
                    joined.push_str(v);
                }
                Some(std::borrow::Cow::Owned(joined))
            }
        }
    }

    fn query_param(&self, name: &str) -> Option<&str> {
        self.query()?.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    }
}

impl RequestMatch {
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if let Some(uri) = &self.uri {
            let value = match uri {
                StrMatch::Prefix(_) => req.path,
                _ => req.path_only(),
            };
            let ok = if self.ignore_uri_case { uri.matches_ignore_case(value) } else { uri.matches(value) };
            if !ok {
                return false;
            }
        }
        if let Some(m) = &self.scheme
            && !m.matches(req.scheme)
        {
            return false;
        }
        if let Some(m) = &self.method
            && !m.matches(req.method)
        {
            return false;
        }
        if let Some(m) = &self.authority
            && !m.matches(req.authority)
        {
            return false;
        }
        if let Some(p) = self.port
            && p != req.port
        {
            return false;
        }
        for h in &self.headers {
            let ok = match (req.header(&h.name), &h.value) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(v), Some(m)) => m.matches(&v),
            };
            if !ok {
                return false;
            }
        }
        for h in &self.without_headers {
            let hit = match (req.header(&h.name), &h.value) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(v), Some(m)) => m.matches(&v),
            };
            if hit {
                return false;
            }
        }
        for q in &self.query_params {
            let ok = match (req.query_param(&q.name), &q.value) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(v), Some(m)) => m.matches(v),
            };
            if !ok {
                return false;
            }
        }
        if !self.source_labels.iter().all(|(k, v)| req.source_labels.get(k) == Some(v)) {
            return false;
        }
        if let Some(ns) = &self.source_namespace
            && ns != req.source_namespace
        {
            return false;
        }
        if !self.gateways.is_empty() {
            let here = req.gateway.unwrap_or("mesh");
            if !self.gateways.iter().any(|g| g == here) {
                return false;
            }
        }
        self.and.iter().all(|m| m.matches(req))
    }

    /// A one-line summary (`proxy-config routes`): `uri=/static* && header[end-user]=jason`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        let m = |what: &str, v: &StrMatch| match v {
            StrMatch::Exact(e) => format!("{what}={e}"),
            StrMatch::Prefix(p) => format!("{what}={p}*"),
            StrMatch::Regex(_) => format!("{what}~{}", regex_source(v)),
        };
        if let Some(u) = &self.uri {
            parts.push(m(if self.ignore_uri_case { "uri(nocase)" } else { "uri" }, u));
        }
        for (what, v) in [("scheme", &self.scheme), ("method", &self.method), ("authority", &self.authority)] {
            if let Some(v) = v {
                parts.push(m(what, v));
            }
        }
        for h in &self.headers {
            parts.push(match &h.value {
                Some(v) => m(&format!("header[{}]", h.name), v),
                None => format!("header[{}]", h.name),
            });
        }
        for h in &self.without_headers {
            parts.push(match &h.value {
                Some(v) => format!("!{}", m(&format!("header[{}]", h.name), v)),
                None => format!("!header[{}]", h.name),
            });
        }
        for q in &self.query_params {
            parts.push(match &q.value {
                Some(v) => m(&format!("query[{}]", q.name), v),
                None => format!("query[{}]", q.name),
            });
        }
        if let Some(p) = self.port {
            parts.push(format!("port={p}"));
        }
        if !self.source_labels.is_empty() {
            let l: Vec<String> = self.source_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            parts.push(format!("sourceLabels{{{}}}", l.join(",")));
        }
        if let Some(ns) = &self.source_namespace {
            parts.push(format!("sourceNamespace={ns}"));
        }
        if !self.gateways.is_empty() {
            parts.push(format!("gateways={}", self.gateways.join("|")));
        }
        for a in &self.and {
            parts.push(format!("({})", a.describe()));
        }
        if parts.is_empty() { "*".into() } else { parts.join(" && ") }
    }

    /// The prefix a prefix `uri` match matched on (for `rewrite.uri`).
    pub fn matched_prefix(&self) -> Option<&str> {
        match &self.uri {
            Some(StrMatch::Prefix(p)) => Some(p),
            _ => None,
        }
    }
}

/// A destination and its share of traffic.
#[derive(Clone, Debug, Serialize)]
pub struct WeightedCluster {
    #[serde(serialize_with = "ser_cluster")]
    pub cluster: Arc<Cluster>,
    pub weight: u32,
    /// Header operations of this destination (`route[].headers`).
    #[serde(skip_serializing_if = "headers_empty")]
    pub headers: HeaderOps,
}

fn headers_empty(h: &HeaderOps) -> bool {
    h.request.is_empty() && h.response.is_empty()
}

fn ser_cluster<S: serde::Serializer>(c: &Arc<Cluster>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&c.name)
}

/// Forwarding to one of the weighted destinations, with the route's upstream policies.
#[derive(Clone, Debug, Serialize)]
pub struct Forward {
    pub destinations: Vec<WeightedCluster>,
    pub total_weight: u32,
    /// Covers all attempts; `None`: no timeout (Istio's default).
    pub timeout: Option<std::time::Duration>,
    pub retry: RetryPolicy,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Route(Box<Forward>),
    Redirect(Redirect),
    DirectResponse {
        status: u16,
        #[serde(skip)]
        body: bytes::Bytes,
    },
}

/// Where a compiled route came from, for `proxy-config routes` and access logs.
#[derive(Clone, Debug, Serialize)]
pub struct RouteOrigin {
    /// `namespace/name` of the VirtualService, or empty for the default route.
    pub virtual_service: String,
    pub index: usize,
    pub name: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Route {
    /// `namespace/vs#name` or `namespace/vs#index` (access logs).
    #[serde(skip)]
    pub name: crate::telemetry::Name,
    pub origin: RouteOrigin,
    /// OR-ed; empty matches every request.
    #[serde(rename = "match")]
    pub matches: Vec<RequestMatch>,
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    #[serde(skip_serializing_if = "headers_empty")]
    pub headers: HeaderOps,
}

impl RouteOrigin {
    pub fn display_name(&self) -> String {
        match (&self.name, self.virtual_service.is_empty()) {
            (Some(n), true) => n.clone(),
            (Some(n), false) => format!("{}#{}", self.virtual_service, n),
            (None, _) => format!("{}#{}", self.virtual_service, self.index),
        }
    }
}

impl Route {
    pub fn new(origin: RouteOrigin, matches: Vec<RequestMatch>, action: Action) -> Route {
        Route {
            name: crate::telemetry::Name::new(&origin.display_name()),
            origin,
            matches,
            action,
            fault: None,
            cors: None,
            headers: HeaderOps::default(),
        }
    }

    /// Whether the route matches, and which match entry did (`None` for a route without).
    pub fn matching(&self, req: &RequestView<'_>) -> Option<Option<&RequestMatch>> {
        if self.matches.is_empty() {
            return Some(None);
        }
        self.matches.iter().find(|m| m.matches(req)).map(Some)
    }
}

/// Normalises weights as Istio does: with several destinations, zero weights are dropped;
/// a single destination takes all traffic whatever its weight. Returns the total.
pub fn normalize_weights(destinations: &mut Vec<WeightedCluster>) -> u32 {
    if destinations.len() == 1 {
        destinations[0].weight = destinations[0].weight.max(1);
    } else {
        destinations.retain(|d| d.weight > 0);
    }
    destinations.iter().map(|d| d.weight).sum()
}

/// Picks a destination: `r` is uniform in `0..total`.
pub fn pick_weighted(destinations: &[WeightedCluster], r: u32) -> Option<&WeightedCluster> {
    let mut acc = 0u32;
    for d in destinations {
        acc += d.weight;
        if r < acc {
            return Some(d);
        }
    }
    destinations.last()
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RouteTable {
    pub routes: Vec<Route>,
}

/// The first route that matches the request, with the match entry that matched.
pub fn find<'r>(table: &'r RouteTable, req: &RequestView<'_>) -> Option<(&'r Route, Option<&'r RequestMatch>)> {
    table.routes.iter().find_map(|r| r.matching(req).map(|m| (r, m)))
}

/// TCP and TLS routes of one service port (`tcp[]`, `tls[]`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct TcpTable {
    pub routes: Vec<TcpRoute>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TcpRoute {
    pub origin: RouteOrigin,
    pub matches: Vec<L4Match>,
    pub destinations: Vec<WeightedCluster>,
    pub total_weight: u32,
}

/// `L4MatchAttributes` / `TLSMatchAttributes`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct L4Match {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// TLS routes: the SNI must match one (wildcards allowed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sni_hosts: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
}

/// What an opaque connection offers to TCP/TLS routing.
pub struct ConnView<'a> {
    pub port: u16,
    pub sni: Option<&'a str>,
    pub source_labels: &'a BTreeMap<String, String>,
    pub source_namespace: &'a str,
    pub gateway: Option<&'a str>,
}

impl L4Match {
    pub fn matches(&self, c: &ConnView<'_>) -> bool {
        if self.port.is_some_and(|p| p != c.port) {
            return false;
        }
        if !self.sni_hosts.is_empty() {
            let Some(sni) = c.sni else { return false };
            if !self.sni_hosts.iter().any(|h| crate::config::istio::validate::host_covers(h, sni)) {
                return false;
            }
        }
        if !self.source_labels.iter().all(|(k, v)| c.source_labels.get(k) == Some(v)) {
            return false;
        }
        if self.source_namespace.as_ref().is_some_and(|ns| ns != c.source_namespace) {
            return false;
        }
        if !self.gateways.is_empty() && !self.gateways.iter().any(|g| g == c.gateway.unwrap_or("mesh")) {
            return false;
        }
        true
    }
}

pub fn find_tcp<'r>(table: &'r TcpTable, c: &ConnView<'_>) -> Option<&'r TcpRoute> {
    table.routes.iter().find(|r| r.matches.is_empty() || r.matches.iter().any(|m| m.matches(c)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::mesh::Protocol;
    use crate::model::cluster::{Cluster, ClusterKey, Transport};
    use crate::model::lb::Lb;

    fn view<'a>(path: &'a str, headers: &'a HeaderMap, labels: &'a BTreeMap<String, String>) -> RequestView<'a> {
        RequestView {
            method: "GET",
            scheme: "http",
            authority: "reviews:9080",
            path,
            headers,
            port: 9080,
            source_labels: labels,
            source_namespace: "default",
            gateway: None,
        }
    }

    fn re(p: &str) -> StrMatch {
        StrMatch::Regex(crate::config::istio::validate::compile_regex(p).unwrap())
    }

    fn hm(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn uri_exact_prefix_and_full_regex() {
        let h = HeaderMap::new();
        let l = BTreeMap::new();
        let exact = RequestMatch { uri: Some(StrMatch::Exact("/productpage".into())), ..Default::default() };
        assert!(exact.matches(&view("/productpage", &h, &l)));
        assert!(exact.matches(&view("/productpage?u=normal", &h, &l)), "exact ignores the query string");
        assert!(!exact.matches(&view("/productpage/x", &h, &l)));
        let prefix = RequestMatch { uri: Some(StrMatch::Prefix("/static".into())), ..Default::default() };
        assert!(prefix.matches(&view("/static/img.png", &h, &l)) && !prefix.matches(&view("/stat", &h, &l)));
        let regex = RequestMatch { uri: Some(re("/api/v[0-9]+")), ..Default::default() };
        assert!(regex.matches(&view("/api/v1", &h, &l)));
        assert!(!regex.matches(&view("/api/v1/products", &h, &l)), "regex must match the whole path");
        assert!(!regex.matches(&view("/x/api/v1", &h, &l)));
    }

    #[test]
    fn ignore_uri_case_applies_to_exact_and_prefix() {
        let h = HeaderMap::new();
        let l = BTreeMap::new();
        let m =
            RequestMatch { uri: Some(StrMatch::Prefix("/Static".into())), ignore_uri_case: true, ..Default::default() };
        assert!(m.matches(&view("/STATIC/a", &h, &l)));
        let strict = RequestMatch { uri: Some(StrMatch::Exact("/A".into())), ..Default::default() };
        assert!(!strict.matches(&view("/a", &h, &l)));
    }

    #[test]
    fn headers_presence_absence_and_values() {
        let l = BTreeMap::new();
        let jason = hm(&[("end-user", "jason")]);
        let other = hm(&[("end-user", "bob")]);
        let none = HeaderMap::new();
        let m = RequestMatch {
            headers: vec![ValueMatch { name: "end-user".into(), value: Some(StrMatch::Exact("jason".into())) }],
            ..Default::default()
        };
        assert!(
            m.matches(&view("/", &jason, &l))
                && !m.matches(&view("/", &other, &l))
                && !m.matches(&view("/", &none, &l))
        );
        let present =
            RequestMatch { headers: vec![ValueMatch { name: "end-user".into(), value: None }], ..Default::default() };
        assert!(present.matches(&view("/", &other, &l)) && !present.matches(&view("/", &none, &l)));
        let without = RequestMatch {
            without_headers: vec![ValueMatch { name: "end-user".into(), value: Some(StrMatch::Exact("jason".into())) }],
            ..Default::default()
        };
        assert!(
            !without.matches(&view("/", &jason, &l))
                && without.matches(&view("/", &other, &l))
                && without.matches(&view("/", &none, &l))
        );
        let multi = hm(&[("x", "a"), ("x", "b")]);
        let joined = RequestMatch {
            headers: vec![ValueMatch { name: "x".into(), value: Some(StrMatch::Exact("a,b".into())) }],
            ..Default::default()
        };
        assert!(joined.matches(&view("/", &multi, &l)));
    }

    #[test]
    fn query_port_method_source_and_gateway_conditions_are_anded() {
        let h = HeaderMap::new();
        let labels: BTreeMap<String, String> = [("app".to_string(), "productpage".to_string())].into();
        let m = RequestMatch {
            query_params: vec![ValueMatch { name: "u".into(), value: Some(StrMatch::Exact("test".into())) }],
            method: Some(StrMatch::Exact("GET".into())),
            port: Some(9080),
            source_labels: labels.clone(),
            ..Default::default()
        };
        assert!(m.matches(&view("/p?u=test", &h, &labels)));
        assert!(!m.matches(&view("/p?u=normal", &h, &labels)));
        assert!(!m.matches(&view("/p?u=test", &h, &BTreeMap::new())));
        let gw = RequestMatch { gateways: vec!["default/bookinfo-gateway".into()], ..Default::default() };
        assert!(!gw.matches(&view("/", &h, &labels)), "a gateway-only match never applies in the mesh");
        let mut v = view("/", &h, &labels);
        v.gateway = Some("default/bookinfo-gateway");
        assert!(gw.matches(&v));
    }

    fn wc(name: &str, weight: u32) -> WeightedCluster {
        let key = ClusterKey { host: name.into(), subset: None, port: 80 };
        let cluster = Cluster::new(key, None, Protocol::Http, vec![], Lb::RoundRobin, Transport::IstioMutual);
        WeightedCluster { cluster: Arc::new(cluster), weight, headers: HeaderOps::default() }
    }

    fn forward(host: &str) -> Action {
        Action::Route(Box::new(Forward {
            destinations: vec![wc(host, 100)],
            total_weight: 100,
            timeout: None,
            retry: RetryPolicy::none(),
            mirrors: vec![],
            rewrite: None,
        }))
    }

    #[test]
    fn first_matching_route_wins_and_entries_are_ored() {
        let h = hm(&[("end-user", "jason")]);
        let l = BTreeMap::new();
        let route = |matches: Vec<RequestMatch>, host: &str| {
            Route::new(
                RouteOrigin { virtual_service: "default/reviews".into(), index: 0, name: None },
                matches,
                forward(host),
            )
        };
        let table = RouteTable {
            routes: vec![
                route(
                    vec![
                        RequestMatch { uri: Some(StrMatch::Exact("/nope".into())), ..Default::default() },
                        RequestMatch {
                            headers: vec![ValueMatch {
                                name: "end-user".into(),
                                value: Some(StrMatch::Exact("jason".into())),
                            }],
                            ..Default::default()
                        },
                    ],
                    "v2",
                ),
                route(vec![], "v1"),
                route(vec![], "never"),
            ],
        };
        let pick = |r: (&Route, Option<&RequestMatch>)| match &r.0.action {
            Action::Route(f) => f.destinations[0].cluster.key.host.clone(),
            _ => String::new(),
        };
        assert_eq!(pick(find(&table, &view("/", &h, &l)).unwrap()), "v2");
        assert!(
            find(&table, &view("/", &h, &l)).unwrap().1.is_some_and(|m| !m.headers.is_empty()),
            "the matching entry is reported"
        );
        assert_eq!(pick(find(&table, &view("/", &HeaderMap::new(), &l)).unwrap()), "v1");
        assert!(find(&RouteTable::default(), &view("/", &h, &l)).is_none());
    }

    #[test]
    fn weights_normalise_like_istio() {
        let mut one = vec![wc("a", 0)];
        assert_eq!(normalize_weights(&mut one), 1);
        let mut two = vec![wc("a", 0), wc("b", 30)];
        assert_eq!(normalize_weights(&mut two), 30);
        assert_eq!(two.len(), 1);
        let mut odd = vec![wc("a", 550), wc("b", 500)];
        assert_eq!(normalize_weights(&mut odd), 1050);
        assert_eq!(pick_weighted(&odd, 0).unwrap().cluster.key.host, "a");
        assert_eq!(pick_weighted(&odd, 549).unwrap().cluster.key.host, "a");
        assert_eq!(pick_weighted(&odd, 550).unwrap().cluster.key.host, "b");
        assert_eq!(pick_weighted(&odd, 1049).unwrap().cluster.key.host, "b");
    }
}

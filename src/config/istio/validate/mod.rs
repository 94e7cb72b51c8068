//! Istio's validation rules (VALIDATION.md) for the kinds devmesh reads, each error at the
//! line and column of the offending field, with Istio's wording.

use std::sync::Arc;

use crate::config::diag::{Diagnostics, Pos};
use crate::config::duration;
use crate::config::names;
use crate::config::yaml::{OrderedMap, Spanned};

use super::virtual_service::StringMatch;
use super::{Resource, Spec};

mod destination_rule;
mod gateway;
mod service_entry;
mod virtual_service;

pub use virtual_service::GRPC_CODES;

pub(crate) struct V<'a> {
    file: Arc<str>,
    diags: &'a mut Diagnostics,
}

impl V<'_> {
    pub(crate) fn err(&mut self, pos: Pos, msg: impl Into<String>) {
        self.diags.error(&self.file, pos, msg);
    }
    pub(crate) fn warn(&mut self, pos: Pos, msg: impl Into<String>) {
        self.diags.warning(&self.file, pos, msg);
    }
}

/// Checks one resource; problems go to `diags` against the resource's file.
pub fn validate(res: &Resource, diags: &mut Diagnostics) {
    let mut v = V { file: res.origin.file.clone(), diags };
    match &res.spec {
        Spec::VirtualService(vs) => virtual_service::virtual_service(&mut v, res, vs),
        Spec::Gateway(gw) => gateway::gateway(&mut v, res, gw),
        Spec::DestinationRule(dr) => destination_rule::destination_rule(&mut v, res, dr),
        Spec::ServiceEntry(se) => service_entry::service_entry(&mut v, res, se),
        Spec::Sidecar(sc) => service_entry::sidecar(&mut v, res, sc),
        Spec::Opaque(_) => {}
    }
}

/// Compiles an Istio regex as Envoy uses it (RE2 semantics, whole-string match). Compiled
/// patterns are cached: validation and compilation of one change, and every later reload,
/// share them (building a regex costs tens of microseconds; a 1000-route reload has many).
pub fn compile_regex(pattern: &str) -> Result<regex::Regex, String> {
    type Cache = std::sync::Mutex<std::collections::HashMap<String, Result<regex::Regex, String>>>;
    static CACHE: std::sync::LazyLock<Cache> = std::sync::LazyLock::new(Default::default);
    const MAX_CACHED: usize = 20_000;
    if let Ok(cache) = CACHE.lock()
        && let Some(hit) = cache.get(pattern)
    {
        return hit.clone();
    }
    let compiled = build_regex(pattern);
    if let Ok(mut cache) = CACHE.lock() {
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(pattern.to_string(), compiled.clone());
    }
    compiled
}

fn build_regex(pattern: &str) -> Result<regex::Regex, String> {
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

pub(crate) fn check_duration(v: &mut V, d: &Spanned<String>) {
    if let Err(e) = duration::parse_istio(d) {
        v.err(d.pos, e);
    }
}

pub(crate) fn port(v: &mut V, p: &Spanned<u32>) {
    if p.value < 1 || p.value > 65535 {
        v.err(p.pos, format!("port number {} must be in the range 1..65535", p.value));
    }
}

pub(crate) fn string_match(v: &mut V, what: &str, m: &Spanned<StringMatch>, allow_empty_prefix: bool) {
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

pub(crate) fn header_map(
    v: &mut V,
    what: &str,
    map: &OrderedMap<Spanned<String>, Spanned<StringMatch>>,
    without: bool,
) {
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

pub(crate) fn gateway_ref(v: &mut V, g: &Spanned<String>) {
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

pub(crate) fn export_to(v: &mut V, entries: &[Spanned<String>], service_entry: bool) {
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

pub(crate) fn hosts_overlap(a: &str, b: &str) -> bool {
    host_covers(a, b) || host_covers(b, a)
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
    fn destination_rule_rules_with_positions() {
        let text = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: reviews\n  trafficPolicy:\n    connectionPool:\n      http: {http1MaxPendingRequests: -1, h2UpgradePolicy: UPGRADE, useClientProtocol: true}\n      tcp: {connectTimeout: 5}\n    outlierDetection: {maxEjectionPercent: 150, consecutiveLocalOriginFailures: 3, consecutiveErrors: 5}\n    loadBalancer:\n      consistentHash: {httpCookie: {ttl: 0s}, maglev: {tableSize: 1000}}\n    tls: {mode: MUTUAL}\n    tunnel: {protocol: GET, targetHost: \"bad host\", targetPort: 0}\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v1}\n  - {name: V_2}\n";
        assert_eq!(
            check(text),
            "v.yaml:8:39: error: http1 max pending requests must be non-negative\n\
             v.yaml:8:60: error: use client protocol must not be true when H2UpgradePolicy is UPGRADE\n\
             v.yaml:9:29: error: time: missing unit in duration \"5\"\n\
             v.yaml:10:44: error: percentage 150 is not in range 0..100\n\
             v.yaml:10:81: error: outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false\n\
             v.yaml:10:103: warning: outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead\n\
             v.yaml:12:36: error: name required for HttpCookie\n\
             v.yaml:12:55: error: tableSize must be a prime number for maglev\n\
             v.yaml:13:10: error: client certificate required for mutual tls\n\
             v.yaml:13:10: error: private key required for mutual tls\n\
             v.yaml:14:24: error: tunnel protocol must be \"CONNECT\" or \"POST\"\n\
             v.yaml:14:41: error: tunnel target host must be valid FQDN or IP address: \"bad host\"\n\
             v.yaml:14:65: error: tunnel target port is invalid: port number 0 must be in the range 1..65535\n\
             v.yaml:17:12: error: duplicate subset names: v1\n\
             v.yaml:18:12: error: subset name is invalid: V_2\n"
        );
    }

    #[test]
    fn service_entry_and_sidecar_rules_with_positions() {
        let text = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec:\n  hosts: [\"*\", api.example.com]\n  addresses: [10.0.0.0/8, nope]\n  ports:\n  - {number: 80, name: http, protocol: HTTP}\n  - {number: 80, name: http, protocol: FTP}\n  resolution: DNS\n  endpoints:\n  - {address: \"not a host\", ports: {grpc: 9000}}\n---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default}\nspec:\n  egress:\n  - hosts: [reviews, \"./reviews\", \"*/*\"]\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY, egressProxy: {host: proxy}}\n";
        assert_eq!(
            check(text),
            "v.yaml:5:3: error: multiple hosts provided with non-HTTP, non-TLS ports\n\
             v.yaml:5:3: warning: service entry can not have more than one host specified simultaneously with address and tcp port\n\
             v.yaml:5:11: error: invalid host *\n\
             v.yaml:6:15: error: CIDR addresses are allowed only for NONE/STATIC resolution types\n\
             v.yaml:6:27: error: nope is not a valid IP\n\
             v.yaml:9:14: error: service entry port 80 already defined\n\
             v.yaml:9:24: error: service entry port name \"http\" already defined\n\
             v.yaml:9:40: error: unsupported protocol: FTP\n\
             v.yaml:12:15: error: endpoint address \"not a host\" is not a valid FQDN or an IP address\n\
             v.yaml:12:43: error: endpoint port grpc is not defined by the service entry\n\
             v.yaml:19:5: warning: `*/*` host select all resources, no other hosts can be added\n\
             v.yaml:19:13: error: host must be of form namespace/dnsName\n\
             v.yaml:19:22: error: short names (non FQDN) are not allowed\n\
             v.yaml:20:26: error: sidecar: egress_proxy must be set only with ALLOW_ANY outbound_traffic_policy mode\n\
             v.yaml:20:61: error: sidecar: egress_proxy port must be non-nil\n"
        );
    }

    #[test]
    fn istio_bookinfo_gateway_is_valid() {
        let text = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: bookinfo-gateway\nspec:\n  selector:\n    istio: ingressgateway\n  servers:\n  - port:\n      number: 8080\n      name: http\n      protocol: HTTP\n    hosts:\n    - \"*\"\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: bookinfo\nspec:\n  hosts:\n  - \"*\"\n  gateways:\n  - bookinfo-gateway\n  http:\n  - match:\n    - uri:\n        exact: /productpage\n    - uri:\n        prefix: /static\n    route:\n    - destination:\n        host: productpage\n        port:\n          number: 9080\n";
        assert_eq!(check(text), "");
    }
}

//! Compiles the topology and Istio resources into a [`MeshSnapshot`]: clusters with their
//! endpoints, sidecar route tables per service port, gateway virtual hosts per listener.
//! Everything per-request (regexes, host qualification, weights) is done here, once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::config::diag::Diagnostics;
use crate::config::istio::gateway::GatewaySpec;
use crate::config::istio::validate::{compile_regex, host_covers};
use crate::config::istio::virtual_service::{HttpMatchRequest, HttpRoute, MatchKind, StringMatch, VirtualServiceSpec};
use crate::config::istio::{Resource, Spec};
use crate::config::mesh::{OutboundMode, Protocol};
use crate::config::yaml::{OrderedMap, Spanned};

use super::cluster::{Cluster, ClusterKey, Endpoint};
use super::hosts::{self, HostIndex};
use super::routes::{Action, RequestMatch, Route, RouteOrigin, RouteTable, StrMatch, ValueMatch, WeightedCluster};
use super::snapshot::{GatewayListener, MeshSnapshot, VirtualHost};
use super::support;
use super::topology::Topology;

pub struct Compiled {
    pub snapshot: MeshSnapshot,
    /// What the configuration asks for that this snapshot does not do.
    pub warnings: Diagnostics,
}

pub fn compile(topology: Arc<Topology>, resources: Arc<Vec<Resource>>, version: u64, mode: OutboundMode) -> Compiled {
    let mut warnings = Diagnostics::new();
    for r in resources.iter() {
        support::unsupported(r, &mut warnings);
    }
    let hosts = HostIndex::new(&topology.services, &topology.namespace);
    let mut c = Compiler { topology: &topology, hosts: &hosts, clusters: BTreeMap::new() };

    let virtual_services: Vec<(&Resource, &VirtualServiceSpec)> = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::VirtualService(vs) => Some((r, vs)),
            _ => None,
        })
        .collect();

    let mut mesh_routes = HashMap::new();
    for (si, svc) in topology.services.iter().enumerate() {
        let bound: Vec<_> = virtual_services
            .iter()
            .filter(|(r, vs)| {
                applies_to_mesh(vs) && vs.hosts.iter().any(|h| c.host_is_service(h, &r.metadata.namespace, si))
            })
            .collect();
        for port in &svc.ports {
            let table = if bound.is_empty() {
                let cluster = c.cluster(&svc.fqdn, None, port.port);
                RouteTable {
                    routes: vec![Route::new(
                        RouteOrigin { virtual_service: String::new(), index: 0, name: Some("default".into()) },
                        vec![],
                        Action::Route {
                            destinations: vec![WeightedCluster { cluster, weight: 100 }],
                            total_weight: 100,
                        },
                    )],
                }
            } else {
                let mut routes = Vec::new();
                for (r, vs) in &bound {
                    routes.extend(c.http_routes(r, vs, Some(port.port)));
                }
                RouteTable { routes }
            };
            mesh_routes.insert((si, port.port), Arc::new(table));
        }
    }

    let gateways: Vec<(&Resource, &GatewaySpec)> = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::Gateway(g) => Some((r, g)),
            _ => None,
        })
        .collect();
    let mut gateway_routes = HashMap::new();
    for (gi, gw) in topology.gateways.iter().enumerate() {
        for (server_port, local) in &gw.listeners {
            let mut listener = GatewayListener::default();
            for (res, spec) in &gateways {
                if !selector_matches(&spec.selector, &gw.labels) {
                    continue;
                }
                let gw_key = format!("{}/{}", res.metadata.namespace, res.metadata.name);
                for server in &spec.servers {
                    let Some(num) = server.port.as_ref().and_then(|p| p.number.as_ref()).map(|n| n.value) else {
                        continue;
                    };
                    if !server_binds(num, *server_port, local.port()) {
                        continue;
                    }
                    let proto = server.port.as_ref().and_then(|p| p.protocol.as_ref()).map(|p| Protocol::parse(p));
                    if !proto.is_some_and(Protocol::is_http) {
                        continue;
                    }
                    for (vs_res, vs) in &virtual_services {
                        if !vs_binds_gateway(vs, &vs_res.metadata.namespace, &gw_key) {
                            continue;
                        }
                        let domains = intersect_hosts(&server.hosts, &vs.hosts, &vs_res.metadata.namespace);
                        if domains.is_empty() {
                            continue;
                        }
                        let routes = c.http_routes_for_gateway(vs_res, vs, *server_port);
                        merge_vhost(&mut listener, domains, gw_key.clone(), routes);
                    }
                }
            }
            gateway_routes.insert((gi, *server_port), Arc::new(listener));
        }
    }

    let clusters = c.clusters;
    Compiled {
        snapshot: MeshSnapshot {
            version,
            outbound_mode: mode,
            topology: topology.clone(),
            resources,
            hosts,
            clusters,
            mesh_routes,
            gateway_routes,
        },
        warnings,
    }
}

/// Whether a Gateway server port belongs to the listener for mesh-file port `service_port`
/// (bound locally on `local_port`). Istio accepts the gateway Service's port or its target
/// port; devmesh's gateways have the default ingress gateway's (80 → 8080, 443 → 8443), and
/// the local port counts too.
pub fn server_binds(server_port: i64, service_port: u16, local_port: u16) -> bool {
    let target = match service_port {
        80 => 8080,
        443 => 8443,
        p => p,
    };
    server_port == i64::from(service_port) || server_port == i64::from(target) || server_port == i64::from(local_port)
}

/// A VirtualService without `gateways` applies to the mesh, as does one listing `mesh`.
fn applies_to_mesh(vs: &VirtualServiceSpec) -> bool {
    vs.gateways.is_empty() || vs.gateways.iter().any(|g| g.as_str() == "mesh")
}

/// Resolves a gateway reference of a VirtualService in `namespace` to `ns/name`.
fn qualify_gateway(g: &str, namespace: &str) -> String {
    if g == "mesh" {
        return g.to_string();
    }
    if g.contains('/') {
        return g.to_string();
    }
    match g.split_once('.') {
        Some((name, ns)) => format!("{ns}/{name}"),
        None => format!("{namespace}/{g}"),
    }
}

fn vs_binds_gateway(vs: &VirtualServiceSpec, namespace: &str, gw_key: &str) -> bool {
    vs.gateways.iter().any(|g| qualify_gateway(g, namespace) == gw_key)
}

fn selector_matches(
    selector: &OrderedMap<Spanned<String>, Spanned<String>>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k.as_str()) == Some(&v.value))
}

/// The hosts both a Gateway server and a VirtualService admit (Istio intersects them).
fn intersect_hosts(server_hosts: &[Spanned<String>], vs_hosts: &[Spanned<String>], vs_namespace: &str) -> Vec<String> {
    let mut out = Vec::new();
    for sh in server_hosts {
        let (ns, dns) = sh.split_once('/').unwrap_or(("*", sh.as_str()));
        if !(ns == "*" || ns == "." || ns == vs_namespace) {
            continue;
        }
        for vh in vs_hosts {
            let vh = hosts::normalize(vh);
            let d = if host_covers(dns, &vh) {
                vh.into_owned()
            } else if host_covers(&vh, dns) {
                dns.to_string()
            } else {
                continue;
            };
            if !out.contains(&d) {
                out.push(d);
            }
        }
    }
    out
}

/// Adds routes under `domains`; a virtual host already holding one of the domains gets the
/// routes appended (Istio merges VirtualServices bound to the same gateway host).
fn merge_vhost(listener: &mut GatewayListener, domains: Vec<String>, gateway: String, routes: Vec<Route>) {
    if let Some(vh) = listener.virtual_hosts.iter_mut().find(|vh| vh.domains == domains) {
        vh.table.routes.extend(routes);
        return;
    }
    listener.virtual_hosts.push(VirtualHost { domains, gateway, table: RouteTable { routes } });
}

struct Compiler<'a> {
    topology: &'a Topology,
    hosts: &'a HostIndex,
    clusters: BTreeMap<ClusterKey, Arc<Cluster>>,
}

impl Compiler<'_> {
    /// Whether a VirtualService host (as written, in `namespace`) names service `si`.
    fn host_is_service(&self, host: &str, namespace: &str, si: usize) -> bool {
        let svc = &self.topology.services[si];
        let q = hosts::qualify(host, namespace);
        if q == svc.fqdn || (q.starts_with('*') && host_covers(&q, &svc.fqdn)) {
            return true;
        }
        self.hosts.resolve(host).is_some_and(|(i, _)| i == si)
    }

    /// A destination host as Istio qualifies it, leniently mapping the other Kubernetes forms
    /// (`svc.ns`, `svc.ns.svc`) to their service.
    fn resolve_host(&self, host: &str, namespace: &str) -> String {
        let q = hosts::qualify(host, namespace);
        if self.hosts.by_fqdn(&q).is_some() {
            return q;
        }
        match self.hosts.resolve(host) {
            Some((si, _)) => self.topology.services[si].fqdn.clone(),
            None => q,
        }
    }

    fn cluster(&mut self, host_fqdn: &str, subset: Option<&str>, port: u16) -> Arc<Cluster> {
        let key = ClusterKey { host: host_fqdn.to_string(), subset: subset.map(str::to_string), port };
        if let Some(c) = self.clusters.get(&key) {
            return c.clone();
        }
        let service = self.hosts.by_fqdn(host_fqdn);
        let protocol = service
            .and_then(|si| self.topology.services[si].port(port))
            .map(|p| p.protocol)
            .unwrap_or(Protocol::Unknown);
        let mut endpoints = Vec::new();
        if let Some(si) = service
            && subset.is_none()
        {
            for inst in self.topology.instances.iter().filter(|i| i.service == si) {
                if let Some(p) = inst.ports.iter().find(|p| p.port == port) {
                    endpoints.push(Endpoint { instance: inst.clone(), addr: p.inbound });
                }
            }
        }
        let cluster = Arc::new(Cluster::new(key.clone(), service, protocol, endpoints));
        self.clusters.insert(key, cluster.clone());
        cluster
    }

    /// The destination port: explicit, else the only port of the service, else the port the
    /// request arrived for, else the first port.
    fn destination_port(&self, fqdn: &str, explicit: Option<u32>, request_port: Option<u16>) -> u16 {
        if let Some(p) = explicit.and_then(|p| u16::try_from(p).ok()) {
            return p;
        }
        let Some(si) = self.hosts.by_fqdn(fqdn) else {
            return request_port.unwrap_or(80);
        };
        let svc = &self.topology.services[si];
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

    fn http_routes(&mut self, res: &Resource, vs: &VirtualServiceSpec, port: Option<u16>) -> Vec<Route> {
        let ns = &res.metadata.namespace;
        let vs_name = format!("{ns}/{}", res.metadata.name);
        let mut out = Vec::new();
        for (index, r) in vs.http.iter().enumerate() {
            let Some(action) = self.action(r, ns, port) else {
                continue;
            };
            let matches = r.matches.iter().map(|m| compile_match(m, ns)).collect();
            out.push(Route::new(
                RouteOrigin { virtual_service: vs_name.clone(), index, name: r.name.clone() },
                matches,
                action,
            ));
        }
        out
    }

    fn http_routes_for_gateway(&mut self, res: &Resource, vs: &VirtualServiceSpec, port: u16) -> Vec<Route> {
        self.http_routes(res, vs, Some(port))
    }

    fn action(&mut self, r: &HttpRoute, namespace: &str, request_port: Option<u16>) -> Option<Action> {
        if r.route.is_empty() {
            return None;
        }
        let mut destinations = Vec::new();
        for d in &r.route {
            let Some(dest) = &d.destination else { continue };
            let fqdn = self.resolve_host(&dest.host, namespace);
            let port = self.destination_port(&fqdn, dest.port.as_ref().map(|p| p.number.value), request_port);
            let cluster = self.cluster(&fqdn, dest.subset.as_ref().map(|s| s.as_str()), port);
            let weight =
                d.weight.as_ref().map(|w| w.value.max(0) as u32).unwrap_or(if r.route.len() == 1 { 100 } else { 0 });
            destinations.push(WeightedCluster { cluster, weight });
        }
        let total_weight = super::routes::normalize_weights(&mut destinations);
        if destinations.is_empty() {
            return None;
        }
        Some(Action::Route { destinations, total_weight })
    }
}

fn str_match(m: &StringMatch) -> Option<StrMatch> {
    match m.get()? {
        (MatchKind::Exact, v) => Some(StrMatch::Exact(v.to_string())),
        (MatchKind::Prefix, v) => Some(StrMatch::Prefix(v.to_string())),
        (MatchKind::Regex, v) => compile_regex(v).ok().map(StrMatch::Regex),
    }
}

fn value_matches(
    map: &OrderedMap<Spanned<String>, Spanned<StringMatch>>,
    skip_special: bool,
    without: bool,
) -> Vec<ValueMatch> {
    map.iter()
        .filter(|(k, _)| !(skip_special && matches!(k.as_str(), "uri" | "scheme" | "method" | "authority")))
        .map(|(k, v)| {
            let value = if without && v.regex.as_ref().map(|r| r.as_str()) == Some("*") { None } else { str_match(v) };
            ValueMatch { name: k.to_ascii_lowercase(), value }
        })
        .collect()
}

fn compile_match(m: &HttpMatchRequest, namespace: &str) -> RequestMatch {
    RequestMatch {
        uri: m.uri.as_ref().and_then(|u| str_match(u)),
        ignore_uri_case: m.ignore_uri_case,
        scheme: m.scheme.as_ref().and_then(|u| str_match(u)),
        method: m.method.as_ref().and_then(|u| str_match(u)),
        authority: m.authority.as_ref().and_then(|u| str_match(u)),
        headers: value_matches(&m.headers, true, false),
        without_headers: value_matches(&m.without_headers, true, true),
        query_params: m
            .query_params
            .iter()
            .map(|(k, v)| ValueMatch { name: k.value.clone(), value: str_match(v) })
            .collect(),
        port: m.port.as_ref().and_then(|p| u16::try_from(p.value).ok()),
        source_labels: m.source_labels.clone(),
        source_namespace: m.source_namespace.as_ref().map(|s| s.value.clone()),
        gateways: m.gateways.iter().map(|g| qualify_gateway(g, namespace)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_server_ports_bind_like_the_ingress_gateway_service() {
        assert!(server_binds(80, 80, 8080));
        assert!(server_binds(8080, 80, 8080), "Istio's bookinfo-gateway uses the target port");
        assert!(server_binds(8080, 80, 41234), "the target port works whatever the local port");
        assert!(server_binds(8443, 443, 0));
        assert!(server_binds(9000, 9000, 1234));
        assert!(server_binds(1234, 9000, 1234));
        assert!(!server_binds(8080, 443, 8443));
        assert!(!server_binds(81, 80, 8080));
    }
}

//! Compiles the topology and Istio resources into a [`MeshSnapshot`]: the registry (mesh
//! services and ServiceEntry hosts), clusters with their endpoints and policies, sidecar
//! route tables per service port (HTTP and TCP/TLS), gateway virtual hosts per listener and
//! the Sidecar scope of every instance. Everything per request (regexes, host qualification,
//! weights, DestinationRule lookups) is done here, once.

mod analyze;
mod clusters;
pub mod http;
mod tcp;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::config::diag::Diagnostics;
use crate::config::istio::gateway::GatewaySpec;
use crate::config::istio::validate::host_covers;
use crate::config::istio::{Resource, Spec, VirtualServiceSpec};
use crate::config::mesh::{OutboundMode, Protocol};
use crate::config::yaml::{OrderedMap, Spanned};

use super::cluster::{Address, Cluster, ClusterKey, Endpoint, Transport};
use super::hosts;
use super::lb::Lb;
use super::policy::RetryPolicy;
use super::registry::{Registry, exported_to};
use super::routes::{Action, Forward, Route, RouteOrigin, RouteTable, TcpTable, WeightedCluster};
use super::snapshot::{GatewayListener, MeshSnapshot, VirtualHost};
use super::support;
use super::topology::Topology;

use self::clusters::Clusters;
use self::http::qualify_gateway;
use self::http::{ByName, HttpCompiler};
use self::tcp::TcpCompiler;

pub struct Compiled {
    pub snapshot: MeshSnapshot,
    /// What the configuration asks for that this snapshot does not do, and likely mistakes.
    pub warnings: Diagnostics,
}

pub fn compile(topology: Arc<Topology>, resources: Arc<Vec<Resource>>, version: u64, mode: OutboundMode) -> Compiled {
    let mut warnings = Diagnostics::new();
    for r in resources.iter() {
        support::unsupported(r, &mut warnings);
    }
    let registry = Registry::build(&topology, &resources, &mut warnings);
    let mesh_ns = topology.namespace.clone();
    let mut clusters = Clusters::new(&topology, &registry, &resources);

    let virtual_services: Vec<(&Resource, &VirtualServiceSpec)> = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::VirtualService(vs) => Some((r, vs.as_ref())),
            _ => None,
        })
        .collect();
    let by_name: ByName = virtual_services
        .iter()
        .map(|(r, vs)| ((r.metadata.namespace.clone(), r.metadata.name.clone()), (*r, *vs)))
        .collect();

    // Sidecar routes, per registry service port.
    let mut mesh_routes = HashMap::new();
    let mut tcp_routes = HashMap::new();
    let index = MeshIndex::new(&virtual_services, &registry, &mesh_ns);
    for (si, svc) in registry.services.iter().enumerate() {
        if !svc.visible_to(&mesh_ns) {
            continue;
        }
        let bound: Vec<(&Resource, &VirtualServiceSpec)> =
            index.lookup(si, &svc.host).map(|vi| virtual_services[vi]).into_iter().collect();
        for port in &svc.ports {
            let mut routes = Vec::new();
            let mut tcp = Vec::new();
            for (r, vs) in &bound {
                let mut h = HttpCompiler {
                    clusters: &mut clusters,
                    registry: &registry,
                    by_name: &by_name,
                    client_ns: &mesh_ns,
                };
                routes.extend(h.routes(r, vs, Some(port.port)));
                let mut t = TcpCompiler { clusters: &mut clusters, registry: &registry, client_ns: &mesh_ns };
                tcp.extend(t.routes(r, vs, port.port));
            }
            let http_like = port.protocol.is_http() || port.protocol == Protocol::Unknown;
            if routes.is_empty() && http_like {
                let cluster = clusters.get(&mesh_ns, Some(si), &svc.host, None, port.port);
                routes.push(default_route(cluster));
            }
            mesh_routes.insert((si, port.port), Arc::new(RouteTable { routes }));
            // Routes whose every match names another port never apply here; a port no route
            // applies to goes to the service's own cluster, as pilot adds the default route
            // when no route matched the port (a `tcp` route for 9000 leaves 9001 alone).
            tcp.retain(|r| r.matches.is_empty() || r.matches.iter().any(|m| m.port.is_none_or(|p| p == port.port)));
            if tcp.is_empty() {
                let cluster = clusters.get(&mesh_ns, Some(si), &svc.host, None, port.port);
                tcp.push(super::routes::TcpRoute {
                    origin: RouteOrigin { virtual_service: String::new(), index: 0, name: Some("default".into()) },
                    matches: Vec::new(),
                    destinations: vec![WeightedCluster { cluster, weight: 100, headers: Default::default() }],
                    total_weight: 100,
                });
            }
            tcp_routes.insert((si, port.port), Arc::new(TcpTable { routes: tcp }));
        }
    }

    // Gateway routes, per gateway listener.
    let gateways: Vec<(&Resource, &GatewaySpec)> = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::Gateway(g) => Some((r, g.as_ref())),
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
                        if !vs_binds_gateway(vs, &vs_res.metadata.namespace, &gw_key)
                            || !exported_to(&export_list(&vs.export_to), &vs_res.metadata.namespace, &gw.namespace)
                        {
                            continue;
                        }
                        let domains = intersect_hosts(&server.hosts, &vs.hosts, &vs_res.metadata.namespace);
                        if domains.is_empty() {
                            continue;
                        }
                        let mut h = HttpCompiler {
                            clusters: &mut clusters,
                            registry: &registry,
                            by_name: &by_name,
                            client_ns: &gw.namespace,
                        };
                        let routes = h.routes(vs_res, vs, Some(*server_port));
                        merge_vhost(&mut listener, domains, gw_key.clone(), routes);
                    }
                }
            }
            gateway_routes.insert((gi, *server_port), Arc::new(listener));
        }
    }

    // Every subset a DestinationRule defines is a cluster too, as in Istio's CDS.
    for (si, svc) in registry.services.iter().enumerate() {
        if !svc.visible_to(&mesh_ns) {
            continue;
        }
        let subsets: Vec<String> = clusters
            .rule_for(&svc.host, &mesh_ns, &svc.namespace)
            .map(|(_, dr)| dr.subsets.iter().map(|s| s.name.value.clone()).collect())
            .unwrap_or_default();
        for port in &svc.ports {
            clusters.get(&mesh_ns, Some(si), &svc.host, None, port.port);
            for s in &subsets {
                clusters.get(&mesh_ns, Some(si), &svc.host, Some(s), port.port);
            }
        }
    }

    analyze::analyze(&resources, &registry, &clusters, &mesh_ns, &mut warnings);
    let scopes = super::scope::scopes(&topology, &resources, mode);
    let cluster_map = clusters.built(&mesh_ns);
    drop(clusters);
    Compiled {
        snapshot: MeshSnapshot {
            version,
            outbound_mode: mode,
            topology: topology.clone(),
            resources: resources.clone(),
            registry,
            clusters: cluster_map,
            mesh_routes,
            tcp_routes,
            gateway_routes,
            scopes,
            passthrough: Arc::new(passthrough_table()),
            blackhole: Arc::new(blackhole_table()),
        },
        warnings,
    }
}

/// The route of a service no VirtualService routes: all of it to the service, with Istio's
/// default retry policy.
fn default_route(cluster: Arc<Cluster>) -> Route {
    Route::new(
        RouteOrigin { virtual_service: String::new(), index: 0, name: Some("default".into()) },
        Vec::new(),
        Action::Route(Box::new(Forward {
            destinations: vec![WeightedCluster { cluster, weight: 100, headers: Default::default() }],
            total_weight: 100,
            timeout: None,
            retry: RetryPolicy::istio_default(),
            mirrors: Vec::new(),
            rewrite: None,
        })),
    )
}

/// Istio's `allow_any` route: hosts outside the registry go to where the client asked
/// (`PassthroughCluster`).
fn passthrough_table() -> RouteTable {
    let key = ClusterKey { host: "PassthroughCluster".into(), subset: None, port: 0 };
    let ep = Endpoint::external("original-destination".into(), Address::OriginalDestination);
    let cluster = Arc::new(Cluster::new(key, None, Protocol::Unknown, vec![ep], Lb::RoundRobin, Transport::Plaintext));
    let mut route = default_route(cluster);
    route.origin.name = Some("allow_any".into());
    route.name = crate::telemetry::Name::from_static("allow_any");
    if let Action::Route(f) = &mut route.action {
        f.retry = RetryPolicy::none();
    }
    RouteTable { routes: vec![route] }
}

/// Istio's `block_all` route under REGISTRY_ONLY: 502 for hosts outside the registry.
fn blackhole_table() -> RouteTable {
    let origin = RouteOrigin { virtual_service: String::new(), index: 0, name: Some("block_all".into()) };
    RouteTable {
        routes: vec![Route::new(origin, Vec::new(), Action::DirectResponse { status: 502, body: bytes::Bytes::new() })],
    }
}

fn export_list(e: &[Spanned<String>]) -> Vec<String> {
    e.iter().map(|s| s.value.clone()).collect()
}

/// A VirtualService without `gateways` applies to the mesh, as does one listing `mesh`.
fn applies_to_mesh(vs: &VirtualServiceSpec) -> bool {
    vs.gateways.is_empty() || vs.gateways.iter().any(|g| g.as_str() == "mesh")
}

/// Which VirtualService a sidecar uses for each registry service: those for the mesh,
/// visible in the mesh namespace, naming the service most specifically (exact host before the
/// longest wildcard); the first one wins a host (Istio merges VirtualServices for one host
/// only on gateways). Built once, so lookups do not scan every VirtualService per service.
struct MeshIndex {
    exact: HashMap<usize, usize>,
    wildcard: Vec<(String, usize)>,
}

impl MeshIndex {
    fn new(all: &[(&Resource, &VirtualServiceSpec)], registry: &Registry, mesh_ns: &str) -> MeshIndex {
        let mut exact = HashMap::new();
        let mut wildcard = Vec::new();
        for (vi, (r, vs)) in all.iter().enumerate() {
            let ns = &r.metadata.namespace;
            if !applies_to_mesh(vs) || !exported_to(&export_list(&vs.export_to), ns, mesh_ns) {
                continue;
            }
            for h in &vs.hosts {
                let q = hosts::qualify(h, ns);
                if q.starts_with('*') {
                    wildcard.push((q, vi));
                } else if let Some(si) = registry.find(h, ns) {
                    exact.entry(si).or_insert(vi);
                }
            }
        }
        MeshIndex { exact, wildcard }
    }

    fn lookup(&self, si: usize, host: &str) -> Option<usize> {
        if let Some(vi) = self.exact.get(&si) {
            return Some(*vi);
        }
        let mut best: Option<(usize, usize)> = None;
        for (pattern, vi) in &self.wildcard {
            if host_covers(pattern, host) && best.is_none_or(|(len, _)| pattern.len() > len) {
                best = Some((pattern.len(), *vi));
            }
        }
        best.map(|(_, vi)| vi)
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

/// Adds routes under `domains`; a virtual host already holding the domains gets the routes
/// appended (Istio merges VirtualServices bound to the same gateway host).
fn merge_vhost(listener: &mut GatewayListener, domains: Vec<String>, gateway: String, routes: Vec<Route>) {
    if let Some(vh) = listener.virtual_hosts.iter_mut().find(|vh| vh.domains == domains) {
        vh.table.routes.extend(routes);
        return;
    }
    listener.virtual_hosts.push(VirtualHost { domains, gateway, table: RouteTable { routes } });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` ServiceEntry hosts, each with a DestinationRule (two subsets) and a VirtualService
    /// of five routes: the 1000-service / 5000-route configuration of the reload benchmark.
    pub fn big_config(n: usize, weight: u32) -> String {
        let mut y = String::new();
        for i in 0..n {
            y.push_str(&format!(
                "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc-{i}}}\nspec:\n  hosts: [svc-{i}.bench.test]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints:\n  - {{address: 127.0.0.1, labels: {{version: v1}}}}\n  - {{address: 127.0.0.2, labels: {{version: v2}}}}\n---\n\
                 apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc-{i}}}\nspec:\n  host: svc-{i}.bench.test\n  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]\n---\n\
                 apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: svc-{i}}}\nspec:\n  hosts: [svc-{i}.bench.test]\n  http:\n\
                 \x20 - match: [{{uri: {{prefix: /v2}}}}]\n    route: [{{destination: {{host: svc-{i}.bench.test, subset: v2}}}}]\n\
                 \x20 - match: [{{headers: {{end-user: {{exact: jason}}}}}}]\n    route: [{{destination: {{host: svc-{i}.bench.test, subset: v2}}}}]\n\
                 \x20 - match: [{{uri: {{regex: \"/items/{i}/[0-9]+\"}}}}]\n    timeout: 2s\n    route: [{{destination: {{host: svc-{i}.bench.test, subset: v1}}}}]\n\
                 \x20 - match: [{{queryParams: {{debug: {{exact: \"1\"}}}}}}]\n    fault: {{abort: {{httpStatus: 503, percentage: {{value: 10}}}}}}\n    route: [{{destination: {{host: svc-{i}.bench.test, subset: v1}}}}]\n\
                 \x20 - route:\n    - {{destination: {{host: svc-{i}.bench.test, subset: v1}}, weight: {weight}}}\n    - {{destination: {{host: svc-{i}.bench.test, subset: v2}}, weight: {}}}\n---\n",
                100 - weight
            ));
        }
        y
    }

    #[test]
    fn a_thousand_services_and_five_thousand_routes_compile() {
        let (_dir, _, topology) = crate::app::topology::planned_for_test(
            "services:\n  web:\n    ports: [{name: http, port: 80}]\n    workloads: [{command: [x]}]\n",
        );
        let mut d = Diagnostics::new();
        let t = std::time::Instant::now();
        let resources = crate::config::load::text(Arc::from("big.yaml"), &big_config(1000, 80), "default", &mut d);
        assert!(!d.has_errors(), "{}", d.render());
        let parsed = t.elapsed();
        let t = std::time::Instant::now();
        let c = compile(topology, Arc::new(resources), 2, OutboundMode::AllowAny);
        let compiled = t.elapsed();
        eprintln!("1000 services: parse+validate {parsed:?}, compile {compiled:?} (this build)");
        let snap = c.snapshot;
        assert_eq!(snap.registry.services.len(), 1001);
        let routes: usize = snap.mesh_routes.values().map(|t| t.routes.len()).sum();
        assert_eq!(routes, 1000 * 5 + 1, "5000 VirtualService routes and web's default route");
        assert_eq!(snap.clusters.len(), 1000 * 3 + 1);
        let si = snap.registry.find("svc-999.bench.test", "default").unwrap();
        let table = &snap.mesh_routes[&(si, 80)];
        let Action::Route(f) = &table.routes[4].action else { panic!("a forward route") };
        assert_eq!(f.destinations.iter().map(|d| d.weight).collect::<Vec<_>>(), [80, 20]);
        assert_eq!(f.destinations[1].cluster.endpoints.len(), 1, "subset v2 has one endpoint");
    }

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

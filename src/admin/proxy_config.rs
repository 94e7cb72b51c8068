//! `/proxy-config/{routes|clusters|endpoints|listeners}/{workload}`: what one sidecar (or
//! gateway) does with the running snapshot, like `istioctl proxy-config`: the routes it
//! uses (VirtualService, route index, matches, destinations with weights), the clusters it
//! may reach with their policies, their endpoints with health, and its listeners.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::model::cluster::Cluster;
use crate::model::routes::{Action, Route, RouteTable, TcpTable};
use crate::model::scope::Scope;
use crate::model::snapshot::MeshSnapshot;
use crate::model::topology::Instance;

/// A proxy of the mesh by name: a workload instance (or the first instance of a workload),
/// or a gateway.
enum Proxy<'a> {
    Sidecar(usize, &'a Arc<Instance>),
    Gateway(usize),
}

fn find<'a>(snap: &'a MeshSnapshot, name: &str) -> Option<Proxy<'a>> {
    let t = &snap.topology;
    if let Some((i, inst)) = t.instances.iter().enumerate().find(|(_, i)| i.name == name) {
        return Some(Proxy::Sidecar(i, inst));
    }
    if let Some((i, inst)) =
        t.instances.iter().enumerate().find(|(_, i)| &*i.workload == name || i.service_name == name)
    {
        return Some(Proxy::Sidecar(i, inst));
    }
    t.gateways.iter().position(|g| g.name == name).map(Proxy::Gateway)
}

pub fn names(snap: &MeshSnapshot) -> Vec<String> {
    let t = &snap.topology;
    t.instances.iter().map(|i| i.name.clone()).chain(t.gateways.iter().map(|g| g.name.clone())).collect()
}

fn percent(weight: u32, total: u32) -> f64 {
    if total == 0 { 0.0 } else { (f64::from(weight) * 10000.0 / f64::from(total)).round() / 100.0 }
}

fn route_json(service: &str, port: u16, r: &Route) -> Value {
    let mut v = json!({
        "service": service,
        "port": port,
        "route": &*r.name,
        "virtual_service": r.origin.virtual_service,
        "index": r.origin.index,
        "match": if r.matches.is_empty() { vec!["*".to_string()] } else { r.matches.iter().map(|m| m.describe()).collect() },
    });
    match &r.action {
        Action::Route(f) => {
            v["action"] = json!("route");
            v["destinations"] = f
                .destinations
                .iter()
                .map(|d| json!({"cluster": &*d.cluster.name, "weight": percent(d.weight, f.total_weight)}))
                .collect();
            v["timeout_ms"] = json!(f.timeout.map(|t| t.as_millis() as u64));
            v["retries"] = json!({"attempts": f.retry.attempts, "per_try_timeout_ms": f.retry.per_try_timeout.map(|t| t.as_millis() as u64)});
            if !f.mirrors.is_empty() {
                v["mirrors"] =
                    f.mirrors.iter().map(|m| json!({"cluster": &*m.cluster.name, "percent": m.percent})).collect();
            }
        }
        Action::Redirect(rd) => {
            v["action"] = json!("redirect");
            v["redirect"] = serde_json::to_value(rd).unwrap_or(Value::Null);
        }
        Action::DirectResponse { status, .. } => {
            v["action"] = json!("direct_response");
            v["status"] = json!(status);
        }
    }
    if let Some(f) = &r.fault {
        v["fault"] = serde_json::to_value(f).unwrap_or(Value::Null);
    }
    v
}

fn table_json(service: &str, port: u16, t: &RouteTable, out: &mut Vec<Value>) {
    for r in &t.routes {
        out.push(route_json(service, port, r));
    }
}

fn tcp_json(service: &str, port: u16, t: &TcpTable, out: &mut Vec<Value>) {
    for r in &t.routes {
        if r.origin.virtual_service.is_empty() {
            continue;
        }
        out.push(json!({
            "service": service,
            "port": port,
            "route": r.origin.name,
            "virtual_service": r.origin.virtual_service,
            "index": r.origin.index,
            "match": r.matches.iter().map(|m| serde_json::to_string(m).unwrap_or_default()).collect::<Vec<_>>(),
            "action": "tcp",
            "destinations": r.destinations.iter().map(|d| json!({"cluster": &*d.cluster.name, "weight": percent(d.weight, r.total_weight)})).collect::<Vec<_>>(),
        }));
    }
}

fn scope(snap: &MeshSnapshot, index: usize) -> Option<&Scope> {
    snap.scopes.get(index)
}

/// Registry services (index, host) a sidecar may reach.
fn visible<'a>(snap: &'a MeshSnapshot, index: usize, inst: &Instance) -> Vec<(usize, &'a str)> {
    snap.registry
        .services
        .iter()
        .enumerate()
        .filter(|(_, s)| scope(snap, index).map_or(s.visible_to(&inst.namespace), |sc| sc.sees(s, &inst.namespace)))
        .map(|(i, s)| (i, s.host.as_str()))
        .collect()
}

pub fn routes(snap: &MeshSnapshot, name: &str) -> Option<Value> {
    let mut out = Vec::new();
    match find(snap, name)? {
        Proxy::Sidecar(index, inst) => {
            for (si, host) in visible(snap, index, inst) {
                let Some(svc) = snap.registry.get(si) else { continue };
                for p in &svc.ports {
                    if let Some(t) = snap.mesh_routes.get(&(si, p.port)) {
                        table_json(host, p.port, t, &mut out);
                    }
                    if let Some(t) = snap.tcp_routes.get(&(si, p.port)) {
                        tcp_json(host, p.port, t, &mut out);
                    }
                }
            }
            let mode = scope(snap, index).map_or(snap.outbound_mode, |s| s.mode);
            let fallback = match mode {
                crate::config::mesh::OutboundMode::AllowAny => &snap.passthrough,
                crate::config::mesh::OutboundMode::RegistryOnly => &snap.blackhole,
            };
            table_json("*", 0, fallback, &mut out);
        }
        Proxy::Gateway(gi) => {
            let mut keys: Vec<_> = snap.gateway_routes.keys().filter(|(g, _)| *g == gi).collect();
            keys.sort();
            for k in keys {
                for vh in &snap.gateway_routes[k].virtual_hosts {
                    let domains = vh.domains.join(",");
                    table_json(&domains, k.1, &vh.table, &mut out);
                }
            }
        }
    }
    Some(Value::Array(out))
}

fn cluster_visible(c: &Cluster, allowed: &[(usize, &str)]) -> bool {
    c.service.is_some_and(|s| allowed.iter().any(|(i, _)| *i == s))
}

fn proxy_clusters<'a>(snap: &'a MeshSnapshot, name: &str) -> Option<Vec<&'a Arc<Cluster>>> {
    Some(match find(snap, name)? {
        Proxy::Sidecar(index, inst) => {
            let allowed = visible(snap, index, inst);
            snap.clusters.values().filter(|c| cluster_visible(c, &allowed)).collect()
        }
        Proxy::Gateway(gi) => {
            let mut out: Vec<&Arc<Cluster>> = Vec::new();
            for ((g, _), l) in &snap.gateway_routes {
                if *g != gi {
                    continue;
                }
                for vh in &l.virtual_hosts {
                    for r in &vh.table.routes {
                        if let Action::Route(f) = &r.action {
                            for d in &f.destinations {
                                if !out.iter().any(|c| c.name == d.cluster.name) {
                                    out.push(&d.cluster);
                                }
                            }
                        }
                    }
                }
            }
            out.sort_by_key(|a| a.name);
            out
        }
    })
}

pub fn clusters(snap: &MeshSnapshot, name: &str) -> Option<Value> {
    let list = proxy_clusters(snap, name)?;
    Some(Value::Array(
        list.iter()
            .map(|c| {
                let healthy = c.endpoints.iter().filter(|e| e.ready()).count();
                json!({
                    "name": &*c.name,
                    "host": c.key.host,
                    "port": c.key.port,
                    "subset": c.key.subset,
                    "protocol": c.protocol,
                    "lb": serde_json::to_value(&c.lb).unwrap_or(Value::Null),
                    "transport": c.transport,
                    "endpoints": c.endpoints.len(),
                    "healthy": healthy,
                    "destination_rule": c.rule,
                    "missing_subset": c.missing_subset,
                })
            })
            .collect(),
    ))
}

pub fn endpoints(snap: &MeshSnapshot, name: &str) -> Option<Value> {
    let list = proxy_clusters(snap, name)?;
    let mut out = Vec::new();
    for c in list {
        for e in &c.endpoints {
            out.push(json!({
                "endpoint": e.address.to_string(),
                "status": if e.ready() { "HEALTHY" } else { "UNHEALTHY" },
                "instance": &*e.name,
                "cluster": &*c.name,
                "active_requests": e.active.load(std::sync::atomic::Ordering::Relaxed),
            }));
        }
    }
    Some(Value::Array(out))
}

pub fn listeners(snap: &MeshSnapshot, name: &str) -> Option<Value> {
    let mut out = Vec::new();
    match find(snap, name)? {
        Proxy::Sidecar(_, inst) => {
            out.push(json!({"address": inst.outbound.to_string(), "kind": "outbound", "what": "HTTP proxy (HTTP_PROXY), CONNECT"}));
            for u in &inst.upstreams {
                for (port, addr) in &u.ports {
                    out.push(json!({"address": addr.to_string(), "kind": "outbound", "what": format!("{}:{port}", u.service_name)}));
                }
            }
            for p in &inst.ports {
                out.push(json!({"address": p.inbound.to_string(), "kind": "inbound", "what": format!("port {} -> app {}", p.port, p.app)}));
            }
        }
        Proxy::Gateway(gi) => {
            for (port, addr) in &snap.topology.gateways[gi].listeners {
                out.push(
                    json!({"address": addr.to_string(), "kind": "gateway", "what": format!("server port {port}")}),
                );
            }
        }
    }
    Some(Value::Array(out))
}

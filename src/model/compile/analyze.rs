//! The warnings Istio users wish they had (istioctl analyze style), each at the offending
//! field: routes to unknown hosts or undefined subsets, VirtualServices bound to missing
//! Gateways or delegating to missing VirtualServices, hosts routed by two VirtualServices,
//! faults that fault nothing.

use std::collections::HashMap;

use crate::config::diag::{Diagnostics, Pos};
use crate::config::istio::virtual_service::{Destination, VirtualServiceSpec};
use crate::config::istio::{Resource, Spec};
use crate::model::hosts;
use crate::model::registry::Registry;

use super::clusters::Clusters;
use super::http::qualify_gateway;

pub fn analyze(resources: &[Resource], registry: &Registry, clusters: &Clusters, mesh_ns: &str, out: &mut Diagnostics) {
    let gateways: Vec<String> = resources
        .iter()
        .filter(|r| matches!(r.spec, Spec::Gateway(_)))
        .map(|r| format!("{}/{}", r.metadata.namespace, r.metadata.name))
        .collect();
    let vs_names: Vec<(String, String)> = resources
        .iter()
        .filter(|r| matches!(r.spec, Spec::VirtualService(_)))
        .map(|r| (r.metadata.namespace.clone(), r.metadata.name.clone()))
        .collect();
    // (host, binding) → first VirtualService claiming it, for the mesh.
    let mut claimed: HashMap<String, String> = HashMap::new();
    for r in resources {
        let Spec::VirtualService(vs) = &r.spec else { continue };
        let ns = &r.metadata.namespace;
        let file = &r.origin.file;
        let mut warn =
            |pos: Pos, msg: String| out.warning(file, if pos == Pos::default() { r.origin.pos } else { pos }, msg);

        for g in &vs.gateways {
            let q = qualify_gateway(g, ns);
            if q != "mesh" && !gateways.contains(&q) {
                warn(
                    g.pos,
                    format!(
                        "gateway {q} is not defined (no Gateway resource): this binding routes nothing until one is applied"
                    ),
                );
            }
        }
        let for_mesh = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g.as_str() == "mesh");
        if for_mesh {
            for h in &vs.hosts {
                let q = hosts::qualify(h, ns);
                let me = format!("{ns}/{}", r.metadata.name);
                match claimed.get(&q) {
                    Some(first) if *first != me => warn(
                        h.pos,
                        format!(
                            "host {q} is also routed for the mesh by VirtualService {first}: sidecars use the first one only \
                             (Istio merges VirtualServices for a host on gateways, not in the mesh)"
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        claimed.insert(q, me);
                    }
                }
            }
        }
        check_http(vs, ns, registry, clusters, mesh_ns, &vs_names, &mut warn);
        for t in &vs.tcp {
            for d in &t.route {
                if let Some(dest) = &d.destination {
                    destination(dest, ns, registry, clusters, mesh_ns, &mut warn);
                }
            }
        }
        for t in &vs.tls {
            for d in &t.route {
                if let Some(dest) = &d.destination {
                    destination(dest, ns, registry, clusters, mesh_ns, &mut warn);
                }
            }
        }
    }
}

fn check_http(
    vs: &VirtualServiceSpec,
    ns: &str,
    registry: &Registry,
    clusters: &Clusters,
    mesh_ns: &str,
    vs_names: &[(String, String)],
    warn: &mut impl FnMut(Pos, String),
) {
    // (Routes after a catch-all are reported by validation, with Istio's wording.)
    for r in &vs.http {
        for d in &r.route {
            if let Some(dest) = &d.destination {
                destination(dest, ns, registry, clusters, mesh_ns, warn);
            }
        }
        if let Some(m) = &r.mirror {
            destination(m, ns, registry, clusters, mesh_ns, warn);
        }
        for m in &r.mirrors {
            if let Some(dest) = &m.destination {
                destination(dest, ns, registry, clusters, mesh_ns, warn);
            }
        }
        if let Some(d) = &r.delegate {
            let dns = d.namespace.clone().unwrap_or_else(|| ns.to_string());
            if !vs_names.iter().any(|(n, name)| *n == dns && *name == d.name) {
                warn(
                    d.pos,
                    format!("delegate VirtualService {dns}/{} is not defined: this route routes nothing", d.name),
                );
            }
        }
        if let Some(f) = &r.fault {
            if let Some(d) = &f.delay
                && d.percentage.is_none()
                && d.percent.is_none()
            {
                warn(
                    d.pos,
                    "fault delay without `percentage`: Istio delays no request (set percentage.value: 100 for all)"
                        .into(),
                );
            }
            if let Some(a) = &f.abort
                && a.percentage.is_none()
            {
                warn(
                    a.pos,
                    "fault abort without `percentage`: Istio aborts no request (set percentage.value: 100 for all)"
                        .into(),
                );
            }
        }
    }
}

fn destination(
    d: &Destination,
    ns: &str,
    registry: &Registry,
    clusters: &Clusters,
    mesh_ns: &str,
    warn: &mut impl FnMut(Pos, String),
) {
    let Some(si) = registry.find(&d.host, ns) else {
        let q = hosts::qualify(&d.host, ns);
        warn(
            d.host.pos,
            format!(
                "host {q} is neither a service of the mesh nor a ServiceEntry host: requests routed here get 503 (NC)"
            ),
        );
        return;
    };
    let Some(subset) = &d.subset else { return };
    let Some(svc) = registry.get(si) else { return };
    let defined = clusters
        .rule_for(&svc.host, mesh_ns, &svc.namespace)
        .is_some_and(|(_, dr)| dr.subsets.iter().any(|s| s.name.value == subset.value));
    if !defined {
        warn(
            subset.pos,
            format!(
                "subset {} of {} is not defined by any DestinationRule: requests routed here get 503 (NC) until one is applied",
                subset.value, svc.host
            ),
        );
    }
}

//! Sidecar scopes: what each workload instance may reach (Sidecar `egress.hosts`) and what
//! happens to hosts outside the registry (`outboundTrafficPolicy`, the mesh default unless the
//! Sidecar overrides it). Selection as Istio: the Sidecar whose `workloadSelector` matches the
//! workload in its namespace, else the namespace's Sidecar without selector, else the root
//! namespace's (`istio-system`).

use std::collections::BTreeMap;

use serde::Serialize;

use super::hosts;
use super::registry::RegService;
use super::topology::Topology;
use crate::config::istio::service_entry::{SidecarOutboundMode, SidecarSpec};
use crate::config::istio::validate::host_covers;
use crate::config::istio::{Resource, Spec};
use crate::config::mesh::OutboundMode;

pub const ROOT_NAMESPACE: &str = "istio-system";

#[derive(Clone, Debug, Serialize)]
pub struct Scope {
    /// `namespace/name` of the Sidecar resource that applies, if any.
    pub sidecar: Option<String>,
    pub mode: OutboundMode,
    /// (namespace pattern, host pattern) pairs; `None`: every service is visible.
    pub egress: Option<Vec<(String, String)>>,
}

impl Scope {
    pub fn mesh_default(mode: OutboundMode) -> Scope {
        Scope { sidecar: None, mode, egress: None }
    }

    /// Whether a registry service is visible to a workload of `namespace` under this scope.
    pub fn sees(&self, svc: &RegService, namespace: &str) -> bool {
        if !svc.visible_to(namespace) {
            return false;
        }
        let Some(egress) = &self.egress else { return true };
        egress.iter().any(|(ns, host)| {
            let ns_ok = match ns.as_str() {
                "*" => true,
                "~" => false,
                "." => svc.namespace == namespace,
                other => svc.namespace == other,
            };
            ns_ok && host_covers(host, &svc.host)
        })
    }
}

fn selects(sc: &SidecarSpec, labels: &BTreeMap<String, String>) -> Option<bool> {
    let sel = sc.workload_selector.as_ref()?;
    Some(sel.labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// The scope of every instance of `topology`, in instance order.
pub fn scopes(topology: &Topology, resources: &[Resource], mesh_mode: OutboundMode) -> Vec<Scope> {
    let sidecars: Vec<(&Resource, &SidecarSpec)> = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::Sidecar(s) => Some((r, s.as_ref())),
            _ => None,
        })
        .collect();
    topology
        .instances
        .iter()
        .map(|inst| {
            let ns = inst.namespace.as_str();
            let chosen = sidecars
                .iter()
                .find(|(r, s)| r.metadata.namespace == ns && selects(s, &inst.labels) == Some(true))
                .or_else(|| sidecars.iter().find(|(r, s)| r.metadata.namespace == ns && s.workload_selector.is_none()))
                .or_else(|| {
                    sidecars
                        .iter()
                        .find(|(r, s)| r.metadata.namespace == ROOT_NAMESPACE && s.workload_selector.is_none())
                });
            match chosen {
                None => Scope::mesh_default(mesh_mode),
                Some((r, s)) => scope_of(r, s, mesh_mode),
            }
        })
        .collect()
}

fn scope_of(r: &Resource, s: &SidecarSpec, mesh_mode: OutboundMode) -> Scope {
    let mode = match s.outbound_traffic_policy.as_ref().and_then(|p| p.mode) {
        Some(SidecarOutboundMode::RegistryOnly) => OutboundMode::RegistryOnly,
        Some(_) => OutboundMode::AllowAny,
        None => mesh_mode,
    };
    let own = &r.metadata.namespace;
    let egress = if s.egress.is_empty() {
        None
    } else {
        let mut pairs = Vec::new();
        for e in &s.egress {
            for h in &e.hosts {
                let (ns, host) = h.split_once('/').unwrap_or(("*", h.as_str()));
                let ns = if ns == "." { own.as_str() } else { ns };
                let host = if host == "*" || host.contains('.') || ns == "*" || ns == "~" {
                    hosts::normalize(host).into_owned()
                } else {
                    hosts::qualify(host, ns)
                };
                pairs.push((ns.to_string(), host));
            }
        }
        Some(pairs)
    };
    Scope { sidecar: Some(format!("{own}/{}", r.metadata.name)), mode, egress }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::registry::{RegKind, RegService};

    fn svc(host: &str, ns: &str) -> RegService {
        RegService {
            host: host.into(),
            name: crate::telemetry::Name::new(host),
            namespace: ns.into(),
            ports: vec![],
            export_to: vec![],
            kind: RegKind::Mesh(0),
        }
    }

    #[test]
    fn egress_hosts_restrict_by_namespace_and_host() {
        let s = Scope {
            sidecar: Some("default/s".into()),
            mode: OutboundMode::RegistryOnly,
            egress: Some(vec![
                ("default".into(), "*".into()),
                ("*".into(), "*.googleapis.com".into()),
                ("prod".into(), "ratings.prod.svc.cluster.local".into()),
            ]),
        };
        assert!(s.sees(&svc("reviews.default.svc.cluster.local", "default"), "default"));
        assert!(s.sees(&svc("www.googleapis.com", "other"), "default"));
        assert!(s.sees(&svc("ratings.prod.svc.cluster.local", "prod"), "default"));
        assert!(!s.sees(&svc("details.prod.svc.cluster.local", "prod"), "default"));
        assert!(!s.sees(&svc("example.com", "other"), "default"));
        assert!(Scope::mesh_default(OutboundMode::AllowAny).sees(&svc("x", "y"), "default"));
    }
}

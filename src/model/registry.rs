//! The service registry: the mesh file's services and the hosts ServiceEntries add, in one
//! index space. Mesh services keep their topology index (`0..mesh_count`); ServiceEntry hosts
//! follow, one registry service per host, as Istio turns each SE host into a service.

use std::collections::BTreeMap;

use serde::Serialize;

use super::hosts::{self, HostIndex};
use super::topology::Topology;
use crate::config::diag::Diagnostics;
use crate::config::istio::service_entry::{Location, Resolution, ServiceEntrySpec};
use crate::config::istio::{Resource, Spec};
use crate::config::mesh::Protocol;

#[derive(Debug, Serialize)]
pub struct Registry {
    pub services: Vec<RegService>,
    #[serde(skip)]
    pub hosts: HostIndex,
    pub mesh_count: usize,
}

#[derive(Debug, Serialize)]
pub struct RegService {
    /// `reviews.default.svc.cluster.local`, or the ServiceEntry host as written (`*.example.com`).
    pub host: String,
    /// The same, as request records carry it.
    #[serde(skip)]
    pub name: crate::telemetry::Name,
    pub namespace: String,
    pub ports: Vec<RegPort>,
    /// Namespaces the service is visible to (`exportTo`); empty: everywhere.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    pub kind: RegKind,
}

#[derive(Clone, Debug, Serialize)]
pub struct RegPort {
    pub port: u16,
    pub name: Option<String>,
    pub protocol: Protocol,
    /// Where endpoints listen when it differs from `port` (ServiceEntry `targetPort`).
    pub target_port: Option<u16>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RegKind {
    /// A service of the mesh file (index into `Topology::services`).
    Mesh(usize),
    External {
        /// `namespace/name` of the ServiceEntry.
        service_entry: String,
        resolution: Resolution,
        mesh_internal: bool,
        endpoints: Vec<ExternalEndpoint>,
    },
}

#[derive(Clone, Debug, Serialize)]
pub struct ExternalEndpoint {
    /// An IP (STATIC) or a DNS name (DNS).
    pub address: String,
    /// Port name → port.
    pub ports: BTreeMap<String, u16>,
    pub labels: BTreeMap<String, String>,
}

impl RegService {
    pub fn port(&self, port: u16) -> Option<&RegPort> {
        self.ports.iter().find(|p| p.port == port)
    }

    pub fn is_mesh(&self) -> bool {
        matches!(self.kind, RegKind::Mesh(_))
    }

    /// Whether a proxy in `namespace` may see this service.
    pub fn visible_to(&self, namespace: &str) -> bool {
        exported_to(&self.export_to, &self.namespace, namespace)
    }

    /// The port a request without one means: 80 if the service has it, else its first HTTP
    /// port, else its first port.
    pub fn default_port(&self, fallback: u16) -> Option<u16> {
        self.port(fallback)
            .or_else(|| self.ports.iter().find(|p| p.protocol.is_http()))
            .or(self.ports.first())
            .map(|p| p.port)
    }
}

/// Istio's `exportTo`: empty or `*` is everywhere, `.` the resource's own namespace, `~` nowhere,
/// anything else a namespace name.
pub fn exported_to(export_to: &[String], own: &str, viewer: &str) -> bool {
    if export_to.is_empty() {
        return true;
    }
    export_to.iter().any(|e| match e.as_str() {
        "*" => true,
        "." => own == viewer,
        "~" => false,
        ns => ns == viewer,
    })
}

impl Registry {
    /// The mesh services of `topology`, then every ServiceEntry host (in resource order); hosts
    /// already taken are reported and skipped.
    pub fn build(topology: &Topology, resources: &[Resource], warnings: &mut Diagnostics) -> Registry {
        let mut services: Vec<RegService> = topology
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| RegService {
                host: s.fqdn.clone(),
                name: crate::telemetry::Name::new(&s.fqdn),
                namespace: s.namespace.clone(),
                ports: s
                    .ports
                    .iter()
                    .map(|p| RegPort { port: p.port, name: p.name.clone(), protocol: p.protocol, target_port: None })
                    .collect(),
                export_to: Vec::new(),
                kind: RegKind::Mesh(i),
            })
            .collect();
        let mut hosts = HostIndex::new(&topology.services, &topology.namespace);
        let mesh_count = services.len();
        for r in resources {
            let Spec::ServiceEntry(se) = &r.spec else { continue };
            add_service_entry(r, se, &mut services, &mut hosts, warnings);
        }
        Registry { services, hosts, mesh_count }
    }

    pub fn get(&self, i: usize) -> Option<&RegService> {
        self.services.get(i)
    }

    /// The registry index of a host as written in a resource of `namespace` (short names are
    /// qualified there; the other Kubernetes forms resolve too).
    pub fn find(&self, host: &str, namespace: &str) -> Option<usize> {
        let q = hosts::qualify(host, namespace);
        self.hosts.by_fqdn(&q).or_else(|| self.hosts.resolve(host).map(|(i, _)| i))
    }
}

fn add_service_entry(
    r: &Resource,
    se: &ServiceEntrySpec,
    services: &mut Vec<RegService>,
    hosts: &mut HostIndex,
    warnings: &mut Diagnostics,
) {
    let ns = &r.metadata.namespace;
    let ports: Vec<RegPort> = se
        .ports
        .iter()
        .filter_map(|p| {
            let port = u16::try_from(p.number.as_ref()?.value).ok()?;
            let name = p.name.as_ref().map(|n| n.value.clone());
            let protocol = match p.protocol.as_ref() {
                Some(proto) => Protocol::parse(proto),
                None => Protocol::for_port(name.as_deref(), None),
            };
            let target_port = p.target_port.as_ref().and_then(|t| u16::try_from(t.value).ok());
            Some(RegPort { port, name, protocol, target_port })
        })
        .collect();
    let endpoints: Vec<ExternalEndpoint> = se
        .endpoints
        .iter()
        .filter_map(|e| {
            let address = e.address.as_ref()?.value.clone();
            if address.starts_with("unix://") {
                return None;
            }
            Some(ExternalEndpoint {
                address,
                ports: e.ports.iter().filter_map(|(k, v)| Some((k.clone(), u16::try_from(v.value).ok()?))).collect(),
                labels: e.labels.clone(),
            })
        })
        .collect();
    let resolution = se.resolution.as_ref().map(|r| r.value).unwrap_or_default();
    let export_to: Vec<String> = se.export_to.iter().map(|e| e.value.clone()).collect();
    let id = format!("{ns}/{}", r.metadata.name);
    for h in &se.hosts {
        let index = services.len();
        let host = hosts::normalize(h).into_owned();
        if !hosts.add_host(&host, index) {
            warnings.warning(
                &r.origin.file,
                h.pos,
                format!(
                    "ServiceEntry host {host} is already a service of the mesh or of another ServiceEntry: ignored"
                ),
            );
            continue;
        }
        for a in &se.addresses {
            if a.parse::<std::net::IpAddr>().is_ok() {
                hosts.add_host(a, index);
            }
        }
        services.push(RegService {
            name: crate::telemetry::Name::new(&host),
            host,
            namespace: ns.clone(),
            ports: ports.clone(),
            export_to: export_to.clone(),
            kind: RegKind::External {
                service_entry: id.clone(),
                resolution,
                mesh_internal: se.location == Some(Location::MeshInternal),
                endpoints: endpoints.clone(),
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_to_rules() {
        let v = |e: &[&str], own: &str, viewer: &str| {
            exported_to(&e.iter().map(|s| s.to_string()).collect::<Vec<_>>(), own, viewer)
        };
        assert!(v(&[], "a", "b"));
        assert!(v(&["*"], "a", "b"));
        assert!(v(&["."], "a", "a") && !v(&["."], "a", "b"));
        assert!(!v(&["~"], "a", "a"));
        assert!(v(&["b", "c"], "a", "b") && !v(&["c"], "a", "b"));
    }
}

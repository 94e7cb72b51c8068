//! `MeshSnapshot`: everything the data plane needs to route a request, compiled once from the
//! topology and the Istio resources, immutable, swapped atomically on every change.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;

use super::cluster::{Cluster, ClusterKey};
use super::registry::Registry;
use super::routes::{RouteTable, TcpTable};
use super::scope::Scope;
use super::topology::Topology;
use crate::config::istio::Resource;
use crate::config::mesh::OutboundMode;

/// The current snapshot, shared by every proxy; the reload path is its only writer.
pub type Shared = Arc<arc_swap::ArcSwap<MeshSnapshot>>;

#[derive(Debug, Serialize)]
pub struct MeshSnapshot {
    pub version: u64,
    pub outbound_mode: OutboundMode,
    #[serde(skip)]
    pub topology: Arc<Topology>,
    #[serde(skip)]
    pub resources: Arc<Vec<Resource>>,
    pub registry: Registry,
    /// The clusters sidecars use (gateways may see other DestinationRules).
    #[serde(serialize_with = "ser_clusters")]
    pub clusters: BTreeMap<ClusterKey, Arc<Cluster>>,
    /// Sidecar (mesh) HTTP routes per (registry service index, service port).
    #[serde(serialize_with = "ser_mesh_routes")]
    pub mesh_routes: HashMap<(usize, u16), Arc<RouteTable>>,
    /// Sidecar TCP/TLS routes per (registry service index, service port).
    #[serde(serialize_with = "ser_mesh_routes")]
    pub tcp_routes: HashMap<(usize, u16), Arc<TcpTable>>,
    /// Gateway routes per (gateway index, server port of the listener).
    #[serde(serialize_with = "ser_gateway_routes")]
    pub gateway_routes: HashMap<(usize, u16), Arc<GatewayListener>>,
    /// Per instance (topology order): what its sidecar may reach.
    pub scopes: Vec<Scope>,
    /// Hosts outside the registry under ALLOW_ANY (`PassthroughCluster`).
    pub passthrough: Arc<RouteTable>,
    /// Hosts outside the registry under REGISTRY_ONLY (502).
    pub blackhole: Arc<RouteTable>,
}

/// The virtual hosts of one gateway listener.
#[derive(Debug, Default, Serialize)]
pub struct GatewayListener {
    pub virtual_hosts: Vec<VirtualHost>,
}

#[derive(Debug, Serialize)]
pub struct VirtualHost {
    /// Host patterns: `bookinfo.com`, `*.example.com`, `*`.
    pub domains: Vec<String>,
    /// `namespace/name` of the Gateway resource whose server admitted these hosts.
    pub gateway: String,
    #[serde(flatten)]
    pub table: RouteTable,
}

impl GatewayListener {
    /// Envoy's virtual host selection: exact domain, then the longest `*.suffix`, then `*`.
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        let mut best: Option<(usize, &VirtualHost)> = None;
        for vh in &self.virtual_hosts {
            for d in &vh.domains {
                let score = if d == host {
                    usize::MAX
                } else if d == "*" {
                    0
                } else if let Some(suffix) = d.strip_prefix('*') {
                    if host.ends_with(suffix) && host.len() > suffix.len() {
                        suffix.len()
                    } else {
                        continue;
                    }
                } else {
                    continue;
                };
                if best.is_none_or(|(s, _)| score > s) {
                    best = Some((score, vh));
                }
            }
        }
        best.map(|(_, vh)| vh)
    }
}

fn ser_clusters<S: serde::Serializer>(c: &BTreeMap<ClusterKey, Arc<Cluster>>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(c.len()))?;
    for (k, v) in c {
        m.serialize_entry(&k.to_string(), v.as_ref())?;
    }
    m.end()
}

fn ser_mesh_routes<T: Serialize, S: serde::Serializer>(
    r: &HashMap<(usize, u16), Arc<T>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut keys: Vec<_> = r.keys().collect();
    keys.sort();
    let mut m = s.serialize_map(Some(r.len()))?;
    for k in keys {
        m.serialize_entry(&format!("service#{}:{}", k.0, k.1), r[k].as_ref())?;
    }
    m.end()
}

fn ser_gateway_routes<S: serde::Serializer>(
    r: &HashMap<(usize, u16), Arc<GatewayListener>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut keys: Vec<_> = r.keys().collect();
    keys.sort();
    let mut m = s.serialize_map(Some(r.len()))?;
    for k in keys {
        m.serialize_entry(&format!("gateway#{}:{}", k.0, k.1), r[k].as_ref())?;
    }
    m.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vh(domains: &[&str]) -> VirtualHost {
        VirtualHost {
            domains: domains.iter().map(|s| s.to_string()).collect(),
            gateway: String::new(),
            table: RouteTable::default(),
        }
    }

    #[test]
    fn virtual_host_selection_prefers_exact_then_longest_wildcard() {
        let l = GatewayListener {
            virtual_hosts: vec![
                vh(&["*"]),
                vh(&["*.example.com"]),
                vh(&["*.api.example.com"]),
                vh(&["www.example.com"]),
            ],
        };
        assert_eq!(l.virtual_host("www.example.com").unwrap().domains[0], "www.example.com");
        assert_eq!(l.virtual_host("v1.api.example.com").unwrap().domains[0], "*.api.example.com");
        assert_eq!(l.virtual_host("x.example.com").unwrap().domains[0], "*.example.com");
        assert_eq!(l.virtual_host("other.org").unwrap().domains[0], "*");
        let strict = GatewayListener { virtual_hosts: vec![vh(&["bookinfo.com"])] };
        assert!(strict.virtual_host("other.org").is_none());
    }
}

//! VirtualService `tcp[]` and `tls[]` routes: L4 matches (port, SNI, source) and weighted
//! destinations, for opaque TCP and TLS passthrough.

use std::sync::Arc;

use crate::config::istio::Resource;
use crate::config::istio::virtual_service::{
    L4MatchAttributes, RouteDestination, TlsMatchAttributes, VirtualServiceSpec,
};
use crate::model::cluster::Cluster;
use crate::model::hosts;
use crate::model::policy::HeaderOps;
use crate::model::registry::Registry;
use crate::model::routes::{L4Match, RouteOrigin, TcpRoute, WeightedCluster, normalize_weights};

use super::clusters::Clusters;
use super::http::qualify_gateway;

pub struct TcpCompiler<'a, 'b> {
    pub clusters: &'b mut Clusters<'a>,
    pub registry: &'a Registry,
    pub client_ns: &'b str,
}

impl TcpCompiler<'_, '_> {
    /// The `tls[]` routes then the `tcp[]` routes of a VirtualService for a port.
    pub fn routes(&mut self, res: &Resource, vs: &VirtualServiceSpec, port: u16) -> Vec<TcpRoute> {
        let ns = &res.metadata.namespace;
        let vs_name = format!("{ns}/{}", res.metadata.name);
        let mut out = Vec::new();
        for (index, t) in vs.tls.iter().enumerate() {
            let matches = t.matches.iter().map(|m| tls_match(m, ns)).collect();
            if let Some(r) = self.route(&vs_name, index, ns, matches, &t.route, port, true) {
                out.push(r);
            }
        }
        for (index, t) in vs.tcp.iter().enumerate() {
            let matches = t.matches.iter().map(|m| l4_match(m, ns)).collect();
            if let Some(r) = self.route(&vs_name, index, ns, matches, &t.route, port, false) {
                out.push(r);
            }
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn route(
        &mut self,
        vs_name: &str,
        index: usize,
        ns: &str,
        matches: Vec<L4Match>,
        route: &[RouteDestination],
        port: u16,
        tls: bool,
    ) -> Option<TcpRoute> {
        let mut destinations = Vec::new();
        for d in route {
            let Some(dest) = &d.destination else { continue };
            let cluster = self.cluster(
                &dest.host,
                dest.subset.as_ref().map(|s| s.as_str()),
                dest.port.as_ref().map(|p| p.number.value),
                ns,
                port,
            );
            let weight = match &d.weight {
                Some(w) => w.value.max(0) as u32,
                None if route.len() == 1 => 100,
                None => 0,
            };
            destinations.push(WeightedCluster { cluster, weight, headers: HeaderOps::default() });
        }
        let total_weight = normalize_weights(&mut destinations);
        if destinations.is_empty() {
            return None;
        }
        let origin = RouteOrigin {
            virtual_service: vs_name.to_string(),
            index,
            name: Some(format!("{}[{index}]", if tls { "tls" } else { "tcp" })),
        };
        Some(TcpRoute { origin, matches, destinations, total_weight })
    }

    fn cluster(
        &mut self,
        host: &str,
        subset: Option<&str>,
        port: Option<u32>,
        ns: &str,
        request_port: u16,
    ) -> Arc<Cluster> {
        let service = self.registry.find(host, ns);
        let svc = service.and_then(|i| self.registry.get(i));
        let fqdn = svc.map(|s| s.host.clone()).unwrap_or_else(|| hosts::qualify(host, ns));
        let port = port.and_then(|p| u16::try_from(p).ok()).unwrap_or_else(|| match svc {
            Some(s) if s.ports.len() == 1 => s.ports[0].port,
            _ => request_port,
        });
        self.clusters.get(self.client_ns, service, &fqdn, subset, port)
    }
}

fn l4_match(m: &L4MatchAttributes, ns: &str) -> L4Match {
    L4Match {
        port: m.port.as_ref().and_then(|p| u16::try_from(p.value).ok()),
        sni_hosts: Vec::new(),
        source_labels: m.source_labels.clone(),
        source_namespace: m.source_namespace.as_ref().map(|s| s.value.clone()),
        gateways: m.gateways.iter().map(|g| qualify_gateway(g, ns)).collect(),
    }
}

fn tls_match(m: &TlsMatchAttributes, ns: &str) -> L4Match {
    L4Match {
        port: m.port.as_ref().and_then(|p| u16::try_from(p.value).ok()),
        sni_hosts: m.sni_hosts.iter().map(|h| hosts::normalize(h).into_owned()).collect(),
        source_labels: m.source_labels.clone(),
        source_namespace: m.source_namespace.as_ref().map(|s| s.value.clone()),
        gateways: m.gateways.iter().map(|g| qualify_gateway(g, ns)).collect(),
    }
}

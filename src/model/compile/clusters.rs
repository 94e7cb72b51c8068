//! Clusters: a destination host, port and subset with its endpoints, load balancer and
//! transport, built once per distinct destination from the registry and the DestinationRule
//! that applies (looked up as Istio does: the client's namespace, then the service's, then
//! the root namespace; exact host before the longest wildcard).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::config::duration;
use crate::config::istio::destination_rule::{
    ClientTlsMode, ClientTlsSettings, DestinationRuleSpec, LoadBalancerSettings, SimpleLb, Subset, TrafficPolicy,
};
use crate::config::istio::service_entry::Resolution;
use crate::config::istio::validate::host_covers;
use crate::config::istio::{Resource, Spec};
use crate::config::mesh::Protocol;
use crate::model::cluster::{Address, Cluster, ClusterKey, Endpoint, Transport};
use crate::model::hosts;
use crate::model::lb::{HashKey, HashTable, Lb};
use crate::model::registry::{RegKind, Registry, exported_to};
use crate::model::scope::ROOT_NAMESPACE;
use crate::model::topology::Topology;

pub struct Clusters<'a> {
    topology: &'a Topology,
    registry: &'a Registry,
    rules: Vec<Rule<'a>>,
    /// Rules by exact host; rules with a wildcard host apart.
    exact: HashMap<String, Vec<usize>>,
    wildcard: Vec<usize>,
    /// Clusters built so far, by client namespace and host: a host has a few (port, subset)
    /// clusters, and most lookups find one, so a lookup allocates nothing.
    cache: HashMap<String, HashMap<String, Vec<Arc<Cluster>>>>,
}

struct Rule<'a> {
    resource: &'a Resource,
    spec: &'a DestinationRuleSpec,
    /// The host qualified in the rule's namespace.
    host: String,
    export_to: Vec<String>,
}

/// The DestinationRule settings that apply to one cluster, most specific first.
struct Policy<'a> {
    layers: Vec<&'a TrafficPolicy>,
    port: u16,
}

impl<'a> Policy<'a> {
    fn lb(&self) -> Option<&'a LoadBalancerSettings> {
        for l in &self.layers {
            if let Some(p) = l.port_level_settings.iter().find(|p| port_is(p.port.as_ref(), self.port))
                && let Some(lb) = &p.load_balancer
            {
                return Some(&lb.value);
            }
            if let Some(lb) = &l.load_balancer {
                return Some(&lb.value);
            }
        }
        None
    }

    fn tls(&self) -> Option<&'a ClientTlsSettings> {
        for l in &self.layers {
            if let Some(p) = l.port_level_settings.iter().find(|p| port_is(p.port.as_ref(), self.port))
                && let Some(t) = &p.tls
            {
                return Some(&t.value);
            }
            if let Some(t) = &l.tls {
                return Some(&t.value);
            }
        }
        None
    }
}

fn port_is(sel: Option<&crate::config::istio::virtual_service::PortSelector>, port: u16) -> bool {
    sel.is_some_and(|s| s.number.value == u32::from(port))
}

impl<'a> Clusters<'a> {
    pub fn new(topology: &'a Topology, registry: &'a Registry, resources: &'a [Resource]) -> Self {
        let rules: Vec<Rule> = resources
            .iter()
            .filter_map(|r| match &r.spec {
                Spec::DestinationRule(dr) => Some(Rule {
                    resource: r,
                    spec: dr,
                    host: hosts::qualify(&dr.host, &r.metadata.namespace),
                    export_to: dr.export_to.iter().map(|e| e.value.clone()).collect(),
                }),
                _ => None,
            })
            .collect();
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcard = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            if r.host.starts_with('*') {
                wildcard.push(i);
            } else {
                exact.entry(r.host.clone()).or_default().push(i);
            }
        }
        Clusters { topology, registry, rules, exact, wildcard, cache: HashMap::new() }
    }

    /// The DestinationRule for `host` (fully qualified) as seen from `client_ns`.
    pub fn rule_for(
        &self,
        host: &str,
        client_ns: &str,
        service_ns: &str,
    ) -> Option<(&'a Resource, &'a DestinationRuleSpec)> {
        let mut order = vec![client_ns];
        if service_ns != client_ns {
            order.push(service_ns);
        }
        if !order.contains(&ROOT_NAMESPACE) {
            order.push(ROOT_NAMESPACE);
        }
        let applies =
            |r: &Rule, ns: &str| r.resource.metadata.namespace == ns && exported_to(&r.export_to, ns, client_ns);
        for ns in order {
            // Exact first, then the longest wildcard.
            let exact = self.exact.get(host).into_iter().flatten().map(|i| &self.rules[*i]).find(|r| applies(r, ns));
            let best = exact.or_else(|| {
                self.wildcard
                    .iter()
                    .map(|i| &self.rules[*i])
                    .filter(|r| applies(r, ns) && host_covers(&r.host, host))
                    .max_by_key(|r| r.host.len())
            });
            if let Some(r) = best {
                return Some((r.resource, r.spec));
            }
        }
        None
    }

    /// Every cluster built so far for `client_ns`.
    pub fn built(&self, client_ns: &str) -> BTreeMap<ClusterKey, Arc<Cluster>> {
        self.cache
            .get(client_ns)
            .into_iter()
            .flat_map(|h| h.values().flatten())
            .map(|c| (c.key.clone(), c.clone()))
            .collect()
    }

    /// The cluster for a destination; `service` is its registry index when the host is known.
    pub fn get(
        &mut self,
        client_ns: &str,
        service: Option<usize>,
        host: &str,
        subset: Option<&str>,
        port: u16,
    ) -> Arc<Cluster> {
        let cached = self.cache.get(client_ns).and_then(|h| h.get(host));
        if let Some(c) = cached.into_iter().flatten().find(|c| c.key.port == port && c.key.subset.as_deref() == subset)
        {
            return c.clone();
        }
        let key = ClusterKey { host: host.to_string(), subset: subset.map(str::to_string), port };
        let cluster = Arc::new(self.build(client_ns, service, key));
        let by_host = match self.cache.get_mut(client_ns) {
            Some(h) => h,
            None => self.cache.entry(client_ns.to_string()).or_default(),
        };
        match by_host.get_mut(host) {
            Some(v) => v.push(cluster.clone()),
            None => {
                by_host.insert(host.to_string(), vec![cluster.clone()]);
            }
        }
        cluster
    }

    fn build(&self, client_ns: &str, service: Option<usize>, key: ClusterKey) -> Cluster {
        let svc = service.and_then(|i| self.registry.get(i));
        let port = key.port;
        let reg_port = svc.and_then(|s| s.port(port));
        let protocol = reg_port.map(|p| p.protocol).unwrap_or(Protocol::Unknown);
        let Some(svc) = svc else {
            return Cluster::new(key, None, protocol, Vec::new(), Lb::RoundRobin, Transport::IstioMutual);
        };
        let found = self.rule_for(&svc.host, client_ns, &svc.namespace);
        let rule = found.map(|(_, dr)| dr);
        let rule_name = found.map(|(r, _)| format!("{}/{}", r.metadata.namespace, r.metadata.name));
        let subset: Option<&Subset> = match (&key.subset, rule) {
            (None, _) => None,
            (Some(name), Some(dr)) => match dr.subsets.iter().find(|s| s.name.value == *name) {
                Some(s) => Some(s),
                None => {
                    return Cluster::new(key, service, protocol, Vec::new(), Lb::RoundRobin, Transport::IstioMutual)
                        .with_missing_subset();
                }
            },
            (Some(_), None) => {
                return Cluster::new(key, service, protocol, Vec::new(), Lb::RoundRobin, Transport::IstioMutual)
                    .with_missing_subset();
            }
        };
        let mut layers = Vec::new();
        if let Some(tp) = subset.and_then(|s| s.traffic_policy.as_ref()) {
            layers.push(tp);
        }
        if let Some(tp) = rule.and_then(|r| r.traffic_policy.as_ref()) {
            layers.push(tp);
        }
        let policy = Policy { layers, port };
        let labels = subset.map(|s| &s.labels);
        let has_labels =
            |l: &BTreeMap<String, String>| labels.is_none_or(|want| want.iter().all(|(k, v)| l.get(k) == Some(v)));

        let (endpoints, transport) = match &svc.kind {
            RegKind::Mesh(si) => {
                let eps: Vec<Endpoint> = self
                    .topology
                    .instances
                    .iter()
                    .filter(|i| i.service == *si && has_labels(&i.labels))
                    .filter_map(|i| {
                        i.ports.iter().find(|p| p.port == port).map(|p| Endpoint::mesh(i.clone(), p.inbound))
                    })
                    .collect();
                let transport = match policy.tls().and_then(|t| t.mode) {
                    Some(ClientTlsMode::Disable) => Transport::Plaintext,
                    _ => Transport::IstioMutual,
                };
                (eps, transport)
            }
            RegKind::External { resolution, endpoints, .. } => {
                let target = reg_port.and_then(|p| p.target_port).unwrap_or(port);
                let port_name = reg_port.and_then(|p| p.name.as_deref());
                let eps = external_endpoints(&svc.host, *resolution, endpoints, port_name, target, &has_labels);
                (eps, Transport::Plaintext)
            }
        };
        let names: Vec<&str> = endpoints.iter().map(|e| e.name.as_ref()).collect();
        let lb = load_balancer(policy.lb(), &names);
        Cluster::new(key, service, protocol, endpoints, lb, transport).with_rule(rule_name)
    }
}

fn external_endpoints(
    host: &str,
    resolution: Resolution,
    endpoints: &[crate::model::registry::ExternalEndpoint],
    port_name: Option<&str>,
    target: u16,
    has_labels: &dyn Fn(&BTreeMap<String, String>) -> bool,
) -> Vec<Endpoint> {
    let port_of = |e: &crate::model::registry::ExternalEndpoint| {
        port_name.and_then(|n| e.ports.get(n).copied()).unwrap_or(target)
    };
    match resolution {
        Resolution::None => vec![Endpoint::external("original-destination".into(), Address::OriginalDestination)],
        Resolution::Static => endpoints
            .iter()
            .filter(|e| has_labels(&e.labels))
            .filter_map(|e| {
                let ip: IpAddr = e.address.parse().ok()?;
                let addr = SocketAddr::new(ip, port_of(e));
                Some(Endpoint::external(addr.to_string(), Address::Socket(addr)))
            })
            .collect(),
        Resolution::Dns | Resolution::DnsRoundRobin | Resolution::DynamicDns => {
            if endpoints.is_empty() {
                let name = format!("{host}:{target}");
                return vec![Endpoint::external(name, Address::Dns(Arc::from(host), target))];
            }
            endpoints
                .iter()
                .filter(|e| has_labels(&e.labels))
                .map(|e| {
                    let p = port_of(e);
                    match e.address.parse::<IpAddr>() {
                        Ok(ip) => {
                            let a = SocketAddr::new(ip, p);
                            Endpoint::external(a.to_string(), Address::Socket(a))
                        }
                        Err(_) => Endpoint::external(
                            format!("{}:{p}", e.address),
                            Address::Dns(Arc::from(e.address.as_str()), p),
                        ),
                    }
                })
                .collect()
        }
    }
}

/// `loadBalancer` as a balancer over endpoints named `names` (names keep hashing stable).
pub fn load_balancer(settings: Option<&LoadBalancerSettings>, names: &[&str]) -> Lb {
    let Some(s) = settings else { return Lb::RoundRobin };
    if let Some(ch) = &s.consistent_hash {
        let key = if let Some(h) = ch
            .http_header_name
            .as_ref()
            .and_then(|h| http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok())
        {
            Some(HashKey::Header(h))
        } else if let Some(c) = &ch.http_cookie {
            let ttl = c.ttl.as_ref().and_then(|t| duration::parse_go(t).ok());
            Some(HashKey::Cookie { name: c.name.clone(), path: c.path.clone(), ttl })
        } else if ch.use_source_ip == Some(true) {
            Some(HashKey::SourceIp)
        } else {
            ch.http_query_parameter_name.as_ref().map(|q| HashKey::QueryParameter(q.clone()))
        };
        if let Some(key) = key {
            let table = match &ch.maglev {
                Some(m) => {
                    HashTable::maglev(names, m.table_size.filter(|s| *s > 0).unwrap_or(65537).min(5_000_011) as usize)
                }
                None => {
                    let min = ch
                        .ring_hash
                        .as_ref()
                        .and_then(|r| r.minimum_ring_size)
                        .or(ch.minimum_ring_size.as_ref().map(|m| m.value));
                    HashTable::ring(names, min.filter(|m| *m > 0).unwrap_or(1024).min(1 << 20) as usize)
                }
            };
            return Lb::ConsistentHash { key, table };
        }
    }
    match s.simple {
        Some(SimpleLb::LeastRequest | SimpleLb::LeastConn) => Lb::LeastRequest,
        Some(SimpleLb::Random) => Lb::Random,
        Some(SimpleLb::Passthrough) => Lb::Passthrough,
        _ => Lb::RoundRobin,
    }
}

//! Destinations (Envoy's clusters): a host, port and optional subset, its endpoints (mesh
//! instances or external addresses), the load balancer that picks one ready endpoint per
//! attempt, and how to reach them (mTLS, plaintext, TLS origination).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use http::HeaderMap;
use serde::Serialize;

use super::lb::{HashKey, Lb, fnv1a};
use super::topology::Instance;
use crate::config::mesh::Protocol;
use crate::telemetry::Name;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ClusterKey {
    /// Fully qualified host.
    pub host: String,
    pub subset: Option<String>,
    pub port: u16,
}

impl fmt::Display for ClusterKey {
    /// Envoy's cluster name: `outbound|9080|v1|reviews.default.svc.cluster.local`; special
    /// clusters (port 0) by their name alone (`PassthroughCluster`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port == 0 {
            return f.write_str(&self.host);
        }
        write!(f, "outbound|{}|{}|{}", self.port, self.subset.as_deref().unwrap_or(""), self.host)
    }
}

/// Where an endpoint is.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Address {
    Socket(SocketAddr),
    /// A DNS name, resolved when connecting (ServiceEntry `resolution: DNS`).
    Dns(Arc<str>, u16),
    /// The address the client asked for (ServiceEntry `resolution: NONE`).
    OriginalDestination,
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Socket(a) => write!(f, "{a}"),
            Address::Dns(h, p) => write!(f, "{h}:{p}"),
            Address::OriginalDestination => f.write_str("original-destination"),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Endpoint {
    /// The instance name, or `host:port` for endpoints outside the mesh.
    pub name: Arc<str>,
    #[serde(skip)]
    pub instance: Option<Arc<Instance>>,
    pub address: Address,
    /// Requests in flight (LEAST_REQUEST).
    #[serde(skip)]
    pub active: AtomicU32,
}

impl Endpoint {
    pub fn mesh(instance: Arc<Instance>, addr: SocketAddr) -> Endpoint {
        Endpoint {
            name: Arc::from(instance.name.as_str()),
            instance: Some(instance),
            address: Address::Socket(addr),
            active: AtomicU32::new(0),
        }
    }

    pub fn external(name: String, address: Address) -> Endpoint {
        Endpoint { name: Arc::from(name), instance: None, address, active: AtomicU32::new(0) }
    }

    /// Mesh endpoints follow their instance's readiness; external ones are always candidates.
    pub fn ready(&self) -> bool {
        self.instance.as_ref().is_none_or(|i| i.status.is_ready())
    }
}

/// How the sidecar reaches a cluster's endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// Istio mutual TLS with the endpoint's workload identity (the default inside the mesh).
    IstioMutual,
    Plaintext,
}

#[derive(Debug, Serialize)]
pub struct Cluster {
    pub key: ClusterKey,
    /// `outbound|9080|v1|reviews.default.svc.cluster.local`, and the host and subset, shared
    /// by every request's record instead of formatted per request.
    #[serde(skip)]
    pub name: Name,
    #[serde(skip)]
    pub host: Name,
    #[serde(skip)]
    pub subset: Option<Name>,
    /// Index of the service in the registry, when the host is known.
    pub service: Option<usize>,
    pub protocol: Protocol,
    /// A route names a subset no DestinationRule defines: Envoy has no such cluster.
    pub missing_subset: bool,
    pub endpoints: Vec<Endpoint>,
    pub lb: Lb,
    pub transport: Transport,
    /// `namespace/name` of the DestinationRule that shaped it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip)]
    next: AtomicUsize,
}

/// What a consistent hash needs from the request.
pub enum HashInput {
    None,
    Hash(u64),
    /// The cookie is missing and has a TTL: the proxy makes one up and sets it.
    SetCookie {
        name: String,
        path: Option<String>,
        ttl: std::time::Duration,
    },
}

impl Cluster {
    pub fn new(
        key: ClusterKey,
        service: Option<usize>,
        protocol: Protocol,
        endpoints: Vec<Endpoint>,
        lb: Lb,
        transport: Transport,
    ) -> Self {
        Cluster {
            name: Name::new(&key.to_string()),
            host: Name::new(&key.host),
            subset: key.subset.as_deref().map(Name::new),
            key,
            service,
            protocol,
            missing_subset: false,
            endpoints,
            lb,
            transport,
            rule: None,
            next: AtomicUsize::new(0),
        }
    }

    pub fn with_rule(mut self, rule: Option<String>) -> Self {
        self.rule = rule;
        self
    }

    pub fn with_missing_subset(mut self) -> Self {
        self.missing_subset = true;
        self
    }

    /// The hash key of a request under consistent hashing.
    pub fn hash_input(&self, headers: &HeaderMap, query: Option<&str>, source: &str) -> HashInput {
        let Lb::ConsistentHash { key, .. } = &self.lb else { return HashInput::None };
        match key {
            HashKey::Header(name) => match headers.get(name) {
                Some(v) => HashInput::Hash(fnv1a(v.as_bytes())),
                None => HashInput::None,
            },
            HashKey::Cookie { name, path, ttl } => {
                let cookie = headers
                    .get_all(http::header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .find_map(|c| c.trim().strip_prefix(name.as_str()).and_then(|r| r.strip_prefix('=')));
                match (cookie, ttl) {
                    (Some(v), _) => HashInput::Hash(fnv1a(v.as_bytes())),
                    (None, Some(ttl)) => HashInput::SetCookie { name: name.clone(), path: path.clone(), ttl: *ttl },
                    (None, None) => HashInput::None,
                }
            }
            HashKey::SourceIp => HashInput::Hash(fnv1a(source.as_bytes())),
            HashKey::QueryParameter(p) => {
                let v = query.and_then(|q| {
                    q.split('&').find_map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        (k == p).then_some(v)
                    })
                });
                v.map_or(HashInput::None, |v| HashInput::Hash(fnv1a(v.as_bytes())))
            }
        }
    }

    fn candidate(&self, i: usize, exclude: &[usize]) -> bool {
        self.endpoints.get(i).is_some_and(Endpoint::ready) && !exclude.contains(&i)
    }

    /// Picks a ready endpoint, avoiding `exclude` (hosts tried by earlier attempts) when another
    /// ready one exists.
    pub fn pick(&self, hash: Option<u64>, exclude: &[usize]) -> Option<usize> {
        self.pick_from(hash, exclude).or_else(|| if exclude.is_empty() { None } else { self.pick_from(hash, &[]) })
    }

    fn pick_from(&self, hash: Option<u64>, exclude: &[usize]) -> Option<usize> {
        let count = (0..self.endpoints.len()).filter(|i| self.candidate(*i, exclude)).count();
        if count == 0 {
            return None;
        }
        let nth = |k: usize| (0..self.endpoints.len()).filter(|i| self.candidate(*i, exclude)).nth(k);
        match &self.lb {
            Lb::RoundRobin => nth(self.next.fetch_add(1, Ordering::Relaxed) % count),
            Lb::Random | Lb::Passthrough => nth(fastrand::usize(..count)),
            Lb::LeastRequest => {
                // Envoy's power of two choices.
                let a = nth(fastrand::usize(..count))?;
                let b = nth(fastrand::usize(..count))?;
                let load = |i: usize| self.endpoints[i].active.load(Ordering::Relaxed);
                Some(if load(b) < load(a) { b } else { a })
            }
            Lb::ConsistentHash { table, .. } => match hash {
                Some(h) => table.lookup(h).map(|i| i as usize).find(|i| self.candidate(*i, exclude)),
                None => nth(fastrand::usize(..count)),
            },
        }
    }
}

/// Counts a request against an endpoint until dropped (LEAST_REQUEST).
pub struct Active {
    cluster: Arc<Cluster>,
    index: usize,
}

impl Active {
    pub fn start(cluster: &Arc<Cluster>, index: usize) -> Active {
        if let Some(e) = cluster.endpoints.get(index) {
            e.active.fetch_add(1, Ordering::Relaxed);
        }
        Active { cluster: cluster.clone(), index }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Some(e) = self.cluster.endpoints.get(self.index) {
            e.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::mesh::{Readiness, RestartPolicy, WorkloadDef};
    use crate::model::lb::HashTable;
    use crate::model::topology::InstanceStatus;
    use std::collections::BTreeMap;

    pub fn instance(name: &str, labels: &[(&str, &str)], ready: bool) -> Arc<Instance> {
        let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let i = Instance {
            name: name.into(),
            workload: Name::new(name),
            service: 0,
            service_name: "svc".into(),
            namespace: "default".into(),
            labels: labels.clone(),
            service_account: "svc".into(),
            identity: Arc::from("spiffe://cluster.local/ns/default/sa/svc"),
            ports: vec![],
            outbound: "127.0.0.1:1".parse().unwrap(),
            upstreams: vec![],
            def: WorkloadDef {
                name: name.into(),
                labels,
                command: vec![],
                env: vec![],
                replicas: 1,
                readiness: Readiness::Tcp,
                restart: RestartPolicy::Never,
            },
            status: InstanceStatus::default(),
        };
        i.status.ready.store(ready, Ordering::Release);
        Arc::new(i)
    }

    fn cluster(ready: &[bool], lb: Lb) -> Cluster {
        let eps = ready
            .iter()
            .enumerate()
            .map(|(n, r)| Endpoint::mesh(instance(&format!("i{n}"), &[], *r), ([127, 0, 0, 1], 1000 + n as u16).into()))
            .collect();
        Cluster::new(
            ClusterKey { host: "svc".into(), subset: None, port: 80 },
            Some(0),
            Protocol::Http,
            eps,
            lb,
            Transport::IstioMutual,
        )
    }

    fn name(c: &Cluster, i: Option<usize>) -> String {
        c.endpoints[i.unwrap()].name.to_string()
    }

    #[test]
    fn round_robin_cycles_through_ready_endpoints_evenly() {
        let c = cluster(&[true, false, true, true], Lb::RoundRobin);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..300 {
            *counts.entry(name(&c, c.pick(None, &[]))).or_insert(0) += 1;
        }
        assert_eq!(counts.get("i1"), None, "an unready endpoint gets no traffic");
        assert_eq!((counts["i0"], counts["i2"], counts["i3"]), (100, 100, 100));
        let order: Vec<String> = (0..3).map(|_| name(&c, c.pick(None, &[]))).collect();
        assert_eq!(order, ["i0", "i2", "i3"]);
    }

    #[test]
    fn no_ready_endpoint_means_none_and_excluded_hosts_are_avoided() {
        assert!(cluster(&[false, false], Lb::RoundRobin).pick(None, &[]).is_none());
        assert!(cluster(&[], Lb::Random).pick(None, &[]).is_none());
        let c = cluster(&[true, true], Lb::Random);
        for _ in 0..50 {
            assert_eq!(c.pick(None, &[0]), Some(1), "a retry avoids the host it tried");
        }
        let one = cluster(&[true], Lb::RoundRobin);
        assert_eq!(one.pick(None, &[0]), Some(0), "the only host is retried when nothing else is ready");
        let key =
            ClusterKey { host: "reviews.default.svc.cluster.local".into(), subset: Some("v1".into()), port: 9080 };
        assert_eq!(key.to_string(), "outbound|9080|v1|reviews.default.svc.cluster.local");
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let c = Arc::new(cluster(&[true, true], Lb::LeastRequest));
        let _busy: Vec<Active> = (0..5).map(|_| Active::start(&c, 0)).collect();
        let picks: Vec<usize> = (0..100).filter_map(|_| c.pick(None, &[])).collect();
        assert!(picks.iter().filter(|i| **i == 1).count() > 60, "power of two choices avoids the loaded host");
        drop(_busy);
        assert_eq!(c.endpoints[0].active.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn consistent_hash_keeps_a_key_on_one_endpoint_and_skips_unready() {
        let names = ["i0", "i1", "i2"];
        let lb = Lb::ConsistentHash {
            key: HashKey::Header(http::HeaderName::from_static("end-user")),
            table: HashTable::maglev(&names, 65537),
        };
        let c = cluster(&[true, true, true], lb);
        let mut h = HeaderMap::new();
        h.insert("end-user", "jason".parse().unwrap());
        let HashInput::Hash(hash) = c.hash_input(&h, None, "") else { panic!("a header key hashes") };
        let first = c.pick(Some(hash), &[]);
        assert!((0..20).all(|_| c.pick(Some(hash), &[]) == first));
        c.endpoints[first.unwrap()].instance.as_ref().unwrap().status.ready.store(false, Ordering::Release);
        let moved = c.pick(Some(hash), &[]);
        assert!(moved.is_some() && moved != first);
    }

    #[test]
    fn hash_inputs() {
        let cookie = Lb::ConsistentHash {
            key: HashKey::Cookie { name: "user".into(), path: None, ttl: Some(std::time::Duration::from_secs(60)) },
            table: HashTable::ring(&["a"], 8),
        };
        let c = cluster(&[true], cookie);
        let mut h = HeaderMap::new();
        assert!(matches!(c.hash_input(&h, None, ""), HashInput::SetCookie { .. }));
        h.insert("cookie", "a=1; user=abc".parse().unwrap());
        assert!(matches!(c.hash_input(&h, None, ""), HashInput::Hash(_)));
        let q = cluster(
            &[true],
            Lb::ConsistentHash { key: HashKey::QueryParameter("u".into()), table: HashTable::ring(&["a"], 8) },
        );
        assert!(matches!(q.hash_input(&HeaderMap::new(), Some("u=1&v=2"), ""), HashInput::Hash(_)));
        assert!(matches!(q.hash_input(&HeaderMap::new(), Some("v=2"), ""), HashInput::None));
    }
}

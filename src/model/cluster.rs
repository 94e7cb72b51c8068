//! Destinations (Envoy's clusters): a service port, optionally a subset, and its endpoints,
//! with the load balancer that picks one ready endpoint per attempt.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

use super::topology::Instance;
use crate::config::mesh::Protocol;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ClusterKey {
    /// Fully qualified host.
    pub host: String,
    pub subset: Option<String>,
    pub port: u16,
}

impl fmt::Display for ClusterKey {
    /// Envoy's cluster name: `outbound|9080|v1|reviews.default.svc.cluster.local`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "outbound|{}|{}|{}", self.port, self.subset.as_deref().unwrap_or(""), self.host)
    }
}

/// One instance's inbound sidecar for one service port.
#[derive(Debug, Serialize)]
pub struct Endpoint {
    #[serde(serialize_with = "ser_instance")]
    pub instance: Arc<Instance>,
    pub addr: SocketAddr,
}

fn ser_instance<S: serde::Serializer>(i: &Arc<Instance>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&i.name)
}

impl Endpoint {
    pub fn ready(&self) -> bool {
        self.instance.status.is_ready()
    }
}

#[derive(Debug, Serialize)]
pub struct Cluster {
    pub key: ClusterKey,
    /// `outbound|9080|v1|reviews.default.svc.cluster.local`, and the host and subset, shared
    /// by every request's record instead of formatted per request.
    #[serde(skip)]
    pub name: Arc<str>,
    #[serde(skip)]
    pub host: Arc<str>,
    #[serde(skip)]
    pub subset: Option<Arc<str>>,
    /// The mesh service, when the host is one.
    pub service: Option<usize>,
    pub protocol: Protocol,
    pub endpoints: Vec<Endpoint>,
    #[serde(skip)]
    next: AtomicUsize,
}

impl Cluster {
    pub fn new(key: ClusterKey, service: Option<usize>, protocol: Protocol, endpoints: Vec<Endpoint>) -> Self {
        Cluster {
            name: Arc::from(key.to_string()),
            host: Arc::from(key.host.as_str()),
            subset: key.subset.as_deref().map(Arc::from),
            key,
            service,
            protocol,
            endpoints,
            next: AtomicUsize::new(0),
        }
    }

    /// Round robin over the ready endpoints (Envoy's ROUND_ROBIN over healthy hosts): each
    /// ready endpoint gets its turn even when others are not ready.
    pub fn pick(&self) -> Option<&Endpoint> {
        let ready = self.endpoints.iter().filter(|e| e.ready()).count();
        if ready == 0 {
            return None;
        }
        let k = self.next.fetch_add(1, Ordering::Relaxed) % ready;
        self.endpoints.iter().filter(|e| e.ready()).nth(k)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::mesh::{Readiness, RestartPolicy, WorkloadDef};
    use crate::model::topology::InstanceStatus;
    use std::collections::BTreeMap;

    pub fn instance(name: &str, labels: &[(&str, &str)], ready: bool) -> Arc<Instance> {
        let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let i = Instance {
            name: name.into(),
            workload: std::sync::Arc::from(name),
            service: 0,
            service_name: "svc".into(),
            namespace: "default".into(),
            labels: labels.clone(),
            service_account: "svc".into(),
            identity: std::sync::Arc::from("spiffe://cluster.local/ns/default/sa/svc"),
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

    fn cluster(ready: &[bool]) -> Cluster {
        let eps = ready
            .iter()
            .enumerate()
            .map(|(n, r)| Endpoint {
                instance: instance(&format!("i{n}"), &[], *r),
                addr: ([127, 0, 0, 1], 1000 + n as u16).into(),
            })
            .collect();
        Cluster::new(ClusterKey { host: "svc".into(), subset: None, port: 80 }, Some(0), Protocol::Http, eps)
    }

    #[test]
    fn round_robin_cycles_through_ready_endpoints_evenly() {
        let c = cluster(&[true, false, true, true]);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..300 {
            *counts.entry(c.pick().unwrap().instance.name.clone()).or_insert(0) += 1;
        }
        assert_eq!(counts.get("i1"), None, "an unready endpoint gets no traffic");
        assert_eq!((counts["i0"], counts["i2"], counts["i3"]), (100, 100, 100));
        let order: Vec<String> = (0..3).map(|_| c.pick().unwrap().instance.name.clone()).collect();
        assert_eq!(order, ["i0", "i2", "i3"]);
    }

    #[test]
    fn no_ready_endpoint_means_none() {
        assert!(cluster(&[false, false]).pick().is_none());
        assert!(cluster(&[]).pick().is_none());
        let key =
            ClusterKey { host: "reviews.default.svc.cluster.local".into(), subset: Some("v1".into()), port: 9080 };
        assert_eq!(key.to_string(), "outbound|9080|v1|reviews.default.svc.cluster.local");
    }
}

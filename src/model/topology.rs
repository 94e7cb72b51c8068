//! Topology: the services, workload instances and gateways of a running mesh, with the
//! loopback addresses their sidecars listen on. Fixed for the life of a run; only the
//! runtime status of instances (readiness, pid, restarts) changes.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use serde::Serialize;

use crate::config::mesh::{PortDef, Protocol, WorkloadDef};

pub const CLUSTER_DOMAIN: &str = "svc.cluster.local";

#[derive(Debug, Serialize)]
pub struct Topology {
    pub namespace: String,
    pub services: Vec<Service>,
    pub instances: Vec<std::sync::Arc<Instance>>,
    pub gateways: Vec<std::sync::Arc<GatewayInstance>>,
}

#[derive(Debug, Serialize)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    /// `reviews.default.svc.cluster.local`
    pub fqdn: String,
    pub ports: Vec<PortDef>,
    pub service_account: String,
}

impl Service {
    pub fn port(&self, port: u16) -> Option<&PortDef> {
        self.ports.iter().find(|p| p.port == port)
    }
}

#[derive(Debug, Serialize)]
pub struct Instance {
    /// `reviews-v1`, or `reviews-v1-2` for the second replica.
    pub name: String,
    /// The workload (deployment) this is an instance of: `reviews-v1`.
    pub workload: crate::telemetry::Name,
    /// Index into `Topology::services`.
    pub service: usize,
    pub service_name: String,
    pub namespace: String,
    /// Includes `app`.
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// `spiffe://cluster.local/ns/<ns>/sa/<sa>`
    pub identity: std::sync::Arc<str>,
    /// One per service port: where the app listens and where its inbound sidecar listens.
    pub ports: Vec<InstancePort>,
    /// The outbound HTTP proxy (`HTTP_PROXY`).
    pub outbound: SocketAddr,
    /// Per-upstream listeners (`<SERVICE>_SERVICE_HOST/PORT`).
    pub upstreams: Vec<Upstream>,
    #[serde(skip)]
    pub def: WorkloadDef,
    pub status: InstanceStatus,
}

#[derive(Clone, Debug, Serialize)]
pub struct InstancePort {
    pub name: Option<String>,
    /// The service port (9080).
    pub port: u16,
    pub protocol: Protocol,
    /// Where the application listens (`PORT`).
    pub app: SocketAddr,
    /// Where the inbound sidecar listens (the endpoint address other sidecars connect to).
    pub inbound: SocketAddr,
}

#[derive(Clone, Debug, Serialize)]
pub struct Upstream {
    pub service: usize,
    pub service_name: String,
    pub ip: IpAddr,
    /// (service port, bound address); the address port equals the service port unless it
    /// was taken.
    pub ports: Vec<(u16, SocketAddr)>,
}

#[derive(Debug, Serialize)]
pub struct GatewayInstance {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub identity: std::sync::Arc<str>,
    /// (Gateway server port, bound local address)
    pub listeners: Vec<(u16, SocketAddr)>,
}

/// What the supervisor knows of an instance, shared with the data plane and the admin API.
#[derive(Debug, Default, Serialize)]
pub struct InstanceStatus {
    /// Endpoint membership: only ready instances receive traffic.
    #[serde(serialize_with = "ser_bool")]
    pub ready: AtomicBool,
    #[serde(serialize_with = "ser_u32")]
    pub pid: AtomicU32,
    #[serde(serialize_with = "ser_u32")]
    pub restarts: AtomicU32,
    /// Backoff before the next restart, in ms (0 when not waiting).
    #[serde(serialize_with = "ser_u64")]
    pub backoff_ms: AtomicU64,
    #[serde(serialize_with = "ser_state")]
    pub state: Mutex<ProcState>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum ProcState {
    #[default]
    Pending,
    Starting,
    Running,
    Ready,
    Backoff,
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    Stopping,
    Stopped,
    Failed {
        reason: String,
    },
}

impl ProcState {
    pub fn label(&self) -> String {
        match self {
            ProcState::Pending => "Pending".into(),
            ProcState::Starting => "Starting".into(),
            ProcState::Running => "Running".into(),
            ProcState::Ready => "Ready".into(),
            ProcState::Backoff => "CrashLoopBackOff".into(),
            ProcState::Exited { code: Some(c), .. } => format!("Exited({c})"),
            ProcState::Exited { signal: Some(s), .. } => format!("Killed({s})"),
            ProcState::Exited { .. } => "Exited".into(),
            ProcState::Stopping => "Stopping".into(),
            ProcState::Stopped => "Stopped".into(),
            ProcState::Failed { .. } => "Failed".into(),
        }
    }
}

impl InstanceStatus {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_state(&self, s: ProcState) {
        if let Ok(mut st) = self.state.lock() {
            *st = s;
        }
    }

    pub fn state(&self) -> ProcState {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

fn ser_bool<S: serde::Serializer>(v: &AtomicBool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bool(v.load(Ordering::Relaxed))
}
fn ser_u32<S: serde::Serializer>(v: &AtomicU32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u32(v.load(Ordering::Relaxed))
}
fn ser_u64<S: serde::Serializer>(v: &AtomicU64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(v.load(Ordering::Relaxed))
}
fn ser_state<S: serde::Serializer>(v: &Mutex<ProcState>, s: S) -> Result<S::Ok, S::Error> {
    v.lock().map(|g| g.clone()).unwrap_or_default().serialize(s)
}

/// `<SERVICE>` for environment variable names: upper case, `-` and `.` become `_`.
pub fn env_name(service: &str) -> String {
    service.chars().map(|c| if c == '-' || c == '.' { '_' } else { c.to_ascii_uppercase() }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_follow_kubernetes() {
        assert_eq!(env_name("reviews"), "REVIEWS");
        assert_eq!(env_name("my-svc"), "MY_SVC");
    }
}

//! Turns the mesh file into a [`Topology`]: one instance per replica with its addresses,
//! bound here (so no port can be taken between choosing and listening), or planned without
//! sockets for `validate`.
//!
//! Each (caller instance, service) pair gets its own loopback IP (127.x.y.z) listening on the
//! real service ports: `REVIEWS_SERVICE_PORT` stays 9080 as in Kubernetes, and the sidecar
//! knows who is calling from the address the connection arrived on.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;

use crate::config::mesh::Mesh;
use crate::identity::tls::spiffe_id;
use crate::model::topology::{
    CLUSTER_DOMAIN, GatewayInstance, Instance, InstancePort, InstanceStatus, Service, Topology, Upstream,
};

pub const GATEWAY_NAMESPACE: &str = "istio-system";

/// Listeners bound for a topology, handed to the data plane.
#[derive(Default)]
pub struct Listeners {
    /// (instance index, port index in `Instance::ports`)
    pub inbound: Vec<(usize, usize, TcpListener)>,
    /// instance index
    pub outbound: Vec<(usize, TcpListener)>,
    /// (instance index, service index, service port)
    pub upstream: Vec<(usize, usize, u16, TcpListener)>,
    /// (gateway index, server port)
    pub gateways: Vec<(usize, u16, TcpListener)>,
    /// Held until the applications start, so no other bind takes their ports.
    pub app_ports: Vec<std::net::TcpListener>,
}

/// What an address is for.
#[derive(Clone, Copy)]
enum Slot {
    Inbound(usize, usize),
    Outbound(usize),
    Upstream(usize, usize, u16),
    Gateway(usize, u16),
}

/// Where addresses come from: real sockets, or paper for `validate`.
trait Alloc {
    fn listen(&mut self, slot: Slot, addr: SocketAddr) -> Result<SocketAddr>;
    fn upstream(&mut self, slot: Slot, ip: IpAddr, port: u16) -> Result<SocketAddr>;
    fn app_port(&mut self, fixed: Option<u16>) -> Result<SocketAddr>;
    fn next_ip(&mut self) -> IpAddr;
}

struct Plan {
    next: u16,
    ips: u32,
}

impl Alloc for Plan {
    fn listen(&mut self, _: Slot, _: SocketAddr) -> Result<SocketAddr> {
        self.next = self.next.wrapping_add(1);
        Ok(SocketAddr::from(([127, 0, 0, 1], self.next)))
    }
    fn upstream(&mut self, _: Slot, ip: IpAddr, port: u16) -> Result<SocketAddr> {
        Ok(SocketAddr::new(ip, port))
    }
    fn app_port(&mut self, fixed: Option<u16>) -> Result<SocketAddr> {
        self.next = self.next.wrapping_add(1);
        Ok(SocketAddr::from(([127, 0, 0, 1], fixed.unwrap_or(self.next))))
    }
    fn next_ip(&mut self) -> IpAddr {
        self.ips += 1;
        IpAddr::V4(Ipv4Addr::from(0x7f01_0000 + self.ips))
    }
}

struct Bind {
    out: Listeners,
    ip_base: u32,
    ip_next: u32,
    /// Loopback addresses beyond 127.0.0.1 are unavailable (macOS without aliases).
    single_ip: bool,
}

fn std_bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

impl Bind {
    fn keep(&mut self, slot: Slot, l: std::net::TcpListener) -> Result<SocketAddr> {
        let l = TcpListener::from_std(l)?;
        let addr = l.local_addr()?;
        match slot {
            Slot::Inbound(i, p) => self.out.inbound.push((i, p, l)),
            Slot::Outbound(i) => self.out.outbound.push((i, l)),
            Slot::Upstream(i, s, port) => self.out.upstream.push((i, s, port, l)),
            Slot::Gateway(g, port) => self.out.gateways.push((g, port, l)),
        }
        Ok(addr)
    }
}

impl Alloc for Bind {
    fn listen(&mut self, slot: Slot, addr: SocketAddr) -> Result<SocketAddr> {
        let l = std_bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
        self.keep(slot, l)
    }

    fn upstream(&mut self, slot: Slot, ip: IpAddr, port: u16) -> Result<SocketAddr> {
        let attempt = if self.single_ip {
            Err(std::io::ErrorKind::AddrNotAvailable.into())
        } else {
            std_bind(SocketAddr::new(ip, port))
        };
        let l = match attempt {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => std_bind(SocketAddr::new(ip, 0))?,
            Err(_) => {
                self.single_ip = true;
                std_bind(SocketAddr::from(([127, 0, 0, 1], 0)))?
            }
        };
        self.keep(slot, l)
    }

    fn app_port(&mut self, fixed: Option<u16>) -> Result<SocketAddr> {
        if let Some(p) = fixed {
            return Ok(SocketAddr::from(([127, 0, 0, 1], p)));
        }
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        self.out.app_ports.push(l);
        Ok(addr)
    }

    fn next_ip(&mut self) -> IpAddr {
        loop {
            self.ip_next += 1;
            let ip = self.ip_base + self.ip_next;
            if !matches!(ip & 0xff, 0 | 255) {
                return IpAddr::V4(Ipv4Addr::from(ip));
            }
        }
    }
}

/// Builds the topology with paper addresses (no sockets), for checks.
pub fn plan(mesh: &Mesh) -> Result<Topology> {
    build_with(mesh, &mut Plan { next: 20000, ips: 0 })
}

/// Builds the topology and binds every listener it needs.
pub fn bind(mesh: &Mesh) -> Result<(Topology, Listeners)> {
    // A random /16 inside 127/8 per run, so meshes running side by side rarely meet.
    let ip_base = 0x7f00_0000 + (fastrand::u32(1..=254) << 16);
    let mut b = Bind { out: Listeners::default(), ip_base, ip_next: 0, single_ip: false };
    let topology = build_with(mesh, &mut b)?;
    Ok((topology, b.out))
}

fn build_with(mesh: &Mesh, a: &mut impl Alloc) -> Result<Topology> {
    let ns = mesh.namespace.clone();
    let services: Vec<Service> = mesh
        .services
        .iter()
        .map(|s| Service {
            name: s.name.clone(),
            namespace: ns.clone(),
            fqdn: format!("{}.{ns}.{CLUSTER_DOMAIN}", s.name),
            ports: s.ports.clone(),
            service_account: s.service_account.clone(),
        })
        .collect();
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut instances = Vec::new();
    for (si, svc) in mesh.services.iter().enumerate() {
        for w in &svc.workloads {
            for r in 0..w.replicas {
                let index = instances.len();
                let name = if w.replicas == 1 { w.name.clone() } else { format!("{}-{}", w.name, r + 1) };
                let fixed = w.env.iter().find(|(k, _)| k == "PORT").and_then(|(_, v)| v.parse::<u16>().ok());
                let mut ports = Vec::new();
                for (pi, p) in svc.ports.iter().enumerate() {
                    let app = a.app_port(if pi == 0 { fixed } else { None })?;
                    let inbound = a.listen(Slot::Inbound(index, pi), loopback)?;
                    ports.push(InstancePort { name: p.name.clone(), port: p.port, protocol: p.protocol, app, inbound });
                }
                let outbound = a.listen(Slot::Outbound(index), loopback)?;
                let mut upstreams = Vec::new();
                for (ti, target) in services.iter().enumerate() {
                    let ip = a.next_ip();
                    let mut bound_ports = Vec::new();
                    for p in &target.ports {
                        let addr = a.upstream(Slot::Upstream(index, ti, p.port), ip, p.port)?;
                        bound_ports.push((p.port, addr));
                    }
                    let ip = bound_ports.first().map(|(_, a)| a.ip()).unwrap_or(ip);
                    upstreams.push(Upstream { service: ti, service_name: target.name.clone(), ip, ports: bound_ports });
                }
                instances.push(Arc::new(Instance {
                    name,
                    workload: crate::telemetry::Name::new(&w.name),
                    service: si,
                    service_name: svc.name.clone(),
                    namespace: ns.clone(),
                    labels: w.labels.clone(),
                    service_account: svc.service_account.clone(),
                    identity: Arc::from(spiffe_id(&ns, &svc.service_account)),
                    ports,
                    outbound,
                    upstreams,
                    def: w.clone(),
                    status: InstanceStatus::default(),
                }));
            }
        }
    }
    let mut gateways = Vec::new();
    for (gi, g) in mesh.gateways.iter().enumerate() {
        let mut listeners = Vec::new();
        for (server_port, local) in &g.ports {
            let addr = a
                .listen(Slot::Gateway(gi, *server_port), SocketAddr::from(([127, 0, 0, 1], *local)))
                .with_context(|| format!("gateway {} (server port {server_port})", g.name))?;
            listeners.push((*server_port, addr));
        }
        let labels: BTreeMap<String, String> = g.labels.clone();
        gateways.push(Arc::new(GatewayInstance {
            name: g.name.clone(),
            namespace: GATEWAY_NAMESPACE.into(),
            labels,
            identity: Arc::from(spiffe_id(GATEWAY_NAMESPACE, &format!("{}-service-account", g.name))),
            listeners,
        }));
    }
    Ok(Topology { namespace: ns, services, instances, gateways })
}

/// A mesh file written to a temporary folder, loaded and planned (for tests).
#[cfg(test)]
pub fn planned_for_test(mesh_yaml: &str) -> (tempfile::TempDir, Mesh, Arc<Topology>) {
    let dir = tempfile::tempdir().unwrap();
    let mesh_file = dir.path().join("devmesh.yaml");
    std::fs::write(&mesh_file, mesh_yaml).unwrap();
    let mut d = crate::config::diag::Diagnostics::new();
    let mesh = crate::config::mesh::load(&mesh_file, &mut d).unwrap();
    let topology = Arc::new(plan(&mesh).unwrap());
    (dir, mesh, topology)
}

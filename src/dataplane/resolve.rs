//! Turning endpoint addresses into socket addresses: DNS names (ServiceEntry `resolution:
//! DNS`) through the system resolver off the runtime threads, and original destinations
//! (PassthroughCluster, `resolution: NONE`) from the request's authority.

use std::net::SocketAddr;
use std::time::Duration;

use super::error::ProxyError;
use crate::model::hosts::split_authority;
use crate::model::registry::RegKind;
use crate::model::snapshot::MeshSnapshot;

const DNS_TIMEOUT: Duration = Duration::from_secs(5);

fn literal(host: &str, port: u16) -> Option<SocketAddr> {
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    host.parse::<std::net::IpAddr>().ok().map(|ip| SocketAddr::new(ip, port))
}

/// Resolves `host:port` (an IP literal needs no lookup). The lookup future is boxed: it is
/// large and rare, and would otherwise enlarge every request's future.
pub async fn host(host: &str, port: u16) -> Result<SocketAddr, ProxyError> {
    if let Some(a) = literal(host, port) {
        return Ok(a);
    }
    Box::pin(lookup(host, port)).await
}

async fn lookup(host: &str, port: u16) -> Result<SocketAddr, ProxyError> {
    match tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(mut addrs)) => addrs.next().ok_or_else(|| ProxyError::ConnectFailed(format!("no address for {host}"))),
        Ok(Err(e)) => Err(ProxyError::ConnectFailed(format!("DNS resolution failed for {host}: {e}"))),
        Err(_) => Err(ProxyError::ConnectFailed(format!("DNS resolution timed out for {host}"))),
    }
}

/// The original destination when the authority is an IP literal (no lookup needed).
pub fn literal_destination(authority: &str, default_port: u16) -> Option<SocketAddr> {
    let (h, port) = split_authority(authority);
    literal(h, port.unwrap_or(default_port))
}

/// Where the client asked to go: `authority` with `default_port` when it names none. A mesh
/// service the caller may not see through its Sidecar is still reached directly, in plain
/// text, as a pod address would be under ALLOW_ANY.
pub async fn original_destination(
    authority: &str,
    default_port: u16,
    snapshot: &MeshSnapshot,
) -> Result<SocketAddr, ProxyError> {
    let (h, port) = split_authority(authority);
    let port = port.unwrap_or(default_port);
    if let Some(a) = literal(h, port) {
        return Ok(a);
    }
    if let Some((si, _)) = snapshot.registry.hosts.resolve(authority)
        && let Some(RegKind::Mesh(mi)) = snapshot.registry.get(si).map(|s| &s.kind)
    {
        let ready = snapshot
            .topology
            .instances
            .iter()
            .filter(|i| i.service == *mi && i.status.is_ready())
            .filter_map(|i| i.ports.iter().find(|p| p.port == port).map(|p| p.inbound));
        return ready.min_by_key(|_| fastrand::u32(..)).ok_or(ProxyError::NoHealthyUpstream);
    }
    Box::pin(lookup(h, port)).await
}

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

/// `host:port` as a socket address when `host` is an IP literal (`[::1]` or `::1` for IPv6).
pub fn literal(host: &str, port: u16) -> Option<SocketAddr> {
    if let Some(ip) = ipv4(host.as_bytes()) {
        return Some(SocketAddr::new(ip.into(), port));
    }
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    host.parse::<std::net::IpAddr>().ok().map(|ip| SocketAddr::new(ip, port))
}

/// A dotted-quad IPv4 address as `Ipv4Addr::from_str` accepts it (four decimal octets, no
/// leading zeros), without its general parser: this runs per passthrough request.
fn ipv4(s: &[u8]) -> Option<std::net::Ipv4Addr> {
    let mut octets = [0u8; 4];
    let (mut k, mut value, mut digits) = (0usize, 0u32, 0u32);
    for &c in s {
        if c == b'.' {
            if digits == 0 || k == 3 {
                return None;
            }
            octets[k] = value as u8;
            (k, value, digits) = (k + 1, 0, 0);
        } else if c.is_ascii_digit() {
            if digits > 0 && value == 0 {
                return None; // a leading zero
            }
            value = value * 10 + u32::from(c - b'0');
            digits += 1;
            if value > 255 {
                return None;
            }
        } else {
            return None;
        }
    }
    if digits == 0 || k != 3 {
        return None;
    }
    octets[3] = value as u8;
    Some(octets.into())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_literals_parse_as_std_does() {
        let cases = [
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "1.2.3.4",
            "256.0.0.1",
            "01.2.3.4",
            "1.2.3",
            "1.2.3.4.5",
            "1..3.4",
            "",
            "a.b.c.d",
            "1.2.3.4 ",
            "+1.2.3.4",
            "1.2.3.-4",
            "999.1.1.1",
            "10.0.0.00",
            "10.0.0.0.",
        ];
        for c in cases {
            assert_eq!(ipv4(c.as_bytes()), c.parse().ok(), "{c:?}");
        }
        assert_eq!(literal("127.0.0.1", 80), Some("127.0.0.1:80".parse().unwrap()));
        assert_eq!(literal("[::1]", 80), Some("[::1]:80".parse().unwrap()));
        assert_eq!(literal("::1", 80), Some("[::1]:80".parse().unwrap()));
        assert_eq!(literal("example.com", 80), None);
    }
}

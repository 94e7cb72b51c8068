//! ServiceEntry (VALIDATION.md §4) and Sidecar (§8) rules.

use std::collections::HashSet;

use crate::config::diag::Pos;
use crate::config::istio::Resource;
use crate::config::istio::service_entry::*;
use crate::config::mesh::Protocol;
use crate::config::names;

use super::{V, export_to};

fn ip_or_cidr(s: &str) -> Result<bool, String> {
    if let Some((ip, bits)) = s.split_once('/') {
        let ip: std::net::IpAddr = ip.parse().map_err(|_| format!("{s} is not a valid CIDR block"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match bits.parse::<u8>() {
            Ok(b) if b <= max => Ok(true),
            _ => Err(format!("{s} is not a valid CIDR block")),
        }
    } else {
        s.parse::<std::net::IpAddr>().map(|_| false).map_err(|_| format!("{s} is not a valid IP"))
    }
}

pub(super) fn service_entry(v: &mut V, res: &Resource, se: &ServiceEntrySpec) {
    let at = if se.at.0 == Pos::default() { res.origin.pos } else { se.at.0 };
    if se.hosts.is_empty() {
        v.err(at, "service entry must have at least one host");
    }
    let resolution = se.resolution.as_ref().map(|r| r.value).unwrap_or_default();
    for h in &se.hosts {
        if h.as_str() == "*" {
            v.err(h.pos, "invalid host *");
        } else if let Err(e) = names::check_wildcard_domain(h) {
            v.err(h.pos, e);
        } else if names::is_partial_wildcard(h) && resolution != Resolution::DynamicDns {
            v.warn(h.pos, format!("partial wildcard {:?} not allowed", h.value));
        }
    }
    if se.workload_selector.is_some() && !se.endpoints.is_empty() {
        v.err(at, "only one of WorkloadSelector or Endpoints is allowed in Service Entry");
    }
    if let Some(ws) = &se.workload_selector
        && ws.labels.is_empty()
    {
        v.warn(
            ws.pos,
            "service entry: workload selector specified without labels, will be applied to all services in namespace",
        );
    }
    for a in &se.addresses {
        match ip_or_cidr(a) {
            Err(e) => v.err(a.pos, e),
            Ok(true) if !matches!(resolution, Resolution::None | Resolution::Static) => {
                v.err(a.pos, "CIDR addresses are allowed only for NONE/STATIC resolution types")
            }
            Ok(_) => {}
        }
    }
    let mut names_seen = HashSet::new();
    let mut numbers_seen = HashSet::new();
    let mut port_names = HashSet::new();
    let mut non_http = false;
    for p in &se.ports {
        match &p.number {
            Some(n) if !(1..=65535).contains(&n.value) => {
                v.err(n.pos, format!("port number {} must be in the range 1..65535", n.value))
            }
            Some(n) if !numbers_seen.insert(n.value) => {
                v.err(n.pos, format!("service entry port {} already defined", n.value))
            }
            Some(_) => {}
            None => v.err(p.at.0, "missing field `number`"),
        }
        match &p.name {
            Some(n) if !names::is_dns1123_label(n) => v.err(n.pos, format!("invalid port name: {}", n.value)),
            Some(n) if !names_seen.insert(n.value.clone()) => {
                v.err(n.pos, format!("service entry port name {:?} already defined", n.value))
            }
            Some(n) => {
                port_names.insert(n.value.clone());
            }
            None => v.err(p.at.0, "missing field `name`"),
        }
        if let Some(t) = &p.target_port
            && !(1..=65535).contains(&t.value)
        {
            v.err(t.pos, format!("port number {} must be in the range 1..65535", t.value));
        }
        let proto = p.protocol.as_ref().map(|p| Protocol::parse(p));
        if let (Some(name), Some(Protocol::Unknown)) = (&p.protocol, proto)
            && !name.is_empty()
        {
            v.err(name.pos, format!("unsupported protocol: {}", name.value));
        }
        if !proto.is_some_and(|p| p.is_http() || matches!(p, Protocol::Https | Protocol::Tls)) {
            non_http = true;
        }
        if matches!(proto, None | Some(Protocol::Tcp)) && se.addresses.is_empty() {
            v.warn(
                p.at.0,
                "addresses are required for ports serving TCP (or unset) protocol when IP Autoallocation is not enabled",
            );
        }
        if resolution == Resolution::DynamicDns
            && !matches!(proto, Some(Protocol::Http | Protocol::Tls | Protocol::Grpc | Protocol::Http2))
        {
            v.err(p.at.0, "only HTTP, TLS, GRPC, and HTTP2 protocols are supported for resolution type DYNAMIC_DNS");
        }
    }
    let tcp_class = se.ports.iter().any(|p| {
        let proto = p.protocol.as_ref().map(|p| Protocol::parse(p));
        !proto.is_some_and(|p| p.is_http())
    });
    match resolution {
        Resolution::None => {
            if !se.endpoints.is_empty() {
                v.err(se.endpoints[0].at.0, "no endpoints should be provided for resolution type none");
            }
            if se.workload_selector.is_some() {
                v.warn(at, "workloadSelector should not be set when resolution mode is NONE");
            }
        }
        Resolution::Static => {
            for e in &se.endpoints {
                match &e.address {
                    None if e.network.is_some() => v.warn(
                        e.at.0,
                        format!("address is unset with network {:?}", e.network.as_deref().unwrap_or_default()),
                    ),
                    None => v.err(e.at.0, "address is required"),
                    Some(a) if a.starts_with("unix://") => {
                        if !e.ports.is_empty() {
                            v.err(a.pos, format!("unix endpoint {} must not include ports", a.value));
                        }
                        if se.ports.len() != 1 {
                            v.err(a.pos, "exactly 1 service port required for unix endpoints");
                        }
                    }
                    Some(a) if a.parse::<std::net::IpAddr>().is_err() => {
                        v.err(a.pos, format!("endpoint address {:?} is not a valid IP address", a.value))
                    }
                    Some(_) => {}
                }
                endpoint_ports(v, e, &port_names);
            }
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            if se.endpoints.is_empty() {
                for h in &se.hosts {
                    if h.contains('*') && !h.starts_with("*.") || !h.contains('.') {
                        v.err(
                            h.pos,
                            format!(
                                "hosts must be FQDN or contain only prefix wildcards if no endpoints are provided for \
                                 resolution mode {resolution:?}, {}",
                                h.value
                            ),
                        );
                    }
                }
            }
            if !se.addresses.is_empty() && tcp_class && se.hosts.len() > 1 {
                v.warn(
                    at,
                    "service entry can not have more than one host specified simultaneously with address and tcp port",
                );
            }
            if resolution == Resolution::DnsRoundRobin && se.endpoints.len() > 1 {
                v.err(at, "there must only be 0 or 1 endpoint for resolution mode DNS_ROUND_ROBIN");
            }
            for e in &se.endpoints {
                if let Some(a) = &e.address
                    && a.parse::<std::net::IpAddr>().is_err()
                    && names::check_fqdn(a).is_err()
                {
                    v.err(a.pos, format!("endpoint address {:?} is not a valid FQDN or an IP address", a.value));
                }
                endpoint_ports(v, e, &port_names);
            }
        }
        Resolution::DynamicDns => {
            for h in &se.hosts {
                if !h.starts_with('*') {
                    v.err(h.pos, "host must be wildcarded for resolution mode DYNAMIC_DNS");
                }
            }
            if !se.addresses.is_empty() {
                v.err(at, "addresses cannot be set for resolution type DYNAMIC_DNS");
            }
            if !se.endpoints.is_empty() {
                v.err(at, "endpoints cannot be set for resolution type DYNAMIC_DNS");
            }
            if se.location.is_none() {
                v.err(at, "location must be MESH_EXTERNAL or MESH_INTERNAL for resolution type DYNAMIC_DNS");
            }
        }
    }
    if se.hosts.len() > 1 && resolution != Resolution::None && non_http {
        v.err(at, "multiple hosts provided with non-HTTP, non-TLS ports");
    }
    export_to(v, &se.export_to, true);
}

fn endpoint_ports(v: &mut V, e: &WorkloadEntry, declared: &HashSet<String>) {
    for (name, p) in &e.ports {
        if !declared.contains(name) {
            v.err(p.pos, format!("endpoint port {name} is not defined by the service entry"));
        }
        if !(1..=65535).contains(&p.value) {
            v.err(p.pos, format!("port number {} must be in the range 1..65535", p.value));
        }
    }
    for (k, val) in &e.labels {
        if let Err(err) = names::check_label_key(k).and_then(|_| names::check_label_value(val)) {
            v.err(e.at.0, err);
        }
    }
}

/// `namespace/dnsName` hosts of Sidecar egress listeners.
fn sidecar_host(host: &str) -> Result<(), String> {
    let Some((ns, dns)) = host.split_once('/') else {
        return Err("host must be of form namespace/dnsName".into());
    };
    if ns.is_empty() || dns.is_empty() {
        return Err("config namespace and dnsName in host entry cannot be empty".into());
    }
    let ns_ok = ns == "*"
        || ns == "."
        || ns.strip_prefix('~').is_some_and(|n| n.is_empty() || names::is_dns1123_label(n))
        || names::is_dns1123_label(ns);
    if !ns_ok {
        return Err(format!("invalid namespace value {ns:?} in sidecar"));
    }
    if dns == "*" {
        return Ok(());
    }
    if names::is_partial_wildcard(dns) {
        return Err(format!("partial wildcard {dns:?} not allowed"));
    }
    if !dns.contains('.') {
        return Err("short names (non FQDN) are not allowed".into());
    }
    names::check_wildcard_domain(dns)
}

pub(super) fn sidecar(v: &mut V, res: &Resource, sc: &SidecarSpec) {
    let at = if sc.at.0 == Pos::default() { res.origin.pos } else { sc.at.0 };
    if sc.egress.is_empty()
        && sc.ingress.is_empty()
        && sc.outbound_traffic_policy.is_none()
        && sc.inbound_connection_pool.is_none()
    {
        v.err(at, "sidecar: empty configuration provided");
    }
    if let Some(ws) = &sc.workload_selector
        && ws.labels.is_empty()
    {
        v.warn(
            ws.pos,
            "sidecar: workload selector specified without labels, will be applied to all services in namespace",
        );
    }
    let mut portless = 0;
    for (i, l) in sc.egress.iter().enumerate() {
        if l.hosts.is_empty() {
            v.err(l.at.0, "sidecar: egress listener must contain at least one host");
        }
        let mut seen = HashSet::new();
        for h in &l.hosts {
            if let Err(e) = sidecar_host(h) {
                v.err(h.pos, e);
            }
            if !seen.insert(h.value.clone()) {
                v.warn(h.pos, format!("duplicated egress host: {}", h.value));
            }
        }
        if l.hosts.iter().any(|h| h.as_str() == "*/*") && l.hosts.len() > 1 {
            v.warn(l.at.0, "`*/*` host select all resources, no other hosts can be added");
        }
        if let Some(n) = l.port.as_ref().and_then(|p| p.number.as_ref())
            && n.value == 0
            && !l.bind.as_deref().is_some_and(|b| b.starts_with("unix://"))
        {
            v.err(n.pos, "sidecar: ports with 0 value must have a unix domain socket bind address");
        }
        if l.port.as_ref().and_then(|p| p.number.as_ref()).is_none() {
            portless += 1;
            if i + 1 != sc.egress.len() {
                v.err(l.at.0, "sidecar: the egress listener with empty port should be the last listener in the list");
            }
        }
    }
    if portless > 1 {
        v.err(at, "sidecar: egress can have only one listener with empty port");
    }
    ingress(v, sc);
    if let Some(p) = &sc.outbound_traffic_policy {
        if let Some(ep) = &p.egress_proxy
            && ep.get("port").is_none_or(|port| port.is_null())
        {
            v.err(ep.pos, "sidecar: egress_proxy port must be non-nil");
        }
        if p.egress_proxy.is_some() && p.mode != Some(SidecarOutboundMode::AllowAny) {
            v.err(p.pos, "sidecar: egress_proxy must be set only with ALLOW_ANY outbound_traffic_policy mode");
        }
        if p.mode == Some(SidecarOutboundMode::AllowAnyDynamicDns) {
            v.err(
                p.pos,
                "sidecar: ALLOW_ANY_DYNAMIC_DNS mode is only supported in MeshConfig, not in Sidecar resource",
            );
        }
    }
}

/// `ingress[]` listeners (read as free-form values: devmesh does not act on them yet).
fn ingress(v: &mut V, sc: &SidecarSpec) {
    let mut ports = HashSet::new();
    for l in &sc.ingress {
        let Some(obj) = l.as_object() else {
            v.err(l.pos, "sidecar: ingress may not be null");
            continue;
        };
        match obj.get("port").and_then(|p| p.get("number")).and_then(|n| n.as_i64()) {
            None => v.err(l.pos, "sidecar: port is required for ingress listeners"),
            Some(n) => {
                if !(1..=65535).contains(&n) {
                    v.err(l.pos, format!("port number {n} must be in the range 1..65535"));
                }
                if !ports.insert(n) {
                    v.err(l.pos, "sidecar: ports on IP bound listeners must be unique");
                }
            }
        }
        if obj.get("port").and_then(|p| p.get("targetPort")).is_some() {
            v.err(l.pos, "targetPort has no impact on Sidecars");
        }
        if let Some(ep) = obj.get("defaultEndpoint").and_then(|e| e.as_str())
            && !ep.is_empty()
            && !valid_default_endpoint(ep)
        {
            v.err(
                l.pos,
                "sidecar: defaultEndpoint must be of form 127.0.0.1:<port>,0.0.0.0:<port>,[::1]:port,[::]:port,unix://filepath or unset",
            );
        }
        if let Some(tls) = obj.get("tls").and_then(|t| t.as_object()) {
            if let Some(mode) = tls.get("mode").and_then(|m| m.as_str())
                && matches!(mode, "ISTIO_MUTUAL" | "AUTO_PASSTHROUGH")
            {
                v.err(l.pos, format!("configuration is invalid: cannot set mode to {mode} in sidecar ingress tls"));
            }
            if tls.get("subjectAltNames").and_then(|s| s.as_array()).is_some_and(|a| !a.is_empty()) {
                v.err(l.pos, "sidecar: subjectAltNames is not supported in ingress tls");
            }
            if tls.get("httpsRedirect").and_then(|b| b.as_bool()) == Some(true) {
                v.err(l.pos, "sidecar: httpsRedirect is not supported");
            }
            if tls.get("credentialName").and_then(|c| c.as_str()).is_some_and(|c| !c.is_empty()) {
                v.err(l.pos, "sidecar: credentialName is not currently supported");
            }
        }
    }
}

fn valid_default_endpoint(ep: &str) -> bool {
    if ep.starts_with("unix://") {
        return true;
    }
    let port = ["127.0.0.1:", "0.0.0.0:", "[::1]:", "[::]:", ":"].iter().find_map(|p| ep.strip_prefix(p));
    port.is_some_and(|p| p.parse::<u16>().is_ok_and(|n| n > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_hosts() {
        assert!(
            sidecar_host("./*").is_ok()
                && sidecar_host("istio-system/*").is_ok()
                && sidecar_host("*/*.example.com").is_ok()
        );
        assert_eq!(sidecar_host("reviews"), Err("host must be of form namespace/dnsName".into()));
        assert_eq!(sidecar_host("./reviews"), Err("short names (non FQDN) are not allowed".into()));
        assert!(ip_or_cidr("10.0.0.0/8").unwrap() && !ip_or_cidr("10.1.2.3").unwrap());
        assert_eq!(ip_or_cidr("10.0.0.0/40"), Err("10.0.0.0/40 is not a valid CIDR block".into()));
        assert!(valid_default_endpoint("127.0.0.1:8080") && valid_default_endpoint(":80"));
        assert!(valid_default_endpoint("unix:///var/run/app.sock") && !valid_default_endpoint("10.0.0.1:80"));
    }
}

//! Gateway rules (VALIDATION.md §3).

use crate::config::diag::Pos;
use crate::config::istio::Resource;
use crate::config::istio::gateway::{GatewaySpec, Server, TlsMode};
use crate::config::names;

use super::V;

pub(super) fn gateway(v: &mut V, res: &Resource, gw: &GatewaySpec) {
    let at = if gw.at.0 == Pos::default() { res.origin.pos } else { gw.at.0 };
    if gw.servers.is_empty() {
        v.err(at, "gateway must have at least one server");
    }
    let mut port_names: Vec<&str> = Vec::new();
    for s in &gw.servers {
        server(v, s, &mut port_names);
    }
    for (k, val) in gw.selector.iter() {
        if k.is_empty() {
            v.err(k.pos, format!("empty key is not supported in selector: {:?}", k.value));
        } else if k.contains('*') || val.contains('*') {
            v.err(k.pos, format!("wildcard is not supported in selector: {:?}", k.value));
        }
    }
}

fn server<'a>(v: &mut V, s: &'a Server, port_names: &mut Vec<&'a str>) {
    if s.hosts.is_empty() {
        v.err(s.at.0, "server config must contain at least one host");
    }
    for h in &s.hosts {
        if let Err(e) = names::check_gateway_host(h) {
            v.err(h.pos, e);
        }
    }
    let Some(p) = &s.port else {
        v.err(s.at.0, "port is required");
        return;
    };
    match &p.name {
        Some(n) if !n.is_empty() => {
            if port_names.contains(&n.as_str()) {
                v.err(n.pos, format!("port names in servers must be unique: duplicate name {}", n.value));
            }
            port_names.push(n.as_str());
        }
        _ => v.err(p.at.0, "port name must be set: missing field `name`"),
    }
    let unix = s.bind.as_ref().is_some_and(|b| b.starts_with("unix://"));
    match &p.number {
        Some(n) if unix && n.value != 0 => {
            v.err(n.pos, format!("port number must be 0 for unix domain socket: {}", n.value))
        }
        Some(n) if !unix && !(1..=65535).contains(&n.value) => {
            v.err(n.pos, format!("port number {} must be in the range 1..65535", n.value))
        }
        None if !unix => v.err(p.at.0, "missing field `number`"),
        _ => {}
    }
    if let Some(t) = &p.target_port {
        v.err(t.pos, "targetPort has no impact on Gateways");
    }
    if let Some(b) = &s.bind
        && !unix
        && b.parse::<std::net::IpAddr>().is_err()
    {
        v.err(b.pos, format!("{} is not a valid IP", b.value));
    }
    let protocol = match &p.protocol {
        Some(pr) => {
            let up = pr.to_ascii_uppercase();
            let known = ["HTTP", "HTTPS", "HTTP2", "GRPC", "GRPC-WEB", "TCP", "TLS", "MONGO", "REDIS", "MYSQL"];
            if !known.contains(&up.as_str()) {
                v.err(
                    pr.pos,
                    format!(
                        "invalid protocol {:?}, supported protocols are HTTP, HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP",
                        pr.value
                    ),
                );
            }
            up
        }
        None => {
            v.err(p.at.0, "missing field `protocol`");
            String::new()
        }
    };
    let tls_proto = protocol == "HTTPS" || protocol == "TLS";
    match &s.tls {
        None if tls_proto => v.err(s.at.0, "server must have TLS settings for HTTPS/TLS protocols"),
        Some(t) if !tls_proto => {
            let redirect_only = t.https_redirect
                && t.mode.is_none()
                && t.credential_name.is_none()
                && t.server_certificate.is_none()
                && t.private_key.is_none();
            if protocol == "HTTP" && !redirect_only {
                v.err(t.pos, "server cannot have TLS settings for plain text HTTP ports");
            } else if protocol != "HTTP" && !protocol.is_empty() {
                v.err(t.pos, "server cannot have TLS settings for non HTTPS/TLS ports");
            }
        }
        Some(t) if t.mode == Some(TlsMode::IstioMutual) => {
            for (set, what) in [
                (t.server_certificate.is_some(), "server certificate"),
                (t.private_key.is_some(), "private key"),
                (t.ca_certificates.is_some(), "CA bundle"),
                (!t.tls_certificates.is_empty(), "tlsCertificates"),
                (t.credential_name.is_some(), "credentialName"),
                (!t.credential_names.is_empty(), "credentialNames"),
            ] {
                if set {
                    v.err(t.pos, format!("ISTIO_MUTUAL TLS cannot have associated {what}"));
                }
            }
        }
        _ => {}
    }
}

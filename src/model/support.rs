//! What devmesh honours today: every kind or field it reads but does not act on yet gets a
//! warning naming the file, position and feature, never silence. This list shrinks as
//! features land (README "Supported Istio features" mirrors it).

use crate::config::diag::{Diagnostics, Pos};
use crate::config::istio::destination_rule::{
    ClientTlsMode, ClientTlsSettings, DestinationRuleSpec, LoadBalancerSettings, TrafficPolicy,
};
use crate::config::istio::gateway::GatewaySpec;
use crate::config::istio::service_entry::{ServiceEntrySpec, SidecarSpec};
use crate::config::istio::virtual_service::VirtualServiceSpec;
use crate::config::istio::{Resource, Spec};
use crate::config::yaml::Spanned;

pub fn unsupported(res: &Resource, out: &mut Diagnostics) {
    let file = &res.origin.file;
    let mut warn = |pos: Pos, what: String| {
        let pos = if pos == Pos::default() { res.origin.pos } else { pos };
        out.warning(file, pos, what);
    };
    match &res.spec {
        Spec::Opaque(_) => warn(
            res.origin.pos,
            format!(
                "{} {}/{} is stored but not honoured yet: traffic ignores it",
                res.kind, res.metadata.namespace, res.metadata.name
            ),
        ),
        Spec::VirtualService(vs) => virtual_service(vs, &mut warn),
        Spec::Gateway(gw) => gateway(gw, &mut warn),
        Spec::DestinationRule(dr) => destination_rule(dr, &mut warn),
        Spec::ServiceEntry(se) => service_entry(se, &mut warn),
        Spec::Sidecar(sc) => sidecar(sc, &mut warn),
    }
}

fn not_yet(kind: &str, field: &str) -> String {
    format!("{kind} `{field}` is not honoured yet: it is ignored")
}

fn virtual_service(vs: &VirtualServiceSpec, warn: &mut impl FnMut(Pos, String)) {
    for r in &vs.http {
        if let Some(f) = &r.fault {
            if let Some(d) = &f.delay
                && d.exponential_delay.is_some()
            {
                warn(d.pos, not_yet("VirtualService", "fault.delay.exponentialDelay"));
            }
            if let Some(a) = &f.abort
                && a.http2_error.is_some()
            {
                warn(a.pos, not_yet("VirtualService", "fault.abort.http2Error"));
            }
        }
        if let Some(rt) = &r.retries
            && rt.retry_ignore_previous_hosts == Some(false)
        {
            warn(rt.pos, "VirtualService `retries.retryIgnorePreviousHosts: false` is not honoured yet: retries still prefer other hosts".into());
        }
    }
    for t in &vs.tls {
        for m in &t.matches {
            if !m.destination_subnets.is_empty() {
                warn(m.at.0, not_yet("VirtualService", "tls.match.destinationSubnets"));
            }
        }
    }
    for t in &vs.tcp {
        for m in &t.matches {
            if !m.destination_subnets.is_empty() || m.source_subnet.is_some() {
                warn(m.at.0, not_yet("VirtualService", "tcp.match subnets"));
            }
        }
    }
}

fn traffic_policy(tp: &TrafficPolicy, external: bool, warn: &mut impl FnMut(Pos, String)) {
    let dr = "DestinationRule";
    let positions = [
        ("tunnel", tp.tunnel.as_ref().map(|t| t.pos)),
        ("proxyProtocol", tp.proxy_protocol.as_ref().map(|t| t.pos)),
        ("retryBudget", tp.retry_budget.as_ref().map(|t| t.pos)),
    ];
    for (field, pos) in positions {
        if let Some(pos) = pos {
            warn(pos, not_yet(dr, &format!("trafficPolicy.{field}")));
        }
    }
    let top = [tp.connection_pool.as_ref().map(|c| c.pos), tp.outlier_detection.as_ref().map(|o| o.pos)];
    settings(top, tp.load_balancer.as_ref(), tp.tls.as_ref(), "trafficPolicy", external, warn);
    for p in &tp.port_level_settings {
        let port = [p.connection_pool.as_ref().map(|c| c.pos), p.outlier_detection.as_ref().map(|o| o.pos)];
        settings(port, p.load_balancer.as_ref(), p.tls.as_ref(), "portLevelSettings", external, warn);
    }
}

/// The settings a traffic policy and each of its port-level settings share, checked the same
/// way wherever they stand (top level, subset, port level): every one not honoured is warned
/// about at its own position. `pools` are where `connectionPool` and `outlierDetection` are.
fn settings(
    pools: [Option<Pos>; 2],
    load_balancer: Option<&Spanned<LoadBalancerSettings>>,
    tls: Option<&Spanned<ClientTlsSettings>>,
    at: &str,
    external: bool,
    warn: &mut impl FnMut(Pos, String),
) {
    let dr = "DestinationRule";
    for (pos, field) in pools.into_iter().zip(["connectionPool", "outlierDetection"]) {
        if let Some(pos) = pos {
            warn(pos, not_yet(dr, &format!("{at}.{field}")));
        }
    }
    if let Some(lb) = load_balancer {
        if lb.locality_lb_setting.is_some() || lb.zone_aware_lb_setting.is_some() {
            warn(lb.pos, "DestinationRule locality load balancing is not honoured: a laptop has one locality".into());
        }
        if lb.warmup_duration_secs.is_some() || lb.warmup.is_some() {
            warn(lb.pos, not_yet(dr, &format!("{at}.loadBalancer.warmup")));
        }
    }
    if let Some(t) = tls
        && matches!(t.mode, Some(ClientTlsMode::Simple | ClientTlsMode::Mutual))
    {
        let what = if external { "TLS origination to external hosts" } else { "SIMPLE/MUTUAL TLS to mesh services" };
        warn(
            t.pos,
            format!(
                "DestinationRule {at}.tls mode {}: {what} is not supported yet; traffic is sent as without it",
                format!("{:?}", t.mode.unwrap_or(ClientTlsMode::Simple)).to_ascii_uppercase()
            ),
        );
    }
}

fn destination_rule(d: &DestinationRuleSpec, warn: &mut impl FnMut(Pos, String)) {
    let external = d.host.contains('.') && !d.host.ends_with(".svc.cluster.local");
    if d.workload_selector.is_some() {
        warn(
            d.at.0,
            "DestinationRule `workloadSelector` is not honoured yet: the rule applies to every workload".into(),
        );
    }
    if let Some(tp) = &d.traffic_policy {
        traffic_policy(tp, external, warn);
    }
    for s in &d.subsets {
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(tp, external, warn);
        }
    }
}

fn service_entry(se: &ServiceEntrySpec, warn: &mut impl FnMut(Pos, String)) {
    if let Some(w) = &se.workload_selector {
        warn(w.pos, not_yet("ServiceEntry", "workloadSelector"));
    }
    for a in &se.addresses {
        if a.parse::<std::net::IpAddr>().is_err() {
            warn(a.pos, "ServiceEntry CIDR addresses are not honoured yet (single IPs are)".into());
        }
    }
}

fn sidecar(sc: &SidecarSpec, warn: &mut impl FnMut(Pos, String)) {
    for i in &sc.ingress {
        warn(i.pos, not_yet("Sidecar", "ingress"));
    }
    if let Some(p) = &sc.inbound_connection_pool {
        warn(p.pos, not_yet("Sidecar", "inboundConnectionPool"));
    }
    for e in &sc.egress {
        if e.port.is_some() || e.bind.is_some() || e.capture_mode.is_some() {
            warn(
                e.at.0,
                "Sidecar egress `port`/`bind`/`captureMode` are not honoured yet: the hosts apply to every port".into(),
            );
        }
    }
    if let Some(p) = &sc.outbound_traffic_policy
        && p.egress_proxy.is_some()
    {
        warn(p.pos, not_yet("Sidecar", "outboundTrafficPolicy.egressProxy"));
    }
}

fn gateway(gw: &GatewaySpec, warn: &mut impl FnMut(Pos, String)) {
    for s in &gw.servers {
        let proto = s.port.as_ref().and_then(|p| p.protocol.as_ref());
        if let Some(p) = proto
            && !matches!(p.to_ascii_uppercase().as_str(), "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB")
        {
            warn(
                p.pos,
                format!("Gateway servers with protocol {} are not supported yet (HTTP only): ignored", p.value),
            );
        }
        if let Some(t) = &s.tls {
            warn(t.pos, "Gateway server `tls` is not honoured yet: it is ignored".into());
        }
    }
}

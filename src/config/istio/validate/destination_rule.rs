//! DestinationRule rules (VALIDATION.md §2).

use std::collections::HashSet;

use crate::config::diag::Pos;
use crate::config::istio::Resource;
use crate::config::istio::destination_rule::*;
use crate::config::names;
use crate::config::yaml::Spanned;

use super::{V, check_duration, export_to, port};

pub(super) fn destination_rule(v: &mut V, res: &Resource, dr: &DestinationRuleSpec) {
    let at = if dr.at.0 == Pos::default() { res.origin.pos } else { dr.at.0 };
    if dr.host.is_empty() {
        v.err(at, "missing field `host`");
    } else if let Err(e) = names::check_wildcard_domain(&dr.host) {
        v.err(dr.host.pos, e);
    }
    if let Some(tp) = &dr.traffic_policy {
        traffic_policy(v, tp);
    }
    let mut seen = HashSet::new();
    for s in &dr.subsets {
        if s.name.is_empty() {
            v.err(s.at.0, "subset name cannot be empty");
        } else if !names::is_dns1123_label(&s.name) {
            v.err(s.name.pos, format!("subset name is invalid: {}", s.name.value));
        } else if !seen.insert(s.name.value.clone()) {
            v.err(s.name.pos, format!("duplicate subset names: {}", s.name.value));
        }
        for (k, val) in &s.labels {
            if let Err(e) = names::check_label_key(k).and_then(|_| names::check_label_value(val)) {
                v.err(s.at.0, e);
            }
        }
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(v, tp);
        }
    }
    export_to(v, &dr.export_to, false);
    if let Some(ws) = &dr.workload_selector {
        for k in ws.match_labels.keys() {
            if k.is_empty() {
                v.err(at, format!("empty key is not supported in selector: {k:?}"));
            } else if k.contains('*') {
                v.err(at, format!("wildcard is not supported in selector: {k:?}"));
            }
        }
        let ns = &res.metadata.namespace;
        if dr.export_to.len() > 1 {
            v.err(at, "destination rule with workload selector cannot have multiple entries in exportTo");
        } else if dr.export_to.iter().any(|e| e.as_str() != "." && e.as_str() != ns) {
            v.err(at, "destination rule with workload selector cannot have exportTo beyond current namespace");
        }
    }
}

fn traffic_policy(v: &mut V, tp: &TrafficPolicy) {
    let empty = tp.load_balancer.is_none()
        && tp.connection_pool.is_none()
        && tp.outlier_detection.is_none()
        && tp.tls.is_none()
        && tp.port_level_settings.is_empty()
        && tp.tunnel.is_none()
        && tp.proxy_protocol.is_none()
        && tp.retry_budget.is_none();
    if empty {
        v.err(tp.at.0, "traffic policy must have at least one field");
    }
    if tp.tunnel.is_some()
        && let Some(pp) = &tp.proxy_protocol
    {
        v.err(pp.pos, "tunnel and proxyProtocol must not be set together");
    }
    if let Some(lb) = &tp.load_balancer {
        load_balancer(v, lb);
    }
    for p in &tp.port_level_settings {
        match &p.port {
            Some(sel) => port(v, &sel.number),
            None => v.err(p.at.0, "portTrafficPolicy must have valid port"),
        }
        if p.load_balancer.is_none() && p.connection_pool.is_none() && p.outlier_detection.is_none() && p.tls.is_none()
        {
            v.err(p.at.0, "port traffic policy must have at least one field");
        }
        if let Some(lb) = &p.load_balancer {
            load_balancer(v, lb);
        }
    }
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u64;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

fn load_balancer(v: &mut V, lb: &Spanned<LoadBalancerSettings>) {
    let policies = usize::from(lb.simple.is_some())
        + usize::from(lb.consistent_hash.is_some())
        + usize::from(lb.backend_utilization.is_some());
    if policies > 1 {
        v.err(lb.pos, "only one of `simple`, `consistentHash` or `backendUtilization` may be set");
    }
    if let Some(w) = &lb.warmup_duration_secs {
        check_duration(v, w);
    }
    let Some(ch) = &lb.consistent_hash else { return };
    let keys = usize::from(ch.http_header_name.is_some())
        + usize::from(ch.http_cookie.is_some())
        + usize::from(ch.use_source_ip.is_some())
        + usize::from(ch.http_query_parameter_name.is_some());
    if keys != 1 {
        v.err(
            ch.pos,
            "consistentHash needs exactly one of `httpHeaderName`, `httpCookie`, `useSourceIp` or `httpQueryParameterName`",
        );
    }
    if let Some(c) = &ch.http_cookie {
        if c.name.is_empty() {
            v.err(c.pos, "name required for HttpCookie");
        }
        if let Some(ttl) = &c.ttl
            && let Err(e) = crate::config::duration::parse_go(ttl)
        {
            v.err(ttl.pos, e);
        }
        let mut names = HashSet::new();
        for a in &c.attributes {
            if a.name.is_empty() {
                v.err(c.pos, "cookie attribute name cannot be empty");
            } else if !names.insert(a.name.clone()) {
                v.err(c.pos, format!("duplicate cookie attribute name: {}", a.name));
            }
        }
    }
    if let Some(m) = &ch.minimum_ring_size {
        v.warn(
            m.pos,
            "consistent hash MinimumRingSize is deprecated, use ConsistentHashLB's RingHash configuration instead",
        );
        if ch.maglev.is_some() || ch.ring_hash.is_some() {
            v.err(m.pos, "only one of MinimumRingSize or Maglev/Ringhash can be specified");
        }
    }
    if let Some(m) = &ch.maglev {
        match m.table_size {
            None | Some(0) => v.err(m.pos, "tableSize must be set for maglev"),
            Some(n) if n >= 5_000_011 => v.err(m.pos, "tableSize must be less than 5000011 for maglev"),
            Some(n) if !is_prime(n) => v.err(m.pos, "tableSize must be a prime number for maglev"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn primes() {
        assert!(super::is_prime(65537) && super::is_prime(2) && !super::is_prime(65536) && !super::is_prime(1));
    }
}

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
    if let Some(cp) = &tp.connection_pool {
        connection_pool(v, cp);
    }
    if let Some(od) = &tp.outlier_detection {
        outlier_detection(v, od);
    }
    if let Some(t) = &tp.tls {
        client_tls(v, t);
    }
    if let Some(t) = &tp.tunnel {
        tunnel(v, t);
    }
    if let Some(lb) = &tp.load_balancer
        && let Some(l) = &lb.locality_lb_setting
        && !l.failover.is_empty()
        && tp.outlier_detection.is_none()
    {
        v.warn(l.pos, "outlier detection policy must be provided for failover");
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
        if let Some(cp) = &p.connection_pool {
            connection_pool(v, cp);
        }
        if let Some(od) = &p.outlier_detection {
            outlier_detection(v, od);
        }
        if let Some(t) = &p.tls {
            client_tls(v, t);
        }
    }
}

fn non_negative(v: &mut V, value: &Option<Spanned<i64>>, what: &str) {
    if let Some(n) = value
        && n.value < 0
    {
        v.err(n.pos, format!("{what} must be non-negative"));
    }
}

fn durations(v: &mut V, list: &[&Option<Spanned<String>>]) {
    for d in list.iter().copied().flatten() {
        check_duration(v, d);
    }
}

fn connection_pool(v: &mut V, cp: &Spanned<ConnectionPoolSettings>) {
    if cp.tcp.is_none() && cp.http.is_none() {
        v.err(cp.pos, "connection pool must have at least one field");
    }
    if let Some(h) = &cp.http {
        non_negative(v, &h.http1_max_pending_requests, "http1 max pending requests");
        non_negative(v, &h.http2_max_requests, "http2 max requests");
        non_negative(v, &h.max_requests_per_connection, "max requests per connection");
        non_negative(v, &h.max_retries, "max retries");
        non_negative(v, &h.max_concurrent_streams, "max concurrent streams");
        durations(v, &[&h.idle_timeout]);
        if let Some(p) = &h.h2_upgrade_policy
            && p.value == H2UpgradePolicy::Upgrade
            && h.use_client_protocol == Some(true)
        {
            v.err(p.pos, "use client protocol must not be true when H2UpgradePolicy is UPGRADE");
        }
        if let Some(k) = &h.http2_keep_alive {
            if k.interval.is_none() {
                v.err(k.pos, "http2 keepalive interval is required");
            }
            if k.timeout.is_none() {
                v.err(k.pos, "http2 keepalive timeout is required");
            }
            durations(v, &[&k.interval, &k.timeout]);
        }
    }
    if let Some(t) = &cp.tcp {
        non_negative(v, &t.max_connections, "max connections");
        durations(v, &[&t.connect_timeout, &t.max_connection_duration]);
        // An idle timeout of 0s turns it off for TCP.
        if let Some(d) = &t.idle_timeout
            && d.as_str() != "0s"
            && d.as_str() != "0"
        {
            check_duration(v, d);
        }
        if let Some(k) = &t.tcp_keepalive {
            durations(v, &[&k.time, &k.interval]);
        }
    }
}

fn outlier_detection(v: &mut V, od: &Spanned<OutlierDetection>) {
    durations(v, &[&od.base_ejection_time, &od.interval]);
    for p in [&od.max_ejection_percent, &od.min_health_percent].into_iter().flatten() {
        if !(0..=100).contains(&p.value) {
            v.err(p.pos, format!("percentage {} is not in range 0..100", p.value));
        }
    }
    if let Some(f) = &od.consecutive_local_origin_failures
        && f.value > 0
        && od.split_external_local_origin_errors != Some(true)
    {
        v.err(
            f.pos,
            "outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false",
        );
    }
    if let Some(c) = &od.consecutive_errors {
        v.warn(
            c.pos,
            "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead",
        );
    }
    for c in &od.outlier_detection_http_error_codes {
        if !(100..=599).contains(&c.value) {
            v.err(c.pos, format!("outlierDetectionHttpErrorCodes: {} is not an HTTP status in 100..599", c.value));
        }
    }
}

fn client_tls(v: &mut V, t: &Spanned<ClientTlsSettings>) {
    let mode = t.mode;
    let has = |o: &Option<String>| o.as_ref().is_some_and(|s| !s.is_empty());
    let credential = has(&t.credential_name);
    if mode == Some(ClientTlsMode::Mutual) && !credential {
        if !has(&t.client_certificate) {
            v.err(t.pos, "client certificate required for mutual tls");
        }
        if !has(&t.private_key) {
            v.err(t.pos, "private key required for mutual tls");
        }
    }
    if matches!(mode, Some(ClientTlsMode::Simple | ClientTlsMode::Mutual))
        && credential
        && (has(&t.client_certificate) || has(&t.ca_certificates) || has(&t.private_key) || has(&t.ca_crl))
    {
        v.err(t.pos, "cannot specify client certificates or CA certificate or CA CRL If credentialName is set");
    }
    if t.insecure_skip_verify == Some(true) {
        match mode {
            Some(ClientTlsMode::Simple) if has(&t.ca_certificates) || credential || !t.subject_alt_names.is_empty() => {
                v.err(
                    t.pos,
                    "cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true",
                );
            }
            Some(ClientTlsMode::Mutual) if has(&t.ca_certificates) || !t.subject_alt_names.is_empty() => {
                v.err(t.pos, "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true");
            }
            _ => {}
        }
    }
}

fn tunnel(v: &mut V, t: &Spanned<TunnelSettings>) {
    if let Some(p) = &t.protocol
        && !matches!(p.as_str(), "CONNECT" | "POST")
    {
        v.err(p.pos, "tunnel protocol must be \"CONNECT\" or \"POST\"");
    }
    let host = t.target_host.as_str();
    if host.is_empty() || (host.parse::<std::net::IpAddr>().is_err() && names::check_fqdn(host).is_err()) {
        let pos = if t.target_host.pos == Pos::default() { t.pos } else { t.target_host.pos };
        v.err(pos, format!("tunnel target host must be valid FQDN or IP address: {host:?}"));
    }
    match &t.target_port {
        Some(p) if (1..=65535).contains(&p.value) => {}
        Some(p) => v.err(
            p.pos,
            format!("tunnel target port is invalid: port number {} must be in the range 1..65535", p.value),
        ),
        None => v.err(t.pos, "tunnel target port is invalid: port number 0 must be in the range 1..65535"),
    }
}

fn locality(v: &mut V, l: &Spanned<LocalityLbSetting>) {
    if !l.distribute.is_empty() && !l.failover.is_empty() {
        v.err(l.pos, "can not simultaneously specify 'distribute' and 'failover'");
    }
    let wildcard_ok = |loc: &str| loc.matches('*').count() <= 1 && (!loc.contains('*') || loc.ends_with('*'));
    let mut seen: Vec<String> = Vec::new();
    for d in &l.distribute {
        if !wildcard_ok(&d.from) {
            v.err(d.pos, format!("locality {} wildcard '*' number can not exceed 1 and must be in the end", d.from));
        }
        let prefix = d.from.trim_end_matches('*');
        if seen.iter().any(|s| s.starts_with(prefix) || prefix.starts_with(s.as_str())) {
            v.err(d.pos, format!("locality {} overlap with previous specified ones", d.from));
        }
        seen.push(prefix.to_string());
        let mut total = 0u64;
        for (to, w) in &d.to {
            if !wildcard_ok(to) {
                v.err(d.pos, format!("locality {to} wildcard '*' number can not exceed 1 and must be in the end"));
            }
            if !(1..=100).contains(w) {
                v.err(d.pos, "locality weight must be in range [1, 100]");
            }
            total += u64::from(*w);
        }
        if total != 100 {
            v.err(d.pos, format!("total locality weight {total} != 100"));
        }
    }
    for f in &l.failover {
        if f.from == f.to {
            v.err(f.pos, "locality lb failover settings must specify different regions");
        }
        if f.from.contains('/') || f.to.contains('/') {
            v.err(f.pos, "locality lb failover only specify region");
        }
        if f.from.contains('*') || f.to.contains('*') {
            v.err(f.pos, "locality lb failover region should not contain '*' wildcard");
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
    if lb.locality_lb_setting.is_some() && lb.zone_aware_lb_setting.is_some() {
        v.err(lb.pos, "only one of localityLbSetting and zoneAwareLbSetting can be set");
    }
    if let Some(l) = &lb.locality_lb_setting {
        locality(v, l);
    }
    if let Some(w) = &lb.warmup {
        match &w.duration {
            None => v.err(w.pos, "duration is required"),
            Some(d) => check_duration(v, d),
        }
        if let Some(m) = &w.minimum_percent
            && m.value > 100.0
        {
            v.err(m.pos, "minimumPercent value should be less than or equal to 100");
        }
        if let Some(a) = &w.aggression
            && a.value <= 0.0
        {
            v.err(a.pos, "aggression should be greater than 0");
        }
    }
    if lb.warmup_duration_secs.is_some() && lb.warmup.is_some() {
        v.err(lb.pos, "only one of warmupDurationSecs or warmup can be set");
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

//! Name rules shared by the mesh file and Istio resources (Kubernetes / Istio conventions).

/// RFC 1123 label as Istio checks it (upper case accepted, at most 63 characters).
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// Kubernetes Service names: lower case, start with a letter (RFC 1035 label).
pub fn is_dns1035_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && (b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Lower-case DNS subdomain (service accounts, namespaces' longer form).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| is_dns1123_label(l) && !l.bytes().any(|c| c.is_ascii_uppercase()))
}

fn is_qualified_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Label key check with Istio's messages (`labels.Instance.Validate`).
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.len() > 253 {
            return Err(format!("invalid tag key: {key:?} (DNS prefix is too long)"));
        }
        if !is_dns1123_subdomain(p) {
            return Err(format!("invalid tag key: {key:?}"));
        }
    }
    if name.len() > 63 {
        return Err(format!("invalid tag key: {key:?} (name is too long)"));
    }
    if !is_qualified_name(name) {
        return Err(format!("invalid tag key: {key:?}"));
    }
    Ok(())
}

pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_qualified_name(value) { Ok(()) } else { Err(format!("invalid tag value: {value:?}")) }
}

fn is_wildcard_label(l: &str) -> bool {
    // `*`, `*foo`, `*-foo` or a plain label.
    match l.strip_prefix('*') {
        Some("") => true,
        Some(rest) => rest.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') && rest.len() < 63,
        None => is_dns1123_label(l),
    }
}

/// Istio's `ValidateWildcardDomain` (VirtualService hosts, destination hosts, ...).
pub fn check_wildcard_domain(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    if host.len() > 255 {
        return Err(format!("domain name {host:?} too long (max 255)"));
    }
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    let labels: Vec<&str> = trimmed.split('.').collect();
    for (i, l) in labels.iter().enumerate() {
        let ok = if i == 0 { is_wildcard_label(l) } else { is_dns1123_label(l) };
        if !ok {
            return Err(format!("domain name {host:?} invalid (label {l:?} invalid)"));
        }
    }
    if labels.len() > 1
        && let Some(tld) = labels.last()
        && tld.bytes().all(|c| c.is_ascii_digit())
    {
        return Err(format!("domain name {host:?} invalid (top level domain {tld:?} cannot be all-numeric)"));
    }
    Ok(())
}

/// Istio's `ValidateFQDN`: like the wildcard rule, with no wildcard label.
pub fn check_fqdn(host: &str) -> Result<(), String> {
    if host.contains('*') {
        return Err(format!("domain name {host:?} invalid (label \"*\" invalid)"));
    }
    check_wildcard_domain(host)
}

/// A host with `*` that is not `*` itself and does not start with `*.`.
pub fn is_partial_wildcard(host: &str) -> bool {
    host.contains('*') && host.len() > 1 && !host.starts_with("*.")
}

/// Gateway server hosts: `[namespace/]dnsName`.
pub fn check_gateway_host(host: &str) -> Result<(), String> {
    let (ns, dns) = match host.split_once('/') {
        Some((ns, dns)) => (Some(ns), dns),
        None => (None, host),
    };
    if let Some(ns) = ns {
        if ns.is_empty() || dns.is_empty() {
            return Err("config namespace and dnsName in host entry cannot be empty".into());
        }
        if !(ns == "*" || ns == "." || is_dns1123_label(ns)) {
            return Err(format!("invalid namespace value {ns:?} in gateway"));
        }
    }
    if dns.parse::<std::net::IpAddr>().is_ok() || dns == "*" {
        return Ok(());
    }
    if is_partial_wildcard(dns) {
        return Err(format!("partial wildcard {dns:?} not allowed"));
    }
    if !dns.contains('.') {
        return Err("short names (non FQDN) are not allowed".into());
    }
    check_wildcard_domain(dns)
}

/// An RFC 7230 token (header names).
pub fn is_http_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_and_name_rules() {
        assert!(is_dns1123_label("reviews-v1") && is_dns1123_label("Reviews"));
        assert!(!is_dns1123_label("-a") && !is_dns1123_label("a_b") && !is_dns1123_label(""));
        assert!(is_dns1035_label("reviews") && !is_dns1035_label("1abc") && !is_dns1035_label("Abc"));
        assert!(is_dns1123_subdomain("bookinfo-reviews") && !is_dns1123_subdomain("a..b"));
        assert!(check_label_key("app.kubernetes.io/name").is_ok());
        assert!(check_label_key("version").is_ok());
        assert_eq!(check_label_key("bad key"), Err("invalid tag key: \"bad key\"".into()));
        assert!(check_label_value("v1.2_x").is_ok() && check_label_value("").is_ok());
        assert!(check_label_value("a b").is_err());
    }

    #[test]
    fn host_rules_follow_istio() {
        assert!(check_wildcard_domain("reviews").is_ok());
        assert!(check_wildcard_domain("*.example.com").is_ok());
        assert!(check_wildcard_domain("*").is_ok());
        assert!(check_wildcard_domain("istio.io.").is_ok());
        assert_eq!(check_wildcard_domain(""), Err("empty domain name not allowed".into()));
        assert_eq!(
            check_wildcard_domain("a.*.com"),
            Err("domain name \"a.*.com\" invalid (label \"*\" invalid)".into())
        );
        assert_eq!(
            check_wildcard_domain("a.123"),
            Err("domain name \"a.123\" invalid (top level domain \"123\" cannot be all-numeric)".into())
        );
        assert!(check_gateway_host("*").is_ok() && check_gateway_host("ns/*.example.com").is_ok());
        assert_eq!(check_gateway_host("reviews"), Err("short names (non FQDN) are not allowed".into()));
        assert_eq!(check_gateway_host("a*.b.com"), Err("partial wildcard \"a*.b.com\" not allowed".into()));
        assert!(is_http_token("end-user") && !is_http_token("bad header"));
    }
}

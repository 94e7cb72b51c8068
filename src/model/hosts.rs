//! Host names: splitting `host:port`, and resolving the forms a client may use for a mesh
//! service (`svc`, `svc:port`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`).

use std::collections::HashMap;

use super::topology::{CLUSTER_DOMAIN, Service};

/// Splits an authority into host and port (`[::1]:80` → `::1`, 80). A port that is not a
/// number leaves the whole string as the host.
pub fn split_authority(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some((host, after)) = rest.split_once(']') {
            let port = after.strip_prefix(':').and_then(|p| parse_port(p.as_bytes()));
            return (host, port);
        }
        return (authority, None);
    }
    // Bytes, not chars, from the end: this runs several times per request.
    let b = authority.as_bytes();
    let mut i = b.len();
    while i > 0 && b[i - 1].is_ascii_digit() {
        i -= 1;
    }
    if i == 0 || i == b.len() || b[i - 1] != b':' || b[..i - 1].contains(&b':') {
        return (authority, None);
    }
    match parse_port(&b[i..]) {
        Some(p) => (&authority[..i - 1], Some(p)),
        None => (authority, None),
    }
}

/// A port: ASCII digits, at most 65535 (no sign, unlike `str::parse`).
fn parse_port(digits: &[u8]) -> Option<u16> {
    if digits.is_empty() {
        return None;
    }
    let mut n: u32 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u32::from(d - b'0');
        if n > u32::from(u16::MAX) {
            return None;
        }
    }
    u16::try_from(n).ok()
}

/// Lower-cases and drops a trailing dot, allocating only when needed.
pub fn normalize(host: &str) -> std::borrow::Cow<'_, str> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

/// The fully qualified name of `host` as written in a resource of `namespace`, as Istio's
/// `ResolveShortnameToFQDN`: only dot-less names are expanded, in the resource's namespace.
pub fn qualify(host: &str, namespace: &str) -> String {
    let host = normalize(host);
    if host == "*" || host.contains('.') || host.parse::<std::net::IpAddr>().is_ok() {
        return host.into_owned();
    }
    format!("{host}.{namespace}.{CLUSTER_DOMAIN}")
}

/// Every name that reaches a service (mesh services in all their Kubernetes forms, ServiceEntry
/// hosts including `*.` wildcards), mapped to its index in the registry.
#[derive(Debug, Default)]
pub struct HostIndex {
    names: HashMap<String, usize>,
    /// (`.example.com` for `*.example.com`, index), longest suffix first.
    wildcards: Vec<(String, usize)>,
}

impl HostIndex {
    pub fn new(services: &[Service], mesh_namespace: &str) -> Self {
        let mut idx = HostIndex::default();
        for (i, s) in services.iter().enumerate() {
            idx.add_mesh_service(i, &s.name, &s.namespace, &s.fqdn, mesh_namespace);
        }
        idx
    }

    pub fn add_mesh_service(&mut self, i: usize, name: &str, namespace: &str, fqdn: &str, mesh_namespace: &str) {
        self.names.insert(fqdn.to_string(), i);
        self.names.insert(format!("{name}.{namespace}.svc"), i);
        self.names.insert(format!("{name}.{namespace}"), i);
        if namespace == mesh_namespace {
            self.names.entry(name.to_string()).or_insert(i);
        }
    }

    /// A ServiceEntry host; returns false when the name is already taken.
    pub fn add_host(&mut self, host: &str, i: usize) -> bool {
        let host = normalize(host).into_owned();
        if let Some(suffix) = host.strip_prefix('*') {
            if self.wildcards.iter().any(|(s, _)| s == suffix) {
                return false;
            }
            self.wildcards.push((suffix.to_string(), i));
            self.wildcards.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
            return true;
        }
        if self.names.contains_key(&host) {
            return false;
        }
        self.names.insert(host, i);
        true
    }

    fn lookup(&self, host: &str) -> Option<usize> {
        if let Some(i) = self.names.get(host) {
            return Some(*i);
        }
        self.wildcards
            .iter()
            .find(|(suffix, _)| host.ends_with(suffix.as_str()) && host.len() > suffix.len())
            .map(|(_, i)| *i)
    }

    /// Resolves an authority (`reviews:9080`) to a service index and the port, if given.
    pub fn resolve(&self, authority: &str) -> Option<(usize, Option<u16>)> {
        let (host, port) = split_authority(authority);
        self.resolve_split(host, port)
    }

    /// `resolve` for an authority already split by `split_authority`.
    pub fn resolve_split(&self, host: &str, port: Option<u16>) -> Option<(usize, Option<u16>)> {
        self.lookup(&normalize(host)).map(|i| (i, port))
    }

    /// Resolves a fully qualified name (or a ServiceEntry host).
    pub fn by_fqdn(&self, fqdn: &str) -> Option<usize> {
        self.lookup(fqdn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::mesh::{PortDef, Protocol};

    fn svc(name: &str, ns: &str) -> Service {
        Service {
            name: name.into(),
            namespace: ns.into(),
            fqdn: format!("{name}.{ns}.svc.cluster.local"),
            ports: vec![PortDef { name: Some("http".into()), port: 9080, protocol: Protocol::Http }],
            service_account: name.into(),
        }
    }

    #[test]
    fn all_kubernetes_forms_resolve() {
        let idx = HostIndex::new(&[svc("reviews", "default"), svc("ratings", "default")], "default");
        for form in [
            "reviews",
            "reviews:9080",
            "reviews.default",
            "reviews.default.svc",
            "reviews.default.svc.cluster.local",
            "Reviews.Default.svc.cluster.local.",
            "reviews.default.svc.cluster.local:9080",
        ] {
            assert_eq!(idx.resolve(form).map(|r| r.0), Some(0), "{form}");
        }
        assert_eq!(idx.resolve("ratings:9080"), Some((1, Some(9080))));
        assert_eq!(idx.resolve("reviews.other"), None);
        assert_eq!(idx.resolve("example.com"), None);
    }

    #[test]
    fn service_entry_hosts_and_wildcards() {
        let mut idx = HostIndex::new(&[svc("reviews", "default")], "default");
        assert!(idx.add_host("www.googleapis.com", 1));
        assert!(idx.add_host("*.example.com", 2));
        assert!(idx.add_host("*.api.example.com", 3));
        assert!(!idx.add_host("reviews", 9), "taken names are not overridden");
        assert_eq!(idx.resolve("www.googleapis.com:443"), Some((1, Some(443))));
        assert_eq!(idx.resolve("a.example.com"), Some((2, None)));
        assert_eq!(idx.resolve("v1.api.example.com"), Some((3, None)), "the longest wildcard wins");
        assert_eq!(idx.resolve("example.com"), None);
    }

    #[test]
    fn authority_splitting() {
        assert_eq!(split_authority("a:80"), ("a", Some(80)));
        assert_eq!(split_authority("a"), ("a", None));
        assert_eq!(split_authority("[::1]:8080"), ("::1", Some(8080)));
        assert_eq!(split_authority("a:xyz"), ("a:xyz", None));
        assert_eq!(split_authority("a:"), ("a:", None));
        assert_eq!(split_authority("a:+80"), ("a:+80", None), "no sign");
        assert_eq!(split_authority("a:65535"), ("a", Some(65535)));
        assert_eq!(split_authority("a:65536"), ("a:65536", None));
        assert_eq!(split_authority("a:000080"), ("a", Some(80)));
        assert_eq!(split_authority("a:99999999999999999999"), ("a:99999999999999999999", None));
        assert_eq!(split_authority("a:4294967376"), ("a:4294967376", None), "2^32 + 80 does not wrap to 80");
        assert_eq!(split_authority("::1"), ("::1", None), "a bare IPv6 address has no port");
        assert_eq!(split_authority("[::1]"), ("::1", None));
        assert_eq!(split_authority("ünï.example:9"), ("ünï.example", Some(9)));
    }

    #[test]
    fn short_names_qualify_in_the_resource_namespace() {
        assert_eq!(qualify("reviews", "prod"), "reviews.prod.svc.cluster.local");
        assert_eq!(qualify("Reviews", "prod"), "reviews.prod.svc.cluster.local");
        assert_eq!(qualify("reviews.default", "prod"), "reviews.default");
        assert_eq!(qualify("www.example.com", "prod"), "www.example.com");
        assert_eq!(qualify("*.example.com", "prod"), "*.example.com");
    }
}

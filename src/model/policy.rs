//! Route policies compiled from VirtualService fields, as plain data the data plane executes:
//! retries (Envoy's `retry_on` semantics), fault injection, URI/authority rewrites, redirects,
//! header operations, CORS and mirroring.

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use regex::Regex;
use serde::Serialize;

use super::cluster::Cluster;
use super::routes::StrMatch;

/// Envoy's `retry_on` conditions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RetryOn(u32);

impl RetryOn {
    pub const FIVE_XX: RetryOn = RetryOn(1);
    pub const GATEWAY_ERROR: RetryOn = RetryOn(1 << 1);
    pub const RESET: RetryOn = RetryOn(1 << 2);
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1 << 3);
    pub const RETRIABLE_4XX: RetryOn = RetryOn(1 << 4);
    pub const REFUSED_STREAM: RetryOn = RetryOn(1 << 5);
    pub const RETRIABLE_STATUS_CODES: RetryOn = RetryOn(1 << 6);
    pub const CANCELLED: RetryOn = RetryOn(1 << 7);
    pub const DEADLINE_EXCEEDED: RetryOn = RetryOn(1 << 8);
    pub const INTERNAL: RetryOn = RetryOn(1 << 9);
    pub const RESOURCE_EXHAUSTED: RetryOn = RetryOn(1 << 10);
    pub const UNAVAILABLE: RetryOn = RetryOn(1 << 11);

    pub fn has(self, other: RetryOn) -> bool {
        self.0 & other.0 != 0
    }

    fn add(&mut self, other: RetryOn) {
        self.0 |= other.0;
    }

    fn by_name(name: &str) -> Option<RetryOn> {
        Some(match name {
            "5xx" => Self::FIVE_XX,
            "gateway-error" => Self::GATEWAY_ERROR,
            "reset" | "reset-before-request" => Self::RESET,
            "connect-failure" => Self::CONNECT_FAILURE,
            "retriable-4xx" => Self::RETRIABLE_4XX,
            "refused-stream" => Self::REFUSED_STREAM,
            "retriable-status-codes" => Self::RETRIABLE_STATUS_CODES,
            "cancelled" => Self::CANCELLED,
            "deadline-exceeded" => Self::DEADLINE_EXCEEDED,
            "internal" => Self::INTERNAL,
            "resource-exhausted" => Self::RESOURCE_EXHAUSTED,
            "unavailable" => Self::UNAVAILABLE,
            _ => return None,
        })
    }
}

/// Why an attempt got no response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptFailure {
    ConnectFailure,
    Reset,
    RefusedStream,
    PerTryTimeout,
}

#[derive(Clone, Debug, Serialize)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on: RetryOn,
    pub status_codes: Vec<u16>,
    /// Base interval of the jittered exponential back-off (Envoy: 25ms, capped at 10x).
    pub backoff: Duration,
}

impl RetryPolicy {
    /// Istio's policy when a route sets no `retries`: 2 retries on connect-failure,
    /// refused-stream, unavailable, cancelled and retriable-status-codes (503).
    pub fn istio_default() -> RetryPolicy {
        let mut on = RetryOn::CONNECT_FAILURE;
        for r in [RetryOn::REFUSED_STREAM, RetryOn::UNAVAILABLE, RetryOn::CANCELLED, RetryOn::RETRIABLE_STATUS_CODES] {
            on.add(r);
        }
        RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            on,
            status_codes: vec![503],
            backoff: Duration::from_millis(25),
        }
    }

    pub fn none() -> RetryPolicy {
        RetryPolicy {
            attempts: 0,
            per_try_timeout: None,
            on: RetryOn::default(),
            status_codes: vec![],
            backoff: Duration::ZERO,
        }
    }

    /// From `retries`: `retryOn` names and bare status codes (which imply retriable-status-codes);
    /// without `retryOn`, Istio's default conditions.
    pub fn from_parts(
        attempts: u32,
        per_try_timeout: Option<Duration>,
        retry_on: Option<&str>,
        backoff: Option<Duration>,
    ) -> RetryPolicy {
        let mut p = RetryPolicy::istio_default();
        p.attempts = attempts;
        p.per_try_timeout = per_try_timeout;
        if let Some(b) = backoff {
            p.backoff = b;
        }
        if let Some(list) = retry_on {
            p.on = RetryOn::default();
            p.status_codes.clear();
            for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if let Some(r) = RetryOn::by_name(item) {
                    p.on.add(r);
                } else if let Ok(code) = item.parse::<u16>() {
                    p.status_codes.push(code);
                    p.on.add(RetryOn::RETRIABLE_STATUS_CODES);
                }
            }
        }
        p
    }

    /// Whether a response may be retried (Envoy's conditions on status and `grpc-status`).
    pub fn retriable_response(&self, status: u16, headers: &HeaderMap) -> bool {
        let on = self.on;
        if on.has(RetryOn::FIVE_XX) && (500..600).contains(&status) {
            return true;
        }
        if on.has(RetryOn::GATEWAY_ERROR) && matches!(status, 502..=504) {
            return true;
        }
        if on.has(RetryOn::RETRIABLE_4XX) && status == 409 {
            return true;
        }
        if on.has(RetryOn::RETRIABLE_STATUS_CODES) && self.status_codes.contains(&status) {
            return true;
        }
        static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
        let grpc = headers.get(&GRPC_STATUS).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u32>().ok());
        match grpc {
            Some(1) => on.has(RetryOn::CANCELLED),
            Some(4) => on.has(RetryOn::DEADLINE_EXCEEDED),
            Some(8) => on.has(RetryOn::RESOURCE_EXHAUSTED),
            Some(13) => on.has(RetryOn::INTERNAL),
            Some(14) => on.has(RetryOn::UNAVAILABLE),
            _ => false,
        }
    }

    /// Whether a failed attempt (no response) may be retried.
    pub fn retriable_failure(&self, f: AttemptFailure) -> bool {
        let on = self.on;
        let five = on.has(RetryOn::FIVE_XX);
        match f {
            AttemptFailure::ConnectFailure => five || on.has(RetryOn::CONNECT_FAILURE) || on.has(RetryOn::RESET),
            AttemptFailure::Reset => five || on.has(RetryOn::RESET),
            AttemptFailure::RefusedStream => five || on.has(RetryOn::REFUSED_STREAM),
            AttemptFailure::PerTryTimeout => five || on.has(RetryOn::GATEWAY_ERROR) || on.has(RetryOn::RESET),
        }
    }

    /// Envoy's back-off before retry `n` (1-based): full jitter over an exponentially growing
    /// interval, capped at ten times the base.
    pub fn backoff(&self, n: u32, random: f64) -> Duration {
        let cap = self.backoff * 10;
        let window = self.backoff.saturating_mul(1 << n.min(16).saturating_sub(1)).min(cap);
        window.mul_f64(random.clamp(0.0, 1.0))
    }
}

#[derive(Clone, Copy, Debug, Serialize)]
pub enum Abort {
    Http(u16),
    /// A gRPC status code: answered as HTTP 200 with `grpc-status`.
    Grpc(u32),
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Fault {
    /// (delay, percentage 0..=100)
    pub delay: Option<(Duration, f64)>,
    pub abort: Option<(Abort, f64)>,
}

/// gRPC status names to codes.
pub fn grpc_code(name: &str) -> Option<u32> {
    crate::config::istio::validate::GRPC_CODES.iter().position(|c| *c == name).map(|i| i as u32)
}

#[derive(Clone, Debug, Serialize)]
pub struct Rewrite {
    /// Replaces the matched prefix (prefix matches) or the whole path.
    pub uri: Option<String>,
    /// (pattern, substitution in Rust's `$1` syntax)
    #[serde(skip)]
    pub regex: Option<(Regex, String)>,
    #[serde(skip)]
    pub authority: Option<HeaderValue>,
}

impl Rewrite {
    /// The rewritten `path?query`, given the prefix the route matched on (if it was a prefix match).
    pub fn path(&self, path_and_query: &str, matched_prefix: Option<&str>) -> Option<String> {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let new_path = if let Some(uri) = &self.uri {
            match matched_prefix {
                Some(prefix) if path.starts_with(prefix) => format!("{uri}{}", &path[prefix.len()..]),
                _ => uri.clone(),
            }
        } else if let Some((re, sub)) = &self.regex {
            re.replace_all(path, sub.as_str()).into_owned()
        } else {
            return None;
        };
        let new_path = if new_path.is_empty() { "/".to_string() } else { new_path };
        Some(match query {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path,
        })
    }
}

/// Converts RE2 substitution syntax (`\1`) to Rust's (`${1}`).
pub fn substitution(re2: &str) -> String {
    let mut out = String::with_capacity(re2.len());
    let mut chars = re2.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(|d| d.is_ascii_digit()) => {
                out.push_str("${");
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()).copied() {
                    out.push(d);
                    chars.next();
                }
                out.push('}');
            }
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

#[derive(Clone, Copy, Debug, Serialize)]
pub enum RedirectPort {
    Fixed(u16),
    FromProtocolDefault,
    FromRequestPort,
}

#[derive(Clone, Debug, Serialize)]
pub struct Redirect {
    pub uri: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub authority: Option<String>,
    pub port: Option<RedirectPort>,
    pub scheme: Option<String>,
    pub code: u16,
}

impl Redirect {
    /// The `Location` for a request with `scheme`, `authority` (host[:port]) and `path?query`.
    pub fn location(
        &self,
        scheme: &str,
        authority: &str,
        path_and_query: &str,
        matched_prefix: Option<&str>,
    ) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(scheme);
        let (req_host, req_port) = crate::model::hosts::split_authority(authority);
        let host = match &self.authority {
            Some(a) => crate::model::hosts::split_authority(a).0.to_string(),
            None => req_host.to_string(),
        };
        let port = match self.port {
            Some(RedirectPort::Fixed(p)) => Some(p),
            Some(RedirectPort::FromProtocolDefault) => None,
            Some(RedirectPort::FromRequestPort) => req_port,
            None => match &self.authority {
                Some(a) => crate::model::hosts::split_authority(a).1,
                None => req_port,
            },
        };
        let default_port = if scheme == "https" { 443 } else { 80 };
        let host_port = match port {
            Some(p) if p != default_port => format!("{host}:{p}"),
            _ => host,
        };
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let new_path = if let Some(uri) = &self.uri {
            uri.clone()
        } else if let (Some(pr), Some(prefix)) = (&self.prefix_rewrite, matched_prefix) {
            format!("{pr}{}", path.strip_prefix(prefix).unwrap_or(path))
        } else {
            path.to_string()
        };
        match query {
            Some(q) if !new_path.contains('?') => format!("{scheme}://{host_port}{new_path}?{q}"),
            _ => format!("{scheme}://{host_port}{new_path}"),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Ops {
    #[serde(skip)]
    pub set: Vec<(HeaderName, HeaderValue)>,
    #[serde(skip)]
    pub add: Vec<(HeaderName, HeaderValue)>,
    #[serde(skip)]
    pub remove: Vec<HeaderName>,
}

impl Ops {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Envoy's order: remove, then set (replacing), then add (appending).
    pub fn apply(&self, h: &mut HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct HeaderOps {
    pub request: Ops,
    pub response: Ops,
}

#[derive(Clone, Debug, Serialize)]
pub struct Cors {
    pub origins: Vec<StrMatch>,
    pub allow_methods: Option<String>,
    pub allow_headers: Option<String>,
    pub expose_headers: Option<String>,
    pub max_age_secs: Option<u64>,
    pub allow_credentials: bool,
    /// Preflights from origins that are not allowed go upstream (Istio's default) or are ignored.
    pub forward_unmatched_preflights: bool,
}

impl Cors {
    pub fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|m| m.matches(origin))
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Mirror {
    #[serde(serialize_with = "ser_cluster")]
    pub cluster: Arc<Cluster>,
    /// 0..=100
    pub percent: f64,
}

fn ser_cluster<S: serde::Serializer>(c: &Arc<Cluster>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&c.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn istio_default_retries_connect_failures_and_503() {
        let p = RetryPolicy::istio_default();
        assert_eq!(p.attempts, 2);
        assert!(p.retriable_response(503, &HeaderMap::new()));
        assert!(!p.retriable_response(500, &HeaderMap::new()));
        assert!(p.retriable_failure(AttemptFailure::ConnectFailure));
        assert!(p.retriable_failure(AttemptFailure::RefusedStream));
        assert!(!p.retriable_failure(AttemptFailure::Reset));
        assert!(p.retriable_response(200, &hm(&[("grpc-status", "14")])), "unavailable");
        assert!(!p.retriable_response(200, &hm(&[("grpc-status", "13")])));
    }

    #[test]
    fn retry_on_names_and_bare_codes() {
        let p = RetryPolicy::from_parts(3, None, Some("gateway-error,connect-failure,409"), None);
        assert!(p.retriable_response(502, &HeaderMap::new()) && p.retriable_response(504, &HeaderMap::new()));
        assert!(!p.retriable_response(500, &HeaderMap::new()));
        assert!(p.retriable_response(409, &HeaderMap::new()), "a bare code implies retriable-status-codes");
        assert!(p.retriable_failure(AttemptFailure::PerTryTimeout));
        assert!(!p.retriable_failure(AttemptFailure::Reset));
        let five = RetryPolicy::from_parts(1, None, Some("5xx"), None);
        assert!(five.retriable_response(500, &HeaderMap::new()) && five.retriable_failure(AttemptFailure::Reset));
        let grpc = RetryPolicy::from_parts(1, None, Some("internal,deadline-exceeded"), None);
        assert!(grpc.retriable_response(200, &hm(&[("grpc-status", "13")])));
        assert!(grpc.retriable_response(200, &hm(&[("grpc-status", "4")])));
        assert!(!grpc.retriable_response(200, &hm(&[("grpc-status", "0")])));
    }

    #[test]
    fn backoff_is_jittered_exponential_and_capped() {
        let p = RetryPolicy::istio_default();
        assert_eq!(p.backoff(1, 1.0), Duration::from_millis(25));
        assert_eq!(p.backoff(2, 1.0), Duration::from_millis(50));
        assert_eq!(p.backoff(10, 1.0), Duration::from_millis(250));
        assert_eq!(p.backoff(3, 0.5), Duration::from_millis(50));
        assert_eq!(p.backoff(3, 0.0), Duration::ZERO);
    }

    #[test]
    fn rewrites_replace_the_matched_prefix_or_the_path() {
        let r = Rewrite { uri: Some("/v2/".into()), regex: None, authority: None };
        assert_eq!(r.path("/v1/items?x=1", Some("/v1/")).as_deref(), Some("/v2/items?x=1"));
        assert_eq!(r.path("/exact", None).as_deref(), Some("/v2/"));
        let re = Rewrite {
            uri: None,
            regex: Some((Regex::new("^/service/([^/]+)(/.*)$").unwrap(), substitution("\\2/instance/\\1"))),
            authority: None,
        };
        assert_eq!(re.path("/service/foo/v1/api?q", None).as_deref(), Some("/v1/api/instance/foo?q"));
        assert_eq!(substitution("a$b\\12"), "a$$b${12}");
    }

    #[test]
    fn redirect_locations() {
        let r = Redirect {
            uri: Some("/new".into()),
            prefix_rewrite: None,
            authority: None,
            port: None,
            scheme: None,
            code: 301,
        };
        assert_eq!(r.location("http", "bookinfo.com:8080", "/old?x=1", None), "http://bookinfo.com:8080/new?x=1");
        let https =
            Redirect { scheme: Some("https".into()), port: Some(RedirectPort::FromProtocolDefault), ..r.clone() };
        assert_eq!(https.location("http", "bookinfo.com:8080", "/old", None), "https://bookinfo.com/new");
        let moved = Redirect {
            uri: None,
            authority: Some("other.example".into()),
            port: Some(RedirectPort::Fixed(9000)),
            ..r.clone()
        };
        assert_eq!(moved.location("http", "a", "/p", None), "http://other.example:9000/p");
        let prefix = Redirect { uri: None, prefix_rewrite: Some("/v2".into()), ..r };
        assert_eq!(prefix.location("http", "a", "/v1/x", Some("/v1")), "http://a/v2/x");
    }

    #[test]
    fn header_ops_remove_set_add() {
        let ops = Ops {
            set: vec![(HeaderName::from_static("x-a"), HeaderValue::from_static("1"))],
            add: vec![(HeaderName::from_static("x-b"), HeaderValue::from_static("2"))],
            remove: vec![HeaderName::from_static("x-c")],
        };
        let mut h = hm(&[("x-a", "old"), ("x-b", "0"), ("x-c", "gone")]);
        ops.apply(&mut h);
        assert_eq!(h["x-a"], "1");
        assert_eq!(h.get_all("x-b").iter().count(), 2);
        assert!(h.get("x-c").is_none());
    }
}

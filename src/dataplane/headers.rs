//! Header handling shared by every proxy: hop-by-hop removal, request ids, and turning a
//! downstream request into an upstream one of the right HTTP version.

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Uri, Version as HttpVersion};

use super::body::Body;
use super::pool::Version;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
pub static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
pub static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName = HeaderName::from_static("x-envoy-upstream-service-time");
pub static X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");
pub static ISTIO_ENVOY: HeaderValue = HeaderValue::from_static("istio-envoy");

/// Whether the request asks for a protocol upgrade (WebSocket and the like).
pub fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))))
}

/// Whether a header is connection-scoped (or one a proxy must not forward).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::PROXY_AUTHORIZATION
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Removes connection-scoped headers (RFC 9110 §7.6.1), keeping `te: trailers` and, for
/// upgrade requests, `connection: upgrade` + `upgrade`. Most messages carry none: one pass
/// over the names settles that without hashing.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    if !h.keys().any(is_hop_by_hop) {
        return;
    }
    let upgrade = is_upgrade(h);
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && n == header::UPGRADE))
        .collect();
    for name in listed {
        h.remove(name);
    }
    for name in ["keep-alive", "proxy-connection", "transfer-encoding"] {
        h.remove(name);
    }
    h.remove(header::TRAILER);
    h.remove(header::PROXY_AUTHORIZATION);
    if h.get(header::TE).is_some_and(|v| v != "trailers") {
        h.remove(header::TE);
    }
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
}

/// A random version-4 UUID, as Envoy generates for `x-request-id`.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hi = (fastrand::u64(..) & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    let lo = (fastrand::u64(..) & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&hi.to_be_bytes());
    bytes[8..].copy_from_slice(&lo.to_be_bytes());
    let mut out = [b'-'; 36];
    let mut j = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            j += 1;
        }
        out[j] = HEX[usize::from(b >> 4)];
        out[j + 1] = HEX[usize::from(b & 0xf)];
        j += 2;
    }
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static("00000000-0000-4000-8000-000000000000"))
}

/// Adds an `x-request-id` when the request has none (or an empty one).
pub fn ensure_request_id(h: &mut HeaderMap) {
    // One lookup (the name is hashed once: ~110 instructions for a custom name).
    match h.entry(X_REQUEST_ID.clone()) {
        http::header::Entry::Vacant(e) => {
            e.insert(new_request_id());
        }
        http::header::Entry::Occupied(mut e) if e.get().is_empty() => {
            e.insert(new_request_id());
        }
        http::header::Entry::Occupied(_) => {}
    }
}

/// A `content-length` value: digits only (RFC 9110 §8.6), as hyper and Envoy read it. Rust's
/// integer parser would also take a leading `+`, which a front proxy could frame differently.
pub fn parse_content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// The authority a request is for, copied out of the request. Authorities are short, and a
/// copy kept in the request's own future costs less than a second reference to the request's
/// bytes: that takes an atomic count, and when the bytes were not shared yet, an allocation
/// to share them (profile step 14 in docs/PERFORMANCE.md).
pub enum Authority {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

const INLINE: usize = 62;

impl Authority {
    pub fn new(s: &str) -> Authority {
        if s.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Authority::Inline { len: s.len() as u8, bytes }
        } else {
            Authority::Heap(s.into())
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            // Copied from a `&str` whole, so always valid UTF-8.
            Authority::Inline { len, bytes } => std::str::from_utf8(&bytes[..*len as usize]).unwrap_or(""),
            Authority::Heap(s) => s,
        }
    }
}

/// The authority a request is for: the URI's (absolute form, HTTP/2) or the `Host` header.
pub fn authority<B>(req: &Request<B>) -> Option<Authority> {
    authority_of(req.uri(), req.headers())
}

/// [`authority`] from a request's parts.
pub fn authority_of(uri: &Uri, headers: &HeaderMap) -> Option<Authority> {
    if let Some(a) = uri.authority() {
        return Some(Authority::new(a.as_str()));
    }
    headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(Authority::new)
}

/// Checks an HTTP/1 request target against its Host header (RFC 9112 §3.2): two `Host`
/// headers, or authority-form (`GET sink HTTP/1.1`) for anything but CONNECT, are 400s
/// (`DPE`); an absolute-form target's authority replaces `Host` (§3.2.2), so the app sees the
/// host the request was sent to, not the client's stale header.
pub fn check_target<B>(req: &mut Request<B>) -> Result<(), super::error::ProxyError> {
    use super::error::ProxyError;
    if req.version() == http::Version::HTTP_2 {
        return Ok(());
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    if hosts.next().is_some() && hosts.next().is_some() {
        return Err(ProxyError::BadRequest("multiple Host headers"));
    }
    let uri = req.uri();
    if req.method() != http::Method::CONNECT && uri.scheme().is_none() && uri.authority().is_some() {
        return Err(ProxyError::BadRequest("authority-form request target is only for CONNECT"));
    }
    if uri.scheme().is_some()
        && let Some(a) = uri.authority()
        && req.headers().get(header::HOST).is_none_or(|h| h.as_bytes() != a.as_str().as_bytes())
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        req.headers_mut().insert(header::HOST, v);
    }
    Ok(())
}

/// `x-envoy-upstream-service-time` for `ms`, from a table for the common values.
pub fn service_time(ms: u64) -> HeaderValue {
    // Static values: cloning one copies a pointer. A value built at run time is shared once
    // cloned, and every worker would then write its reference count per request.
    static SMALL: std::sync::LazyLock<Vec<HeaderValue>> = std::sync::LazyLock::new(|| {
        (0..1000u64).map(|n| HeaderValue::from_static(Box::leak(n.to_string().into_boxed_str()))).collect()
    });
    match SMALL.get(ms as usize) {
        Some(v) => v.clone(),
        None => HeaderValue::from(ms),
    }
}

/// Rewrites a request for an upstream of `version`: origin-form URI and `Host` for
/// HTTP/1.1, absolute URI (`:authority`) without `Host` for HTTP/2. The path is shared, not
/// re-parsed.
pub fn to_upstream(req: Request<Body>, version: Version, authority: &str, scheme: &str) -> Request<Body> {
    let (mut parts, body) = req.into_parts();
    to_upstream_parts(&mut parts, version, authority, scheme);
    Request::from_parts(parts, body)
}

/// `to_upstream` on the request head alone.
pub fn to_upstream_parts(parts: &mut http::request::Parts, version: Version, authority: &str, scheme: &str) {
    // The path is moved, not cloned: a clone takes an atomic reference on hyper's buffer.
    let pq = |uri: &mut Uri| {
        std::mem::take(uri).into_parts().path_and_query.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"))
    };
    match version {
        Version::H1 => {
            parts.version = HttpVersion::HTTP_11;
            if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
                let mut uri = http::uri::Parts::default();
                uri.path_and_query = Some(pq(&mut parts.uri));
                parts.uri = Uri::from_parts(uri).unwrap_or_default();
            }
            if !parts.headers.contains_key(header::HOST)
                && let Ok(v) = HeaderValue::from_str(authority)
            {
                parts.headers.insert(header::HOST, v);
            }
        }
        Version::H2 => {
            parts.version = HttpVersion::HTTP_2;
            let mut uri = http::uri::Parts::default();
            uri.scheme = scheme.parse().ok();
            uri.authority = authority.parse().ok();
            let path = pq(&mut parts.uri);
            uri.path_and_query = Some(path.clone());
            match Uri::from_parts(uri) {
                Ok(u) => {
                    parts.uri = u;
                    parts.headers.remove(header::HOST);
                }
                Err(_) => parts.uri = Uri::from(path),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_lengths_are_digits_only() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b" 1234 "), Some(1234));
        assert_eq!(parse_content_length(b"18446744073709551615"), None, "20 digits");
        assert_eq!(parse_content_length(b"9999999999999999999"), Some(9_999_999_999_999_999_999));
        for bad in [&b""[..], b"+5", b"-1", b"5 5", b"0x10", b"1e3"] {
            assert_eq!(parse_content_length(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn hop_by_hop_headers_go_and_trailers_stay() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-private".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("proxy-authorization", "Basic x".parse().unwrap());
        h.insert("end-user", "jason".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(h.get("connection").is_none() && h.get("x-private").is_none() && h.get("keep-alive").is_none());
        assert!(h.get("proxy-authorization").is_none());
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["end-user"], "jason");
    }

    #[test]
    fn upgrades_keep_their_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn request_ids_are_uuid_v4_and_kept_when_present() {
        let id = new_request_id();
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 36);
        let dashes: Vec<usize> = s.match_indices('-').map(|(i, _)| i).collect();
        assert_eq!(dashes, [8, 13, 18, 23]);
        assert!(s.chars().all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(new_request_id(), id);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"));
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "abc".parse().unwrap());
        ensure_request_id(&mut h);
        assert_eq!(h["x-request-id"], "abc");
        let mut empty = HeaderMap::new();
        ensure_request_id(&mut empty);
        assert_eq!(empty["x-request-id"].len(), 36);
        let mut blank = HeaderMap::new();
        blank.insert("x-request-id", "".parse().unwrap());
        ensure_request_id(&mut blank);
        assert_eq!(blank["x-request-id"].len(), 36);
    }

    #[test]
    fn version_conversion() {
        let req = Request::builder().uri("http://reviews:9080/reviews/0?x=1").body(Body::Empty).unwrap();
        let h1 = to_upstream(req, Version::H1, "reviews:9080", "http");
        assert_eq!(h1.uri(), "/reviews/0?x=1");
        assert_eq!(h1.headers()["host"], "reviews:9080");
        let req = Request::builder().uri("/a").header("host", "reviews").body(Body::Empty).unwrap();
        let h2 = to_upstream(req, Version::H2, "reviews", "http");
        assert_eq!(h2.uri(), "http://reviews/a");
        assert!(h2.headers().get("host").is_none());
    }
}

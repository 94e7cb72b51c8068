//! Telemetry: one `RequestEvent` per proxied request and hop, queued on the recording thread's
//! own ring on the hot path (never blocking; drops are counted) and written to
//! `<state-dir>/access.log` by the telemetry thread.

pub mod access_log;
pub mod flags;
pub mod name;
pub mod queue;

pub use flags::Flags;
pub use name::Name;
pub use queue::{Events, Telemetry};

use std::net::SocketAddr;
use std::time::SystemTime;

use http::{HeaderValue, Method};
use serde::Serialize;

/// Which proxy saw the request (Istio's `reporter` label; the gateway reports as source).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reporter {
    Source,
    Destination,
}

/// One request as one proxy saw it. Names are interned ([`Name`]: copied, not counted); the
/// request's own texts are copied into one small allocation ([`Texts`]), because header values
/// shared with hyper would keep whole connection read buffers alive while records queue.
#[derive(Clone, Debug, Serialize)]
pub struct RequestEvent {
    #[serde(serialize_with = "ser_time")]
    pub ts: SystemTime,
    pub reporter: Reporter,
    /// The proxy that reported it: a workload instance or a gateway.
    pub proxy: Name,
    pub source_workload: Name,
    pub source_principal: Option<Name>,
    /// `None`: a host outside the registry, named by the authority.
    pub destination_service: Option<Name>,
    pub destination_workload: Option<Name>,
    pub upstream_cluster: Option<Name>,
    pub upstream_host: Option<SocketAddr>,
    pub route_name: Option<Name>,
    pub subset: Option<Name>,
    #[serde(serialize_with = "ser_display")]
    pub method: Method,
    #[serde(flatten)]
    pub texts: Texts,
    pub protocol: &'static str,
    pub status: u16,
    pub response_flags: Flags,
    pub duration_ms: u64,
    pub upstream_service_time_ms: Option<u64>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub attempts: u32,
    pub mtls: bool,
}

/// The texts of a request (path, authority, request id, user agent) in one allocation.
#[derive(Clone, Debug)]
pub struct Texts {
    buf: Box<str>,
    ends: [u32; 3],
}

fn header_text(v: Option<&HeaderValue>) -> &str {
    v.and_then(|v| v.to_str().ok()).unwrap_or("")
}

impl Texts {
    pub fn new(
        path: &str,
        authority: &str,
        request_id: Option<&HeaderValue>,
        user_agent: Option<&HeaderValue>,
    ) -> Texts {
        let parts = [path, authority, header_text(request_id), header_text(user_agent)];
        let mut buf = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut ends = [0u32; 3];
        for (i, p) in parts.iter().enumerate() {
            buf.push_str(p);
            if i < 3 {
                ends[i] = buf.len() as u32;
            }
        }
        Texts { buf: buf.into_boxed_str(), ends }
    }

    fn part(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        let end = if i < 3 { self.ends[i] as usize } else { self.buf.len() };
        self.buf.get(start..end).unwrap_or("")
    }

    pub fn path(&self) -> &str {
        self.part(0)
    }
    pub fn authority(&self) -> &str {
        self.part(1)
    }
    pub fn request_id(&self) -> &str {
        self.part(2)
    }
    pub fn user_agent(&self) -> &str {
        self.part(3)
    }
}

impl Serialize for Texts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("path", self.path())?;
        m.serialize_entry("authority", self.authority())?;
        m.serialize_entry("request_id", self.request_id())?;
        m.serialize_entry("user_agent", self.user_agent())?;
        m.end()
    }
}

fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&access_log::rfc3339(*t))
}

fn ser_display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// A complete record for tests.
#[cfg(test)]
pub(crate) fn test_event() -> RequestEvent {
    let h = |s: &'static str| HeaderValue::from_static(s);
    RequestEvent {
        ts: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_042),
        reporter: Reporter::Source,
        proxy: Name::new("productpage-v1"),
        source_workload: Name::new("productpage-v1"),
        source_principal: None,
        destination_service: Some(Name::new("reviews.default.svc.cluster.local")),
        destination_workload: Some(Name::new("reviews-v2")),
        upstream_cluster: Some(Name::new("outbound|9080|v2|reviews.default.svc.cluster.local")),
        upstream_host: Some(SocketAddr::from(([127, 0, 0, 1], 41234))),
        route_name: None,
        subset: Some(Name::new("v2")),
        method: Method::GET,
        texts: Texts::new("/reviews/0", "reviews:9080", Some(&h("a1b2")), None),
        protocol: "HTTP/1.1",
        status: 200,
        response_flags: Flags::default(),
        duration_ms: 12,
        upstream_service_time_ms: Some(11),
        bytes_sent: 358,
        bytes_received: 0,
        attempts: 1,
        mtls: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_hold_the_four_strings_in_one_allocation() {
        let id = HeaderValue::from_static("abc");
        let t = Texts::new("/reviews/0?x=1", "reviews:9080", Some(&id), None);
        assert_eq!(
            (t.path(), t.authority(), t.request_id(), t.user_agent()),
            ("/reviews/0?x=1", "reviews:9080", "abc", "")
        );
        let empty = Texts::new("", "", None, None);
        assert_eq!(empty.path(), "");
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["authority"], "reviews:9080");
    }
}

//! Telemetry: one `RequestEvent` per proxied request and hop, handed to a bounded channel on
//! the hot path (never blocking; drops are counted) and written to `<state-dir>/access.log`.

pub mod access_log;
pub mod flags;

pub use flags::Flags;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use http::{HeaderValue, Method};
use serde::Serialize;
use tokio::sync::mpsc;

/// Which proxy saw the request (Istio's `reporter` label; the gateway reports as source).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reporter {
    Source,
    Destination,
}

/// One request as one proxy saw it. Names come from the compiled snapshot (shared); the
/// request's own texts are copied into one small allocation ([`Texts`]), because header values
/// shared with hyper would keep whole connection read buffers alive while records queue.
#[derive(Clone, Debug, Serialize)]
pub struct RequestEvent {
    #[serde(serialize_with = "ser_time")]
    pub ts: SystemTime,
    pub reporter: Reporter,
    /// The proxy that reported it: a workload instance or a gateway.
    pub proxy: Arc<str>,
    pub source_workload: Arc<str>,
    pub source_principal: Option<Arc<str>>,
    pub destination_service: Arc<str>,
    pub destination_workload: Option<Arc<str>>,
    pub upstream_cluster: Option<Arc<str>>,
    pub upstream_host: Option<SocketAddr>,
    pub route_name: Option<Arc<str>>,
    pub subset: Option<Arc<str>>,
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

/// The hot-path handle: `record` never waits.
#[derive(Clone)]
pub struct Telemetry {
    tx: mpsc::Sender<RequestEvent>,
    dropped: Arc<AtomicU64>,
}

impl Telemetry {
    pub fn new(capacity: usize) -> (Telemetry, mpsc::Receiver<RequestEvent>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Telemetry { tx, dropped: Arc::new(AtomicU64::new(0)) }, rx)
    }

    pub fn record(&self, e: RequestEvent) {
        if self.tx.try_send(e).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events dropped because the writer fell behind (the hot path never waits).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
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

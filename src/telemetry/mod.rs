//! Telemetry: one `RequestEvent` per proxied request and hop, handed to a bounded channel on
//! the hot path (never blocking; drops are counted) and written to `<state-dir>/access.log`.

pub mod access_log;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use http::uri::PathAndQuery;
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

/// One request as one proxy saw it. Built on the hot path without copying text: header
/// values, the path and names from the compiled snapshot are shared, not allocated.
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
    #[serde(serialize_with = "ser_header")]
    pub authority: HeaderValue,
    #[serde(serialize_with = "ser_display")]
    pub path: PathAndQuery,
    pub protocol: &'static str,
    pub status: u16,
    pub response_flags: &'static str,
    pub duration_ms: u64,
    pub upstream_service_time_ms: Option<u64>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub attempts: u32,
    #[serde(serialize_with = "ser_header")]
    pub request_id: HeaderValue,
    #[serde(serialize_with = "ser_opt_header")]
    pub user_agent: Option<HeaderValue>,
    pub mtls: bool,
}

impl RequestEvent {
    /// A header value as text (`-` when it is not valid UTF-8).
    pub fn text(v: &HeaderValue) -> &str {
        v.to_str().unwrap_or("-")
    }
}

fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&access_log::rfc3339(*t))
}

fn ser_display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn ser_header<S: serde::Serializer>(v: &HeaderValue, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(RequestEvent::text(v))
}

fn ser_opt_header<S: serde::Serializer>(v: &Option<HeaderValue>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_some(RequestEvent::text(v)),
        None => s.serialize_none(),
    }
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

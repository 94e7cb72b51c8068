//! The access log: Istio's default text format (Envoy's `%START_TIME% "%METHOD% %PATH%
//! %PROTOCOL%" %RESPONSE_CODE% %RESPONSE_FLAGS% ...`), one line per request per proxy.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tokio::sync::mpsc;

use super::RequestEvent;

/// `2026-11-21T20:30:00.123Z`
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let ms = d.subsec_millis();
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(dt) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            dt.year(),
            dt.month() as u8,
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second()
        ),
        Err(_) => format!("{secs}.{ms:03}"),
    }
}

fn dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// `rfc3339` for the current second, formatted once per second.
#[derive(Default)]
pub struct Clock {
    second: u64,
    prefix: String,
}

impl Clock {
    fn stamp(&mut self, t: SystemTime, out: &mut String) {
        let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        if d.as_secs() != self.second || self.prefix.is_empty() {
            self.second = d.as_secs();
            let full = rfc3339(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(d.as_secs()));
            self.prefix = full.trim_end_matches("000Z").to_string();
        }
        out.push_str(&self.prefix);
        let ms = d.subsec_millis();
        out.push(char::from(b'0' + (ms / 100) as u8));
        out.push(char::from(b'0' + (ms / 10 % 10) as u8));
        out.push(char::from(b'0' + (ms % 10) as u8));
        out.push('Z');
    }
}

/// Appends one access log line for `e` to `out`. Written field by field (no `format!`
/// machinery, no temporary strings): this runs once per request on the log thread.
pub fn format_into(out: &mut String, e: &RequestEvent, clock: &mut Clock) {
    use std::fmt::Write;
    let mut num = itoa::Buffer::new();
    out.push('[');
    clock.stamp(e.ts, out);
    out.push_str("] ");
    out.push_str(&e.proxy);
    out.push_str(match e.reporter {
        super::Reporter::Source => " outbound \"",
        super::Reporter::Destination => " inbound \"",
    });
    out.push_str(e.method.as_str());
    out.push(' ');
    out.push_str(e.texts.path());
    out.push(' ');
    out.push_str(e.protocol);
    out.push_str("\" ");
    out.push_str(num.format(e.status));
    out.push(' ');
    e.response_flags.push_to(out);
    for n in [Some(e.bytes_received), Some(e.bytes_sent), Some(e.duration_ms), e.upstream_service_time_ms] {
        out.push(' ');
        out.push_str(n.map_or("-", |n| num.format(n)));
    }
    for text in [e.texts.user_agent(), e.texts.request_id(), e.texts.authority()] {
        out.push_str(" \"");
        out.push_str(dash(text));
        out.push('"');
    }
    out.push_str(" \"");
    match e.upstream_host {
        Some(std::net::SocketAddr::V4(a)) => {
            for (i, octet) in a.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(num.format(octet));
            }
            out.push(':');
            out.push_str(num.format(a.port()));
        }
        Some(a) => {
            let _ = write!(out, "{a}");
        }
        None => out.push('-'),
    }
    out.push_str("\" ");
    for v in [&e.upstream_cluster, &e.route_name] {
        out.push_str(v.as_deref().map_or("-", dash));
        out.push(' ');
    }
    out.push_str(if e.mtls { "mtls\n" } else { "plaintext\n" });
}

/// Writes events to `path` on a thread of its own until every sender is gone. It drains the
/// queue every 100 ms instead of being woken per event, so recording a request costs the
/// proxy one non-blocking queue push and no cross-thread wakeup.
pub fn spawn(path: PathBuf, mut rx: mpsc::Receiver<RequestEvent>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("devmesh-access-log".into()).spawn(move || {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path);
        let mut file = match file {
            Ok(f) => Some(std::io::BufWriter::with_capacity(64 * 1024, f)),
            Err(e) => {
                tracing::warn!("cannot open access log {}: {e}", path.display());
                None
            }
        };
        let mut batch = String::with_capacity(64 * 1024);
        let mut clock = Clock::default();
        loop {
            let mut closed = false;
            loop {
                match rx.try_recv() {
                    Ok(e) => {
                        format_into(&mut batch, &e, &mut clock);
                        if batch.len() > 60 * 1024 {
                            flush(&mut file, &mut batch, &path);
                        }
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            flush(&mut file, &mut batch, &path);
            if closed {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    })
}

fn flush(file: &mut Option<std::io::BufWriter<std::fs::File>>, batch: &mut String, path: &Path) {
    use std::io::Write;
    if batch.is_empty() {
        return;
    }
    if let Some(f) = file.as_mut()
        && (f.write_all(batch.as_bytes()).is_err() || f.flush().is_err())
    {
        tracing::warn!("cannot write access log {}", path.display());
    }
    batch.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::flags::Flags;
    use crate::telemetry::{Reporter, Texts};
    use std::sync::Arc;

    fn event() -> RequestEvent {
        let h = |s: &'static str| http::HeaderValue::from_static(s);
        RequestEvent {
            ts: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_042),
            reporter: Reporter::Source,
            proxy: Arc::from("productpage-v1"),
            source_workload: Arc::from("productpage-v1"),
            source_principal: None,
            destination_service: Arc::from("reviews.default.svc.cluster.local"),
            destination_workload: Some(Arc::from("reviews-v2")),
            upstream_cluster: Some(Arc::from("outbound|9080|v2|reviews.default.svc.cluster.local")),
            upstream_host: Some("127.0.0.1:41234".parse().unwrap()),
            route_name: None,
            subset: Some(Arc::from("v2")),
            method: http::Method::GET,
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

    #[test]
    fn lines_follow_istios_default_format() {
        let mut out = String::new();
        let mut clock = Clock::default();
        let mut e = event();
        format_into(&mut out, &e, &mut clock);
        assert_eq!(
            out,
            "[2023-11-14T22:13:20.042Z] productpage-v1 outbound \"GET /reviews/0 HTTP/1.1\" 200 - 0 358 12 11 \"-\" \
             \"a1b2\" \"reviews:9080\" \"127.0.0.1:41234\" outbound|9080|v2|reviews.default.svc.cluster.local - mtls\n"
        );
        out.clear();
        e.reporter = Reporter::Destination;
        e.response_flags.add(Flags::UH);
        e.response_flags.add(Flags::URX);
        e.upstream_service_time_ms = None;
        e.upstream_host = None;
        e.upstream_cluster = None;
        e.route_name = Some(Arc::from("default"));
        e.mtls = false;
        e.status = 503;
        e.bytes_received = 18_446_744_073_709_551_615;
        format_into(&mut out, &e, &mut clock);
        assert_eq!(
            out,
            "[2023-11-14T22:13:20.042Z] productpage-v1 inbound \"GET /reviews/0 HTTP/1.1\" 503 UH,URX \
             18446744073709551615 358 12 - \"-\" \"a1b2\" \"reviews:9080\" \"-\" - default plaintext\n"
        );
    }

    #[test]
    fn upstream_hosts_print_as_envoy_does() {
        let mut clock = Clock::default();
        let mut e = event();
        for (addr, want) in [
            ("0.0.0.0:1", "\"0.0.0.0:1\""),
            ("255.10.0.99:65535", "\"255.10.0.99:65535\""),
            ("[::1]:8080", "\"[::1]:8080\""),
        ] {
            e.upstream_host = Some(addr.parse().unwrap());
            let mut out = String::new();
            format_into(&mut out, &e, &mut clock);
            assert!(out.contains(want), "{out}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        let mut clock = Clock::default();
        let mut out = String::new();
        clock.stamp(t, &mut out);
        out.push(' ');
        clock.stamp(t + std::time::Duration::from_millis(5), &mut out);
        assert_eq!(out, "2023-11-14T22:13:20.123Z 2023-11-14T22:13:20.128Z");
    }
}

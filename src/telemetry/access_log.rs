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

/// Appends one access log line for `e` to `out`.
pub fn format_into(out: &mut String, e: &RequestEvent, clock: &mut Clock) {
    use std::fmt::Write;
    let opt = |v: &Option<std::sync::Arc<str>>| v.as_deref().map_or("-", dash).to_string();
    out.push('[');
    clock.stamp(e.ts, out);
    let _ = writeln!(
        out,
        "] {} {} \"{} {} {}\" {} {} {} {} {} {} \"{}\" \"{}\" \"{}\" \"{}\" {} {} {}",
        e.proxy,
        match e.reporter {
            super::Reporter::Source => "outbound",
            super::Reporter::Destination => "inbound",
        },
        e.method,
        e.texts.path(),
        e.protocol,
        e.status,
        e.response_flags,
        e.bytes_received,
        e.bytes_sent,
        e.duration_ms,
        e.upstream_service_time_ms.map_or("-".to_string(), |t| t.to_string()),
        dash(e.texts.user_agent()),
        dash(e.texts.request_id()),
        dash(e.texts.authority()),
        e.upstream_host.map_or("-".to_string(), |a| a.to_string()),
        opt(&e.upstream_cluster),
        opt(&e.route_name),
        if e.mtls { "mtls" } else { "plaintext" },
    );
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

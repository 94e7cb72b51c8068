//! The access log: Istio's default text format (Envoy's `%START_TIME% "%METHOD% %PATH%
//! %PROTOCOL%" %RESPONSE_CODE% %RESPONSE_FLAGS% ...`), one line per request per proxy.

use std::path::Path;
use std::time::SystemTime;

use tokio::io::AsyncWriteExt;
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

/// One access log line.
pub fn format(e: &RequestEvent) -> String {
    format!(
        "[{}] {} {} \"{} {} {}\" {} {} {} {} {} {} \"{}\" \"{}\" \"{}\" \"{}\" {} {} {}\n",
        rfc3339(e.ts),
        e.proxy,
        match e.reporter {
            super::Reporter::Source => "outbound",
            super::Reporter::Destination => "inbound",
        },
        e.method,
        e.path,
        e.protocol,
        e.status,
        dash(e.response_flags),
        e.bytes_received,
        e.bytes_sent,
        e.duration_ms,
        e.upstream_service_time_ms.map_or("-".to_string(), |t| t.to_string()),
        dash(&e.user_agent),
        dash(&e.request_id),
        dash(&e.authority),
        dash(e.upstream_host.as_deref().unwrap_or("")),
        dash(e.upstream_cluster.as_deref().unwrap_or("")),
        dash(e.route_name.as_deref().unwrap_or("")),
        if e.mtls { "mtls" } else { "plaintext" },
    )
}

/// Writes events to `path` until the channel closes.
pub async fn run(path: &Path, mut rx: mpsc::Receiver<RequestEvent>) {
    let file = tokio::fs::OpenOptions::new().create(true).append(true).open(path).await;
    let mut file = match file {
        Ok(f) => tokio::io::BufWriter::new(f),
        Err(e) => {
            tracing::warn!("cannot open access log {}: {e}", path.display());
            while rx.recv().await.is_some() {}
            return;
        }
    };
    while let Some(e) = rx.recv().await {
        let mut batch = format(&e);
        while let Ok(more) = rx.try_recv() {
            batch.push_str(&format(&more));
            if batch.len() > 64 * 1024 {
                break;
            }
        }
        if file.write_all(batch.as_bytes()).await.is_err() || file.flush().await.is_err() {
            tracing::warn!("cannot write access log {}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
    }
}

//! The access log: Istio's default text format (Envoy's `%START_TIME% "%METHOD% %PATH%
//! %PROTOCOL%" %RESPONSE_CODE% %RESPONSE_FLAGS% ...`), one line per request per proxy.

use std::path::PathBuf;

use crate::config::mesh::AccessLogLimits;
use std::time::SystemTime;

use super::{Events, RequestEvent};

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

/// Events formatted per write: their lines (about 250 bytes each) fit the batch's 64 KiB.
const CHUNK: usize = 200;

/// The access log file: appended to, rotated by size (`access.log` → `access.log.1` → ...,
/// `keep` files kept), and never a reason to stop: a failed write (a full disk) drops that
/// batch with one warning until writes succeed again, and the proxies never wait for it.
pub struct LogFile {
    path: PathBuf,
    file: Option<std::fs::File>,
    size: u64,
    limits: AccessLogLimits,
    failing: bool,
}

impl LogFile {
    pub fn open(path: PathBuf, limits: AccessLogLimits) -> LogFile {
        let mut f = LogFile { path, file: None, size: 0, limits, failing: false };
        f.reopen();
        f
    }

    fn reopen(&mut self) {
        match std::fs::OpenOptions::new().create(true).append(true).open(&self.path) {
            Ok(file) => {
                self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
                self.file = Some(file);
            }
            Err(e) => {
                tracing::warn!("cannot open access log {}: {e}", self.path.display());
                self.file = None;
                self.size = 0;
            }
        }
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Moves `access.log` to `access.log.1` (and older ones up), dropping the oldest.
    fn rotate(&mut self) {
        self.file = None;
        if self.limits.keep == 0 {
            let _ = std::fs::remove_file(&self.path);
        } else {
            let _ = std::fs::remove_file(self.rotated(self.limits.keep));
            for n in (1..self.limits.keep).rev() {
                let _ = std::fs::rename(self.rotated(n), self.rotated(n + 1));
            }
            let _ = std::fs::rename(&self.path, self.rotated(1));
        }
        self.reopen();
    }

    /// Appends `batch` (whole lines), rotating whenever the next lines would pass the size
    /// limit (a line longer than the limit gets a file of its own).
    pub fn write(&mut self, mut batch: &str) {
        while !batch.is_empty() {
            let room = self.limits.max_bytes.saturating_sub(self.size) as usize;
            if batch.len() <= room {
                self.append(batch);
                return;
            }
            // The whole lines that fit, else rotate; a file's first line always goes in.
            // Bytes, not a `str` slice: `room` may fall inside a multi-byte character.
            let fit = batch.as_bytes()[..room.min(batch.len())].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let take = if fit > 0 {
                fit
            } else if self.size == 0 {
                batch.find('\n').map_or(batch.len(), |i| i + 1)
            } else {
                self.rotate();
                continue;
            };
            self.append(&batch[..take]);
            batch = &batch[take..];
            if !batch.is_empty() {
                self.rotate();
            }
        }
    }

    fn append(&mut self, batch: &str) {
        use std::io::Write;
        let Some(f) = self.file.as_mut() else { return };
        match f.write_all(batch.as_bytes()) {
            Ok(()) => {
                self.size += batch.len() as u64;
                if self.failing {
                    self.failing = false;
                    tracing::warn!("access log {} is written again", self.path.display());
                }
            }
            Err(e) => {
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(
                        "cannot write access log {}: {e}; lines are dropped until it can",
                        self.path.display()
                    );
                }
            }
        }
    }
}

/// Writes events to `path` on a thread of its own until every [`super::Telemetry`] handle is
/// gone. It drains the recording threads' rings every 100 ms, or every 5 ms while a ring is
/// filling fast, instead of being woken per event: recording a request costs the proxy one
/// push onto its own thread's ring and no cross-thread wakeup.
pub fn spawn(
    path: PathBuf,
    limits: AccessLogLimits,
    mut events: Events,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("devmesh-access-log".into()).spawn(move || {
        // No BufWriter: each chunk's batch is already one write.
        let mut file = LogFile::open(path, limits);
        let mut batch = String::with_capacity(64 * 1024);
        let mut clock = Clock::default();
        let busy = events.capacity() / 8;
        loop {
            // Checked before draining, so the final drain takes everything queued when the last
            // handle went. A request still ending after that (its record holds a `Sink`, not a
            // handle) at shutdown goes unlogged.
            let closed = events.closed();
            // Drained in chunks, each written after its drain: the drain holds the lock
            // threads register their rings under, which a file write should not prolong, and
            // a chunk's lines fit the batch's buffer, so a busy second does not grow it.
            let mut n = 0;
            loop {
                let got = events.drain(CHUNK, |e| format_into(&mut batch, &e, &mut clock));
                n += got;
                flush(&mut file, &mut batch);
                if got < CHUNK {
                    break;
                }
            }
            if closed {
                return;
            }
            let pause = if n > busy { 5 } else { 100 };
            std::thread::sleep(std::time::Duration::from_millis(pause));
        }
    })
}

fn flush(file: &mut LogFile, batch: &mut String) {
    file.write(batch);
    batch.clear();
    // Very long lines (paths, user agents) are not kept.
    if batch.capacity() > 1 << 20 {
        batch.shrink_to(64 * 1024);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::flags::Flags;
    use crate::telemetry::{Name, Reporter};

    fn event() -> RequestEvent {
        crate::telemetry::test_event()
    }

    /// A backlog of many chunks is written whole, in order, and the thread ends when the last
    /// telemetry handle goes.
    #[test]
    fn the_log_thread_writes_every_queued_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let (t, events) = crate::telemetry::queue::Telemetry::new(4096);
        let sink = t.sink();
        for i in 0..(CHUNK * 5 + 7) {
            let mut e = event();
            e.status = 200 + (i % 3) as u16;
            e.ts = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(i as u64);
            sink.record(e);
        }
        let thread = spawn(path.clone(), AccessLogLimits::default(), events).unwrap();
        drop(t);
        thread.join().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let codes: Vec<&str> = text.lines().map(|l| l.split(' ').nth(6).unwrap_or("?")).collect();
        assert_eq!(codes.len(), CHUNK * 5 + 7);
        assert!(codes.iter().enumerate().all(|(i, c)| *c == (200 + i % 3).to_string()), "in order: {:?}", &codes[..6]);
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
        e.route_name = Some(Name::new("default"));
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

    #[test]
    fn the_log_rotates_by_size_and_keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let mut f = LogFile::open(path.clone(), AccessLogLimits { max_bytes: 1000, keep: 2 });
        let line = format!("{}\n", "x".repeat(99));
        for _ in 0..45 {
            f.write(&line);
        }
        let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).ok();
        // 45 lines of 100 bytes, 10 a file: the current one holds the last 5.
        assert_eq!(size(&path), Some(500));
        assert_eq!(size(&dir.path().join("access.log.1")), Some(1000));
        assert_eq!(size(&dir.path().join("access.log.2")), Some(1000));
        assert_eq!(size(&dir.path().join("access.log.3")), None, "only `keep` rotated files");
        // keep: 0 truncates instead.
        let path0 = dir.path().join("zero.log");
        let mut z = LogFile::open(path0.clone(), AccessLogLimits { max_bytes: 1000, keep: 0 });
        for _ in 0..15 {
            z.write(&line);
        }
        assert_eq!(size(&path0), Some(500));
        assert_eq!(size(&dir.path().join("zero.log.1")), None);
    }

    #[test]
    fn rotation_splits_at_lines_even_with_multi_byte_characters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let mut f = LogFile::open(path.clone(), AccessLogLimits { max_bytes: 100, keep: 1 });
        // 3-byte characters: the limit falls inside one of them.
        let line = format!("{}\n", "é€".repeat(7));
        f.write(&line.repeat(5));
        let kept = std::fs::read_to_string(&path).unwrap()
            + &std::fs::read_to_string(dir.path().join("access.log.1")).unwrap();
        assert!(kept.lines().all(|l| l == line.trim_end()), "{kept}");
    }

    #[test]
    fn a_full_disk_drops_lines_without_stopping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        let mut f = LogFile::open(path, AccessLogLimits::default());
        for _ in 0..3 {
            f.write("a line\n");
        }
        assert!(f.failing);
    }
}

//! Lifecycle events of the mesh (started, ready, exited, restarting, listening ...), broadcast
//! to whoever shows them: one readable line each on stderr in headless mode.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::broadcast;

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Lifecycle {
    Started {
        instance: String,
        pid: u32,
    },
    Ready {
        instance: String,
        after_ms: u64,
    },
    /// Ready again after readiness failures took it out of its endpoints.
    ReadyAgain {
        instance: String,
        /// How long it was not ready.
        after_ms: u64,
    },
    NotReady {
        instance: String,
        reason: String,
    },
    Exited {
        instance: String,
        code: Option<i32>,
        signal: Option<i32>,
    },
    Restarting {
        instance: String,
        delay_ms: u64,
        restarts: u32,
    },
    SpawnFailed {
        instance: String,
        error: String,
    },
    Listening {
        what: String,
        addr: String,
    },
    MeshReady {
        after_ms: u64,
    },
    Info {
        message: String,
    },
    Warning {
        message: String,
    },
    Stopping,
    Stopped {
        instance: String,
    },
    /// A configuration change took effect.
    ConfigApplied {
        version: u64,
        took_us: u64,
        changes: Vec<String>,
    },
    /// A configuration change was rejected; the running version keeps serving.
    ConfigRejected {
        version: u64,
        errors: Vec<String>,
    },
}

impl Lifecycle {
    pub fn line(&self) -> String {
        let who = |i: &str| format!("{i:<21} ");
        match self {
            Lifecycle::Started { instance, pid } => format!("{}started (pid {pid})", who(instance)),
            Lifecycle::Ready { instance, after_ms } => {
                format!("{}ready ({:.2}s after start)", who(instance), *after_ms as f64 / 1000.0)
            }
            Lifecycle::ReadyAgain { instance, after_ms } => {
                format!("{}ready again after {:.2}s not ready", who(instance), *after_ms as f64 / 1000.0)
            }
            Lifecycle::NotReady { instance, reason } => {
                format!("{}not ready: {reason}", who(instance))
            }
            Lifecycle::Exited { instance, code: Some(c), .. } => format!("{}exited with code {c}", who(instance)),
            Lifecycle::Exited { instance, signal: Some(s), .. } => {
                format!("{}killed by signal {s} ({})", who(instance), signal_name(*s))
            }
            Lifecycle::Exited { instance, .. } => format!("{}exited", who(instance)),
            Lifecycle::Restarting { instance, delay_ms, restarts } => format!(
                "{}restarting in {} (restart #{restarts})",
                who(instance),
                human(Duration::from_millis(*delay_ms))
            ),
            Lifecycle::SpawnFailed { instance, error } => {
                format!("{}cannot start: {error}", who(instance))
            }
            Lifecycle::Listening { what, addr } => format!("{}listening on {addr}", who(what)),
            Lifecycle::MeshReady { after_ms } => {
                format!("{}all workloads ready ({:.2}s)", who("mesh"), *after_ms as f64 / 1000.0)
            }
            Lifecycle::Info { message } => format!("{}{message}", who("devmesh")),
            Lifecycle::Warning { message } => format!("{}warning: {message}", who("devmesh")),
            Lifecycle::Stopping => format!("{}stopping: SIGTERM to every workload", who("mesh")),
            Lifecycle::Stopped { instance } => format!("{}stopped", who(instance)),
            Lifecycle::ConfigApplied { version, took_us, changes } => format!(
                "{}v{version} serving ({:.1}ms to compile and swap): {}",
                who("config"),
                *took_us as f64 / 1000.0,
                changes.join(", ")
            ),
            Lifecycle::ConfigRejected { version, errors } => {
                let mut s = format!("{}change rejected, v{version} keeps serving:", who("config"));
                for e in errors {
                    s.push_str("\n  ");
                    s.push_str(e);
                }
                s
            }
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    nix::sys::signal::Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("?")
}

pub fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) { format!("{}ms", d.as_millis()) } else { format!("{:.1}s", d.as_secs_f64()) }
}

/// `HH:MM:SS.mmm` (UTC).
pub fn clock(t: SystemTime) -> String {
    let s = crate::telemetry::access_log::rfc3339(t);
    s.get(11..23).unwrap_or(&s).to_string()
}

#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Lifecycle>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    pub fn new() -> Events {
        let (tx, _) = broadcast::channel(1024);
        Events { tx }
    }

    pub fn emit(&self, e: Lifecycle) {
        let _ = self.tx.send(e);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Lifecycle> {
        self.tx.subscribe()
    }
}

/// Prints events to stderr until the channel closes.
pub async fn print(mut rx: broadcast::Receiver<Lifecycle>) {
    loop {
        match rx.recv().await {
            Ok(e) => eprintln!("{} {}", clock(SystemTime::now()), e.line()),
            Err(broadcast::error::RecvError::Lagged(n)) => eprintln!("({n} events not shown)"),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_readable() {
        assert_eq!(
            Lifecycle::Exited { instance: "reviews-v1".into(), code: Some(3), signal: None }.line(),
            "reviews-v1            exited with code 3"
        );
        assert_eq!(
            Lifecycle::Exited { instance: "reviews-v1".into(), code: None, signal: Some(9) }.line(),
            "reviews-v1            killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            Lifecycle::Restarting { instance: "a".into(), delay_ms: 500, restarts: 2 }.line(),
            "a                     restarting in 500ms (restart #2)"
        );
    }
}

//! The supervisor: runs every workload instance as a child process, probes readiness (which
//! gates endpoint membership), restarts by policy with backoff, and stops everything in order.

pub mod backoff;
pub mod build;
pub mod env;
pub mod events;
pub mod probe;
pub mod process;
pub mod reaper;
pub mod stats;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::model::topology::{Instance, ProcState, Topology};
use backoff::Exit;
use events::{Events, Lifecycle};

pub const GRACE: Duration = Duration::from_secs(5);

pub struct Supervisor {
    pub topology: Arc<Topology>,
    /// Workloads run in the mesh file's folder.
    pub cwd: PathBuf,
    pub log_dir: PathBuf,
    pub events: Events,
    pub reaper: Option<reaper::Reaper>,
    pub grace: Duration,
}

impl Supervisor {
    /// Starts one task per instance; they end after `stop` once their process is reaped.
    pub fn start(self: &Arc<Self>, stop: &CancellationToken) -> JoinSet<()> {
        let mut set = JoinSet::new();
        for inst in &self.topology.instances {
            if inst.def.replicas == 0 {
                continue;
            }
            let this = self.clone();
            let inst = inst.clone();
            let stop = stop.clone();
            set.spawn(async move { this.run_instance(inst, stop).await });
        }
        set
    }

    async fn run_instance(self: Arc<Self>, inst: Arc<Instance>, stop: CancellationToken) {
        let env = env::build(&inst, &self.topology);
        let argv: Vec<String> = inst.def.command.iter().map(|a| env::substitute_ports(a, &inst)).collect();
        let log = self.log_dir.join(format!("{}.log", inst.name));
        let mut crashes = 0u32;
        while !stop.is_cancelled() {
            inst.status.set_state(ProcState::Starting);
            let started = Instant::now();
            let spawned = process::spawn(&process::Spawn { argv: &argv, env: &env, cwd: &self.cwd, log: &log });
            let exit = match spawned {
                Err(e) => {
                    let program = argv.first().map(String::as_str).unwrap_or("");
                    let error = format!("{program}: {e}");
                    self.events.emit(Lifecycle::SpawnFailed { instance: inst.name.clone(), error: error.clone() });
                    inst.status.set_state(ProcState::Failed { reason: error });
                    Exit::SpawnFailed
                }
                Ok(mut child) => {
                    let pid = child.id().unwrap_or(0);
                    inst.status.pid.store(pid, Ordering::Relaxed);
                    if let Some(r) = &self.reaper {
                        r.watch(pid);
                    }
                    self.events.emit(Lifecycle::Started { instance: inst.name.clone(), pid });
                    inst.status.set_state(ProcState::Running);
                    let probe_stop = stop.child_token();
                    let probe =
                        tokio::spawn(self.clone().probe_loop(inst.clone(), env.clone(), probe_stop.clone(), started));
                    let waited = tokio::select! {
                        s = child.wait() => Some(s),
                        _ = stop.cancelled() => None,
                    };
                    probe_stop.cancel();
                    let _ = probe.await;
                    inst.status.ready.store(false, Ordering::Release);
                    let status = match waited {
                        Some(s) => s,
                        None => {
                            inst.status.set_state(ProcState::Stopping);
                            let _ = process::terminate(&mut child, pid, self.grace).await;
                            self.forget(pid);
                            inst.status.pid.store(0, Ordering::Relaxed);
                            break;
                        }
                    };
                    // The leader is gone; whatever else it started in its group goes too.
                    process::signal_group(pid, Signal::SIGKILL);
                    self.forget(pid);
                    inst.status.pid.store(0, Ordering::Relaxed);
                    let exit = match status {
                        Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                            (Some(c), _) => Exit::Code(c),
                            (None, Some(sig)) => Exit::Signal(sig),
                            (None, None) => Exit::Code(-1),
                        },
                        Err(_) => Exit::Code(-1),
                    };
                    let (code, signal) = match exit {
                        Exit::Code(c) => (Some(c), None),
                        Exit::Signal(s) => (None, Some(s)),
                        Exit::SpawnFailed => (None, None),
                    };
                    self.events.emit(Lifecycle::Exited { instance: inst.name.clone(), code, signal });
                    inst.status.set_state(ProcState::Exited { code, signal });
                    exit
                }
            };
            if stop.is_cancelled() || !backoff::should_restart(inst.def.restart, exit) {
                break;
            }
            if started.elapsed() >= backoff::STABLE_AFTER {
                crashes = 0;
            }
            crashes += 1;
            let delay = backoff::delay(crashes);
            let restarts = inst.status.restarts.load(Ordering::Relaxed) + 1;
            inst.status.backoff_ms.store(delay.as_millis() as u64, Ordering::Relaxed);
            inst.status.set_state(ProcState::Backoff);
            self.events.emit(Lifecycle::Restarting {
                instance: inst.name.clone(),
                delay_ms: delay.as_millis() as u64,
                restarts,
            });
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => break,
            }
            inst.status.backoff_ms.store(0, Ordering::Relaxed);
            inst.status.restarts.store(restarts, Ordering::Relaxed);
        }
        if stop.is_cancelled() {
            inst.status.set_state(ProcState::Stopped);
            self.events.emit(Lifecycle::Stopped { instance: inst.name.clone() });
        }
    }

    fn forget(&self, pgid: u32) {
        if let Some(r) = &self.reaper {
            r.forget(pgid);
        }
    }

    /// Readiness of one running process: fast probes until ready, then every second.
    async fn probe_loop(
        self: Arc<Self>,
        inst: Arc<Instance>,
        env: Vec<(String, String)>,
        stop: CancellationToken,
        started: Instant,
    ) {
        let Some(app) = inst.ports.first().map(|p| p.app) else {
            return;
        };
        let mut ready = false;
        let mut failures = 0u32;
        // When readiness was lost (`None` until it first is).
        let mut lost: Option<Instant> = None;
        loop {
            let result = probe::check(&inst.def.readiness, app, &self.cwd, &env).await;
            match result {
                Ok(()) => {
                    failures = 0;
                    if !ready {
                        ready = true;
                        inst.status.ready.store(true, Ordering::Release);
                        inst.status.set_state(ProcState::Ready);
                        let instance = inst.name.clone();
                        self.events.emit(match lost.take() {
                            Some(at) => Lifecycle::ReadyAgain { instance, after_ms: at.elapsed().as_millis() as u64 },
                            None => Lifecycle::Ready { instance, after_ms: started.elapsed().as_millis() as u64 },
                        });
                    }
                }
                Err(reason) => {
                    failures += 1;
                    if ready && failures >= probe::FAILURE_THRESHOLD {
                        ready = false;
                        inst.status.ready.store(false, Ordering::Release);
                        inst.status.set_state(ProcState::Running);
                        lost = Some(Instant::now());
                        self.events.emit(Lifecycle::NotReady { instance: inst.name.clone(), reason });
                    }
                }
            }
            let period = if ready {
                probe::PERIOD
            } else if started.elapsed() < probe::STARTUP_WINDOW {
                probe::STARTUP_PERIOD
            } else {
                probe::SLOW_START_PERIOD
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
        }
    }
}

//! Child processes: each in its own process group (so a stop reaches everything it started),
//! with a parent-death signal on Linux, output appended to its log file; stopped with
//! SIGTERM to the group, then SIGKILL after a grace period.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

pub struct Spawn<'a> {
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    pub cwd: &'a Path,
    pub log: &'a Path,
}

/// Resolves a program the way users expect from the mesh file: a path with a `/` is relative
/// to the mesh file's folder; a bare name is looked up in `PATH`.
pub fn resolve_program(program: &str, cwd: &Path) -> std::path::PathBuf {
    if program.contains('/') { crate::config::source::resolve(cwd, Path::new(program)) } else { program.into() }
}

pub fn spawn(s: &Spawn<'_>) -> std::io::Result<Child> {
    let (program, args) = s.argv.split_first().ok_or_else(|| std::io::Error::other("empty command"))?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(s.log)?;
    let mut cmd = Command::new(resolve_program(program, s.cwd));
    cmd.args(args)
        .envs(s.env.iter().map(|(k, v)| (k, v)))
        .current_dir(s.cwd)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true);
    die_with_parent(&mut cmd);
    cmd.spawn()
}

/// Linux: the child gets SIGTERM when devmesh dies, however it dies (the reaper process
/// covers grandchildren and other platforms).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
            if nix::unistd::getppid().as_raw() as u32 != parent {
                nix::libc::_exit(1);
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

/// Sends `sig` to a process group; a group that is already gone is not an error.
pub fn signal_group(pgid: u32, sig: Signal) {
    let _ = killpg(Pid::from_raw(pgid as i32), sig);
}

/// Whether any process of the group is still alive.
pub fn group_alive(pgid: u32) -> bool {
    killpg(Pid::from_raw(pgid as i32), None).is_ok()
}

/// SIGTERM to the group, up to `grace` for the leader to exit, then SIGKILL; returns once
/// the leader is reaped.
pub async fn terminate(child: &mut Child, pgid: u32, grace: Duration) -> std::io::Result<std::process::ExitStatus> {
    signal_group(pgid, Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => {
            signal_group(pgid, Signal::SIGKILL);
            status
        }
        Err(_) => {
            signal_group(pgid, Signal::SIGKILL);
            child.wait().await
        }
    }
}

//! The orphan guard: a tiny helper process (`devmesh __reaper`) that learns the process
//! groups devmesh starts and, when devmesh goes away however it goes (even SIGKILL), ends
//! them: SIGTERM, then SIGKILL two seconds later. It notices through its stdin pipe closing.

use std::io::{BufRead, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::process::{group_alive, signal_group};

pub const SUBCOMMAND: &str = "__reaper";

/// The devmesh side: tells the reaper which groups exist.
pub struct Reaper {
    stdin: Mutex<Option<ChildStdin>>,
    _child: Mutex<Child>,
}

impl Reaper {
    pub fn start() -> std::io::Result<Reaper> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.arg(SUBCOMMAND).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::inherit());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take();
        Ok(Reaper { stdin: Mutex::new(stdin), _child: Mutex::new(child) })
    }

    fn send(&self, line: String) {
        if let Ok(mut guard) = self.stdin.lock()
            && let Some(stdin) = guard.as_mut()
            && stdin.write_all(line.as_bytes()).is_err()
        {
            *guard = None;
        }
    }

    pub fn watch(&self, pgid: u32) {
        self.send(format!("+{pgid}\n"));
    }

    pub fn forget(&self, pgid: u32) {
        self.send(format!("-{pgid}\n"));
    }
}

/// The helper's main loop (runs before any runtime is started).
pub fn run() -> ! {
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SIGINT from the terminal goes to devmesh, which stops the workloads itself.
        #[allow(unsafe_code)]
        // SAFETY: installing SIG_IGN has no handler code to run.
        unsafe {
            let _ = nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigIgn);
        }
    }
    let mut groups: Vec<u32> = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let (op, pgid) = line.split_at(line.len().min(1));
        let Ok(pgid) = pgid.parse::<u32>() else {
            continue;
        };
        match op {
            "+" => groups.push(pgid),
            "-" => groups.retain(|g| *g != pgid),
            _ => {}
        }
    }
    // devmesh is gone: end what it left.
    groups.retain(|g| group_alive(*g));
    for g in &groups {
        signal_group(*g, Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && groups.iter().any(|g| group_alive(*g)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for g in &groups {
        signal_group(*g, Signal::SIGKILL);
    }
    std::process::exit(0)
}

//! Process supervision through the `devmesh` binary: restarts with backoff, restart policies,
//! readiness gating, build steps, and that no child outlives devmesh (SIGTERM or SIGKILL).

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn sigkill(pid: u64) {
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
}

const CRASHY: &str = r#"
gateways: {}
services:
  crashy:
    ports: [{name: http, port: 80}]
    workloads:
      - command: ["{httpbin}"]
        readiness: {http: /health}
        restart: on-failure
  steady:
    ports: [{name: http, port: 80}]
    workloads:
      - name: once
        command: ["{httpbin}"]
        restart: never
      - name: clean
        command: ["{httpbin}"]
        restart: on-failure
"#;

/// The delay a "restarting in 250ms (restart #3)" line names, in ms.
fn delay_ms(line: &str) -> u64 {
    let d = line.split("restarting in ").nth(1).and_then(|r| r.split(' ').next()).unwrap_or("");
    match d.strip_suffix("ms") {
        Some(ms) => ms.parse().unwrap(),
        None => (d.trim_end_matches('s').parse::<f64>().unwrap() * 1000.0) as u64,
    }
}

#[test]
fn killed_workloads_restart_with_exponential_backoff() {
    let m = Mesh::start(CRASHY, &[]);
    m.wait_ready();
    // Counted from what is there once ready: a workload can also have failed once at start-up
    // (the machine is loaded), which takes a restart and doubles the next delay.
    let w = m.workload("crashy");
    let r0 = w["restarts"].as_u64().unwrap();
    let first = w["pid"].as_u64().unwrap();
    sigkill(first);
    m.wait_line("crashy                killed by signal 9 (SIGKILL)", Duration::from_secs(5));
    let line = m.wait_line(&format!("(restart #{})", r0 + 1), Duration::from_secs(5));
    let d1 = delay_ms(&line);
    if r0 == 0 {
        assert_eq!(d1, 250, "{line}");
    }
    let second = wait_until("crashy back and ready", Duration::from_secs(10), || {
        let w = m.workload("crashy");
        (w["restarts"] == r0 + 1 && w["state"] == "Ready").then(|| w["pid"].as_u64().unwrap())
    });
    assert_ne!(first, second);
    // Crashing again soon after: the delay doubles.
    sigkill(second);
    let line = m.wait_line(&format!("(restart #{})", r0 + 2), Duration::from_secs(5));
    assert_eq!(delay_ms(&line), 2 * d1, "{line}");
    let backoff = wait_until("the backoff to show in /workloads", Duration::from_secs(2), || {
        let w = m.workload("crashy");
        (w["state"] == "CrashLoopBackOff").then(|| w["backoff_ms"].as_u64().unwrap())
    });
    assert_eq!(backoff, 2 * d1);
    wait_until("second restart", Duration::from_secs(10), || {
        let w = m.workload("crashy");
        (w["restarts"] == r0 + 2 && w["state"] == "Ready").then_some(())
    });
    // While a workload is down it leaves the endpoints: /ready says so until it is back.
    assert!(m.log().contains("crashy                started (pid"));
}

#[test]
fn restart_policies_never_and_on_failure_with_exit_zero() {
    let m = Mesh::start(CRASHY, &[]);
    m.wait_ready();
    let once = m.workload("once");
    let inbound: std::net::SocketAddr = once["ports"][0]["inbound"].as_str().unwrap().parse().unwrap();
    assert_eq!(http(inbound, Req::post("/exit/3")).status, 200);
    m.wait_line("once                  exited with code 3", Duration::from_secs(5));
    let clean: std::net::SocketAddr = m.workload("clean")["ports"][0]["inbound"].as_str().unwrap().parse().unwrap();
    assert_eq!(http(clean, Req::post("/exit/0")).status, 200);
    m.wait_line("clean                 exited with code 0", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(600));
    let once = m.workload("once");
    assert_eq!(once["state"], "Exited(3)");
    assert_eq!(once["exit_code"], 3);
    assert_eq!(once["restarts"], 0, "restart: never");
    assert_eq!(m.workload("clean")["state"], "Exited(0)", "on-failure does not restart a clean exit");
    assert!(!m.log().contains("once                  restarting"));
    // Not every workload is ready now, and a service whose instances are gone has no endpoint.
    assert_eq!(m.admin(Req::get("/ready")).status, 503);
    let proxy: std::net::SocketAddr = m.workload("crashy")["outbound_proxy"].as_str().unwrap().parse().unwrap();
    let r = http(proxy, Req::get("http://steady/get").host("steady"));
    assert_eq!((r.status, r.text().as_str()), (503, "no healthy upstream"));
}

#[test]
fn sigterm_stops_every_child_before_devmesh_exits() {
    let mut m = Mesh::start(CRASHY, &[]);
    m.wait_ready();
    let pids: Vec<u32> =
        m.workloads().as_array().unwrap().iter().filter_map(|w| w["pid"].as_u64()).map(|p| p as u32).collect();
    assert_eq!(pids.len(), 3);
    let status = m.stop();
    assert!(status.success(), "{status}");
    for pid in pids {
        assert!(!alive(pid), "child {pid} outlived devmesh");
    }
    assert!(m.log().contains("mesh                  stopping: SIGTERM to every workload"));
}

#[test]
fn sigkill_of_devmesh_leaves_no_child_behind() {
    // A workload that starts a grandchild, which a parent-death signal alone would miss.
    let yaml = r#"
gateways: {}
services:
  web:
    ports: [{name: http, port: 80}]
    workloads:
      - command: [sh, -c, "sleep 600 & exec {httpbin}"]
        readiness: {http: /health}
"#;
    let mut m = Mesh::start(yaml, &[]);
    m.wait_ready();
    let pid = m.workload("web")["pid"].as_u64().unwrap() as u32;
    let grandchildren: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| s.rsplit(')').next().map(|r| r.split_whitespace().nth(1) == Some(&pid.to_string())))
                .unwrap_or(false)
        })
        .collect();
    // `sleep` was started by the shell before it exec'd httpbin, so it is httpbin's child.
    assert_eq!(grandchildren.len(), 1, "expected the sleep grandchild");
    let devmesh = m.pid();
    kill(Pid::from_raw(devmesh as i32), Signal::SIGKILL).unwrap();
    let _ = m.child.take().map(|mut c| c.wait());
    wait_until("workload and grandchild to die after devmesh was SIGKILLed", Duration::from_secs(8), || {
        (!alive(pid) && grandchildren.iter().all(|g| !alive(*g))).then_some(())
    });
}

#[test]
fn a_failing_build_step_aborts_up_with_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("devmesh.yaml"),
        mesh_yaml("build: [\"echo building\", \"exit 3\"]\nservices:\n  a:\n    ports: [{port: 80}]\n    workloads: [{command: [\"{httpbin}\"]}]\n"),
    )
    .unwrap();
    let (code, out, err) = devmesh(&["up", "--headless", "--admin", "127.0.0.1:0", "."], dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(out.contains("building"), "build output is shown: {out}");
    assert!(err.contains("error: build step 2 (`exit 3`) failed with exit code 3"), "{err}");
}

/// `cargo run -- up` gives devmesh cargo's package variables; a `cargo build` step that saw
/// them would rebuild ring and everything above it (and the next `cargo run` relink devmesh).
#[test]
fn build_steps_do_not_see_cargo_runs_package_variables() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("devmesh.yaml"),
        mesh_yaml("build: [\"env > build-env.txt\", \"exit 3\"]\nservices:\n  a:\n    ports: [{port: 80}]\n    workloads: [{command: [\"{httpbin}\"]}]\n"),
    )
    .unwrap();
    let out = std::process::Command::new(devmesh_bin())
        .args(["up", "--headless", "--admin", "127.0.0.1:0", "."])
        .current_dir(dir.path())
        .env("CARGO_PKG_NAME", "devmesh")
        .env("CARGO_MANIFEST_DIR", "/somewhere")
        .env("DEVMESH_KEEP_ME", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let env = std::fs::read_to_string(dir.path().join("build-env.txt")).unwrap();
    assert!(!env.contains("CARGO_PKG_NAME=") && !env.contains("CARGO_MANIFEST_DIR="), "{env}");
    assert!(env.contains("DEVMESH_KEEP_ME=1"), "other variables pass: {env}");
}

#[test]
fn workload_output_goes_to_its_log_file() {
    let m = Mesh::start(CRASHY, &[]);
    m.wait_ready();
    let log = wait_until("crashy's log", Duration::from_secs(5), || {
        std::fs::read_to_string(m.state_dir().join("logs/crashy.log")).ok().filter(|l| l.contains("listening"))
    });
    assert!(log.contains("httpbin crashy listening on 127.0.0.1:"), "{log}");
}

#[test]
fn a_workload_that_recovers_its_readiness_says_how_long_it_was_not_ready() {
    let yaml = "gateways: {}\nservices:\n  flaky:\n    ports: [{name: http, port: 80}]\n    workloads:\n      - command: [\"{httpbin}\"]\n        readiness: {exec: [test, -f, ready.flag]}\n";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("devmesh.yaml"), mesh_yaml(yaml)).unwrap();
    std::fs::write(dir.path().join("ready.flag"), "").unwrap();
    let m = Mesh::start_in(dir);
    m.wait_ready();
    std::fs::remove_file(m.dir.path().join("ready.flag")).unwrap();
    m.wait_line("flaky                 not ready", Duration::from_secs(10));
    std::fs::write(m.dir.path().join("ready.flag"), "").unwrap();
    let line = m.wait_line("ready again after", Duration::from_secs(10));
    assert!(line.contains("s not ready"), "{line}");
    assert_eq!(m.log().matches("flaky                 ready (").count(), 1, "the first readiness only: {}", m.log());
}

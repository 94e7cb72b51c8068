//! The one-run benchmark: the same upstream reached directly, through devmesh (outbound
//! passthrough, a plaintext client on a PERMISSIVE inbound, the sidecar pair over mTLS, the
//! gateway over mTLS), through nginx and through haproxy — interleaved, several rounds, medians
//! of paired ratios, so only ratios from one run are compared. Run it with `scripts/bench`.
//!
//!   bench [--rounds N] [--duration SECONDS] [--bin-dir DIR] [--out DIR] [--smoke]
//!
//! Needs `wrk`, `nginx` and `haproxy` on PATH. Writes a table to stdout and JSON to
//! `<out>/bench-<unix time>.json` and `<out>/latest.json`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The reference every target's throughput is compared with.
const NGINX: &str = "nginx 1-hop";

struct Opts {
    rounds: usize,
    duration: u64,
    bin_dir: PathBuf,
    out: PathBuf,
    smoke: bool,
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let smoke = args.iter().any(|a| a == "--smoke");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Opts {
        rounds: get("--rounds").and_then(|r| r.parse().ok()).unwrap_or(if smoke { 1 } else { 5 }),
        duration: get("--duration").and_then(|d| d.parse().ok()).unwrap_or(if smoke { 1 } else { 10 }),
        bin_dir: get("--bin-dir")
            .map(PathBuf::from)
            .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
            .unwrap_or_else(|| root.join("target/release")),
        out: get("--out").map(PathBuf::from).unwrap_or_else(|| root.join("target/bench")),
        smoke,
    }
}

fn die(msg: &str) -> ! {
    eprintln!("bench: {msg}");
    std::process::exit(1);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| die(&e.to_string()))
}

/// A child killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `devmesh up` with its stderr lines collected.
struct Devmesh {
    proc: Proc,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Devmesh {
    fn start(bin: &Path, mesh: &Path, state: &Path) -> Devmesh {
        let mut child = Command::new(bin)
            .args(["up", "--headless", "--no-build", "--admin", "127.0.0.1:0", "--state-dir"])
            .arg(state)
            .arg(mesh)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| die(&format!("devmesh: {e}")));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let Some(stderr) = child.stderr.take() else { die("no stderr") };
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut v) = sink.lock() {
                    v.push(l);
                }
            }
        });
        Devmesh { proc: Proc(child), lines }
    }

    fn wait_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(l) = self.lines.lock().ok().and_then(|v| v.iter().find(|l| l.contains(needle)).cloned()) {
                return l;
            }
            if Instant::now() > deadline {
                die(&format!(
                    "devmesh never printed {needle:?}:\n{}",
                    self.lines.lock().map(|v| v.join("\n")).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn addr(&self, who: &str) -> SocketAddr {
        let line = self.wait_line(who);
        line.split("http://")
            .nth(1)
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| die(&format!("no address in {line}")))
    }

    fn pid(&self) -> u32 {
        self.proc.0.id()
    }
}

/// One GET over a fresh connection; the status code, or 0.
fn get_status(addr: SocketAddr, path: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return 0 };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).unwrap_or(0);
    std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn get_json(addr: SocketAddr, path: &str) -> Value {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| die(&e.to_string()));
    let _ = s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes());
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or(Value::Null)
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds (user + system) of processes so far.
fn cpu_seconds(pids: &[u32], tck: f64) -> f64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            let f: Vec<&str> = s.rsplit(')').next()?.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .sum::<f64>()
        / tck
}

fn rss_kb(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// All processes of a process tree rooted at `pid` (nginx and its workers).
fn tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
                let ppid = std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .ok()
                    .and_then(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)?.parse::<u32>().ok()));
                if ppid == Some(parent) && !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        i += 1;
    }
    out
}

/// The vCPUs a process may run on, as `taskset -c -p` prints them (`0-3,6`).
fn affinity(pid: u32) -> Option<String> {
    let out = Command::new("taskset").args(["-c", "-p", &pid.to_string()]).stderr(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).rsplit(':').next()?.trim().to_string())
}

/// Sets the vCPUs of every thread of `pid`.
fn set_affinity(pid: u32, cpus: &str) -> bool {
    Command::new("taskset")
        .args(["-a", "-c", "-p", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The highest-numbered vCPU of a `taskset` list.
fn last_cpu(list: &str) -> Option<usize> {
    list.split(',').filter_map(|part| part.rsplit('-').next()?.trim().parse().ok()).max()
}

#[derive(Clone, Debug, Default)]
struct Run {
    rps: f64,
    mean_ms: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    requests: f64,
    errors: u64,
    cpu_s: f64,
    rss_kb: u64,
}

fn parse_time_ms(s: &str) -> f64 {
    let (num, unit) = s.trim().split_at(s.trim().find(|c: char| c.is_alphabetic()).unwrap_or(s.trim().len()));
    let v: f64 = num.parse().unwrap_or(0.0);
    match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        _ => v,
    }
}

/// Runs wrk against `url` (a Lua script sets an absolute-form path for proxy requests).
fn wrk(url: &str, conns: u32, secs: u64, script: Option<&Path>, watch: &[u32], tck: f64) -> Run {
    wrk_on(None, url, conns, secs, script, watch, tck)
}

/// [`wrk`], run on the vCPU `cpu` when one is given.
fn wrk_on(cpu: Option<usize>, url: &str, conns: u32, secs: u64, script: Option<&Path>, watch: &[u32], tck: f64) -> Run {
    let mut cmd = match cpu {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", &c.to_string(), "wrk"]);
            cmd
        }
        None => Command::new("wrk"),
    };
    cmd.args(["-t1", &format!("-c{conns}"), &format!("-d{secs}s"), "--latency", "--timeout", "5s"]);
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    cmd.arg(url);
    let cpu0 = cpu_seconds(watch, tck);
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| die(&format!("wrk: {e}")));
    let rss_max = Arc::new(Mutex::new(0u64));
    let (watch_v, rss) = (watch.to_vec(), rss_max.clone());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done2 = done.clone();
    let sampler = std::thread::spawn(move || {
        while !done2.load(std::sync::atomic::Ordering::Relaxed) {
            let v = rss_kb(&watch_v);
            if let Ok(mut m) = rss.lock() {
                *m = (*m).max(v);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let out = child.wait_with_output().unwrap_or_else(|e| die(&format!("wrk: {e}")));
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.join();
    let cpu = cpu_seconds(watch, tck) - cpu0;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut run = Run { cpu_s: cpu, rss_kb: rss_max.lock().map(|v| *v).unwrap_or(0), ..Run::default() };
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            run.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("Latency").filter(|v| !v.contains("Distribution")) {
            run.mean_ms = v.split_whitespace().next().map_or(0.0, parse_time_ms);
        } else if let Some(v) = t.strip_prefix("50%") {
            run.p50_ms = parse_time_ms(v);
        } else if let Some(v) = t.strip_prefix("90%") {
            run.p90_ms = parse_time_ms(v);
        } else if let Some(v) = t.strip_prefix("99%") {
            run.p99_ms = parse_time_ms(v);
        } else if t.contains(" requests in ") {
            run.requests = t.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            run.errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            run.errors += v.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok()).sum::<u64>();
        }
    }
    if run.rps == 0.0 {
        eprintln!("bench: wrk gave no result for {url}:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    run
}

struct Target {
    name: &'static str,
    url: String,
    script: Option<PathBuf>,
    /// Processes whose CPU and memory the run charges to this target.
    pids: Vec<u32>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// RSS that one more idle workload (with its sidecar) adds: a mesh with one replica against one
/// with 21, of a process that does nothing.
fn per_sidecar_rss(devmesh: &Path, tmp: &Path) -> Option<f64> {
    let mut rss = Vec::new();
    for replicas in [1, 21] {
        let dir = tmp.join(format!("idle-{replicas}"));
        std::fs::create_dir_all(&dir).ok()?;
        let mesh = format!(
            "gateways: {{}}\nservices:\n  idle:\n    ports: [{{name: http, port: 8000}}]\n    workloads:\n      - command: [sleep, \"600\"]\n        replicas: {replicas}\n        readiness: {{exec: [\"true\"]}}\n"
        );
        std::fs::write(dir.join("devmesh.yaml"), mesh).ok()?;
        let d = Devmesh::start(devmesh, &dir.join("devmesh.yaml"), &dir.join("state"));
        d.wait_line("all workloads ready");
        std::thread::sleep(Duration::from_secs(2));
        rss.push(rss_kb(&[d.pid()]) as f64);
    }
    Some((rss[1] - rss[0]) / 20.0 / 1024.0)
}

/// Time from `devmesh up` to the first 200 on `path` through the gateway, and idle RSS.
/// The mesh file's commands name release binaries; they are pointed at `bin_dir` so the run
/// measures the build under test (a debug build in CI, where no release build exists).
fn startup(devmesh: &Path, bin_dir: &Path, mesh_dir: &Path, path: &str, tmp: &Path) -> Option<(f64, u64)> {
    let original = std::fs::read_to_string(mesh_dir.join("devmesh.yaml"))
        .ok()?
        .replace("../../target/release/", &format!("{}/", bin_dir.display()))
        .replace("../target/release/", &format!("{}/", bin_dir.display()));
    if original.lines().any(|l| l.starts_with("gateways:")) {
        eprintln!("startup of {}: the mesh file already declares gateways", mesh_dir.display());
        return None;
    }
    let bench_mesh = mesh_dir.join(".bench-devmesh.yaml");
    std::fs::write(
        &bench_mesh,
        format!("{original}\ngateways:\n  istio-ingressgateway:\n    labels: {{istio: ingressgateway}}\n    ports: {{80: 0}}\n"),
    )
    .ok()?;
    let mut times = Vec::new();
    let mut rss = 0;
    for i in 0..3 {
        let start = Instant::now();
        let d = Devmesh::start(devmesh, &bench_mesh, &tmp.join(format!("startup-{i}")));
        let gw = d.addr("istio-ingressgateway (port 80)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while get_status(gw, path) != 200 {
            if Instant::now() > deadline {
                let _ = std::fs::remove_file(&bench_mesh);
                eprintln!("startup of {}: no 200 on {path} within 30 s", mesh_dir.display());
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        if i == 2 {
            std::thread::sleep(Duration::from_secs(2));
            rss = rss_kb(&[d.pid()]);
        }
    }
    let _ = std::fs::remove_file(&bench_mesh);
    Some((median(times), rss))
}

/// `n` ServiceEntry hosts, each with a DestinationRule (two subsets) and a VirtualService of
/// five routes (the configuration of `a_thousand_services_and_five_thousand_routes_compile`).
fn big_config(n: usize, weight: u32) -> String {
    let mut y = String::new();
    for i in 0..n {
        let h = format!("svc-{i}.bench.test");
        y.push_str(&format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc-{i}}}\nspec:\n  hosts: [{h}]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints:\n  - {{address: 127.0.0.1, labels: {{version: v1}}}}\n  - {{address: 127.0.0.2, labels: {{version: v2}}}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc-{i}}}\nspec:\n  host: {h}\n  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]\n---\n\
             apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: svc-{i}}}\nspec:\n  hosts: [{h}]\n  http:\n\
             \x20 - match: [{{uri: {{prefix: /v2}}}}]\n    route: [{{destination: {{host: {h}, subset: v2}}}}]\n\
             \x20 - match: [{{headers: {{end-user: {{exact: jason}}}}}}]\n    route: [{{destination: {{host: {h}, subset: v2}}}}]\n\
             \x20 - match: [{{uri: {{regex: \"/items/{i}/[0-9]+\"}}}}]\n    timeout: 2s\n    route: [{{destination: {{host: {h}, subset: v1}}}}]\n\
             \x20 - match: [{{queryParams: {{debug: {{exact: \"1\"}}}}}}]\n    fault: {{abort: {{httpStatus: 503, percentage: {{value: 10}}}}}}\n    route: [{{destination: {{host: {h}, subset: v1}}}}]\n\
             \x20 - route:\n    - {{destination: {{host: {h}, subset: v1}}, weight: {weight}}}\n    - {{destination: {{host: {h}, subset: v2}}, weight: {}}}\n---\n",
            100 - weight
        ));
    }
    y
}

/// POSTs YAML to the admin API; the parsed JSON reply and the wall time of the request.
/// `token` is the run's admin token (`<state dir>/admin-token`).
fn post_yaml(admin: SocketAddr, token: &str, yaml: &str) -> (Value, f64) {
    use std::io::{Read, Write};
    let t = Instant::now();
    let Ok(mut s) = std::net::TcpStream::connect(admin) else { return (Value::Null, 0.0) };
    let head = format!(
        "POST /resources?source=bench.yaml HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/yaml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        yaml.len()
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(yaml.as_bytes());
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
    (serde_json::from_str(body).unwrap_or(Value::Null), ms)
}

/// Applies a 1000-service / 5000-route configuration (created, then every VirtualService
/// reconfigured) while wrk drives traffic through the gateway; reports devmesh's compile +
/// swap time for each, the whole apply (read, validate, compile, swap) and failed requests.
fn reload_under_load(admin: SocketAddr, token: &str, gateway: SocketAddr, secs: u64, tck: f64) -> Value {
    let url = format!("http://{gateway}/hello");
    let load = std::thread::spawn(move || wrk(&url, 8, secs, None, &[], tck));
    std::thread::sleep(Duration::from_millis(500));
    let mut applies = Vec::new();
    for weight in [80, 60] {
        let (reply, wall_ms) = post_yaml(admin, token, &big_config(1000, weight));
        let changed =
            reply["results"].as_array().map_or(0, |r| r.iter().filter(|x| x["action"] != "unchanged").count());
        applies.push(json!({
            "resources_changed": changed,
            "compile_and_swap_ms": reply["took_us"].as_f64().map(|us| us / 1000.0),
            "apply_wall_ms": wall_ms,
            "errors": reply["errors"],
        }));
        std::thread::sleep(Duration::from_millis(300));
    }
    let run = load.join().unwrap_or_default();
    json!({"applies": applies, "requests": run.requests, "failed_requests": run.errors})
}

fn main() {
    let o = opts();
    for tool in ["wrk", "nginx", "haproxy"] {
        if Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .stdout(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            die(&format!("{tool} is not installed (scripts/bench installs it with apt)"));
        }
    }
    let devmesh = o.bin_dir.join("devmesh");
    let httpbin = o.bin_dir.join("examples/httpbin");
    for b in [&devmesh, &httpbin] {
        if !b.exists() {
            die(&format!("{} is missing (cargo build --release --example httpbin)", b.display()));
        }
    }
    let tck = clk_tck();
    let tmp = std::env::temp_dir().join(format!("devmesh-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&tmp);

    // The mesh: `web` is the upstream every target reaches; `client` is a caller.
    let mesh = format!(
        "gateways:\n  istio-ingressgateway:\n    labels: {{istio: ingressgateway}}\n    ports: {{80: 0}}\nconfig: [routes.yaml]\nservices:\n  web:\n    ports: [{{name: http, port: 8000}}]\n    workloads: [{{command: [\"{h}\"], readiness: {{http: /health}}}}]\n  client:\n    ports: [{{name: http, port: 8000}}]\n    workloads: [{{command: [\"{h}\"], readiness: {{http: /health}}}}]\n",
        h = httpbin.display()
    );
    let routes = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  selector: {istio: ingressgateway}\n  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [\"*\"]}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http: [{route: [{destination: {host: web}}]}]\n";
    let _ = std::fs::write(tmp.join("devmesh.yaml"), mesh);
    let _ = std::fs::write(tmp.join("routes.yaml"), routes);
    let dm = Devmesh::start(&devmesh, &tmp.join("devmesh.yaml"), &tmp.join("state"));
    let admin = dm.addr("admin ");
    let admin_token = std::fs::read_to_string(tmp.join("state").join("admin-token")).unwrap_or_default();
    let gateway = dm.addr("istio-ingressgateway (port 80)");
    dm.wait_line("all workloads ready");
    let workloads = get_json(admin, "/workloads");
    let find = |name: &str| {
        workloads.as_array().and_then(|a| a.iter().find(|w| w["name"] == name)).cloned().unwrap_or(Value::Null)
    };
    let web = find("web");
    let client = find("client");
    let app: SocketAddr =
        web["ports"][0]["app"].as_str().and_then(|a| a.parse().ok()).unwrap_or_else(|| die("no app port"));
    let inbound = web["ports"][0]["inbound"].as_str().unwrap_or("").to_string();
    let outbound = client["outbound_proxy"].as_str().unwrap_or("").to_string();
    let up_host = client["upstreams"]["web"]["host"].as_str().unwrap_or("").to_string();
    let up_port = client["upstreams"]["web"]["ports"]["8000"].as_u64().unwrap_or(0);

    // nginx and haproxy as 1-hop reverse proxies to the same app, keep-alive upstreams.
    let nginx_port = free_port();
    let nginx_conf = format!(
        "worker_processes auto;\npid {d}/nginx.pid;\nerror_log {d}/nginx.err warn;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n  fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n  upstream app {{ server {app}; keepalive 64; }}\n  server {{\n    listen 127.0.0.1:{nginx_port};\n    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n}}\n",
        d = tmp.display()
    );
    let _ = std::fs::write(tmp.join("nginx.conf"), nginx_conf);
    let nginx = Proc(
        Command::new("nginx")
            .arg("-c")
            .arg(tmp.join("nginx.conf"))
            .arg("-p")
            .arg(&tmp)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| die(&format!("nginx: {e}"))),
    );
    let haproxy_port = free_port();
    let haproxy_conf = format!(
        "global\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  option http-keep-alive\n  http-reuse always\nfrontend f\n  bind 127.0.0.1:{haproxy_port}\n  default_backend b\nbackend b\n  server s1 {app}\n"
    );
    let _ = std::fs::write(tmp.join("haproxy.cfg"), haproxy_conf);
    let haproxy = Proc(
        Command::new("haproxy")
            .arg("-f")
            .arg(tmp.join("haproxy.cfg"))
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| die(&format!("haproxy: {e}"))),
    );
    let nginx_addr: SocketAddr = ([127, 0, 0, 1], nginx_port).into();
    let haproxy_addr: SocketAddr = ([127, 0, 0, 1], haproxy_port).into();
    for (name, a) in [("nginx", nginx_addr), ("haproxy", haproxy_addr), ("gateway", gateway)] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while get_status(a, "/hello") != 200 {
            if Instant::now() > deadline {
                die(&format!("{name} does not answer 200 on {a}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Proxy-style requests (absolute URI) for the passthrough target.
    let script = tmp.join("proxy.lua");
    let _ = std::fs::write(&script, format!("wrk.path = \"http://{app}/hello\"\nwrk.headers[\"Host\"] = \"{app}\"\n"));

    let dpid = dm.pid();
    let targets = vec![
        Target { name: "direct", url: format!("http://{app}/hello"), script: None, pids: vec![] },
        Target {
            name: "devmesh 1-hop passthrough",
            url: format!("http://{outbound}/"),
            script: Some(script),
            pids: vec![dpid],
        },
        Target {
            name: "devmesh 1-hop inbound plaintext",
            url: format!("http://{inbound}/hello"),
            script: None,
            pids: vec![dpid],
        },
        Target {
            name: "devmesh sidecar pair (mTLS)",
            url: format!("http://{up_host}:{up_port}/hello"),
            script: None,
            pids: vec![dpid],
        },
        Target {
            name: "devmesh gateway (mTLS)",
            url: format!("http://{gateway}/hello"),
            script: None,
            pids: vec![dpid],
        },
        Target { name: NGINX, url: format!("http://{nginx_addr}/hello"), script: None, pids: tree(nginx.0.id()) },
        Target {
            name: "haproxy 1-hop",
            url: format!("http://{haproxy_addr}/hello"),
            script: None,
            pids: tree(haproxy.0.id()),
        },
    ];

    // Interleaved rounds. At c=32 every target runs between two nginx runs (N A N B N ...),
    // and its ratio to nginx is taken against the mean of its two neighbours: the machine's
    // drift over a round then cancels out of the ratio. Then every target at c=1.
    let mut results: BTreeMap<&str, Vec<(Run, Run)>> = BTreeMap::new();
    let mut nginx_ref: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for t in &targets {
        wrk(&t.url, 32, 1, t.script.as_deref(), &[], tck);
    }
    let Some(reference) = targets.iter().find(|t| t.name == NGINX) else { die("no nginx target") };
    for round in 0..o.rounds {
        eprintln!("bench: round {}/{}", round + 1, o.rounds);
        let mut c32: BTreeMap<&str, Run> = BTreeMap::new();
        let mut before = wrk(&reference.url, 32, o.duration, None, &reference.pids, tck);
        for t in targets.iter().filter(|t| t.name != NGINX) {
            let run = wrk(&t.url, 32, o.duration, t.script.as_deref(), &t.pids, tck);
            let after = wrk(&reference.url, 32, o.duration, None, &reference.pids, tck);
            nginx_ref.entry(t.name).or_default().push((before.rps + after.rps) / 2.0);
            c32.insert(t.name, run);
            c32.entry(NGINX).or_insert_with(|| before.clone());
            before = after;
        }
        for t in &targets {
            let c1 = wrk(&t.url, 1, o.duration, t.script.as_deref(), &t.pids, tck);
            let Some(c32) = c32.remove(t.name) else { die("a target has no c=32 run") };
            results.entry(t.name).or_default().push((c32, c1));
        }
    }
    let idle_rss_kb = rss_kb(&[dpid]);

    // Latency at a fixed ~1000 req/s (one connection, 1 ms between requests): Istio publishes
    // its sidecar pair's added p90 at 1000 req/s.
    let paced = tmp.join("paced.lua");
    let _ = std::fs::write(&paced, "function delay() return 1 end\n");
    let mut fixed_rate: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
    for _ in 0..o.rounds {
        for t in targets.iter().filter(|t| matches!(t.name, "direct" | "devmesh sidecar pair (mTLS)" | "nginx 1-hop")) {
            fixed_rate.entry(t.name).or_default().push(wrk(&t.url, 1, o.duration.min(5), Some(&paced), &[], tck));
        }
    }
    let p90_at_1000 =
        |name: &str| median(fixed_rate.get(name).map(|v| v.iter().map(|r| r.p90_ms).collect()).unwrap_or_default());
    let rate_at_1000 =
        |name: &str| median(fixed_rate.get(name).map(|v| v.iter().map(|r| r.rps).collect()).unwrap_or_default());
    let fixed = json!({
        "rate_rps": rate_at_1000("devmesh sidecar pair (mTLS)"),
        "direct_p90_ms": p90_at_1000("direct"),
        "sidecar_pair_p90_ms": p90_at_1000("devmesh sidecar pair (mTLS)"),
        "nginx_p90_ms": p90_at_1000("nginx 1-hop"),
        "sidecar_pair_added_p90_ms": p90_at_1000("devmesh sidecar pair (mTLS)") - p90_at_1000("direct"),
        "nginx_added_p90_ms": p90_at_1000("nginx 1-hop") - p90_at_1000("direct"),
    });

    // c=1 again with wrk, every proxy and the app on one vCPU. Unpinned, a c=1 request's
    // latency is mostly where the scheduler happens to put wrk, the proxy and the app: on a VM
    // a wakeup that crosses to the other vCPU costs tens of microseconds, and which placement a
    // run gets changes from run to run (and, for nginx, whenever it recycles a connection after
    // `keepalive_requests`). On one vCPU every wakeup is local, so the added latency is the
    // proxy's own time per request. Affinities are put back afterwards.
    let pinned: Vec<u32> = [tree(dpid), tree(nginx.0.id()), tree(haproxy.0.id())].concat();
    let saved: Vec<(u32, String)> = pinned.iter().filter_map(|p| Some((*p, affinity(*p)?))).collect();
    let cpu = affinity(std::process::id()).as_deref().and_then(last_cpu);
    let mut one_cpu: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
    match cpu {
        Some(cpu) if saved.len() == pinned.len() => {
            if pinned.iter().all(|p| set_affinity(*p, &cpu.to_string())) {
                for _ in 0..o.rounds {
                    for t in &targets {
                        let run = wrk_on(Some(cpu), &t.url, 1, o.duration.min(5), t.script.as_deref(), &[], tck);
                        one_cpu.entry(t.name).or_default().push(run);
                    }
                }
            } else {
                eprintln!("bench: could not pin the processes to vCPU {cpu}; no one-vCPU c=1 runs");
            }
            for (p, list) in &saved {
                set_affinity(*p, list);
            }
        }
        _ => eprintln!("bench: taskset is not available; no one-vCPU c=1 runs"),
    }
    let one_cpu_direct = one_cpu.get("direct").cloned().unwrap_or_default();
    let one_cpu_nginx = one_cpu.get(NGINX).cloned().unwrap_or_default();

    let rounds_of = |name: &str| results.get(name).cloned().unwrap_or_default();
    let direct = rounds_of("direct");
    let nginx_r = rounds_of(NGINX);
    let mut rows = Vec::new();
    for t in &targets {
        let rs = rounds_of(t.name);
        let ratio = |base: &[(Run, Run)]| {
            median(
                rs.iter()
                    .zip(base)
                    .map(|((a, _), (b, _))| if b.rps > 0.0 { a.rps / b.rps } else { f64::NAN })
                    .collect(),
            )
        };
        // Against the nginx runs on either side of this target's own run.
        let refs = nginx_ref.get(t.name).cloned().unwrap_or_default();
        let per_round: Vec<f64> = if t.name == NGINX {
            vec![1.0; rs.len()]
        } else {
            rs.iter()
                .zip(&refs)
                .map(|((a, _), b)| if *b > 0.0 { (a.rps / b * 1000.0).round() / 1000.0 } else { f64::NAN })
                .collect()
        };
        let added =
            |base: &[(Run, Run)]| median(rs.iter().zip(base).map(|((_, a), (_, b))| a.p50_ms - b.p50_ms).collect());
        let cpu_per_1k = median(
            rs.iter()
                .map(
                    |(a, _)| {
                        if a.requests > 0.0 && !t.pids.is_empty() { a.cpu_s / a.requests * 1000.0 } else { f64::NAN }
                    },
                )
                .collect(),
        );
        // One vCPU: medians of the per-round differences, so drift between rounds cancels.
        let pinned_runs = one_cpu.get(t.name).cloned().unwrap_or_default();
        let paired = |base: &[Run], f: fn(&Run) -> f64| {
            if pinned_runs.is_empty() || base.is_empty() {
                return Value::Null;
            }
            json!(median(pinned_runs.iter().zip(base).map(|(a, b)| f(a) - f(b)).collect()))
        };
        let one_cpu_row = if pinned_runs.is_empty() {
            Value::Null
        } else {
            json!({
                "p50_ms": median(pinned_runs.iter().map(|r| r.p50_ms).collect()),
                "mean_ms": median(pinned_runs.iter().map(|r| r.mean_ms).collect()),
                "rps": median(pinned_runs.iter().map(|r| r.rps).collect()),
                "added_p50_ms": paired(&one_cpu_direct, |r| r.p50_ms),
                "added_mean_ms": paired(&one_cpu_direct, |r| r.mean_ms),
                "mean_minus_nginx_ms": paired(&one_cpu_nginx, |r| r.mean_ms),
                "errors": pinned_runs.iter().map(|r| r.errors).sum::<u64>(),
            })
        };
        rows.push(json!({
            "target": t.name,
            "c1_one_vcpu": one_cpu_row,
            "c32_rps": median(rs.iter().map(|(a, _)| a.rps).collect()),
            "c32_p50_ms": median(rs.iter().map(|(a, _)| a.p50_ms).collect()),
            "c32_p99_ms": median(rs.iter().map(|(a, _)| a.p99_ms).collect()),
            "c1_rps": median(rs.iter().map(|(_, b)| b.rps).collect()),
            "c1_p50_ms": median(rs.iter().map(|(_, b)| b.p50_ms).collect()),
            "c1_p99_ms": median(rs.iter().map(|(_, b)| b.p99_ms).collect()),
            "vs_direct_c32": ratio(&direct),
            "vs_nginx_c32": median(per_round.clone()),
            "vs_nginx_c32_rounds": per_round,
            "c32_rps_rounds": rs.iter().map(|(a, _)| a.rps.round()).collect::<Vec<_>>(),
            "added_p50_c1_ms": added(&direct),
            "added_p50_c1_vs_nginx_ms": added(&nginx_r),
            "cpu_s_per_1k_req": if t.pids.is_empty() { Value::Null } else { json!(cpu_per_1k) },
            "rss_under_load_mib": if t.pids.is_empty() { Value::Null } else { json!(rs.iter().map(|(a, _)| a.rss_kb).max().unwrap_or(0) as f64 / 1024.0) },
            "errors": rs.iter().map(|(a, b)| a.errors + b.errors).sum::<u64>(),
        }));
    }
    drop(nginx);
    drop(haproxy);
    let reload = reload_under_load(admin, &admin_token, gateway, if o.smoke { 2 } else { 4 }, tck);
    drop(dm);

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let demo = startup(&devmesh, &o.bin_dir, &root.join("examples/demo"), "/get", &tmp);
    let sidecar_rss = per_sidecar_rss(&devmesh, &tmp);
    let bookinfo = if o.bin_dir.join("bookinfo").exists() && !o.smoke {
        startup(&devmesh, &o.bin_dir, &root.join("bookinfo"), "/productpage", &tmp)
    } else {
        None
    };

    println!(
        "\ndevmesh benchmark: wrk -t1, {} round(s) x {}s, medians; ratios are paired per round\n",
        o.rounds, o.duration
    );
    println!(
        "{:<32} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>9} {:>9} {:>8} {:>7}",
        "target",
        "c32 req/s",
        "/direct",
        "/nginx",
        "p50 ms",
        "p99 ms",
        "c1 req/s",
        "c1 p50",
        "+p50 c1",
        "CPU s/1k",
        "RSS MiB",
        "errors"
    );
    for r in &rows {
        let f = |k: &str, p: usize| r[k].as_f64().map_or("-".to_string(), |v| format!("{v:.p$}"));
        println!(
            "{:<32} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>9} {:>9} {:>8} {:>7}",
            r["target"].as_str().unwrap_or(""),
            f("c32_rps", 0),
            f("vs_direct_c32", 2),
            f("vs_nginx_c32", 2),
            f("c32_p50_ms", 3),
            f("c32_p99_ms", 3),
            f("c1_rps", 0),
            f("c1_p50_ms", 3),
            f("added_p50_c1_ms", 3),
            f("cpu_s_per_1k_req", 4),
            f("rss_under_load_mib", 1),
            r["errors"],
        );
    }
    if rows.iter().any(|r| !r["c1_one_vcpu"].is_null()) {
        println!(
            "\nc=1 with wrk, the proxy and the app on one vCPU (every wakeup local: the proxy's own time per request):"
        );
        println!(
            "{:<32} {:>9} {:>8} {:>9} {:>9} {:>10} {:>14}",
            "target", "req/s", "p50 ms", "mean ms", "+p50 ms", "+mean ms", "mean - nginx"
        );
        for r in &rows {
            let p = &r["c1_one_vcpu"];
            let f = |k: &str, d: usize| p[k].as_f64().map_or("-".to_string(), |v| format!("{v:.d$}"));
            println!(
                "{:<32} {:>9} {:>8} {:>9} {:>9} {:>10} {:>14}",
                r["target"].as_str().unwrap_or(""),
                f("rps", 0),
                f("p50_ms", 3),
                f("mean_ms", 4),
                f("added_p50_ms", 3),
                f("added_mean_ms", 4),
                f("mean_minus_nginx_ms", 4),
            );
        }
    }
    let fmt_startup = |s: &Option<(f64, u64)>| {
        s.map_or("not measured".to_string(), |(ms, kb)| {
            format!("{ms:.0} ms to first routed 200, idle RSS {:.1} MiB", kb as f64 / 1024.0)
        })
    };
    if o.rounds > 1 {
        println!("\nc=32 throughput / nginx's, round by round (the spread is the machine's noise):");
        for r in &rows {
            let rounds = r["vs_nginx_c32_rounds"].as_array().cloned().unwrap_or_default();
            let text: Vec<String> =
                rounds.iter().map(|v| v.as_f64().map_or("-".into(), |v| format!("{v:.2}"))).collect();
            println!("  {:<32} {}", r["target"].as_str().unwrap_or(""), text.join("  "));
        }
    }
    println!("\nstartup, example mesh: {}", fmt_startup(&demo));
    println!("startup, bookinfo:     {}", fmt_startup(&bookinfo));
    println!("devmesh idle RSS after the load: {:.1} MiB", idle_rss_kb as f64 / 1024.0);
    println!(
        "each extra idle workload sidecar: {}",
        sidecar_rss.map_or("not measured".to_string(), |m| format!("{:.3} MiB", m))
    );
    println!(
        "at ~{:.0} req/s (1 connection, 1 ms pacing): p90 direct {:.3} ms, sidecar pair {:.3} ms (+{:.3}), nginx {:.3} ms (+{:.3})",
        fixed["rate_rps"].as_f64().unwrap_or(0.0),
        fixed["direct_p90_ms"].as_f64().unwrap_or(0.0),
        fixed["sidecar_pair_p90_ms"].as_f64().unwrap_or(0.0),
        fixed["sidecar_pair_added_p90_ms"].as_f64().unwrap_or(0.0),
        fixed["nginx_p90_ms"].as_f64().unwrap_or(0.0),
        fixed["nginx_added_p90_ms"].as_f64().unwrap_or(0.0),
    );

    for (i, a) in reload["applies"].as_array().into_iter().flatten().enumerate() {
        println!(
            "reload {} (1000 services, 5000 routes, {} resources changed): compile + swap {:.1} ms, whole apply {:.0} ms",
            i + 1,
            a["resources_changed"],
            a["compile_and_swap_ms"].as_f64().unwrap_or(f64::NAN),
            a["apply_wall_ms"].as_f64().unwrap_or(f64::NAN),
        );
    }
    println!("requests during the reloads: {}, failed: {}", reload["requests"], reload["failed_requests"]);

    let report = json!({
        "rounds": o.rounds,
        "duration_s": o.duration,
        "rows": rows,
        "startup": {
            "demo": demo.map(|(ms, kb)| json!({"first_200_ms": ms, "idle_rss_mib": kb as f64 / 1024.0})),
            "bookinfo": bookinfo.map(|(ms, kb)| json!({"first_200_ms": ms, "idle_rss_mib": kb as f64 / 1024.0})),
        },
        "devmesh_idle_rss_mib_after_load": idle_rss_kb as f64 / 1024.0,
        "per_idle_sidecar_rss_mib": sidecar_rss,
        "fixed_rate_1000": fixed,
        "reload_1000_services": reload,
    });
    let _ = std::fs::create_dir_all(&o.out);
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    let _ = std::fs::write(o.out.join(format!("bench-{stamp}.json")), &text);
    let _ = std::fs::write(o.out.join("latest.json"), &text);
    println!("\nJSON: {}", o.out.join("latest.json").display());
    let _ = std::fs::remove_dir_all(&tmp);
}

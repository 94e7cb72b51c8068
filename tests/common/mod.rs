//! Test harness: meshes run through the real `devmesh` binary with every port ephemeral
//! (admin and gateways on port 0, their addresses read back from the lifecycle log), small
//! HTTP helpers, and polling with deadlines instead of sleeps.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

pub fn devmesh_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_devmesh"))
}

/// The example httpbin server, built once per test run if `cargo test` did not build it.
pub fn httpbin_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = devmesh_bin().parent().map(Path::to_path_buf).unwrap_or_default();
            let bin = dir.join("examples").join("httpbin");
            // Built once per test binary, even when present: `cargo test --test x` does not
            // rebuild examples, and a stale httpbin would test old code. A no-op when fresh.
            let status = cargo_build(&["--example", "httpbin"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("cargo build --example httpbin");
            assert!(status.success(), "building the httpbin example failed");
            bin
        })
        .clone()
}

/// `cargo build ARGS`, run from a test without the package variables `cargo test` sets for
/// it (`CARGO_PKG_*`, `CARGO_MANIFEST_DIR`, ...): ring's build script tracks some of them, so
/// with them the build would recompile ring and everything above it on every test run.
pub fn cargo_build(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.arg("build").args(args);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || key.starts_with("CARGO_BIN_")
            || ["CARGO_CRATE_NAME", "CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR"].contains(&key.as_ref())
        {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd
}

pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `devmesh up`.
pub struct Mesh {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub admin: SocketAddr,
    pub gateway: Option<SocketAddr>,
}

/// A mesh file using the httpbin example; `{httpbin}` in `yaml` is replaced by its path.
pub fn mesh_yaml(yaml: &str) -> String {
    yaml.replace("{httpbin}", &httpbin_bin().to_string_lossy())
}

impl Mesh {
    /// Writes `devmesh.yaml` (and `files`) to a fresh folder and runs `devmesh up` on it.
    pub fn start(yaml: &str, files: &[(&str, &str)]) -> Mesh {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("devmesh.yaml"), mesh_yaml(yaml)).expect("write mesh");
        for (name, body) in files {
            std::fs::write(dir.path().join(name), body).expect("write file");
        }
        Self::start_in(dir)
    }

    pub fn start_in(dir: tempfile::TempDir) -> Mesh {
        Self::start_with(dir, &[])
    }

    /// [`Mesh::start_in`] with extra `up` arguments.
    pub fn start_with(dir: tempfile::TempDir, args: &[&str]) -> Mesh {
        let mut child = Command::new(devmesh_bin())
            .args(["up", "--headless", "--admin", "127.0.0.1:0"])
            .args(args)
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn devmesh");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("DEVMESH_TEST_ECHO").is_some() {
                    eprintln!("[devmesh] {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut mesh = Mesh { child: Some(child), dir, lines, admin: "127.0.0.1:1".parse().unwrap(), gateway: None };
        mesh.admin = mesh.wait_addr("admin ");
        mesh.gateway = mesh.find_addr("istio-ingressgateway");
        mesh
    }

    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits for a stderr line containing `needle`.
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> String {
        wait_until(&format!("a log line with {needle:?}; log so far:\n{}", self.log()), timeout, || {
            self.lines.lock().unwrap().iter().find(|l| l.contains(needle)).cloned()
        })
    }

    fn addr_in(line: &str) -> Option<SocketAddr> {
        line.split("http://").nth(1)?.trim().parse().ok()
    }

    fn wait_addr(&mut self, who: &str) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(a) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(who) && l.contains("listening on"))
                .and_then(|l| Self::addr_in(l))
            {
                return a;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("devmesh exited ({status}) before listening:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "devmesh did not start:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn find_addr(&self, who: &str) -> Option<SocketAddr> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(who) && l.contains("listening on"))
            .and_then(|l| Self::addr_in(l))
    }

    pub fn wait_ready(&self) {
        self.wait_line("all workloads ready", Duration::from_secs(20));
    }

    pub fn gateway(&self) -> SocketAddr {
        self.gateway.expect("the mesh has a gateway")
    }

    /// The run's admin token (`<state dir>/admin-token`).
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.state_dir().join("admin-token")).expect("admin token").trim().to_string()
    }

    /// `req` to the admin API as the CLI sends it: its own Host, the token, and for a body
    /// YAML's content type unless one is set.
    pub fn admin(&self, mut req: Req) -> Resp {
        req.host = Some(self.admin.to_string());
        req.headers.push(("authorization".into(), format!("Bearer {}", self.token())));
        if !req.body.is_empty() && !req.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            req.headers.push(("content-type".into(), "application/yaml".into()));
        }
        http(self.admin, req)
    }

    pub fn workloads(&self) -> serde_json::Value {
        let r = self.admin(Req::get("/workloads"));
        assert_eq!(r.status, 200);
        serde_json::from_slice(&r.body).expect("workloads json")
    }

    pub fn workload(&self, name: &str) -> serde_json::Value {
        self.workloads()
            .as_array()
            .and_then(|a| a.iter().find(|w| w["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no workload {name}"))
    }

    /// Applies YAML through the admin API (`POST /resources`); the reply must be 200.
    pub fn apply(&self, yaml: &str) -> serde_json::Value {
        let r = self.admin(Req::post("/resources?source=test.yaml").with_body(yaml));
        assert_eq!(r.status, 200, "apply failed: {}", r.text());
        r.json()
    }

    /// Where an instance's application listens (first port).
    pub fn app(&self, instance: &str) -> SocketAddr {
        let w = self.workload(instance);
        w["ports"][0]["app"].as_str().and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("no app port: {w}"))
    }

    /// An instance's HTTP proxy listener (its `HTTP_PROXY`).
    pub fn outbound_proxy(&self, instance: &str) -> SocketAddr {
        let w = self.workload(instance);
        w["outbound_proxy"].as_str().and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("no proxy: {w}"))
    }

    /// An instance's listener for `service:port` (`<SERVICE>_SERVICE_HOST/PORT`).
    pub fn upstream(&self, instance: &str, service: &str, port: u16) -> SocketAddr {
        let w = self.workload(instance);
        let u = &w["upstreams"][service];
        let host = u["host"].as_str().unwrap_or_default();
        let p = u["ports"][port.to_string()].as_u64().unwrap_or_else(|| panic!("no upstream {service}:{port}: {w}"));
        format!("{host}:{p}").parse().unwrap()
    }

    /// The access log so far (written every 100 ms).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.state_dir().join("access.log")).unwrap_or_default()
    }

    /// Waits for an access log line containing every one of `needles`.
    pub fn wait_access(&self, needles: &[&str]) -> String {
        wait_until(&format!("an access log line with {needles:?}"), Duration::from_secs(5), || {
            self.access_log().lines().find(|l| needles.iter().all(|n| l.contains(n))).map(str::to_string)
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join(".devmesh")
    }

    /// Stops this mesh (SIGTERM) and starts it again on the same folder and state dir, with
    /// extra `up` arguments.
    pub fn restart(mut self, args: &[&str]) -> Mesh {
        let status = self.stop();
        assert!(status.success(), "devmesh exited with {status}");
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        Self::start_with(dir, args)
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return s;
            }
            assert!(Instant::now() < deadline, "devmesh did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        // A failing test shows what devmesh said (its lifecycle log), the last 60 lines.
        if std::thread::panicking()
            && let Ok(lines) = self.lines.lock()
        {
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!("--- devmesh log, last {} lines ---\n{}\n---", tail.len(), tail.join("\n"));
        }
        if let Some(mut c) = self.child.take() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Is the process alive (a zombie counts as dead)?
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()).unwrap_or("");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

pub struct Req {
    pub method: http::Method,
    /// Origin form, or absolute form for proxy requests.
    pub target: String,
    pub host: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub h2: bool,
}

impl Req {
    pub fn get(target: &str) -> Req {
        Req {
            method: http::Method::GET,
            target: target.into(),
            host: None,
            headers: vec![],
            body: Bytes::new(),
            h2: false,
        }
    }
    pub fn post(target: &str) -> Req {
        Req { method: http::Method::POST, ..Req::get(target) }
    }
    pub fn host(mut self, h: &str) -> Req {
        self.host = Some(h.into());
        self
    }
    pub fn header(mut self, k: &str, v: &str) -> Req {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn with_body(mut self, body: &str) -> Req {
        self.body = Bytes::from(body.to_string());
        self
    }
    pub fn h2(mut self) -> Req {
        self.h2 = true;
        self
    }
}

pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, k: &str) -> Option<&str> {
        self.headers.get(k).and_then(|v| v.to_str().ok())
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap())
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

/// One request on a fresh connection to `addr`.
pub fn http(addr: SocketAddr, req: Req) -> Resp {
    block_on(http_async(addr, req))
}

pub async fn http_async(addr: SocketAddr, req: Req) -> Resp {
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect timeout")
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    send_on(tcp, req).await
}

pub async fn send_on<I>(io: I, req: Req) -> Resp
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let host = req.host.clone().unwrap_or_else(|| "test".into());
    let mut b = http::Request::builder().method(req.method.clone()).uri(&req.target);
    for (k, v) in &req.headers {
        b = b.header(k, v);
    }
    let fut = async {
        if req.h2 {
            let uri =
                if req.target.starts_with('/') { format!("http://{host}{}", req.target) } else { req.target.clone() };
            let mut b = b.uri(uri);
            b = b.version(http::Version::HTTP_2);
            let request = b.body(Full::new(req.body.clone())).unwrap();
            let (mut s, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(io))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            s.send_request(request).await
        } else {
            let request = b.header(http::header::HOST, host).body(Full::new(req.body.clone())).unwrap();
            let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.unwrap();
            tokio::spawn(conn);
            s.send_request(request).await
        }
    };
    let resp = tokio::time::timeout(Duration::from_secs(20), fut).await.expect("response timeout").expect("response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let version = resp.version();
    let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Resp { status, headers, body, version }
}

/// A mesh of `backend` v1 and v2 (httpbin) behind a gateway on a free port, loading `config`.
pub fn backend_mesh(config: &str) -> String {
    format!(
        "namespace: default\nconfig: [{config}]\ngateways:\n  istio-ingressgateway:\n    labels: {{istio: ingressgateway}}\n    ports: {{80: 0}}\n\
         services:\n  backend:\n    ports: [{{name: http, port: 8000}}]\n    workloads:\n\
         \x20     - {{labels: {{version: v1}}, command: [\"{{httpbin}}\"], readiness: {{http: /health}}}}\n\
         \x20     - {{labels: {{version: v2}}, command: [\"{{httpbin}}\"], readiness: {{http: /health}}}}\n"
    )
}

/// The requests an httpbin app served (`GET /log`, straight to the app).
pub fn app_log(app: SocketAddr) -> Vec<serde_json::Value> {
    http(app, Req::get("/log")).json().as_array().cloned().unwrap_or_default()
}

pub fn clear_app_log(app: SocketAddr) {
    let mut r = Req::get("/log");
    r.method = http::Method::DELETE;
    assert_eq!(http(app, r).status, 200);
}

/// Runs the devmesh binary with `args` and returns (exit code, stdout, stderr).
pub fn devmesh(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = Command::new(devmesh_bin()).args(args).current_dir(cwd).output().expect("run devmesh");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the devmesh binary with `input` on its standard input.
pub fn devmesh_stdin(args: &[&str], cwd: &Path, input: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(devmesh_bin())
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run devmesh");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    let out = child.wait_with_output().expect("devmesh output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The standard two-service test mesh: frontend (v1) and backend (v1, v2), a gateway on an
/// ephemeral port routing `/anything/backend...` to backend and the httpbin paths to frontend.
pub const DEMO: &str = r#"
namespace: default
config: [routes.yaml]
gateways:
  istio-ingressgateway:
    labels: {istio: ingressgateway}
    ports: {80: 0}
services:
  frontend:
    ports: [{name: http, port: 8000}]
    workloads:
      - labels: {version: v1}
        command: ["{httpbin}"]
        readiness: {http: /health}
  backend:
    ports: [{name: http, port: 8000}]
    serviceAccount: backend-sa
    workloads:
      - labels: {version: v1}
        command: ["{httpbin}"]
        readiness: {http: /health}
      - labels: {version: v2}
        command: ["{httpbin}"]
        readiness: {http: /health}
"#;

pub const DEMO_ROUTES: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /anything/backend}}]
    route: [{destination: {host: backend}}]
  - match: [{uri: {regex: "/(get|headers|env|fetch|status/[0-9]+|delay/.*|health)"}}]
    route: [{destination: {host: frontend, port: {number: 8000}}}]
"#;

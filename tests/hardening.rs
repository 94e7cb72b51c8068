//! Hardening against the browser next to the mesh, hostile input and slow clients (issue 15):
//! the admin API's Host/Origin/token/content-type guards, YAML bombs, header limits, slow
//! clients and connection caps, half-closed clients, log rotation and restored state.

mod common;

use std::time::Duration;

use common::*;

const ONE: &str = r#"
namespace: default
gateways:
  istio-ingressgateway:
    labels: {istio: ingressgateway}
    ports: {80: 0}
services:
  web:
    ports: [{name: http, port: 8000}]
    workloads:
      - command: ["{httpbin}"]
        readiness: {http: /health}
"#;

const VS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web}\nspec:\n  hosts: [web]\n  http:\n  - route: [{destination: {host: web}}]\n";

fn one() -> Mesh {
    let m = Mesh::start(ONE, &[]);
    m.wait_ready();
    m
}

fn alive(m: &Mesh) -> bool {
    m.admin(Req::get("/ready")).status == 200
}

#[test]
fn admin_api_refuses_foreign_hosts_origins_and_requests_without_the_token() {
    let m = one();
    let own = m.admin.to_string();
    let token = m.token();
    let bearer = format!("Bearer {token}");
    // DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own Host.
    for path in ["/config_dump", "/workloads", "/ready", "/resources"] {
        let r = http(m.admin, Req::get(path).host("evil.example:15000").header("authorization", &bearer));
        assert_eq!(r.status, 403, "{path} with a foreign Host: {}", r.text());
        assert!(r.text().contains("DNS rebinding"), "{}", r.text());
    }
    let r = http(m.admin, Req::post("/shutdown").host("evil.example").header("authorization", &bearer));
    assert_eq!(r.status, 403);
    // A foreign port on a loopback name is not ours either.
    assert_eq!(http(m.admin, Req::get("/ready").host("127.0.0.1:1")).status, 403);
    // CSRF: a form post from a page carries the page's Origin and a simple content type.
    let r = http(
        m.admin,
        Req::post("/resources")
            .host(&own)
            .header("origin", "http://evil.example")
            .header("content-type", "text/plain")
            .with_body(VS),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = http(m.admin, Req::post("/shutdown").host(&own).header("origin", "null").header("authorization", &bearer));
    assert_eq!(r.status, 403, "an opaque origin is foreign: {}", r.text());
    // No token, or a wrong one: 401 with a challenge, nothing changes.
    let r = http(m.admin, Req::post("/shutdown").host(&own));
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"devmesh\""));
    let r = http(m.admin, Req::post("/shutdown").host(&own).header("authorization", "Bearer 0123"));
    assert_eq!(r.status, 401);
    let r = http(m.admin, Req::post("/resources").host(&own).header("content-type", "application/yaml").with_body(VS));
    assert_eq!(r.status, 401);
    let r = http(m.admin, Req::get("/config_dump").host(&own));
    assert_eq!(r.status, 401, "the config dump holds the mesh file's env values");
    // With the token, a content type a form can send is still refused.
    let r = http(
        m.admin,
        Req::post("/resources")
            .host(&own)
            .header("authorization", &bearer)
            .header("content-type", "text/plain")
            .with_body(VS),
    );
    assert_eq!(r.status, 415, "{}", r.text());
    assert!(alive(&m), "no refused request stopped the mesh");
    assert_eq!(m.admin(Req::get("/resources?kind=VirtualService")).json().as_array().map(Vec::len), Some(0));

    // What stays open on loopback with the admin's own Host: read-only telemetry, no token.
    let port = m.admin.port();
    assert_eq!(http(m.admin, Req::get("/ready").host(&own)).status, 200);
    assert_eq!(http(m.admin, Req::get("/workloads").host(&format!("localhost:{port}"))).status, 200);
    // The admin's own origin is fine (its own page), with the token.
    let r = http(
        m.admin,
        Req::get("/config_dump").host(&own).header("origin", &format!("http://{own}")).header("authorization", &bearer),
    );
    assert_eq!(r.status, 200);
    // The token and YAML: applied.
    let r = http(
        m.admin,
        Req::post("/resources")
            .host(&own)
            .header("authorization", &bearer)
            .header("content-type", "application/yaml")
            .with_body(VS),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn the_token_is_private_and_the_cli_finds_it_from_anywhere() {
    use std::os::unix::fs::PermissionsExt;
    let mut m = one();
    let state_file = m.state_dir().join("admin-token");
    let mode = std::fs::metadata(&state_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the state dir's token file");
    let admin = m.admin.to_string();
    // From an unrelated folder, with no flag: the CLI finds the token in the runtime file.
    let elsewhere = tempfile::tempdir().unwrap();
    let (code, out, err) = devmesh(&["get", "vs", "--admin", &admin], elsewhere.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("No resources found") || out.is_empty() || out.starts_with("NAME"), "{out}");
    let (code, _, err) = devmesh_stdin(&["apply", "-f", "-", "--admin", &admin], elsewhere.path(), VS);
    assert_eq!(code, 0, "{err}");
    // A wrong token given explicitly is refused with a clear message, and changes nothing.
    let (code, _, err) = devmesh(&["down", "--admin", &admin, "--admin-token", "nope"], elsewhere.path());
    assert_eq!(code, 1);
    assert!(err.contains("wrong admin token"), "{err}");
    assert!(alive(&m));
    // The token from the state dir works through the environment, as a script would pass it.
    let out = std::process::Command::new(devmesh_bin())
        .args(["down", "--admin", &admin])
        .env("DEVMESH_ADMIN_TOKEN", m.token())
        .env("DEVMESH_RUNTIME_DIR", elsewhere.path())
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status = m.stop();
    assert!(status.success());
    assert!(!state_file.exists(), "the token is removed when the mesh stops");
}

/// `levels` anchors, each a list of ten aliases of the one before: 10^levels nodes in a few
/// hundred bytes ("billion laughs").
fn alias_bomb(levels: usize) -> String {
    let mut y = String::from(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bomb}\nspec:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
    );
    for l in 1..levels {
        let p = format!("*a{}", l - 1);
        y.push_str(&format!("  a{l}: &a{l} [{}]\n", vec![p; 10].join(", ")));
    }
    y
}

/// The peak resident memory of a process, from /proc (KiB).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn yaml_bombs_are_refused_fast_with_bounded_memory_by_validate_apply_and_the_daemon() {
    let bomb = alias_bomb(10); // 10^10 nodes if expanded
    assert!(bomb.len() < 800);
    // validate: a located error, at once.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bomb.yaml"), &bomb).unwrap();
    let t = std::time::Instant::now();
    let out = std::process::Command::new(devmesh_bin())
        .args(["validate", "bomb.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("bomb.yaml:10:") && err.contains("aliases expand this YAML past 1000000 nodes"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // The running mesh: the apply is refused, nothing changes, memory stays bounded.
    let m = one();
    let before = peak_rss_kib(m.pid());
    let t = std::time::Instant::now();
    let r = m.admin(Req::post("/resources").with_body(&bomb));
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("aliases expand this YAML past 1000000 nodes"), "{}", r.text());
    assert!(t.elapsed() < Duration::from_secs(10));
    let after = peak_rss_kib(m.pid());
    assert!(after < before + 400 * 1024, "peak RSS grew from {before} KiB to {after} KiB");
    // The CLI says the same from a file, and a too-deep document is refused too.
    let (code, _, err) = devmesh(&["apply", "-f", "bomb.yaml", "--admin", &m.admin.to_string()], dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("bomb.yaml:10:"), "{err}");
    let deep = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: deep}}\nspec: {}{}\n",
        "[".repeat(100),
        "]".repeat(100)
    );
    let r = m.admin(Req::post("/resources").with_body(&deep));
    assert_eq!(r.status, 422);
    assert!(r.text().contains("more than 64 levels deep"), "{}", r.text());
    assert!(alive(&m));
}

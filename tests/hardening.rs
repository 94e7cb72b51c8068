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
    let apply_as = |content_type: &str| {
        let req = Req::post("/resources").host(&own).header("authorization", &bearer);
        http(m.admin, req.header("content-type", content_type).with_body(VS))
    };
    let r = apply_as("text/plain");
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
    let r = apply_as("application/yaml");
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
    let (code, _, err) = devmesh_stdin(&["apply", "-f", "-", "--admin", &admin], elsewhere.path(), VS);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = devmesh(&["get", "vs", "--admin", &admin], elsewhere.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l.starts_with("default     web ")), "the applied VirtualService is listed: {out}");
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
    // Over the admin API's body limit: a clear message, from the CLI and from the API.
    let huge = format!(
        "# {}
{}",
        "x".repeat(33 << 20),
        VS
    );
    std::fs::write(dir.path().join("huge.yaml"), &huge).unwrap();
    let (code, _, err) = devmesh(&["apply", "-f", "huge.yaml", "--admin", &m.admin.to_string()], dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("over the admin API's limit of 32 MiB"), "{err}");
    let r = m.admin(Req::post("/resources").with_body(&huge));
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains("limit of 32 MiB"), "{}", r.text());
    assert!(alive(&m));
}

/// Reads until the peer closes (or `limit` passes): (what was read, when it closed).
fn read_until_closed(s: &mut std::net::TcpStream, limit: Duration) -> (String, Option<Duration>) {
    use std::io::Read;
    let t = std::time::Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while t.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&out).into_owned(), Some(t.elapsed())),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), Some(t.elapsed())),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), None)
}

fn connect(addr: std::net::SocketAddr) -> std::net::TcpStream {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect")
}

fn send(s: &mut std::net::TcpStream, bytes: &str) {
    use std::io::Write;
    s.write_all(bytes.as_bytes()).expect("write");
}

const ROUTES: &str = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: edge}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - route: [{destination: {host: web}}]\n";

fn with_routes(extra: &str) -> Mesh {
    let yaml = format!("{}{}config: [routes.yaml]\n", ONE, extra);
    let m = Mesh::start(&yaml, &[("routes.yaml", ROUTES)]);
    m.wait_ready();
    m
}

#[test]
fn slow_and_idle_clients_are_disconnected_by_the_header_idle_and_stream_idle_timeouts() {
    // Short limits so the test runs in about a second (defaults: 10 s, 1 h, 5 min).
    let m = with_routes("proxy: {requestHeadersTimeout: 400ms, idleTimeout: 2500ms, streamIdleTimeout: 1200ms}\n");
    let gw = m.gateway();
    // Nothing at all, a partial head, a partial small body: closed by the headers timeout.
    let mut silent = connect(gw);
    let mut partial_head = connect(gw);
    send(&mut partial_head, "GET /get HTTP/1.1\r\nHost: web\r\nX-Slow: ");
    let mut partial_body = connect(gw);
    send(&mut partial_body, "POST /anything HTTP/1.1\r\nHost: web\r\nContent-Length: 10\r\n\r\nabc");
    for (what, s) in [("silent", &mut silent), ("partial head", &mut partial_head), ("partial body", &mut partial_body)]
    {
        let (got, closed) = read_until_closed(s, Duration::from_secs(10));
        let closed = closed.unwrap_or_else(|| panic!("{what}: still open after 10 s"));
        assert!(closed < Duration::from_secs(3), "{what}: closed after {closed:?}");
        assert!(got.is_empty(), "{what}: {got}");
    }
    // A kept-alive connection: served, then closed after the idle timeout, not before.
    let mut kept = connect(gw);
    let t = std::time::Instant::now();
    send(&mut kept, "GET /get HTTP/1.1\r\nHost: web\r\n\r\n");
    let (got, closed) = read_until_closed(&mut kept, Duration::from_secs(10));
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let closed = closed.expect("closed by the idle timeout");
    assert!(closed >= Duration::from_millis(2300), "closed after {closed:?}, before the idle timeout");
    assert!(t.elapsed() < Duration::from_secs(8));
    // A kept-alive connection whose second head trickles: the headers timeout, not the idle one.
    let mut slow_second = connect(gw);
    send(&mut slow_second, "GET /get HTTP/1.1\r\nHost: web\r\n\r\n");
    let first = read_response(&mut slow_second);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    send(&mut slow_second, "GET /get HTTP/1.1\r\nHost: web\r\nX-Slow: ");
    let (_, closed) = read_until_closed(&mut slow_second, Duration::from_secs(10));
    let closed = closed.expect("closed by the headers timeout");
    assert!(closed < Duration::from_millis(2000), "closed after {closed:?}: the idle timeout, not the headers one");
    // A chunked upload (hyper's path) that stalls: closed by the stream idle timeout.
    let mut stalled = connect(gw);
    send(&mut stalled, "POST /anything HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
    let (_, closed) = read_until_closed(&mut stalled, Duration::from_secs(10));
    let closed = closed.expect("a stalled upload is closed");
    assert!(closed >= Duration::from_millis(1000) && closed < Duration::from_secs(5), "{closed:?}");
    // The mesh still serves.
    assert_eq!(http(gw, Req::get("/get").host("web")).status, 200);
}

#[test]
fn the_connection_cap_refuses_a_flood_while_existing_connections_mesh_hops_and_the_admin_api_keep_serving() {
    let m = with_routes("proxy: {maxConnections: 30}\n");
    let gw = m.gateway();
    // The soft open-file limit was raised to the hard one at start.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", m.pid())).unwrap();
    let files: Vec<&str> =
        limits.lines().find(|l| l.starts_with("Max open files")).unwrap().split_whitespace().collect();
    assert_eq!(files[3], files[4], "soft and hard open-file limits: {limits}");
    // A client connected before the flood, kept alive.
    let mut before = connect(gw);
    send(&mut before, "GET /get HTTP/1.1\r\nHost: web\r\n\r\n");
    let first = read_response(&mut before);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // 50 connections that send nothing, held open (the headers timeout is 10 s).
    let mut flood: Vec<std::net::TcpStream> = (0..50).map(|_| connect(gw)).collect();
    let mut refused = 0;
    for s in &mut flood {
        let (_, closed) = read_until_closed(s, Duration::from_millis(150));
        if closed.is_some() {
            refused += 1;
        }
    }
    assert!((19..=25).contains(&refused), "{refused} of 50 refused with a cap of 30 (one held before)");
    // The existing client still gets through the gateway and its mesh hop to the app.
    send(&mut before, "GET /get HTTP/1.1\r\nHost: web\r\n\r\n");
    let again = read_response(&mut before);
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
    // The admin API and the config dump's counters.
    let dump = m.admin(Req::get("/config_dump")).json();
    assert_eq!(dump["connections"]["limit"], 30);
    assert!(dump["connections"]["refused"].as_u64().unwrap() >= 19, "{}", dump["connections"]);
    drop(flood);
    // Once the flood is gone, new clients are served again.
    let r = wait_until("a new connection served after the flood", Duration::from_secs(5), || {
        std::panic::catch_unwind(|| http(gw, Req::get("/get").host("web")).status).ok().filter(|s| *s == 200)
    });
    assert_eq!(r, 200);
}

/// Reads one response with a content-length body from a kept-alive connection.
fn read_response(s: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                return text;
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&out).into_owned(),
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[test]
fn request_heads_over_60_kib_get_431_and_upstream_heads_over_it_502_upe() {
    let m = with_routes("");
    let gw = m.gateway();
    let big = "x".repeat(59 * 1024);
    let r = http(gw, Req::get("/get").host("web").header("x-big", &big));
    assert_eq!(r.status, 200, "a 59 KiB header is forwarded");
    assert_eq!(r.json()["headers"]["x-big"].as_str().map(str::len), Some(big.len()));
    for size in [61 * 1024, 100 * 1024] {
        let big = "x".repeat(size);
        let r = http(gw, Req::get("/get").host("web").header("x-big", &big));
        assert_eq!(r.status, 431, "a {size}-byte header");
    }
    // Over hyper's path too (a chunked request is handed to hyper after the first request).
    let mut s = connect(gw);
    send(&mut s, &format!("GET /get HTTP/1.1\r\nHost: web\r\nX-Big: {}\r\n\r\n", "y".repeat(100 * 1024)));
    let (got, _) = read_until_closed(&mut s, Duration::from_secs(5));
    assert!(got.starts_with("HTTP/1.1 431"), "{got}");
    // An upstream response head over 60 KiB: 502 with Envoy's UPE flag.
    let r = http(gw, Req::get("/big-header/50000").host("web"));
    assert_eq!(r.status, 200, "a 50 KB response header passes");
    assert_eq!(r.header("x-big").map(str::len), Some(50000));
    let r = http(gw, Req::get(&format!("/big-header/{}", 70 * 1024)).host("web"));
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("protocol error"), "{}", r.text());
    m.wait_access(&["/big-header/71680", " 502 UPE "]);
}

#[test]
fn a_malformed_chunked_body_is_the_clients_fault_400_dpe() {
    let m = with_routes("");
    let mut s = connect(m.gateway());
    send(&mut s, "POST /anything HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n");
    let (got, _) = read_until_closed(&mut s, Duration::from_secs(10));
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    m.wait_access(&["POST /anything", " 400 DPE "]);
}

#[test]
fn a_half_closed_client_still_gets_its_response() {
    let m = with_routes("");
    for target in [m.gateway(), m.outbound_proxy("web")] {
        let mut s = connect(target);
        let head = if target == m.gateway() {
            "GET /get HTTP/1.1\r\nHost: web\r\n\r\n"
        } else {
            "GET http://web:8000/get HTTP/1.1\r\nHost: web:8000\r\n\r\n"
        };
        send(&mut s, head);
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let (got, closed) = read_until_closed(&mut s, Duration::from_secs(10));
        assert!(got.starts_with("HTTP/1.1 200"), "{target}: {got}");
        assert!(got.contains("\"/get\""), "{got}");
        assert!(closed.is_some(), "the connection closes after the response");
    }
}

#[test]
fn an_absolute_form_target_replaces_host_and_bad_targets_are_400() {
    let m = with_routes("");
    let proxy = m.outbound_proxy("web");
    // RFC 9112 §3.2.2: the absolute URI's authority replaces a stale Host.
    let mut s = connect(proxy);
    send(&mut s, "GET http://web:8000/get HTTP/1.1\r\nHost: details:9080\r\n\r\n");
    let got = read_response(&mut s);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.contains("\"host\": \"web:8000\"") || got.contains("\"host\":\"web:8000\""), "{got}");
    // Authority-form for anything but CONNECT, and two Host headers: 400.
    for bad in
        ["GET web:8000 HTTP/1.1\r\nHost: web:8000\r\n\r\n", "GET /get HTTP/1.1\r\nHost: web\r\nHost: other\r\n\r\n"]
    {
        for target in [proxy, m.gateway()] {
            let mut s = connect(target);
            send(&mut s, bad);
            let (got, _) = read_until_closed(&mut s, Duration::from_secs(5));
            assert!(got.starts_with("HTTP/1.1 400"), "{bad:?} to {target}: {got}");
        }
    }
}

#[test]
fn the_access_log_rotates_by_size_and_a_full_disk_does_not_stop_traffic() {
    let m = with_routes("accessLog: {maxSize: 8Ki, keep: 2}\n");
    for _ in 0..150 {
        assert_eq!(http(m.gateway(), Req::get("/get").host("web")).status, 200);
    }
    let dir = m.state_dir();
    let size = |name: &str| std::fs::metadata(dir.join(name)).map(|m| m.len()).ok();
    wait_until("two rotated access logs", Duration::from_secs(5), || size("access.log.2"));
    for name in ["access.log", "access.log.1", "access.log.2"] {
        let n = size(name).unwrap_or_else(|| panic!("{name} missing"));
        assert!(n <= 8 * 1024, "{name}: {n} bytes");
    }
    assert_eq!(size("access.log.3"), None, "only two rotated files are kept");

    // The access log on a full disk (/dev/full): every request is still served.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("devmesh.yaml"), mesh_yaml(&format!("{ONE}config: [routes.yaml]\n"))).unwrap();
    std::fs::write(tmp.path().join("routes.yaml"), ROUTES).unwrap();
    std::fs::create_dir_all(tmp.path().join(".devmesh")).unwrap();
    std::os::unix::fs::symlink("/dev/full", tmp.path().join(".devmesh/access.log")).unwrap();
    let full = Mesh::start_in(tmp);
    full.wait_ready();
    for _ in 0..50 {
        assert_eq!(http(full.gateway(), Req::get("/get").host("web")).status, 200);
    }
    full.wait_line("cannot write access log", Duration::from_secs(5));
}

#[test]
fn resources_applied_through_the_api_survive_a_restart_unless_fresh() {
    let m = with_routes("");
    let gw = m.gateway();
    // An applied fault the gateway route does not have: 418 for /status/200.
    let abort = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: edge}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - fault: {abort: {httpStatus: 418, percentage: {value: 100}}}\n    route: [{destination: {host: web}}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: web}\nspec:\n  host: web\n  trafficPolicy: {loadBalancer: {simple: RANDOM}}\n";
    m.apply(abort);
    assert_eq!(http(gw, Req::get("/get").host("web")).status, 418);
    let (code, _, err) = devmesh(&["delete", "dr", "web", "--admin", &m.admin.to_string()], m.dir.path());
    assert_eq!(code, 0, "{err}");
    let kept = std::fs::read_to_string(m.state_dir().join("applied.yaml")).unwrap();
    assert!(kept.contains("name: edge") && !kept.contains("DestinationRule"), "{kept}");

    let m = m.restart(&[]);
    m.wait_ready();
    m.wait_line("restored 1 resource(s) applied before the last stop", Duration::from_secs(5));
    let gw = m.gateway.expect("gateway");
    assert_eq!(http(gw, Req::get("/get").host("web")).status, 418, "the applied VirtualService is back");
    let dump = m.admin(Req::get("/resources?kind=DestinationRule")).json();
    assert_eq!(dump.as_array().map(Vec::len), Some(0), "the deleted one stays deleted: {dump}");

    let m = m.restart(&["--fresh"]);
    m.wait_ready();
    let gw = m.gateway.expect("gateway");
    assert_eq!(http(gw, Req::get("/get").host("web")).status, 200, "--fresh starts from the config files alone");
    assert!(!m.log().contains("restored"), "{}", m.log());
}

/// Secure naming (Istio's): a sidecar that connects to an endpoint checks that the peer's
/// certificate names the endpoint's own identity. Here the endpoint is a real sidecar of
/// another service (frontend's inbound listener, with frontend's valid mesh certificate)
/// where backend's identity is expected: refused with Envoy's 503 UF, both identities said.
#[test]
fn an_endpoint_presenting_another_services_mesh_identity_is_refused() {
    use devmesh::dataplane::pool::{Stream, connect};
    use devmesh::identity::tls::{Alpn, Certs, spiffe_id};
    let m = Mesh::start(DEMO, &[("routes.yaml", DEMO_ROUTES)]);
    m.wait_ready();
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The mesh's own CA (its state dir), so the client certificate is a valid mesh one.
    let ca = devmesh::identity::ca::Ca::load_or_create(&m.state_dir().join("ca")).expect("the mesh CA");
    let certs = Certs::new(std::sync::Arc::new(ca), Duration::from_secs(3600)).unwrap();
    let client = certs.identity(&spiffe_id("default", "istio-ingressgateway-service-account")).unwrap();
    let frontend: std::net::SocketAddr =
        m.workload("frontend-v1")["ports"][0]["inbound"].as_str().unwrap().parse().unwrap();
    let backend_id = spiffe_id("default", "backend-sa");
    let frontend_id = spiffe_id("default", "frontend");
    let err = match block_on(connect(frontend, Some((&client, &backend_id)), Alpn::Http1)) {
        Err(e) => e,
        Ok(_) => panic!("frontend's sidecar was accepted as backend"),
    };
    assert_eq!(err.status(), 503);
    assert_eq!(err.flag().to_string(), "UF");
    let text = err.to_string();
    assert!(text.contains(&frontend_id) && text.contains(&backend_id), "{text}");
    assert!(err.body().starts_with("upstream connect error or disconnect/reset before headers"), "{}", err.body());
    // The same sidecar, expected as itself: accepted over mTLS.
    let ok = block_on(connect(frontend, Some((&client, &frontend_id)), Alpn::Http1));
    assert!(matches!(ok, Ok(Stream::Tls(_))), "the right identity is accepted");
}

/// The inbound side: a client certificate from a foreign CA (a valid certificate for a mesh
/// identity, from another mesh) is refused at the handshake; one from the mesh's CA is served.
#[test]
fn the_inbound_sidecar_refuses_a_client_certificate_from_a_foreign_ca() {
    use devmesh::identity::tls::{Alpn, Certs, endpoint_server_name, spiffe_id};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let m = one();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let inbound: std::net::SocketAddr = m.workload("web")["ports"][0]["inbound"].as_str().unwrap().parse().unwrap();
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = Certs::new(
        std::sync::Arc::new(devmesh::identity::ca::Ca::load_or_create(foreign_dir.path()).unwrap()),
        Duration::from_secs(3600),
    )
    .unwrap();
    let own = Certs::new(
        std::sync::Arc::new(devmesh::identity::ca::Ca::load_or_create(&m.state_dir().join("ca")).unwrap()),
        Duration::from_secs(3600),
    )
    .unwrap();
    let attempt = |certs: &Certs| {
        let tls = certs.identity(&spiffe_id("default", "web")).unwrap();
        block_on(async move {
            let tcp = tokio::net::TcpStream::connect(inbound).await.unwrap();
            let connector = tokio_rustls::TlsConnector::from(tls.client(Alpn::Http1));
            let mut s = connector.connect(endpoint_server_name(inbound.port()), tcp).await.ok()?;
            s.write_all(b"GET /health HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n").await.ok()?;
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
            Some(String::from_utf8_lossy(&out).into_owned())
        })
    };
    let refused = attempt(&foreign);
    assert!(
        refused.as_deref().is_none_or(|r| !r.starts_with("HTTP/1.1")),
        "a foreign CA's client was served: {refused:?}"
    );
    let served = attempt(&own).expect("the mesh's own client certificate");
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
}

#[test]
fn a_client_that_leaves_mid_response_is_logged_with_dc() {
    use std::io::Read;
    let m = with_routes("");
    let mut s = connect(m.gateway());
    send(&mut s, "GET /bytes/20000000 HTTP/1.1\r\nHost: web\r\n\r\n");
    let mut buf = [0u8; 65536];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(s);
    let line = m.wait_access(&["GET /bytes/20000000", " 200 DC "]);
    assert!(line.contains("istio-ingressgateway"), "{line}");
    // A complete response has no flag.
    assert_eq!(http(m.gateway(), Req::get("/bytes/100").host("web")).status, 200);
    m.wait_access(&["GET /bytes/100 ", " 200 - "]);
}

/// Envoy logs a request whose client went away before the response with status 0 and `DC`
/// (Istio's bookinfo: productpage giving up on reviews). A reset cancels at once; a client
/// that closed without a reset is cancelled after the half-close grace (1 s).
#[test]
fn a_request_cancelled_by_its_client_is_logged_0_dc() {
    let m = with_routes("");
    // Reset (SO_LINGER 0) while the app is still answering.
    let s = connect(m.gateway());
    let mut s2 = s.try_clone().unwrap();
    send(&mut s2, "GET /delay/3 HTTP/1.1\r\nHost: web\r\n\r\n");
    std::thread::sleep(Duration::from_millis(300));
    rustix::net::sockopt::set_socket_linger(&s, Some(Duration::ZERO)).unwrap();
    drop(s);
    drop(s2);
    let line = m.wait_access(&["istio-ingressgateway", "GET /delay/3", "\" 0 DC "]);
    assert!(line.contains("outbound|8000||web.default.svc.cluster.local"), "{line}");
    // Closed without a reset: cancelled after the grace, logged the same.
    let mut s = connect(m.gateway());
    send(&mut s, "GET /delay/4 HTTP/1.1\r\nHost: web\r\n\r\n");
    s.shutdown(std::net::Shutdown::Both).unwrap();
    drop(s);
    let line = wait_until("the cancelled request's line", Duration::from_secs(4), || {
        m.access_log()
            .lines()
            .find(|l| l.contains("istio-ingressgateway") && l.contains("GET /delay/4"))
            .map(str::to_string)
    });
    assert!(line.contains("\" 0 DC "), "{line}");
}

/// A body without a length (chunked, gRPC) is counted: the access log's bytes received is
/// what passed, on the gateway's line and the inbound sidecar's (it was always 0).
#[test]
fn a_streamed_request_body_is_counted_in_bytes_received() {
    let m = with_routes("");
    let mut s = connect(m.gateway());
    let chunk = "z".repeat(10_000);
    let mut req = String::from(
        "POST /anything/upload HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
    for _ in 0..10 {
        req.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    req.push_str("0\r\n\r\n");
    send(&mut s, &req);
    let (got, _) = read_until_closed(&mut s, Duration::from_secs(10));
    assert!(got.starts_with("HTTP/1.1 200"), "{}", &got[..got.len().min(200)]);
    let gw = m.wait_access(&["istio-ingressgateway", "POST /anything/upload"]);
    assert!(gw.contains("\" 200 - 100000 "), "{gw}");
    let inbound = m.wait_access(&[" inbound ", "POST /anything/upload"]);
    assert!(inbound.contains("\" 200 - 100000 "), "{inbound}");
}

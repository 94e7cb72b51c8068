//! Beyond HTTP routes inside the mesh: ServiceEntry hosts (STATIC and DNS), REGISTRY_ONLY and
//! Sidecar scopes (HTTP and CONNECT), `tcp[]` routes, `tls[]` routes by SNI through CONNECT,
//! and HTTP/2 / gRPC streaming with trailers. The test acts as the application by talking to
//! its sidecar's listeners (exactly what `HTTP_PROXY` and `*_SERVICE_HOST` give the app).

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An httpbin outside the mesh, on a free port.
struct Outside {
    child: Child,
    port: u16,
}

impl Outside {
    fn start(name: &str) -> Outside {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(httpbin_bin())
            .env("PORT", port.to_string())
            .env("POD_NAME", name)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_until("the outside server", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        });
        Outside { child, port }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `CONNECT target` to a proxy; returns the status and, on 200, the tunnel.
async fn connect(proxy: SocketAddr, target: &str) -> (u16, tokio::net::TcpStream) {
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte)).await.unwrap().unwrap();
        assert!(n == 1, "the proxy closed during the CONNECT answer: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    if status != 200 {
        // Local replies carry a body; it is not needed here.
        let _ = s.shutdown().await;
    }
    (status, s)
}

const REGISTRY_ONLY: &str = r#"
namespace: default
meshConfig: {outboundTrafficPolicy: {mode: REGISTRY_ONLY}}
gateways: {}
services:
  client:
    ports: [{name: http, port: 8000}]
    workloads: [{command: ["{httpbin}"], readiness: {http: /health}}]
  other:
    ports: [{name: http, port: 8000}]
    workloads: [{command: ["{httpbin}"], readiness: {http: /health}}]
"#;

#[test]
fn registry_only_service_entries_and_sidecar_scopes() {
    let outside = Outside::start("outside-httpbin");
    let port = outside.port;
    let m = Mesh::start(REGISTRY_ONLY, &[]);
    m.wait_ready();
    let proxy = m.outbound_proxy("client");
    let ext = format!("external.test:{port}");
    let via_proxy = |host: &str, path: &str| http(proxy, Req::get(&format!("http://{host}{path}")).host(host));

    // Hosts outside the registry: 502 for HTTP, CONNECT refused (Istio's egress task).
    assert_eq!(via_proxy(&ext, "/get").status, 502);
    assert_eq!(via_proxy(&format!("127.0.0.1:{port}"), "/get").status, 502);
    assert_eq!(block_on(connect(proxy, &format!("127.0.0.1:{port}"))).0, 403);
    m.wait_access(&[" 502 ", "block_all"]);

    // A ServiceEntry makes the host reachable, routed and observed like a mesh service.
    m.apply(&format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: external}}\nspec:\n  hosts: [external.test]\n  location: MESH_EXTERNAL\n  ports: [{{number: {port}, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.1}}]\n"
    ));
    let r = via_proxy(&ext, "/get");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-served-by"), Some("outside-httpbin"));
    m.wait_access(&[&format!("outbound|{port}||external.test"), " 200 "]);
    // The application's own calls (through its HTTP_PROXY) get there too.
    let fetched = http(m.app("client"), Req::get(&format!("/fetch?url=http://{ext}/get")));
    assert_eq!(fetched.json()["status"], 200, "{}", fetched.text());

    // VirtualService policies apply to ServiceEntry hosts (egress timeouts, faults).
    m.apply(&format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: external}}\nspec:\n  hosts: [external.test]\n  http:\n  - timeout: 0.3s\n    route: [{{destination: {{host: external.test, port: {{number: {port}}}}}}}]\n"
    ));
    let t = Instant::now();
    assert_eq!(via_proxy(&ext, "/delay/2").status, 504);
    assert!(t.elapsed() < Duration::from_millis(1500));

    // DNS resolution: the endpoint is a name.
    m.apply(&format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: dns}}\nspec:\n  hosts: [dns.test]\n  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {port}}}]\n  resolution: DNS\n  endpoints: [{{address: localhost}}]\n"
    ));
    let r = via_proxy("dns.test", "/get");
    assert_eq!((r.status, r.header("x-served-by")), (200, Some("outside-httpbin")), "{}", r.text());

    // CONNECT to a ServiceEntry host is allowed and tunnels (HTTP inside is routed).
    let (status, tunnel) = block_on(connect(proxy, &ext));
    assert_eq!(status, 200);
    let r = block_on(send_on(tunnel, Req::get("/get").host(&ext)));
    assert_eq!((r.status, r.header("x-served-by")), (200, Some("outside-httpbin")), "{}", r.text());

    // A Sidecar that only lets the client see `other`: the ServiceEntry host is out of reach.
    m.apply(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default}\nspec:\n  egress: [{hosts: [\"./other.default.svc.cluster.local\"]}]\n",
    );
    assert_eq!(via_proxy(&ext, "/get").status, 502);
    assert_eq!(via_proxy("other:8000", "/get").status, 200);

    // Its outboundTrafficPolicy overrides the mesh's: ALLOW_ANY passes unknown hosts through.
    m.apply(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default}\nspec:\n  egress: [{hosts: [\"*/*\"]}]\n  outboundTrafficPolicy: {mode: ALLOW_ANY}\n",
    );
    let r = via_proxy(&format!("127.0.0.1:{port}"), "/get");
    assert_eq!((r.status, r.header("x-served-by")), (200, Some("outside-httpbin")));
    m.wait_access(&["PassthroughCluster", "allow_any"]);
    let (status, tunnel) = block_on(connect(proxy, &format!("127.0.0.1:{port}")));
    assert_eq!(status, 200);
    assert_eq!(block_on(send_on(tunnel, Req::get("/get"))).header("x-served-by"), Some("outside-httpbin"));
    drop(outside);
}

const TCP: &str = r#"
namespace: default
meshConfig: {outboundTrafficPolicy: {mode: REGISTRY_ONLY}}
gateways: {}
services:
  client:
    ports: [{name: http, port: 8000}]
    workloads: [{command: ["{httpbin}"], readiness: {http: /health}}]
  echo:
    ports: [{name: tcp-echo, port: 7000}]
    workloads:
      - {labels: {version: v1}, command: ["{httpbin}", --tcp-echo]}
      - {labels: {version: v2}, command: ["{httpbin}", --tcp-echo]}
  grpc:
    ports: [{name: grpc, port: 9000}]
    workloads: [{command: ["{httpbin}"], readiness: {http: /health}}]
"#;

fn greeting(addr: SocketAddr) -> String {
    block_on(async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = vec![0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
        String::from_utf8_lossy(&buf[..n]).trim().to_string()
    })
}

/// A real TLS ClientHello with `sni`.
fn client_hello(sni: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

/// A TCP server outside the mesh that reads a little and answers its name.
fn named_server(name: &'static str) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut s = s;
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(name.as_bytes());
            });
        }
    });
    port
}

/// Istio's TCP traffic shifting shape with a second port: a `tcp` route that matches port
/// 7000 only leaves 7001 to the service's own cluster (pilot adds the default route for a port
/// no route matched), instead of resetting its connections.
#[test]
fn a_tcp_route_for_one_port_leaves_the_services_other_port_served() {
    let m = Mesh::start(
        &TCP.replace(
            "ports: [{name: tcp-echo, port: 7000}]",
            "ports: [{name: tcp-echo, port: 7000}, {name: tcp-other, port: 7001}]",
        ),
        &[],
    );
    m.wait_ready();
    m.apply(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: echo}\nspec:\n  host: echo\n  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: echo}\nspec:\n  hosts: [echo]\n  tcp:\n  - match: [{port: 7000}]\n    route: [{destination: {host: echo, subset: v2, port: {number: 7000}}}]\n",
    );
    let main = m.upstream("client", "echo", 7000);
    let other = m.upstream("client", "echo", 7001);
    assert!((0..6).all(|_| greeting(main) == "hello echo-v2"), "the route applies to 7000");
    let seen: std::collections::HashSet<String> = (0..12).map(|_| greeting(other)).collect();
    assert_eq!(
        seen,
        ["hello echo-v1 on TCP_OTHER", "hello echo-v2 on TCP_OTHER"].iter().map(|s| s.to_string()).collect(),
        "7001 has no route: the service's default cluster, both versions"
    );
}

#[test]
fn tcp_and_tls_routes() {
    let m = Mesh::start(TCP, &[]);
    m.wait_ready();
    let echo = m.upstream("client", "echo", 7000);
    let seen: std::collections::HashSet<String> = (0..20).map(|_| greeting(echo)).collect();
    assert_eq!(seen.len(), 2, "without routes both versions answer: {seen:?}");
    m.apply(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: echo}\nspec:\n  host: echo\n  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: echo}\nspec:\n  hosts: [echo]\n  tcp:\n  - match: [{port: 7000}]\n    route: [{destination: {host: echo, subset: v2, port: {number: 7000}}}]\n",
    );
    assert!((0..10).all(|_| greeting(echo) == "hello echo-v2"), "tcp route to v2");

    // tls[] routes pick by SNI: a.tls.test is sent to b's server.
    let (pa, pb) = (named_server("A"), named_server("B"));
    m.apply(&format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: tls-a}}
spec:
  hosts: [a.tls.test]
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tls: {pa}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: tls-b}}
spec:
  hosts: [b.tls.test]
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tls: {pb}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tls-a}}
spec:
  hosts: [a.tls.test]
  tls:
  - match: [{{port: 443, sniHosts: [a.tls.test]}}]
    route: [{{destination: {{host: b.tls.test, port: {{number: 443}}}}}}]
"#
    ));
    let proxy = m.outbound_proxy("client");
    let through = |target: &str, sni: &str| {
        block_on(async {
            let (status, mut t) = connect(proxy, target).await;
            assert_eq!(status, 200, "CONNECT {target}");
            t.write_all(&client_hello(sni)).await.unwrap();
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut buf)).await;
            String::from_utf8_lossy(&buf).to_string()
        })
    };
    assert_eq!(through("a.tls.test:443", "a.tls.test"), "B", "the tls route sends a.tls.test to b");
    assert_eq!(through("b.tls.test:443", "b.tls.test"), "B");
    assert_eq!(through("a.tls.test:443", "unknown.test"), "", "no route for this SNI: the connection is closed");
}

#[test]
fn http2_and_grpc_stream_with_trailers() {
    let m = Mesh::start(TCP, &[]);
    m.wait_ready();
    let grpc = m.upstream("client", "grpc", 9000);

    // The port name selects HTTP/2 towards the app, even for an HTTP/1.1 client.
    let r = http(grpc, Req::get("/get").host("grpc:9000"));
    assert_eq!(r.json()["version"], "HTTP/2.0");

    // A gRPC-style stream through the outbound and inbound sidecars: chunks arrive as they
    // are sent (not buffered), then the trailers with grpc-status.
    let (first_after, total, chunks, trailers) = block_on(async {
        let tcp = tokio::net::TcpStream::connect(grpc).await.unwrap();
        let (mut s, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let req = http::Request::post("http://grpc:9000/stream?n=3&ms=400&grpc-status=7")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap();
        let t = Instant::now();
        let resp = s.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut first_after = None;
        let mut chunks = 0;
        let mut trailers = None;
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            let frame = frame.unwrap();
            if frame.is_data() {
                chunks += 1;
                first_after.get_or_insert(t.elapsed());
            } else if let Ok(t) = frame.into_trailers() {
                trailers = Some(t);
            }
        }
        (first_after.unwrap(), t.elapsed(), chunks, trailers)
    });
    assert_eq!(chunks, 3);
    assert!(first_after < Duration::from_millis(300), "the first chunk streams through: {first_after:?}");
    assert!(total >= Duration::from_millis(790), "{total:?}");
    let trailers = trailers.expect("trailers reach the client");
    assert_eq!(trailers.get("grpc-status").map(|v| v.to_str().unwrap()), Some("7"));
    assert_eq!(trailers.get("grpc-message").map(|v| v.to_str().unwrap()), Some("done"));
}

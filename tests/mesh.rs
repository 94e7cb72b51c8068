//! The foundation end to end, through the `devmesh` binary: gateway routing, every outbound
//! style (HTTP_PROXY, *_SERVICE_HOST/PORT, CONNECT), mTLS between sidecars with SPIFFE
//! identities, PERMISSIVE plaintext, Envoy-style failures, HTTP/2, and the admin API.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

fn demo() -> Mesh {
    let m = Mesh::start(DEMO, &[("routes.yaml", DEMO_ROUTES)]);
    m.wait_ready();
    m
}

fn proxy_of(m: &Mesh, workload: &str) -> SocketAddr {
    m.workload(workload)["outbound_proxy"].as_str().unwrap().parse().unwrap()
}

#[test]
fn gateway_routes_to_services_with_istio_headers() {
    let m = demo();
    let r = http(m.gateway(), Req::get("/get").host("demo.local"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("server"), Some("istio-envoy"));
    assert!(r.header("x-envoy-upstream-service-time").is_some());
    assert_eq!(r.header("x-served-by"), Some("frontend-v1"));
    let seen = r.json()["headers"].clone();
    // The gateway is the edge: it adds a request id and x-forwarded-for, and reaches the
    // frontend over mTLS as the gateway identity (Istio's XFCC format).
    assert_eq!(seen["x-request-id"].as_str().unwrap().len(), 36);
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-envoy-attempt-count"], "1");
    let xfcc = seen["x-forwarded-client-cert"].as_str().unwrap();
    assert!(xfcc.starts_with("By=spiffe://cluster.local/ns/default/sa/frontend;Hash="), "{xfcc}");
    assert!(
        xfcc.ends_with(
            ";Subject=\"\";URI=spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
        ),
        "{xfcc}"
    );

    let b = http(m.gateway(), Req::get("/anything/backend/x").header("x-request-id", "fixed-id"));
    assert_eq!(b.status, 200);
    assert!(b.header("x-served-by").unwrap().starts_with("backend-v"));
    assert_eq!(b.json()["headers"]["x-request-id"], "fixed-id", "an existing request id is kept");

    // Istio's NR: nothing routes this path.
    let nr = http(m.gateway(), Req::get("/nothing/here"));
    assert_eq!(nr.status, 404);
    assert_eq!(nr.header("server"), Some("istio-envoy"));
}

#[test]
fn http_proxy_reaches_services_by_every_kubernetes_name_over_mtls() {
    let m = demo();
    let proxy = proxy_of(&m, "frontend-v1");
    for host in [
        "backend",
        "backend:8000",
        "backend.default",
        "backend.default.svc",
        "backend.default.svc.cluster.local",
        "backend.default.svc.cluster.local:8000",
    ] {
        let r = http(proxy, Req::get(&format!("http://{host}/get")).host(host));
        assert_eq!(r.status, 200, "{host}: {}", r.text());
        let body = r.json();
        assert_eq!(body["served_by"]["service"], "backend", "{host}");
        let xfcc = body["headers"]["x-forwarded-client-cert"].as_str().unwrap_or("");
        assert!(xfcc.starts_with("By=spiffe://cluster.local/ns/default/sa/backend-sa;"), "{host}: {xfcc}");
        assert!(xfcc.ends_with("URI=spiffe://cluster.local/ns/default/sa/frontend"), "{host}: {xfcc}");
        assert_eq!(r.header("server"), Some("istio-envoy"), "the inbound sidecar answers as istio-envoy");
    }
    // Host-based (origin-form) requests to the proxy are routed by Host too.
    let r = http(proxy, Req::get("/get").host("backend:8000"));
    assert_eq!(r.json()["served_by"]["service"], "backend");
}

#[test]
fn a_workload_calls_its_peers_through_the_environment_it_is_given() {
    let m = demo();
    // What the application itself sees.
    let env = http(m.gateway(), Req::get("/env")).json();
    let proxy = env["HTTP_PROXY"].as_str().unwrap();
    assert_eq!(env["http_proxy"], proxy);
    assert_eq!(env["NO_PROXY"], "localhost,127.0.0.1,::1");
    assert_eq!(env["POD_NAME"], "frontend-v1");
    assert_eq!(env["POD_NAMESPACE"], "default");
    assert_eq!(env["SERVICE_ACCOUNT"], "frontend");
    assert_eq!(env["DEVMESH_SERVICE"], "frontend");
    assert_eq!(env["DEVMESH_WORKLOAD"], "frontend-v1");
    assert!(env["PORT"].as_str().unwrap().parse::<u16>().is_ok());
    let host = env["BACKEND_SERVICE_HOST"].as_str().unwrap().to_string();
    let port = env["BACKEND_SERVICE_PORT"].as_str().unwrap().to_string();
    assert!(host.starts_with("127."), "{host}");

    // 1. The app calls `http://backend:8000` with its HTTP_PROXY (no code knows the mesh).
    let fetched = http(m.gateway(), Req::get("/fetch?url=http://backend:8000/get")).json();
    assert_eq!(fetched["status"], 200, "{fetched}");
    assert_eq!(fetched["via_proxy"], proxy);
    assert_eq!(fetched["body"]["served_by"]["service"], "backend");

    // 2. A client without a proxy dials BACKEND_SERVICE_HOST:BACKEND_SERVICE_PORT.
    let addr: SocketAddr = format!("{host}:{port}").parse().unwrap();
    let r = http(addr, Req::get("/get").host("anything.example"));
    assert_eq!(r.json()["served_by"]["service"], "backend");
    let xfcc = r.json()["headers"]["x-forwarded-client-cert"].as_str().unwrap().to_string();
    assert!(xfcc.ends_with("URI=spiffe://cluster.local/ns/default/sa/frontend"), "{xfcc}");

    // The same address through the proxy (a client that ignores NO_PROXY for 127.x).
    let r = http(
        proxy.trim_start_matches("http://").parse().unwrap(),
        Req::get(&format!("http://{host}:{port}/get")).host(&format!("{host}:{port}")),
    );
    assert_eq!(r.json()["served_by"]["service"], "backend");
}

#[test]
fn connect_tunnels_into_the_mesh_and_out_of_it() {
    let m = demo();
    let proxy = proxy_of(&m, "frontend-v1");
    block_on(async {
        // Into the mesh: HTTP inside the tunnel is routed like any request.
        let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
        s.write_all(b"CONNECT backend:8000 HTTP/1.1\r\nHost: backend:8000\r\n\r\n").await.unwrap();
        let status = read_head(&mut s).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let r = send_on(s, Req::get("/get").host("backend:8000")).await;
        assert_eq!(r.json()["served_by"]["service"], "backend");
        assert!(
            r.json()["headers"]["x-forwarded-client-cert"]
                .as_str()
                .unwrap()
                .contains("URI=spiffe://cluster.local/ns/default/sa/frontend")
        );

        // Out of the mesh (ALLOW_ANY): a plain TCP tunnel to the real destination.
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut c, _) = echo.accept().await.unwrap();
            let mut buf = [0u8; 5];
            c.read_exact(&mut buf).await.unwrap();
            c.write_all(&buf).await.unwrap();
        });
        let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
        s.write_all(format!("CONNECT {echo_addr} HTTP/1.1\r\nHost: {echo_addr}\r\n\r\n").as_bytes()).await.unwrap();
        let status = read_head(&mut s).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        s.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf, b"hello");
    });
}

/// A WebSocket-style upgrade on a connection that already carried a plain request: the
/// sidecar's HTTP/1.1 server hands the connection to hyper's for the upgrade (Envoy forwards
/// upgrades with `connection: upgrade` kept), and bytes then flow both ways.
#[test]
fn upgrades_pass_through_the_sidecar_on_a_used_connection() {
    let m = demo();
    let proxy = proxy_of(&m, "frontend-v1");
    block_on(async {
        // Out of the mesh: answers plain requests on keep-alive, and 101 then echo to upgrades.
        let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut c, _) = up.accept().await.unwrap();
                tokio::spawn(async move {
                    loop {
                        let mut head = Vec::new();
                        let mut b = [0u8; 1];
                        while !head.ends_with(b"\r\n\r\n") {
                            if c.read_exact(&mut b).await.is_err() {
                                return;
                            }
                            head.push(b[0]);
                        }
                        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                        if head.contains("upgrade: echo") && head.contains("connection: upgrade") {
                            c.write_all(
                                b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
                            )
                            .await
                            .unwrap();
                            let mut buf = [0u8; 5];
                            c.read_exact(&mut buf).await.unwrap();
                            c.write_all(&buf).await.unwrap();
                            return;
                        }
                        c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
                    }
                });
            }
        });
        let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
        s.write_all(format!("GET http://{up_addr}/plain HTTP/1.1\r\nHost: {up_addr}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200") && head.contains("content-length: 2"), "{head}");
        let mut ok = [0u8; 2];
        s.read_exact(&mut ok).await.unwrap();
        assert_eq!(&ok, b"ok");
        s.write_all(
            format!(
                "GET http://{up_addr}/ws HTTP/1.1\r\nHost: {up_addr}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.to_ascii_lowercase().contains("upgrade: echo"), "{head}");
        s.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf, b"hello");
    });
}

async fn read_head(s: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b)).await.unwrap().unwrap();
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[test]
fn unknown_hosts_pass_through_allow_any() {
    let m = demo();
    let proxy = proxy_of(&m, "frontend-v1");
    // An HTTP server outside the mesh, on loopback.
    let outside = block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut r = BufReader::new(&mut c);
                    let mut line = String::new();
                    r.read_line(&mut line).await.unwrap();
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).await.unwrap();
                        if h == "\r\n" || h.is_empty() {
                            break;
                        }
                    }
                    let body = format!("outside saw: {}", line.trim());
                    let resp =
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                    c.write_all(resp.as_bytes()).await.unwrap();
                });
            }
        });
        addr
    });
    let r = http(proxy, Req::get(&format!("http://{outside}/plain?x=1")).host(&outside.to_string()));
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "outside saw: GET /plain?x=1 HTTP/1.1", "passthrough sends origin-form upstream");
}

#[test]
fn round_robin_spreads_requests_over_ready_endpoints() {
    let m = demo();
    let proxy = proxy_of(&m, "frontend-v1");
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..20 {
        let r = http(proxy, Req::get("http://backend:8000/get").host("backend:8000"));
        *counts.entry(r.header("x-served-by").unwrap().to_string()).or_default() += 1;
    }
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert!(counts.values().all(|c| *c >= 8), "round robin should split 20 requests about evenly: {counts:?}");
}

#[test]
fn inbound_serves_mtls_with_the_workload_spiffe_id_and_plaintext_too() {
    let m = demo();
    let backend = m.workload("backend-v1");
    let inbound: SocketAddr = backend["ports"][0]["inbound"].as_str().unwrap().parse().unwrap();

    // PERMISSIVE: a plaintext client is served on the same port, without a client identity.
    let r = http(inbound, Req::get("/get").host("backend:8000"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("server"), Some("istio-envoy"));
    assert!(r.json()["headers"].get("x-forwarded-client-cert").is_none());

    // mTLS with a certificate from the mesh CA: the server proves the workload identity.
    let (server_id, resp) =
        block_on(tls::call_inbound(&m.state_dir(), inbound, "spiffe://cluster.local/ns/default/sa/tester"));
    assert_eq!(server_id, "spiffe://cluster.local/ns/default/sa/backend-sa");
    assert_eq!(resp.status, 200);
    let xfcc = resp.json()["headers"]["x-forwarded-client-cert"].as_str().unwrap().to_string();
    assert!(xfcc.ends_with("URI=spiffe://cluster.local/ns/default/sa/tester"), "{xfcc}");
}

mod tls {
    use super::*;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
    use std::sync::Arc;

    #[derive(Debug)]
    struct MeshRoot(Arc<rustls::RootCertStore>, Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for MeshRoot {
        fn verify_server_cert(
            &self,
            ee: &CertificateDer<'_>,
            im: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            let cert = rustls::server::ParsedCertificate::try_from(ee)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                &self.0,
                im,
                now,
                self.1.signature_verification_algorithms.all,
            )?;
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(m, c, d, &self.1.signature_verification_algorithms)
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(m, c, d, &self.1.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.1.signature_verification_algorithms.supported_schemes()
        }
    }

    /// mTLS to an inbound listener with a client certificate issued from the mesh CA on disk;
    /// returns the server's SPIFFE ID and the response to `GET /get`.
    pub async fn call_inbound(state_dir: &std::path::Path, addr: SocketAddr, client_id: &str) -> (String, Resp) {
        let ca_pem = std::fs::read_to_string(state_dir.join("ca/root-cert.pem")).unwrap();
        let ca_key =
            rcgen::KeyPair::from_pem(&std::fs::read_to_string(state_dir.join("ca/root-key.pem")).unwrap()).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::URI(client_id.try_into().unwrap())];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let root_der = rustls::pki_types::pem::PemObject::from_pem_slice(ca_pem.as_bytes()).unwrap();
        roots.add(root_der).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(MeshRoot(Arc::new(roots), provider)))
            .with_client_auth_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("backend").unwrap(), tcp)
            .await
            .unwrap();
        let peer = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        let (_, parsed) = x509_parser::parse_x509_certificate(&peer).unwrap();
        let san = parsed.subject_alternative_name().unwrap().unwrap();
        let id = san
            .value
            .general_names
            .iter()
            .find_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
            .unwrap();
        let resp = send_on(tls, Req::get("/get").host("backend:8000")).await;
        (id, resp)
    }
}

#[test]
fn failures_answer_as_envoy_does_and_are_logged_with_flags() {
    let yaml = r#"
config: [routes.yaml]
gateways:
  istio-ingressgateway:
    ports: {80: 0}
services:
  empty:
    ports: [{name: http, port: 80}]
  dead:
    ports: [{name: http, port: 80}]
    workloads:
      - command: [sleep, "600"]
        readiness: {exec: ["true"]}
"#;
    let routes = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /empty}}]
    route: [{destination: {host: empty}}]
  - match: [{uri: {prefix: /dead}}]
    route: [{destination: {host: dead}}]
"#;
    let m = Mesh::start(yaml, &[("routes.yaml", routes)]);
    m.wait_ready();
    // A service with no (ready) endpoint: 503 UH, Envoy's body.
    let uh = http(m.gateway(), Req::get("/empty"));
    assert_eq!(uh.status, 503);
    assert_eq!(uh.text(), "no healthy upstream");
    assert_eq!(uh.header("content-type"), Some("text/plain"));
    // A ready endpoint whose application does not listen: 503 UF from the inbound sidecar.
    let uf = http(m.gateway(), Req::get("/dead"));
    assert_eq!(uf.status, 503);
    assert!(
        uf.text().starts_with(
            "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
        ),
        "{}",
        uf.text()
    );
    let nr = http(m.gateway(), Req::get("/other"));
    assert_eq!(nr.status, 404);
    let log_path = m.state_dir().join("access.log");
    let log = wait_until("access log lines with flags", Duration::from_secs(5), || {
        let log = std::fs::read_to_string(&log_path).ok()?;
        (log.contains(" 503 UH ") && log.contains(" 503 UF ") && log.contains(" 404 NR ")).then_some(log)
    });
    assert!(log.lines().any(|l| l.contains("dead") && l.contains("inbound") && l.contains(" 503 UF ")), "{log}");
}

#[test]
fn http2_prior_knowledge_on_both_sides() {
    let yaml = r#"
config: [routes.yaml]
gateways:
  istio-ingressgateway:
    ports: {80: 0}
services:
  grpcish:
    ports: [{name: http2, port: 9000}]
    workloads:
      - command: ["{httpbin}"]
        readiness: {tcp: true}
  web:
    ports: [{name: http, port: 9000}]
    workloads:
      - command: ["{httpbin}"]
"#;
    let routes = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /anything/h2}}]
    route: [{destination: {host: grpcish}}]
  - route: [{destination: {host: web}}]
"#;
    let m = Mesh::start(yaml, &[("routes.yaml", routes)]);
    m.wait_ready();
    // h2c client → gateway → h1 app (port named http).
    let r = http(m.gateway(), Req::get("/get").host("web.local").h2());
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.json()["version"], "HTTP/1.1");
    assert_eq!(r.json()["headers"]["host"], "web.local", "the authority becomes Host for HTTP/1.1 apps");
    // h1 client → gateway → h2c app (port named http2): the app sees HTTP/2.
    let r = http(m.gateway(), Req::get("/anything/h2").host("web.local"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["version"], "HTTP/2.0");
}

#[test]
fn admin_api_reports_readiness_workloads_and_config() {
    let m = demo();
    let ready = m.admin(Req::get("/ready"));
    assert_eq!((ready.status, ready.text().as_str()), (200, "ready\n"));
    let wl = m.workloads();
    let names: Vec<&str> = wl.as_array().unwrap().iter().map(|w| w["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["frontend-v1", "backend-v1", "backend-v2", "istio-ingressgateway"]);
    let b1 = m.workload("backend-v1");
    assert_eq!(b1["service"], "backend");
    assert_eq!(b1["labels"]["version"], "v1");
    assert_eq!(b1["labels"]["app"], "backend");
    assert_eq!(b1["state"], "Ready");
    assert_eq!(b1["restarts"], 0);
    assert!(b1["pid"].as_u64().unwrap() > 0);
    assert_eq!(b1["ports"][0]["port"], 8000);
    assert_eq!(b1["identity"], "spiffe://cluster.local/ns/default/sa/backend-sa");
    let dump = m.admin(Req::get("/config_dump")).json();
    assert_eq!(dump["resources"].as_array().unwrap().len(), 2);
    assert!(dump["compiled"]["clusters"]["outbound|8000||backend.default.svc.cluster.local"].is_object());
    assert_eq!(m.admin(Req::get("/nope")).status, 404);
    assert_eq!(m.admin(Req::get("/shutdown")).status, 405, "shutdown is POST only");

    let (code, out, _) = devmesh(&["get", "workloads", "--admin", &m.admin.to_string()], m.dir.path());
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().starts_with("NAME"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("backend-v2") && l.contains("Ready") && l.contains("1/1")), "{out}");
    let (code, out, _) = devmesh(&["get", "vs", "-o", "json", "--admin", &m.admin.to_string()], m.dir.path());
    assert_eq!(code, 0);
    let vs: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(vs["kind"], "List");
    assert_eq!(vs["items"][0]["metadata"]["name"], "edge");
    assert_eq!(vs["items"][0]["metadata"]["generation"], 1);
}

#[test]
fn opaque_tcp_goes_through_the_mesh_over_mtls() {
    // `tcp` is declared; `legacy` has no port name, so the sidecar sniffs, sees nothing (the
    // server speaks first) and falls back to TCP after the detection timeout.
    let yaml = r#"
gateways: {}
services:
  client:
    ports: [{name: http, port: 80}]
    workloads: [{command: ["{httpbin}"]}]
  echo:
    ports: [{name: tcp-echo, port: 7000}]
    workloads: [{command: ["{httpbin}", --tcp-echo]}]
  legacy:
    ports: [{port: 7001}]
    workloads: [{command: ["{httpbin}", --tcp-echo]}]
"#;
    let m = Mesh::start(yaml, &[]);
    m.wait_ready();
    let client = m.workload("client");
    for svc in ["echo", "legacy"] {
        let up = &client["upstreams"][svc];
        let port = up["ports"].as_object().unwrap().values().next().unwrap().as_u64().unwrap();
        let addr: SocketAddr = format!("{}:{port}", up["host"].as_str().unwrap()).parse().unwrap();
        block_on(async {
            let s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            let greet =
                tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await.unwrap().unwrap().unwrap();
            assert_eq!(greet, format!("hello {svc}"), "{svc}: the app's greeting arrives through both sidecars");
            w.write_all(b"ping\n").await.unwrap();
            let back = tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await.unwrap().unwrap().unwrap();
            assert_eq!(back, "ping");
        });
    }
}

#[test]
fn registry_only_refuses_unknown_hosts() {
    let yaml = r#"
meshConfig:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
gateways: {}
services:
  client:
    ports: [{name: http, port: 80}]
    workloads: [{command: ["{httpbin}"]}]
"#;
    let m = Mesh::start(yaml, &[]);
    m.wait_ready();
    let proxy = proxy_of(&m, "client");
    // Istio's egress task: an unknown HTTP host gets 502 (BlackHoleCluster) ...
    let r = http(proxy, Req::get("http://unknown.example/x").host("unknown.example"));
    assert_eq!(r.status, 502);
    // ... and a CONNECT to it is refused, while mesh services still work.
    block_on(async {
        let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
        s.write_all(b"CONNECT unknown.example:443 HTTP/1.1\r\nHost: unknown.example:443\r\n\r\n").await.unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    });
    let ok = http(proxy, Req::get("http://client/get").host("client"));
    assert_eq!(ok.status, 200, "{:?} {} {}", ok.headers, ok.text(), m.access_log());
}

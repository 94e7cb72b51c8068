//! The control plane as a user drives it: `devmesh apply|get|delete|proxy-config` against a
//! running mesh, watched config files that reload on save (and reject bad edits with their
//! location while the old rules keep serving), and reloads under load that lose no request.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// Gateway + DestinationRule + a VirtualService sending everything to `subset`; `uri` is
/// the match regex of a first route (line 27, column 16 of the file).
fn routes(subset: &str, uri: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: 80, name: http, protocol: HTTP}}, hosts: ["*"]}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend}}
spec:
  host: backend
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend}}
spec:
  hosts: [backend.test]
  gateways: [gw]
  http:
  - name: special
    match:
    - uri:
        regex: "{uri}"
    route: [{{destination: {{host: backend, subset: v1}}}}]
  - route: [{{destination: {{host: backend, subset: {subset}}}}}]
"#
    )
}

fn served(m: &Mesh) -> String {
    let r = http(m.gateway(), Req::get("/get").host("backend.test"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.header("x-served-by").unwrap_or("-").to_string()
}

/// Saves like an editor: a temporary file renamed over the original.
fn save(m: &Mesh, text: &str) {
    let tmp = m.dir.path().join(".routes.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, m.dir.path().join("routes.yaml")).unwrap();
}

#[test]
fn watched_file_reloads_within_a_second_and_bad_edits_are_rejected() {
    let m = Mesh::start(&backend_mesh("routes.yaml"), &[("routes.yaml", &routes("v1", "/special"))]);
    m.wait_ready();
    assert!((0..10).all(|_| served(&m) == "backend-v1"));

    // A bad regex: rejected with its location; the old rules keep serving.
    save(&m, &routes("v2", "/special["));
    let line = m.wait_line("change rejected", Duration::from_secs(5));
    assert!(line.contains("v1 keeps serving"), "{line}");
    let log = m.wait_line("routes.yaml:27:", Duration::from_secs(1));
    assert!(log.contains("routes.yaml:27:16: error:") && log.contains("RE2"), "{log}");
    assert!((0..10).all(|_| served(&m) == "backend-v1"), "the running config keeps serving");

    // A good edit takes effect within a second of the save.
    let t = Instant::now();
    save(&m, &routes("v2", "/special"));
    wait_until("v2 serving", Duration::from_secs(1), || (served(&m) == "backend-v2").then_some(()));
    let took = t.elapsed();
    assert!(took < Duration::from_secs(1), "{took:?}");
    m.wait_line("v2 serving", Duration::from_secs(1));
    eprintln!("reload after save: {took:?}");

    // Removing a resource from the file deletes it from the mesh.
    let only_gw_and_dr: String = routes("v2", "/special").split("---").take(2).collect::<Vec<_>>().join("---");
    save(&m, &only_gw_and_dr);
    wait_until("the VirtualService gone", Duration::from_secs(2), || {
        (http(m.gateway(), Req::get("/get").host("backend.test")).status == 404).then_some(())
    });
}

#[test]
fn reloads_under_load_lose_no_request() {
    let m = Mesh::start(&backend_mesh("routes.yaml"), &[("routes.yaml", &routes("v1", "/special"))]);
    m.wait_ready();
    let gw = m.gateway();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = Arc::new(Mutex::new(String::new()));
    let mut clients = Vec::new();
    for keep_alive in [true, false] {
        let (stop, ok, failures, seen) = (stop.clone(), ok.clone(), failures.clone(), seen.clone());
        clients.push(std::thread::spawn(move || {
            block_on(async move {
                let mut conn: Option<hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>> =
                    None;
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if conn.as_ref().is_none_or(|c| c.is_closed()) || !keep_alive {
                        let tcp = tokio::net::TcpStream::connect(gw).await.expect("connect");
                        let (s, c) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                            .await
                            .expect("handshake");
                        tokio::spawn(c);
                        conn = Some(s);
                    }
                    let Some(s) = conn.as_mut() else { continue };
                    if s.ready().await.is_err() {
                        failures.lock().unwrap().push("connection closed by the proxy".into());
                        conn = None;
                        continue;
                    }
                    let req = http::Request::get("/get")
                        .header("host", "backend.test")
                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap();
                    match s.send_request(req).await {
                        Ok(r) if r.status() == 200 => {
                            let by =
                                r.headers().get("x-served-by").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                            let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                            ok.fetch_add(1, Ordering::Relaxed);
                            *seen.lock().unwrap() = by;
                        }
                        Ok(r) => failures.lock().unwrap().push(format!("status {}", r.status())),
                        Err(e) => failures
                            .lock()
                            .unwrap()
                            .push(format!("error {e} keep_alive={keep_alive} after {} ok", ok.load(Ordering::Relaxed))),
                    }
                }
            })
        }));
    }
    let mut latencies = Vec::new();
    for round in 0..8 {
        let want = if round % 2 == 0 { "v2" } else { "v1" };
        let t = Instant::now();
        save(&m, &routes(want, "/special"));
        let target = format!("backend-{want}");
        wait_until("the clients to see the new version", Duration::from_secs(2), || {
            (*seen.lock().unwrap() == target).then_some(())
        });
        latencies.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    let total = ok.load(Ordering::Relaxed);
    eprintln!("{total} requests during 8 reloads, reload-to-traffic latencies {latencies:?}");
    assert!(failures.is_empty(), "{} failed requests: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    assert!(total > 100, "the load kept flowing: {total}");
    assert!(latencies.iter().all(|l| *l < Duration::from_secs(1)), "{latencies:?}");
}

#[test]
fn apply_get_delete_and_proxy_config_like_kubectl_and_istioctl() {
    let m = Mesh::start(&backend_mesh("routes.yaml"), &[("routes.yaml", &routes("v1", "/special"))]);
    m.wait_ready();
    let admin = m.admin.to_string();
    let dir = m.dir.path();
    let run = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--admin", &admin]);
        devmesh(&a, dir)
    };
    let split = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: split}\nspec:\n  hosts: [split.test]\n  gateways: [gw]\n  http:\n  - route:\n    - {destination: {host: backend, subset: v1}, weight: 50}\n    - {destination: {host: backend, subset: v2}, weight: 50}\n";
    std::fs::write(dir.join("split.yaml"), split).unwrap();

    let (code, out, err) = run(&["apply", "-f", "split.yaml"]);
    assert_eq!((code, out.as_str()), (0, "virtualservice.networking.istio.io/split created\n"), "{err}");
    let (_, out, _) = run(&["apply", "-f", "split.yaml"]);
    assert_eq!(out, "virtualservice.networking.istio.io/split unchanged\n");
    std::fs::write(
        dir.join("split.yaml"),
        split.replace("weight: 50", "weight: 60").replacen("weight: 60", "weight: 40", 1),
    )
    .unwrap();
    let (_, out, _) = run(&["apply", "-f", "split.yaml"]);
    assert_eq!(out, "virtualservice.networking.istio.io/split configured\n");
    let (_, out, _) = run(&["apply", "-f", "split.yaml", "--dry-run"]);
    assert_eq!(out, "virtualservice.networking.istio.io/split unchanged (dry run)\n");

    // From standard input, and a folder.
    let (code, out, _) = devmesh_stdin(&["apply", "-f", "-", "--admin", &admin], dir, &split.replace("split", "stdin"));
    assert_eq!((code, out.as_str()), (0, "virtualservice.networking.istio.io/stdin created\n"));

    // An invalid change is rejected whole, with locations, and changes nothing.
    let bad = format!(
        "{}---\n{}",
        split.replace("split", "other"),
        split.replace("subset: v1", "subset: v1}\n  - oops: [").replace("split", "split2")
    );
    std::fs::write(dir.join("bad.yaml"), &bad).unwrap();
    let (code, _, err) = run(&["apply", "-f", "bad.yaml"]);
    assert_eq!(code, 1);
    assert!(err.contains("bad.yaml:"), "{err}");
    assert!(err.contains("nothing was applied"), "{err}");
    let (_, out, _) = run(&["get", "vs"]);
    assert!(!out.contains("other"), "a rejected apply changes nothing:\n{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("NAMESPACE") && lines[0].contains("GATEWAYS") && lines[0].ends_with("AGE"), "{out}");
    assert!(lines.iter().any(|l| l.contains("split") && l.contains("split.test")), "{out}");

    // get -o yaml output applies back unchanged.
    let (code, yaml, _) = run(&["get", "vs", "split", "-o", "yaml"]);
    assert_eq!(code, 0);
    assert!(yaml.contains("kind: VirtualService") && yaml.contains("weight: 40"), "{yaml}");
    let (code, out, err) = devmesh_stdin(&["apply", "-f", "-", "--admin", &admin], dir, &yaml);
    assert_eq!((code, out.as_str()), (0, "virtualservice.networking.istio.io/split unchanged\n"), "{err}");
    let (_, json, _) = run(&["get", "dr", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["items"][0]["spec"]["subsets"][1]["name"], "v2");

    // proxy-config shows what the gateway and a sidecar do.
    let (code, out, _) = run(&["proxy-config", "routes", "istio-ingressgateway"]);
    assert_eq!(code, 0);
    assert!(out.contains("outbound|8000|v1|backend.default.svc.cluster.local 40%, outbound|8000|v2|backend.default.svc.cluster.local 60%"), "{out}");
    assert!(out.contains("uri~/special"), "{out}");
    let (_, out, _) = run(&["proxy-config", "clusters", "backend-v1"]);
    assert!(
        out.lines().any(|l| l.starts_with("backend.default.svc.cluster.local")
            && l.contains("v2")
            && l.contains("1/1")
            && l.contains("default/backend")),
        "{out}"
    );
    let (_, out, _) = run(&["proxy-config", "endpoints", "backend-v1"]);
    assert!(
        out.lines().filter(|l| l.contains("HEALTHY") && l.contains("outbound|8000||backend")).count() == 2,
        "{out}"
    );
    let (_, out, _) = run(&["pc", "listeners", "backend-v1"]);
    assert!(out.contains("HTTP proxy") && out.contains("inbound"), "{out}");
    let (code, _, err) = run(&["proxy-config", "routes", "nobody"]);
    assert_eq!(code, 1);
    assert!(err.contains("no workload or gateway named"), "{err}");

    // delete by name, by file; a missing one is NotFound.
    let (code, out, _) = run(&["delete", "vs", "stdin"]);
    assert_eq!((code, out.as_str()), (0, "virtualservice.networking.istio.io/stdin deleted\n"));
    let (code, _, err) = run(&["delete", "virtualservice", "stdin"]);
    assert_eq!(code, 1);
    assert!(err.contains("NotFound") && err.contains("\"stdin\" not found"), "{err}");
    let (code, out, _) = run(&["delete", "-f", "split.yaml"]);
    assert_eq!((code, out.as_str()), (0, "virtualservice.networking.istio.io/split deleted\n"));
    assert_eq!(http(m.gateway(), Req::get("/get").host("split.test")).status, 404);
}

/// Reading a watched file is not a change (notify reports opens and reads too): it reloads
/// nothing, and one broken save is rejected exactly once, not again at every read.
#[test]
fn reading_a_watched_file_reloads_nothing_and_one_save_is_one_reload() {
    let m = Mesh::start(&backend_mesh("routes.yaml"), &[("routes.yaml", &routes("v1", "/special"))]);
    m.wait_ready();
    let count = |needle: &str| m.log().matches(needle).count();
    let path = m.dir.path().join("routes.yaml");
    for _ in 0..20 {
        std::fs::read_to_string(&path).unwrap();
    }
    // Longer than the debounce (100 ms) several times over.
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(count(" serving ("), 0, "a read reloaded:\n{}", m.log());
    assert_eq!(count("change rejected"), 0);
    save(&m, &routes("v2", "/special["));
    m.wait_line("change rejected", Duration::from_secs(5));
    for _ in 0..20 {
        std::fs::read_to_string(&path).unwrap();
    }
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(count("change rejected"), 1, "rejected again without a change:\n{}", m.log());
    save(&m, &routes("v2", "/special"));
    m.wait_line("v2 serving", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(count(" serving ("), 1, "{}", m.log());
}

/// kubectl's delete habits, as Istio's egress task uses them: several names, a missing one
/// ignored with --ignore-not-found, a label selector, --all; and `get -o yaml` sorted by name.
#[test]
fn delete_takes_several_names_selectors_all_and_ignore_not_found() {
    let m = Mesh::start(&backend_mesh(""), &[]);
    m.wait_ready();
    let admin = m.admin.to_string();
    let run = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--admin", &admin]);
        devmesh(&a, m.dir.path())
    };
    let se = |name: &str, team: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, labels: {{team: {team}}}}}\nspec:\n  hosts: [{name}.example]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: DNS\n"
        )
    };
    let all =
        ["zeta", "alpha", "mid", "beta"].iter().zip(["a", "a", "b", "b"]).map(|(n, t)| se(n, t)).collect::<Vec<_>>();
    m.apply(&all.join("---\n"));
    // Sorted by name, as the API server lists them.
    let (_, out, _) = run(&["get", "se", "-o", "yaml"]);
    let names: Vec<&str> = out.lines().filter_map(|l| l.trim().strip_prefix("name: ")).collect();
    assert_eq!(names, ["alpha", "beta", "mid", "zeta"], "{out}");
    // A List applies back, as kubectl's does (`get -o yaml | apply -f -`), YAML and JSON.
    let (code, applied, err) = devmesh_stdin(&["apply", "-f", "-", "--admin", &admin], m.dir.path(), &out);
    assert_eq!(code, 0, "{err}");
    assert_eq!(applied.lines().filter(|l| l.ends_with(" unchanged")).count(), 4, "{applied}");
    let (_, json, _) = run(&["get", "se", "-o", "json"]);
    let (code, applied, err) = devmesh_stdin(&["apply", "-f", "-", "--admin", &admin], m.dir.path(), &json);
    assert_eq!((code, applied.lines().count()), (0, 4), "{err}");
    // Two names at once, one of them missing: deleted, NotFound, exit 1; ignored with the flag.
    let (code, out, err) = run(&["delete", "serviceentry", "zeta", "nope"]);
    assert_eq!(code, 1);
    assert_eq!(out, "serviceentry.networking.istio.io/zeta deleted\n");
    assert!(err.contains("\"nope\" not found"), "{err}");
    let (code, out, err) = run(&["delete", "se", "alpha", "nope", "--ignore-not-found"]);
    assert_eq!((code, out.as_str(), err.as_str()), (0, "serviceentry.networking.istio.io/alpha deleted\n", ""));
    // A selector, then --all.
    let (code, out, _) = run(&["delete", "se", "-l", "team=b,team!=c"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "serviceentry.networking.istio.io/beta deleted\nserviceentry.networking.istio.io/mid deleted\n")
    );
    m.apply(&se("one", "x"));
    let (code, out, _) = run(&["delete", "se", "--all"]);
    assert_eq!((code, out.as_str()), (0, "serviceentry.networking.istio.io/one deleted\n"));
    let (code, _, err) = run(&["delete", "se", "--all"]);
    assert_eq!(code, 0);
    assert!(err.contains("No resources found"), "{err}");
}

/// Every field devmesh does not honour is warned about wherever it stands (here a port-level
/// `tls.mode: SIMPLE`, Istio's egress-rule-google-apis.yaml), and `validate` and
/// `apply --dry-run` say everything the real `apply` says, as kubectl's --dry-run=server.
#[test]
fn validate_and_dry_run_warn_as_apply_does_at_every_level() {
    let file = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: googleapis}\nspec:\n  hosts: [www.googleapis.com]\n  ports:\n  - {number: 80, name: http-port, protocol: HTTP}\n  - {number: 443, name: https-port, protocol: HTTPS}\n  resolution: DNS\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: originate-tls}\nspec:\n  host: www.googleapis.com\n  trafficPolicy:\n    portLevelSettings:\n    - port: {number: 443}\n      tls:\n        mode: SIMPLE\n  subsets:\n  - name: v1\n    labels: {version: v1}\n    trafficPolicy:\n      connectionPool: {tcp: {maxConnections: 1}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: nowhere}\nspec:\n  hosts: [nowhere.example]\n  http:\n  - route: [{destination: {host: backend, subset: v9}}]\n";
    let m = Mesh::start(&backend_mesh(""), &[("egress.yaml", file)]);
    m.wait_ready();
    let admin = m.admin.to_string();
    let warnings =
        |err: &str| -> Vec<String> { err.lines().filter(|l| l.contains(": warning: ")).map(str::to_string).collect() };
    let (code, _, err) = devmesh(&["validate", "egress.yaml"], m.dir.path());
    assert_eq!(code, 0, "{err}");
    let validated = warnings(&err);
    assert!(
        validated
            .iter()
            .any(|w| w.starts_with("egress.yaml:20:9: warning: DestinationRule portLevelSettings.tls mode SIMPLE")),
        "{err}"
    );
    assert!(
        validated.iter().any(|w| w.starts_with("egress.yaml:25:23: warning:") && w.contains("connectionPool")),
        "{err}"
    );
    let (code, _, dry) = devmesh(&["apply", "-f", "egress.yaml", "--dry-run", "--admin", &admin], m.dir.path());
    assert_eq!(code, 0, "{dry}");
    let (code, _, real) = devmesh(&["apply", "-f", "egress.yaml", "--admin", &admin], m.dir.path());
    assert_eq!(code, 0, "{real}");
    assert_eq!(warnings(&dry), warnings(&real), "the dry run says what the apply says");
    // The real apply knows the mesh: the unknown subset too, which validate alone cannot tell.
    assert!(warnings(&real).iter().any(|w| w.contains("v9")), "{real}");
    for w in &validated {
        assert!(warnings(&real).contains(w), "validate's {w:?} is also apply's:\n{real}");
    }
}

/// `meshConfig.outboundTrafficPolicy` changes live when the mesh file is saved, as Istio's
/// `istio` ConfigMap does; a change that needs a restart is said, and nothing else moves.
#[test]
fn mesh_config_reloads_live_and_other_mesh_file_changes_say_restart() {
    let yaml = "gateways: {}\nservices:\n  client:\n    ports: [{name: http, port: 8000}]\n    workloads: [{command: [\"{httpbin}\"], readiness: {http: /health}}]\n";
    let m = Mesh::start(yaml, &[]);
    m.wait_ready();
    let proxy = m.outbound_proxy("client");
    let outside = format!("http://{}/get", m.app("client"));
    let host = m.app("client").to_string();
    assert_eq!(http(proxy, Req::get(&outside).host(&host)).status, 200, "ALLOW_ANY: passthrough");
    let file = m.dir.path().join("devmesh.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("meshConfig: {{outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}}}\n{text}")).unwrap();
    m.wait_line("meshConfig.outboundTrafficPolicy REGISTRY_ONLY", Duration::from_secs(5));
    assert_eq!(http(proxy, Req::get(&outside).host(&host)).status, 502, "REGISTRY_ONLY: BlackHoleCluster");
    assert!(!m.log().contains("needs a restart"), "{}", m.log());
    // A service change is not applied live: said, and the policy stays.
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("port: 8000", "port: 8001")).unwrap();
    let line = m.wait_line("needs a restart", Duration::from_secs(5));
    assert!(line.contains("services"), "{line}");
    assert_eq!(http(proxy, Req::get(&outside).host(&host)).status, 502);
}

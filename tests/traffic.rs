//! VirtualService and DestinationRule semantics end to end, through the real binary: a gateway
//! in front of `backend` (v1, v2 on httpbin), resources applied through the admin API, the
//! effect checked at the client and counted at the upstream (each app's `/log`).

mod common;

use std::time::{Duration, Instant};

use common::*;

const GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

fn mesh() -> Mesh {
    let m = Mesh::start(&backend_mesh("gateway.yaml"), &[("gateway.yaml", GATEWAY)]);
    m.wait_ready();
    m
}

/// A VirtualService for `backend.test` bound to the gateway, with `http` as given.
fn vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: backend}}\nspec:\n  hosts: [backend.test]\n  gateways: [gw]\n  http:\n{http}"
    )
}

fn get(m: &Mesh, path: &str) -> Resp {
    http(m.gateway(), Req::get(path).host("backend.test"))
}

fn served_by(r: &Resp) -> String {
    r.header("x-served-by").unwrap_or("-").to_string()
}

fn attempts(app: std::net::SocketAddr, path: &str) -> Vec<String> {
    app_log(app)
        .iter()
        .filter(|e| e["path"] == path)
        .map(|e| e["attempt"].as_str().unwrap_or("-").to_string())
        .collect()
}

#[test]
fn retries_are_counted_at_the_upstream() {
    let m = mesh();
    let v1 = m.app("backend-v1");
    // `attempts: 3` on an always-503 upstream: 4 requests, x-envoy-attempt-count 1..4, the
    // last 503 returned with URX.
    m.apply(&vs("  - retries: {attempts: 3, retryOn: 5xx}\n    route: [{destination: {host: backend, subset: v1}}]\n"));
    let r = get(&m, "/status/503");
    assert_eq!(r.status, 503);
    assert_eq!(attempts(v1, "/status/503"), ["1", "2", "3", "4"]);
    m.wait_access(&["/status/503", " 503 URX "]);

    // A request body is buffered and sent whole with every attempt.
    let r = http(m.gateway(), Req::post("/status/503").host("backend.test").with_body("the same body"));
    assert_eq!(r.status, 503);
    let posts: Vec<serde_json::Value> = app_log(v1).into_iter().filter(|e| e["method"] == "POST").collect();
    assert_eq!(posts.len(), 4, "{posts:?}");
    assert!(posts.iter().all(|e| e["body"] == "the same body"), "{posts:?}");

    // `retryOn: gateway-error` does not retry a 500.
    clear_app_log(v1);
    m.apply(&vs(
        "  - retries: {attempts: 3, retryOn: gateway-error}\n    route: [{destination: {host: backend, subset: v1}}]\n",
    ));
    assert_eq!(get(&m, "/status/500").status, 500);
    assert_eq!(attempts(v1, "/status/500"), ["1"]);
    assert_eq!(get(&m, "/status/502").status, 502);
    assert_eq!(attempts(v1, "/status/502"), ["1", "2", "3", "4"]);

    // Istio's default policy (no `retries`): 503 is retried twice, 500 is not.
    clear_app_log(v1);
    m.apply(&vs("  - route: [{destination: {host: backend, subset: v1}}]\n"));
    assert_eq!(get(&m, "/status/503").status, 503);
    assert_eq!(attempts(v1, "/status/503"), ["1", "2", "3"]);
    assert_eq!(get(&m, "/status/500").status, 500);
    assert_eq!(attempts(v1, "/status/500"), ["1"]);

    // `attempts: 0` turns retries off.
    clear_app_log(v1);
    m.apply(&vs("  - retries: {attempts: 0}\n    route: [{destination: {host: backend, subset: v1}}]\n"));
    assert_eq!(get(&m, "/status/503").status, 503);
    assert_eq!(attempts(v1, "/status/503"), ["1"]);

    // A retriable status code by number (`retriable-status-codes`), and a retry that succeeds
    // on the other host.
    m.apply(&vs("  - retries: {attempts: 2, retryOn: \"418\"}\n    route: [{destination: {host: backend}}]\n"));
    clear_app_log(v1);
    let v2 = m.app("backend-v2");
    clear_app_log(v2);
    assert_eq!(get(&m, "/status/418").status, 418);
    let total = attempts(v1, "/status/418").len() + attempts(v2, "/status/418").len();
    assert_eq!(total, 3);
    assert!(
        !attempts(v1, "/status/418").is_empty() && !attempts(v2, "/status/418").is_empty(),
        "retries avoid the host just tried"
    );
}

#[test]
fn timeouts_answer_504_with_ut() {
    let m = mesh();
    m.apply(&vs("  - timeout: 0.5s\n    retries: {attempts: 0}\n    route: [{destination: {host: backend}}]\n"));
    let t = Instant::now();
    let r = get(&m, "/delay/2");
    let took = t.elapsed();
    assert_eq!(r.status, 504);
    assert_eq!(r.text(), "upstream request timeout");
    assert!(took >= Duration::from_millis(450) && took < Duration::from_millis(1500), "{took:?}");
    m.wait_access(&["/delay/2", " 504 UT "]);
    assert_eq!(get(&m, "/delay/0.1").status, 200, "fast answers pass");

    // Per-try timeouts with retries: three tries of 0.3 s each, then 504.
    let v1 = m.app("backend-v1");
    clear_app_log(v1);
    m.apply(&vs("  - retries: {attempts: 2, perTryTimeout: 0.3s, retryOn: gateway-error}\n    route: [{destination: {host: backend, subset: v1}}]\n"));
    let t = Instant::now();
    let r = get(&m, "/delay/1");
    let took = t.elapsed();
    assert_eq!(r.status, 504);
    assert!(took >= Duration::from_millis(850) && took < Duration::from_millis(2500), "{took:?}");
    wait_until("three tries at the upstream", Duration::from_secs(3), || {
        (attempts(v1, "/delay/1") == ["1", "2", "3"]).then_some(())
    });

    // The route timeout covers all tries.
    m.apply(&vs("  - timeout: 0.5s\n    retries: {attempts: 5, perTryTimeout: 0.2s, retryOn: gateway-error}\n    route: [{destination: {host: backend, subset: v1}}]\n"));
    let t = Instant::now();
    assert_eq!(get(&m, "/delay/1").status, 504);
    assert!(t.elapsed() < Duration::from_millis(1000), "{:?}", t.elapsed());
}

#[test]
fn faults_delay_and_abort_like_envoy() {
    let m = mesh();
    let v1 = m.app("backend-v1");
    m.apply(&vs(r#"  - match: [{headers: {x-fault: {exact: abort}}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: backend, subset: v1}}]
  - match: [{headers: {x-fault: {exact: delay}}}]
    fault: {delay: {fixedDelay: 0.5s, percentage: {value: 100}}}
    route: [{destination: {host: backend, subset: v1}}]
  - match: [{headers: {x-fault: {exact: half}}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 50}}}
    route: [{destination: {host: backend, subset: v1}}]
  - match: [{headers: {x-fault: {exact: grpc}}}]
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
    route: [{destination: {host: backend, subset: v1}}]
  - match: [{headers: {x-fault: {exact: none}}}]
    fault: {delay: {fixedDelay: 5s, percentage: {value: 0}}}
    timeout: 0.2s
    route: [{destination: {host: backend, subset: v1}}]
  - route: [{destination: {host: backend, subset: v1}}]
"#));
    clear_app_log(v1);
    let r = http(m.gateway(), Req::get("/get").host("backend.test").header("x-fault", "abort"));
    assert_eq!((r.status, r.text().as_str()), (418, "fault filter abort"));
    assert!(attempts(v1, "/get").is_empty(), "an aborted request never reaches the upstream");
    m.wait_access(&[" 418 FI "]);

    let t = Instant::now();
    let r = http(m.gateway(), Req::get("/get").host("backend.test").header("x-fault", "delay"));
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(490), "{:?}", t.elapsed());
    m.wait_access(&[" 200 DI "]);

    let aborted = (0..200)
        .filter(|_| http(m.gateway(), Req::get("/get").host("backend.test").header("x-fault", "half")).status == 503)
        .count();
    assert!((60..=140).contains(&aborted), "about half of 200 should abort: {aborted}");

    let r = http(m.gateway(), Req::get("/get").host("backend.test").header("x-fault", "grpc"));
    assert_eq!((r.status, r.header("grpc-status")), (200, Some("14")));

    // Istio: a route with a fault gets no timeout (nor retries), so the slow answer passes.
    let r = http(m.gateway(), Req::get("/delay/0.5").host("backend.test").header("x-fault", "none"));
    assert_eq!(r.status, 200);
}

#[test]
fn weighted_split_follows_the_weights() {
    let m = mesh();
    m.apply(&vs("  - route:\n    - {destination: {host: backend, subset: v1}, weight: 80}\n    - {destination: {host: backend, subset: v2}, weight: 20}\n"));
    let n = 1000;
    let v1 = (0..n).filter(|_| served_by(&get(&m, "/get")) == "backend-v1").count();
    let share = v1 as f64 / n as f64;
    // 4.7 standard deviations either side of 0.8; round robin (weights ignored) gives 0.5.
    assert!((0.74..=0.86).contains(&share), "v1 share {share} is not about 0.8");

    // A zero weight takes nothing; a single destination takes everything whatever its weight.
    m.apply(&vs("  - route:\n    - {destination: {host: backend, subset: v1}, weight: 0}\n    - {destination: {host: backend, subset: v2}, weight: 30}\n"));
    assert!((0..50).all(|_| served_by(&get(&m, "/get")) == "backend-v2"));
}

#[test]
fn rewrites_redirects_direct_responses_headers_and_cors() {
    let m = mesh();
    m.apply(&vs(r#"  - match: [{uri: {prefix: /api/}}]
    rewrite: {uri: /anything/, authority: rewritten.example}
    headers:
      request: {set: {x-set: "1"}, add: {x-added: a}, remove: [x-drop]}
      response: {set: {x-resp: yes}, remove: [x-served-by]}
    route: [{destination: {host: backend, subset: v1}, headers: {request: {set: {x-dest: v1}}}}]
  - match: [{uri: {regex: "/re/([a-z]+)/(\\d+)"}}]
    rewrite: {uriRegexRewrite: {match: "/re/([a-z]+)/(\\d+)", rewrite: "/anything/\\2/\\1"}}
    route: [{destination: {host: backend, subset: v1}}]
  - match: [{uri: {exact: /old}}]
    redirect: {uri: /new, authority: new.example, redirectCode: 308}
  - match: [{uri: {exact: /teapot}}]
    directResponse: {status: 418, body: {string: "I'm a teapot"}}
  - match: [{uri: {exact: /bytes}}]
    directResponse: {status: 200, body: {bytes: aGVsbG8=}}
  - match: [{uri: {prefix: /cors}}]
    corsPolicy:
      allowOrigins: [{exact: "https://app.example"}, {regex: "https://.*\\.trusted\\.example"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-custom]
      exposeHeaders: [x-served-by]
      maxAge: 24h
      allowCredentials: true
    rewrite: {uri: /get}
    route: [{destination: {host: backend, subset: v1}}]
"#));
    let r = http(m.gateway(), Req::get("/api/x?q=1").host("backend.test").header("x-drop", "gone"));
    assert_eq!(r.status, 200);
    let echo = r.json();
    assert_eq!(echo["path"], "/anything/x");
    assert_eq!(echo["args"]["q"], "1", "the query string survives a rewrite");
    assert_eq!(echo["headers"]["host"], "rewritten.example");
    assert_eq!((echo["headers"]["x-set"].as_str(), echo["headers"]["x-added"].as_str()), (Some("1"), Some("a")));
    assert_eq!(echo["headers"]["x-dest"], "v1");
    assert!(echo["headers"]["x-drop"].is_null());
    assert_eq!(r.header("x-resp"), Some("yes"));
    assert!(r.header("x-served-by").is_none(), "response header removed");

    assert_eq!(get(&m, "/re/abc/42").json()["path"], "/anything/42/abc");

    let r = get(&m, "/old?x=1");
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("http://new.example/new?x=1"));

    let r = get(&m, "/teapot");
    assert_eq!((r.status, r.text().as_str()), (418, "I'm a teapot"));
    assert_eq!(get(&m, "/bytes").text(), "hello");

    // CORS: the proxy answers preflights from allowed origins, and decorates responses.
    let pre = |origin: &str| {
        let mut r = Req::get("/cors")
            .host("backend.test")
            .header("origin", origin)
            .header("access-control-request-method", "POST");
        r.method = http::Method::OPTIONS;
        http(m.gateway(), r)
    };
    let ok = pre("https://app.example");
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(ok.header("access-control-allow-methods"), Some("GET,POST"));
    assert_eq!(ok.header("access-control-max-age"), Some("86400"));
    assert_eq!(ok.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        pre("https://a.trusted.example").header("access-control-allow-origin"),
        Some("https://a.trusted.example")
    );
    let denied = pre("https://evil.example");
    assert!(denied.header("access-control-allow-origin").is_none());
    let simple = http(m.gateway(), Req::get("/cors").host("backend.test").header("origin", "https://app.example"));
    assert_eq!(simple.status, 200);
    assert_eq!(simple.header("access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(simple.header("access-control-expose-headers"), Some("x-served-by"));
}

#[test]
fn mirrors_copy_requests_to_a_shadow() {
    let m = mesh();
    let (v1, v2) = (m.app("backend-v1"), m.app("backend-v2"));
    m.apply(&vs("  - route: [{destination: {host: backend, subset: v1}}]\n    mirror: {host: backend, subset: v2}\n    mirrorPercentage: {value: 100}\n"));
    clear_app_log(v1);
    clear_app_log(v2);
    for _ in 0..5 {
        let r = get(&m, "/anything/mirrored");
        assert_eq!(served_by(&r), "backend-v1", "the client gets the primary's answer");
    }
    let shadow = wait_until("5 mirrored requests at v2", Duration::from_secs(5), || {
        let l: Vec<_> = app_log(v2).into_iter().filter(|e| e["path"] == "/anything/mirrored").collect();
        (l.len() == 5).then_some(l)
    });
    assert!(shadow.iter().all(|e| e["host"] == "backend.test-shadow"), "{shadow:?}");
    assert_eq!(attempts(v1, "/anything/mirrored").len(), 5);
}

#[test]
fn subsets_load_balancing_and_consistent_hashing() {
    let m = mesh();
    // A subset no DestinationRule defines: 503 NC, and the apply warns about it.
    let reply = m.apply(&vs("  - route: [{destination: {host: backend, subset: v9}}]\n"));
    let warnings = reply["warnings"].to_string();
    assert!(warnings.contains("subset v9 of backend.default.svc.cluster.local is not defined"), "{warnings}");
    assert_eq!(get(&m, "/get").status, 503);
    m.wait_access(&[" 503 NC "]);

    // Consistent hashing on a header: one user, one endpoint; users spread.
    m.apply(&vs("  - route: [{destination: {host: backend}}]\n"));
    m.apply(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: backend}\nspec:\n  host: backend\n  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}\n",
    );
    let who = |user: &str| served_by(&http(m.gateway(), Req::get("/get").host("backend.test").header("x-user", user)));
    for user in ["alice", "bob", "carol"] {
        let first = who(user);
        assert!((0..10).all(|_| who(user) == first), "{user} sticks to {first}");
    }
    let spread: std::collections::HashSet<String> = (0..40).map(|i| who(&format!("user{i}"))).collect();
    assert_eq!(spread.len(), 2, "different users reach both endpoints");

    // A cookie with a TTL is generated when missing, and then keeps the client on one endpoint.
    m.apply(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: backend}\nspec:\n  host: backend\n  trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: session, ttl: 60s, path: /}, maglev: {tableSize: 1021}}}}\n",
    );
    let first = get(&m, "/get");
    let cookie = first.header("set-cookie").expect("a session cookie").to_string();
    assert!(cookie.starts_with("session=\"") && cookie.contains("Max-Age=60") && cookie.contains("Path=/"), "{cookie}");
    let value = cookie.split(';').next().unwrap().to_string();
    let pinned: Vec<String> = (0..10)
        .map(|_| served_by(&http(m.gateway(), Req::get("/get").host("backend.test").header("cookie", &value))))
        .collect();
    assert!(pinned.iter().all(|p| *p == pinned[0]), "{pinned:?}");

    // Round robin alternates; the DestinationRule's subset policy overrides the top level.
    m.apply(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: backend}\nspec:\n  host: backend\n  trafficPolicy: {loadBalancer: {simple: RANDOM}}\n  subsets:\n  - {name: all, labels: {app: backend}, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}\n",
    );
    m.apply(&vs("  - route: [{destination: {host: backend, subset: all}}]\n"));
    let seq: Vec<String> = (0..6).map(|_| served_by(&get(&m, "/get"))).collect();
    assert!(seq.windows(2).all(|w| w[0] != w[1]), "round robin alternates: {seq:?}");
}

#[test]
fn delegates_and_match_order() {
    let m = mesh();
    m.apply(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend}
spec:
  hosts: [backend.test]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /delegated}}]
    delegate: {name: backend-delegate}
  - match: [{headers: {x-version: {exact: v2}}}, {queryParams: {v: {exact: "2"}}}]
    route: [{destination: {host: backend, subset: v2}}]
  - match: [{withoutHeaders: {x-any: {}}, uri: {regex: "/anything/[0-9]+"}}]
    route: [{destination: {host: backend, subset: v2}}]
  - route: [{destination: {host: backend, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend-delegate}
spec:
  http:
  - match: [{method: {exact: POST}}]
    route: [{destination: {host: backend, subset: v2}}]
  - route: [{destination: {host: backend, subset: v1}}]
"#,
    );
    assert_eq!(served_by(&http(m.gateway(), Req::post("/delegated/x").host("backend.test"))), "backend-v2");
    assert_eq!(served_by(&get(&m, "/delegated/x")), "backend-v1");
    // A POST outside the delegate's prefix does not match the delegate's POST rule.
    assert_eq!(served_by(&http(m.gateway(), Req::post("/anything/p").host("backend.test"))), "backend-v1");
    // Match entries are OR-ed, fields AND-ed, the first route wins.
    assert_eq!(
        served_by(&http(m.gateway(), Req::get("/get").host("backend.test").header("x-version", "v2"))),
        "backend-v2"
    );
    assert_eq!(served_by(&get(&m, "/get?v=2")), "backend-v2");
    assert_eq!(served_by(&get(&m, "/anything/12")), "backend-v2");
    assert_eq!(
        served_by(&http(m.gateway(), Req::get("/anything/12").host("backend.test").header("x-any", "1"))),
        "backend-v1"
    );
    assert_eq!(served_by(&get(&m, "/anything/12/x")), "backend-v1", "regex matches the whole path");
}

#[test]
fn http1_chunked_responses_stream_through_gateway_and_sidecar() {
    // Gateway -> mTLS -> inbound sidecar -> app, all HTTP/1.1: a chunked response is passed on
    // chunk by chunk as the app writes it (the upstream client decodes from the socket as the
    // downstream polls), not buffered to the end.
    let m = mesh();
    m.apply(&vs("  - route: [{destination: {host: backend, subset: v1}}]\n"));
    let (first_after, total, text) = block_on(async {
        let tcp = tokio::net::TcpStream::connect(m.gateway()).await.unwrap();
        let (mut s, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("/stream?n=3&ms=400")
            .header("host", "backend.test")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let t = Instant::now();
        let resp = s.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_11);
        let mut body = resp.into_body();
        let mut first_after = None;
        let mut text = String::new();
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            if let Ok(d) = frame.unwrap().into_data() {
                first_after.get_or_insert(t.elapsed());
                text.push_str(std::str::from_utf8(&d).unwrap());
            }
        }
        (first_after.unwrap(), t.elapsed(), text)
    });
    assert_eq!(text, "chunk 0\nchunk 1\nchunk 2\n");
    assert!(first_after < Duration::from_millis(300), "the first chunk streams through: {first_after:?}");
    assert!(total >= Duration::from_millis(790), "{total:?}");
}

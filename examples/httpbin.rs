//! An httpbin-like test server for devmesh meshes (HTTP/1.1 and h2c on one port).
//!
//! Listens on `127.0.0.1:$PORT` (or `--port N`). Every response carries `x-served-by: $POD_NAME`.
//!
//!   GET  /hello                  200 "hello world" (a fixed answer, the benchmark's upstream)
//!   GET  /health                 200 ok
//!   ANY  /get, /anything/...     the request as JSON: method, path, args, headers, served_by
//!   GET  /headers                {"headers": {...}}
//!   GET  /status/{code}          that status
//!   GET  /delay/{seconds}        waits, then like /get (fractions allowed: /delay/0.2)
//!   GET  /bytes/{n}              n bytes
//!   GET  /env                    the process environment as JSON
//!   GET  /fetch?url=URL          fetches URL through $HTTP_PROXY (or directly) and reports it
//!   POST /exit/{code}            exits the process with that code
//!   GET  /log                    the requests this process served (method, path, host,
//!                                x-envoy-attempt-count), oldest first; DELETE /log clears it
//!   POST /stream?n=N&ms=M&grpc-status=S   N body chunks M ms apart, then trailers
//!                                (`grpc-status: S`): a gRPC-style streaming answer
//!
//! `--tcp-echo` serves a line-echo TCP protocol instead (server greets first: `hello <pod>\n`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn pod() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| "httpbin".into())
}

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        content_type.parse().unwrap_or(http::HeaderValue::from_static("text/plain")),
    );
    if let Ok(v) = pod().parse() {
        r.headers_mut().insert("x-served-by", v);
    }
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    respond(status, "application/json", serde_json::to_vec_pretty(v).unwrap_or_default())
}

fn query(req: &http::request::Parts) -> BTreeMap<String, String> {
    req.uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn echo(req: &http::request::Parts, peer: SocketAddr, body: &[u8]) -> Value {
    let headers: BTreeMap<String, String> =
        req.headers.iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())).collect();
    json!({
        "method": req.method.as_str(),
        "path": req.uri.path(),
        "url": req.uri.to_string(),
        "version": format!("{:?}", req.version),
        "args": query(req),
        "headers": headers,
        "origin": peer.ip().to_string(),
        "body": String::from_utf8_lossy(body),
        "served_by": {
            "pod": pod(),
            "service": std::env::var("DEVMESH_SERVICE").unwrap_or_default(),
            "workload": std::env::var("DEVMESH_WORKLOAD").unwrap_or_default(),
        },
    })
}

/// GET `url` through `$HTTP_PROXY` (absolute-form request), or directly without one.
async fn fetch(url: &str) -> Result<Value, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad url: {e}"))?;
    let authority = uri.authority().ok_or("url needs a host")?.to_string();
    let proxy = std::env::var("HTTP_PROXY").or_else(|_| std::env::var("http_proxy")).ok();
    let (connect_to, target) = match &proxy {
        Some(p) => (p.trim_start_matches("http://").trim_end_matches('/').to_string(), url.to_string()),
        None => {
            let with_port = if authority.contains(':') { authority.clone() } else { format!("{authority}:80") };
            (with_port, uri.path_and_query().map(|p| p.to_string()).unwrap_or_else(|| "/".into()))
        }
    };
    let tcp = tokio::net::TcpStream::connect(&connect_to).await.map_err(|e| format!("connect {connect_to}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get(target)
        .header(http::header::HOST, authority)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers: BTreeMap<String, String> =
        resp.headers().iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())).collect();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    let body: Value =
        serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
    Ok(json!({"via_proxy": proxy, "status": status, "headers": headers, "body": body}))
}

/// Requests served, for tests that count attempts at the upstream (bounded).
static LOG: Mutex<Vec<Value>> = Mutex::new(Vec::new());

fn log(req: &http::request::Parts, body: &[u8]) {
    let header = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let entry = json!({
        "method": req.method.as_str(),
        "path": req.uri.path(),
        "host": header("host").or_else(|| req.uri.authority().map(|a| a.to_string())),
        "attempt": header("x-envoy-attempt-count"),
        "request_id": header("x-request-id"),
        "body": String::from_utf8_lossy(&body[..body.len().min(1024)]),
    });
    if let Ok(mut l) = LOG.lock()
        && l.len() < 100_000
    {
        l.push(entry);
    }
}

/// A body fed by a channel: data chunks, then trailers.
struct Chunks(tokio::sync::mpsc::Receiver<hyper::body::Frame<Bytes>>);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

type AnyBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn stream(req: &http::request::Parts) -> Response<AnyBody> {
    let q = query(req);
    let n: usize = q.get("n").and_then(|v| v.parse().ok()).unwrap_or(3).min(1000);
    let ms: u64 = q.get("ms").and_then(|v| v.parse().ok()).unwrap_or(100).min(10_000);
    let status = q.get("grpc-status").cloned().unwrap_or_else(|| "0".into());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        for i in 0..n {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            if tx.send(hyper::body::Frame::data(Bytes::from(format!("chunk {i}\n")))).await.is_err() {
                return;
            }
        }
        let mut trailers = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(&status) {
            trailers.insert("grpc-status", v);
        }
        trailers.insert("grpc-message", http::HeaderValue::from_static("done"));
        let _ = tx.send(hyper::body::Frame::trailers(trailers)).await;
    });
    let mut r = Response::new(http_body_util::BodyExt::boxed(Chunks(rx)));
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    r
}

async fn handle(req: Request<Incoming>, peer: SocketAddr) -> Result<Response<AnyBody>, Infallible> {
    if req.uri().path() == "/hello" {
        let mut r = Response::new(Full::new(Bytes::from_static(b"hello world\n")).boxed());
        r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
        return Ok(r);
    }
    let (req, body) = req.into_parts();
    if req.uri.path() == "/stream" {
        log(&req, b"");
        return Ok(stream(&req));
    }
    let body = http_body_util::Limited::new(body, 8 << 20).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if !matches!(req.uri.path(), "/log" | "/health") {
        log(&req, &body);
    }
    let path = req.uri.path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let resp = match segments.as_slice() {
        ["health"] => respond(StatusCode::OK, "text/plain", "ok\n"),
        [""] => respond(
            StatusCode::OK,
            "text/plain",
            format!("httpbin {}: try /get, /headers, /status/418, /delay/1, /env, /fetch?url=\n", pod()),
        ),
        ["get"] | ["anything", ..] => json_response(StatusCode::OK, &echo(&req, peer, &body)),
        ["headers"] => json_response(StatusCode::OK, &json!({"headers": echo(&req, peer, &body)["headers"]})),
        ["status", code] => match code.parse::<u16>().ok().and_then(|c| StatusCode::from_u16(c).ok()) {
            Some(s) => respond(s, "text/plain", format!("{}\n", s.as_u16())),
            None => respond(StatusCode::BAD_REQUEST, "text/plain", "bad status code\n"),
        },
        ["delay", secs] => {
            let secs: f64 = secs.parse().unwrap_or(0.0);
            tokio::time::sleep(Duration::from_secs_f64(secs.clamp(0.0, 60.0))).await;
            json_response(StatusCode::OK, &echo(&req, peer, &body))
        }
        ["big-header", n] => {
            // A response head of about n bytes (one header), for head-limit tests.
            let mut r = respond(StatusCode::OK, "text/plain", "ok\n");
            let n: usize = n.parse::<usize>().unwrap_or(0).min(1 << 20);
            if let Ok(v) = http::HeaderValue::from_str(&"h".repeat(n)) {
                r.headers_mut().insert("x-big", v);
            }
            r
        }
        ["bytes", n] => {
            let n: usize = n.parse::<usize>().unwrap_or(0).min(64 << 20);
            respond(StatusCode::OK, "application/octet-stream", vec![b'x'; n])
        }
        ["env"] => {
            let env: BTreeMap<String, String> = std::env::vars().collect();
            json_response(StatusCode::OK, &json!(env))
        }
        ["fetch"] => match query(&req).get("url") {
            Some(url) => match fetch(url).await {
                Ok(v) => json_response(StatusCode::OK, &v),
                Err(e) => json_response(StatusCode::BAD_GATEWAY, &json!({"error": e})),
            },
            None => respond(StatusCode::BAD_REQUEST, "text/plain", "fetch needs ?url=\n"),
        },
        ["log"] if req.method == http::Method::DELETE => {
            if let Ok(mut l) = LOG.lock() {
                l.clear();
            }
            respond(StatusCode::OK, "text/plain", "cleared\n")
        }
        ["log"] => json_response(StatusCode::OK, &Value::Array(LOG.lock().map(|l| l.clone()).unwrap_or_default())),
        ["exit", code] => {
            let code: i32 = code.parse().unwrap_or(1);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                std::process::exit(code);
            });
            respond(StatusCode::OK, "text/plain", format!("exiting with {code}\n"))
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    };
    Ok(resp.map(|b| b.boxed()))
}

async fn tcp_echo(listener: tokio::net::TcpListener, suffix: String) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let suffix = suffix.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            if w.write_all(format!("hello {}{suffix}\n", pod()).as_bytes()).await.is_err() {
                return;
            }
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if w.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port = args
        .iter()
        .position(|a| a == "--port")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .or_else(|| std::env::var("PORT").ok())
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(8000);
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("httpbin: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("httpbin {} listening on 127.0.0.1:{port}", pod());
    if args.iter().any(|a| a == "--tcp-echo") {
        // Every other named port of the workload (`PORT_<NAME>`) echoes too, greeting with its
        // name: `hello <pod> on <NAME>`.
        for (key, value) in std::env::vars() {
            let Some(name) = key.strip_prefix("PORT_") else { continue };
            let Ok(p) = value.parse::<u16>() else { continue };
            if p == port {
                continue;
            }
            if let Ok(l) = tokio::net::TcpListener::bind(("127.0.0.1", p)).await {
                tokio::spawn(tcp_echo(l, format!(" on {name}")));
            }
        }
        tcp_echo(listener, String::new()).await;
        return;
    }
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, peer));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

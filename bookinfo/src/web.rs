//! What the four services share: serving HTTP on `127.0.0.1:$PORT`, responses, request
//! logging, and the outbound client. The client honours `HTTP_PROXY` / `NO_PROXY` like Python's
//! `requests` (so under devmesh every call goes through the workload's sidecar), opens a new
//! connection per call as upstream does, and applies one timeout to connecting and to each
//! read, as `requests.get(timeout=...)` does.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

pub type Resp = Response<Full<Bytes>>;

pub fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub fn json(status: StatusCode, v: &Value) -> Resp {
    text(status, "application/json", serde_json::to_vec(v).unwrap_or_default())
}

pub fn not_found() -> Resp {
    text(StatusCode::NOT_FOUND, "text/html", "<html><body><h1>404 Not Found</h1></body></html>\n")
}

/// `--port N`, a bare number, or `$PORT`; 9080 as in the images.
pub fn port(args: &[String]) -> u16 {
    let flag = args.iter().position(|a| a == "--port").and_then(|i| args.get(i + 1));
    let bare = args.iter().find(|a| a.parse::<u16>().is_ok());
    flag.or(bare).cloned().or_else(|| std::env::var("PORT").ok()).and_then(|p| p.parse().ok()).unwrap_or(9080)
}

/// One log line per request on stdout (the service's log under devmesh).
pub fn log_request(service: &str, req: &http::request::Parts, status: StatusCode) {
    let h = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
    println!(
        "{service} {} {} {} end-user={} x-request-id={} x-b3-traceid={}",
        req.method,
        req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        status.as_u16(),
        h("end-user"),
        h("x-request-id"),
        h("x-b3-traceid"),
    );
}

/// Serves `handler` on 127.0.0.1:`port` (HTTP/1.1 and h2c) until the process ends.
pub async fn serve<H, F>(service: &'static str, port: u16, handler: H)
where
    H: Fn(http::request::Parts, Bytes) -> F + Send + Sync + 'static,
    F: Future<Output = Resp> + Send + 'static,
{
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{service}: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!("{service} listening on {addr}");
    let handler = Arc::new(handler);
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let handler = handler.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = http_body_util::Limited::new(body, 1 << 20)
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let resp = handler(parts.clone(), body).await;
                    log_request(service, &parts, resp.status());
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// `http://<HOSTNAME><.SERVICES_DOMAIN>:<SERVICE_PORT>` from the environment.
pub fn base_url(name: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    let upper = name.to_ascii_uppercase();
    let host = env(&format!("{upper}_HOSTNAME")).unwrap_or_else(|| name.to_string());
    let port = env(&format!("{upper}_SERVICE_PORT")).unwrap_or_else(|| "9080".into());
    let domain = env("SERVICES_DOMAIN").filter(|d| !d.is_empty()).map(|d| format!(".{d}")).unwrap_or_default();
    format!("http://{host}{domain}:{port}")
}

pub fn env_var(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

/// The outcome of a call: a status and body, or the reason it failed (timeout, refused).
pub type CallResult = Result<(StatusCode, Bytes), String>;

pub struct Client {
    proxy: Matcher,
}

impl Client {
    pub fn from_env() -> Client {
        Client { proxy: Matcher::from_env() }
    }

    /// `GET url` with `headers`; `timeout` bounds the connect, the response head and each read.
    pub async fn get(&self, url: &str, headers: &HeaderMap, timeout: Duration) -> CallResult {
        let uri: http::Uri = url.parse().map_err(|e| format!("bad url {url}: {e}"))?;
        let authority = uri.authority().ok_or_else(|| format!("no host in {url}"))?.clone();
        let via = self.proxy.intercept(&uri);
        let (connect_to, target) = match &via {
            Some(p) => {
                let pa = p.uri().authority().ok_or("proxy without host")?;
                (format!("{}:{}", pa.host(), pa.port_u16().unwrap_or(80)), uri.to_string())
            }
            None => (
                format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80)),
                uri.path_and_query().map(|p| p.to_string()).unwrap_or_else(|| "/".into()),
            ),
        };
        let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&connect_to))
            .await
            .map_err(|_| format!("connect to {connect_to} timed out"))?
            .map_err(|e| format!("connect to {connect_to}: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = Request::get(target).body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
        *req.headers_mut() = headers.clone();
        req.headers_mut().insert(header::HOST, HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?);
        let resp = tokio::time::timeout(timeout, sender.send_request(req))
            .await
            .map_err(|_| format!("read timed out after {}s ({url})", timeout.as_secs_f64()))?
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout(timeout, body.frame()).await {
                Err(_) => return Err(format!("read timed out after {}s ({url})", timeout.as_secs_f64())),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(e.to_string()),
                Ok(Some(Ok(frame))) => {
                    if let Some(d) = frame.data_ref() {
                        out.extend_from_slice(d);
                    }
                }
            }
        }
        Ok((status, Bytes::from(out)))
    }
}

pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Parses `application/x-www-form-urlencoded` (also used for query strings).
pub fn form(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (url_decode(k), url_decode(v))
        })
        .collect()
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(v) => {
                    out.push(v);
                    i += 3;
                    continue;
                }
                None => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_follow_the_environment_variables() {
        let none = |_: &str| None;
        assert_eq!(base_url("details", &none), "http://details:9080");
        let env = |k: &str| match k {
            "SERVICES_DOMAIN" => Some("default.svc.cluster.local".to_string()),
            "RATINGS_SERVICE_PORT" => Some("9999".to_string()),
            "RATINGS_HOSTNAME" => Some("ratings-v2".to_string()),
            _ => None,
        };
        assert_eq!(base_url("ratings", &env), "http://ratings-v2.default.svc.cluster.local:9999");
    }

    #[test]
    fn forms_and_ports() {
        assert_eq!(
            form("username=jason&passwd=a%20b+c"),
            vec![("username".into(), "jason".into()), ("passwd".into(), "a b c".into())]
        );
        assert_eq!(port(&["--port".into(), "1234".into()]), 1234);
        assert_eq!(html_escape("<b>\"x\"</b>"), "&lt;b&gt;&quot;x&quot;&lt;/b&gt;");
    }
}

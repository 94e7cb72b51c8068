//! productpage: the web page and API (BEHAVIOUR.md §1). It calls details, then reviews (3 s
//! each, reviews twice at most, as upstream does on purpose for the fault-injection task),
//! propagates the trace and context headers, and adds `end-user` from the signed-in session.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::page;
use crate::web::{self, CallResult, Client, Resp};

pub const TIMEOUT: Duration = Duration::from_secs(3);
pub const REVIEWS_ATTEMPTS: usize = 2;
const PRODUCT_ID: i64 = 0;

/// Copied verbatim from the incoming request to every downstream call (§1.7), after the B3
/// context.
pub const PROPAGATED: &[&str] = &[
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-sampled",
    "x-request-id",
    "x-ot-span-context",
    "x-datadog-trace-id",
    "x-datadog-parent-id",
    "x-datadog-sampling-priority",
    "traceparent",
    "tracestate",
    "x-cloud-trace-context",
    "grpc-trace-bin",
    "sw8",
    "user-agent",
    "cookie",
    "authorization",
    "jwt",
];

pub fn product() -> Value {
    json!({
        "id": PRODUCT_ID,
        "title": "The Comedy of Errors",
        "descriptionHtml": "<a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">Wikipedia Summary</a>: \
            The Comedy of Errors is one of <b>William Shakespeare's</b> early plays. It is his shortest comedy and one \
            of his most farcical: two sets of identical twins separated at birth, and a day of mistaken identities, \
            slapstick, puns and word play."
    })
}

/// The signed session cookie (Flask's is signed with a fixed key too; this is a demo app).
pub mod session {
    use ring::hmac;

    const KEY: &[u8] = b"devmesh bookinfo sample session key";
    pub const COOKIE: &str = "session";

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn unhex(s: &str) -> Option<Vec<u8>> {
        if !s.len().is_multiple_of(2) {
            return None;
        }
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
    }

    /// The cookie value for a signed-in user.
    pub fn encode(user: &str) -> String {
        let payload = serde_json::json!({"user": user}).to_string();
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, KEY), payload.as_bytes());
        format!("{}.{}", hex(payload.as_bytes()), hex(tag.as_ref()))
    }

    /// The user of a `Cookie` header, if its session cookie is valid.
    pub fn user(cookie_header: &str) -> Option<String> {
        let value = cookie_header
            .split(';')
            .map(str::trim)
            .find_map(|c| c.strip_prefix(COOKIE).and_then(|r| r.strip_prefix('=')))?;
        let (payload, tag) = value.split_once('.')?;
        let payload = unhex(payload)?;
        let tag = unhex(tag)?;
        hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, KEY), &payload, &tag).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&payload).ok()?;
        v["user"].as_str().map(str::to_string)
    }
}

pub struct ProductPage {
    pub details: String,
    pub reviews: String,
    pub ratings: String,
    pub flood: usize,
    pub client: Client,
    results: Mutex<BTreeMap<(&'static str, u16), u64>>,
}

/// The headers of a downstream call: the propagation list, then `end-user` from the session.
pub fn outgoing_headers(incoming: &HeaderMap, user: Option<&str>) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in PROPAGATED {
        if let Some(v) = incoming.get(*name) {
            out.insert(HeaderName::from_static(name), v.clone());
        }
    }
    if let Some(u) = user.and_then(|u| HeaderValue::from_str(u).ok()) {
        out.insert(HeaderName::from_static("end-user"), u);
    }
    out
}

/// `(status, body)` of a call as productpage reports it: the downstream status and JSON on a
/// 200; the status and productpage's error text otherwise; 500 when no response came.
fn outcome(r: &CallResult, error: &str) -> (u16, Value) {
    match r {
        Ok((StatusCode::OK, body)) => (200, serde_json::from_slice(body).unwrap_or(Value::Null)),
        Ok((status, _)) => (status.as_u16(), json!({"error": error})),
        Err(_) => (500, json!({"error": error})),
    }
}

const DETAILS_ERROR: &str = "Sorry, product details are currently unavailable for this book.";
const REVIEWS_ERROR: &str = "Sorry, product reviews are currently unavailable for this book.";
const RATINGS_ERROR: &str = "Sorry, product ratings are currently unavailable for this book.";

impl ProductPage {
    pub fn from_env() -> ProductPage {
        let env = web::env_var;
        ProductPage {
            details: web::base_url("details", &env),
            reviews: web::base_url("reviews", &env),
            ratings: web::base_url("ratings", &env),
            flood: env("FLOOD_FACTOR").and_then(|f| f.parse().ok()).unwrap_or(0),
            client: Client::from_env(),
            results: Mutex::new(BTreeMap::new()),
        }
    }

    fn count(&self, app: &'static str, status: u16) {
        if let Ok(mut r) = self.results.lock() {
            *r.entry((app, status)).or_default() += 1;
        }
    }

    async fn details(&self, id: &str, headers: &HeaderMap) -> (u16, Value) {
        let r = self.client.get(&format!("{}/details/{id}", self.details), headers, TIMEOUT).await;
        let out = outcome(&r, DETAILS_ERROR);
        self.count("details", out.0);
        out
    }

    /// Up to two attempts, retried on any non-200 or failure, without back-off (upstream's
    /// deliberate loop: with a 7 s ratings delay the page gives up after about 6 s).
    async fn reviews(&self, id: &str, headers: &HeaderMap) -> (u16, Value) {
        let url = format!("{}/reviews/{id}", self.reviews);
        let mut last = (500, json!({"error": REVIEWS_ERROR}));
        for _ in 0..REVIEWS_ATTEMPTS {
            let r = self.client.get(&url, headers, TIMEOUT).await;
            last = outcome(&r, REVIEWS_ERROR);
            self.count("reviews", last.0);
            if last.0 == 200 {
                break;
            }
        }
        last
    }

    async fn ratings(&self, id: &str, headers: &HeaderMap) -> (u16, Value) {
        let r = self.client.get(&format!("{}/ratings/{id}", self.ratings), headers, TIMEOUT).await;
        let out = outcome(&r, RATINGS_ERROR);
        self.count("ratings", out.0);
        out
    }

    pub async fn handle(&self, req: http::request::Parts, body: Bytes) -> Resp {
        let user = req.headers.get(header::COOKIE).and_then(|c| c.to_str().ok()).and_then(session::user);
        let headers = outgoing_headers(&req.headers, user.as_deref());
        let path = req.uri.path();
        match (&req.method, path) {
            (&Method::GET, "/" | "/index.html") => {
                web::text(StatusCode::OK, "text/html; charset=utf-8", page::landing())
            }
            (&Method::GET, "/health") => web::text(StatusCode::OK, "text/plain", "Product page is healthy"),
            (&Method::GET, "/productpage") => {
                for _ in 0..self.flood {
                    let (client, url, h) = (Client::from_env(), format!("{}/reviews/0", self.reviews), headers.clone());
                    tokio::spawn(async move {
                        let _ = client.get(&url, &h, TIMEOUT).await;
                    });
                }
                let id = PRODUCT_ID.to_string();
                let details = self.details(&id, &headers).await;
                let reviews = self.reviews(&id, &headers).await;
                let html =
                    page::product_page(user.as_deref(), &product(), (details.0, &details.1), (reviews.0, &reviews.1));
                web::text(StatusCode::OK, "text/html; charset=utf-8", html)
            }
            (&Method::POST, "/login") => {
                let mut fields = web::form(req.uri.query().unwrap_or(""));
                fields.extend(web::form(&String::from_utf8_lossy(&body)));
                let name =
                    fields.iter().rev().find(|(k, _)| k == "username").map(|(_, v)| v.clone()).unwrap_or_default();
                let mut r = redirect_back(&req.headers);
                let cookie = format!("{}={}; HttpOnly; Path=/", session::COOKIE, session::encode(&name));
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
                r
            }
            (&Method::GET, "/logout") => {
                let mut r = redirect_back(&req.headers);
                let expired =
                    format!("{}=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; HttpOnly; Path=/", session::COOKIE);
                if let Ok(v) = HeaderValue::from_str(&expired) {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
                r
            }
            (&Method::GET, "/api/v1/products") => web::json(StatusCode::OK, &json!([product()])),
            (&Method::GET, "/metrics") => web::text(StatusCode::OK, "text/plain; version=0.0.4", self.metrics()),
            (&Method::GET, "/static/bookinfo.css") => web::text(StatusCode::OK, "text/css", page::CSS),
            (&Method::GET, p) if p.starts_with("/api/v1/products/") => self.api(p, &headers).await,
            _ => web::not_found(),
        }
    }

    async fn api(&self, path: &str, headers: &HeaderMap) -> Resp {
        let rest = path.trim_start_matches("/api/v1/products/");
        let (status, body) = match rest.split('/').collect::<Vec<_>>().as_slice() {
            [id] => self.details(id, headers).await,
            [id, "reviews"] => self.reviews(id, headers).await,
            [id, "ratings"] => self.ratings(id, headers).await,
            _ => return web::not_found(),
        };
        web::json(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &body)
    }

    fn metrics(&self) -> String {
        let mut out = String::from(
            "# HELP request_result_total Response codes of upstream calls\n# TYPE request_result_total counter\n",
        );
        if let Ok(r) = self.results.lock() {
            for ((app, code), n) in r.iter() {
                out.push_str(&format!(
                    "request_result_total{{destination_app=\"{app}\",response_code=\"{code}\"}} {n}\n"
                ));
            }
        }
        out
    }
}

/// 302 to the `Referer` (the page the form was on), or to the product page.
fn redirect_back(headers: &HeaderMap) -> Resp {
    let to = headers.get(header::REFERER).cloned().unwrap_or(HeaderValue::from_static("/productpage"));
    let mut r = web::text(StatusCode::FOUND, "text/html", "");
    r.headers_mut().insert(header::LOCATION, to);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn sessions_round_trip_and_reject_tampering() {
        let value = session::encode("jason");
        assert_eq!(session::user(&format!("a=b; session={value}; c=d")).as_deref(), Some("jason"));
        let forged = value.replacen(&value[..2], "00", 1);
        assert_eq!(session::user(&format!("session={forged}")), None);
        assert_eq!(session::user("session=nope"), None);
        assert_eq!(session::user("other=1"), None);
    }

    #[test]
    fn outgoing_headers_propagate_the_list_and_add_end_user() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-request-id", "r"),
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "1"),
            ("traceparent", "00-x-y-01"),
            ("user-agent", "curl"),
            ("end-user", "mallory"),
            ("x-unrelated", "no"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = outgoing_headers(&h, Some("jason"));
        assert_eq!(out["end-user"], "jason", "end-user comes from the session, never from the request");
        assert_eq!(out["x-b3-traceid"], "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(out["x-b3-spanid"], "e457b5a2e4d86bd1");
        assert_eq!(out["x-b3-sampled"], "1");
        assert_eq!(out["x-request-id"], "r");
        assert_eq!(out["traceparent"], "00-x-y-01");
        assert!(out.get("x-unrelated").is_none());
        assert!(outgoing_headers(&h, None).get("end-user").is_none());
    }

    #[test]
    fn call_outcomes_as_productpage_reports_them() {
        let ok = outcome(&Ok((StatusCode::OK, Bytes::from_static(b"{\"a\":1}"))), DETAILS_ERROR);
        assert_eq!(ok, (200, json!({"a": 1})));
        let aborted = outcome(&Ok((StatusCode::from_u16(555).unwrap(), Bytes::new())), DETAILS_ERROR);
        assert_eq!(aborted, (555, json!({"error": DETAILS_ERROR})));
        assert_eq!(outcome(&Err("timeout".into()), REVIEWS_ERROR), (500, json!({"error": REVIEWS_ERROR})));
    }

    async fn call(pp: &ProductPage, req: http::Request<&'static str>) -> (u16, HeaderMap, String) {
        let (parts, body) = req.into_parts();
        let r = pp.handle(parts, Bytes::from(body)).await;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn login_sets_the_cookie_and_logout_clears_it() {
        let pp = ProductPage::from_env();
        let login = http::Request::post("/login")
            .header("referer", "http://x/productpage")
            .body("username=jason&passwd=x")
            .unwrap();
        let (status, h, _) = call(&pp, login).await;
        assert_eq!(status, 302);
        assert_eq!(h["location"], "http://x/productpage");
        let cookie = h["set-cookie"].to_str().unwrap().to_string();
        assert!(cookie.starts_with("session=") && cookie.contains("HttpOnly") && cookie.contains("Path=/"));
        let value = cookie.split(';').next().unwrap();
        assert_eq!(session::user(value).as_deref(), Some("jason"));
        let (status, h, _) = call(&pp, http::Request::get("/logout").body("").unwrap()).await;
        assert_eq!(status, 302);
        assert_eq!(h["location"], "/productpage");
        assert!(h["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    }

    #[tokio::test]
    async fn fixed_routes() {
        let pp = ProductPage::from_env();
        let (s, _, body) = call(&pp, http::Request::get("/api/v1/products").body("").unwrap()).await;
        assert_eq!(s, 200);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v[0]["id"], 0);
        assert_eq!(v[0]["title"], "The Comedy of Errors");
        assert!(v[0]["descriptionHtml"].as_str().unwrap().contains("Wikipedia Summary"));
        assert_eq!(call(&pp, http::Request::get("/health").body("").unwrap()).await.2, "Product page is healthy");
        assert_eq!(call(&pp, http::Request::get("/nope").body("").unwrap()).await.0, 404);
        assert!(call(&pp, http::Request::get("/").body("").unwrap()).await.2.contains("/productpage?u=normal"));
    }
}

//! details: the book's publication facts (BEHAVIOUR.md §2). v1 answers from fixed data; with
//! `ENABLE_EXTERNAL_BOOK_SERVICE=true` (v2) it asks the Google Books API, over plain HTTP when
//! `DO_NOT_ENCRYPT=true` so the mesh can originate TLS, as Istio's egress task does.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, StatusCode};
use serde_json::{Value, json};

use crate::web::{self, Client, Resp};

/// Headers details copies onto its external call (§2.4).
pub const FORWARDED: &[&str] = &[
    "x-request-id",
    "x-ot-span-context",
    "x-datadog-trace-id",
    "x-datadog-parent-id",
    "x-datadog-sampling-priority",
    "traceparent",
    "tracestate",
    "x-cloud-trace-context",
    "grpc-trace-bin",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "sw8",
    "end-user",
    "user-agent",
    "cookie",
    "authorization",
    "jwt",
];

pub struct Details {
    pub external: bool,
    pub encrypt: bool,
    pub client: Client,
}

impl Details {
    pub fn from_env() -> Details {
        Details {
            external: std::env::var("ENABLE_EXTERNAL_BOOK_SERVICE").is_ok_and(|v| v == "true"),
            encrypt: std::env::var("DO_NOT_ENCRYPT").map_or(true, |v| v != "true"),
            client: Client::from_env(),
        }
    }

    pub async fn handle(&self, req: http::request::Parts, _body: Bytes) -> Resp {
        let path = req.uri.path();
        if req.method != Method::GET {
            return web::not_found();
        }
        if path == "/health" {
            return web::json(StatusCode::OK, &json!({"status": "Details is healthy"}));
        }
        if path != "/details" && !path.starts_with("/details/") {
            return web::not_found();
        }
        let Some(id) = product_id(path) else {
            return web::json(StatusCode::BAD_REQUEST, &json!({"error": "please provide numeric product id"}));
        };
        if !self.external {
            return web::json(StatusCode::OK, &book(id));
        }
        match self.fetch_external(id, &req.headers).await {
            Ok(v) => web::json(StatusCode::OK, &v),
            Err(e) => web::json(StatusCode::BAD_REQUEST, &json!({"error": e})),
        }
    }

    async fn fetch_external(&self, id: i64, incoming: &HeaderMap) -> Result<Value, String> {
        if self.encrypt {
            return Err("HTTPS to the external book service is not supported here; set DO_NOT_ENCRYPT=true and let \
                        the mesh originate TLS"
                .into());
        }
        let mut headers = HeaderMap::new();
        for name in FORWARDED {
            if let Some(v) = incoming.get(*name) {
                headers.insert(HeaderName::from_static(name), v.clone());
            }
        }
        let url = "http://www.googleapis.com:80/books/v1/volumes?q=isbn:0486424618";
        let (status, body) = self.client.get(url, &headers, Duration::from_secs(5)).await?;
        if status != StatusCode::OK {
            return Err(format!("external book service answered {}", status.as_u16()));
        }
        let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let info = &v["items"][0]["volumeInfo"];
        let isbn = |kind: &str| {
            info["industryIdentifiers"]
                .as_array()
                .and_then(|ids| ids.iter().find(|i| i["type"] == kind))
                .map(|i| i["identifier"].clone())
                .unwrap_or(Value::Null)
        };
        Ok(json!({
            "id": id,
            "author": info["authors"][0],
            "year": info["publishedDate"],
            "type": if info["printType"] == "BOOK" { "paperback" } else { "unknown" },
            "pages": info["pageCount"],
            "publisher": info["publisher"],
            "language": if info["language"] == "en" { "English" } else { "unknown" },
            "ISBN-10": isbn("ISBN_10"),
            "ISBN-13": isbn("ISBN_13"),
        }))
    }
}

/// The last path segment as an integer (`Integer(...)` in the Ruby original).
pub fn product_id(path: &str) -> Option<i64> {
    path.rsplit('/').next()?.parse().ok()
}

/// v1's fixed book (§2.2).
pub fn book(id: i64) -> Value {
    json!({
        "id": id,
        "author": "William Shakespeare",
        "year": 1595,
        "type": "paperback",
        "pages": 200,
        "publisher": "PublisherA",
        "language": "English",
        "ISBN-10": "1234567890",
        "ISBN-13": "123-1234567890",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn details() -> Details {
        Details { external: false, encrypt: true, client: Client::from_env() }
    }

    async fn call(path: &str) -> (u16, Value) {
        let (parts, _) = http::Request::get(path).body(()).unwrap().into_parts();
        let r = details().handle(parts, Bytes::new()).await;
        let status = r.status().as_u16();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn details_json_and_status_codes() {
        let (s, v) = call("/details/0").await;
        assert_eq!(s, 200);
        assert_eq!(v["id"], 0);
        assert_eq!(v["author"], "William Shakespeare");
        assert_eq!(v["year"], 1595);
        assert_eq!(v["pages"], 200);
        assert_eq!(v["ISBN-10"], "1234567890");
        assert_eq!(v["ISBN-13"], "123-1234567890");
        assert_eq!(call("/details/7").await.1["id"], 7);
        assert_eq!(call("/details/abc").await, (400, json!({"error": "please provide numeric product id"})));
        assert_eq!(call("/details").await.0, 400);
        assert_eq!(call("/health").await, (200, json!({"status": "Details is healthy"})));
        assert_eq!(call("/other").await.0, 404);
    }
}

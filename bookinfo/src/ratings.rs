//! ratings: stars per reviewer (BEHAVIOUR.md §4). `SERVICE_VERSION` selects v1 (in memory,
//! accepts POSTed ratings), v2 (a database, which devmesh does not run: it answers the
//! database error), or the fault demos v-faulty, v-delayed, v-unavailable, v-unhealthy.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::web::{self, Resp};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
    Faulty,
    Delayed,
    Unavailable,
    Unhealthy,
}

impl Version {
    pub fn parse(s: &str) -> Version {
        match s {
            "v2" => Version::V2,
            "v-faulty" => Version::Faulty,
            "v-delayed" => Version::Delayed,
            "v-unavailable" => Version::Unavailable,
            "v-unhealthy" => Version::Unhealthy,
            _ => Version::V1,
        }
    }
}

pub struct Ratings {
    pub version: Version,
    started: Instant,
    stored: Mutex<HashMap<i64, Value>>,
}

/// JavaScript's `parseInt`: optional sign, then leading digits; NaN when there are none.
pub fn parse_int(s: &str) -> Option<i64> {
    let s = s.trim_start();
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'-') => (-1, &s[1..]),
        Some(b'+') => (1, &s[1..]),
        _ => (1, s),
    };
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse::<i64>().ok().map(|v| sign * v)
}

impl Ratings {
    pub fn new(version: Version) -> Ratings {
        Ratings { version, started: Instant::now(), stored: Mutex::new(HashMap::new()) }
    }

    /// The flipping states of v-unavailable (every 60s) and v-unhealthy (every 15 min).
    fn down(&self) -> bool {
        let elapsed = self.started.elapsed();
        match self.version {
            Version::Unavailable => (elapsed.as_secs() / 60) % 2 == 1,
            Version::Unhealthy => (elapsed.as_secs() / 900) % 2 == 1,
            _ => false,
        }
    }

    pub fn ratings_for(&self, id: i64) -> Value {
        let stored = self.stored.lock().ok().and_then(|s| s.get(&id).cloned());
        json!({"id": id, "ratings": stored.unwrap_or_else(|| json!({"Reviewer1": 5, "Reviewer2": 4}))})
    }

    pub async fn handle(&self, req: http::request::Parts, body: Bytes) -> Resp {
        let path = req.uri.path();
        if path == "/health" {
            if self.version == Version::Unhealthy && self.down() {
                return web::json(StatusCode::INTERNAL_SERVER_ERROR, &json!({"status": "Ratings is not healthy"}));
            }
            return web::json(StatusCode::OK, &json!({"status": "Ratings is healthy"}));
        }
        if !path.starts_with("/ratings/") {
            return web::not_found();
        }
        let Some(id) = path.rsplit('/').next().and_then(parse_int) else {
            return web::json(StatusCode::BAD_REQUEST, &json!({"error": "please provide numeric product ID"}));
        };
        match req.method {
            Method::POST => self.post(id, &body),
            Method::GET => self.get(id).await,
            _ => web::not_found(),
        }
    }

    fn post(&self, id: i64, body: &[u8]) -> Resp {
        let Ok(ratings) = serde_json::from_slice::<Value>(body) else {
            return web::json(StatusCode::BAD_REQUEST, &json!({"error": "please provide valid ratings JSON"}));
        };
        if self.version == Version::V2 {
            return web::json(
                StatusCode::NOT_IMPLEMENTED,
                &json!({"error": "Post not implemented for database backed ratings"}),
            );
        }
        if let Ok(mut s) = self.stored.lock() {
            s.insert(id, ratings.clone());
        }
        web::json(StatusCode::OK, &json!({"id": id, "ratings": ratings}))
    }

    async fn get(&self, id: i64) -> Resp {
        let unavailable = || web::json(StatusCode::SERVICE_UNAVAILABLE, &json!({"error": "Service unavailable"}));
        match self.version {
            Version::V2 => {
                web::json(StatusCode::INTERNAL_SERVER_ERROR, &json!({"error": "could not connect to ratings database"}))
            }
            Version::Faulty if fastrand::bool() => unavailable(),
            Version::Unavailable | Version::Unhealthy if self.down() => unavailable(),
            Version::Delayed if fastrand::bool() => {
                tokio::time::sleep(Duration::from_secs(7)).await;
                web::json(StatusCode::OK, &self.ratings_for(id))
            }
            _ => web::json(StatusCode::OK, &self.ratings_for(id)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn call(r: &Ratings, method: Method, path: &str, body: &str) -> (u16, Value) {
        let (parts, _) = http::Request::builder().method(method).uri(path).body(()).unwrap().into_parts();
        let resp = r.handle(parts, Bytes::from(body.to_string())).await;
        let status = resp.status().as_u16();
        let b = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    #[test]
    fn parse_int_is_javascripts() {
        assert_eq!(parse_int("0"), Some(0));
        assert_eq!(parse_int("12abc"), Some(12));
        assert_eq!(parse_int("-3"), Some(-3));
        assert_eq!(parse_int("abc"), None);
        assert_eq!(parse_int(""), None);
    }

    #[tokio::test]
    async fn v1_serves_and_stores_ratings() {
        let r = Ratings::new(Version::V1);
        assert_eq!(
            call(&r, Method::GET, "/ratings/0", "").await,
            (200, json!({"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}))
        );
        assert_eq!(
            call(&r, Method::GET, "/ratings/abc", "").await,
            (400, json!({"error": "please provide numeric product ID"}))
        );
        assert_eq!(call(&r, Method::GET, "/ratings/", "").await.0, 400);
        assert_eq!(
            call(&r, Method::POST, "/ratings/1", "nope").await,
            (400, json!({"error": "please provide valid ratings JSON"}))
        );
        let posted = json!({"Reviewer1": 1, "Reviewer2": 2});
        assert_eq!(
            call(&r, Method::POST, "/ratings/1", &posted.to_string()).await,
            (200, json!({"id": 1, "ratings": posted}))
        );
        assert_eq!(call(&r, Method::GET, "/ratings/1", "").await.1["ratings"], posted);
        assert_eq!(call(&r, Method::GET, "/health", "").await, (200, json!({"status": "Ratings is healthy"})));
        assert_eq!(call(&r, Method::GET, "/x", "").await.0, 404);
    }

    #[tokio::test]
    async fn v2_and_faulty_versions() {
        let v2 = Ratings::new(Version::V2);
        assert_eq!(call(&v2, Method::GET, "/ratings/0", "").await.0, 500);
        assert_eq!(call(&v2, Method::POST, "/ratings/0", "{}").await.0, 501);
        let faulty = Ratings::new(Version::Faulty);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..60 {
            seen.insert(call(&faulty, Method::GET, "/ratings/0", "").await.0);
        }
        assert_eq!(seen, [200, 503].into_iter().collect(), "about half of v-faulty's answers are 503");
    }
}

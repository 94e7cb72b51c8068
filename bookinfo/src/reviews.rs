//! reviews: two fixed reviews, and in v2/v3 their stars from ratings (BEHAVIOUR.md §3).
//! One binary for the three versions: `ENABLE_RATINGS` and `STAR_COLOR` decide, and the star
//! colour also sets the ratings timeout (black 10s, else 2.5s), as upstream does.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde_json::{Value, json};

use crate::web::{self, CallResult, Client, Resp};

/// Headers reviews forwards to ratings (§3.5).
pub const FORWARDED: &[&str] = crate::details::FORWARDED;

pub const REVIEWS: [(&str, &str); 2] = [
    ("Reviewer1", "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!"),
    (
        "Reviewer2",
        "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare.",
    ),
];

pub struct Reviews {
    pub enable_ratings: bool,
    pub star_color: String,
    pub ratings_url: String,
    pub podname: String,
    pub clustername: String,
    pub client: Client,
}

impl Reviews {
    /// `version` gives the defaults of the v1/v2/v3 images; environment variables win.
    pub fn from_env(version: &str) -> Reviews {
        let (enable, color) = match version {
            "v2" => (true, "black"),
            "v3" => (true, "red"),
            _ => (false, "black"),
        };
        let env = web::env_var;
        Reviews {
            // Java's Boolean.valueOf: only a case-insensitive "true" is true.
            enable_ratings: env("ENABLE_RATINGS").map_or(enable, |v| v.eq_ignore_ascii_case("true")),
            star_color: env("STAR_COLOR").unwrap_or_else(|| color.to_string()),
            ratings_url: web::base_url("ratings", &env),
            podname: env("HOSTNAME").unwrap_or_else(|| format!("reviews-{version}")),
            clustername: env("CLUSTER_NAME").unwrap_or_else(|| "null".into()),
            client: Client::from_env(),
        }
    }

    pub fn ratings_timeout(&self) -> Duration {
        if self.star_color == "black" { Duration::from_millis(10_000) } else { Duration::from_millis(2_500) }
    }

    pub async fn handle(&self, req: http::request::Parts, _body: Bytes) -> Resp {
        let path = req.uri.path();
        if req.method != Method::GET {
            return web::not_found();
        }
        if path == "/health" {
            return web::json(StatusCode::OK, &json!({"status": "Reviews is healthy"}));
        }
        let Some(id) = path.strip_prefix("/reviews/").and_then(|id| id.parse::<i32>().ok()) else {
            return web::not_found();
        };
        let ratings = if self.enable_ratings {
            let mut headers = forwarded(&req.headers);
            headers.insert(http::header::ACCEPT, HeaderValue::from_static("application/json"));
            let url = format!("{}/ratings/{id}", self.ratings_url);
            Some(self.client.get(&url, &headers, self.ratings_timeout()).await)
        } else {
            None
        };
        web::json(StatusCode::OK, &self.body(id, ratings))
    }

    /// The response for product `id`; `ratings` is the ratings call when ratings are enabled.
    pub fn body(&self, id: i32, ratings: Option<CallResult>) -> Value {
        let stars = ratings.as_ref().map(|r| match r {
            Ok((StatusCode::OK, body)) => {
                serde_json::from_slice::<Value>(body).unwrap_or(Value::Null)["ratings"].clone()
            }
            _ => Value::Null,
        });
        let reviews: Vec<Value> = REVIEWS
            .iter()
            .map(|(reviewer, text)| {
                let mut r = json!({"reviewer": reviewer, "text": text});
                if let Some(stars) = &stars {
                    r["rating"] = match stars[*reviewer].as_i64() {
                        Some(n) => json!({"stars": n, "color": self.star_color}),
                        None => json!({"error": "Ratings service is currently unavailable"}),
                    };
                }
                r
            })
            .collect();
        json!({
            "id": id.to_string(),
            "podname": self.podname,
            "clustername": self.clustername,
            "reviews": reviews,
        })
    }
}

fn forwarded(incoming: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in FORWARDED {
        if let Some(v) = incoming.get(*name) {
            out.insert(HeaderName::from_static(name), v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reviews(version: &str) -> Reviews {
        let (enable, color) = match version {
            "v2" => (true, "black"),
            "v3" => (true, "red"),
            _ => (false, "black"),
        };
        Reviews {
            enable_ratings: enable,
            star_color: color.into(),
            ratings_url: "http://ratings:9080".into(),
            podname: format!("reviews-{version}"),
            clustername: "null".into(),
            client: Client::from_env(),
        }
    }

    #[test]
    fn v1_has_no_ratings() {
        let v = reviews("v1").body(0, None);
        assert_eq!(v["id"], "0", "the id is a string in reviews");
        assert_eq!(v["podname"], "reviews-v1");
        assert_eq!(v["clustername"], "null");
        assert_eq!(v["reviews"].as_array().unwrap().len(), 2);
        assert_eq!(v["reviews"][0]["reviewer"], "Reviewer1");
        assert!(v["reviews"][0].get("rating").is_none());
    }

    #[test]
    fn v2_black_and_v3_red_stars_and_the_ratings_error() {
        let ok = Some(Ok((StatusCode::OK, Bytes::from(r#"{"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}"#))));
        let v2 = reviews("v2").body(0, ok.clone());
        assert_eq!(v2["reviews"][0]["rating"], json!({"stars": 5, "color": "black"}));
        assert_eq!(v2["reviews"][1]["rating"], json!({"stars": 4, "color": "black"}));
        assert_eq!(reviews("v3").body(0, ok)["reviews"][0]["rating"]["color"], "red");
        let failed = reviews("v3").body(0, Some(Err("timed out".into())));
        assert_eq!(failed["reviews"][0]["rating"], json!({"error": "Ratings service is currently unavailable"}));
        let bad_status = reviews("v2").body(0, Some(Ok((StatusCode::INTERNAL_SERVER_ERROR, Bytes::new()))));
        assert_eq!(bad_status["reviews"][1]["rating"]["error"], "Ratings service is currently unavailable");
    }

    #[test]
    fn the_star_colour_sets_the_ratings_timeout() {
        assert_eq!(reviews("v2").ratings_timeout(), Duration::from_secs(10));
        assert_eq!(reviews("v3").ratings_timeout(), Duration::from_millis(2500));
    }

    #[test]
    fn only_the_propagation_list_is_forwarded() {
        let mut h = HeaderMap::new();
        for (k, v) in
            [("end-user", "jason"), ("x-request-id", "r1"), ("x-b3-traceid", "t"), ("x-other", "no"), ("cookie", "c=1")]
        {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let f = forwarded(&h);
        assert_eq!(f["end-user"], "jason");
        assert_eq!(f["x-request-id"], "r1");
        assert_eq!(f["x-b3-traceid"], "t");
        assert_eq!(f["cookie"], "c=1");
        assert!(f.get("x-other").is_none());
        assert_eq!(FORWARDED.len(), 20);
    }
}

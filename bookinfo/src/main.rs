//! Istio's bookinfo sample as one binary:
//!
//!   bookinfo productpage [--port N]
//!   bookinfo details [--port N]
//!   bookinfo reviews --version v1|v2|v3 [--port N]
//!   bookinfo ratings [--port N]          (SERVICE_VERSION=v1|v2|v-faulty|...)
//!
//! Each listens on 127.0.0.1:$PORT (default 9080) and behaves as Istio's service does; see
//! `../shared/istio-reference/bookinfo/BEHAVIOUR.md`.

mod details;
mod page;
mod productpage;
mod ratings;
mod reviews;
mod web;

use std::sync::Arc;

fn usage() -> ! {
    eprintln!("usage: bookinfo productpage|details|reviews [--version v1|v2|v3]|ratings [--port N]");
    std::process::exit(2);
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(service) = args.first().cloned() else { usage() };
    let rest = &args[1..];
    let port = web::port(rest);
    match service.as_str() {
        "productpage" => {
            let s = Arc::new(productpage::ProductPage::from_env());
            web::serve("productpage", port, move |req, body| {
                let s = s.clone();
                async move { s.handle(req, body).await }
            })
            .await
        }
        "details" => {
            let s = Arc::new(details::Details::from_env());
            web::serve("details", port, move |req, body| {
                let s = s.clone();
                async move { s.handle(req, body).await }
            })
            .await
        }
        "reviews" => {
            let version = rest
                .iter()
                .position(|a| a == "--version")
                .and_then(|i| rest.get(i + 1))
                .cloned()
                .or_else(|| std::env::var("SERVICE_VERSION").ok())
                .unwrap_or_else(|| "v1".into());
            if !matches!(version.as_str(), "v1" | "v2" | "v3") {
                usage();
            }
            let s = Arc::new(reviews::Reviews::from_env(&version));
            web::serve("reviews", port, move |req, body| {
                let s = s.clone();
                async move { s.handle(req, body).await }
            })
            .await
        }
        "ratings" => {
            let version = ratings::Version::parse(&std::env::var("SERVICE_VERSION").unwrap_or_default());
            let s = Arc::new(ratings::Ratings::new(version));
            web::serve("ratings", port, move |req, body| {
                let s = s.clone();
                async move { s.handle(req, body).await }
            })
            .await
        }
        _ => usage(),
    }
}

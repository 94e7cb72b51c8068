//! A small client of the admin API, for the CLI verbs that talk to a running mesh.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

pub struct Client {
    addr: String,
    /// The run's bearer token: given (`--admin-token`, `DEVMESH_ADMIN_TOKEN`) or found in this
    /// user's runtime file for the address.
    token: Option<String>,
}

pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

impl Client {
    pub fn new(addr: &str, token: Option<&str>) -> Client {
        let token = token.map(str::to_string).filter(|t| !t.is_empty()).or_else(|| super::token::find(addr));
        Client { addr: addr.to_string(), token }
    }

    pub async fn request(&self, method: http::Method, path: &str, body: Bytes) -> Result<Reply> {
        self.send(method, path, body, None).await
    }

    pub async fn post_json(&self, path: &str, body: Bytes) -> Result<Reply> {
        self.send(http::Method::POST, path, body, Some("application/json")).await
    }

    async fn send(&self, method: http::Method, path: &str, body: Bytes, content_type: Option<&str>) -> Result<Reply> {
        if body.len() > super::server::MAX_BODY {
            bail!(
                "the request is {:.1} MiB, over the admin API's limit of {} MiB: apply fewer files at once",
                body.len() as f64 / (1024.0 * 1024.0),
                super::server::MAX_BODY >> 20
            );
        }
        let tcp = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(&self.addr))
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))
            .and_then(|r| r.map_err(Into::into))
            .with_context(|| format!("no devmesh admin API at {} (is `devmesh up` running? see --admin)", self.addr))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let mut req = http::Request::builder().method(method).uri(path).header(http::header::HOST, &self.addr);
        if let Some(ct) = content_type {
            req = req.header(http::header::CONTENT_TYPE, ct);
        }
        if let Some(t) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(Full::new(body))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        if status == 401 {
            let why = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["errors"][0].as_str().map(str::to_string))
                .unwrap_or_default();
            bail!(
                "the admin API at {} refused the request: {why}{}",
                self.addr,
                if self.token.is_none() {
                    " (no token found for this address: was the mesh started by another user, or with another --admin?)"
                } else {
                    ""
                }
            );
        }
        Ok(Reply { status, body })
    }

    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        let r = self.request(http::Method::GET, path, Bytes::new()).await?;
        if r.status != 200 {
            bail!("{path}: {} {}", r.status, String::from_utf8_lossy(&r.body).trim());
        }
        Ok(serde_json::from_slice(&r.body)?)
    }
}

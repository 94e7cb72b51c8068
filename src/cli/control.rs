//! Process control of a running mesh through its admin API: `devmesh down`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;

use super::AdminArgs;

pub async fn down(args: &AdminArgs) -> Result<ExitCode> {
    let admin = args.admin.as_str();
    let client = args.client();
    let r = client.request(http::Method::POST, "/shutdown", Bytes::new()).await?;
    if r.status != 200 {
        bail!("shutdown refused: {} {}", r.status, String::from_utf8_lossy(&r.body).trim());
    }
    eprintln!("devmesh: stopping the mesh at {admin} ...");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(admin).await.is_err() {
            eprintln!("devmesh: stopped");
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the mesh at {admin} is still running after 30s")
}

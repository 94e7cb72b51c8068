//! Readiness probes: TCP connect (default), HTTP GET (2xx/3xx is ready) or a command (exit 0).
//! Until first ready, probed every 10ms for two seconds, then every 100ms (so traffic flows as
//! soon as the app listens); after that every second. Three failures in a row take an instance
//! out of its endpoints.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::config::mesh::Readiness;

pub const TIMEOUT: Duration = Duration::from_secs(1);
pub const STARTUP_PERIOD: Duration = Duration::from_millis(10);
pub const STARTUP_WINDOW: Duration = Duration::from_secs(2);
pub const SLOW_START_PERIOD: Duration = Duration::from_millis(100);
pub const PERIOD: Duration = Duration::from_secs(1);
pub const FAILURE_THRESHOLD: u32 = 3;

/// One probe; `Err` says why it failed.
pub async fn check(probe: &Readiness, app: SocketAddr, cwd: &Path, env: &[(String, String)]) -> Result<(), String> {
    match tokio::time::timeout(TIMEOUT, run(probe, app, cwd, env)).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {}ms", TIMEOUT.as_millis())),
    }
}

async fn run(probe: &Readiness, app: SocketAddr, cwd: &Path, env: &[(String, String)]) -> Result<(), String> {
    match probe {
        Readiness::Tcp => tokio::net::TcpStream::connect(app).await.map(|_| ()).map_err(|e| format!("tcp {app}: {e}")),
        Readiness::Http(path) => {
            let tcp = tokio::net::TcpStream::connect(app).await.map_err(|e| format!("http {app}: {e}"))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| format!("http {app}: {e}"))?;
            let conn = tokio::spawn(conn);
            let req = http::Request::get(path.as_str())
                .header(http::header::HOST, app.to_string())
                .header(http::header::USER_AGENT, "devmesh-probe")
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| format!("http {path}: {e}"))?;
            conn.abort();
            let status = resp.status();
            if status.is_success() || status.is_redirection() {
                Ok(())
            } else {
                Err(format!("http {path}: status {}", status.as_u16()))
            }
        }
        Readiness::Exec(argv) => {
            let Some((program, args)) = argv.split_first() else {
                return Err("empty exec probe".into());
            };
            let status = tokio::process::Command::new(super::process::resolve_program(program, cwd))
                .args(args)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .current_dir(cwd)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .map_err(|e| format!("exec {program}: {e}"))?;
            if status.success() { Ok(()) } else { Err(format!("exec {program}: {status}")) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn http_server(status: &'static str) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn tcp_http_and_exec_probes() {
        let ok = http_server("200 OK").await;
        let bad = http_server("503 Service Unavailable").await;
        let cwd = std::env::temp_dir();
        assert!(check(&Readiness::Tcp, ok, &cwd, &[]).await.is_ok());
        assert!(check(&Readiness::Http("/health".into()), ok, &cwd, &[]).await.is_ok());
        let err = check(&Readiness::Http("/health".into()), bad, &cwd, &[]).await.unwrap_err();
        assert!(err.contains("503"), "{err}");
        let closed = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        assert!(check(&Readiness::Tcp, closed, &cwd, &[]).await.is_err());
        assert!(check(&Readiness::Exec(vec!["true".into()]), closed, &cwd, &[]).await.is_ok());
        assert!(check(&Readiness::Exec(vec!["false".into()]), closed, &cwd, &[]).await.is_err());
        let env = vec![("PROBE_X".to_string(), "1".to_string())];
        let argv = vec!["sh".into(), "-c".into(), "test \"$PROBE_X\" = 1".into()];
        assert!(check(&Readiness::Exec(argv), closed, &cwd, &env).await.is_ok());
    }
}

//! `devmesh ca export [PATH] [--state-dir DIR] [--admin ADDR]`: the mesh root certificate,
//! PEM, on stdout: the one in the state dir (given, or PATH's), else the running mesh's (from
//! its admin API). Never creates a CA: only `devmesh up` does.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};

use super::AdminArgs;
use crate::identity::ca;

pub async fn export(path: &Path, state_dir: Option<&Path>, admin: &AdminArgs) -> Result<ExitCode> {
    let dir = match state_dir {
        Some(s) => s.to_path_buf(),
        None => {
            let mesh_file = crate::config::mesh::locate(path);
            let abs = crate::config::source::resolve(&std::env::current_dir()?, &mesh_file);
            abs.parent().map(|d| d.join(".devmesh")).unwrap_or_else(|| ".devmesh".into())
        }
    };
    if let Some(pem) = ca::read_root(&ca::dir(&dir)) {
        print!("{pem}");
        return Ok(ExitCode::SUCCESS);
    }
    if state_dir.is_some() {
        bail!("no CA in {}: `devmesh up` creates it there", dir.display());
    }
    let running = admin.client().request(http::Method::GET, "/ca", bytes::Bytes::new()).await;
    match running {
        Ok(r) if r.status == 200 => {
            print!("{}", String::from_utf8_lossy(&r.body));
            Ok(ExitCode::SUCCESS)
        }
        _ => bail!(
            "no CA in {} and no mesh running at {}: start one with `devmesh up` (it creates the CA), \
             or give --state-dir or --admin",
            dir.display(),
            admin.admin
        ),
    }
}

//! `devmesh ca export [PATH] [--state-dir DIR]`: the mesh root certificate, PEM, on stdout.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use crate::identity::ca::{self, Ca};

pub fn export(path: &Path, state_dir: Option<&Path>) -> Result<ExitCode> {
    let state_dir = match state_dir {
        Some(s) => s.to_path_buf(),
        None => {
            let mesh_file = crate::config::mesh::locate(path);
            let abs = crate::config::source::resolve(&std::env::current_dir()?, &mesh_file);
            abs.parent().map(|d| d.join(".devmesh")).unwrap_or_else(|| ".devmesh".into())
        }
    };
    let ca = Ca::load_or_create(&ca::dir(&state_dir))?;
    print!("{}", ca.root_pem());
    Ok(ExitCode::SUCCESS)
}

//! `devmesh validate [PATH...]`: mesh files (with the Istio YAML they list) and Istio YAML,
//! checked offline; `file:line:col: error|warning: message`, exit 1 on any error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use crate::app::{report, topology};
use crate::config::diag::Diagnostics;
use crate::config::mesh::{self, Mesh};
use crate::config::{load, source, yaml};
use crate::model::compile::compile;

/// Is `path` a mesh file (as opposed to Istio YAML)?
fn is_mesh_file(path: &Path) -> bool {
    if matches!(path.file_name().and_then(|n| n.to_str()), Some("devmesh.yaml" | "devmesh.yml")) {
        return true;
    }
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let (docs, _) = yaml::parse_stream(&text);
    docs.len() == 1 && docs[0].get("apiVersion").is_none() && docs[0].get("services").is_some()
}

pub fn run(paths: &[PathBuf]) -> ExitCode {
    let mut diags = Diagnostics::new();
    let mut summary = Vec::new();
    let mut loose: Vec<PathBuf> = Vec::new();
    for p in paths {
        let mesh_path = mesh::locate(p);
        if (p.is_dir() && mesh_path.exists()) || (p.is_file() && is_mesh_file(p)) {
            if let Some(m) = mesh::load(&mesh_path, &mut diags) {
                summary.push(check_mesh(&m, &mut diags));
            }
        } else if p.exists() {
            loose.push(p.clone());
        } else {
            diags.error(&source::display_name(p), Default::default(), "no such file or directory");
        }
    }
    if !loose.is_empty() {
        let resources = load::resources(&loose, "default", &mut diags);
        // What `apply` would warn about that needs no mesh: fields not honoured yet, at
        // every level they can stand (hosts and subsets need the mesh file to be checked).
        for r in &resources {
            crate::model::support::unsupported(r, &mut diags);
        }
        summary.push(format!("{} Istio resources", resources.len()));
    }
    let errors = diags.iter().filter(|d| d.severity == crate::config::diag::Severity::Error).count();
    let warnings = diags.len() - errors;
    let failed = report(diags);
    if failed {
        eprintln!("validation failed: {errors} error(s), {warnings} warning(s)");
        ExitCode::from(1)
    } else {
        eprintln!("ok: {} ({warnings} warning(s))", summary.join(", "));
        ExitCode::SUCCESS
    }
}

fn check_mesh(m: &Mesh, diags: &mut Diagnostics) -> String {
    let resources = load::resources(&m.config, &m.namespace, diags);
    let count = resources.len();
    if !diags.has_errors()
        && let Ok(t) = topology::plan(m)
    {
        let compiled = compile(Arc::new(t), Arc::new(resources), 0, m.outbound_mode);
        diags.extend(compiled.warnings);
    }
    let workloads: usize = m.services.iter().map(|s| s.workloads.len()).sum();
    format!(
        "{} ({} services, {workloads} workloads, {count} Istio resources)",
        source::display_name(&m.file),
        m.services.len()
    )
}

//! Loading Istio YAML from files, folders and text: read, parse, check every resource, report
//! duplicates. One place, used by `up`, `validate`, apply and reload.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::diag::{Diagnostics, Pos};
use super::istio::{self, Resource, ResourceKey};
use super::source;

/// The YAML files `paths` (files or folders) stand for, in order.
pub fn files(paths: &[PathBuf], diags: &mut Diagnostics) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for path in paths {
        match source::yaml_files(path) {
            Ok(f) => out.extend(f),
            Err(e) => diags.error(&source::display_name(path), Pos::default(), format!("cannot read folder: {e}")),
        }
    }
    out
}

/// The checked resources of one file.
pub fn file(path: &Path, default_namespace: &str, diags: &mut Diagnostics) -> Vec<Resource> {
    let Some(docs) = source::read_documents(path, diags) else {
        return Vec::new();
    };
    checked(istio::read_resources(&docs, default_namespace, diags), diags)
}

/// The checked resources of YAML text named `name` (for messages).
pub fn text(name: Arc<str>, text: &str, default_namespace: &str, diags: &mut Diagnostics) -> Vec<Resource> {
    let docs = source::parse_documents(name, text, diags);
    checked(istio::read_resources(&docs, default_namespace, diags), diags)
}

fn checked(resources: Vec<Resource>, diags: &mut Diagnostics) -> Vec<Resource> {
    for r in &resources {
        istio::validate::validate(r, diags);
    }
    resources
}

/// Keeps the last of resources with the same key, warning about the others.
pub fn dedupe(resources: Vec<Resource>, diags: &mut Diagnostics) -> Vec<Resource> {
    let mut out: Vec<Resource> = Vec::new();
    let mut seen: HashMap<ResourceKey, (Arc<str>, Pos)> = HashMap::new();
    for r in resources {
        let key = r.key();
        if let Some((f, p)) = seen.get(&key) {
            diags.warning(
                &r.origin.file,
                r.origin.pos,
                format!(
                    "{key} in namespace {} is also defined at {f}:{}:{}; this one wins",
                    key.namespace, p.line, p.col
                ),
            );
            out.retain(|o| o.key() != key);
        }
        seen.insert(key, (r.origin.file.clone(), r.origin.pos));
        out.push(r);
    }
    out
}

/// Reads every `*.yaml`/`*.yml` of `paths` (files or folders) in order.
pub fn resources(paths: &[PathBuf], default_namespace: &str, diags: &mut Diagnostics) -> Vec<Resource> {
    let mut all = Vec::new();
    for f in files(paths, diags) {
        all.extend(file(&f, default_namespace, diags));
    }
    dedupe(all, diags)
}

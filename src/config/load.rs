//! Loading Istio YAML from files and folders: read, parse, check every resource, report
//! duplicates. One place, used by `up`, `validate` and (later) apply and reload.

use std::collections::HashMap;
use std::path::PathBuf;

use super::diag::{Diagnostics, Pos};
use super::istio::{self, Resource, ResourceKey};
use super::source;

/// Reads every `*.yaml`/`*.yml` of `paths` (files or folders) in order.
pub fn resources(paths: &[PathBuf], default_namespace: &str, diags: &mut Diagnostics) -> Vec<Resource> {
    let mut out: Vec<Resource> = Vec::new();
    let mut seen: HashMap<ResourceKey, (std::sync::Arc<str>, Pos)> = HashMap::new();
    for path in paths {
        let files = match source::yaml_files(path) {
            Ok(f) => f,
            Err(e) => {
                diags.error(&source::display_name(path), Pos::default(), format!("cannot read folder: {e}"));
                continue;
            }
        };
        for file in files {
            let Some(docs) = source::read_documents(&file, diags) else {
                continue;
            };
            for r in istio::read_resources(&docs, default_namespace, diags) {
                istio::validate::validate(&r, diags);
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
        }
    }
    out
}

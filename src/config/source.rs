//! Source files: reading, display names relative to the working directory, YAML documents.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::diag::{Diagnostics, Pos};
use super::yaml::{self, Node};

/// A file as the user names it in messages (relative to the working directory when inside it).
pub fn display_name(path: &Path) -> Arc<str> {
    let shown = std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(&cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf());
    Arc::from(shown.to_string_lossy().as_ref())
}

/// Makes `path` absolute against `base` (no symlink resolution, `..` kept lexically tidy).
pub fn resolve(base: &Path, path: &Path) -> PathBuf {
    let joined = if path.is_absolute() { path.to_path_buf() } else { base.join(path) };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// The YAML documents of one source, parsed; syntax errors land in `diags`.
pub struct Documents {
    pub name: Arc<str>,
    pub docs: Vec<Node>,
}

pub fn parse_documents(name: Arc<str>, text: &str, diags: &mut Diagnostics) -> Documents {
    let (docs, err) = yaml::parse_stream(text);
    if let Some(e) = err {
        diags.error(&name, e.pos, format!("invalid YAML: {}", e.message));
    }
    Documents { name, docs }
}

/// Reads and parses a file; a read failure becomes a diagnostic against the file itself.
pub fn read_documents(path: &Path, diags: &mut Diagnostics) -> Option<Documents> {
    let name = display_name(path);
    if let Ok(meta) = std::fs::metadata(path)
        && meta.len() > yaml::MAX_INPUT_BYTES as u64
    {
        let msg = format!(
            "the file is {:.1} MiB, over devmesh's limit of {} MiB for YAML",
            meta.len() as f64 / (1024.0 * 1024.0),
            yaml::MAX_INPUT_BYTES >> 20
        );
        diags.error(&name, Pos::new(1, 1), msg);
        return None;
    }
    match std::fs::read_to_string(path) {
        Ok(text) => Some(parse_documents(name, &text, diags)),
        Err(e) => {
            diags.error(&name, Pos::default(), format!("cannot read file: {e}"));
            None
        }
    }
}

/// The `*.yaml` / `*.yml` files of a folder (sorted, not recursive), or the path itself.
pub fn yaml_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_is_lexical() {
        assert_eq!(resolve(Path::new("/a/b"), Path::new("../c/./d.yaml")), PathBuf::from("/a/c/d.yaml"));
        assert_eq!(resolve(Path::new("/a/b"), Path::new("/x")), PathBuf::from("/x"));
    }
}

//! Watching the mesh file's `config:` files and folders: a saved edit (editors save through a
//! temporary file and a rename, so the folders are watched, not the files), a new or removed
//! YAML file in a listed folder, reloads the configuration within a second. Events are
//! debounced; a burst of saves makes one reload. Only changes count: opening or reading a file
//! (devmesh's own reload, a `cat`) is not one, and a reload runs only when the files' contents
//! differ from the last ones read, so one save gives one reload (or one rejection).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, new_debouncer};
use tokio_util::sync::CancellationToken;

use super::ControlPlane;

const DEBOUNCE: Duration = Duration::from_millis(100);

fn is_yaml(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

/// What to watch for `config` entries: (folder, the listed file in it or `None` for the whole
/// folder).
fn watch_list(config: &[PathBuf]) -> Vec<(PathBuf, Option<PathBuf>)> {
    config
        .iter()
        .map(|p| {
            if p.is_dir() {
                (p.clone(), None)
            } else {
                (p.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".")), Some(p.clone()))
            }
        })
        .collect()
}

/// Whether a changed path is one of the config files.
fn relevant(list: &[(PathBuf, Option<PathBuf>)], changed: &Path) -> bool {
    list.iter().any(|(dir, file)| match file {
        Some(f) => f == changed,
        None => changed.parent() == Some(dir.as_path()) && is_yaml(changed),
    })
}

/// Whether an event can change a file's contents: creation, modification, removal, rename,
/// and the close of a file opened for writing; not opens, reads or closes after reading.
fn changes(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(notify::event::ModifyKind::Metadata(_)) => false,
        _ => true,
    }
}

/// A fingerprint of the config files' names and contents (what a reload would read).
fn fingerprint(config: &[PathBuf]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut files: Vec<PathBuf> = Vec::new();
    for p in config {
        match crate::config::source::yaml_files(p) {
            Ok(f) => files.extend(f),
            Err(_) => p.hash(&mut h),
        }
    }
    for f in files {
        f.hash(&mut h);
        std::fs::read(&f).ok().hash(&mut h);
    }
    h.finish()
}

/// Starts watching; reloads run on the blocking pool and report through the control plane's
/// events. Stops when `stop` is cancelled.
pub fn spawn(cp: Arc<ControlPlane>, stop: CancellationToken) -> notify::Result<()> {
    let list = watch_list(cp.config_paths());
    // The mesh file too: its `meshConfig` applies live, the rest is said to need a restart.
    let mesh_file = cp.mesh_file().to_path_buf();
    let mesh_entry = (mesh_file.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".")), None);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let filter = list.clone();
    let watched_mesh = mesh_file.clone();
    let mut debouncer = new_debouncer(DEBOUNCE, None, move |res: DebounceEventResult| {
        if let Ok(events) = res
            && events
                .iter()
                .any(|e| changes(&e.kind) && e.paths.iter().any(|p| relevant(&filter, p) || *p == watched_mesh))
        {
            let _ = tx.send(());
        }
    })?;
    let mut dirs: Vec<&PathBuf> = list.iter().chain(std::iter::once(&mesh_entry)).map(|(d, _)| d).collect();
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        debouncer.watch(d, RecursiveMode::NonRecursive)?;
    }
    let mut last = fingerprint(cp.config_paths());
    let mut last_mesh = fingerprint(std::slice::from_ref(&mesh_file));
    tokio::spawn(async move {
        let _keep = debouncer;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                got = rx.recv() => if got.is_none() { return },
            }
            while rx.try_recv().is_ok() {}
            let cp = cp.clone();
            let mesh_file = mesh_file.clone();
            // Errors and changes are reported through the events; the same contents again
            // (a touch, a save without edits) are not reloaded.
            let (seen, seen_mesh) = (last, last_mesh);
            let reloaded = tokio::task::spawn_blocking(move || {
                let now_mesh = fingerprint(std::slice::from_ref(&mesh_file));
                if now_mesh != seen_mesh {
                    cp.mesh_file_changed();
                }
                let now = fingerprint(cp.config_paths());
                if now != seen {
                    let _ = cp.reload();
                }
                (now, now_mesh)
            })
            .await;
            if let Ok((now, now_mesh)) = reloaded {
                last = now;
                last_mesh = now_mesh;
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_config_files_trigger_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("networking");
        std::fs::create_dir(&folder).unwrap();
        let file = dir.path().join("gw.yaml");
        let list = watch_list(&[file.clone(), folder.clone()]);
        assert!(relevant(&list, &file));
        assert!(relevant(&list, &folder.join("new.yaml")));
        assert!(relevant(&list, &folder.join("x.yml")));
        assert!(!relevant(&list, &folder.join(".x.yaml.swp")));
        assert!(!relevant(&list, &dir.path().join("other.yaml")));
        assert!(!relevant(&list, &dir.path().join("gw.yaml~")));
    }
}

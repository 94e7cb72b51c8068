//! The control plane of a running mesh: the resource store, and the one path every change
//! takes (apply, delete, a watched file saved): read and validate → change a copy of the store
//! → compile a new snapshot → swap it atomically. A change with any error is rejected whole,
//! with `file:line:col` diagnostics, and the running configuration keeps serving. Requests
//! in flight finish on the snapshot they started with; no connection is touched.

pub mod store;
pub mod watch;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::diag::{Diagnostic, Diagnostics, Severity};
use crate::config::istio::{Resource, ResourceKey};
use crate::config::load;
use crate::config::mesh::{Mesh, OutboundMode};
use crate::model::compile::compile;
use crate::model::snapshot::{MeshSnapshot, Shared};
use crate::model::topology::Topology;
use crate::supervisor::events::{Events, Lifecycle};

use self::store::{Change, Source, Store};

/// A change that took effect.
#[derive(Debug)]
pub struct Outcome {
    pub changes: Vec<Change>,
    /// Warnings about the resources of this change.
    pub warnings: Vec<Diagnostic>,
    /// The snapshot version serving now.
    pub version: u64,
    /// Time to compile and swap the snapshot (zero when nothing changed).
    pub took: Duration,
}

pub struct ControlPlane {
    topology: Arc<Topology>,
    namespace: String,
    /// `meshConfig.outboundTrafficPolicy`: changed live when the mesh file is saved.
    mode: Mutex<OutboundMode>,
    /// The mesh file as loaded at start (what needs a restart is compared against it).
    mesh: Mesh,
    /// The mesh file's `config:` entries (files or folders).
    config: Vec<PathBuf>,
    pub snapshot: Shared,
    /// Held for the whole of a change, so changes apply one at a time.
    store: Mutex<Store>,
    version: AtomicU64,
    /// The warnings of the running configuration.
    warnings: Mutex<Vec<Diagnostic>>,
    events: Option<Events>,
    /// Snapshots swapped out, kept until nobody else holds them (see [`Retired`]).
    retired: Retired,
    /// Where the resources applied through the API are kept across restarts (`applied.yaml`
    /// in the state dir), rewritten atomically after every change to them.
    persist: Mutex<Option<PathBuf>>,
}

/// Snapshots a reload swapped out. Workers and in-flight requests may still hold one; the
/// control plane keeps its own reference until it is the last, then frees the snapshot on
/// its own thread (at the next change, or within [`SWEEP_EVERY`]). Whoever drops the last
/// reference pays for freeing a whole configuration (~9 ms for 1000 services on the
/// development machine): without this, that is a data-plane worker between two requests,
/// or the reload itself. Envoy defers the deletion of replaced configuration to its main
/// thread for the same reason.
#[derive(Default)]
struct Retired(Mutex<Vec<Arc<MeshSnapshot>>>);

/// How often retired snapshots are looked at when no change comes.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl Retired {
    fn push(&self, old: Arc<MeshSnapshot>) {
        if let Ok(mut r) = self.0.lock() {
            r.push(old);
        }
        self.sweep();
    }

    /// Frees the retired snapshots no one else holds; how many are still held.
    fn sweep(&self) -> usize {
        // Taken out of the lock first: freeing them does not block a reload's `push`.
        let (free, held): (Vec<Arc<MeshSnapshot>>, usize) = match self.0.lock() {
            Ok(mut r) => {
                let (free, held) = r.drain(..).partition(|s| Arc::strong_count(s) == 1);
                *r = held;
                (free, r.len())
            }
            Err(_) => (Vec::new(), 0),
        };
        drop(free);
        held
    }
}

fn sorted(d: Diagnostics) -> Vec<Diagnostic> {
    d.sorted()
}

impl ControlPlane {
    /// Loads the mesh file's `config:` and compiles the first snapshot. Errors reject start.
    pub fn start(
        topology: Arc<Topology>,
        mesh: &Mesh,
        events: Option<Events>,
    ) -> Result<Arc<ControlPlane>, Vec<Diagnostic>> {
        let mut diags = Diagnostics::new();
        let mut store = Store::default();
        let mut all = Vec::new();
        for f in load::files(&mesh.config, &mut diags) {
            let items = load::file(&f, &mesh.namespace, &mut diags);
            all.push((f, items));
        }
        if diags.has_errors() {
            return Err(sorted(diags));
        }
        for (f, items) in all {
            let items = load::dedupe(items, &mut diags);
            store.sync_file(&f, items);
        }
        let compiled = compile(topology.clone(), Arc::new(store.resources()), 1, mesh.outbound_mode);
        diags.extend(compiled.warnings);
        let snapshot: Shared = Arc::new(arc_swap::ArcSwap::from_pointee(compiled.snapshot));
        let control = Arc::new(ControlPlane {
            topology,
            namespace: mesh.namespace.clone(),
            mode: Mutex::new(mesh.outbound_mode),
            mesh: mesh.clone(),
            config: mesh.config.clone(),
            snapshot,
            store: Mutex::new(store),
            version: AtomicU64::new(1),
            warnings: Mutex::new(sorted(diags)),
            events,
            retired: Retired::default(),
            persist: Mutex::new(None),
        });
        let weak = Arc::downgrade(&control);
        let sweeper = std::thread::Builder::new().name("devmesh-reclaim".into()).spawn(move || {
            loop {
                std::thread::sleep(SWEEP_EVERY);
                match weak.upgrade() {
                    Some(c) => c.retired.sweep(),
                    None => return,
                };
            }
        });
        if let Err(e) = sweeper {
            // Still correct without it: retired snapshots are then freed at the next change.
            tracing::warn!("cannot start the snapshot reclaimer: {e}");
        }
        Ok(control)
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn mode(&self) -> OutboundMode {
        self.mode.lock().map(|m| *m).unwrap_or_default()
    }

    /// The mesh file this mesh was started from.
    pub fn mesh_file(&self) -> &std::path::Path {
        &self.mesh.file
    }

    /// The mesh file was saved: what can change live does (`meshConfig`, as Istio's `istio`
    /// ConfigMap), and what needs a restart is named. A file with errors changes nothing.
    pub fn mesh_file_changed(&self) {
        let mut diags = Diagnostics::new();
        let Some(new) = crate::config::mesh::load(&self.mesh.file, &mut diags) else {
            self.rejected(&diags);
            return;
        };
        let restart = restart_fields(&self.mesh, &new);
        if !restart.is_empty()
            && let Some(ev) = &self.events
        {
            ev.emit(Lifecycle::Warning {
                message: format!(
                    "the mesh file changed {}: that needs a restart (`devmesh down`, then `devmesh up`); \
                     meshConfig applies live",
                    restart.join(", ")
                ),
            });
        }
        let mut guard = self.lock();
        let old = self.mode();
        if new.outbound_mode == old {
            return;
        }
        if let Ok(mut m) = self.mode.lock() {
            *m = new.outbound_mode;
        }
        let next = guard.clone();
        let change = format!(
            "meshConfig.outboundTrafficPolicy {}",
            match new.outbound_mode {
                OutboundMode::AllowAny => "ALLOW_ANY",
                OutboundMode::RegistryOnly => "REGISTRY_ONLY",
            }
        );
        self.commit_forced(&mut guard, next, change);
    }

    /// The config files and folders being watched.
    pub fn config_paths(&self) -> &[PathBuf] {
        &self.config
    }

    pub fn warnings(&self) -> Vec<Diagnostic> {
        self.warnings.lock().map(|w| w.clone()).unwrap_or_default()
    }

    pub fn current(&self) -> Arc<MeshSnapshot> {
        self.snapshot.load_full()
    }

    /// The store, for listings.
    pub fn entries(&self) -> Vec<store::Entry> {
        self.store.lock().map(|s| s.entries().to_vec()).unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        match self.store.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// `devmesh apply`: YAML sources (name, text), all or nothing.
    pub fn apply(&self, sources: &[(Arc<str>, String)], dry_run: bool) -> Result<Outcome, Vec<Diagnostic>> {
        let mut diags = Diagnostics::new();
        let mut items = Vec::new();
        for (name, text) in sources {
            items.extend(load::text(name.clone(), text, &self.namespace, &mut diags));
        }
        let items = load::dedupe(items, &mut diags);
        if diags.has_errors() {
            self.rejected(&diags);
            return Err(sorted(diags));
        }
        if items.is_empty() {
            diags.error(&Arc::from("input"), Default::default(), "no objects passed to apply");
            return Err(sorted(diags));
        }
        let mut guard = self.lock();
        let mut next = guard.clone();
        let changes = next.apply(items, &Source::Api);
        if dry_run {
            // Everything the real apply would say (kubectl's --dry-run=server): the change is
            // compiled, not swapped in, and its warnings about the applied sources are kept.
            let compiled = compile(self.topology.clone(), Arc::new(next.resources()), 0, self.mode());
            let mut warnings = sorted(diags);
            warnings
                .extend(sorted(compiled.warnings).into_iter().filter(|w| sources.iter().any(|(n, _)| *n == w.file)));
            return Ok(Outcome {
                changes,
                warnings,
                version: self.version.load(Ordering::Acquire),
                took: Duration::ZERO,
            });
        }
        let mut outcome = self.commit(&mut guard, next, changes, diags);
        // Like kubectl, warn about what was applied, not about the rest of the mesh.
        outcome.warnings.retain(|w| sources.iter().any(|(name, _)| *name == w.file));
        Ok(outcome)
    }

    /// `devmesh delete`: removes resources; keys not found are returned apart.
    pub fn delete(&self, keys: &[ResourceKey]) -> (Outcome, Vec<ResourceKey>) {
        let mut guard = self.lock();
        let mut next = guard.clone();
        let (changes, missing) = next.delete(keys);
        (self.commit(&mut guard, next, changes, Diagnostics::new()), missing)
    }

    /// Keeps what is applied through the API in `path` from now on, after first restoring
    /// what an earlier run kept there. `Ok(n)`: n resources restored. A file that no longer
    /// applies (the mesh file changed) is moved aside to `<path>.rejected` with its errors.
    pub fn persist_applied(&self, path: PathBuf) -> Result<usize, Vec<Diagnostic>> {
        let restored = match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => {
                let name: Arc<str> = crate::config::source::display_name(&path);
                match self.apply(&[(name, text)], false) {
                    Ok(outcome) => outcome.changes.len(),
                    Err(errors) => {
                        let mut aside = path.clone().into_os_string();
                        aside.push(".rejected");
                        let _ = std::fs::rename(&path, aside);
                        if let Ok(mut p) = self.persist.lock() {
                            *p = Some(path);
                        }
                        return Err(errors);
                    }
                }
            }
            _ => 0,
        };
        if let Ok(mut p) = self.persist.lock() {
            *p = Some(path);
        }
        Ok(restored)
    }

    /// Writes the API-applied resources of `store` to the persist file (temp file + rename,
    /// so a crash leaves the old or the new file, never half of one).
    fn save_applied(&self, store: &Store) {
        let Some(path) = self.persist.lock().ok().and_then(|p| p.clone()) else { return };
        let mut text = String::from(
            "# Resources applied to this mesh with `devmesh apply`, restored at `devmesh up`\n\
                                     # (`devmesh up --fresh` starts without them). Written by devmesh.\n",
        );
        for e in store.entries().iter().filter(|e| e.source == Source::Api) {
            match serde_saphyr::to_string(&e.resource) {
                Ok(y) => {
                    text.push_str("---\n");
                    text.push_str(&y);
                }
                Err(err) => tracing::warn!("cannot keep {}: {err}", e.resource.key()),
            }
        }
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!("cannot keep the applied resources in {}: {e}", path.display());
        }
    }

    /// Re-reads every config file (a watched file was saved, added or removed).
    pub fn reload(&self) -> Result<Outcome, Vec<Diagnostic>> {
        let mut diags = Diagnostics::new();
        let mut read: Vec<(PathBuf, Vec<Resource>)> = Vec::new();
        for f in load::files(&self.config, &mut diags) {
            let items = load::file(&f, &self.namespace, &mut diags);
            read.push((f, items));
        }
        if diags.has_errors() {
            self.rejected(&diags);
            return Err(sorted(diags));
        }
        let mut guard = self.lock();
        let mut next = guard.clone();
        let mut changes = Vec::new();
        let present: Vec<PathBuf> = read.iter().map(|(f, _)| f.clone()).collect();
        for (f, items) in read {
            let items = load::dedupe(items, &mut diags);
            changes.extend(next.sync_file(&f, items));
        }
        for gone in next.files().into_iter().filter(|f| !present.contains(f)) {
            changes.extend(next.sync_file(&gone, Vec::new()));
        }
        Ok(self.commit(&mut guard, next, changes, diags))
    }

    /// Compiles and swaps in the store with a changed mesh setting (`what` names it).
    fn commit_forced(&self, current: &mut Store, next: Store, what: String) {
        self.swap_in(current, next, vec![what]);
    }

    /// Compiles and swaps in `next` when anything changed.
    fn commit(&self, current: &mut Store, next: Store, changes: Vec<Change>, diags: Diagnostics) -> Outcome {
        let changed = changes.iter().any(|c| c.action != store::Action::Unchanged);
        let mut warnings = sorted(diags);
        if !changed {
            *current = next;
            return Outcome { changes, warnings, version: self.version.load(Ordering::Acquire), took: Duration::ZERO };
        }
        let lines = changes.iter().filter(|c| c.action != store::Action::Unchanged).map(Change::line).collect();
        let (version, took, all_warnings) = self.swap_in(current, next, lines);
        warnings.extend(all_warnings);
        Outcome { changes, warnings, version, took }
    }

    /// Compiles `next`, swaps it in as the next version, keeps the applied resources, records
    /// the running warnings and announces `changes`: (version, compile + swap time, warnings).
    fn swap_in(&self, current: &mut Store, next: Store, changes: Vec<String>) -> (u64, Duration, Vec<Diagnostic>) {
        let start = Instant::now();
        let version = self.version.load(Ordering::Acquire) + 1;
        let compiled = compile(self.topology.clone(), Arc::new(next.resources()), version, self.mode());
        let old = self.snapshot.swap(Arc::new(compiled.snapshot));
        self.version.store(version, Ordering::Release);
        // The new configuration serves from here; freeing the old one is not part of it.
        let took = start.elapsed();
        self.retired.push(old);
        *current = next;
        // Every change is kept (a reload rewrites the same API resources; cheap beside the compile).
        self.save_applied(current);
        let all_warnings = sorted(compiled.warnings);
        if let Ok(mut w) = self.warnings.lock() {
            *w = all_warnings.clone();
        }
        if let Some(ev) = &self.events {
            ev.emit(Lifecycle::ConfigApplied { version, took_us: took.as_micros() as u64, changes });
        }
        (version, took, all_warnings)
    }

    fn rejected(&self, diags: &Diagnostics) {
        if let Some(ev) = &self.events {
            let errors: Vec<String> =
                diags.iter().filter(|d| d.severity == Severity::Error).map(|d| d.to_string()).collect();
            ev.emit(Lifecycle::ConfigRejected { version: self.version.load(Ordering::Acquire), errors });
        }
    }
}

/// The mesh file's parts that differ between `old` and `new` and need a restart (everything
/// but `meshConfig`): processes, listeners and addresses are made at start.
fn restart_fields(old: &Mesh, new: &Mesh) -> Vec<&'static str> {
    fn json<T: serde::Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap_or_default()
    }
    let mut out = Vec::new();
    let pairs: [(&'static str, String, String); 8] = [
        ("namespace", json(&old.namespace), json(&new.namespace)),
        ("build", json(&old.build), json(&new.build)),
        ("config", json(&old.config), json(&new.config)),
        ("gateways", json(&old.gateways), json(&new.gateways)),
        ("services", json(&old.services), json(&new.services)),
        ("proxy", json(&old.proxy), json(&new.proxy)),
        ("accessLog", json(&old.access_log), json(&new.access_log)),
        ("file", json(&old.file), json(&new.file)),
    ];
    for (name, a, b) in pairs {
        if a != b {
            out.push(name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control() -> (tempfile::TempDir, Arc<ControlPlane>) {
        let (dir, mesh, topology) = crate::app::topology::planned_for_test(
            "services:\n  web:\n    ports: [{name: http, port: 80}]\n    workloads: [{command: [x]}]\n",
        );
        (dir, ControlPlane::start(topology, &mesh, None).unwrap())
    }

    fn timeout(secs: u32) -> (Arc<str>, String) {
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web}}\nspec:\n  hosts: [web]\n  http: [{{timeout: {secs}s, route: [{{destination: {{host: web}}}}]}}]\n"
        );
        (Arc::from("vs.yaml"), yaml)
    }

    #[test]
    fn a_swapped_out_snapshot_is_freed_by_the_control_plane_not_by_its_last_reader() {
        let (_dir, control) = control();
        // A worker's holder (or a request in flight) keeps the snapshot it routed with.
        let held = control.current();
        let old = Arc::downgrade(&held);
        assert_eq!(control.apply(&[timeout(1)], false).unwrap().version, 2);
        assert_eq!(control.current().version, 2);
        assert_eq!(Arc::strong_count(&held), 2, "the control plane keeps a reference to the retired snapshot");
        drop(held);
        assert!(old.upgrade().is_some(), "the reader's drop was not the last: nothing was freed on its thread");
        assert_eq!(control.retired.sweep(), 0);
        assert!(old.upgrade().is_none(), "freed by the control plane's sweep");

        // Unheld, the next one is freed by the change that retires it; held, by the
        // background sweep once the last reader lets go.
        let unheld = Arc::downgrade(&control.current());
        control.apply(&[timeout(2)], false).unwrap();
        assert!(unheld.upgrade().is_none(), "nobody held it: freed at once");
        let held = control.current();
        let old = Arc::downgrade(&held);
        control.apply(&[timeout(3)], false).unwrap();
        drop(held);
        let deadline = std::time::Instant::now() + SWEEP_EVERY * 5;
        while old.upgrade().is_some() {
            assert!(std::time::Instant::now() < deadline, "the reclaimer never freed the retired snapshot");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

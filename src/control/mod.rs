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
    mode: OutboundMode,
    /// The mesh file's `config:` entries (files or folders).
    config: Vec<PathBuf>,
    pub snapshot: Shared,
    /// Held for the whole of a change, so changes apply one at a time.
    store: Mutex<Store>,
    version: AtomicU64,
    /// The warnings of the running configuration.
    warnings: Mutex<Vec<Diagnostic>>,
    events: Option<Events>,
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
        Ok(Arc::new(ControlPlane {
            topology,
            namespace: mesh.namespace.clone(),
            mode: mesh.outbound_mode,
            config: mesh.config.clone(),
            snapshot,
            store: Mutex::new(store),
            version: AtomicU64::new(1),
            warnings: Mutex::new(sorted(diags)),
            events,
        }))
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
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
            return Ok(Outcome {
                changes,
                warnings: sorted(diags),
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

    /// Compiles and swaps in `next` when anything changed.
    fn commit(&self, current: &mut Store, next: Store, changes: Vec<Change>, diags: Diagnostics) -> Outcome {
        let changed = changes.iter().any(|c| c.action != store::Action::Unchanged);
        let mut warnings = sorted(diags);
        if !changed {
            *current = next;
            return Outcome { changes, warnings, version: self.version.load(Ordering::Acquire), took: Duration::ZERO };
        }
        let start = Instant::now();
        let version = self.version.load(Ordering::Acquire) + 1;
        let compiled = compile(self.topology.clone(), Arc::new(next.resources()), version, self.mode);
        self.snapshot.store(Arc::new(compiled.snapshot));
        self.version.store(version, Ordering::Release);
        let took = start.elapsed();
        *current = next;
        let all_warnings = sorted(compiled.warnings);
        warnings.extend(all_warnings.iter().cloned());
        if let Ok(mut w) = self.warnings.lock() {
            *w = all_warnings;
        }
        if let Some(ev) = &self.events {
            ev.emit(Lifecycle::ConfigApplied {
                version,
                took_us: took.as_micros() as u64,
                changes: changes.iter().filter(|c| c.action != store::Action::Unchanged).map(Change::line).collect(),
            });
        }
        Outcome { changes, warnings, version, took }
    }

    fn rejected(&self, diags: &Diagnostics) {
        if let Some(ev) = &self.events {
            let errors: Vec<String> =
                diags.iter().filter(|d| d.severity == Severity::Error).map(|d| d.to_string()).collect();
            ev.emit(Lifecycle::ConfigRejected { version: self.version.load(Ordering::Acquire), errors });
        }
    }
}

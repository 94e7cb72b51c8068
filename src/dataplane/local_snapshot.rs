//! The worker's handle on the current configuration snapshot. Every request holds the
//! snapshot it was routed with until it ends; taking that reference with
//! `ArcSwap::load_full` is an atomic increment (and later decrement) on the snapshot's one
//! reference count, a cache line every worker writes for every request. Each worker instead
//! keeps its own holder of the current snapshot (refreshed when a reload swaps a new one
//! in, noticed by a plain load of the shared pointer) and requests count references on that
//! worker-private holder.

use std::cell::RefCell;
use std::sync::Arc;

use crate::model::snapshot::{MeshSnapshot, Shared};

/// A request's reference to the snapshot it was routed with.
pub type LocalSnapshot = Arc<Arc<MeshSnapshot>>;

struct Entry {
    /// Which mesh (a second owner beside the cache's own, to tell when no one else is left).
    shared: Shared,
    cache: arc_swap::Cache<Shared, Arc<MeshSnapshot>>,
    holder: LocalSnapshot,
}

thread_local! {
    static ENTRIES: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
}

/// The current snapshot of `shared`, through this thread's holder.
pub fn current(shared: &Shared) -> LocalSnapshot {
    let local = ENTRIES.try_with(|entries| {
        let mut entries = entries.try_borrow_mut().ok()?;
        let i = match entries.iter().position(|e| Arc::ptr_eq(&e.shared, shared)) {
            Some(i) => i,
            None => {
                // Forget the meshes no one else holds any more (tests start many).
                entries.retain(|e| Arc::strong_count(&e.shared) > 2);
                let cache = arc_swap::Cache::new(shared.clone());
                let holder = Arc::new(shared.load_full());
                entries.push(Entry { shared: shared.clone(), cache, holder });
                entries.len() - 1
            }
        };
        let entry = entries.get_mut(i)?;
        let now = entry.cache.load();
        if !Arc::ptr_eq(now, &entry.holder) {
            entry.holder = Arc::new(now.clone());
        }
        Some(entry.holder.clone())
    });
    match local {
        Ok(Some(s)) => s,
        _ => Arc::new(shared.load_full()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::mesh::OutboundMode;
    use crate::model::topology::Topology;

    fn snapshot(version: u64) -> Arc<MeshSnapshot> {
        let t = Topology { namespace: "default".into(), services: vec![], instances: vec![], gateways: vec![] };
        Arc::new(
            crate::model::compile::compile(Arc::new(t), Arc::new(vec![]), version, OutboundMode::AllowAny).snapshot,
        )
    }

    #[test]
    fn requests_see_the_snapshot_swapped_in_and_keep_the_one_they_hold() {
        let shared: Shared = Arc::new(arc_swap::ArcSwap::new(snapshot(1)));
        let a = current(&shared);
        let b = current(&shared);
        assert!(Arc::ptr_eq(&a, &b), "one holder per worker while the snapshot is unchanged");
        assert_eq!(a.version, 1);
        shared.store(snapshot(2));
        let c = current(&shared);
        assert_eq!((a.version, c.version), (1, 2), "in-flight requests keep theirs; new ones get the new");
        // Another thread has its own holder of the same snapshot.
        let other = std::thread::scope(|s| s.spawn(|| current(&shared)).join().unwrap());
        assert!(!Arc::ptr_eq(&other, &c) && Arc::ptr_eq(&*other, &*c));
    }
}

//! The resource store: every Istio resource of the running mesh keyed by kind, namespace and
//! name (as the Kubernetes API server keys them), in creation order (which Istio uses to break
//! ties), with where it came from. Changes are computed on a copy: a change that fails
//! validation or compilation never touches the store in use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use crate::config::istio::{Resource, ResourceKey};

/// Where a resource came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A file listed in the mesh file's `config:` (watched).
    File(PathBuf),
    /// `devmesh apply` / `POST /resources`.
    Api,
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub resource: Resource,
    pub source: Source,
    pub created: SystemTime,
    /// Bumped on every change of the spec, labels or annotations (`metadata.generation`).
    pub generation: u64,
}

/// What a change did to one resource, in kubectl's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Configured,
    Unchanged,
    Deleted,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
            Action::Deleted => "deleted",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Change {
    #[serde(flatten)]
    pub key: ResourceKey,
    pub action: Action,
}

impl Change {
    /// `virtualservice.networking.istio.io/reviews configured`
    pub fn line(&self) -> String {
        format!("{} {}", self.key, self.action.as_str())
    }
}

#[derive(Clone, Debug, Default)]
pub struct Store {
    entries: Vec<Entry>,
}

fn same(a: &Resource, b: &Resource) -> bool {
    a.spec == b.spec && a.metadata == b.metadata && a.api_version == b.api_version
}

impl Store {
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The resources, in creation order.
    pub fn resources(&self) -> Vec<Resource> {
        self.entries.iter().map(|e| e.resource.clone()).collect()
    }

    /// Adds or replaces resources (kubectl apply).
    pub fn apply(&mut self, items: Vec<Resource>, source: &Source) -> Vec<Change> {
        let now = SystemTime::now();
        let mut changes = Vec::with_capacity(items.len());
        let mut index: HashMap<ResourceKey, usize> =
            self.entries.iter().enumerate().map(|(i, e)| (e.resource.key(), i)).collect();
        for r in items {
            let key = r.key();
            let found = index.get(&key).copied();
            let action = match found.and_then(|i| self.entries.get_mut(i)) {
                Some(e) if same(&e.resource, &r) => {
                    // Same content: keep it, but a file now owns what it declares.
                    e.source = source.clone();
                    e.resource.origin = r.origin;
                    Action::Unchanged
                }
                Some(e) => {
                    e.resource = r;
                    e.source = source.clone();
                    e.generation += 1;
                    Action::Configured
                }
                None => {
                    index.insert(key.clone(), self.entries.len());
                    self.entries.push(Entry { resource: r, source: source.clone(), created: now, generation: 1 });
                    Action::Created
                }
            };
            changes.push(Change { key, action });
        }
        changes
    }

    /// Removes resources; the keys not found are returned apart.
    pub fn delete(&mut self, keys: &[ResourceKey]) -> (Vec<Change>, Vec<ResourceKey>) {
        let mut changes = Vec::new();
        let mut missing = Vec::new();
        let doomed: std::collections::HashSet<&ResourceKey> = keys.iter().collect();
        let mut found = std::collections::HashSet::new();
        self.entries.retain(|e| {
            let k = e.resource.key();
            if doomed.contains(&k) {
                found.insert(k);
                false
            } else {
                true
            }
        });
        for k in keys {
            if found.contains(k) {
                changes.push(Change { key: k.clone(), action: Action::Deleted });
            } else {
                missing.push(k.clone());
            }
        }
        (changes, missing)
    }

    /// Makes the store hold exactly what `file` declares now: its resources are applied, and
    /// resources it declared before but no longer does are deleted. Unchanged resources are
    /// not reported.
    pub fn sync_file(&mut self, file: &Path, items: Vec<Resource>) -> Vec<Change> {
        let source = Source::File(file.to_path_buf());
        let keys: std::collections::HashSet<ResourceKey> = items.iter().map(Resource::key).collect();
        let gone: Vec<ResourceKey> = self
            .entries
            .iter()
            .filter(|e| e.source == source && !keys.contains(&e.resource.key()))
            .map(|e| e.resource.key())
            .collect();
        let mut changes: Vec<Change> =
            self.apply(items, &source).into_iter().filter(|c| c.action != Action::Unchanged).collect();
        changes.extend(self.delete(&gone).0);
        changes
    }

    /// The files resources came from.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        for e in &self.entries {
            if let Source::File(f) = &e.source
                && !out.contains(f)
            {
                out.push(f.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::diag::Diagnostics;
    use crate::config::istio::read_resources;
    use crate::config::source::parse_documents;

    fn parse(text: &str) -> Vec<Resource> {
        let mut d = Diagnostics::new();
        let docs = parse_documents(std::sync::Arc::from("t.yaml"), text, &mut d);
        let r = read_resources(&docs, "default", &mut d);
        assert!(!d.has_errors(), "{}", d.render());
        r
    }

    const VS_V1: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews, subset: v1}}]}]\n";
    const VS_V2: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews, subset: v2}}]}]\n";
    const DR: &str =
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec: {host: reviews}\n";

    #[test]
    fn apply_reports_created_configured_unchanged_like_kubectl() {
        let mut s = Store::default();
        let c = s.apply(parse(VS_V1), &Source::Api);
        assert_eq!(c[0].action, Action::Created);
        assert_eq!(c[0].line(), "virtualservice.networking.istio.io/reviews created");
        // Same content written differently (positions differ) is unchanged.
        let c = s.apply(parse(&format!("# a comment\n{VS_V1}")), &Source::Api);
        assert_eq!(c[0].action, Action::Unchanged);
        let c = s.apply(parse(VS_V2), &Source::Api);
        assert_eq!(c[0].action, Action::Configured);
        assert_eq!(s.entries()[0].generation, 2);
        let (d, missing) = s.delete(&[parse(VS_V2)[0].key(), parse(DR)[0].key()]);
        assert_eq!(d[0].line(), "virtualservice.networking.istio.io/reviews deleted");
        assert_eq!(missing.len(), 1);
        assert!(s.entries().is_empty());
    }

    #[test]
    fn syncing_a_file_deletes_what_it_no_longer_declares() {
        let mut s = Store::default();
        let f = PathBuf::from("/x/routes.yaml");
        let c = s.sync_file(&f, parse(&format!("{VS_V1}---\n{DR}")));
        assert_eq!(c.len(), 2);
        let api = s.apply(
            parse("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec: {}\n"),
            &Source::Api,
        );
        assert_eq!(api[0].action, Action::Created);
        let c = s.sync_file(&f, parse(VS_V2));
        let actions: Vec<Action> = c.iter().map(|c| c.action).collect();
        assert_eq!(actions, [Action::Configured, Action::Deleted]);
        assert_eq!(s.entries().len(), 2, "the applied Gateway stays");
        assert_eq!(s.files(), [f]);
        // Creation order is kept: the VirtualService first.
        assert_eq!(s.resources()[0].metadata.name, "reviews");
    }
}

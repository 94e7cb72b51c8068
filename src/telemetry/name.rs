//! Names that request records carry (proxy, workload, service, cluster, route, subset,
//! principal). Each distinct name is interned once, when a configuration is compiled or a
//! peer's certificate is read, and never freed: a record copies a pointer instead of
//! cloning an `Arc<str>`, whose reference count would be one cache line written by every
//! worker and by the log thread for every request (profile step 13 in docs/PERFORMANCE.md).
//! Memory grows only with names never seen before, as Envoy's stat-name symbol table does;
//! reloading the same configuration adds nothing.

use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;
use std::sync::{Mutex, OnceLock};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(&'static str);

fn table() -> &'static Mutex<HashSet<&'static str>> {
    static TABLE: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    TABLE.get_or_init(|| Mutex::new(HashSet::new()))
}

impl Name {
    /// The interned copy of `s` (one lookup; a copy only the first time `s` is seen).
    pub fn new(s: &str) -> Name {
        let mut t = match table().lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(&known) = t.get(s) {
            return Name(known);
        }
        let leaked: &'static str = Box::leak(Box::from(s));
        t.insert(leaked);
        Name(leaked)
    }

    /// A name that is a literal: nothing to intern.
    pub const fn from_static(s: &'static str) -> Name {
        Name(s)
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.0
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Name {
        Name::new(s)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

impl serde::Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_names_share_one_copy() {
        let a = Name::new(&format!("reviews.{}.svc", "default"));
        let b = Name::new("reviews.default.svc");
        assert_eq!(a, b);
        assert!(std::ptr::eq(&*a, &*b), "the second intern returns the first copy");
        assert_ne!(a, Name::new("ratings.default.svc"));
        assert_eq!(Name::from_static("reviews.default.svc"), a, "a literal equals its interned copy");
        assert_eq!(&*a, "reviews.default.svc");
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"reviews.default.svc\"");
    }
}

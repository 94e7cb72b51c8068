//! What every proxy listener allows its downstream connections, in one place: the timeouts
//! of slow or idle clients and the global connection cap (Envoy's overload manager), set
//! once at start from the mesh file's `proxy:` section.
//!
//! The cap counts every downstream connection of every listener. Connections from outside
//! the mesh (an app's own, a gateway's clients, anything on loopback that devmesh did not
//! open) are refused once `edge` are open; devmesh's own hops (a sidecar's connection to the
//! next one) and the admin API may use a reserve above that, so a flood held open against a
//! gateway cannot stop the sidecars, probes or the admin API. The cap sits well below the
//! open-file limit, which `raise_nofile` lifts to the hard limit first.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::config::mesh::ProxyLimits;

/// The limits in force.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub request_headers_timeout: Duration,
    pub idle_timeout: Duration,
    pub stream_idle_timeout: Duration,
    /// The largest request head, in bytes.
    pub max_head: usize,
    /// Connections from outside the mesh are refused at this many open.
    pub edge: usize,
    /// devmesh's own hops and the admin API are refused only at this many.
    pub internal: usize,
}

impl Limits {
    /// The limits for `proxy`, the cap derived from `nofile` (the open-file limit) unless set:
    /// half of it for outside connections, three quarters with the reserve, leaving the rest
    /// for upstream connections, files and logs.
    pub fn new(proxy: &ProxyLimits, nofile: u64) -> Limits {
        let nofile = usize::try_from(nofile).unwrap_or(usize::MAX).max(64);
        let edge = proxy.max_connections.map_or(nofile / 2, |n| n as usize);
        let reserve = (nofile / 4).max(32);
        Limits {
            request_headers_timeout: proxy.request_headers_timeout,
            idle_timeout: proxy.idle_timeout,
            stream_idle_timeout: proxy.stream_idle_timeout,
            max_head: proxy.max_request_headers_kb as usize * 1024,
            edge,
            internal: edge.saturating_add(reserve),
        }
    }
}

static LIMITS: OnceLock<Limits> = OnceLock::new();
static OPEN: AtomicUsize = AtomicUsize::new(0);
static REFUSED: AtomicUsize = AtomicUsize::new(0);
static WARNED: AtomicBool = AtomicBool::new(false);

/// Sets the limits (once, at start; later calls are ignored).
pub fn configure(limits: Limits) {
    let _ = LIMITS.set(limits);
}

/// The limits in force (the defaults with a 20,000 file limit until configured).
pub fn limits() -> &'static Limits {
    LIMITS.get_or_init(|| Limits::new(&ProxyLimits::default(), 20_000))
}

/// Downstream connections open now, and those refused so far.
pub fn counts() -> (usize, usize) {
    (OPEN.load(Ordering::Relaxed), REFUSED.load(Ordering::Relaxed))
}

/// One admitted downstream connection; dropping it (the connection ended) frees its place.
#[derive(Debug)]
pub struct Permit(());

impl Drop for Permit {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Admits a new downstream connection, or `None` when the cap for its class is reached (the
/// caller closes it at once, as Envoy does at `global_downstream_max_connections`).
pub fn admit(internal: bool) -> Option<Permit> {
    let l = limits();
    let cap = if internal { l.internal } else { l.edge };
    let open = OPEN.fetch_add(1, Ordering::Relaxed);
    if open >= cap {
        OPEN.fetch_sub(1, Ordering::Relaxed);
        REFUSED.fetch_add(1, Ordering::Relaxed);
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "connection limit reached ({open} open): new connections from outside the mesh are refused \
                 (proxy.maxConnections = {}); mesh hops and the admin API keep a reserve of {}",
                l.edge,
                l.internal - l.edge
            );
        }
        return None;
    }
    if open < l.edge / 2 {
        WARNED.store(false, Ordering::Relaxed);
    }
    Some(Permit(()))
}

/// Raises the soft open-file limit to the hard limit (as Envoy's and nginx's packaging do);
/// returns the soft limit in force afterwards.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 1024,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_derives_from_the_file_limit_with_a_reserve() {
        let l = Limits::new(&ProxyLimits::default(), 20_000);
        assert_eq!((l.edge, l.internal), (10_000, 15_000));
        assert_eq!(l.max_head, 60 * 1024);
        let set = ProxyLimits { max_connections: Some(50), ..ProxyLimits::default() };
        let l = Limits::new(&set, 1024);
        assert_eq!((l.edge, l.internal), (50, 50 + 256));
    }
}

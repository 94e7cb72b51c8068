//! Load balancing over a cluster's endpoints, as DestinationRule's `loadBalancer` asks:
//! ROUND_ROBIN, LEAST_REQUEST (power of two choices, as Envoy), RANDOM, and consistent hashing
//! on a header, cookie, source or query parameter with a ring hash or a maglev table. Only
//! ready endpoints are chosen; a retry can exclude the hosts it already tried.

use std::time::Duration;

use http::HeaderName;
use serde::Serialize;

/// FNV-1a, 64 bit: small, fast, and the same on every platform and run (stable mapping).
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche (splitmix64) so nearby keys spread over the ring.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashKey {
    Header(#[serde(serialize_with = "ser_name")] HeaderName),
    /// With a TTL, a missing cookie is generated and set on the response.
    Cookie {
        name: String,
        path: Option<String>,
        ttl: Option<Duration>,
    },
    SourceIp,
    QueryParameter(String),
}

fn ser_name<S: serde::Serializer>(n: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(n.as_str())
}

/// A table from hash values to endpoint indices.
#[derive(Clone, Debug)]
pub enum HashTable {
    /// Sorted (point, endpoint) pairs; a key goes to the first point at or after its hash.
    Ring(Vec<(u64, u32)>),
    /// Maglev's lookup table (Eisenbud et al.): the key's hash modulo the table size.
    Maglev(Vec<u32>),
}

impl HashTable {
    pub fn ring(names: &[&str], min_size: usize) -> HashTable {
        if names.is_empty() {
            return HashTable::Ring(Vec::new());
        }
        let per = min_size.div_ceil(names.len()).max(1);
        let mut points = Vec::with_capacity(per * names.len());
        for (i, n) in names.iter().enumerate() {
            for v in 0..per {
                points.push((fnv1a(format!("{n}_{v}").as_bytes()), i as u32));
            }
        }
        points.sort_unstable();
        HashTable::Ring(points)
    }

    pub fn maglev(names: &[&str], size: usize) -> HashTable {
        let n = names.len();
        if n == 0 || size == 0 {
            return HashTable::Maglev(Vec::new());
        }
        let m = size as u64;
        let prefs: Vec<(u64, u64)> = names
            .iter()
            .map(|name| {
                let offset = fnv1a(name.as_bytes()) % m;
                let skip = fnv1a(format!("{name}#skip").as_bytes()) % (m - 1).max(1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; n];
        let mut table = vec![u32::MAX; size];
        let mut filled = 0;
        'outer: loop {
            for (i, (offset, skip)) in prefs.iter().enumerate() {
                let mut c = (offset + next[i] * skip) % m;
                while table[c as usize] != u32::MAX {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % m;
                }
                table[c as usize] = i as u32;
                next[i] += 1;
                filled += 1;
                if filled == size {
                    break 'outer;
                }
            }
        }
        HashTable::Maglev(table)
    }

    /// Endpoints in preference order for `hash` (the first one, then the ones after it),
    /// without allocating.
    pub fn lookup(&self, hash: u64) -> Lookup<'_> {
        match self {
            HashTable::Ring(points) => {
                let start = points.partition_point(|(p, _)| *p < hash);
                Lookup::Ring(points[start..].iter().chain(points[..start].iter()))
            }
            HashTable::Maglev(table) if !table.is_empty() => {
                let start = (hash % table.len() as u64) as usize;
                Lookup::Maglev(table[start..].iter().chain(table[..start].iter()))
            }
            HashTable::Maglev(_) => Lookup::Maglev([].iter().chain([].iter())),
        }
    }
}

type Wrapped<'a, T> = std::iter::Chain<std::slice::Iter<'a, T>, std::slice::Iter<'a, T>>;

pub enum Lookup<'a> {
    Ring(Wrapped<'a, (u64, u32)>),
    Maglev(Wrapped<'a, u32>),
}

impl Iterator for Lookup<'_> {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        match self {
            Lookup::Ring(i) => i.next().map(|(_, e)| *e),
            Lookup::Maglev(i) => i.next().copied(),
        }
    }
}

#[derive(Clone, Debug)]
pub enum Lb {
    RoundRobin,
    LeastRequest,
    Random,
    /// The original destination, for mesh services any ready endpoint (as kube-proxy would).
    Passthrough,
    ConsistentHash {
        key: HashKey,
        table: HashTable,
    },
}

impl Serialize for Lb {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Lb::RoundRobin => s.serialize_str("ROUND_ROBIN"),
            Lb::LeastRequest => s.serialize_str("LEAST_REQUEST"),
            Lb::Random => s.serialize_str("RANDOM"),
            Lb::Passthrough => s.serialize_str("PASSTHROUGH"),
            Lb::ConsistentHash { key, table } => {
                use serde::ser::SerializeStruct;
                let mut st = s.serialize_struct("ConsistentHash", 2)?;
                st.serialize_field("hash_key", key)?;
                st.serialize_field(
                    "algorithm",
                    match table {
                        HashTable::Ring(_) => "RING_HASH",
                        HashTable::Maglev(_) => "MAGLEV",
                    },
                )?;
                st.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spread(table: &HashTable, endpoints: usize) -> Vec<usize> {
        let mut counts = vec![0; endpoints];
        for k in 0..10_000u32 {
            let first = table.lookup(fnv1a(&k.to_le_bytes())).next().unwrap();
            counts[first as usize] += 1;
        }
        counts
    }

    #[test]
    fn ring_and_maglev_spread_keys_and_are_stable() {
        let names = ["reviews-v1", "reviews-v2", "reviews-v3"];
        for table in [HashTable::ring(&names, 1024), HashTable::maglev(&names, 65537)] {
            let counts = spread(&table, 3);
            assert!(counts.iter().all(|c| *c > 2500), "{counts:?}");
            let a = table.lookup(fnv1a(b"jason")).next();
            assert_eq!(a, table.lookup(fnv1a(b"jason")).next(), "the same key maps to the same endpoint");
        }
        // Stable across builds of the table: the mapping is a function of names and key only.
        let t1 = HashTable::maglev(&names, 65537);
        let t2 = HashTable::maglev(&names, 65537);
        assert_eq!(t1.lookup(42).next(), t2.lookup(42).next());
    }

    #[test]
    fn maglev_moves_few_keys_when_an_endpoint_is_added() {
        let three = HashTable::maglev(&["a", "b", "c"], 65537);
        let four = HashTable::maglev(&["a", "b", "c", "d"], 65537);
        let moved = (0..10_000u32)
            .filter(|k| {
                let h = fnv1a(&k.to_le_bytes());
                let before = three.lookup(h).next();
                let after = four.lookup(h).next();
                after != Some(3) && before != after
            })
            .count();
        assert!(moved < 1500, "maglev keeps most keys where they were: {moved} moved");
    }

    #[test]
    fn lookup_lists_every_endpoint_for_fallback() {
        let t = HashTable::ring(&["a", "b"], 16);
        let order: std::collections::HashSet<u32> = t.lookup(7).collect();
        assert_eq!(order.len(), 2);
    }
}

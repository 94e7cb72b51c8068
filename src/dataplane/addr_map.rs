//! Hash maps keyed by socket addresses (upstream pools, listener addresses), looked up on
//! every request: keys are endpoint addresses from the configuration or the local client,
//! so SipHash's resistance to flooding buys nothing there, and it costs ~5x as much.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

pub type AddrMap<K, V> = HashMap<K, V, BuildHasherDefault<AddrHasher>>;

/// A multiply-rotate hasher (FxHash's).
#[derive(Default)]
pub struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn addresses_spread_and_find_their_values() {
        let mut m: AddrMap<SocketAddr, u16> = AddrMap::default();
        for port in 1..=2000u16 {
            m.insert(SocketAddr::from(([127, 0, 0, 1], port)), port);
            m.insert(SocketAddr::from(([10, 0, (port >> 8) as u8, port as u8], 80)), port);
        }
        assert_eq!(m.len(), 4000);
        assert_eq!(m.get(&"127.0.0.1:1234".parse().unwrap()), Some(&1234));
        assert_eq!(m.get(&"10.0.4.210:80".parse().unwrap()), Some(&1234));
        assert_eq!(m.get(&"127.0.0.2:1234".parse().unwrap()), None);
        // Neighbouring ports hash apart (no long probe runs in the table).
        let h = |p: u16| {
            let mut s = AddrHasher::default();
            std::hash::Hash::hash(&SocketAddr::from(([127, 0, 0, 1], p)), &mut s);
            s.finish()
        };
        assert_ne!(h(8080) >> 57, h(8081) >> 57);
        assert_ne!(h(8080) & 0xff, h(8081) & 0xff);
    }
}

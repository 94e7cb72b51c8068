//! Envoy response flags (`%RESPONSE_FLAGS%`): a small set, printed comma-separated in
//! Envoy's order (`UF,URX`), `-` when empty.

use std::fmt;

use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags(u16);

/// (flag, Envoy's short name), in the order Envoy prints them.
const NAMES: [(Flags, &str); 14] = [
    (Flags::UH, "UH"),
    (Flags::UT, "UT"),
    (Flags::UF, "UF"),
    (Flags::UC, "UC"),
    (Flags::UO, "UO"),
    (Flags::NR, "NR"),
    (Flags::DI, "DI"),
    (Flags::FI, "FI"),
    (Flags::RL, "RL"),
    (Flags::DC, "DC"),
    (Flags::URX, "URX"),
    (Flags::DPE, "DPE"),
    (Flags::NC, "NC"),
    (Flags::UPE, "UPE"),
];

impl Flags {
    /// No healthy upstream host.
    pub const UH: Flags = Flags(1);
    /// Upstream request timeout.
    pub const UT: Flags = Flags(1 << 1);
    /// Upstream connection failure.
    pub const UF: Flags = Flags(1 << 2);
    /// Upstream connection termination.
    pub const UC: Flags = Flags(1 << 3);
    /// Upstream overflow (circuit breaking).
    pub const UO: Flags = Flags(1 << 4);
    /// No route configured.
    pub const NR: Flags = Flags(1 << 5);
    /// Request delayed by fault injection.
    pub const DI: Flags = Flags(1 << 6);
    /// Request aborted by fault injection.
    pub const FI: Flags = Flags(1 << 7);
    /// Rate limited locally.
    pub const RL: Flags = Flags(1 << 8);
    /// Downstream connection termination.
    pub const DC: Flags = Flags(1 << 9);
    /// Upstream retry limit exceeded.
    pub const URX: Flags = Flags(1 << 10);
    /// Downstream protocol error.
    pub const DPE: Flags = Flags(1 << 11);
    /// No cluster found.
    pub const NC: Flags = Flags(1 << 12);
    /// Upstream protocol error (a malformed or oversized response head).
    pub const UPE: Flags = Flags(1 << 13);

    pub const NONE: Flags = Flags(0);

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn has(self, f: Flags) -> bool {
        self.0 & f.0 == f.0 && f.0 != 0
    }

    pub fn add(&mut self, f: Flags) {
        self.0 |= f.0;
    }

    /// Appends the flags as Envoy prints them (`UF,URX`, `-` when none).
    pub fn push_to(self, out: &mut String) {
        if self.is_empty() {
            out.push('-');
            return;
        }
        let mut first = true;
        for (flag, name) in NAMES {
            if self.has(flag) {
                if !first {
                    out.push(',');
                }
                out.push_str(name);
                first = false;
            }
        }
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        self.push_to(&mut s);
        f.write_str(&s)
    }
}

impl Serialize for Flags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_in_envoys_order() {
        assert_eq!(Flags::NONE.to_string(), "-");
        assert_eq!((Flags::URX | Flags::UF).to_string(), "UF,URX");
        assert_eq!((Flags::FI | Flags::DI).to_string(), "DI,FI");
        assert!((Flags::UT | Flags::DI).has(Flags::UT));
        assert!(!Flags::NONE.has(Flags::NONE));
    }
}

//! Restart decisions: the policy (`always | on-failure | never`) and exponential backoff,
//! doubling from 250ms to a 30s cap, reset once a process has stayed up for 10s.

use std::time::Duration;

use crate::config::mesh::RestartPolicy;

pub const INITIAL: Duration = Duration::from_millis(250);
pub const MAX: Duration = Duration::from_secs(30);
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// It could not be started at all.
    SpawnFailed,
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

pub fn should_restart(policy: RestartPolicy, exit: Exit) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => !exit.success(),
        RestartPolicy::Never => false,
    }
}

/// The delay before restart number `crashes` (1 = first restart) of a crash loop.
pub fn delay(crashes: u32) -> Duration {
    let shift = crashes.saturating_sub(1).min(16);
    INITIAL.saturating_mul(1 << shift).min(MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies() {
        assert!(should_restart(RestartPolicy::Always, Exit::Code(0)));
        assert!(!should_restart(RestartPolicy::OnFailure, Exit::Code(0)));
        assert!(should_restart(RestartPolicy::OnFailure, Exit::Code(1)));
        assert!(should_restart(RestartPolicy::OnFailure, Exit::Signal(9)));
        assert!(should_restart(RestartPolicy::OnFailure, Exit::SpawnFailed));
        assert!(!should_restart(RestartPolicy::Never, Exit::Code(1)));
    }

    #[test]
    fn exponential_and_capped() {
        assert_eq!(delay(1), Duration::from_millis(250));
        assert_eq!(delay(2), Duration::from_millis(500));
        assert_eq!(delay(3), Duration::from_secs(1));
        assert_eq!(delay(8), Duration::from_secs(30));
        assert_eq!(delay(200), MAX);
    }
}

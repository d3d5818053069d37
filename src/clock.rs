//! Wall-clock time as stevedore stores it (heartbeats, dead letters, ledgers): milliseconds
//! since the Unix epoch. Its own module so that sinks need not depend on the run state.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

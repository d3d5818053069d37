//! Operational counters of a run that only dashboards read (write latency buckets, throttled
//! requests, fencing rejections, worker restarts): one hash per run, added to with `HINCRBY`
//! in batches (a worker flushes its deltas once a heartbeat, and only when something changed),
//! so a scrape reads Redis and never asks a worker anything.
//!
//! These counters are approximate by design (a worker killed between two flushes loses its last
//! second); the exact results of a run are in the unit ledger.

use std::collections::HashMap;

use super::RunState;
use crate::queue::LinkError;

/// The telemetry part of a run's state ([`RunState::telemetry`]).
pub struct Telemetry<'a> {
    pub(super) state: &'a RunState,
}

impl Telemetry<'_> {
    /// Adds each `(field, delta)` in one round trip (nothing when `deltas` is empty).
    pub async fn add(&self, deltas: &[(String, u64)]) -> Result<(), LinkError> {
        if deltas.is_empty() {
            return Ok(());
        }
        let key = self.state.key("metrics");
        let mut pipe = redis::pipe();
        for (field, delta) in deltas {
            pipe.hincr(&key, field, *delta).ignore();
        }
        // A worker cut off after its run finished (and its keys expired) must not leave a hash
        // behind for ever: this one expires like a finished run's, and a live run renews it
        // with every flush.
        pipe.expire(&key, super::FINISHED_RUN_TTL_SECONDS).ignore();
        self.state
            .link
            .query_pipe("adding to the run's metrics", &pipe)
            .await
    }

    /// Every counter of the run.
    pub async fn read(&self) -> Result<HashMap<String, u64>, LinkError> {
        self.state
            .link
            .query(
                "reading the run's metrics",
                &redis::Cmd::hgetall(self.state.key("metrics")),
            )
            .await
    }
}

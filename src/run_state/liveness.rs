//! Heartbeats (workers say they are alive) and the drain flag (the supervisor says every
//! work item is done): how the processes of a run see each other.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::RunState;
use crate::clock::now_ms;
use crate::queue::LinkError;

/// A worker's last heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The worker's process id.
    pub pid: u32,
    /// When it beat, milliseconds since the epoch.
    pub at_ms: u64,
}

/// The liveness part of a run's state ([`RunState::liveness`]).
pub struct Liveness<'a> {
    pub(super) state: &'a RunState,
}

impl Liveness<'_> {
    /// Tells consumers that every work item is done: they stop once their queues are empty.
    pub async fn set_drain(&self) -> Result<(), LinkError> {
        self.state
            .link
            .query(
                "setting the drain flag",
                &redis::Cmd::set(self.state.key("drain"), 1),
            )
            .await
    }

    /// True once producers have finished every work item.
    pub async fn draining(&self) -> Result<bool, LinkError> {
        self.state
            .link
            .query(
                "reading the drain flag",
                &redis::Cmd::exists(self.state.key("drain")),
            )
            .await
    }

    /// Records that `worker` (process `pid`) is alive now.
    pub async fn beat(&self, worker: &str, pid: u32) -> Result<(), LinkError> {
        let beat = serde_json::to_string(&Heartbeat {
            pid,
            at_ms: now_ms(),
        })
        .expect("heartbeats serialize");
        self.state
            .link
            .query(
                "sending a heartbeat",
                &redis::Cmd::hset(self.state.key("heartbeats"), worker, beat),
            )
            .await
    }

    /// Every worker's last heartbeat.
    pub async fn heartbeats(&self) -> Result<HashMap<String, Heartbeat>, LinkError> {
        let raw: HashMap<String, String> = self
            .state
            .link
            .query(
                "reading heartbeats",
                &redis::Cmd::hgetall(self.state.key("heartbeats")),
            )
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|(worker, beat)| Some((worker, serde_json::from_str(&beat).ok()?)))
            .collect())
    }
}

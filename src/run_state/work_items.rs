//! The run's work items: planned once from a basis, claimed atomically by producers, each
//! completed with its exact read count; checkpoints say how much of an item is already on the
//! queues, so a restarted producer resumes it.

use std::sync::LazyLock;

use super::{FieldWrite, RunState};
use crate::queue::LinkError;
use crate::source::WorkItem;

/// Returns the item the producer already holds (it was restarted mid-item), else pops the next
/// pending item into the producer's slot of the held hash, atomically, so an item is never in
/// neither place: KEYS = pending list, held hash; ARGV = producer id.
static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local mine = redis.call('HGET', KEYS[2], ARGV[1])
        if mine then return mine end
        local item = redis.call('LPOP', KEYS[1])
        if item then redis.call('HSET', KEYS[2], ARGV[1], item) end
        return item",
    )
});

/// Stores the plan's basis and pushes the items in one step: KEYS = planned (holds the basis),
/// pending list; ARGV = basis, items... Returns {1, basis} for a new plan, {0, basis} when the
/// same basis was planned before, {-1, stored basis} when another one was.
static PLAN: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local stored = redis.call('GET', KEYS[1])
        if stored then
            if stored == ARGV[1] then return {0, stored} end
            return {-1, stored}
        end
        redis.call('SET', KEYS[1], ARGV[1])
        for i = 2, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
        return {1, ARGV[1]}",
    )
});

/// Records an item's count, marks it done (failed with ARGV[6] when not empty, else not
/// failed) and clears the producer's slot if it holds this item: KEYS = held hash, read
/// hash, done set, the job's fence counter, failed hash; ARGV = producer, item, item key,
/// count, fencing token ('' for none), failure. Returns the job's highest token, without
/// writing, when the given one is older; else -1.
static COMPLETE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        if ARGV[5] ~= '' then
            local highest = tonumber(redis.call('GET', KEYS[4]) or '0')
            if tonumber(ARGV[5]) < highest then return highest end
        end
        redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
        redis.call('SADD', KEYS[3], ARGV[3])
        if ARGV[6] ~= '' then
            redis.call('HSET', KEYS[5], ARGV[2], ARGV[6])
        else
            redis.call('HDEL', KEYS[5], ARGV[2])
        end
        if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
        return -1",
    )
});

/// Moves every held item back to the front of the pending list: KEYS = pending list, held hash.
static RELEASE_HELD: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local items = redis.call('HVALS', KEYS[2])
        for _, item in ipairs(items) do redis.call('LPUSH', KEYS[1], item) end
        redis.call('DEL', KEYS[2])
        return #items",
    )
});

/// Where a new reader of a work item may start: the source's own position after unit
/// `chunk - 1`, and how many input records the units before it held.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResumePoint {
    /// The number of the first unit cut from the position.
    pub chunk: u64,
    /// Input records in the units before it.
    pub read: u64,
    /// The source's note ([`crate::source::Entry::Resumable`]).
    pub position: String,
}

/// What [`RunState::plan`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Planned {
    /// This call made the plan.
    New,
    /// The run was planned before from the same basis; its plan stands.
    Kept,
    /// The run was planned from another basis: resuming it now would mis-id its units.
    Changed {
        /// The basis it was planned from.
        planned_from: String,
    },
}

/// The work-items part of a run's state ([`RunState::items`]).
pub struct WorkItems<'a> {
    pub(super) state: &'a RunState,
}

impl WorkItems<'_> {
    /// Queues `items` as the run's work, once, recording the `basis` they were planned from.
    /// A resumed run keeps the plan it had, and only under the same basis: flag, basis and
    /// items are written by one script, so a crash cannot leave a plan with no items.
    pub async fn plan(&self, items: &[WorkItem], basis: &str) -> Result<Planned, LinkError> {
        let keys = [self.state.key("planned"), self.state.key("items:pending")];
        let mut args = vec![basis.to_string()];
        args.extend(items.iter().map(WorkItem::encode));
        let (outcome, stored): (i64, String) = self
            .state
            .link
            .script("planning work items", &PLAN, &keys, &args)
            .await?;
        Ok(match outcome {
            1 => Planned::New,
            0 => Planned::Kept,
            _ => Planned::Changed {
                planned_from: stored,
            },
        })
    }

    /// The basis the run was planned from, if it was planned.
    pub async fn planned_basis(&self) -> Result<Option<String>, LinkError> {
        self.state
            .link
            .query(
                "reading the plan's basis",
                &redis::Cmd::get(self.state.key("planned")),
            )
            .await
    }

    /// Puts items held by producers that no longer run back in front of the pending list.
    /// Called before any producer starts, so every holder is gone.
    pub async fn release_held_items(&self) -> Result<u64, LinkError> {
        let keys = [
            self.state.key("items:pending"),
            self.state.key("items:held"),
        ];
        self.state
            .link
            .script("releasing held work items", &RELEASE_HELD, &keys, &[])
            .await
    }

    /// The next item for producer `producer`: the one it held when it last stopped, else a new one.
    pub async fn claim(&self, producer: u32) -> Result<Option<WorkItem>, LinkError> {
        let keys = [
            self.state.key("items:pending"),
            self.state.key("items:held"),
        ];
        let text: Option<String> = self
            .state
            .link
            .script(
                "claiming a work item",
                &CLAIM,
                &keys,
                &[producer.to_string()],
            )
            .await?;
        let key = format!("{} (field {producer})", self.state.key("items:held"));
        text.map(|text| decode("claiming a work item", key, text))
            .transpose()
    }

    /// Marks `item` done by `producer`, with the exact number of input records it held. The
    /// producer's slot is cleared only if it still holds this very item.
    pub async fn complete(
        &self,
        producer: u32,
        item: &WorkItem,
        read: u64,
    ) -> Result<(), LinkError> {
        self.finish(producer, item, read, None).await
    }

    async fn finish(
        &self,
        producer: u32,
        item: &WorkItem,
        read: u64,
        failure: Option<&str>,
    ) -> Result<(), LinkError> {
        let keys = [
            self.state.key("items:held"),
            self.state.key("read"),
            self.state.key("items:done"),
            RunState::fence_key(&self.state.job),
            self.state.key("items:failed"),
        ];
        let args = [
            producer.to_string(),
            item.encode(),
            item.key(),
            read.to_string(),
            self.state.fence_arg(),
            failure.unwrap_or_default().to_string(),
        ];
        let what = "completing a work item";
        let highest: i64 = self
            .state
            .link
            .script(what, &COMPLETE, &keys, &args)
            .await?;
        self.state.refused_if_stale(what, highest)
    }

    /// Work items not yet done: pending or held by a producer.
    pub async fn unfinished_items(&self) -> Result<u64, LinkError> {
        let mut pipe = redis::pipe();
        pipe.llen(self.state.key("items:pending"))
            .hlen(self.state.key("items:held"));
        let (waiting, holding): (u64, u64) = self
            .state
            .link
            .query_pipe("counting work items", &pipe)
            .await?;
        Ok(waiting + holding)
    }

    /// Records that the first `chunks` units of `item` are on the queues, and, for a source
    /// that can resume mid-item, where a new reader of the item may start; adds `read` to
    /// the live read counter of the item's source (one field per source, the total is their
    /// sum). All in one write.
    pub async fn set_checkpoint(
        &self,
        item: &WorkItem,
        chunks: u64,
        resume: Option<&ResumePoint>,
        read: u64,
    ) -> Result<(), LinkError> {
        let mut writes = vec![FieldWrite::set(
            self.state.key("checkpoint"),
            item.key(),
            chunks,
        )];
        if read > 0 {
            writes.push(FieldWrite::add(
                self.state.key("progress"),
                format!("read:{}", item.source),
                read,
            ));
        }
        if let Some(resume) = resume {
            writes.push(FieldWrite::set(
                self.state.key("resume"),
                item.key(),
                serde_json::to_string(resume).expect("a resume point always serializes"),
            ));
        }
        self.state
            .write_fields("saving a checkpoint", &writes)
            .await
    }

    /// Where a new reader of `item` may start, if an earlier one recorded a point.
    pub async fn resume_point(&self, item: &WorkItem) -> Result<Option<ResumePoint>, LinkError> {
        let text: Option<String> = self
            .state
            .link
            .query(
                "reading a resume point",
                &redis::Cmd::hget(self.state.key("resume"), item.key()),
            )
            .await?;
        let key = format!("{} (field {})", self.state.key("resume"), item.key());
        text.map(|text| decode("reading a resume point", key, text))
            .transpose()
    }

    /// Marks `item` failed by `producer` with `reason`, counting the `read` records that
    /// were sent before the failure: the item counts as done for this run (the other items
    /// go on and the run ends failed), and the next run of the job retries it from its
    /// checkpoint ([`WorkItems::retry_failed_items`]).
    pub async fn fail(
        &self,
        producer: u32,
        item: &WorkItem,
        read: u64,
        reason: &str,
    ) -> Result<(), LinkError> {
        self.finish(producer, item, read, Some(reason)).await
    }

    /// The items that failed in this run, with their reasons.
    pub async fn failed_items(&self) -> Result<Vec<(WorkItem, String)>, LinkError> {
        let failed: Vec<(String, String)> = self
            .state
            .link
            .query(
                "reading failed work items",
                &redis::Cmd::hgetall(self.state.key("items:failed")),
            )
            .await?;
        let key = self.state.key("items:failed");
        let mut items = failed
            .into_iter()
            .map(|(item, reason)| {
                Ok((
                    decode("reading failed work items", key.clone(), item)?,
                    reason,
                ))
            })
            .collect::<Result<Vec<(WorkItem, String)>, LinkError>>()?;
        items.sort_by(|a, b| (&a.0.source, a.0.index).cmp(&(&b.0.source, b.0.index)));
        Ok(items)
    }

    /// Puts the items that failed back in front of the pending list, to be read again from
    /// their checkpoints, and lowers the run's drain flag. Called when an unfinished run is
    /// resumed, before any worker starts.
    pub async fn retry_failed_items(&self) -> Result<u64, LinkError> {
        let failed = self.failed_items().await?;
        if failed.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        // Pushed to the front last to first, so they are read again in plan order.
        for (item, _) in failed.iter().rev() {
            pipe.srem(self.state.key("items:done"), item.key())
                .ignore()
                .lpush(self.state.key("items:pending"), item.encode())
                .ignore();
        }
        // The run had drained (its producers were done): its consumers must wait for these.
        pipe.del(self.state.key("items:failed"))
            .ignore()
            .del(self.state.key("drain"))
            .ignore();
        self.state
            .link
            .query_pipe::<()>("retrying failed work items", &pipe)
            .await?;
        Ok(failed.len() as u64)
    }

    /// How many units of `item` were already sent by an earlier attempt.
    pub async fn checkpoint(&self, item: &WorkItem) -> Result<u64, LinkError> {
        let chunks: Option<u64> = self
            .state
            .link
            .query(
                "reading a checkpoint",
                &redis::Cmd::hget(self.state.key("checkpoint"), item.key()),
            )
            .await?;
        Ok(chunks.unwrap_or_default())
    }
}

/// Reads a value stored as JSON at `key`; one that does not decode is an error naming it, not
/// "nothing there": a work item read as nothing would never be read at all.
fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    key: String,
    text: String,
) -> Result<T, LinkError> {
    serde_json::from_str(&text).map_err(|error| LinkError::Unreadable {
        what: what.to_string(),
        key,
        reason: error.to_string(),
        text,
    })
}

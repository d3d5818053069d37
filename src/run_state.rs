//! What one run keeps in Redis, so that any number of processes (and a later run after an
//! interruption) share it: the run id, the work items and who holds them, checkpoints,
//! exactly-counted results, live progress, heartbeats and the drain flag.
//!
//! Every counter that ends up in the summary is written idempotently (`HSET` keyed by work
//! item or unit id), so a redelivered unit or a re-read work item is never counted twice.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::queue::{LinkError, RedisLink};
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

/// Records an item's count, marks it done and clears the producer's slot if it holds this
/// item: KEYS = held hash, read hash, done set; ARGV = producer, item, item key, count.
static COMPLETE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
        redis.call('SADD', KEYS[3], ARGV[3])
        if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
        return 1",
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

/// Deletes KEYS[1] only if it still holds ARGV[1], so finishing an old run never clears a newer one.
static DELETE_IF_EQUAL: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
        return 0",
    )
});

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

/// A worker's last heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The worker's process id.
    pub pid: u32,
    /// When it beat, milliseconds since the epoch.
    pub at_ms: u64,
}

/// Exact results of a run, summed from the idempotent hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Input records read (rejected lines included).
    pub read: u64,
    /// Per sink: records written.
    pub written: HashMap<String, u64>,
    /// Per sink: records dead-lettered.
    pub dead: HashMap<String, u64>,
}

/// Live counters for a progress display (approximate under redelivery).
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Records read so far.
    pub read: u64,
    /// Per sink: records written so far.
    pub written: HashMap<String, u64>,
    /// Per sink: records dead-lettered so far.
    pub dead: HashMap<String, u64>,
}

/// Handle on one run's state.
#[derive(Clone)]
pub struct RunState {
    link: Arc<RedisLink>,
    job: String,
    run: String,
}

/// A fresh run id: the UTC start time, e.g. `20261122T153000Z`, plus a few random hex digits.
pub fn new_run_id() -> String {
    let now = SystemTime::now();
    let stamp = humantime::format_rfc3339_seconds(now)
        .to_string()
        .replace(['-', ':'], "");
    let nanos = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{stamp}-{:04x}", (nanos ^ std::process::id()) & 0xffff)
}

/// How long a finished run's keys stay in Redis: a week, for `status` and post-mortems.
pub const FINISHED_RUN_TTL_SECONDS: i64 = 7 * 24 * 3600;

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RunState {
    /// The state of run `run` of job `job`.
    pub fn new(link: Arc<RedisLink>, job: &str, run: &str) -> RunState {
        RunState {
            link,
            job: job.to_string(),
            run: run.to_string(),
        }
    }

    /// Opens the job's unfinished run if there is one (`resumed = true`), else starts `fresh`.
    pub async fn begin(
        link: Arc<RedisLink>,
        job: &str,
        fresh: &str,
    ) -> Result<(RunState, bool), LinkError> {
        let key = format!("stevedore:{job}:current_run");
        let created: bool = link
            .query(
                "starting the run",
                redis::cmd("SET").arg(&key).arg(fresh).arg("NX"),
            )
            .await
            .map(|r: Option<String>| r.is_some())?;
        let run = if created {
            fresh.to_string()
        } else {
            link.query("reading the current run", &redis::Cmd::get(&key))
                .await?
        };
        Ok((RunState::new(link, job, &run), !created))
    }

    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.run
    }

    fn key(&self, suffix: &str) -> String {
        format!("stevedore:{}:run:{}:{suffix}", self.job, self.run)
    }

    /// Every key this run may have written.
    fn keys(&self, sinks: &[String]) -> Vec<String> {
        let fixed = [
            "planned",
            "items:pending",
            "items:held",
            "items:done",
            "read",
            "checkpoint",
            "progress",
            "drain",
            "heartbeats",
        ];
        let per_sink = sinks
            .iter()
            .flat_map(|sink| ["written", "dead", "attempts"].map(|kind| format!("{kind}:{sink}")));
        fixed
            .into_iter()
            .map(str::to_string)
            .chain(per_sink)
            .map(|suffix| self.key(&suffix))
            .collect()
    }

    /// Marks the run finished, so the next `stevedore run` starts a fresh one, and lets the
    /// run's keys expire after [`FINISHED_RUN_TTL_SECONDS`] (kept a while for inspection).
    pub async fn finish(&self, sinks: &[String]) -> Result<(), LinkError> {
        let current = format!("stevedore:{}:current_run", self.job);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for key in self.keys(sinks) {
            pipe.expire(key, FINISHED_RUN_TTL_SECONDS).ignore();
        }
        self.link
            .query_pipe::<()>("expiring the run's keys", &pipe)
            .await?;
        self.link
            .script(
                "finishing the run",
                &DELETE_IF_EQUAL,
                &[current],
                std::slice::from_ref(&self.run),
            )
            .await
    }

    /// Queues `items` as the run's work, once, recording the `basis` they were planned from.
    /// A resumed run keeps the plan it had, and only under the same basis: flag, basis and
    /// items are written by one script, so a crash cannot leave a plan with no items.
    pub async fn plan(&self, items: &[WorkItem], basis: &str) -> Result<Planned, LinkError> {
        let keys = [self.key("planned"), self.key("items:pending")];
        let mut args = vec![basis.to_string()];
        args.extend(items.iter().map(WorkItem::encode));
        let (outcome, stored): (i64, String) = self
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

    /// Puts items held by producers that no longer run back in front of the pending list.
    /// Called before any producer starts, so every holder is gone.
    pub async fn release_held_items(&self) -> Result<u64, LinkError> {
        let keys = [self.key("items:pending"), self.key("items:held")];
        self.link
            .script("releasing held work items", &RELEASE_HELD, &keys, &[])
            .await
    }

    /// The next item for producer `producer`: the one it held when it last stopped, else a new one.
    pub async fn claim(&self, producer: u32) -> Result<Option<WorkItem>, LinkError> {
        let keys = [self.key("items:pending"), self.key("items:held")];
        let text: Option<String> = self
            .link
            .script(
                "claiming a work item",
                &CLAIM,
                &keys,
                &[producer.to_string()],
            )
            .await?;
        Ok(text.and_then(|text| serde_json::from_str(&text).ok()))
    }

    /// Marks `item` done by `producer`, with the exact number of input records it held. The
    /// producer's slot is cleared only if it still holds this very item.
    pub async fn complete(
        &self,
        producer: u32,
        item: &WorkItem,
        read: u64,
    ) -> Result<(), LinkError> {
        let keys = [
            self.key("items:held"),
            self.key("read"),
            self.key("items:done"),
        ];
        let args = [
            producer.to_string(),
            item.encode(),
            item.key(),
            read.to_string(),
        ];
        self.link
            .script::<i64>("completing a work item", &COMPLETE, &keys, &args)
            .await
            .map(drop)
    }

    /// Work items not yet done: pending or held by a producer.
    pub async fn unfinished_items(&self) -> Result<u64, LinkError> {
        let mut pipe = redis::pipe();
        pipe.llen(self.key("items:pending"))
            .hlen(self.key("items:held"));
        let (waiting, holding): (u64, u64) =
            self.link.query_pipe("counting work items", &pipe).await?;
        Ok(waiting + holding)
    }

    /// Records that the first `chunks` units of `item` are on the queues.
    pub async fn set_checkpoint(&self, item: &WorkItem, chunks: u64) -> Result<(), LinkError> {
        self.link
            .query(
                "saving a checkpoint",
                &redis::Cmd::hset(self.key("checkpoint"), item.key(), chunks),
            )
            .await
    }

    /// How many units of `item` were already sent by an earlier attempt.
    pub async fn checkpoint(&self, item: &WorkItem) -> Result<u64, LinkError> {
        let chunks: Option<u64> = self
            .link
            .query(
                "reading a checkpoint",
                &redis::Cmd::hget(self.key("checkpoint"), item.key()),
            )
            .await?;
        Ok(chunks.unwrap_or_default())
    }

    /// Adds to the live read counter.
    pub async fn add_read_progress(&self, records: u64) -> Result<(), LinkError> {
        self.link
            .query(
                "updating progress",
                &redis::Cmd::hincr(self.key("progress"), "read", records),
            )
            .await
    }

    /// Records, idempotently, what applying `unit` to `sink` did; `fresh` adds to live progress.
    pub async fn record_unit(
        &self,
        sink: &str,
        unit: &str,
        written: u64,
        dead: u64,
        fresh: bool,
    ) -> Result<(), LinkError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(self.key(&format!("written:{sink}")), unit, written)
            .hset(self.key(&format!("dead:{sink}")), unit, dead);
        if fresh {
            let progress = self.key("progress");
            pipe.hincr(&progress, format!("written:{sink}"), written)
                .hincr(&progress, format!("dead:{sink}"), dead);
        }
        pipe.ignore();
        self.link
            .query_pipe("recording a written unit", &pipe)
            .await
    }

    /// Records that a whole unit of `records` inputs went to `sink`'s dead-letter queue.
    pub async fn record_dead_unit(
        &self,
        sink: &str,
        unit: &str,
        records: u64,
    ) -> Result<(), LinkError> {
        self.link
            .query(
                "recording a dead unit",
                &redis::Cmd::hset(self.key(&format!("dead:{sink}")), unit, records),
            )
            .await
    }

    /// Starts a write attempt of `unit` on `sink`, in one round trip: `None` when the unit was
    /// already fully handled (only its acknowledgement is missing), else the attempt number.
    pub async fn begin_attempt(&self, sink: &str, unit: &str) -> Result<Option<u64>, LinkError> {
        let mut pipe = redis::pipe();
        pipe.hexists(self.key(&format!("written:{sink}")), unit)
            .hincr(self.key(&format!("attempts:{sink}")), unit, 1);
        let (recorded, attempt): (bool, u64) =
            self.link.query_pipe("starting an attempt", &pipe).await?;
        Ok((!recorded).then_some(attempt))
    }

    /// The exact totals for `sinks`.
    pub async fn totals(&self, sinks: &[String]) -> Result<Totals, LinkError> {
        let mut totals = Totals {
            read: self.sum_hash(self.key("read")).await?,
            ..Totals::default()
        };
        for sink in sinks {
            totals.written.insert(
                sink.clone(),
                self.sum_hash(self.key(&format!("written:{sink}"))).await?,
            );
            totals.dead.insert(
                sink.clone(),
                self.sum_hash(self.key(&format!("dead:{sink}"))).await?,
            );
        }
        Ok(totals)
    }

    /// Units of `sink` recorded as written, with their counts.
    pub async fn written_units(&self, sink: &str) -> Result<HashMap<String, u64>, LinkError> {
        self.link
            .query(
                "reading written units",
                &redis::Cmd::hgetall(self.key(&format!("written:{sink}"))),
            )
            .await
    }

    async fn sum_hash(&self, key: String) -> Result<u64, LinkError> {
        let values: Vec<u64> = self
            .link
            .query("summing counters", &redis::Cmd::hvals(key))
            .await?;
        Ok(values.iter().sum())
    }

    /// The live counters.
    pub async fn progress(&self) -> Result<Progress, LinkError> {
        let fields: HashMap<String, u64> = self
            .link
            .query(
                "reading progress",
                &redis::Cmd::hgetall(self.key("progress")),
            )
            .await?;
        let mut progress = Progress::default();
        for (field, value) in fields {
            match field.split_once(':') {
                None if field == "read" => progress.read = value,
                Some(("written", sink)) => drop(progress.written.insert(sink.to_string(), value)),
                Some(("dead", sink)) => drop(progress.dead.insert(sink.to_string(), value)),
                _ => {}
            }
        }
        Ok(progress)
    }

    /// Tells consumers that every work item is done: they stop once their queues are empty.
    pub async fn set_drain(&self) -> Result<(), LinkError> {
        self.link
            .query(
                "setting the drain flag",
                &redis::Cmd::set(self.key("drain"), 1),
            )
            .await
    }

    /// True once producers have finished every work item.
    pub async fn draining(&self) -> Result<bool, LinkError> {
        self.link
            .query(
                "reading the drain flag",
                &redis::Cmd::exists(self.key("drain")),
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
        self.link
            .query(
                "sending a heartbeat",
                &redis::Cmd::hset(self.key("heartbeats"), worker, beat),
            )
            .await
    }

    /// Every worker's last heartbeat.
    pub async fn heartbeats(&self) -> Result<HashMap<String, Heartbeat>, LinkError> {
        let raw: HashMap<String, String> = self
            .link
            .query(
                "reading heartbeats",
                &redis::Cmd::hgetall(self.key("heartbeats")),
            )
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|(worker, beat)| Some((worker, serde_json::from_str(&beat).ok()?)))
            .collect())
    }
}

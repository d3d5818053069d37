//! What one run keeps in Redis, so that any number of processes (and a later run after an
//! interruption) share it: the run id, the work items and who holds them, checkpoints,
//! exactly-counted results, live progress, heartbeats and the drain flag.
//!
//! Every counter that ends up in the summary is written idempotently (`HSET` keyed by work
//! item or unit id), so a redelivered unit or a re-read work item is never counted twice.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::queue::{LinkError, RedisLink};

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

/// One piece of source work handed to one producer: a file, or a range of generated records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkItem {
    /// The source's name.
    pub source: String,
    /// Position of this item among its source's items; part of unit ids.
    pub index: u64,
    /// A file path, or `generator`.
    pub origin: String,
    /// For generated records: the half-open range of record numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<(u64, u64)>,
}

impl WorkItem {
    /// A stable key for per-item hashes.
    pub fn key(&self) -> String {
        format!("{}/{}", self.source, self.index)
    }

    fn encode(&self) -> String {
        serde_json::to_string(self).expect("work items always serialize")
    }
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
        let (run, resumed) = link
            .call("starting the run", |mut c| {
                let key = key.clone();
                async move {
                    let created: bool = c.redis.set_nx(&key, fresh).await?;
                    if created {
                        return Ok((fresh.to_string(), false));
                    }
                    let existing: String = c.redis.get(&key).await?;
                    Ok((existing, true))
                }
            })
            .await?;
        Ok((RunState::new(link, job, &run), resumed))
    }

    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.run
    }

    fn key(&self, suffix: &str) -> String {
        format!("stevedore:{}:run:{}:{suffix}", self.job, self.run)
    }

    /// Marks the run finished, so the next `stevedore run` starts a fresh one, and lets the
    /// run's keys expire after [`FINISHED_RUN_TTL_SECONDS`] (kept a while for inspection).
    pub async fn finish(&self) -> Result<(), LinkError> {
        let current = format!("stevedore:{}:current_run", self.job);
        let pattern = self.key("*");
        self.link
            .call("finishing the run", |mut c| {
                let (current, pattern) = (current.clone(), pattern.clone());
                async move {
                    let existing: Option<String> = c.redis.get(&current).await?;
                    if existing.as_deref() == Some(self.run.as_str()) {
                        let _: () = c.redis.del(&current).await?;
                    }
                    let keys: Vec<String> = {
                        let mut iter = c.redis.scan_match::<_, String>(&pattern).await?;
                        let mut keys = Vec::new();
                        while let Some(key) = iter.next_item().await {
                            keys.push(key?);
                        }
                        keys
                    };
                    let mut pipe = redis::pipe();
                    for key in &keys {
                        pipe.expire(key, FINISHED_RUN_TTL_SECONDS).ignore();
                    }
                    pipe.query_async::<()>(&mut c.redis).await?;
                    Ok(())
                }
            })
            .await
    }

    /// Queues `items` as the run's work, once: a resumed run keeps the plan it had.
    pub async fn plan(&self, items: &[WorkItem]) -> Result<bool, LinkError> {
        let (planned, pending) = (self.key("planned"), self.key("items:pending"));
        let encoded: Vec<String> = items.iter().map(WorkItem::encode).collect();
        self.link
            .call("planning work items", |mut c| {
                let (planned, pending, encoded) =
                    (planned.clone(), pending.clone(), encoded.clone());
                async move {
                    let first: bool = c.redis.set_nx(&planned, encoded.len()).await?;
                    if first && !encoded.is_empty() {
                        let _: () = c.redis.rpush(&pending, encoded).await?;
                    }
                    Ok(first)
                }
            })
            .await
    }

    /// Puts items held by producers that no longer run back in front of the pending list.
    /// Called before any producer starts, so every holder is gone.
    pub async fn release_held_items(&self) -> Result<u64, LinkError> {
        let (pending, held) = (self.key("items:pending"), self.key("items:held"));
        self.link
            .call("releasing held work items", |mut c| {
                let (pending, held) = (pending.clone(), held.clone());
                async move {
                    RELEASE_HELD
                        .key(&pending)
                        .key(&held)
                        .invoke_async(&mut c.redis)
                        .await
                        .map_err(Into::into)
                }
            })
            .await
    }

    /// The next item for producer `producer`: the one it held when it last stopped, else a new one.
    pub async fn claim(&self, producer: u32) -> Result<Option<WorkItem>, LinkError> {
        let (pending, held) = (self.key("items:pending"), self.key("items:held"));
        let text: Option<String> = self
            .link
            .call("claiming a work item", |mut c| {
                let (pending, held) = (pending.clone(), held.clone());
                async move {
                    CLAIM
                        .key(&pending)
                        .key(&held)
                        .arg(producer)
                        .invoke_async(&mut c.redis)
                        .await
                        .map_err(Into::into)
                }
            })
            .await?;
        Ok(text.and_then(|text| serde_json::from_str(&text).ok()))
    }

    /// Marks `item` done by `producer`, with the exact number of input records it held.
    pub async fn complete(
        &self,
        producer: u32,
        item: &WorkItem,
        read: u64,
    ) -> Result<(), LinkError> {
        let (held, read_key, done) = (
            self.key("items:held"),
            self.key("read"),
            self.key("items:done"),
        );
        let item_key = item.key();
        self.link
            .call("completing a work item", |mut c| {
                let (held, read_key, done, item_key) = (
                    held.clone(),
                    read_key.clone(),
                    done.clone(),
                    item_key.clone(),
                );
                async move {
                    redis::pipe()
                        .atomic()
                        .hset(&read_key, &item_key, read)
                        .sadd(&done, &item_key)
                        .hdel(&held, producer)
                        .query_async::<()>(&mut c.redis)
                        .await
                        .map_err(Into::into)
                }
            })
            .await
    }

    /// Work items not yet done: pending or held by a producer.
    pub async fn unfinished_items(&self) -> Result<u64, LinkError> {
        let (pending, held) = (self.key("items:pending"), self.key("items:held"));
        self.link
            .call("counting work items", |mut c| {
                let (pending, held) = (pending.clone(), held.clone());
                async move {
                    let (waiting, holding): (u64, u64) = redis::pipe()
                        .llen(&pending)
                        .hlen(&held)
                        .query_async(&mut c.redis)
                        .await?;
                    Ok(waiting + holding)
                }
            })
            .await
    }

    /// Records that the first `chunks` units of `item` are on the queues.
    pub async fn set_checkpoint(&self, item: &WorkItem, chunks: u64) -> Result<(), LinkError> {
        let (key, field) = (self.key("checkpoint"), item.key());
        self.link
            .call("saving a checkpoint", |mut c| {
                let (key, field) = (key.clone(), field.clone());
                async move {
                    c.redis
                        .hset::<_, _, _, ()>(&key, &field, chunks)
                        .await
                        .map_err(Into::into)
                }
            })
            .await
    }

    /// How many units of `item` were already sent by an earlier attempt.
    pub async fn checkpoint(&self, item: &WorkItem) -> Result<u64, LinkError> {
        let (key, field) = (self.key("checkpoint"), item.key());
        self.link
            .call("reading a checkpoint", |mut c| {
                let (key, field) = (key.clone(), field.clone());
                async move {
                    c.redis
                        .hget::<_, _, Option<u64>>(&key, &field)
                        .await
                        .map(Option::unwrap_or_default)
                        .map_err(Into::into)
                }
            })
            .await
    }

    /// Adds to the live read counter.
    pub async fn add_read_progress(&self, records: u64) -> Result<(), LinkError> {
        let key = self.key("progress");
        self.link
            .call("updating progress", |mut c| {
                let key = key.clone();
                async move {
                    c.redis
                        .hincr::<_, _, _, ()>(&key, "read", records)
                        .await
                        .map_err(Into::into)
                }
            })
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
        let (written_key, dead_key, progress) = (
            self.key(&format!("written:{sink}")),
            self.key(&format!("dead:{sink}")),
            self.key("progress"),
        );
        self.link
            .call("recording a written unit", |mut c| {
                let (written_key, dead_key, progress) =
                    (written_key.clone(), dead_key.clone(), progress.clone());
                async move {
                    let mut pipe = redis::pipe();
                    pipe.atomic()
                        .hset(&written_key, unit, written)
                        .hset(&dead_key, unit, dead);
                    if fresh {
                        pipe.hincr(&progress, format!("written:{sink}"), written)
                            .hincr(&progress, format!("dead:{sink}"), dead);
                    }
                    pipe.query_async::<()>(&mut c.redis)
                        .await
                        .map_err(Into::into)
                }
            })
            .await
    }

    /// Records that a whole unit of `records` inputs went to `sink`'s dead-letter queue.
    pub async fn record_dead_unit(
        &self,
        sink: &str,
        unit: &str,
        records: u64,
    ) -> Result<(), LinkError> {
        let key = self.key(&format!("dead:{sink}"));
        self.link
            .call("recording a dead unit", |mut c| {
                let key = key.clone();
                async move {
                    c.redis
                        .hset::<_, _, _, ()>(&key, unit, records)
                        .await
                        .map_err(Into::into)
                }
            })
            .await
    }

    /// True when `unit` was fully handled for `sink` (written, dead letters sent, counted).
    pub async fn is_recorded(&self, sink: &str, unit: &str) -> Result<bool, LinkError> {
        let key = self.key(&format!("written:{sink}"));
        self.link
            .call("checking a unit", |mut c| {
                let key = key.clone();
                async move { c.redis.hexists(&key, unit).await.map_err(Into::into) }
            })
            .await
    }

    /// The exact totals for `sinks`.
    pub async fn totals(&self, sinks: &[String]) -> Result<Totals, LinkError> {
        let read = self.sum_hash(self.key("read")).await?;
        let mut totals = Totals {
            read,
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
        let key = self.key(&format!("written:{sink}"));
        self.link
            .call("reading written units", |mut c| {
                let key = key.clone();
                async move { c.redis.hgetall(&key).await.map_err(Into::into) }
            })
            .await
    }

    async fn sum_hash(&self, key: String) -> Result<u64, LinkError> {
        self.link
            .call("summing counters", |mut c| {
                let key = key.clone();
                async move {
                    let values: Vec<u64> = c.redis.hvals(&key).await?;
                    Ok(values.iter().sum())
                }
            })
            .await
    }

    /// The live counters.
    pub async fn progress(&self) -> Result<Progress, LinkError> {
        let key = self.key("progress");
        let fields: HashMap<String, u64> = self
            .link
            .call("reading progress", |mut c| {
                let key = key.clone();
                async move { c.redis.hgetall(&key).await.map_err(Into::into) }
            })
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
        let key = self.key("drain");
        self.link
            .call("setting the drain flag", |mut c| {
                let key = key.clone();
                async move { c.redis.set::<_, _, ()>(&key, 1).await.map_err(Into::into) }
            })
            .await
    }

    /// True once producers have finished every work item.
    pub async fn draining(&self) -> Result<bool, LinkError> {
        let key = self.key("drain");
        self.link
            .call("reading the drain flag", |mut c| {
                let key = key.clone();
                async move { c.redis.exists(&key).await.map_err(Into::into) }
            })
            .await
    }

    /// Records that `worker` (process `pid`) is alive now.
    pub async fn beat(&self, worker: &str, pid: u32) -> Result<(), LinkError> {
        let key = self.key("heartbeats");
        let beat = serde_json::to_string(&Heartbeat {
            pid,
            at_ms: now_ms(),
        })
        .expect("heartbeats serialize");
        self.link
            .call("sending a heartbeat", |mut c| {
                let (key, beat) = (key.clone(), beat.clone());
                async move {
                    c.redis
                        .hset::<_, _, _, ()>(&key, worker, beat)
                        .await
                        .map_err(Into::into)
                }
            })
            .await
    }

    /// Every worker's last heartbeat.
    pub async fn heartbeats(&self) -> Result<HashMap<String, Heartbeat>, LinkError> {
        let key = self.key("heartbeats");
        let raw: HashMap<String, String> = self
            .link
            .call("reading heartbeats", |mut c| {
                let key = key.clone();
                async move { c.redis.hgetall(&key).await.map_err(Into::into) }
            })
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|(worker, beat)| Some((worker, serde_json::from_str(&beat).ok()?)))
            .collect())
    }
}

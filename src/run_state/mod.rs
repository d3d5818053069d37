//! What one run keeps in Redis, so that any number of processes (and a later run after an
//! interruption) share it: the run id, the work items and who holds them, checkpoints,
//! exactly-counted results, live progress, heartbeats and the drain flag.
//!
//! Every counter that ends up in the summary is written idempotently (`HSET` keyed by work
//! item or unit id), so a redelivered unit or a re-read work item is never counted twice.

use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::queue::{LinkError, RedisLink};

mod ledger;
mod liveness;
mod telemetry;
mod work_items;

pub use ledger::{Progress, Totals, UnitDone, UnitLedger};
pub use liveness::{Heartbeat, Liveness};
pub use telemetry::Telemetry;
pub use work_items::{Planned, ResumePoint, WorkItems};

/// Deletes KEYS[1] only if it still holds ARGV[1], so finishing an old run never clears a newer one.
static DELETE_IF_EQUAL: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
        return 0",
    )
});

/// Writes run-state fields only if the writer's fencing token is not older than the job's
/// highest: KEYS = the job's fence counter, then one key per write; ARGV = token, then per
/// write its command (HSET or HINCRBY), field and value. Returns -1, or the highest token.
static FENCED_WRITES: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local highest = tonumber(redis.call('GET', KEYS[1]) or '0')
        if tonumber(ARGV[1]) < highest then return highest end
        for i = 2, #KEYS do
            local at = 2 + (i - 2) * 3
            redis.call(ARGV[at], KEYS[i], ARGV[at + 1], ARGV[at + 2])
        end
        return -1",
    )
});

/// Handle on one run's state.
#[derive(Clone)]
pub struct RunState {
    link: Arc<RedisLink>,
    job: String,
    run: String,
    /// The fencing token of the process writing (a worker of the run), if it checks one.
    fence: Option<u64>,
}

/// One field write of a fenced group: `HSET` or `HINCRBY` `key` `field` `value`.
pub(crate) struct FieldWrite {
    command: &'static str,
    key: String,
    field: String,
    value: String,
}

impl FieldWrite {
    pub(crate) fn set(key: String, field: impl Into<String>, value: impl ToString) -> FieldWrite {
        FieldWrite {
            command: "HSET",
            key,
            field: field.into(),
            value: value.to_string(),
        }
    }

    pub(crate) fn add(key: String, field: impl Into<String>, value: impl ToString) -> FieldWrite {
        FieldWrite {
            command: "HINCRBY",
            key,
            field: field.into(),
            value: value.to_string(),
        }
    }
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

impl RunState {
    /// The state of run `run` of job `job`.
    pub fn new(link: Arc<RedisLink>, job: &str, run: &str) -> RunState {
        RunState {
            link,
            job: job.to_string(),
            run: run.to_string(),
            fence: None,
        }
    }

    /// The same state written under fencing token `token`: the writes that record progress
    /// (units written, items done, checkpoints) are refused once a newer holder of the job's
    /// lock exists, with [`LinkError::Fenced`].
    pub fn fenced(mut self, token: u64) -> RunState {
        self.fence = Some(token);
        self
    }

    /// The key naming `job`'s unfinished run (`status` reads it too).
    pub fn current_run_key(job: &str) -> String {
        format!("stevedore:{job}:current_run")
    }

    /// The job's fence counter: the highest token granted (see the job lock).
    pub(crate) fn fence_key(job: &str) -> String {
        format!("stevedore:{job}:fence")
    }

    /// Writes `writes` atomically, refused if this state is fenced and a newer token exists.
    pub(crate) async fn write_fields(
        &self,
        what: &str,
        writes: &[FieldWrite],
    ) -> Result<(), LinkError> {
        let Some(token) = self.fence else {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for write in writes {
                pipe.cmd(write.command)
                    .arg(&write.key)
                    .arg(&write.field)
                    .arg(&write.value)
                    .ignore();
            }
            return self.link.query_pipe(what, &pipe).await;
        };
        let mut keys = vec![Self::fence_key(&self.job)];
        let mut args = vec![token.to_string()];
        for write in writes {
            keys.push(write.key.clone());
            args.extend([
                write.command.to_string(),
                write.field.clone(),
                write.value.clone(),
            ]);
        }
        let highest: i64 = self.link.script(what, &FENCED_WRITES, &keys, &args).await?;
        self.refused_if_stale(what, highest)
    }

    /// The fencing token this state writes under, if any.
    pub(crate) fn fence(&self) -> Option<u64> {
        self.fence
    }

    /// The fencing token as a script argument: '' when this state writes unfenced.
    pub(crate) fn fence_arg(&self) -> String {
        self.fence
            .map(|token| token.to_string())
            .unwrap_or_default()
    }

    /// The meaning of a fenced write script's answer: -1 when it wrote, else the job's highest
    /// token, which refuses this writer ([`LinkError::Fenced`]).
    pub(crate) fn refused_if_stale(&self, what: &str, highest: i64) -> Result<(), LinkError> {
        match self.fence {
            Some(token) if highest >= 0 => Err(LinkError::Fenced {
                what: what.to_string(),
                token,
                highest: highest as u64,
            }),
            _ => Ok(()),
        }
    }

    /// Opens the job's unfinished run if there is one (`resumed = true`), else starts `fresh`.
    pub async fn begin(
        link: Arc<RedisLink>,
        job: &str,
        fresh: &str,
    ) -> Result<(RunState, bool), LinkError> {
        let key = Self::current_run_key(job);
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

    /// The Redis this state lives in (sources share limits and tokens through it).
    pub fn link(&self) -> &Arc<RedisLink> {
        &self.link
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
            "metrics",
        ];
        let per_sink = sinks.iter().flat_map(|sink| {
            ["written", "dead", "attempts", "errors", "columns"]
                .map(|kind| format!("{kind}:{sink}"))
        });
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
        let current = Self::current_run_key(&self.job);
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

    /// The run's work items, their checkpoints and the read counters: the producers' part,
    /// and the supervisor's when it plans.
    pub fn items(&self) -> WorkItems<'_> {
        WorkItems { state: self }
    }

    /// What each unit did at each sink, counted exactly: the consumers' part, and the
    /// supervisor's when it sums up.
    pub fn ledger(&self) -> UnitLedger<'_> {
        UnitLedger { state: self }
    }

    /// Heartbeats and the drain flag: how workers and the supervisor see each other.
    pub fn liveness(&self) -> Liveness<'_> {
        Liveness { state: self }
    }

    /// Counters only dashboards read: write latency, throttling, restarts, fencing.
    pub fn telemetry(&self) -> Telemetry<'_> {
        Telemetry { state: self }
    }

    /// The job this state belongs to.
    pub fn job(&self) -> &str {
        &self.job
    }
}

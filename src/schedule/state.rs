//! What a group of daemons keeps in Redis, per schedule: progress only (the supervise file is
//! the truth for what is scheduled). Every change is one Lua script, and every script reads the
//! time from Redis `TIME`: hosts whose clocks disagree still agree on which slot is due and who
//! runs it.
//!
//! Keys, under `stevedore:supervise:<group>:`
//! - `schedule:<name>` (hash): `last_slot`, `checked_at`, `signature`, `next_fire`, `running`
//!   (the pass, JSON), `stop`, `paused` (JSON), `last_start`, `last_finish`, `last_outcome`,
//!   `last_exit`, `failures` (consecutive), `missed`, `skipped`, `passes` (a counter naming them).
//! - `schedule:<name>:pending` (list): slots waiting to run, JSON, oldest first.
//! - `schedule:<name>:lease` (string with a TTL): the daemon answerable for the running pass.
//!   It is renewed while the pass lives; when it lapses (the daemon died), another daemon takes
//!   the pass over and runs it again, which resumes its run.
//! - `schedule:<name>:recent` (list): the last 50 passes and skipped or missed slots, newest first.
//! - `daemons` (hash): each live daemon's host, pid, environment and last heartbeat.
//! - `read_only` (string): while it exists, every pass of the group runs with `--dry-run`.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::slots::{Decision, Observed};
use crate::queue::{LinkError, RedisLink};

/// How long a daemon's lease on a running pass outlives the daemon. Longer than the job lock
/// (15 s) that the pass itself holds, so that the pass of a daemon that died has let go of
/// the job before another daemon starts it again.
pub const LEASE_TTL: Duration = Duration::from_secs(20);

/// How many passes (and skipped or missed slots) each schedule remembers.
pub const RECENT: isize = 50;

/// One slot waiting to run, or the pass running it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassEntry {
    /// The slot (ms, UTC); for a triggered pass, when it was triggered.
    pub slot: i64,
    /// 1 for the first attempt of the slot, then one more per retry.
    #[serde(default = "first")]
    pub attempt: u32,
    /// Triggered by `stevedore trigger`.
    #[serde(default)]
    pub manual: bool,
    /// Not to start before this (a retry waits `retry_delay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<i64>,
    /// The pass's number within the schedule (set when it starts; `stop` names it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass: Option<u64>,
    /// The daemon answerable for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<String>,
    /// The daemon's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The pass's process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// When it started (ms, Redis time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    /// How many times a daemon took the pass over from one that died.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub takeovers: u32,
    /// Where its log and summary are, on its host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
}

fn first() -> u32 {
    1
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One line of a schedule's history: a pass, or a slot that did not run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentEntry {
    /// The slot (ms, UTC).
    pub slot: i64,
    /// The run id of the pass (`null` for a slot that did not run).
    pub run: Option<String>,
    /// The host it ran on.
    pub host: Option<String>,
    /// The pass's process.
    pub pid: Option<u32>,
    /// When it started (ms).
    pub started_at: Option<i64>,
    /// When it ended (ms).
    pub finished_at: Option<i64>,
    /// ok, dead_letters, failed, timed_out, stopped, skipped or missed.
    pub outcome: String,
    /// The pass's exit code, when it exited with one.
    pub exit_code: Option<i32>,
    /// Which attempt of the slot.
    #[serde(default)]
    pub attempt: u32,
    /// Triggered by hand.
    #[serde(default)]
    pub manual: bool,
    /// The pass's number within the schedule (alerts count passes by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass: Option<u64>,
    /// Its directory (log and summary) on `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// Why it failed, from its summary (`reason`), for alerts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl RecentEntry {
    /// A slot that never ran: `outcome` is `skipped` or `missed`.
    pub fn not_run(slot: i64, outcome: &str) -> RecentEntry {
        RecentEntry {
            slot,
            run: None,
            host: None,
            pid: None,
            started_at: None,
            finished_at: None,
            outcome: outcome.to_string(),
            exit_code: None,
            attempt: 0,
            manual: false,
            pass: None,
            dir: None,
            reason: None,
        }
    }
}

/// The keys of one group.
#[derive(Debug, Clone)]
pub struct GroupKeys {
    prefix: String,
}

/// The keys of one schedule.
#[derive(Debug, Clone)]
pub struct ScheduleKeys {
    /// The progress hash.
    pub hash: String,
    /// Slots waiting to run.
    pub pending: String,
    /// The running pass's lease.
    pub lease: String,
    /// The history.
    pub recent: String,
}

impl GroupKeys {
    /// The keys of group `name`.
    pub fn new(name: &str) -> GroupKeys {
        GroupKeys {
            prefix: format!("stevedore:supervise:{name}"),
        }
    }

    /// The keys of schedule `name`.
    pub fn schedule(&self, name: &str) -> ScheduleKeys {
        let hash = format!("{}:schedule:{name}", self.prefix);
        ScheduleKeys {
            pending: format!("{hash}:pending"),
            lease: format!("{hash}:lease"),
            recent: format!("{hash}:recent"),
            hash,
        }
    }

    /// The live daemons.
    pub fn daemons(&self) -> String {
        format!("{}:daemons", self.prefix)
    }

    /// The group's read-only switch.
    pub fn read_only(&self) -> String {
        format!("{}:read_only", self.prefix)
    }
}

/// Milliseconds from Redis `TIME`, for scripts.
const NOW: &str =
    "local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)\n";

fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{NOW}{body}"))
}

/// Records a decision if nobody recorded another since it was read (compare-and-set on
/// `last_slot`, `checked_at` and `signature`). KEYS: hash, pending, recent. ARGV: expected
/// last_slot, checked_at, signature ('' = none); new last_slot, checked_at, signature;
/// next_fire ('' keep, '-' clear, else set); missed, skipped; replace pending ('1'); cancel
/// running ('1'); the number of pending entries, then those entries, then recent entries.
static APPLY: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r"
        local function field(name) return redis.call('HGET', KEYS[1], name) or '' end
        if field('last_slot') ~= ARGV[1] or field('checked_at') ~= ARGV[2]
            or field('signature') ~= ARGV[3] then return 0 end
        if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'last_slot', ARGV[4]) end
        redis.call('HSET', KEYS[1], 'checked_at', ARGV[5], 'signature', ARGV[6])
        if ARGV[7] == '-' then redis.call('HDEL', KEYS[1], 'next_fire')
        elseif ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'next_fire', ARGV[7]) end
        if ARGV[8] ~= '0' then redis.call('HINCRBY', KEYS[1], 'missed', ARGV[8]) end
        if ARGV[9] ~= '0' then redis.call('HINCRBY', KEYS[1], 'skipped', ARGV[9]) end
        if ARGV[10] == '1' then redis.call('DEL', KEYS[2]) end
        if ARGV[11] == '1' then
            local running = redis.call('HGET', KEYS[1], 'running')
            if running then
                local pass = cjson.decode(running).pass
                if pass then redis.call('HSET', KEYS[1], 'stop', pass) end
            end
        end
        local pending = tonumber(ARGV[12])
        for i = 13, 12 + pending do redis.call('RPUSH', KEYS[2], ARGV[i]) end
        for i = 13 + pending, #ARGV do redis.call('LPUSH', KEYS[3], ARGV[i]) end
        redis.call('LTRIM', KEYS[3], 0, 49)
        return 1",
    )
});

/// Starts the next waiting slot if no pass runs and the schedule is not paused: pops it,
/// numbers the pass, records it as running and takes the lease. KEYS: hash, pending, lease.
/// ARGV: daemon, lease TTL (ms), host. Returns the pass (JSON) or nil.
static START: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r"
        if redis.call('HEXISTS', KEYS[1], 'running') == 1 then return false end
        if redis.call('HEXISTS', KEYS[1], 'paused') == 1 then return false end
        local head = redis.call('LINDEX', KEYS[2], 0)
        if not head then return false end
        local entry = cjson.decode(head)
        if entry.not_before and entry.not_before > now then return false end
        redis.call('LPOP', KEYS[2])
        entry.pass = redis.call('HINCRBY', KEYS[1], 'passes', 1)
        entry.daemon = ARGV[1]
        entry.host = ARGV[3]
        entry.started_at = now
        entry.not_before = nil
        local encoded = cjson.encode(entry)
        redis.call('HSET', KEYS[1], 'running', encoded, 'last_start', now)
        redis.call('HDEL', KEYS[1], 'stop')
        redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
        return encoded",
    )
});

/// Takes over a pass whose daemon's lease lapsed: KEYS: hash, lease. ARGV: daemon, lease TTL
/// (ms), host. Returns the pass (JSON, renumbered so a stale `stop` cannot reach it) or nil.
static TAKE_OVER: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r"
        local running = redis.call('HGET', KEYS[1], 'running')
        if not running or redis.call('EXISTS', KEYS[2]) == 1 then return false end
        local entry = cjson.decode(running)
        entry.pass = redis.call('HINCRBY', KEYS[1], 'passes', 1)
        entry.daemon = ARGV[1]
        entry.host = ARGV[3]
        entry.pid = nil
        entry.started_at = now
        entry.takeovers = (entry.takeovers or 0) + 1
        local encoded = cjson.encode(entry)
        redis.call('HSET', KEYS[1], 'running', encoded)
        redis.call('HDEL', KEYS[1], 'stop')
        redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
        return encoded",
    )
});

/// Updates the running pass (its pid and directory) if this daemon still holds its lease.
/// KEYS: hash, lease. ARGV: daemon, pass (JSON).
static UPDATE_RUNNING: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r"
        if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
        redis.call('HSET', KEYS[1], 'running', ARGV[2])
        return 1",
    )
});

/// Renews the lease; returns -1 if another daemon holds it now, else 1. KEYS: lease.
/// ARGV: daemon, TTL (ms).
static RENEW: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local holder = redis.call('GET', KEYS[1])
        if holder ~= ARGV[1] then
            if holder then return -1 end
            -- Lapsed while Redis was away and nobody took it: ours again.
            redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        else
            redis.call('PEXPIRE', KEYS[1], ARGV[2])
        end
        return 1",
    )
});

/// Records how a pass ended, if it is still the running one. KEYS: hash, lease, recent,
/// pending. ARGV: daemon, pass number, recent entry (JSON, `finished_at` set here), outcome,
/// exit code, failed ('1'/'0'), retry entry (JSON or ''), retry delay (ms), every (ms or '').
static FINISH: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r"
        local running = redis.call('HGET', KEYS[1], 'running')
        if not running or cjson.decode(running).pass ~= tonumber(ARGV[2]) then return 0 end
        if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
        redis.call('HDEL', KEYS[1], 'running', 'stop')
        redis.call('HSET', KEYS[1], 'last_finish', now, 'last_outcome', ARGV[4],
            'last_exit', ARGV[5])
        if ARGV[4] == 'ok' or ARGV[4] == 'dead_letters' then
            redis.call('HSET', KEYS[1], 'last_success', now)
        end
        if ARGV[6] == '1' then redis.call('HINCRBY', KEYS[1], 'failures', 1)
        else redis.call('HSET', KEYS[1], 'failures', 0) end
        local entry = cjson.decode(ARGV[3])
        entry.finished_at = now
        redis.call('LPUSH', KEYS[3], cjson.encode(entry))
        redis.call('LTRIM', KEYS[3], 0, 49)
        if ARGV[7] ~= '' then
            local retry = cjson.decode(ARGV[7])
            retry.not_before = now + tonumber(ARGV[8])
            redis.call('LPUSH', KEYS[4], cjson.encode(retry))
        end
        if ARGV[9] ~= '' then redis.call('HSET', KEYS[1], 'next_fire', now + tonumber(ARGV[9])) end
        return 1",
    )
});

/// Gives up the lease (the pass stays recorded as running, for another daemon to resume).
/// KEYS: lease. ARGV: daemon.
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
        return 0",
    )
});

/// Asks the running pass to stop, if it is the one named. KEYS: hash. ARGV: pass number.
static STOP: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r"
        local running = redis.call('HGET', KEYS[1], 'running')
        if not running or cjson.decode(running).pass ~= tonumber(ARGV[1]) then return 0 end
        redis.call('HSET', KEYS[1], 'stop', ARGV[1])
        return 1",
    )
});

/// Records a daemon's heartbeat at Redis time. KEYS: daemons. ARGV: daemon, its JSON (a
/// `heartbeat` field is added here).
static BEAT: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r"
        local daemon = cjson.decode(ARGV[2])
        daemon.heartbeat = now
        redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(daemon))
        return now",
    )
});

/// A schedule's progress as read in one go.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// What decisions are made from.
    pub observed: Observed,
    /// Every field of the progress hash.
    pub fields: HashMap<String, String>,
    /// The running pass, if any.
    pub running: Option<PassEntry>,
    /// True while some daemon holds the running pass's lease.
    pub leased: bool,
    /// Slots waiting, oldest first.
    pub pending: Vec<PassEntry>,
    /// Why the group is read-only, if it is.
    pub read_only: Option<String>,
}

impl Snapshot {
    /// A numeric field of the progress hash.
    pub fn number(&self, name: &str) -> Option<i64> {
        self.fields.get(name).and_then(|value| value.parse().ok())
    }
}

/// One group's progress in Redis.
pub struct GroupState<'a> {
    link: &'a RedisLink,
    keys: GroupKeys,
}

impl<'a> GroupState<'a> {
    /// The state of group `name` on `link`.
    pub fn new(link: &'a RedisLink, name: &str) -> GroupState<'a> {
        GroupState {
            link,
            keys: GroupKeys::new(name),
        }
    }

    /// The Redis the group shares.
    pub fn link(&self) -> &RedisLink {
        self.link
    }

    /// The group's keys.
    pub fn keys(&self) -> &GroupKeys {
        &self.keys
    }

    /// Reads schedule `name`'s progress and the time, atomically.
    pub async fn read(&self, name: &str) -> Result<Snapshot, LinkError> {
        let keys = self.keys.schedule(name);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("TIME")
            .hgetall(&keys.hash)
            .lrange(&keys.pending, 0, -1)
            .exists(&keys.lease)
            .get(self.keys.read_only());
        type Read = (
            (String, String),
            HashMap<String, String>,
            Vec<String>,
            bool,
            Option<String>,
        );
        let ((seconds, micros), fields, pending, leased, read_only): Read = self
            .link
            .query_pipe("reading a schedule's progress", &pipe)
            .await?;
        let now_ms = redis_time_ms(&seconds, &micros);
        let running = fields
            .get("running")
            .and_then(|json| serde_json::from_str::<PassEntry>(json).ok());
        let pending: Vec<PassEntry> = pending
            .iter()
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect();
        let number = |name: &str| fields.get(name).and_then(|v| v.parse::<i64>().ok());
        let observed = Observed {
            now_ms,
            last_slot: number("last_slot"),
            checked_at: number("checked_at"),
            signature: fields.get("signature").cloned(),
            next_fire: number("next_fire"),
            running: running.is_some(),
            pending: pending.len(),
        };
        Ok(Snapshot {
            observed,
            fields,
            running,
            leased,
            pending,
            read_only,
        })
    }

    /// Records `decision`, made from `seen` at `signature`, unless another daemon recorded
    /// one since: true if it was recorded.
    pub async fn apply(
        &self,
        name: &str,
        seen: &Snapshot,
        signature: &str,
        decision: &Decision,
    ) -> Result<bool, LinkError> {
        let keys = self.keys.schedule(name);
        let optional = |value: Option<i64>| value.map(|v| v.to_string()).unwrap_or_default();
        let field = |name: &str| seen.fields.get(name).cloned().unwrap_or_default();
        let next_fire = match (decision.set_next_fire, decision.clear_next_fire) {
            (Some(next), _) => next.to_string(),
            (None, true) => "-".to_string(),
            (None, false) => String::new(),
        };
        let mut args = vec![
            field("last_slot"),
            field("checked_at"),
            field("signature"),
            optional(decision.last_slot),
            seen.observed.now_ms.to_string(),
            signature.to_string(),
            next_fire,
            decision.missed.to_string(),
            decision.skipped.to_string(),
            flag(decision.replace_pending),
            flag(decision.cancel_running),
            decision.run.len().to_string(),
        ];
        for queued in &decision.run {
            let entry = PassEntry {
                slot: queued.slot,
                attempt: 1,
                manual: queued.manual,
                ..PassEntry::default()
            };
            args.push(serde_json::to_string(&entry).expect("entries serialize"));
        }
        let mut history: Vec<RecentEntry> = decision
            .missed_slots
            .iter()
            .map(|slot| RecentEntry::not_run(*slot, "missed"))
            .chain(
                decision
                    .skipped_slots
                    .iter()
                    .map(|slot| RecentEntry::not_run(*slot, "skipped")),
            )
            .collect();
        history.sort_by_key(|entry| entry.slot);
        args.extend(
            history
                .iter()
                .map(|entry| serde_json::to_string(entry).expect("entries serialize")),
        );
        let applied: i64 = self
            .link
            .script(
                "recording due slots",
                &APPLY,
                &[keys.hash, keys.pending, keys.recent],
                &args,
            )
            .await?;
        Ok(applied == 1)
    }

    /// Starts the next waiting slot of `name` as a pass answered for by `daemon`.
    pub async fn start(
        &self,
        name: &str,
        daemon: &str,
        host: &str,
    ) -> Result<Option<PassEntry>, LinkError> {
        let keys = self.keys.schedule(name);
        let keys = [keys.hash, keys.pending, keys.lease];
        self.claim("starting a pass", &START, &keys, daemon, host)
            .await
    }

    /// Takes over `name`'s running pass if its daemon's lease lapsed.
    pub async fn take_over(
        &self,
        name: &str,
        daemon: &str,
        host: &str,
    ) -> Result<Option<PassEntry>, LinkError> {
        let keys = self.keys.schedule(name);
        let keys = [keys.hash, keys.lease];
        self.claim("taking over a pass", &TAKE_OVER, &keys, daemon, host)
            .await
    }

    /// Runs a script that hands a pass to `daemon` (ARGV: daemon, lease TTL, host), returning
    /// the pass it got, if any.
    async fn claim(
        &self,
        what: &str,
        script: &redis::Script,
        keys: &[String],
        daemon: &str,
        host: &str,
    ) -> Result<Option<PassEntry>, LinkError> {
        let claimed: Option<String> = self
            .link
            .script(
                what,
                script,
                keys,
                &[daemon.into(), lease_ms(), host.into()],
            )
            .await?;
        Ok(claimed.and_then(|json| serde_json::from_str(&json).ok()))
    }

    /// Records the running pass's details while `daemon` holds its lease.
    pub async fn update_running(
        &self,
        name: &str,
        daemon: &str,
        pass: &PassEntry,
    ) -> Result<bool, LinkError> {
        let keys = self.keys.schedule(name);
        let json = serde_json::to_string(pass).expect("entries serialize");
        let updated: i64 = self
            .link
            .script(
                "recording a pass",
                &UPDATE_RUNNING,
                &[keys.hash, keys.lease],
                &[daemon.into(), json],
            )
            .await?;
        Ok(updated == 1)
    }

    /// Renews `daemon`'s lease on `name`'s pass.
    pub async fn renew(&self, name: &str, daemon: &str) -> Result<Renewal, LinkError> {
        let keys = self.keys.schedule(name);
        let answer: i64 = self
            .link
            .script(
                "renewing a pass's lease",
                &RENEW,
                &[keys.lease],
                &[daemon.into(), lease_ms()],
            )
            .await?;
        Ok(if answer == -1 {
            Renewal::Lost
        } else {
            Renewal::Held
        })
    }

    /// Records how pass `pass` of `name` ended.
    pub async fn finish(&self, name: &str, daemon: &str, end: &PassEnd) -> Result<bool, LinkError> {
        let keys = self.keys.schedule(name);
        let args = vec![
            daemon.to_string(),
            end.pass.to_string(),
            serde_json::to_string(&end.entry).expect("entries serialize"),
            end.entry.outcome.clone(),
            end.entry
                .exit_code
                .map(|c| c.to_string())
                .unwrap_or_default(),
            flag(end.failed),
            end.retry
                .as_ref()
                .map(|r| serde_json::to_string(r).expect("entries serialize"))
                .unwrap_or_default(),
            end.retry_delay.as_millis().to_string(),
            end.every
                .map(|every| every.as_millis().to_string())
                .unwrap_or_default(),
        ];
        let finished: i64 = self
            .link
            .script(
                "recording a pass's end",
                &FINISH,
                &[keys.hash, keys.lease, keys.recent, keys.pending],
                &args,
            )
            .await?;
        Ok(finished == 1)
    }

    /// Lets go of `name`'s lease, leaving the pass for another daemon to resume.
    pub async fn release(&self, name: &str, daemon: &str) -> Result<(), LinkError> {
        let keys = self.keys.schedule(name);
        self.link
            .script::<i64>(
                "releasing a pass's lease",
                &RELEASE,
                &[keys.lease],
                &[daemon.to_string()],
            )
            .await
            .map(drop)
    }

    /// Asks pass `pass` of `name` to stop; false if it is not the running one.
    pub async fn request_stop(&self, name: &str, pass: u64) -> Result<bool, LinkError> {
        let keys = self.keys.schedule(name);
        let asked: i64 = self
            .link
            .script(
                "asking a pass to stop",
                &STOP,
                &[keys.hash],
                &[pass.to_string()],
            )
            .await?;
        Ok(asked == 1)
    }

    /// Pauses `name` (no new passes start) with who and why, or resumes it (`None`).
    pub async fn set_paused(&self, name: &str, paused: Option<&Paused>) -> Result<(), LinkError> {
        let keys = self.keys.schedule(name);
        let command = match paused {
            Some(paused) => redis::Cmd::hset(
                &keys.hash,
                "paused",
                serde_json::to_string(paused).expect("pauses serialize"),
            ),
            None => redis::Cmd::hdel(&keys.hash, "paused"),
        };
        self.link
            .query::<i64>("pausing a schedule", &command)
            .await?;
        Ok(())
    }

    /// Switches the group to read-only with `reason`, or back (`None`).
    pub async fn set_read_only(&self, reason: Option<&str>) -> Result<(), LinkError> {
        let command = match reason {
            Some(reason) => redis::Cmd::set(self.keys.read_only(), reason),
            None => redis::Cmd::del(self.keys.read_only()),
        };
        self.link
            .query::<redis::Value>("switching read-only", &command)
            .await
            .map(drop)
    }

    /// The history of `name`, newest first.
    pub async fn recent(&self, name: &str) -> Result<Vec<RecentEntry>, LinkError> {
        let keys = self.keys.schedule(name);
        let entries: Vec<String> = self
            .link
            .query(
                "reading a schedule's history",
                &redis::Cmd::lrange(&keys.recent, 0, RECENT - 1),
            )
            .await?;
        Ok(entries
            .iter()
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect())
    }

    /// Records `daemon`'s heartbeat; returns Redis time.
    pub async fn beat(&self, daemon: &str, about: &DaemonInfo) -> Result<i64, LinkError> {
        let json = serde_json::to_string(about).expect("daemons serialize");
        self.link
            .script(
                "recording a heartbeat",
                &BEAT,
                &[self.keys.daemons()],
                &[daemon.to_string(), json],
            )
            .await
    }

    /// Removes `daemon` from the live ones (it is shutting down).
    pub async fn leave(&self, daemon: &str) -> Result<(), LinkError> {
        self.link
            .query::<i64>(
                "leaving the group",
                &redis::Cmd::hdel(self.keys.daemons(), daemon),
            )
            .await
            .map(drop)
    }

    /// Every daemon that has beaten, with Redis time now.
    pub async fn daemons(&self) -> Result<(i64, Vec<DaemonInfo>), LinkError> {
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("TIME").hvals(self.keys.daemons());
        let ((seconds, micros), daemons): ((String, String), Vec<String>) =
            self.link.query_pipe("reading the daemons", &pipe).await?;
        let now = redis_time_ms(&seconds, &micros);
        Ok((
            now,
            daemons
                .iter()
                .filter_map(|json| serde_json::from_str(json).ok())
                .collect(),
        ))
    }
}

/// What [`GroupState::renew`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Still ours. (A `stop` is seen in the daemon's look at the schedule's progress.)
    Held,
    /// Another daemon holds the pass now.
    Lost,
}

/// How a pass ended, to record.
#[derive(Debug, Clone)]
pub struct PassEnd {
    /// The pass's number.
    pub pass: u64,
    /// Its history line.
    pub entry: RecentEntry,
    /// Counts as a failure (failed, timed_out).
    pub failed: bool,
    /// The slot's next attempt, if it gets one.
    pub retry: Option<PassEntry>,
    /// How long that attempt waits.
    pub retry_delay: Duration,
    /// For a cyclic schedule: the next pass is due this long from now.
    pub every: Option<Duration>,
}

/// Who paused a schedule, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paused {
    /// `user@host`.
    pub by: String,
    /// The reason given.
    pub reason: Option<String>,
    /// When (ms, this host's clock).
    pub at: i64,
}

/// What a daemon tells the others about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonInfo {
    /// Its id.
    pub id: String,
    /// Its host.
    pub host: String,
    /// Its pid.
    pub pid: u32,
    /// The environment it runs schedules for.
    pub environment: String,
    /// When it started (ms).
    pub started_at: i64,
    /// Its last heartbeat (ms, Redis time; set by the script).
    #[serde(default)]
    pub heartbeat: i64,
}

/// A reply of Redis `TIME` (seconds, microseconds) in milliseconds.
fn redis_time_ms(seconds: &str, micros: &str) -> i64 {
    seconds.parse::<i64>().unwrap_or(0) * 1000 + micros.parse::<i64>().unwrap_or(0) / 1000
}

fn flag(value: bool) -> String {
    if value { "1" } else { "0" }.to_string()
}

fn lease_ms() -> String {
    LEASE_TTL.as_millis().to_string()
}

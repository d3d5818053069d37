//! Limits for a whole job, held in Redis so that every process (on every host) of the job
//! shares them: a request rate (GCRA with no burst, one Lua script, Redis `TIME` as the one
//! clock) and a number of requests in flight (a semaphore whose permits are leases, so a
//! process that dies gives its permit back when the lease runs out).
//!
//! A limit per process is not enough against an API that counts per client: four producers
//! each at 10 requests a second are 40 to the API. These are what the HTTP source paces its
//! requests by, and how one process's 429 slows every process down ([`JobRate::hold_off`]).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use crate::queue::{LinkError, RedisLink};

/// Grants one request if the job's next allowed time has come, and moves it one interval on:
/// KEYS = the job's next allowed time (µs, Redis time); ARGV = interval (µs). Returns
/// `{1, now}` when granted, `{0, wait}` (µs) when not.
static GRANT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local t = redis.call('TIME')
        local now = t[1] * 1000000 + t[2]
        local next = tonumber(redis.call('GET', KEYS[1]) or '0')
        if next > now then return {0, next - now} end
        local interval = tonumber(ARGV[1])
        redis.call('SET', KEYS[1], string.format('%d', now + interval),
            'PX', math.ceil(interval / 1000) + 60000)
        return {1, now}",
    )
});

/// Moves the job's next allowed time to at least now + ARGV[1] (µs): KEYS = that time.
static HOLD_OFF: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local t = redis.call('TIME')
        local now = t[1] * 1000000 + t[2]
        local until_ = now + tonumber(ARGV[1])
        local next = tonumber(redis.call('GET', KEYS[1]) or '0')
        if next < until_ then
            redis.call('SET', KEYS[1], string.format('%d', until_),
                'PX', math.ceil(tonumber(ARGV[1]) / 1000) + 60000)
        end
        return 1",
    )
});

/// Takes (or renews) a permit for ARGV[1] if fewer than ARGV[2] live ones are out: KEYS = the
/// permits (a sorted set of holders by lease end, ms). ARGV = holder, max, lease (ms).
/// Returns 1 when held, else minus the ms until the first lease ends.
static TAKE_PERMIT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local t = redis.call('TIME')
        local now = t[1] * 1000 + math.floor(t[2] / 1000)
        local lease = tonumber(ARGV[3])
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
        if redis.call('ZSCORE', KEYS[1], ARGV[1])
            or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
            redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
            redis.call('PEXPIRE', KEYS[1], lease * 2)
            return 1
        end
        local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
        return -math.max(1, tonumber(first[2]) - now)",
    )
});

/// How often a process waiting for a permit looks again (a release frees one before its lease
/// ends, and nobody is told).
const PERMIT_POLL: Duration = Duration::from_millis(20);

/// A job-wide request rate.
pub struct JobRate {
    link: Arc<RedisLink>,
    key: String,
    interval_us: u64,
}

impl JobRate {
    /// At most `per_second` requests a second for `name` of `job`, across every process.
    /// `None` for a rate that is not positive.
    pub fn new(link: Arc<RedisLink>, job: &str, name: &str, per_second: f64) -> Option<JobRate> {
        if !(per_second.is_finite() && per_second > 0.0) {
            return None;
        }
        Some(JobRate {
            link,
            key: format!("stevedore:{job}:limits:{name}:next"),
            interval_us: ((1_000_000.0 / per_second).ceil() as u64).max(1),
        })
    }

    /// Waits until the job may send one more request; returns when it was granted (µs since
    /// the epoch, Redis time). Grants are at least one interval apart, whoever asks.
    pub async fn acquire(&self) -> Result<i64, LinkError> {
        loop {
            let (granted, at_or_wait): (i64, i64) = self
                .link
                .script(
                    "waiting for the job's request rate",
                    &GRANT,
                    std::slice::from_ref(&self.key),
                    &[self.interval_us.to_string()],
                )
                .await?;
            if granted == 1 {
                return Ok(at_or_wait);
            }
            tokio::time::sleep(Duration::from_micros(at_or_wait.max(1) as u64)).await;
        }
    }

    /// Grants nothing to any process for `wait` from now (a server's `Retry-After`): the
    /// whole job slows down, not only the process that was told.
    pub async fn hold_off(&self, wait: Duration) -> Result<(), LinkError> {
        self.link
            .script::<i64>(
                "holding the job's requests off",
                &HOLD_OFF,
                std::slice::from_ref(&self.key),
                &[wait.as_micros().to_string()],
            )
            .await
            .map(drop)
    }
}

/// A job-wide bound on requests in flight.
pub struct JobConcurrency {
    link: Arc<RedisLink>,
    key: String,
    max: u32,
    lease: Duration,
}

impl JobConcurrency {
    /// At most `max` requests of `name` of `job` in flight at once, across every process;
    /// a permit not released or renewed within `lease` is free again.
    pub fn new(link: Arc<RedisLink>, job: &str, name: &str, max: u32, lease: Duration) -> Self {
        JobConcurrency {
            link,
            key: format!("stevedore:{job}:limits:{name}:permits"),
            max: max.max(1),
            lease,
        }
    }

    /// Waits for a permit for `holder` (unique per request in flight, e.g. `host:pid:n`).
    pub async fn acquire(&self, holder: &str) -> Result<(), LinkError> {
        loop {
            if self.try_acquire(holder).await? {
                return Ok(());
            }
            tokio::time::sleep(PERMIT_POLL).await;
        }
    }

    /// Takes a permit for `holder`, or renews the one it holds; false when all are out.
    pub async fn try_acquire(&self, holder: &str) -> Result<bool, LinkError> {
        let answer: i64 = self
            .link
            .script(
                "taking a job-wide permit",
                &TAKE_PERMIT,
                std::slice::from_ref(&self.key),
                &[
                    holder.to_string(),
                    self.max.to_string(),
                    self.lease.as_millis().to_string(),
                ],
            )
            .await?;
        Ok(answer == 1)
    }

    /// Gives `holder`'s permit back.
    pub async fn release(&self, holder: &str) -> Result<(), LinkError> {
        self.link
            .query::<i64>(
                "giving a job-wide permit back",
                &redis::Cmd::zrem(&self.key, holder),
            )
            .await
            .map(drop)
    }
}

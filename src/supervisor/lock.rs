//! The job lock: one supervisor at a time runs a job, across hosts sharing one Redis.
//!
//! `SET NX PX` with a token naming the holder (host, pid), renewed every supervisor tick and
//! released only by its holder (a script compares the token). If the holder dies, the lock
//! expires after [`LOCK_TTL`]. Each acquisition also takes a fencing token (a counter that only
//! grows), so later work can tell an old holder's writes from the current one's.

use std::sync::LazyLock;
use std::time::Duration;

use crate::queue::{LinkError, RedisLink};

/// How long the lock outlives a holder that stopped renewing it.
pub(crate) const LOCK_TTL: Duration = Duration::from_secs(15);

/// Extends the lock if we hold it, or takes it back if it expired and nobody else took it
/// (Redis was unreachable for longer than the TTL): KEYS = lock; ARGV = token, TTL in ms.
static RENEW: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local holder = redis.call('GET', KEYS[1])
        if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
        if holder == false then
            redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
            return 1
        end
        return 0",
    )
});

static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
        return 0",
    )
});

/// A held job lock.
pub(crate) struct JobLock {
    key: String,
    token: String,
    /// Grows with every acquisition of this job's lock.
    pub fencing_token: u64,
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LockError {
    /// Someone else runs the job.
    #[error(
        "job `{job}` is already running ({holder}); wait for it to finish, or for its lock to expire {ttl} s after it stops"
    )]
    Held {
        /// The job.
        job: String,
        /// Who holds the lock.
        holder: String,
        /// Seconds until a dead holder's lock expires.
        ttl: u64,
    },
    /// Redis failed.
    #[error(transparent)]
    Redis(#[from] LinkError),
}

impl JobLock {
    /// Takes the lock of `job`, or says who has it.
    pub(crate) async fn acquire(link: &RedisLink, job: &str) -> Result<JobLock, LockError> {
        let key = format!("stevedore:{job}:lock");
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        let token = format!(
            "host {host} pid {} at {}",
            std::process::id(),
            crate::clock::now_ms()
        );
        let ttl_ms = LOCK_TTL.as_millis() as u64;
        let taken: Option<String> = link
            .query(
                "taking the job lock",
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms),
            )
            .await?;
        if taken.is_none() {
            let holder: Option<String> = link
                .query("reading the job lock", &redis::Cmd::get(&key))
                .await?;
            // A retried SET whose first reply was lost finds our own token: that is success.
            if holder.as_deref() != Some(token.as_str()) {
                return Err(LockError::Held {
                    job: job.to_string(),
                    holder: holder.unwrap_or_else(|| "released just now".into()),
                    ttl: LOCK_TTL.as_secs(),
                });
            }
        }
        let fencing_token = link
            .query(
                "taking a fencing token",
                &redis::Cmd::incr(format!("stevedore:{job}:fence"), 1),
            )
            .await?;
        Ok(JobLock {
            key,
            token,
            fencing_token,
        })
    }

    /// Extends (or retakes, if it expired unclaimed) the lock; false if someone else holds it.
    pub(crate) async fn renew(&self, link: &RedisLink) -> Result<bool, LinkError> {
        let renewed: i64 = link
            .script(
                "renewing the job lock",
                &RENEW,
                std::slice::from_ref(&self.key),
                &[self.token.clone(), LOCK_TTL.as_millis().to_string()],
            )
            .await?;
        Ok(renewed == 1)
    }

    /// Gives the lock up, if still held.
    pub(crate) async fn release(self, link: &RedisLink) -> Result<(), LinkError> {
        link.script::<i64>(
            "releasing the job lock",
            &RELEASE,
            std::slice::from_ref(&self.key),
            std::slice::from_ref(&self.token),
        )
        .await
        .map(drop)
    }
}

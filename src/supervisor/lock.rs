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

/// Replaces a lock held by a process known to be dead: KEYS = lock; ARGV = the dead holder's
/// token, our token, TTL in ms. Changes nothing if the lock changed hands meanwhile.
static TAKE_OVER: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        if redis.call('GET', KEYS[1]) == ARGV[1] then
            redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
            return 1
        end
        return 0",
    )
});

/// Where this process's pid means something: the boot (`/proc/sys/kernel/random/boot_id`) and
/// the pid namespace. Two supervisors with one hostname (containers sharing the host's
/// network) are told apart by it, so neither takes the other's live lock for a dead one.
fn process_space() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let namespace = std::fs::read_link("/proc/self/ns/pid")
        .map(|link| link.display().to_string())
        .unwrap_or_else(|_| "?".into());
    format!("boot {boot} pidns {namespace}")
}

/// This host's name, as locks and daemons name their holder (`?` if it cannot be read).
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// True when `holder` (`host H pid P since ... (boot B pidns N)`) names a process of this
/// host, boot and pid namespace that does not exist.
fn holder_is_gone(holder: &str, host: &str) -> bool {
    let space = process_space();
    if space.contains('?') || !holder.ends_with(&format!("({space})")) {
        return false;
    }
    let words: Vec<&str> = holder.split_whitespace().collect();
    let (Some(&"host"), Some(&held_by), Some(&"pid"), Some(pid)) =
        (words.first(), words.get(1), words.get(2), words.get(3))
    else {
        return false;
    };
    let Ok(pid) = pid.parse::<i32>() else {
        return false;
    };
    if held_by != host || host == "?" || pid <= 0 || pid as u32 == std::process::id() {
        return false;
    }
    // Signal 0 only asks whether the process exists; ESRCH means it does not.
    // SAFETY: kill with signal 0 sends nothing; it only checks the pid.
    let result = unsafe { libc::kill(pid, 0) };
    result == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// Moves the fencing counter past ARGV[1] if it is below it: KEYS = counter. Returns the new
/// token, or -1 if the counter was at or above (a newer holder exists).
static RAISE_FENCE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local counter = tonumber(redis.call('GET', KEYS[1]) or '0')
        if counter >= tonumber(ARGV[1]) then return -1 end
        redis.call('SET', KEYS[1], ARGV[1])
        return redis.call('INCR', KEYS[1])",
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
        "job `{job}` is already running ({holder}); wait for it to finish, or for its lock to \
         expire {ttl} s after it stops"
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
    /// The Redis key of `job`'s lock (a daemon reads it before it starts a pass).
    pub(crate) fn key(job: &str) -> String {
        format!("stevedore:{job}:lock")
    }

    /// Takes the lock of `job`, or says who has it.
    pub(crate) async fn acquire(link: &RedisLink, job: &str) -> Result<JobLock, LockError> {
        let key = Self::key(job);
        let host = host_name();
        // Who and since when, for a person reading the refusal; unique per acquisition.
        let now = chrono::DateTime::from_timestamp_millis(crate::clock::now_ms() as i64)
            .unwrap_or_default();
        let since = now.format("%Y-%m-%d %H:%M:%S%.3f UTC");
        let token = format!(
            "host {host} pid {} since {since} ({})",
            std::process::id(),
            process_space()
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
            // A holder that was a process of this host which no longer exists is taken over.
            let dead_local = holder
                .as_deref()
                .is_some_and(|holder| holder_is_gone(holder, &host));
            let taken_over = match (&holder, dead_local) {
                (Some(stale), true) => {
                    let swapped: i64 = link
                        .script(
                            "taking over a stale job lock",
                            &TAKE_OVER,
                            std::slice::from_ref(&key),
                            &[stale.clone(), token.clone(), ttl_ms.to_string()],
                        )
                        .await?;
                    if swapped == 1 {
                        tracing::warn!(job, previous = %stale, "took over the job lock: its holder, a process of this host, no longer exists");
                    }
                    swapped == 1
                }
                _ => false,
            };
            if !taken_over && holder.as_deref() != Some(token.as_str()) {
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
                &redis::Cmd::incr(crate::run_state::RunState::fence_key(job), 1),
            )
            .await?;
        Ok(JobLock {
            key,
            token,
            fencing_token,
        })
    }

    /// Extends (or retakes, if it expired unclaimed) the lock; false if someone else holds it.
    /// Runs `work` while renewing this lock every third of its TTL (a preflight may wait on a
    /// locked database, a replay may run long): one impatient attempt each time, so a slow Redis
    /// never holds up `work`. Ends with `lost()` when another holder took the lock.
    pub(crate) async fn holding<T, E>(
        &self,
        link: &RedisLink,
        work: impl std::future::Future<Output = Result<T, E>>,
        lost: impl Fn() -> E,
    ) -> Result<T, E> {
        let renewer = link.with_patience(crate::queue::Patience::Impatient);
        let mut renewal = tokio::time::interval(LOCK_TTL / 3);
        renewal.tick().await;
        tokio::pin!(work);
        loop {
            tokio::select! {
                result = &mut work => return result,
                _ = renewal.tick() => match self.renew(&renewer).await {
                    Ok(true) => {}
                    Ok(false) => return Err(lost()),
                    Err(error) => tracing::warn!(%error, "could not renew the job lock"),
                },
            }
        }
    }

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

    /// Takes a fencing token above `highest`, a token a sink has seen that this Redis never
    /// granted (its counter went back: the data was lost or replaced). Only when the counter
    /// is below `highest`: a counter at or above it means a newer holder exists, and the
    /// refusal stands (`false`).
    pub(crate) async fn raise_fence(
        &mut self,
        link: &RedisLink,
        job: &str,
        highest: u64,
    ) -> Result<bool, LinkError> {
        let raised: i64 = link
            .script(
                "raising the fencing counter",
                &RAISE_FENCE,
                &[crate::run_state::RunState::fence_key(job)],
                &[highest.to_string()],
            )
            .await?;
        if raised < 0 {
            return Ok(false);
        }
        tracing::warn!(
            job,
            highest,
            token = raised,
            "a sink has seen a fencing token this redis never granted (its data was lost or \
             replaced): the counter continues above it"
        );
        self.fencing_token = raised as u64;
        Ok(true)
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

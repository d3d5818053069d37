//! OAuth2 client-credentials tokens, fetched once and shared by every process of the job
//! through Redis, so that four producers do not fetch four tokens, and a token that runs out
//! mid-run is replaced by one process while the others wait for it.
//!
//! The token is kept under a key that Redis expires at 80% of the token's lifetime
//! (`expires_in`), so it is replaced before the API refuses it, by Redis's clock alone. The
//! process that finds no token takes a short lock (`SET NX PX`) and fetches one; the others
//! wait for the key to appear: no refresh storm. A 401 drops the token only if it is still
//! the one that was refused ([`Tokens::refused`]), so a hundred 401s for one token cause one
//! fetch. Tokens are never logged and never on a command line.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use crate::queue::{LinkError, RedisLink};
use crate::settings::Secret;

/// Deletes the token only if it is still `ARGV[1]`: KEYS = the token.
static DROP_IF_SAME: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
        return 0",
    )
});

/// The share of a token's lifetime after which it is replaced.
const REFRESH_AT: f64 = 0.8;

/// How often a process waiting for another's fetch looks for the token.
const WAIT_POLL: Duration = Duration::from_millis(50);

/// A fetched token and how long it may be used before it is replaced.
pub(super) struct Fetched {
    /// The access token.
    pub token: Secret,
    /// Use it this long (a share of `expires_in`).
    pub use_for: Duration,
}

impl Fetched {
    /// A token the server says expires in `expires_in` seconds (an hour when it does not say).
    pub(super) fn new(token: String, expires_in: Option<u64>) -> Fetched {
        let lifetime = Duration::from_secs(expires_in.unwrap_or(3600));
        Fetched {
            token: Secret::new(token),
            use_for: lifetime.mul_f64(REFRESH_AT).max(Duration::from_millis(500)),
        }
    }
}

/// Where the current token is kept.
pub(super) enum Tokens {
    /// In Redis, shared by the job's processes.
    Shared {
        /// The job's Redis.
        link: Arc<RedisLink>,
        /// The token.
        key: String,
        /// The lock of the process fetching one.
        lock: String,
        /// Who this process is, in the lock.
        holder: String,
    },
    /// In this process (`check`, `run --dry-run`).
    Local(Mutex<Option<(Secret, Instant)>>),
}

/// What [`Tokens::current`] found.
pub(super) enum Current {
    /// A token to use.
    Token(Secret),
    /// None: this process must fetch one and [`Tokens::store`] it (it holds the lock).
    Fetch,
}

impl Tokens {
    /// Tokens of source `source` of `job`, in Redis when there is a link.
    pub(super) fn new(link: Option<Arc<RedisLink>>, job: &str, source: &str) -> Tokens {
        match link {
            Some(link) => {
                let key = format!("stevedore:{job}:http:{source}:token");
                Tokens::Shared {
                    link,
                    lock: format!("{key}:fetching"),
                    key,
                    holder: format!("{}:{}", crate::supervisor::host_name(), std::process::id()),
                }
            }
            None => Tokens::Local(Mutex::new(None)),
        }
    }

    /// The token to use, or [`Current::Fetch`] when this process is the one to fetch it.
    /// Waits at most `patience` for another process's fetch (then fetches itself: a fetcher
    /// that died leaves its lock to lapse after `fetch_lock`).
    pub(super) async fn current(
        &self,
        fetch_lock: Duration,
        patience: Duration,
    ) -> Result<Current, LinkError> {
        match self {
            Tokens::Local(token) => {
                let token = token.lock().expect("the token lock is never poisoned");
                Ok(match token.as_ref() {
                    Some((token, until)) if Instant::now() < *until => {
                        Current::Token(token.clone())
                    }
                    _ => Current::Fetch,
                })
            }
            Tokens::Shared {
                link,
                key,
                lock,
                holder,
            } => {
                let deadline = Instant::now() + patience;
                loop {
                    let token: Option<String> = link
                        .query("reading the shared API token", &redis::Cmd::get(key))
                        .await?;
                    if let Some(token) = token {
                        return Ok(Current::Token(Secret::new(token)));
                    }
                    let mut take = redis::cmd("SET");
                    take.arg(lock)
                        .arg(holder)
                        .arg("NX")
                        .arg("PX")
                        .arg(fetch_lock.as_millis() as u64);
                    let taken: Option<String> =
                        link.query("taking the API token fetch lock", &take).await?;
                    if taken.is_some() || Instant::now() >= deadline {
                        return Ok(Current::Fetch);
                    }
                    tokio::time::sleep(WAIT_POLL).await;
                }
            }
        }
    }

    /// Keeps a fetched token for every process, and lets the next fetcher in.
    pub(super) async fn store(&self, fetched: &Fetched) -> Result<(), LinkError> {
        match self {
            Tokens::Local(token) => {
                *token.lock().expect("the token lock is never poisoned") =
                    Some((fetched.token.clone(), Instant::now() + fetched.use_for));
                Ok(())
            }
            Tokens::Shared { link, key, .. } => {
                let mut set = redis::cmd("SET");
                set.arg(key)
                    .arg(fetched.token.expose())
                    .arg("PX")
                    .arg(fetched.use_for.as_millis() as u64);
                link.query::<()>("sharing the API token", &set).await?;
                self.give_up_fetch().await
            }
        }
    }

    /// Lets another process fetch (this one's fetch failed).
    pub(super) async fn give_up_fetch(&self) -> Result<(), LinkError> {
        match self {
            Tokens::Local(_) => Ok(()),
            Tokens::Shared { link, lock, .. } => link
                .query::<i64>("releasing the API token fetch lock", &redis::Cmd::del(lock))
                .await
                .map(drop),
        }
    }

    /// The API refused `token` (401): drop it, unless another process already replaced it.
    pub(super) async fn refused(&self, token: &Secret) -> Result<(), LinkError> {
        match self {
            Tokens::Local(current) => {
                let mut current = current.lock().expect("the token lock is never poisoned");
                if current.as_ref().is_some_and(|(held, _)| held == token) {
                    *current = None;
                }
                Ok(())
            }
            Tokens::Shared { link, key, .. } => link
                .script::<i64>(
                    "dropping a refused API token",
                    &DROP_IF_SAME,
                    std::slice::from_ref(key),
                    &[token.expose().to_string()],
                )
                .await
                .map(drop),
        }
    }
}

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

/// Renews (ARGV[2] = ms) or, without ARGV[2], deletes the fetch lock, only if ARGV[1] holds
/// it: KEYS = the lock.
static LOCK_IF_HELD: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
        if ARGV[2] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
        return redis.call('DEL', KEYS[1])",
    )
});

/// The share of a token's lifetime after which it is replaced.
const REFRESH_AT: f64 = 0.8;

/// How often a process waiting for another's fetch looks for the token.
const WAIT_POLL: Duration = Duration::from_millis(50);

/// How long the fetch lock of a process that stopped renewing it (killed) stays taken.
const FETCH_LOCK: Duration = Duration::from_secs(10);

/// How often the fetching process renews its lock.
const FETCH_LOCK_RENEWAL: Duration = Duration::from_secs(2);

/// A fetched token and how long it may be used before it is replaced.
pub(super) struct Fetched {
    /// The access token.
    pub token: Secret,
    /// Use it this long (a share of `expires_in`).
    pub use_for: Duration,
}

impl Fetched {
    /// The token in a token endpoint's JSON answer. `expires_in` may be a number or a
    /// string of one (some identity providers send `"3599"`); an hour when absent.
    pub(super) fn from_answer(body: &[u8]) -> Result<Fetched, String> {
        #[derive(serde::Deserialize)]
        struct Answer {
            access_token: String,
            expires_in: Option<serde_json::Value>,
        }
        let answer: Answer = serde_json::from_slice(body)
            .map_err(|error| format!("no access_token in JSON: {error}"))?;
        let expires_in = match &answer.expires_in {
            None | Some(serde_json::Value::Null) => 3600,
            Some(serde_json::Value::Number(n)) => n.as_u64().ok_or("expires_in is not whole")?,
            Some(serde_json::Value::String(n)) => {
                n.trim().parse().map_err(|_| "expires_in is not a number")?
            }
            Some(_) => return Err("expires_in is not a number".into()),
        };
        tracing::info!(expires_in, "fetched an API token for the job");
        let lifetime = Duration::from_secs(expires_in);
        Ok(Fetched {
            token: Secret::new(answer.access_token),
            use_for: lifetime.mul_f64(REFRESH_AT).max(Duration::from_millis(500)),
        })
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
    /// None: this process holds the fetch lock, and fetches one ([`Tokens::fetching`]), then
    /// [`Tokens::store`]s it or [`Tokens::give_up_fetch`]es.
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
                    holder: super::this_process(),
                }
            }
            None => Tokens::Local(Mutex::new(None)),
        }
    }

    /// The token to use, or [`Current::Fetch`] when this process is the one to fetch it.
    /// Waits while another process fetches (its lock lapses if it dies).
    pub(super) async fn current(&self) -> Result<Current, LinkError> {
        let (link, key, lock, holder) = match self {
            Tokens::Local(token) => {
                let token = token.lock().expect("the token lock is never poisoned");
                return Ok(match token.as_ref() {
                    Some((token, until)) if Instant::now() < *until => {
                        Current::Token(token.clone())
                    }
                    _ => Current::Fetch,
                });
            }
            Tokens::Shared {
                link,
                key,
                lock,
                holder,
            } => (link, key, lock, holder),
        };
        let read = || async {
            link.query::<Option<String>>("reading the shared API token", &redis::Cmd::get(key))
                .await
        };
        loop {
            if let Some(token) = read().await? {
                return Ok(Current::Token(Secret::new(token)));
            }
            let mut take = redis::cmd("SET");
            take.arg(lock)
                .arg(holder)
                .arg("NX")
                .arg("PX")
                .arg(FETCH_LOCK.as_millis() as u64);
            let taken: Option<String> =
                link.query("taking the API token fetch lock", &take).await?;
            if taken.is_some() {
                // Another process may have stored one between the read and the lock.
                if let Some(token) = read().await? {
                    self.give_up_fetch().await?;
                    return Ok(Current::Token(Secret::new(token)));
                }
                return Ok(Current::Fetch);
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// Runs `fetch` while keeping this process's fetch lock alive, however long the token
    /// endpoint (or the job's rate) makes it wait.
    pub(super) async fn fetching<T>(&self, fetch: impl Future<Output = T>) -> Result<T, LinkError> {
        let Tokens::Shared {
            link, lock, holder, ..
        } = self
        else {
            return Ok(fetch.await);
        };
        tokio::pin!(fetch);
        loop {
            tokio::select! {
                fetched = &mut fetch => return Ok(fetched),
                () = tokio::time::sleep(FETCH_LOCK_RENEWAL) => {
                    link.script::<i64>(
                        "renewing the API token fetch lock",
                        &LOCK_IF_HELD,
                        std::slice::from_ref(lock),
                        &[holder.clone(), FETCH_LOCK.as_millis().to_string()],
                    )
                    .await?;
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

    /// Releases this process's fetch lock (and only its own).
    pub(super) async fn give_up_fetch(&self) -> Result<(), LinkError> {
        match self {
            Tokens::Local(_) => Ok(()),
            Tokens::Shared {
                link, lock, holder, ..
            } => link
                .script::<i64>(
                    "releasing the API token fetch lock",
                    &LOCK_IF_HELD,
                    std::slice::from_ref(lock),
                    std::slice::from_ref(holder),
                )
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

//! One process's connection to Redis, rebuilt when Redis goes away.
//!
//! After a Redis restart an existing client fails on every call (broken pipe, or `NOSCRIPT`
//! because the queue scripts are gone), so every operation runs through [`RedisLink::call`]:
//! on a connection-level error it drops the client, waits with exponential backoff, builds a
//! new one (reloading the RSMQ scripts) and tries again, for up to about a minute.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, ServerErrorKind};
use rsmq_async::{Rsmq, RsmqError};
use tokio::sync::Mutex;

use crate::retry;

/// The RSMQ namespace stevedore's queues live in (RSMQ's own default, so Node producers can share them).
pub const RSMQ_NAMESPACE: &str = "rsmq";

/// A live pair of clients over one multiplexed connection.
#[derive(Clone)]
pub struct Clients {
    /// The RSMQ client (queue operations).
    pub rsmq: Rsmq,
    /// The same connection for plain commands (run state, heartbeats, counters).
    pub redis: MultiplexedConnection,
}

/// Why a Redis operation failed for good.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Redis could not be reached or kept failing after all retries.
    #[error("redis at {url}: {what} failed: {source}")]
    Redis {
        /// The URL without credentials.
        url: String,
        /// The operation.
        what: String,
        /// The last error.
        source: RsmqError,
    },
    /// A run-state write was refused: a newer holder of the job's lock exists.
    #[error(
        "{what} refused: fenced (fencing token {token} is older than {highest}, a newer \
         holder of the job's lock); this process stops and writes nothing more"
    )]
    Fenced {
        /// The write.
        what: String,
        /// This writer's token.
        token: u64,
        /// The job's highest token.
        highest: u64,
    },
    /// Redis holds a value this build cannot read: reported, never taken for "nothing there".
    #[error("{what}: redis holds {key} = {text:?}, which cannot be read: {reason}")]
    Unreadable {
        /// The read.
        what: String,
        /// Where the value is (key, and field if any).
        key: String,
        /// The value as stored.
        text: String,
        /// Why it cannot be read.
        reason: String,
    },
}

impl LinkError {
    /// True when a newer holder of the job's lock refused this process's write.
    pub fn is_fenced(&self) -> bool {
        matches!(self, LinkError::Fenced { .. })
    }
}

/// How hard a link tries before it reports an error.
#[derive(Debug, Clone, Copy)]
pub enum Patience {
    /// Retry connection-level errors for about a minute: for work that must happen.
    Patient,
    /// One attempt of at most a second: for periodic reads that the next tick repeats, so a
    /// Redis outage never stalls the loop that must notice it.
    Impatient,
}

/// Reconnecting access to one Redis.
pub struct RedisLink {
    client: redis::Client,
    display_url: String,
    current: Mutex<Option<Clients>>,
    patience: Patience,
}

impl RedisLink {
    /// Prepares a link to `url`; nothing connects until the first call.
    pub fn new(url: &str) -> Result<RedisLink, LinkError> {
        let display_url = redact_url(url);
        let client = redis::Client::open(url).map_err(|source| LinkError::Redis {
            url: display_url.clone(),
            what: "parsing the URL".into(),
            source: source.into(),
        })?;
        Ok(RedisLink {
            client,
            display_url,
            current: Mutex::new(None),
            patience: Patience::Patient,
        })
    }

    /// The same Redis with another [`Patience`] (and its own connection).
    pub fn with_patience(&self, patience: Patience) -> RedisLink {
        RedisLink {
            client: self.client.clone(),
            display_url: self.display_url.clone(),
            current: Mutex::new(None),
            patience,
        }
    }

    /// The URL with any password removed, for messages.
    pub fn display_url(&self) -> &str {
        &self.display_url
    }

    /// Runs `op` with live clients, reconnecting and retrying on connection-level errors.
    pub async fn call<T, F, Fut>(&self, what: &str, op: F) -> Result<T, LinkError>
    where
        F: Fn(Clients) -> Fut,
        Fut: Future<Output = Result<T, RsmqError>>,
    {
        let attempt = || async {
            let work = async { op(self.clients().await?).await };
            let result = match self.patience {
                Patience::Patient => work.await,
                Patience::Impatient => tokio::time::timeout(IMPATIENT_TIMEOUT, work)
                    .await
                    .unwrap_or_else(|_| Err(timed_out())),
            };
            if let Err(error) = &result
                && is_connection_error(error)
            {
                *self.current.lock().await = None;
            }
            result
        };
        attempt
            .retry(backoff(self.patience))
            .when(is_connection_error)
            .notify(|error, wait| tracing::warn!(%error, ?wait, redis = %self.display_url, "{what}: redis unavailable, retrying"))
            .await
            .map_err(|source| LinkError::Redis { url: self.display_url.clone(), what: what.to_string(), source })
    }

    /// Runs one prepared command, reconnecting and retrying like [`RedisLink::call`].
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        what: &str,
        command: &redis::Cmd,
    ) -> Result<T, LinkError> {
        self.call(what, |mut c| async move {
            command
                .query_async(&mut c.redis)
                .await
                .map_err(RsmqError::from)
        })
        .await
    }

    /// Runs a prepared pipeline (atomic if it was built so), reconnecting and retrying.
    pub async fn query_pipe<T: redis::FromRedisValue>(
        &self,
        what: &str,
        pipe: &redis::Pipeline,
    ) -> Result<T, LinkError> {
        self.call(what, |mut c| async move {
            pipe.query_async(&mut c.redis)
                .await
                .map_err(RsmqError::from)
        })
        .await
    }

    /// Runs a Lua script with `keys` and `args`, reconnecting and retrying.
    pub async fn script<T: redis::FromRedisValue>(
        &self,
        what: &str,
        script: &redis::Script,
        keys: &[String],
        args: &[String],
    ) -> Result<T, LinkError> {
        self.call(what, |mut c| async move {
            let mut invocation = script.prepare_invoke();
            invocation.key(keys).arg(args);
            invocation
                .invoke_async(&mut c.redis)
                .await
                .map_err(RsmqError::from)
        })
        .await
    }

    async fn clients(&self) -> Result<Clients, RsmqError> {
        let mut current = self.current.lock().await;
        if let Some(clients) = current.as_ref() {
            return Ok(clients.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(30)));
        let redis = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let rsmq = Rsmq::new_with_connection(redis.clone(), false, Some(RSMQ_NAMESPACE)).await?;
        let clients = Clients { rsmq, redis };
        *current = Some(clients.clone());
        Ok(clients)
    }
}

/// How long an impatient call may take.
const IMPATIENT_TIMEOUT: Duration = Duration::from_secs(1);

fn backoff(patience: Patience) -> ExponentialBuilder {
    match patience {
        Patience::Patient => retry::REDIS_RECONNECT.backoff(),
        Patience::Impatient => retry::REDIS_RECONNECT.once().backoff(),
    }
}

fn timed_out() -> RsmqError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no reply within 1 s",
    ))
    .into()
}

/// True for errors after which the client must be rebuilt: the connection broke, the server
/// is (re)loading, or it lost our scripts in a restart.
pub fn is_connection_error(error: &RsmqError) -> bool {
    match error {
        RsmqError::RedisError(error) => is_redis_connection_error(error),
        _ => false,
    }
}

fn is_redis_connection_error(error: &RedisError) -> bool {
    // Not `is_unrecoverable_error()`: it also covers a wrong password or a protocol error,
    // which retrying cannot fix and which should surface at once.
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || matches!(
            error.kind(),
            ErrorKind::Server(
                ServerErrorKind::NoScript
                    | ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
            )
        )
}

/// Removes the password from a Redis URL so it can be shown.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_redis_url_password_is_redacted() {
        assert_eq!(
            redact_url("redis://:s3cret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}

//! The one retry policy. What is retried (a sink write, a Redis call, a worker process) only
//! classifies its errors; the caller owns the attempts and the waits, and takes both from here.
//!
//! Every policy is an exponential backoff: a first wait, doubled after each retry up to a cap,
//! for a fixed number of retries. Waits inside one process go through backon
//! ([`Policy::backoff`]); waits counted across processes (redeliveries of a unit, restarts of a
//! worker) use the same numbers without jitter ([`Policy::wait`]).
//!
//! **The most requests one unit can cause** (sinks see the unit `max_receives` times at most):
//!
//! | per | bound | defaults |
//! |---|---|---|
//! | write attempt | `r` requests, each sent at most `1 + s` times by its client | |
//! | delivery | [`SINK_WRITE`]: 3 write attempts | `3 r (1 + s)` |
//! | unit | `max_receives` deliveries with an attempt | `5 x 3 r (1 + s)` |
//!
//! `r` is the requests of one write that can be in flight when it fails (a write stops
//! starting requests at its first failure): `mssql` 1 transaction, `sqlite` 1, `cosmos` at most
//! `max_concurrency`. `s` is the client's own retries: `cosmos` `throttle_retries` (the SDK
//! retries a 429 after the server's hint), 0 for the others. So a unit Cosmos DB throttles
//! forever costs at most `15 (1 + throttle_retries) max_concurrency` requests, 150 per request
//! slot with the defaults, and `tests/cosmos_pipeline.rs` counts them.

use std::time::Duration;

use backon::ExponentialBuilder;

/// An exponential backoff: `first`, then doubling up to `cap`, for `retries` retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    /// The wait before the first retry.
    pub first: Duration,
    /// No wait is longer than this.
    pub cap: Duration,
    /// How many retries after the first attempt.
    pub retries: usize,
}

/// A sink write within one delivery: 3 attempts, 200-400 ms then 400-800 ms apart (backon's
/// jitter adds up to the wait again; longer when the server asks). Then the unit goes back to
/// the queue ([`REDELIVERY`]).
pub(crate) const SINK_WRITE: Policy = Policy {
    first: Duration::from_millis(200),
    cap: Duration::from_secs(2),
    retries: 2,
};

/// A unit whose write failed transiently is hidden this long before its next delivery: 2 s
/// after its first attempt, doubling to 32 s. The count is `max_receives`, from the job.
pub(crate) const REDELIVERY: Policy = Policy {
    first: Duration::from_secs(2),
    cap: Duration::from_secs(32),
    retries: usize::MAX,
};

/// A Redis call while Redis is unreachable: 40 retries from 50 ms, at most 2 s apart (about a
/// minute in all), the client rebuilt before each.
pub(crate) const REDIS_RECONNECT: Policy = Policy {
    first: Duration::from_millis(50),
    cap: Duration::from_secs(2),
    retries: 40,
};

/// A worker process that died is started again after 100 ms, doubling to 10 s while it keeps
/// dying; the count is the job's `max_restarts` within `restart_window`.
pub(crate) const WORKER_RESTART: Policy = Policy {
    first: Duration::from_millis(100),
    cap: Duration::from_secs(10),
    retries: usize::MAX,
};

/// An alert that could not be sent (SMTP relay or webhook down, 5xx, 429): 5 more attempts
/// from 1 s, doubling to 16 s (about a minute in all, each attempt at most 20 s). A daemon
/// sends on a task of its own, so a schedule never waits for it.
pub(crate) const ALERT_SEND: Policy = Policy {
    first: Duration::from_secs(1),
    cap: Duration::from_secs(16),
    retries: 5,
};

impl Policy {
    /// The policy for backon's `Retryable::retry`, with jitter (so processes retrying the same
    /// server do not retry in step).
    pub(crate) fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.first)
            .with_max_delay(self.cap)
            .with_max_times(self.retries)
            .with_jitter()
    }

    /// The same policy with no retries: one attempt.
    pub(crate) fn once(&self) -> Policy {
        Policy {
            retries: 0,
            ..*self
        }
    }

    /// The wait before retry `n` (1-based), without jitter: for retries counted across
    /// processes.
    pub(crate) fn wait(&self, n: u32) -> Duration {
        let doublings = n.saturating_sub(1).min(31);
        self.first.saturating_mul(1 << doublings).min(self.cap)
    }
}

/// The wait a server asked for wins over the policy's when it is longer; `None` (no retry
/// left) stays `None`. For backon's `adjust`.
pub(crate) fn honour_hint(hint: Option<Duration>, planned: Option<Duration>) -> Option<Duration> {
    planned.map(|planned| hint.map_or(planned, |hint| hint.max(planned)))
}

/// A request of the HTTP source that the API refused for now (429, 408, 5xx) or that failed
/// on the network: 1 s, doubling to 60 s, unless the API's `Retry-After` asks for longer;
/// the count is the source's `limits.retries`. The wait holds every process of the job off.
pub(crate) const HTTP_REQUEST: Policy = Policy {
    first: Duration::from_secs(1),
    cap: Duration::from_secs(60),
    retries: 5,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_waits_double_up_to_the_cap() {
        let waits: Vec<u64> = (1..=7).map(|n| REDELIVERY.wait(n).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 32, 32]);
        assert_eq!(WORKER_RESTART.wait(1), Duration::from_millis(100));
        assert_eq!(WORKER_RESTART.wait(9), Duration::from_secs(10));
        assert_eq!(REDELIVERY.wait(u32::MAX), Duration::from_secs(32));
    }

    #[test]
    fn retry_server_hint_wins_only_when_longer_and_never_adds_a_retry() {
        let planned = Some(Duration::from_millis(200));
        assert_eq!(
            honour_hint(Some(Duration::from_secs(1)), planned),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            honour_hint(Some(Duration::from_millis(5)), planned),
            planned
        );
        assert_eq!(honour_hint(None, planned), planned);
        assert_eq!(honour_hint(Some(Duration::from_secs(1)), None), None);
    }

    #[tokio::test]
    async fn retry_sink_write_policy_makes_three_attempts() {
        use backon::Retryable;
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let result: Result<(), &str> = (|| async {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err("busy")
        })
        .retry(SINK_WRITE.backoff())
        .sleep(|_| std::future::ready(()))
        .await;
        assert_eq!(result, Err("busy"));
        assert_eq!(attempts.into_inner(), 3);
    }
}

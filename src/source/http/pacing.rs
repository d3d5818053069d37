//! When a request of an HTTP source may go: the job's rate and its requests in flight, held
//! in Redis for every process of the job ([`JobRate`], [`JobConcurrency`]), or in this
//! process alone where nothing may be written to Redis (`check`, `run --dry-run`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::settings::Limits;
use crate::queue::{LinkError, RedisLink};
use crate::throttle::{JobConcurrency, JobRate, RateLimit};

/// The share of `requests_per_second` requests are paced at. Grants are spaced by Redis's
/// clock, but a request reaches the API a little later, and not always equally later: two
/// requests granted an interval apart can arrive closer together, and an API that counts
/// per calendar second would see one too many. A tenth of headroom absorbs 100 ms of such
/// jitter at 10 requests a second.
pub(super) const HEADROOM: f64 = 0.9;

/// How long a permit of a process that stopped renewing it (killed) stays taken.
pub(super) const PERMIT_LEASE: Duration = Duration::from_secs(5);

/// How often a permit's holder renews it while its request waits or runs.
const PERMIT_RENEWAL: Duration = Duration::from_secs(1);

/// The rate and the concurrency of one source.
pub(super) struct Pacing {
    rate: Rate,
    concurrency: Concurrency,
    holder: String,
    requests: AtomicU64,
}

enum Rate {
    Job(JobRate),
    Local(RateLimit),
}

enum Concurrency {
    Job(JobConcurrency),
    Local(tokio::sync::Semaphore),
}

/// A request's permission to be in flight; give it back with [`Pacing::done`].
pub(super) struct Permit<'a> {
    holder: String,
    _local: Option<tokio::sync::SemaphorePermit<'a>>,
}

impl Pacing {
    /// The limits of source `source` of `job`, shared through `link` when there is one.
    pub(super) fn new(
        link: Option<Arc<RedisLink>>,
        job: &str,
        source: &str,
        limits: &Limits,
    ) -> Pacing {
        let per_second = limits.requests_per_second * HEADROOM;
        let name = format!("http:{source}");
        let (rate, concurrency) = match link {
            Some(link) => (
                Rate::Job(
                    JobRate::new(link.clone(), job, &name, per_second)
                        .expect("the rate was checked when the config was read"),
                ),
                Concurrency::Job(JobConcurrency::new(
                    link,
                    job,
                    &name,
                    limits.max_concurrency,
                    PERMIT_LEASE,
                )),
            ),
            None => (
                Rate::Local(
                    RateLimit::per_second(per_second)
                        .expect("the rate was checked when the config was read"),
                ),
                Concurrency::Local(tokio::sync::Semaphore::new(
                    limits.max_concurrency.max(1) as usize
                )),
            ),
        };
        Pacing {
            rate,
            concurrency,
            holder: super::this_process(),
            requests: AtomicU64::new(0),
        }
    }

    /// Waits until one more request of the job may be in flight.
    pub(super) async fn permit(&self) -> Result<Permit<'_>, LinkError> {
        let holder = format!(
            "{}:{}",
            self.holder,
            self.requests.fetch_add(1, Ordering::Relaxed)
        );
        let local = match &self.concurrency {
            Concurrency::Job(permits) => {
                permits.acquire(&holder).await?;
                None
            }
            Concurrency::Local(semaphore) => Some(
                semaphore
                    .acquire()
                    .await
                    .expect("the semaphore is never closed"),
            ),
        };
        Ok(Permit {
            holder,
            _local: local,
        })
    }

    /// Waits until the job's rate lets one request start now; call it right before each
    /// request is sent (under [`Pacing::holding`], so the permit stays alive meanwhile).
    pub(super) async fn grant(&self) -> Result<(), LinkError> {
        match &self.rate {
            Rate::Job(rate) => rate.acquire().await.map(drop),
            Rate::Local(rate) => {
                rate.ready().await;
                Ok(())
            }
        }
    }

    /// Runs `work` while keeping `permit`'s lease alive: a process killed mid-request frees
    /// its permit within [`PERMIT_LEASE`], however long requests may take.
    pub(super) async fn holding<T>(
        &self,
        permit: &Permit<'_>,
        work: impl Future<Output = T>,
    ) -> Result<T, LinkError> {
        let Concurrency::Job(permits) = &self.concurrency else {
            return Ok(work.await);
        };
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return Ok(done),
                () = tokio::time::sleep(PERMIT_RENEWAL) => {
                    if !permits.try_acquire(&permit.holder).await? {
                        tracing::warn!(
                            "this request's job-wide permit lapsed (Redis was out of reach for \
                             longer than its lease); going on"
                        );
                    }
                }
            }
        }
    }

    /// Gives a request's permit back once its answer is read.
    pub(super) async fn done(&self, permit: Permit<'_>) -> Result<(), LinkError> {
        match &self.concurrency {
            Concurrency::Job(permits) => permits.release(&permit.holder).await,
            Concurrency::Local(_) => Ok(()),
        }
    }

    /// The API asked to wait (`Retry-After`, or a 5xx's backoff): no request of the job
    /// starts for `wait`, in any process.
    pub(super) async fn hold_off(&self, wait: Duration) -> Result<(), LinkError> {
        match &self.rate {
            Rate::Job(rate) => rate.hold_off(wait).await,
            Rate::Local(_) => {
                tokio::time::sleep(wait).await;
                Ok(())
            }
        }
    }
}

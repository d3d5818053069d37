//! Rate limits shared by the sinks: a governor limiter paces operations (units, requests) of
//! one process to a configured rate, so a load never trips a database's throttles. Where the
//! database says it is throttling (Cosmos DB's 429), [`AdaptiveRate`] lowers the rate and
//! raises it again slowly (additive increase, multiplicative decrease), and [`ChargeBudget`]
//! spends a budget of request units per second.
//! Concurrency limits of a sink are not here: the consumer runs at most a sink's
//! [`concurrency`](crate::sink::Sink::concurrency) units at once. Limits for a whole job,
//! across processes and hosts, are in [`job_wide`] (held in Redis).

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

pub mod job_wide;

pub use job_wide::{JobConcurrency, JobRate};

/// Paces operations to at most `rate` per second, evenly spaced (no bursts: a database that
/// allows 50 writes a second is kinder to 50 spread out than to 50 at once).
pub(crate) struct RateLimit {
    limiter: DefaultDirectRateLimiter,
}

impl RateLimit {
    /// A limit of `rate` operations per second; `None` for a rate that is not positive.
    pub(crate) fn per_second(rate: f64) -> Option<RateLimit> {
        if !(rate.is_finite() && rate > 0.0) {
            return None;
        }
        let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)?.allow_burst(NonZeroU32::MIN);
        Some(RateLimit {
            limiter: RateLimiter::direct(quota),
        })
    }

    /// Waits until the next operation may start.
    pub(crate) async fn ready(&self) {
        self.limiter.until_ready().await;
    }
}

/// A request rate between a floor and the configured ceiling that halves when the server
/// throttles and climbs back by a twentieth of the ceiling per calm second, so a job under a
/// provisioned throughput settles just below it instead of storming it with retries.
pub(crate) struct AdaptiveRate {
    ceiling: f64,
    floor: f64,
    state: Mutex<Adaptation>,
}

struct Adaptation {
    rate: f64,
    limit: Arc<RateLimit>,
    changed: Instant,
    paused_until: Option<Instant>,
    throttles: u64,
}

/// How long after a change the rate stays put: one burst of 429s halves it once, not once per
/// request in flight, and increases come once a second.
const STEADY: Duration = Duration::from_secs(1);

impl AdaptiveRate {
    /// Starts at `ceiling` requests per second (which must be positive).
    pub(crate) fn new(ceiling: f64) -> AdaptiveRate {
        let floor = (ceiling / 64.0).max(0.5).min(ceiling);
        AdaptiveRate {
            ceiling,
            floor,
            state: Mutex::new(Adaptation {
                rate: ceiling,
                limit: Arc::new(pace(ceiling)),
                changed: Instant::now(),
                paused_until: None,
                throttles: 0,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Adaptation> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until the next request may start: past any retry-after the server asked for, and
    /// paced at the current rate.
    pub(crate) async fn ready(&self) {
        let (limit, paused_until) = {
            let state = self.state();
            (state.limit.clone(), state.paused_until)
        };
        if let Some(until) = paused_until {
            tokio::time::sleep_until(until.into()).await;
        }
        limit.ready().await;
    }

    /// The server throttled a request and asked to wait `retry_after`: halve the rate (once per
    /// steady period) and hold every request until then.
    pub(crate) fn throttled(&self, retry_after: Option<Duration>) {
        let mut state = self.state();
        state.throttles += 1;
        let now = Instant::now();
        if let Some(wait) = retry_after {
            let until = now + wait;
            state.paused_until = Some(state.paused_until.map_or(until, |u| u.max(until)));
        }
        if now.duration_since(state.changed) >= STEADY || state.rate >= self.ceiling {
            let rate = (state.rate / 2.0).max(self.floor);
            if rate < state.rate {
                tracing::info!(
                    from = state.rate,
                    to = rate,
                    throttles = state.throttles,
                    "throttled: lowering the request rate"
                );
            }
            state.rate = rate;
            state.limit = Arc::new(pace(rate));
            state.changed = now;
        }
    }

    /// How many times the server throttled a request so far.
    pub(crate) fn throttles(&self) -> u64 {
        self.state().throttles
    }

    /// A request went through unthrottled: after a steady period, raise the rate a step.
    pub(crate) fn succeeded(&self) {
        let mut state = self.state();
        let now = Instant::now();
        if state.rate < self.ceiling && now.duration_since(state.changed) >= STEADY {
            let rate = (state.rate + self.ceiling / 20.0).min(self.ceiling);
            if rate == self.ceiling {
                tracing::info!(rate, "request rate back at its ceiling");
            }
            state.rate = rate;
            state.limit = Arc::new(pace(rate));
            state.changed = now;
        }
    }

    /// The current rate, requests per second.
    #[cfg(test)]
    pub(crate) fn current(&self) -> f64 {
        self.state().rate
    }
}

fn pace(rate: f64) -> RateLimit {
    RateLimit::per_second(rate).expect("adaptive rates stay positive")
}

/// A budget of request units per second, spent by the charge each response reports: a
/// request that cost more makes the next ones wait longer.
pub(crate) struct ChargeBudget {
    limiter: DefaultDirectRateLimiter,
    burst: u32,
}

impl ChargeBudget {
    /// `units` per second; `None` when not positive (no budget).
    pub(crate) fn per_second(units: f64) -> Option<ChargeBudget> {
        if !(units.is_finite() && units > 0.0) {
            return None;
        }
        let burst = (units.ceil() as u32).max(1);
        let quota = Quota::per_second(NonZeroU32::new(burst)?);
        Some(ChargeBudget {
            limiter: RateLimiter::direct(quota),
            burst,
        })
    }

    /// Waits until `charge` units have been earned back.
    pub(crate) async fn spend(&self, charge: f64) {
        let units = (charge.ceil() as u32).clamp(1, self.burst);
        if let Some(units) = NonZeroU32::new(units) {
            // `units` never exceeds the burst, so this only waits.
            let _ = self.limiter.until_n_ready(units).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_rejects_rates_that_are_not_positive() {
        assert!(RateLimit::per_second(0.0).is_none());
        assert!(RateLimit::per_second(-1.0).is_none());
        assert!(RateLimit::per_second(f64::NAN).is_none());
        assert!(RateLimit::per_second(0.5).is_some());
    }

    /// Whether `check` refused, or allowed only because a tenth of a second had passed since
    /// `started` (a busy machine may take that long between two lines).
    fn paced(check: Result<(), impl std::fmt::Debug>, started: Instant) -> bool {
        check.is_err() || started.elapsed() >= Duration::from_millis(100)
    }

    #[test]
    fn throttle_allows_one_at_once_then_paces() {
        let limit = RateLimit::per_second(10.0).expect("positive");
        let started = Instant::now();
        assert!(
            limit.limiter.check().is_ok(),
            "the first operation starts at once"
        );
        assert!(
            paced(limit.limiter.check(), started),
            "the second waits a tenth of a second"
        );
    }

    #[test]
    fn throttle_adaptive_rate_halves_once_per_burst_and_climbs_back() {
        let rate = AdaptiveRate::new(100.0);
        rate.throttled(None);
        assert_eq!(rate.current(), 50.0);
        // The next 429 comes within the same burst, however long the machine takes to get there.
        let halved = rate.state().changed;
        rate.state().changed = Instant::now() + Duration::from_secs(3600);
        rate.throttled(None);
        assert_eq!(rate.current(), 50.0, "a burst of 429s halves the rate once");
        rate.state().changed = halved - STEADY;
        rate.throttled(Some(Duration::from_millis(5)));
        assert_eq!(rate.current(), 25.0, "a later throttle halves it again");
        assert!(
            rate.state().paused_until.is_some(),
            "retry-after holds requests"
        );
        rate.state().changed -= STEADY;
        rate.succeeded();
        assert_eq!(
            rate.current(),
            30.0,
            "a calm second adds a twentieth of the ceiling"
        );
        for _ in 0..100 {
            rate.state().changed -= STEADY;
            rate.succeeded();
        }
        assert_eq!(rate.current(), 100.0, "never above the ceiling");
        assert_eq!(rate.throttles(), 3);
        for _ in 0..100 {
            rate.state().changed -= STEADY;
            rate.throttled(None);
        }
        assert!(rate.current() >= 100.0 / 64.0, "never below the floor");
    }

    #[test]
    fn throttle_charge_budget_needs_a_positive_budget() {
        assert!(ChargeBudget::per_second(0.0).is_none());
        let budget = ChargeBudget::per_second(10.0).expect("positive");
        let started = Instant::now();
        assert!(budget.limiter.check_n(NonZeroU32::new(10).unwrap()).is_ok());
        assert!(
            paced(budget.limiter.check(), started),
            "the budget is spent"
        );
    }
}

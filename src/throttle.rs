//! Rate limits shared by the sinks: a governor limiter paces operations (units, requests) of
//! one process to a configured rate, so a load never trips a database's throttles.
//! Concurrency limits are not here: the consumer runs at most a sink's
//! [`concurrency`](crate::sink::Sink::concurrency) units at once.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Paces operations to at most `rate` per second, evenly spaced (no bursts: a database that
/// allows 50 writes a second is kinder to 50 spread out than to 50 at once).
pub struct RateLimit {
    limiter: DefaultDirectRateLimiter,
}

impl RateLimit {
    /// A limit of `rate` operations per second; `None` for a rate that is not positive.
    pub fn per_second(rate: f64) -> Option<RateLimit> {
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
    pub async fn ready(&self) {
        self.limiter.until_ready().await;
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

    #[test]
    fn throttle_allows_one_at_once_then_paces() {
        let limit = RateLimit::per_second(10.0).expect("positive");
        assert!(
            limit.limiter.check().is_ok(),
            "the first operation starts at once"
        );
        assert!(
            limit.limiter.check().is_err(),
            "the second waits a tenth of a second"
        );
    }
}

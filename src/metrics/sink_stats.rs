//! A consumer's numbers for one sink that only dashboards read: how long writes take, how
//! often the database throttled, how often a write was fenced off. Kept in atomics on the write
//! path (a few nanoseconds a unit) and added to the run's telemetry hash once a heartbeat, only
//! when something changed, so a busy consumer costs Redis one extra write a second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::HistogramValue;
use crate::run_state::RunState;

/// Upper bounds (seconds) of the write-latency buckets; `+Inf` follows.
pub const WRITE_SECONDS_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Telemetry field kinds, `<kind>:<sink>` (buckets `write_bucket:<i>:<sink>`).
pub(crate) const WRITE_BUCKET: &str = "write_bucket";
pub(crate) const WRITE_SUM_US: &str = "write_sum_us";
pub(crate) const WRITE_COUNT: &str = "write_count";
pub(crate) const THROTTLED: &str = "throttled";
pub(crate) const FENCED: &str = "fenced";
pub(crate) const RESTARTS: &str = "restarts";

/// Counters of one sink in one consumer, drained into Redis by [`SinkStats::flush`].
#[derive(Debug)]
pub struct SinkStats {
    sink: String,
    buckets: [AtomicU64; WRITE_SECONDS_BUCKETS.len() + 1],
    sum_us: AtomicU64,
    fenced: AtomicU64,
    throttled_reported: AtomicU64,
}

impl SinkStats {
    /// Empty counters for `sink`.
    pub fn new(sink: &str) -> SinkStats {
        SinkStats {
            sink: sink.to_string(),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
            throttled_reported: AtomicU64::new(0),
        }
    }

    /// One write request (attempt) took `elapsed`.
    pub fn observe_write(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = WRITE_SECONDS_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(WRITE_SECONDS_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// A write was refused because a newer run holds the job.
    pub fn fenced(&self) {
        self.fenced.fetch_add(1, Ordering::Relaxed);
    }

    /// The changes since the last call, as telemetry fields; `throttled_total` is the sink's
    /// own running count of throttled requests.
    fn take_deltas(&self, throttled_total: u64) -> Vec<(String, u64)> {
        let sink = &self.sink;
        let mut deltas = Vec::new();
        let mut count = 0;
        for (index, bucket) in self.buckets.iter().enumerate() {
            let taken = bucket.swap(0, Ordering::Relaxed);
            if taken > 0 {
                deltas.push((format!("{WRITE_BUCKET}:{index}:{sink}"), taken));
                count += taken;
            }
        }
        if count > 0 {
            deltas.push((format!("{WRITE_COUNT}:{sink}"), count));
            let sum = self.sum_us.swap(0, Ordering::Relaxed);
            deltas.push((format!("{WRITE_SUM_US}:{sink}"), sum));
        }
        let fenced = self.fenced.swap(0, Ordering::Relaxed);
        if fenced > 0 {
            deltas.push((format!("{FENCED}:{sink}"), fenced));
        }
        let before = self
            .throttled_reported
            .swap(throttled_total, Ordering::Relaxed);
        if throttled_total > before {
            deltas.push((format!("{THROTTLED}:{sink}"), throttled_total - before));
        }
        deltas
    }

    /// Adds what changed since the last flush to the run's telemetry (nothing when idle). A
    /// failed flush is logged and its counts dropped: dashboards only, never the run's results.
    pub async fn flush(&self, state: &RunState, throttled_total: u64) {
        let deltas = self.take_deltas(throttled_total);
        if let Err(error) = state.telemetry().add(&deltas).await {
            tracing::debug!(%error, "could not report write metrics");
        }
    }
}

/// Reads a latency histogram of `sink` back from telemetry fields (all zero before the
/// first write is reported, so the series exists from the run's start).
pub(crate) fn write_histogram(
    fields: &std::collections::HashMap<String, u64>,
    sink: &str,
) -> HistogramValue {
    let count = fields
        .get(&format!("{WRITE_COUNT}:{sink}"))
        .copied()
        .unwrap_or(0);
    let sum_us = fields
        .get(&format!("{WRITE_SUM_US}:{sink}"))
        .copied()
        .unwrap_or(0);
    let buckets = WRITE_SECONDS_BUCKETS
        .iter()
        .copied()
        .chain([f64::MAX])
        .enumerate()
        .map(|(index, bound)| {
            let field = format!("{WRITE_BUCKET}:{index}:{sink}");
            (bound, fields.get(&field).copied().unwrap_or(0))
        })
        .collect();
    HistogramValue {
        sum: sum_us as f64 / 1e6,
        count,
        buckets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_sink_stats_reports_deltas_once_and_reads_back_as_a_histogram() {
        let stats = SinkStats::new("db");
        stats.observe_write(Duration::from_millis(3));
        stats.observe_write(Duration::from_millis(300));
        stats.observe_write(Duration::from_secs(60));
        stats.fenced();
        let deltas = stats.take_deltas(4);
        let fields: std::collections::HashMap<String, u64> = deltas.into_iter().collect();
        assert_eq!(fields["write_count:db"], 3);
        assert_eq!(fields["fenced:db"], 1);
        assert_eq!(fields["throttled:db"], 4);
        let histogram = write_histogram(&fields, "db");
        assert_eq!(histogram.count, 3);
        assert_eq!(histogram.buckets[0], (0.005, 1));
        assert_eq!(histogram.buckets[6], (0.5, 1));
        assert_eq!(histogram.buckets[12], (f64::MAX, 1));
        assert!((histogram.sum - 60.303).abs() < 1e-9);
        // Nothing new: nothing to send; the sink's throttle count is only sent as it grows.
        assert!(stats.take_deltas(4).is_empty());
        assert_eq!(stats.take_deltas(6), vec![("throttled:db".to_string(), 2)]);
    }
}

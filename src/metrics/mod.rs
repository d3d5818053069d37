//! What stevedore tells a dashboard: Prometheus metrics and the small HTTP server that serves
//! them (and, for `supervise`, the status JSON and page).
//!
//! Metrics are read from Redis when a scrape comes, never pushed on a hot path: workers already
//! keep their progress in the run's state, and the few numbers only a dashboard needs (write
//! latency, throttled requests, fencing rejections, restarts) are added to the run's telemetry
//! hash at most once a heartbeat ([`SinkStats`]). A scrape therefore costs a handful of Redis
//! reads and asks no worker anything; any host that reaches the Redis can serve it.
//! The exposition is `prometheus-client`'s; none of the format is written here.

pub mod http;
pub mod run_view;
pub mod samples;
pub mod sink_stats;

pub use run_view::{RunMetrics, job_metrics};
pub use samples::{HistogramValue, Samples};
pub use sink_stats::SinkStats;

/// The label naming a stevedore job. Not `job`: Prometheus sets `job` to the scrape job's name
/// and would rename ours to `exported_job` (with the default `honor_labels: false`).
pub const JOB_LABEL: &str = "stevedore_job";

/// The content type of [`Samples::render`]'s output (OpenMetrics text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

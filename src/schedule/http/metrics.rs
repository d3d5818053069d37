//! The daemon's `/metrics`: what this daemon saw happen (passes it ended, their durations,
//! leases it lost) as live counters, plus, read from Redis at each scrape, every schedule's
//! state (next fire, last success, failures in a row, missed and skipped slots, paused) and
//! its job's numbers (current run, queues, dead letters). Group-wide values are the same from
//! every daemon: aggregate them with `max`, and the per-daemon counters with `sum`.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::Value;

use crate::metrics::samples::Labels;
use crate::metrics::{JOB_LABEL, Samples};
use crate::queue::{LinkError, RedisLink};
use crate::schedule::{ScheduleConfig, SuperviseConfig, Timing};

/// Upper bounds (seconds) of the pass-duration buckets: from seconds to a long nightly load.
const PASS_SECONDS_BUCKETS: [f64; 12] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0,
];

fn pass_histogram() -> Histogram {
    Histogram::new(PASS_SECONDS_BUCKETS)
}

/// Counters of what this daemon saw happen, kept for its lifetime.
pub struct DaemonMetrics {
    passes: Family<Labels, Counter>,
    durations: Family<Labels, Histogram, fn() -> Histogram>,
    leases_lost: Family<Labels, Counter>,
}

impl Default for DaemonMetrics {
    fn default() -> Self {
        DaemonMetrics {
            passes: Family::default(),
            durations: Family::new_with_constructor(pass_histogram),
            leases_lost: Family::default(),
        }
    }
}

fn labels(schedule: &ScheduleConfig) -> Labels {
    vec![
        ("schedule".to_string(), schedule.name.clone()),
        (JOB_LABEL.to_string(), schedule.job_name.clone()),
    ]
}

impl DaemonMetrics {
    /// A pass of `schedule` that this daemon ran ended with `outcome` after `took`.
    pub fn pass_ended(&self, schedule: &ScheduleConfig, outcome: &str, took: std::time::Duration) {
        let mut with_outcome = labels(schedule);
        with_outcome.push(("outcome".to_string(), outcome.to_string()));
        self.passes.get_or_create(&with_outcome).inc();
        self.durations
            .get_or_create(&labels(schedule))
            .observe(took.as_secs_f64());
    }

    /// Starts the counters of `schedule` at zero, so its series exist before the first event
    /// (a rule on `increase()` needs them).
    pub fn watch(&self, schedule: &ScheduleConfig) {
        let _ = self.leases_lost.get_or_create(&labels(schedule));
    }

    /// Another daemon took over a pass of `schedule` that this one ran.
    pub fn lease_lost(&self, schedule: &ScheduleConfig) {
        self.leases_lost.get_or_create(&labels(schedule)).inc();
    }

    fn registry(&self) -> Registry {
        let mut registry = Registry::default();
        registry.register(
            "stevedore_passes",
            "Passes this daemon ran, by schedule and outcome (ok, dead_letters, failed, timed_out, stopped)",
            self.passes.clone(),
        );
        registry.register(
            "stevedore_pass_duration_seconds",
            "How long the passes this daemon ran took",
            self.durations.clone(),
        );
        registry.register(
            "stevedore_leases_lost",
            "Passes of this daemon that another daemon took over (this one was cut off or paused)",
            self.leases_lost.clone(),
        );
        registry
    }
}

/// The whole `/metrics` page: this daemon's counters, then every schedule and job as Redis has
/// them (`status` is the group's status JSON, read for this scrape).
pub async fn scrape(
    config: &SuperviseConfig,
    link: &Arc<RedisLink>,
    status: &Value,
    mine: &DaemonMetrics,
) -> Result<String, LinkError> {
    let mut samples = Samples::default();
    let alive = status["daemons"]
        .as_array()
        .map(|daemons| daemons.iter().filter(|d| d["alive"] == true).count())
        .unwrap_or(0);
    samples.gauge(
        "stevedore_daemons_alive",
        "Daemons of the group whose heartbeat is recent.",
        &[("group", &config.group.name)],
        alive as f64,
    );
    let read_only = !status["read_only"].is_null();
    samples.gauge(
        "stevedore_group_read_only",
        "1 while the group is read-only (passes run with --dry-run).",
        &[("group", &config.group.name)],
        f64::from(u8::from(read_only)),
    );
    let schedules = status["schedules"].as_array().cloned().unwrap_or_default();
    for (schedule, seen) in config.schedules.iter().zip(&schedules) {
        schedule_series(&mut samples, schedule, seen);
        crate::metrics::job_metrics(
            &mut samples,
            link,
            &schedule.job_name,
            &schedule.sinks,
            &[("schedule", &schedule.name)],
        )
        .await?;
    }
    Ok(samples.render(mine.registry()))
}

/// One schedule's state, from its part of the status JSON.
fn schedule_series(samples: &mut Samples, schedule: &ScheduleConfig, seen: &Value) {
    let at = [
        ("schedule", schedule.name.as_str()),
        (JOB_LABEL, schedule.job_name.as_str()),
    ];
    if let Some(next) = seconds(&seen["next_fire"]["utc"]) {
        samples.gauge(
            "stevedore_schedule_next_fire_timestamp_seconds",
            "When the schedule's next pass is due (Unix time).",
            &at,
            next,
        );
    }
    if let Some(period) = period(schedule, seen) {
        samples.gauge(
            "stevedore_schedule_period_seconds",
            "The schedule's period: `every`, or for cron the gap between its next two slots (alert rules use it).",
            &at,
            period,
        );
    }
    if let Some(success) = seconds(&seen["last_success_at"]) {
        samples.gauge(
            "stevedore_schedule_last_success_timestamp_seconds",
            "When a pass of the schedule last succeeded (ok or dead_letters; Unix time).",
            &at,
            success,
        );
    }
    let number = |value: &Value| value.as_f64().unwrap_or(0.0);
    samples.gauge(
        "stevedore_schedule_consecutive_failures",
        "Failed passes in a row (0 after a success).",
        &at,
        number(&seen["consecutive_failures"]),
    );
    for (reason, field) in [("no_daemon_looked", "missed"), ("overlap", "skipped")] {
        let mut labelled = at.to_vec();
        labelled.push(("reason", reason));
        samples.counter(
            "stevedore_schedule_missed_slots",
            "Slots that did not run: no daemon looked in time (catch-up policy), or a pass was running (overlap policy).",
            &labelled,
            number(&seen[field]),
        );
    }
    samples.gauge(
        "stevedore_schedule_paused",
        "1 while the schedule is paused.",
        &at,
        f64::from(u8::from(!seen["paused"].is_null())),
    );
    samples.gauge(
        "stevedore_schedule_gated",
        "1 when this daemon's environment does not run the schedule.",
        &at,
        f64::from(u8::from(seen["gated"] == true)),
    );
    samples.gauge(
        "stevedore_schedule_running",
        "1 while a pass of the schedule runs.",
        &at,
        f64::from(u8::from(!seen["running"].is_null())),
    );
}

/// How far apart the schedule's passes are, in seconds.
fn period(schedule: &ScheduleConfig, seen: &Value) -> Option<f64> {
    match &schedule.timing {
        Timing::Every(every) => Some(every.as_secs_f64()),
        Timing::Cron(cron) => {
            let next = (seconds(&seen["next_fire"]["utc"])? * 1000.0) as i64;
            let after = cron.next_slot(next)?;
            Some((after - next) as f64 / 1000.0)
        }
    }
}

/// An RFC 3339 time as Unix seconds.
fn seconds(value: &Value) -> Option<f64> {
    let text = value.as_str()?;
    let at = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    Some(at.timestamp_millis() as f64 / 1000.0)
}

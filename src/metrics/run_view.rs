//! A job's numbers as Redis holds them: its current run's progress, queues and telemetry, and
//! its dead-letter queues. Read once per scrape by `run --metrics-addr` and by `supervise`.

use std::collections::HashMap;
use std::sync::Arc;

use super::sink_stats::{FENCED, RESTARTS, THROTTLED, write_histogram};
use super::{JOB_LABEL, Samples};
use crate::queue::{LinkError, QueueCounts, Queues, RedisLink, SinkQueues};
use crate::run_state::{Progress, RunState};

/// What the current run of a job has done so far.
#[derive(Debug, Clone, Default)]
pub struct RunMetrics {
    /// The run's id.
    pub run: String,
    /// Records read, written and dead-lettered.
    pub progress: Progress,
    /// Per sink: the units queue.
    pub queues: HashMap<String, QueueCounts>,
    /// Write latency, throttling, fencing and restart counters.
    pub telemetry: HashMap<String, u64>,
}

impl RunMetrics {
    /// The current run of `job` (sinks `sinks`), or `None` when none runs.
    pub async fn read(
        link: &Arc<RedisLink>,
        job: &str,
        sinks: &[String],
    ) -> Result<Option<RunMetrics>, LinkError> {
        let run: Option<String> = link
            .query(
                "reading the job's current run",
                &redis::Cmd::get(RunState::current_run_key(job)),
            )
            .await?;
        let Some(run) = run else { return Ok(None) };
        let state = RunState::new(link.clone(), job, &run);
        let queues = Queues::new(link.clone());
        let mut counts = HashMap::new();
        for sink in sinks {
            let names = SinkQueues::new(job, sink);
            counts.insert(sink.clone(), queues.counts(&names.units).await?);
        }
        Ok(Some(RunMetrics {
            progress: state.ledger().progress().await?,
            telemetry: state.telemetry().read().await?,
            queues: counts,
            run,
        }))
    }

    /// Adds this run's series, labelled with `job` and `labels` (e.g. the schedule).
    pub fn add_to(
        &self,
        samples: &mut Samples,
        job: &str,
        labels: &[(&str, &str)],
        sinks: &[String],
    ) {
        let mut sources: Vec<_> = self.progress.read_by_source.iter().collect();
        sources.sort();
        for (source, read) in sources {
            samples.counter(
                "stevedore_records_read",
                "Records read by the current run, per source (rejected lines included).",
                &labelled(job, labels, &[("source", source)]),
                *read as f64,
            );
        }
        for sink in sinks {
            let at = labelled(job, labels, &[("sink", sink)]);
            let count = |map: &HashMap<String, u64>| map.get(sink).copied().unwrap_or(0) as f64;
            samples.counter(
                "stevedore_records_written",
                "Records the current run wrote, per sink.",
                &at,
                count(&self.progress.written),
            );
            samples.counter(
                "stevedore_records_dead_lettered",
                "Records the current run sent to the dead-letter queue, per sink.",
                &at,
                count(&self.progress.dead),
            );
            let queue = self.queues.get(sink).copied().unwrap_or_default();
            samples.gauge(
                "stevedore_queue_depth",
                "Units waiting in the sink's queue.",
                &at,
                queue.waiting as f64,
            );
            samples.gauge(
                "stevedore_units_in_flight",
                "Units received by consumers and not yet acknowledged.",
                &at,
                queue.in_flight as f64,
            );
            let field = |kind: &str| {
                self.telemetry
                    .get(&format!("{kind}:{sink}"))
                    .copied()
                    .unwrap_or(0) as f64
            };
            samples.counter(
                "stevedore_sink_throttled_requests",
                "Requests the database throttled (e.g. Cosmos DB 429), per sink.",
                &at,
                field(THROTTLED),
            );
            samples.counter(
                "stevedore_fencing_rejections",
                "Writes refused because a newer run holds the job's lock.",
                &at,
                field(FENCED),
            );
            samples.histogram(
                "stevedore_sink_write_seconds",
                "How long one write of a unit to the sink took (each attempt).",
                &at,
                write_histogram(&self.telemetry, sink),
            );
        }
        for role in ["producer", "consumer"] {
            let restarts = self
                .telemetry
                .get(&format!("{RESTARTS}:{role}"))
                .copied()
                .unwrap_or(0);
            samples.counter(
                "stevedore_worker_restarts",
                "Worker processes the supervisor restarted in the current run, per role.",
                &labelled(job, labels, &[("role", role)]),
                restarts as f64,
            );
        }
    }
}

/// The labels of a series of `job`: the job, then `labels` (e.g. the schedule), then `extra`.
fn labelled<'a>(
    job: &'a str,
    labels: &[(&'a str, &'a str)],
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut all = vec![(JOB_LABEL, job)];
    all.extend_from_slice(labels);
    all.extend_from_slice(extra);
    all
}

/// Adds every series of `job`: its dead-letter queues, whether a run is going on, and the
/// current run's numbers if there is one.
pub async fn job_metrics(
    samples: &mut Samples,
    link: &Arc<RedisLink>,
    job: &str,
    sinks: &[String],
    labels: &[(&str, &str)],
) -> Result<(), LinkError> {
    let queues = Queues::new(link.clone());
    for sink in sinks {
        let dead = queues.counts(&SinkQueues::new(job, sink).dead).await?;
        let dead = dead.waiting + dead.in_flight;
        samples.gauge(
            "stevedore_dead_letters",
            "Messages in the sink's dead-letter queue (see `stevedore dlq list`).",
            &labelled(job, labels, &[("sink", sink)]),
            dead as f64,
        );
    }
    let run = RunMetrics::read(link, job, sinks).await?;
    samples.gauge(
        "stevedore_run_active",
        "1 while a run of the job is unfinished.",
        &labelled(job, labels, &[]),
        if run.is_some() { 1.0 } else { 0.0 },
    );
    if let Some(run) = run {
        run.add_to(samples, job, labels, sinks);
    }
    Ok(())
}

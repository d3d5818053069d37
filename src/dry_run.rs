//! `stevedore run --dry-run`: read every source, map every record for every sink, check each
//! sink the way `stevedore check` does, and report what would have been written and what
//! dead-lettered, with the first reasons. Nothing is written: not to a sink, not to Redis (no
//! run is started, so an unfinished run stays as it was), not to a dead-letter queue.
//!
//! It runs in this one process, without workers: what it proves is that the input reads and
//! maps, and that every sink is reachable and fits; what a database itself would refuse on
//! insert (a value out of its column's range) only a real write finds.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::config::JobConfig;
use crate::plan::plan_sources;
use crate::sink::{self, SinkError};
use crate::source::{self, Entry, OpenContext, SourceError};

/// How many dead-letter reasons per sink a report names.
const REASONS_SHOWN: usize = 5;

/// What a dry run found.
#[derive(Debug, Clone, Serialize)]
pub struct DryRunReport {
    /// The job.
    pub job: String,
    /// Always true: tells this summary from a real run's.
    pub dry_run: bool,
    /// `ok`, `dead_letters` (some records would be dead-lettered) or `failed`.
    pub status: &'static str,
    /// Why it failed, if it did.
    pub reason: Option<String>,
    /// Records (and unreadable lines) read.
    pub records_read: u64,
    /// Per sink.
    pub sinks: BTreeMap<String, SinkReport>,
    /// Seconds it took.
    pub duration_s: f64,
}

/// One sink's part of a dry run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SinkReport {
    /// The sink's kind.
    pub kind: String,
    /// What `check` said about the target.
    pub check: String,
    /// Rows that would be written.
    pub would_write: u64,
    /// Entries that would go to the dead-letter queue.
    pub would_dead_letter: u64,
    /// The first few of their reasons, with the line each came from.
    pub reasons: Vec<String>,
}

impl DryRunReport {
    /// The exit code: 0, 3 with would-be dead letters, 2 when a sink does not fit, 1 failed.
    pub fn exit_code(&self, sink_misfit: bool) -> i32 {
        match self.status {
            "ok" => 0,
            "dead_letters" => 3,
            _ if sink_misfit => 2,
            _ => 1,
        }
    }

    /// The report for a person.
    pub fn render(&self) -> String {
        let mut out = format!(
            "stevedore: dry run of job {}: {} in {:.1} s; nothing was written\n  read  {:>12} records\n",
            self.job, self.status, self.duration_s, self.records_read
        );
        if let Some(reason) = &self.reason {
            out.push_str(&format!("  reason: {reason}\n"));
        }
        for (name, sink) in &self.sinks {
            out.push_str(&format!(
                "  {name:<12} would write {}, would dead-letter {} ({})\n",
                sink.would_write, sink.would_dead_letter, sink.check
            ));
            for reason in &sink.reasons {
                out.push_str(&format!("      {reason}\n"));
            }
        }
        out
    }
}

/// Runs `config` dry: returns the report and whether a sink did not fit its target.
pub async fn dry_run(config: &JobConfig) -> (DryRunReport, bool) {
    let started = Instant::now();
    let mut report = DryRunReport {
        job: config.job.name.clone(),
        dry_run: true,
        status: "ok",
        reason: None,
        records_read: 0,
        sinks: BTreeMap::new(),
        duration_s: 0.0,
    };
    let mut misfit = false;
    for sink_config in &config.sinks {
        let check = match sink::from_config(sink_config).check().await {
            Ok(line) => line,
            Err(error) => {
                misfit |= !error.is_transient();
                fail(&mut report, check_failure(&error));
                error.to_string()
            }
        };
        report.sinks.insert(
            sink_config.name.clone(),
            SinkReport {
                kind: sink_config.kind.to_string(),
                check,
                ..SinkReport::default()
            },
        );
    }
    // Reading is blocking work (files); it runs off the async threads.
    let reading = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || read_and_map(&config))
    };
    match reading.await {
        Ok(Ok((read, per_sink))) => {
            report.records_read = read;
            for (name, counted) in per_sink {
                let sink = report.sinks.entry(name).or_default();
                sink.would_write = counted.would_write;
                sink.would_dead_letter = counted.would_dead_letter;
                sink.reasons = counted.reasons;
            }
        }
        Ok(Err(error)) => fail(&mut report, error.to_string()),
        Err(error) => fail(&mut report, format!("the reading thread failed: {error}")),
    }
    if report.status == "ok" && report.sinks.values().any(|s| s.would_dead_letter > 0) {
        report.status = "dead_letters";
    }
    report.duration_s = started.elapsed().as_secs_f64();
    (report, misfit)
}

fn check_failure(error: &SinkError) -> String {
    format!("{error} (a real run would stop here)")
}

fn fail(report: &mut DryRunReport, reason: String) {
    report.status = "failed";
    report.reason.get_or_insert(reason);
}

/// Reads every work item of every source and maps each record for each sink.
fn read_and_map(config: &JobConfig) -> Result<(u64, BTreeMap<String, SinkReport>), SourceError> {
    let mut per_sink: BTreeMap<String, SinkReport> = BTreeMap::new();
    let mut read = 0;
    for item in plan_sources(config)? {
        let source_config = config
            .sources
            .iter()
            .find(|s| s.name == item.source)
            .expect("work items name their source");
        let origin = item.origin.clone();
        // Limits hold for this process alone: a dry run writes nothing to Redis.
        let context = OpenContext::local(&config.job.name, config.queue.max_record_bytes);
        let entries = source::from_config(source_config).open(&item, &context)?;
        for entry in entries {
            match entry? {
                // A page boundary of an API: no record.
                Entry::Resumable { .. } => continue,
                Entry::Record { line, value } => {
                    let raw = serde_json::value::to_raw_value(&value)
                        .expect("a parsed record serializes");
                    map_for_each_sink(config, &mut per_sink, &origin, line, &raw);
                }
                Entry::Text { line, record } => {
                    let raw: &RawValue =
                        serde_json::from_str(record.as_str()).expect("a checked record is JSON");
                    map_for_each_sink(config, &mut per_sink, &origin, line, raw);
                }
                Entry::Rejected(reject) => {
                    for sink in &config.sinks {
                        let counted = per_sink.entry(sink.name.clone()).or_default();
                        note(
                            counted,
                            format!("{origin} line {}: {}", reject.line, reject.reason),
                        );
                    }
                }
            }
            read += 1;
        }
    }
    Ok((read, per_sink))
}

/// Maps one record for every sink, counting what each would write or dead-letter.
fn map_for_each_sink(
    config: &JobConfig,
    per_sink: &mut BTreeMap<String, SinkReport>,
    origin: &str,
    line: u64,
    raw: &RawValue,
) {
    for sink in &config.sinks {
        let counted = per_sink.entry(sink.name.clone()).or_default();
        match sink.map.apply_raw(raw) {
            Ok(_) => counted.would_write += 1,
            Err(error) => {
                note(counted, format!("{origin} line {line}: {error}"));
            }
        }
    }
}

fn note(counted: &mut SinkReport, reason: String) {
    counted.would_dead_letter += 1;
    if counted.reasons.len() < REASONS_SHOWN {
        counted.reasons.push(reason);
    }
}

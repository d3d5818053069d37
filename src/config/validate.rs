//! Checks across fields that types alone cannot express: names, ranges, keys that must
//! agree with each other. Each failed check adds a problem; none stops the others. A kind checks
//! its own settings when it reads them; what is checked here spans the whole job.

use std::collections::HashSet;
use std::time::Duration;

use super::{JobConfig, Problems};
use crate::settings::check_name;

/// Adds a problem for every rule `config` breaks.
pub(super) fn validate(config: &JobConfig, problems: &mut Problems) {
    check_name(&config.job.name, "job.name", problems);
    check_workers(config, problems);
    check_queue(config, problems);
    let mut names = HashSet::new();
    for (index, source) in config.sources.iter().enumerate() {
        let path = format!("source[{index}] ({})", source.name);
        check_name(&source.name, &format!("{path}.name"), problems);
        if !names.insert(source.name.as_str()) {
            problems.push(format!("{path}.name"), "another source has this name");
        }
    }
    let mut names = HashSet::new();
    let mut targets = HashSet::new();
    for (index, sink) in config.sinks.iter().enumerate() {
        let path = format!("sink[{index}] ({})", sink.name);
        check_name(&sink.name, &format!("{path}.name"), problems);
        if !names.insert(sink.name.as_str()) {
            problems.push(format!("{path}.name"), "another sink has this name");
        }
        if let Some(target) = sink.settings.exclusive_target()
            && !targets.insert((sink.kind, target.identity))
        {
            problems.push(format!("{path}.{}", target.field), target.clash);
        }
    }
}

/// Most worker processes of one role: each is a process with its own runtime and pools.
pub(super) const MAX_WORKERS: u32 = 256;
/// One day, the bound of the longest waits.
const DAY: Duration = Duration::from_secs(86_400);
/// Workers beat every second; a timeout under three beats kills healthy workers.
pub(super) const MIN_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// RSMQ keeps a unit hidden for at most 9,999,999 seconds.
pub(super) const MAX_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(9_999_999);
/// Smallest and largest record size cap: a unit holds up to two caps' worth of records and
/// must fit a Redis string (512 MiB).
pub(super) const RECORD_BYTES_RANGE: std::ops::RangeInclusive<usize> = 1024..=(128 << 20);

fn check_workers(config: &JobConfig, problems: &mut Problems) {
    let workers = &config.workers;
    for (field, count) in [
        ("producers", workers.producers),
        ("consumers", workers.consumers),
    ] {
        if !(1..=MAX_WORKERS).contains(&count) {
            problems.push(
                format!("workers.{field}"),
                format!("must be between 1 and {MAX_WORKERS} (each is a process), not {count}"),
            );
        }
    }
    if workers.heartbeat_timeout < MIN_HEARTBEAT_TIMEOUT {
        problems.push(
            "workers.heartbeat_timeout",
            "must be at least 3s (workers beat once a second; less kills healthy workers)",
        );
    }
    if workers.heartbeat_timeout > DAY {
        problems.push("workers.heartbeat_timeout", "must be at most 1 day");
    }
    if !(Duration::from_secs(1)..=7 * DAY).contains(&workers.restart_window) {
        problems.push("workers.restart_window", "must be between 1s and 7 days");
    }
    if workers.max_restarts > 10_000 {
        problems.push("workers.max_restarts", "must be at most 10000");
    }
}

fn check_queue(config: &JobConfig, problems: &mut Problems) {
    let queue = &config.queue;
    if !(1..=100_000).contains(&queue.unit_records) {
        problems.push("queue.unit_records", "must be between 1 and 100000");
    }
    if !(1..=1000).contains(&queue.max_receives) {
        problems.push("queue.max_receives", "must be between 1 and 1000");
    }
    if queue.high_watermark == 0 {
        problems.push("queue.high_watermark", "must be at least 1");
    }
    if queue.visibility_timeout < Duration::from_secs(1) {
        problems.push("queue.visibility_timeout", "must be at least 1s");
    }
    if queue.visibility_timeout > MAX_VISIBILITY_TIMEOUT {
        problems.push(
            "queue.visibility_timeout",
            "must be at most 9999999s (about 115 days), the longest RSMQ can hide a unit",
        );
    }
    if queue.compress_above > 1 << 30 {
        problems.push(
            "queue.compress_above",
            "must be at most 1073741824 (a unit is never that large; use it to never compress)",
        );
    }
    if !RECORD_BYTES_RANGE.contains(&queue.max_record_bytes) {
        problems.push(
            "queue.max_record_bytes",
            format!(
                "must be between {} and {} (128 MiB), not {}",
                RECORD_BYTES_RANGE.start(),
                RECORD_BYTES_RANGE.end(),
                queue.max_record_bytes
            ),
        );
    }
}

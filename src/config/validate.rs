//! Checks across fields that types alone cannot express: names, ranges, keys that must
//! agree with each other. Each failed check adds a problem; none stops the others. A kind checks
//! its own settings when it reads them; what is checked here spans the whole job.

use std::collections::HashSet;

use super::{JobConfig, Problems};
use crate::settings::check_name;

/// Adds a problem for every rule `config` breaks.
pub(super) fn validate(config: &JobConfig, problems: &mut Problems) {
    check_name(&config.job.name, "job.name", problems);
    if config.workers.producers == 0 {
        problems.push("workers.producers", "must be at least 1");
    }
    if config.workers.consumers == 0 {
        problems.push("workers.consumers", "must be at least 1");
    }
    if !(1..=100_000).contains(&config.queue.unit_records) {
        problems.push("queue.unit_records", "must be between 1 and 100000");
    }
    if config.queue.max_receives == 0 {
        problems.push("queue.max_receives", "must be at least 1");
    }
    if config.queue.visibility_timeout < std::time::Duration::from_secs(1) {
        problems.push("queue.visibility_timeout", "must be at least 1s");
    }
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

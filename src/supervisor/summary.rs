//! The run summary: what a person reads at the end of a run and what `--summary-json` writes.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    /// Every record read landed in every sink.
    Ok,
    /// Finished, but some records are in dead-letter queues.
    DeadLetters,
    /// The run did not finish; a later run resumes it.
    Failed,
}

/// Per-sink results.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SinkSummary {
    /// The sink kind.
    pub kind: String,
    /// Distinct records that landed.
    pub written: u64,
    /// Records in the dead-letter queue from this run.
    pub dead_lettered: u64,
    /// The dead-letter queue's name.
    pub dead_letter_queue: String,
    /// Columns the sink added to its table for new fields during the run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub columns_added: Vec<String>,
}

/// Per-worker results.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WorkerSummary {
    /// Producer or consumer.
    pub role: crate::worker::Role,
    /// Number within the role.
    pub id: u32,
    /// Latest process id.
    pub pid: u32,
    /// Times it was restarted.
    pub restarts: u32,
}

/// The whole summary.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Summary {
    /// The job.
    pub job: String,
    /// The run id.
    pub run: String,
    /// True when this run continued an interrupted one.
    pub resumed: bool,
    /// How it ended.
    pub status: Status,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Input records read (lines that could not be parsed included).
    pub records_read: u64,
    /// Results per sink.
    pub sinks: BTreeMap<String, SinkSummary>,
    /// The workers.
    pub workers: Vec<WorkerSummary>,
    /// Times the managed Redis was restarted (absent for an external Redis).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_restarts: Option<u32>,
    /// Wall time of this invocation.
    pub duration_s: f64,
    /// Where worker logs are.
    pub log_dir: String,
}

impl Summary {
    /// The process exit code for this outcome: 0 ok, 3 dead letters, 1 failed.
    pub(crate) fn exit_code(&self) -> i32 {
        match self.status {
            Status::Ok => 0,
            Status::DeadLetters => 3,
            Status::Failed => 1,
        }
    }

    /// The summary as a few aligned lines.
    pub(crate) fn render(&self) -> String {
        let status = match self.status {
            Status::Ok => "ok",
            Status::DeadLetters => "finished with dead letters",
            Status::Failed => "FAILED",
        };
        let rate = if self.duration_s > 0.0 {
            self.records_read as f64 / self.duration_s
        } else {
            0.0
        };
        let mut out = String::new();
        let resumed = if self.resumed { " (resumed)" } else { "" };
        let _ = writeln!(
            out,
            "stevedore: job {} run {}{resumed}: {status} in {:.1} s",
            self.job, self.run, self.duration_s
        );
        if let Some(reason) = &self.reason {
            let _ = writeln!(out, "  reason:  {reason}");
        }
        let _ = writeln!(
            out,
            "  read     {:>12} records ({:.0} records/s)",
            thousands(self.records_read),
            rate
        );
        for (name, sink) in &self.sinks {
            let dead = if sink.dead_lettered > 0 {
                format!(
                    ", {} dead-lettered (queue {})",
                    thousands(sink.dead_lettered),
                    sink.dead_letter_queue
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "  {name:<8} {:>12} written to {}{dead}",
                thousands(sink.written),
                sink.kind
            );
            if !sink.columns_added.is_empty() {
                let _ = writeln!(
                    out,
                    "  {:<8} {:>12} column(s) added: {}",
                    "",
                    sink.columns_added.len(),
                    sink.columns_added.join(", ")
                );
            }
        }
        let restarts: u32 = self.workers.iter().map(|w| w.restarts).sum();
        let _ = write!(
            out,
            "  workers  {} ({} restart(s)); logs in {}",
            self.workers.len(),
            restarts,
            self.log_dir
        );
        out
    }
}

/// `1234567` as `1,234,567`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supervisor_summary_json_has_the_documented_shape() {
        let mut sinks = BTreeMap::new();
        sinks.insert(
            "local".to_string(),
            SinkSummary {
                kind: "sqlite".into(),
                written: 9,
                dead_lettered: 1,
                dead_letter_queue: "j-local-dlq".into(),
                columns_added: Vec::new(),
            },
        );
        let summary = Summary {
            job: "j".into(),
            run: "r".into(),
            resumed: false,
            status: Status::DeadLetters,
            reason: None,
            records_read: 10,
            sinks,
            workers: vec![WorkerSummary {
                role: crate::worker::Role::Consumer,
                id: 1,
                pid: 42,
                restarts: 1,
            }],
            redis_restarts: None,
            duration_s: 1.5,
            log_dir: "var/j/logs".into(),
        };
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["status"], "dead_letters");
        assert_eq!(json["records_read"], 10);
        assert_eq!(json["sinks"]["local"]["written"], 9);
        assert_eq!(json["sinks"]["local"]["dead_lettered"], 1);
        assert_eq!(json["workers"][0]["role"], "consumer");
        assert_eq!(json["workers"][0]["restarts"], 1);
        assert_eq!(summary.exit_code(), 3);
        assert!(summary.render().contains("1 dead-lettered"));
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}

//! Sinks: where rows land. Every sink write is idempotent per unit id, which is what turns
//! the queue's at-least-once delivery into exactly-once in effect.
//!
//! A unit is written as a [`Batch`]: its mapped rows plus the failures found before writing
//! (unparseable lines, records that could not be mapped). The sink reports the rows it could
//! not write; a sink with a ledger remembers the unit's whole outcome with it, so a redelivered
//! unit returns the same outcome without writing anything twice. The consumer lists every
//! failed entry once ([`unit_failures`]).

mod blackhole;
pub mod cosmos;
mod mssql;
mod mysql;
mod postgres;
pub(crate) mod sqlite;
mod table;
mod write_mode;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::{ReadSink, SinkConfig, SinkReader};
use crate::mapping::Row;
use crate::settings::Secret;

pub use blackhole::BlackholeSink;
pub use cosmos::CosmosSink;
pub use mssql::MssqlSink;
pub use mysql::MysqlSink;
pub use postgres::PostgresSink;
pub use sqlite::SqliteSink;
pub use write_mode::WriteMode;

/// Every sink kind this build knows: adding a kind is its folder plus one line here.
pub const KINDS: &[SinkKind] = &[
    sqlite::KIND,
    mssql::KIND,
    postgres::KIND,
    mysql::KIND,
    cosmos::KIND,
    blackhole::KIND,
];

/// One kind of sink: how its `[[sink]]` table is read and how its writer is built.
pub struct SinkKind {
    /// The kind's name, as written in `kind = "..."`.
    pub name: &'static str,
    /// Reads and checks the kind's settings, knowing the sink's mapping (`None` when the
    /// mapping has problems of its own); `None` after recording every problem found.
    pub read: ReadSink,
    /// Builds the writer of sink `config` (connecting lazily). Cannot fail: everything that
    /// could be wrong in the settings was found when they were read.
    pub build: fn(&SinkConfig) -> Arc<dyn Sink>,
}

/// How the job file reads every registered sink kind.
pub fn readers() -> Vec<SinkReader> {
    KINDS
        .iter()
        .map(|kind| SinkReader {
            name: kind.name,
            read: kind.read,
        })
        .collect()
}

/// An entry of a unit that did not land, and why. `index` counts the unit's records first,
/// then its rejected lines: index `records.len() + i` is reject `i`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Position of the entry in the unit (see above).
    pub index: usize,
    /// Why it did not land, for a person.
    pub reason: String,
}

/// One unit's worth of rows for one sink.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The unit's deterministic id: the idempotency key.
    pub unit_id: String,
    /// Mapped rows with their index in the unit.
    pub rows: Vec<(usize, Row)>,
    /// Entries that already failed before the write.
    pub failures: Vec<Failure>,
    /// The writer's fencing token: a sink that checks it refuses the write if a newer holder
    /// of the job's lock has written (or prepared) since.
    pub fence: Option<Fence>,
}

/// A fencing token: the number the job lock had when this run's supervisor took it. It grows
/// with every grant, so a sink that remembers the highest number it has seen for the job, in
/// the same transaction as each write, can refuse a writer whose lock has since passed to
/// another (a paused or cut-off process coming back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The job.
    pub job: String,
    /// The token.
    pub token: u64,
}

/// What writing a batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// False when the unit had been applied before (nothing was written this time).
    pub fresh: bool,
    /// Rows the unit landed.
    pub written: u64,
    /// The rows the sink refused. A sink with a ledger adds the failures found before writing
    /// (its ledger keeps the unit's whole outcome, as written by [`unit_failures`]); the
    /// consumer lists every entry once either way.
    pub failures: Vec<Failure>,
    /// Columns this write added to the target for new fields (schema evolution), to be
    /// logged and listed in the run's summary.
    pub columns_added: Vec<String>,
}

/// Every entry of a unit that did not land, once each, in unit order: the failures found
/// before writing and the rows the sink refused. (A ledger written by an older version may
/// hold both lists merged; an entry is still reported once.)
pub fn unit_failures(before: &[Failure], refused: Vec<Failure>) -> Vec<Failure> {
    let mut all: Vec<Failure> = before.iter().cloned().chain(refused).collect();
    all.sort_by_key(|failure| failure.index);
    all.dedup_by_key(|failure| failure.index);
    all
}

/// Why a sink could not write or check. A sink only classifies; the consumer decides when to
/// try again ([`crate::retry`]).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying later: busy database, lost connection, timeout, throttling.
    #[error("sink `{sink}`: {message}")]
    Transient {
        /// The sink's name.
        sink: String,
        /// What happened.
        message: String,
        /// How long the server asked to wait before the next try, if it said.
        retry_after: Option<Duration>,
    },
    /// Retrying will not help: wrong table, missing columns, no permission.
    #[error("sink `{sink}`: {message}")]
    Fatal {
        /// The sink's name.
        sink: String,
        /// What happened.
        message: String,
    },
    /// A newer holder of the job's lock wrote or prepared this sink: this writer's lock has
    /// passed on, and it must stop without writing (or dead-lettering) anything.
    #[error(
        "sink `{sink}`: fenced: fencing token {token} is older than {highest}, which a newer \
         holder of job `{job}`'s lock wrote; this writer stops and writes nothing more"
    )]
    Fenced {
        /// The sink's name.
        sink: String,
        /// The job.
        job: String,
        /// This writer's token.
        token: u64,
        /// The highest token the sink has seen.
        highest: u64,
    },
}

impl SinkError {
    /// A transient error of sink `sink`.
    pub fn transient(sink: &str, message: impl Into<String>) -> SinkError {
        SinkError::Transient {
            sink: sink.to_string(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// A fatal error of sink `sink`.
    pub fn fatal(sink: &str, message: impl Into<String>) -> SinkError {
        SinkError::Fatal {
            sink: sink.to_string(),
            message: message.into(),
        }
    }

    /// The same error, with the wait the server asked for (transient errors only).
    pub fn after(self, wait: Option<Duration>) -> SinkError {
        match self {
            SinkError::Transient { sink, message, .. } => SinkError::Transient {
                sink,
                message,
                retry_after: wait,
            },
            other => other,
        }
    }

    /// True when a newer holder of the job's lock has taken over this sink.
    pub fn is_fenced(&self) -> bool {
        matches!(self, SinkError::Fenced { .. })
    }

    /// True when the write may succeed if tried again.
    pub fn is_transient(&self) -> bool {
        matches!(self, SinkError::Transient { .. })
    }

    /// The wait the server asked for before the next try, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SinkError::Transient { retry_after, .. } => *retry_after,
            SinkError::Fatal { .. } | SinkError::Fenced { .. } => None,
        }
    }
}

/// Makes one sink's errors: each names the sink, and no message carries the sink's secret.
/// Shared by the kinds that hold one (a password, an account key).
#[derive(Debug, Clone)]
pub struct SinkErrors {
    sink: String,
    secret: Secret,
}

impl SinkErrors {
    /// Errors of sink `sink`, with `secret` hidden in every message.
    pub fn new(sink: &str, secret: Secret) -> SinkErrors {
        SinkErrors {
            sink: sink.to_string(),
            secret,
        }
    }

    /// A transient error: worth trying again.
    pub fn transient(&self, message: &str) -> SinkError {
        SinkError::transient(&self.sink, self.secret.hide_in(message))
    }

    /// A fatal error: retrying cannot help.
    pub fn fatal(&self, message: &str) -> SinkError {
        SinkError::fatal(&self.sink, self.secret.hide_in(message))
    }

    /// The refusal of a writer holding `fence` when `highest` is recorded for its job.
    pub fn fenced(&self, fence: &Fence, highest: u64) -> SinkError {
        SinkError::Fenced {
            sink: self.sink.clone(),
            job: fence.job.clone(),
            token: fence.token,
            highest,
        }
    }
}

/// What every kind of sink does.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Connects and verifies the target can take the configured rows, creating nothing.
    async fn check(&self) -> Result<String, SinkError>;

    /// Readies the target before any worker starts (checks the mapping against the table,
    /// creates the ledger), so a misfit stops the run at once instead of in every consumer.
    /// A sink that checks fences records `fence` here, so that from now on writes of any
    /// older holder are refused, even before this run's workers write.
    async fn prepare(&self, fence: Option<&Fence>) -> Result<(), SinkError> {
        let _ = fence;
        Ok(())
    }

    /// Writes a batch exactly once in effect. May be called for several units at once, up to
    /// [`Sink::concurrency`]. The batch is shared, so a retry costs no copy of its rows.
    async fn write(&self, batch: Arc<Batch>) -> Result<WriteOutcome, SinkError>;

    /// How many units one process may write at once.
    fn concurrency(&self) -> usize {
        1
    }

    /// False for a sink that never looks at a row's fields, only counts rows (`blackhole`):
    /// without a `[sink.map]` its records are not parsed at all, and each gets an empty row.
    fn reads_fields(&self) -> bool {
        true
    }

    /// Requests the database throttled (answered "slow down") since this sink was built, for
    /// dashboards; 0 for databases that never say so.
    fn throttled_requests(&self) -> u64 {
        0
    }
}

/// Builds the sink a config describes (connecting lazily).
pub fn from_config(config: &SinkConfig) -> Arc<dyn Sink> {
    let kind = KINDS
        .iter()
        .find(|kind| kind.name == config.kind)
        .expect("a sink config names a registered kind: only they can be read");
    (kind.build)(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(index: usize, reason: &str) -> Failure {
        Failure {
            index,
            reason: reason.to_string(),
        }
    }

    #[test]
    fn sink_unit_failures_lists_each_entry_once_in_unit_order() {
        let before = [failure(4, "cannot map"), failure(9, "unparseable line")];
        let refused = vec![failure(7, "refused"), failure(1, "refused")];
        let indexes: Vec<usize> = unit_failures(&before, refused)
            .iter()
            .map(|f| f.index)
            .collect();
        assert_eq!(indexes, [1, 4, 7, 9]);
        // A ledger from before this split holds the failures found before writing too.
        let merged_by_an_older_ledger = vec![failure(4, "cannot map"), failure(7, "refused")];
        assert_eq!(unit_failures(&before, merged_by_an_older_ledger).len(), 3);
    }
}

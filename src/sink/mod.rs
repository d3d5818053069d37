//! Sinks: where rows land. Every sink write is idempotent per unit id, which is what turns
//! the queue's at-least-once delivery into exactly-once in effect.
//!
//! A unit is written as a [`Batch`]: its mapped rows plus the failures found before writing
//! (unparseable lines, records that could not be mapped). The sink adds the rows it could not
//! write and remembers all failures with the unit, so a redelivered unit returns the same
//! outcome without writing anything twice.

mod blackhole;
pub mod cosmos;
pub mod mssql;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::{SinkConfig, SinkKind};
use crate::mapping::Row;

pub use blackhole::BlackholeSink;
pub use cosmos::CosmosSink;
pub use mssql::MssqlSink;
pub use sqlite::SqliteSink;

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
}

/// What writing a batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// False when the unit had been applied before (nothing was written this time).
    pub fresh: bool,
    /// Rows the unit landed.
    pub written: u64,
    /// Every entry of the unit that did not land.
    pub failures: Vec<Failure>,
}

/// Why a sink could not write or check.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying later: busy database, lost connection, timeout.
    #[error("sink `{sink}`: {message}")]
    Transient {
        /// The sink's name.
        sink: String,
        /// What happened.
        message: String,
    },
    /// Retrying will not help: wrong table, missing columns, no permission.
    #[error("sink `{sink}`: {message}")]
    Fatal {
        /// The sink's name.
        sink: String,
        /// What happened.
        message: String,
    },
}

impl SinkError {
    /// True when the write may succeed if tried again.
    pub fn is_transient(&self) -> bool {
        matches!(self, SinkError::Transient { .. })
    }
}

/// What every kind of sink does.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Connects and verifies the target can take the configured rows, creating nothing.
    async fn check(&self) -> Result<String, SinkError>;

    /// Readies the target before any worker starts (checks the mapping against the table,
    /// creates the ledger), so a misfit stops the run at once instead of in every consumer.
    async fn prepare(&self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Writes a batch exactly once in effect. May be called for several units at once, up to
    /// [`Sink::concurrency`]. The batch is shared, so a retry costs no copy of its rows.
    async fn write(&self, batch: Arc<Batch>) -> Result<WriteOutcome, SinkError>;

    /// How many units one process may write at once.
    fn concurrency(&self) -> usize {
        1
    }
}

/// Builds the sink a config describes (connecting lazily).
pub fn from_config(config: &SinkConfig) -> Arc<dyn Sink> {
    match &config.kind {
        SinkKind::Sqlite(sqlite) => Arc::new(SqliteSink::new(
            &config.name,
            sqlite.clone(),
            config.map.clone(),
        )),
        SinkKind::Mssql(mssql) => Arc::new(MssqlSink::new(
            &config.name,
            mssql.clone(),
            config.map.clone(),
        )),
        SinkKind::Cosmos(cosmos) => Arc::new(CosmosSink::new(&config.name, cosmos.clone())),
        SinkKind::Blackhole => Arc::new(BlackholeSink),
    }
}

//! `kind = "sqlite"`: its settings, their defaults, and the checks made once at load.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::super::write_mode::{WriteMode, check_keys, same_column};
use crate::mapping::Mapping;
use crate::settings::{ExclusiveTarget, HOUR, KindSettings, Section};

/// Settings of the `sqlite` sink.
#[derive(Debug, Clone)]
pub struct SqliteSinkConfig {
    /// Database file; created with its parent directory if missing.
    pub path: PathBuf,
    /// Target table; created if missing.
    pub table: String,
    /// Append rows, or replace rows by key.
    pub mode: WriteMode,
    /// Key columns for upsert mode.
    pub key: Vec<String>,
    /// How long a write waits for another writer's lock before it counts as a failed attempt.
    pub busy_timeout: Duration,
    /// Whether a record with a field the table lacks adds a column or is refused.
    pub schema: SchemaPolicy,
    /// At most this many units per second per consumer process (a database file shared with
    /// readers, or a disk that must not be saturated).
    pub max_units_per_second: Option<f64>,
}

/// What a sink without `[sink.map]` does with a field its table has no column for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchemaPolicy {
    /// Add the column (logged, and listed in the run's summary).
    Evolve,
    /// Leave the table as it is: the record goes to the dead-letter queue with the reason.
    Freeze,
}

impl SchemaPolicy {
    fn evolve() -> SchemaPolicy {
        SchemaPolicy::Evolve
    }
}

impl KindSettings for SqliteSinkConfig {
    /// Two sinks writing one table of one file would each keep their own ledger of it.
    fn exclusive_target(&self) -> Option<ExclusiveTarget> {
        Some(ExclusiveTarget {
            field: "table",
            // By path components, as paths compare: `data//x.db`, `data/./x.db` and
            // `data/x.db` are one file.
            identity: format!(
                "{}\n{}",
                self.path.components().collect::<PathBuf>().display(),
                self.table.to_lowercase()
            ),
            clash: "another sqlite sink writes this table of this file",
        })
    }
}

/// The table as written.
#[derive(Deserialize)]
struct Raw {
    path: PathBuf,
    table: String,
    #[serde(default = "WriteMode::append")]
    mode: WriteMode,
    #[serde(default)]
    key: Vec<String>,
    busy_timeout: Option<String>,
    #[serde(default = "SchemaPolicy::evolve")]
    schema: SchemaPolicy,
    max_units_per_second: Option<f64>,
}

/// Reads `[[sink]] kind = "sqlite"`.
pub(super) fn read(
    section: &mut Section<'_>,
    map: Option<&Mapping>,
) -> Option<Arc<dyn KindSettings>> {
    let raw: Raw = section.read()?;
    let busy_timeout = section.duration(
        raw.busy_timeout.as_deref(),
        "60s",
        "busy_timeout",
        Duration::ZERO..=HOUR,
    );
    section.check_identifier("table", &raw.table);
    check_keys(raw.mode, &raw.key, map, section);
    if let Some(columns) = map.and_then(Mapping::columns)
        && let Some(clash) = same_column(
            columns.iter().map(|c| c.column.as_str()),
            str::to_ascii_lowercase,
        )
    {
        section.problem("map", clash);
    }
    if let Some(rate) = raw.max_units_per_second
        && !(rate.is_finite() && rate > 0.0)
    {
        section.problem("max_units_per_second", "must be a positive number");
    }
    Some(Arc::new(SqliteSinkConfig {
        max_units_per_second: raw.max_units_per_second,
        path: raw.path,
        table: raw.table,
        mode: raw.mode,
        key: raw.key,
        busy_timeout,
        schema: raw.schema,
    }))
}

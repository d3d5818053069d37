//! `kind = "mssql"`: its settings, their defaults, and the checks made once at load. The
//! connection string is parsed here, so a sink is never built from one that does not parse.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::super::write_mode::{WriteMode, check_keys, same_column};
use super::connection::ConnectionSettings;
use crate::mapping::Mapping;
use crate::settings::{HOUR, KindSettings, SECOND, Secret, Section};

/// Settings of the `mssql` sink.
#[derive(Debug, Clone)]
pub struct MssqlSinkConfig {
    /// The parsed ADO.NET connection string; its password is never printed.
    pub connection: ConnectionSettings,
    /// Target table, `name` or `schema.name`.
    pub table: String,
    /// Append rows, or replace rows by key.
    pub mode: WriteMode,
    /// Key columns for upsert mode.
    pub key: Vec<String>,
    /// Connections per consumer process.
    pub pool_size: usize,
    /// Units written at once per consumer process.
    pub max_concurrency: usize,
    /// Units started per second per consumer process, if limited.
    pub max_units_per_second: Option<f64>,
    /// Rows per bulk load; a larger unit is loaded in several, in one transaction.
    pub batch_rows: usize,
    /// How long connecting (TCP, login) may take.
    pub connect_timeout: Duration,
    /// How long a write waits for a free pooled connection.
    pub pool_timeout: Duration,
}

impl KindSettings for MssqlSinkConfig {}

/// The table as written.
#[derive(Deserialize)]
struct Raw {
    connection: String,
    table: String,
    #[serde(default = "WriteMode::append")]
    mode: WriteMode,
    #[serde(default)]
    key: Vec<String>,
    pool_size: Option<usize>,
    max_concurrency: Option<usize>,
    max_units_per_second: Option<f64>,
    batch_rows: Option<usize>,
    connect_timeout: Option<String>,
    pool_timeout: Option<String>,
}

/// Reads `[[sink]] kind = "mssql"`.
pub(super) fn read(
    section: &mut Section<'_>,
    map: Option<&Mapping>,
) -> Option<Arc<dyn KindSettings>> {
    let raw: Raw = section.read()?;
    let max_concurrency = raw.max_concurrency.unwrap_or(4);
    let pool_size = raw.pool_size.unwrap_or(max_concurrency);
    let batch_rows = raw.batch_rows.unwrap_or(5000);
    let connect_timeout = section.duration(
        raw.connect_timeout.as_deref(),
        "15s",
        "connect_timeout",
        SECOND..=HOUR,
    );
    let pool_timeout = section.duration(
        raw.pool_timeout.as_deref(),
        "60s",
        "pool_timeout",
        SECOND..=HOUR,
    );
    let parts: Vec<&str> = raw.table.split('.').collect();
    if parts.len() > 2 {
        section.problem(
            "table",
            format!("`{}` is not `name` or `schema.name`", raw.table),
        );
    }
    for part in parts {
        section.check_identifier("table", part);
    }
    let connection = match ConnectionSettings::parse(&Secret::new(raw.connection)) {
        Ok(connection) => Some(connection),
        Err(error) => {
            section.problem("connection", error.to_string());
            None
        }
    };
    if !(1..=256).contains(&max_concurrency) {
        section.problem("max_concurrency", "must be between 1 and 256");
    }
    if pool_size < max_concurrency {
        section.problem(
            "pool_size",
            format!(
                "must be at least max_concurrency ({max_concurrency}): each unit written at once holds a connection"
            ),
        );
    }
    if let Some(rate) = raw.max_units_per_second
        && !(rate.is_finite() && rate > 0.0)
    {
        section.problem("max_units_per_second", "must be a positive number");
    }
    if !(1..=1_000_000).contains(&batch_rows) {
        section.problem("batch_rows", "must be between 1 and 1000000");
    }
    if map.is_some_and(Mapping::is_passthrough) {
        section.problem(
            "map",
            "an mssql sink needs [sink.map]: the table's columns are fixed",
        );
    }
    check_keys(raw.mode, &raw.key, map, section);
    if let Some(columns) = map.and_then(Mapping::columns)
        && let Some(clash) = same_column(
            columns.iter().map(|c| c.column.as_str()),
            // Case-insensitive collations fold every letter, not only ASCII ones.
            str::to_lowercase,
        )
    {
        section.problem("map", clash);
    }
    Some(Arc::new(MssqlSinkConfig {
        connection: connection?,
        table: raw.table,
        mode: raw.mode,
        key: raw.key,
        pool_size,
        max_concurrency,
        max_units_per_second: raw.max_units_per_second,
        batch_rows,
        connect_timeout,
        pool_timeout,
    }))
}

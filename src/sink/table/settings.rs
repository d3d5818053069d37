//! The settings every SQL table sink takes beside its connection: the table, the write mode
//! and key, and how hard one consumer process may drive the database. Read and checked here
//! once, so that each kind's `config.rs` reads only what is its own.

use std::time::Duration;

use serde::Deserialize;

use super::super::write_mode::{WriteMode, check_keys, same_column};
use crate::mapping::Mapping;
use crate::settings::{HOUR, SECOND, Section};

/// A SQL table sink's table as written: the kind's `connection` (in its database's own
/// form, parsed by the kind) and the shared fields, checked by [`TableSettings::read`].
#[derive(Debug, Deserialize)]
pub(in crate::sink) struct RawTableSettings {
    /// The connection, in the database's own form (a secret: never printed).
    pub connection: String,
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

/// The shared settings, checked.
#[derive(Debug, Clone)]
pub struct TableSettings {
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
    /// Rows per load; a larger unit is loaded in several, in one transaction.
    pub batch_rows: usize,
    /// How long connecting (TCP, TLS, login) may take.
    pub connect_timeout: Duration,
    /// How long a write waits for a free pooled connection.
    pub pool_timeout: Duration,
}

/// How a database compares column names, for the check that no two mapped columns are one.
pub(in crate::sink) type FoldName = fn(&str) -> String;

impl TableSettings {
    /// Checks `raw` for a sink of kind `kind` (for messages) whose column names are equal
    /// under `fold`, recording every problem in `section`.
    pub(in crate::sink) fn read(
        raw: RawTableSettings,
        kind: &str,
        fold: FoldName,
        section: &mut Section<'_>,
        map: Option<&Mapping>,
    ) -> TableSettings {
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
                format!("a {kind} sink needs [sink.map]: the table's columns are fixed"),
            );
        }
        check_keys(raw.mode, &raw.key, map, section);
        if let Some(columns) = map.and_then(Mapping::columns)
            && let Some(clash) = same_column(columns.iter().map(|c| c.column.as_str()), fold)
        {
            section.problem("map", clash);
        }
        TableSettings {
            table: raw.table,
            mode: raw.mode,
            key: raw.key,
            pool_size,
            max_concurrency,
            max_units_per_second: raw.max_units_per_second,
            batch_rows,
            connect_timeout,
            pool_timeout,
        }
    }

    /// Records a problem for every `type` of `[sink.map]` that `parse` (the database's own
    /// type names) refuses, naming the column.
    pub(in crate::sink) fn check_types<T>(
        section: &mut Section<'_>,
        map: Option<&Mapping>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) {
        for column in map.and_then(Mapping::columns).unwrap_or_default() {
            if let Some(declared) = &column.sql_type
                && let Err(why) = parse(declared)
            {
                section.problem(&format!("map.{}.type", column.column), why);
            }
        }
    }

    /// The key columns in upsert mode; `None` in append mode.
    pub(in crate::sink) fn upsert_key(&self) -> Option<&[String]> {
        match self.mode {
            WriteMode::Append => None,
            WriteMode::Upsert => Some(&self.key),
        }
    }
}

//! The `sqlite` sink: rows and the unit's ledger entry are written in one transaction, so a
//! unit is applied exactly once however often it is delivered.
//!
//! - Ledger: table `stevedore_applied(target, unit_id, written, failures)`. A unit found there
//!   is not written again; its recorded outcome is returned.
//! - Append mode inserts rows; upsert mode replaces rows with the same key
//!   (`INSERT ... ON CONFLICT(key) DO UPDATE`, backed by a unique index stevedore creates).
//! - The table is created when missing: typed columns from `[sink.map]`, or, without a map,
//!   untyped columns added as new fields appear.
//! - A row SQLite refuses (a NOT NULL or CHECK constraint, say) fails alone; the rest land.

use std::collections::HashSet;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::write_mode::same_column;
use super::{
    Batch, Failure, Fence, Sink, SinkError, SinkKind, WriteMode, WriteOutcome, unit_failures,
};
use crate::config::SinkConfig;
use crate::mapping::{Cast, Mapping, Row};
use crate::throttle::RateLimit;

mod config;
mod errors;

pub(crate) use config::{SchemaPolicy, SqliteSinkConfig};
use errors::{classify, is_row_error};

/// The `sqlite` kind.
pub(crate) const KIND: SinkKind = SinkKind {
    name: "sqlite",
    read: config::read,
    build,
};

fn build(config: &SinkConfig) -> Arc<dyn Sink> {
    let settings: &SqliteSinkConfig = config.settings();
    Arc::new(SqliteSink::new(
        &config.name,
        settings.clone(),
        config.map.clone(),
    ))
}

const LEDGER: &str = "stevedore_applied";

/// The highest fencing token seen per job.
const FENCES: &str = "stevedore_fence";

/// The `sqlite` sink.
pub struct SqliteSink {
    name: String,
    config: SqliteSinkConfig,
    mapping: Mapping,
    connection: Mutex<Option<Arc<Mutex<Connection>>>>,
    rate: Option<RateLimit>,
}

impl SqliteSink {
    /// A sink named `name` writing to `config` with rows shaped by `mapping`.
    pub fn new(name: &str, config: SqliteSinkConfig, mapping: Mapping) -> SqliteSink {
        SqliteSink {
            name: name.to_string(),
            rate: config.max_units_per_second.and_then(RateLimit::per_second),
            config,
            mapping,
            connection: Mutex::new(None),
        }
    }

    fn error(&self, error: rusqlite::Error) -> SinkError {
        classify(&self.name, &self.config.path, error)
    }

    fn connect(&self) -> Result<Arc<Mutex<Connection>>, SinkError> {
        let mut slot = self
            .connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(connection) = &*slot {
            return Ok(connection.clone());
        }
        let connection = Arc::new(Mutex::new(open_for_writing(&self.name, &self.config)?));
        *slot = Some(connection.clone());
        Ok(connection)
    }

    fn not_a_file(&self) -> SinkError {
        SinkError::fatal(
            &self.name,
            format!(
                "{} is a directory; `path` names the database file",
                self.config.path.display()
            ),
        )
    }

    /// Opens an existing database without creating anything; `None` when there is none yet
    /// and one could be created where `path` says.
    fn inspect(&self) -> Result<Option<Connection>, SinkError> {
        let path = &self.config.path;
        if path.is_dir() {
            return Err(self.not_a_file());
        }
        if path.exists() {
            let connection =
                Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
                    .map_err(|e| self.error(e))?;
            connection
                .busy_timeout(self.config.busy_timeout)
                .map_err(|e| self.error(e))?;
            return Ok(Some(connection));
        }
        // The nearest directory that exists must take a new file (the rest is created).
        let mut existing = path.parent();
        while let Some(dir) = existing
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            existing = dir.parent();
        }
        let dir = existing
            .filter(|dir| !dir.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let cannot = |why: String| {
            SinkError::fatal(
                &self.name,
                format!("cannot create {}: {why}", path.display()),
            )
        };
        if !dir.is_dir() {
            return Err(cannot(format!("{} is not a directory", dir.display())));
        }
        let probe = dir.join(format!(".stevedore-check-{}", std::process::id()));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .map_err(|error| {
                cannot(format!(
                    "{} does not take new files: {error}",
                    dir.display()
                ))
            })?;
        let _ = std::fs::remove_file(&probe);
        Ok(None)
    }

    /// Proves the database takes a write lock and that an existing table has every column
    /// the mapping writes.
    async fn fits_table(&self, connection: Arc<Mutex<Connection>>) -> Result<String, SinkError> {
        let (name, table) = (self.name.clone(), self.config.table.clone());
        let writer = self.writer();
        let report = tokio::task::spawn_blocking(move || {
            let connection = connection
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            connection.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")?;
            let columns = table_columns(&connection, &writer.config.table)?;
            Ok::<_, rusqlite::Error>((columns, writer.required_columns()))
        })
        .await
        .map_err(|error| SinkError::fatal(&self.name, format!("checker thread failed: {error}")))?
        .map_err(|e| self.error(e))?;
        let (columns, required) = report;
        if columns.is_empty() {
            return Ok(format!(
                "sqlite {}: table {table} will be created",
                self.config.path.display()
            ));
        }
        let missing: Vec<_> = required
            .iter()
            .filter(|c| !columns.contains(&c.to_ascii_lowercase()))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(SinkError::fatal(
                &name,
                format!(
                    "table {table} in {} has no column(s) {}",
                    self.config.path.display(),
                    missing.join(", ")
                ),
            ));
        }
        Ok(format!(
            "sqlite {}: table {table} has {} column(s)",
            self.config.path.display(),
            columns.len()
        ))
    }

    fn fenced(&self, fence: Option<Fence>, highest: u64) -> SinkError {
        let fence = fence.expect("only a fenced write is refused by the fence");
        SinkError::Fenced {
            sink: self.name.clone(),
            job: fence.job,
            token: fence.token,
            highest,
        }
    }

    fn writer(&self) -> Writer {
        Writer {
            config: self.config.clone(),
            mapping: self.mapping.clone(),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection, &Writer) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, SinkError> {
        let connection = self.connect()?;
        let writer = self.writer();
        let result = tokio::task::spawn_blocking(move || {
            let mut connection = connection
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut connection, &writer)
        })
        .await
        .map_err(|error| SinkError::fatal(&self.name, format!("writer thread failed: {error}")))?;
        result.map_err(|e| self.error(e))
    }
}

/// The ledger of applied units: one row per unit, written in the unit's transaction, with the
/// fencing token of the writer.
fn create_ledger() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {LEDGER} (target TEXT NOT NULL, unit_id TEXT NOT NULL, \
         written INTEGER NOT NULL, failures TEXT NOT NULL, \
         applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP, fence INTEGER, \
         PRIMARY KEY (target, unit_id)); \
         CREATE TABLE IF NOT EXISTS {FENCES} (job TEXT PRIMARY KEY, token INTEGER NOT NULL)"
    )
}

/// Records `fence` as the job's highest token unless a higher one is there: `Some(highest)`
/// when it is (the writer is fenced off). In the caller's transaction, so the check and the
/// write it guards commit together.
fn pass_fence(connection: &Connection, fence: &Fence) -> Result<Option<u64>, rusqlite::Error> {
    // Read first: once prepare raised it, the row already holds this token, and a unit's
    // transaction then writes no page of the fence table (the caller holds the write lock,
    // so nothing changes between this read and the commit).
    let stored: Option<i64> = connection
        .query_row(
            &format!("SELECT token FROM {FENCES} WHERE job = ?1"),
            params![fence.job],
            |row| row.get(0),
        )
        .optional()?;
    let token = fence.token as i64;
    match stored {
        Some(stored) if stored == token => Ok(None),
        Some(stored) if stored > token => Ok(Some(stored as u64)),
        _ => {
            connection.execute(
                &format!(
                    "INSERT INTO {FENCES} (job, token) VALUES (?1, ?2) \
                     ON CONFLICT (job) DO UPDATE SET token = excluded.token"
                ),
                params![fence.job, token],
            )?;
            Ok(None)
        }
    }
}

/// Opens the database for writing, creating it and its directory if needed, in WAL mode.
fn open_for_writing(name: &str, config: &SqliteSinkConfig) -> Result<Connection, SinkError> {
    if let Some(parent) = config.path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|error| {
            SinkError::fatal(
                name,
                format!("cannot create directory {}: {error}", parent.display()),
            )
        })?;
    }
    let error = |e| classify(name, &config.path, e);
    let connection = Connection::open(&config.path).map_err(error)?;
    connection
        .busy_timeout(config.busy_timeout)
        .map_err(error)?;
    connection
        .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
        .map_err(error)?;
    Ok(connection)
}

/// What the blocking side needs to know.
struct Writer {
    config: SqliteSinkConfig,
    mapping: Mapping,
}

#[async_trait]
impl Sink for SqliteSink {
    /// Looks without touching: no directory or database is created, no journal mode set.
    async fn check(&self) -> Result<String, SinkError> {
        let path = self.config.path.clone();
        let Some(connection) = self.inspect()? else {
            return Ok(format!(
                "sqlite {}: database and table {} will be created",
                path.display(),
                self.config.table
            ));
        };
        let connection = Arc::new(Mutex::new(connection));
        self.fits_table(connection).await
    }

    /// Creates the database if needed and proves it takes writes and fits the mapping, so a
    /// path that cannot work stops the run before any worker starts.
    async fn prepare(&self, fence: Option<&Fence>) -> Result<(), SinkError> {
        if self.config.path.is_dir() {
            return Err(self.not_a_file());
        }
        // Opened on a blocking thread: switching to WAL waits for another writer's lock, and
        // the supervisor must stay free to take a signal meanwhile.
        let (name, config) = (self.name.clone(), self.config.clone());
        let opened = tokio::task::spawn_blocking(move || open_for_writing(&name, &config))
            .await
            .map_err(|error| SinkError::fatal(&self.name, format!("opener thread failed: {error}")))
            .and_then(|opened| opened);
        let proof = match opened {
            Ok(connection) => self.fits_table(Arc::new(Mutex::new(connection))).await,
            Err(error) => Err(error),
        };
        match proof {
            Ok(line) => tracing::debug!(sink = %self.name, "{line}"),
            // Another program holds the database now: writes wait for it (busy_timeout), and
            // a unit that cannot get in is retried, then dead-lettered with the reason.
            Err(error) if error.is_transient() => {
                tracing::warn!(%error, "cannot prove the database takes writes yet; starting anyway")
            }
            Err(error) => return Err(error),
        }
        // The ledger gains the fencing token's column if an older version made it, and the
        // fence takes this run's token: from now on, an older holder's writes are refused.
        let recorded = fence.cloned();
        let highest = self
            .blocking(move |connection, _| {
                let transaction = connection
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                transaction.execute_batch(&create_ledger())?;
                let columns = table_columns(&transaction, LEDGER)?;
                if !columns.contains("fence") {
                    transaction
                        .execute_batch(&format!("ALTER TABLE {LEDGER} ADD COLUMN fence INTEGER"))?;
                }
                let highest = match &recorded {
                    Some(fence) => pass_fence(&transaction, fence)?,
                    None => None,
                };
                transaction.commit()?;
                Ok(highest)
            })
            .await;
        match highest {
            Ok(Some(highest)) => Err(self.fenced(fence.cloned(), highest)),
            Ok(None) => Ok(()),
            // Locked by another program: the first write records the fence instead.
            Err(error) if error.is_transient() => {
                tracing::warn!(%error, "cannot record the fencing token yet; the first write does");
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    async fn write(&self, batch: Arc<Batch>) -> Result<WriteOutcome, SinkError> {
        if let Some(rate) = &self.rate {
            rate.ready().await;
        }
        let fence = batch.fence.clone();
        let written = self
            .blocking(move |connection, writer| writer.write(connection, &batch))
            .await?;
        written.map_err(|highest| self.fenced(fence, highest))
    }
}

impl Writer {
    fn required_columns(&self) -> Vec<String> {
        let mut columns: Vec<String> = self
            .mapping
            .columns()
            .map(|c| c.iter().map(|c| c.column.clone()).collect())
            .unwrap_or_default();
        for key in &self.config.key {
            if !columns.contains(key) {
                columns.push(key.clone());
            }
        }
        columns
    }

    /// Writes `batch` in one transaction; `Ok(Err(highest))` when a newer fencing token than
    /// the batch's was recorded (nothing is written).
    fn write(
        &self,
        connection: &mut Connection,
        batch: &Batch,
    ) -> Result<Result<WriteOutcome, u64>, rusqlite::Error> {
        let transaction =
            connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        transaction.execute_batch(&create_ledger())?;
        if let Some(fence) = &batch.fence
            && let Some(highest) = pass_fence(&transaction, fence)?
        {
            return Ok(Err(highest));
        }
        let previous = transaction
            .query_row(
                &format!(
                    "SELECT written, failures FROM {LEDGER} WHERE target = ?1 AND unit_id = ?2"
                ),
                params![self.config.table, batch.unit_id],
                |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, String>(1)?)),
            )
            .optional()?;
        if let Some((written, failures)) = previous {
            return Ok(Ok(WriteOutcome {
                fresh: false,
                written,
                failures: serde_json::from_str(&failures).unwrap_or_default(),
                columns_added: Vec::new(),
            }));
        }
        let mut columns = self.prepare_table(&transaction, &batch.rows)?;
        let mut failures = Vec::new();
        let mut written = 0;
        let mut columns_added = Vec::new();
        for (index, row) in &batch.rows {
            if let Some(refusal) = self.refusal(&columns, row) {
                failures.push(Failure {
                    index: *index,
                    reason: refusal,
                });
                continue;
            }
            // New columns and the insert share the row's savepoint: whatever the row's data
            // makes SQLite refuse is undone for that row alone.
            transaction.execute_batch("SAVEPOINT row")?;
            let attempt = self
                .add_missing_columns(&transaction, &columns, row)
                .and_then(|added| {
                    self.insert(&transaction, row)?;
                    Ok(added)
                });
            match attempt {
                Ok(added) => {
                    transaction.execute_batch("RELEASE row")?;
                    columns.extend(added.iter().map(|name| name.to_ascii_lowercase()));
                    columns_added.extend(added);
                    written += 1;
                }
                Err(error) if is_row_error(&error) => {
                    transaction.execute_batch("ROLLBACK TO row; RELEASE row")?;
                    failures.push(Failure {
                        index: *index,
                        reason: format!("sqlite refused the row: {error}"),
                    });
                }
                Err(error) => return Err(error),
            }
        }
        // The ledger keeps the unit's whole outcome, failures found before writing included.
        let failures = unit_failures(&batch.failures, failures);
        let recorded = serde_json::to_string(&failures).expect("failures serialize");
        transaction.execute(
            &format!(
                "INSERT INTO {LEDGER} (target, unit_id, written, failures, fence) VALUES (?1, ?2, ?3, ?4, ?5)"
            ),
            params![
                self.config.table,
                batch.unit_id,
                written as i64,
                recorded,
                batch.fence.as_ref().map(|fence| fence.token as i64)
            ],
        )?;
        transaction.commit()?;
        for column in &columns_added {
            tracing::info!(table = %self.config.table, column, "added a column for a new field (schema = \"evolve\")");
        }
        Ok(Ok(WriteOutcome {
            fresh: true,
            written,
            failures,
            columns_added,
        }))
    }

    /// Creates the table (and the upsert key index) if needed; returns its columns,
    /// lower-cased (SQLite column names ignore ASCII case).
    fn prepare_table(
        &self,
        connection: &Connection,
        rows: &[(usize, Row)],
    ) -> Result<HashSet<String>, rusqlite::Error> {
        let table = &self.config.table;
        let mut columns = table_columns(connection, table)?;
        if columns.is_empty() {
            let definitions: Vec<String> = match self.mapping.columns() {
                Some(mapped) => mapped
                    .iter()
                    .map(|c| format!("{} {}", quote(&c.column), sql_type(c.cast)))
                    .collect(),
                None => {
                    let mut seen = HashSet::new();
                    let names = self
                        .config
                        .key
                        .iter()
                        .chain(rows.iter().flat_map(|(_, row)| row.keys()));
                    names
                        .filter(|name| seen.insert(name.to_ascii_lowercase()))
                        .map(|name| quote(name))
                        .collect()
                }
            };
            if definitions.is_empty() {
                // Nothing to write yet (a unit of rejected lines only): the table waits for
                // the first record that has fields.
                return Ok(columns);
            }
            connection.execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS {} ({})",
                quote(table),
                definitions.join(", ")
            ))?;
            columns = table_columns(connection, table)?;
        }
        if self.config.mode == WriteMode::Upsert {
            let index = quote(&format!("stevedore_{table}_key"));
            connection.execute_batch(&format!(
                "CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {} ({})",
                quote(table),
                quoted(&self.config.key)
            ))?;
        }
        Ok(columns)
    }

    /// Why the row cannot be written as it is, if it cannot: two fields SQLite would take for
    /// one column, or (with `schema = "freeze"`) a field the table has no column for.
    fn refusal(&self, columns: &HashSet<String>, row: &Row) -> Option<String> {
        if row.is_empty() {
            return Some("refused: the record has no fields to write".to_string());
        }
        if let Some(clash) = same_column(row.keys().map(String::as_str), str::to_ascii_lowercase) {
            return Some(format!("refused: fields {clash}"));
        }
        if self.config.schema == SchemaPolicy::Freeze
            && let Some(field) = row
                .keys()
                .find(|key| !columns.contains(&key.to_ascii_lowercase()))
        {
            return Some(format!(
                "refused: field `{field}` has no column in table {} and schema = \"freeze\" \
                 leaves the table as it is",
                self.config.table
            ));
        }
        None
    }

    /// Adds the row's fields that the table lacks; returns their names.
    fn add_missing_columns(
        &self,
        connection: &Connection,
        columns: &HashSet<String>,
        row: &Row,
    ) -> Result<Vec<String>, rusqlite::Error> {
        let mut added = Vec::new();
        for key in row.keys() {
            if !columns.contains(&key.to_ascii_lowercase()) {
                connection.execute_batch(&format!(
                    "ALTER TABLE {} ADD COLUMN {}",
                    quote(&self.config.table),
                    quote(key)
                ))?;
                added.push(key.clone());
            }
        }
        Ok(added)
    }

    fn insert(&self, connection: &Connection, row: &Row) -> Result<(), rusqlite::Error> {
        let names: Vec<String> = row.keys().cloned().collect();
        let placeholders = vec!["?"; names.len()].join(", ");
        let mut sql = format!(
            "INSERT INTO {} ({}) VALUES ({placeholders})",
            quote(&self.config.table),
            quoted(&names)
        );
        if self.config.mode == WriteMode::Upsert {
            let updates: Vec<String> = names
                .iter()
                .filter(|n| !self.config.key.iter().any(|k| k.eq_ignore_ascii_case(n)))
                .map(|n| format!("{0} = excluded.{0}", quote(n)))
                .collect();
            let action = if updates.is_empty() {
                "NOTHING".to_string()
            } else {
                format!("UPDATE SET {}", updates.join(", "))
            };
            sql.push_str(&format!(
                " ON CONFLICT ({}) DO {action}",
                quoted(&self.config.key)
            ));
        }
        let mut statement = connection.prepare_cached(&sql)?;
        statement.execute(rusqlite::params_from_iter(row.values().map(to_sql)))?;
        Ok(())
    }
}

/// The table's column names, lower-cased; empty when the table does not exist.
fn table_columns(connection: &Connection, table: &str) -> Result<HashSet<String>, rusqlite::Error> {
    let mut statement = connection.prepare("SELECT name FROM pragma_table_info(?1)")?;
    let names = statement.query_map([table], |row| {
        row.get::<_, String>(0)
            .map(|name| name.to_ascii_lowercase())
    })?;
    names.collect()
}

/// An identifier as SQL text, whatever characters it holds.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| quote(n))
        .collect::<Vec<_>>()
        .join(", ")
}

fn sql_type(cast: Option<Cast>) -> &'static str {
    match cast {
        Some(Cast::Integer | Cast::Boolean) => "INTEGER",
        Some(Cast::Real) => "REAL",
        Some(Cast::Decimal) => "NUMERIC",
        Some(Cast::Text | Cast::Json) => "TEXT",
        None => "",
    }
}

fn to_sql(value: &Value) -> SqlValue {
    match value {
        Value::Null => SqlValue::Null,
        Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => SqlValue::Integer(i),
            None => SqlValue::Real(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => SqlValue::Text(s.clone()),
        other => SqlValue::Text(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;
    use std::time::Duration;

    fn sink(dir: &Path, mode: WriteMode, key: &[&str]) -> SqliteSink {
        let config = SqliteSinkConfig {
            path: dir.join("out/test.db"),
            table: "orders".into(),
            mode,
            key: key.iter().map(|k| k.to_string()).collect(),
            busy_timeout: Duration::from_secs(5),
            schema: SchemaPolicy::Evolve,
            max_units_per_second: None,
        };
        SqliteSink::new("local", config, Mapping::passthrough())
    }

    fn fenced(batch: &Batch, token: u64) -> Arc<Batch> {
        let mut batch = batch.clone();
        batch.fence = Some(Fence {
            job: "orders".into(),
            token,
        });
        Arc::new(batch)
    }

    #[tokio::test]
    async fn sqlite_fence_refuses_an_older_token_once_a_newer_one_prepared_or_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let sink = sink(dir.path(), WriteMode::Append, &[]);
        let old = Fence {
            job: "orders".into(),
            token: 4,
        };
        sink.prepare(Some(&old)).await.unwrap();
        let outcome = sink
            .write(fenced(&batch("u/1", &[json!({"id": 1})]), 4))
            .await;
        assert_eq!(outcome.unwrap().written, 1, "the holder writes");
        // A newer holder prepares: the older one is refused from now on, and writes nothing.
        let new = Fence {
            job: "orders".into(),
            token: 5,
        };
        sink.prepare(Some(&new)).await.unwrap();
        let refused = sink
            .write(fenced(&batch("u/2", &[json!({"id": 2})]), 4))
            .await
            .unwrap_err();
        assert!(refused.is_fenced(), "{refused}");
        assert!(
            refused
                .to_string()
                .contains("fencing token 4 is older than 5"),
            "{refused}"
        );
        assert_eq!(count(dir.path()), 1, "the refused unit left no row");
        // The older one cannot prepare again either; the newer one writes and is recorded.
        assert!(sink.prepare(Some(&old)).await.unwrap_err().is_fenced());
        sink.write(fenced(&batch("u/2", &[json!({"id": 2})]), 5))
            .await
            .unwrap();
        let connection = Connection::open(dir.path().join("out/test.db")).unwrap();
        let tokens: Vec<(String, Option<i64>)> = connection
            .prepare(&format!(
                "SELECT unit_id, fence FROM {LEDGER} ORDER BY rowid"
            ))
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            tokens,
            [("u/1".to_string(), Some(4)), ("u/2".to_string(), Some(5))]
        );
        // Other jobs have fences of their own.
        let other = Fence {
            job: "returns".into(),
            token: 1,
        };
        sink.prepare(Some(&other)).await.unwrap();
    }

    #[tokio::test]
    async fn sqlite_prepare_adds_the_fence_column_to_a_ledger_made_without_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("out")).unwrap();
        let connection = Connection::open(dir.path().join("out/test.db")).unwrap();
        connection
            .execute_batch(&format!(
                "CREATE TABLE {LEDGER} (target TEXT NOT NULL, unit_id TEXT NOT NULL, \
                 written INTEGER NOT NULL, failures TEXT NOT NULL, \
                 applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP, PRIMARY KEY (target, unit_id))"
            ))
            .unwrap();
        let sink = sink(dir.path(), WriteMode::Append, &[]);
        sink.prepare(None).await.unwrap();
        assert!(
            table_columns(&connection, LEDGER)
                .unwrap()
                .contains("fence")
        );
        sink.write(batch("u/1", &[json!({"id": 1})])).await.unwrap();
    }

    fn batch(unit: &str, rows: &[Value]) -> Arc<Batch> {
        let rows = rows
            .iter()
            .enumerate()
            .map(|(i, v)| (i, Row::from_object(v.as_object().unwrap().clone())))
            .collect();
        Arc::new(Batch {
            unit_id: unit.into(),
            rows,
            failures: vec![],
            fence: None,
        })
    }

    fn count(dir: &Path) -> i64 {
        let connection = Connection::open(dir.join("out/test.db")).unwrap();
        connection
            .query_row("SELECT count(*) FROM orders", [], |r| r.get(0))
            .unwrap()
    }

    #[tokio::test]
    async fn sqlite_append_unit_applied_twice_lands_once() {
        let dir = tempfile::tempdir().unwrap();
        let sink = sink(dir.path(), WriteMode::Append, &[]);
        let rows = [json!({"id": 1, "a": "x"}), json!({"id": 2, "b": 2.5})];
        let first = sink.write(batch("j/r/s/0.0", &rows)).await.unwrap();
        assert_eq!((first.fresh, first.written), (true, 2));
        let again = sink.write(batch("j/r/s/0.0", &rows)).await.unwrap();
        assert_eq!((again.fresh, again.written), (false, 2));
        assert_eq!(count(dir.path()), 2);
    }

    #[tokio::test]
    async fn sqlite_upsert_replaces_by_key_across_units() {
        let dir = tempfile::tempdir().unwrap();
        let sink = sink(dir.path(), WriteMode::Upsert, &["id"]);
        sink.write(batch("u/1", &[json!({"id": 1, "v": "old"})]))
            .await
            .unwrap();
        sink.write(batch(
            "u/2",
            &[json!({"id": 1, "v": "new"}), json!({"id": 2, "v": "b"})],
        ))
        .await
        .unwrap();
        assert_eq!(count(dir.path()), 2);
        let connection = Connection::open(dir.path().join("out/test.db")).unwrap();
        let v: String = connection
            .query_row("SELECT v FROM orders WHERE id = 1", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, "new");
    }

    #[tokio::test]
    async fn sqlite_refused_row_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("out")).unwrap();
        Connection::open(dir.path().join("out/test.db"))
            .unwrap()
            .execute_batch("CREATE TABLE orders (id INTEGER, name TEXT NOT NULL)")
            .unwrap();
        let sink = sink(dir.path(), WriteMode::Append, &[]);
        let outcome = sink
            .write(batch(
                "u/1",
                &[
                    json!({"id": 1, "name": "a"}),
                    json!({"id": 2, "name": null}),
                    json!({"id": 3, "name": "c"}),
                ],
            ))
            .await
            .unwrap();
        assert_eq!(outcome.written, 2);
        assert_eq!(outcome.failures.len(), 1);
        assert_eq!(outcome.failures[0].index, 1);
        assert!(
            outcome.failures[0].reason.contains("NOT NULL"),
            "{}",
            outcome.failures[0].reason
        );
        assert_eq!(count(dir.path()), 2);
        let again = sink.write(batch("u/1", &[])).await.unwrap();
        assert_eq!(
            again.failures, outcome.failures,
            "the ledger remembers failures for redeliveries"
        );
    }

    #[tokio::test]
    async fn sqlite_odd_field_names_land_without_failing_the_unit() {
        let dir = tempfile::tempdir().unwrap();
        let sink = sink(dir.path(), WriteMode::Append, &[]);
        let rows = [
            json!({"id": 1, "na\"me": "quote in a field name"}),
            json!({"ID": 2, "Na\"Me": "same columns, other case"}),
            json!({"id": 3, "ID": 4}),
            json!({"id": 5, "new field": true}),
        ];
        let outcome = sink.write(batch("u/odd", &rows)).await.unwrap();
        assert_eq!(
            outcome.written, 3,
            "case-insensitive and quoted names land: {:?}",
            outcome.failures
        );
        // `id` and `ID` in one record are one column: refused, not one value dropped.
        assert_eq!(outcome.failures.len(), 1);
        assert_eq!(outcome.failures[0].index, 2);
        let connection = Connection::open(dir.path().join("out/test.db")).unwrap();
        let quoted: String = connection
            .query_row("SELECT \"na\"\"me\" FROM orders WHERE id = 2", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(quoted, "same columns, other case");
        let added: bool = connection
            .query_row("SELECT \"new field\" FROM orders WHERE id = 5", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(added);
    }

    #[tokio::test]
    async fn sqlite_check_names_missing_columns() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("out")).unwrap();
        Connection::open(dir.path().join("out/test.db"))
            .unwrap()
            .execute_batch("CREATE TABLE orders (name TEXT)")
            .unwrap();
        let sink = sink(dir.path(), WriteMode::Upsert, &["id"]);
        let error = sink.check().await.unwrap_err().to_string();
        assert!(error.contains("no column(s) id"), "{error}");
    }

    fn files_under(dir: &Path) -> Vec<String> {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(at) = stack.pop() {
            for entry in std::fs::read_dir(&at).unwrap() {
                let path = entry.unwrap().path();
                found.push(path.strip_prefix(dir).unwrap().display().to_string());
                if path.is_dir() {
                    stack.push(path);
                }
            }
        }
        found.sort();
        found
    }

    #[tokio::test]
    async fn sqlite_check_leaves_no_trace() {
        let dir = tempfile::tempdir().unwrap();
        let line = sink(dir.path(), WriteMode::Append, &[])
            .check()
            .await
            .unwrap();
        assert!(line.contains("will be created"), "{line}");
        assert!(
            files_under(dir.path()).is_empty(),
            "{:?}",
            files_under(dir.path())
        );
        // An existing database keeps its journal mode.
        std::fs::create_dir_all(dir.path().join("out")).unwrap();
        let path = dir.path().join("out/test.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE orders (id INTEGER)")
            .unwrap();
        sink(dir.path(), WriteMode::Append, &[])
            .check()
            .await
            .unwrap();
        let mode: String = Connection::open(&path)
            .unwrap()
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "delete");
        assert_eq!(files_under(dir.path()), ["out", "out/test.db"]);
    }

    #[tokio::test]
    async fn sqlite_check_and_prepare_refuse_paths_that_cannot_be_a_database() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("out/test.db")).unwrap();
        let sink = sink(dir.path(), WriteMode::Append, &[]);
        for error in [
            sink.check().await.unwrap_err(),
            sink.prepare(None).await.unwrap_err(),
        ] {
            assert!(!error.is_transient());
            assert!(error.to_string().contains("is a directory"), "{error}");
        }
        let config = SqliteSinkConfig {
            path: "/proc/stevedore/out.db".into(),
            ..sink.config.clone()
        };
        let under_proc = SqliteSink::new("local", config, Mapping::passthrough());
        let error = under_proc.check().await.unwrap_err().to_string();
        assert!(
            error.contains("cannot create /proc/stevedore/out.db"),
            "{error}"
        );
        assert!(under_proc.prepare(None).await.is_err());
    }

    #[tokio::test]
    async fn hardening_sqlite_refuses_fields_that_name_one_column() {
        let dir = tempfile::tempdir().unwrap();
        let sink = sink(dir.path(), WriteMode::Append, &[]);
        let rows = [
            json!({"id": 1, "a": "x"}),
            json!({"id": 2, "ID": "upper", "Id": "mixed"}),
        ];
        let outcome = sink.write(batch("u/1", &rows)).await.unwrap();
        assert_eq!(outcome.written, 1);
        assert_eq!(outcome.failures.len(), 1);
        assert_eq!(outcome.failures[0].index, 1);
        assert!(
            outcome.failures[0]
                .reason
                .contains("`id` and `ID` name the same column"),
            "{}",
            outcome.failures[0].reason
        );
    }

    #[tokio::test]
    async fn sqlite_schema_evolve_reports_added_columns_and_freeze_refuses_them() {
        let dir = tempfile::tempdir().unwrap();
        let evolving = sink(dir.path(), WriteMode::Append, &[]);
        evolving
            .write(batch("u/1", &[json!({"id": 1})]))
            .await
            .unwrap();
        let outcome = evolving
            .write(batch("u/2", &[json!({"id": 2, "note": "new"})]))
            .await
            .unwrap();
        assert_eq!(outcome.columns_added, ["note"]);
        let mut config = evolving.config.clone();
        config.schema = SchemaPolicy::Freeze;
        let frozen = SqliteSink::new("local", config, Mapping::passthrough());
        let outcome = frozen
            .write(batch(
                "u/3",
                &[json!({"id": 3, "note": "ok"}), json!({"id": 4, "extra": 1})],
            ))
            .await
            .unwrap();
        assert_eq!((outcome.written, outcome.columns_added.len()), (1, 0));
        assert_eq!(outcome.failures[0].index, 1);
        assert!(
            outcome.failures[0]
                .reason
                .contains("field `extra` has no column")
        );
        assert_eq!(count(dir.path()), 3);
    }

    #[tokio::test]
    async fn sqlite_unit_without_rows_or_with_empty_records_is_recorded_not_failed() {
        let dir = tempfile::tempdir().unwrap();
        let sink = sink(dir.path(), WriteMode::Append, &[]);
        let only_rejects = Arc::new(Batch {
            unit_id: "u/rejects".into(),
            rows: Vec::new(),
            failures: vec![Failure {
                index: 0,
                reason: "invalid JSON".into(),
            }],
            fence: None,
        });
        let outcome = sink.write(only_rejects).await.unwrap();
        assert_eq!((outcome.written, outcome.failures.len()), (0, 1));
        let outcome = sink.write(batch("u/empty", &[json!({})])).await.unwrap();
        assert_eq!(outcome.written, 0);
        assert!(outcome.failures[0].reason.contains("no fields"));
    }
}

//! One unit over one MySQL/MariaDB connection: the [`UnitSession`] steps the shared engine
//! ([`crate::sink::table`]) runs. `append` loads straight into the table, `upsert` into the
//! connection's staging table merged with one `INSERT ... SELECT ... ON DUPLICATE KEY
//! UPDATE`. `LOAD DATA LOCAL` turns every row error into a warning (the server cannot stop a
//! file half-sent), so a load with any warning is refused like a failed statement, and the
//! row the warning names is the one at fault.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use super::encode::{Form, push_row};
use super::errors::{self, ErrorClass, classify, describe};
use super::schema::{Target, ValueClass};
use super::sql::{self, TableName};
use crate::mapping::Row;
use crate::sink::Failure;
use crate::sink::table::{Applied, LedgerEntry, Recorded, UnitSession};

/// Why a step failed, already judged: the session's error.
#[derive(Debug)]
pub(super) struct Failed {
    /// Retry, isolate or stop.
    pub class: ErrorClass,
    /// The server's number and message, or the client's words.
    pub text: String,
    /// The row of the load the server named, counted from 0.
    pub row: Option<usize>,
}

impl From<mysql_async::Error> for Failed {
    fn from(error: mysql_async::Error) -> Failed {
        let row = match &error {
            mysql_async::Error::Server(server) => errors::row_named(&server.message),
            _ => None,
        };
        Failed {
            class: classify(&error),
            text: describe(&error),
            row,
        }
    }
}

/// What every unit of a sink is written with, built once per process when the table has been
/// read.
pub(super) struct Plan {
    /// The table and its mapped columns.
    pub target: Target,
    /// The ledger of applied units, beside the table.
    pub ledger: TableName,
    /// The highest fencing token per job, beside the table.
    pub fences: TableName,
    /// The ledger's `target` value for this sink's table.
    pub ledger_target: String,
    /// The mapped column names (as the rows hold them), in mapping order.
    pub names: Vec<String>,
    /// Rows per load.
    pub batch_rows: usize,
    /// Whether loads use `LOAD DATA LOCAL INFILE` (else multi-row `INSERT`s).
    pub infile: AtomicBool,
    /// The longest statement the server takes, for `INSERT`s.
    pub max_statement: usize,
    load_data: String,
    insert_into: String,
    /// Set in upsert mode.
    pub upsert: Option<Upsert>,
}

/// Upsert mode's key and staging statements.
pub(super) struct Upsert {
    /// The key columns as the rows name them.
    pub key: Vec<String>,
    create_stage: String,
    merge_stage: String,
}

impl Plan {
    /// The plan for `target` (whose columns follow the mapped `names`), upserting by `key`
    /// if given, loading with `LOAD DATA` if `infile`.
    pub(super) fn new(
        target: Target,
        names: Vec<String>,
        key: Option<&[String]>,
        batch_rows: usize,
        infile: bool,
        max_packet: usize,
    ) -> Plan {
        let columns: Vec<String> = target.columns.iter().map(|c| c.name.clone()).collect();
        let bytes: Vec<bool> = target
            .columns
            .iter()
            .map(|c| c.class == ValueClass::Bytes)
            .collect();
        let upsert = key.map(|key| {
            let catalog_key: Vec<String> = key
                .iter()
                .filter_map(|k| names.iter().position(|n| n == k))
                .map(|at| columns[at].clone())
                .collect();
            Upsert {
                key: key.to_vec(),
                create_stage: sql::create_stage(&target.table, &columns),
                merge_stage: sql::merge_stage(&target.table, &columns, &catalog_key),
            }
        });
        let into = match upsert {
            Some(_) => sql::STAGE.to_string(),
            None => target.table.quoted(),
        };
        Plan {
            ledger: target.table.ledger(),
            fences: target.table.fences(),
            ledger_target: target.table.to_string(),
            batch_rows: batch_rows.max(1),
            infile: AtomicBool::new(infile),
            // Room for the statement's start and the protocol's header.
            max_statement: max_packet.saturating_sub(4096).max(64 * 1024),
            load_data: sql::load_data(&into, &columns, &bytes),
            insert_into: sql::insert_into(&into, &columns),
            names,
            upsert,
            target,
        }
    }

    /// The form rows are encoded in now.
    pub(super) fn form(&self) -> Form {
        if self.infile.load(Ordering::Relaxed) {
            Form::LoadData
        } else {
            Form::Insert
        }
    }
}

/// A unit's rows encoded in one form: one buffer, and where each row ends in it.
pub(super) struct Encoded {
    form: Form,
    text: Bytes,
    ends: Vec<usize>,
    /// For row `i` of the buffer, its index in the unit.
    pub indexes: Vec<usize>,
}

impl Encoded {
    /// Encodes `rows` for `plan`; a row that cannot be written fails alone, in the list.
    pub(super) fn new(plan: &Plan, rows: &[(usize, Row)]) -> (Encoded, Vec<Failure>) {
        let mut kept: Vec<&(usize, Row)> = rows.iter().collect();
        if let Some(upsert) = &plan.upsert {
            kept = crate::sink::table::last_per_key(kept, |(_, row)| {
                let key: Vec<&serde_json::Value> = upsert
                    .key
                    .iter()
                    .map(|k| row.get(k).unwrap_or(&serde_json::Value::Null))
                    .collect();
                serde_json::to_string(&key).expect("values serialize")
            });
        }
        let form = plan.form();
        let mut text = Vec::with_capacity(kept.len() * 64);
        let mut ends = Vec::with_capacity(kept.len());
        let mut indexes = Vec::with_capacity(kept.len());
        let mut failures = Vec::new();
        for (index, row) in kept {
            match push_row(&mut text, form, row, &plan.names, &plan.target.columns) {
                Ok(()) => {
                    ends.push(text.len());
                    indexes.push(*index);
                }
                Err(reason) => failures.push(Failure {
                    index: *index,
                    reason,
                }),
            }
        }
        let encoded = Encoded {
            form,
            text: Bytes::from(text),
            ends,
            indexes,
        };
        (encoded, failures)
    }

    fn start(&self, row: usize) -> usize {
        match row {
            0 => 0,
            n => self.ends[n - 1],
        }
    }

    /// The text of rows `range`.
    fn slice(&self, range: Range<usize>) -> Bytes {
        self.text
            .slice(self.start(range.start)..self.ends[range.end - 1])
    }
}

/// One unit's transaction over one pooled connection.
pub(super) struct MySession<'a> {
    /// The connection.
    pub conn: &'a mut Conn,
    /// How the sink writes.
    pub plan: &'a Plan,
    /// The unit's rows.
    pub rows: &'a Encoded,
}

impl MySession<'_> {
    /// `LOAD DATA LOCAL INFILE` of rows `range` from memory; a warning refuses the load.
    async fn load_data(&mut self, range: Range<usize>) -> Result<(), Failed> {
        let data = self.rows.slice(range);
        self.conn.set_infile_handler(async move {
            Ok(futures::stream::once(async move { Ok(data) }).boxed())
        });
        if let Err(error) = self.conn.query_drop(&self.plan.load_data).await {
            if errors::is_local_infile_refused(&error)
                && self.plan.infile.swap(false, Ordering::Relaxed)
            {
                tracing::warn!(
                    table = %self.plan.target.table,
                    error = %describe(&error),
                    "the server refuses LOAD DATA LOCAL INFILE: loading with multi-row INSERTs \
                     from now on, which is slower; SET GLOBAL local_infile = ON (or start the \
                     server with --local-infile=1) for the fast path"
                );
                return Err(Failed {
                    class: ErrorClass::Transient,
                    text: format!("{}; the unit is retried with INSERTs", describe(&error)),
                    row: None,
                });
            }
            return Err(error.into());
        }
        if self.conn.get_warnings() == 0 {
            return Ok(());
        }
        let warnings: Vec<(String, u32, String)> = self.conn.query("SHOW WARNINGS LIMIT 1").await?;
        let (level, code, message) = warnings
            .into_iter()
            .next()
            .unwrap_or_else(|| ("Warning".into(), 0, "the load raised a warning".into()));
        Err(Failed {
            class: ErrorClass::Data,
            row: errors::row_named(&message),
            text: format!("MySQL {} {code}: {message}", level.to_lowercase()),
        })
    }

    /// Multi-row `INSERT`s of rows `range`, each under the server's statement limit.
    async fn insert(&mut self, range: Range<usize>) -> Result<(), Failed> {
        let mut first = range.start;
        while first < range.end {
            let mut statement = self.plan.insert_into.clone().into_bytes();
            let mut last = first;
            while last < range.end {
                let tuple = &self.rows.text[self.rows.start(last)..self.rows.ends[last]];
                if last > first && statement.len() + tuple.len() + 1 > self.plan.max_statement {
                    break;
                }
                if last > first {
                    statement.push(b',');
                }
                statement.extend_from_slice(tuple);
                last += 1;
            }
            let text = String::from_utf8(statement).expect("tuples are UTF-8");
            if let Err(error) = self.conn.query_drop(text).await {
                let mut failed = Failed::from(error);
                failed.row = failed.row.map(|row| row + first - range.start);
                return Err(failed);
            }
            first = last;
        }
        Ok(())
    }
}

#[async_trait]
impl UnitSession for MySession<'_> {
    type Error = Failed;

    fn is_data_error(&self, error: &Failed) -> bool {
        error.class == ErrorClass::Data
    }

    fn describe(&self, error: &Failed) -> String {
        error.text.clone()
    }

    fn row_at_fault(&self, error: &Failed) -> Option<usize> {
        error.row
    }

    async fn begin(&mut self) -> Result<(), Failed> {
        if let Some(upsert) = &self.plan.upsert {
            self.conn.query_drop(&upsert.create_stage).await?;
        }
        Ok(self.conn.query_drop(sql::BEGIN).await?)
    }

    async fn rollback(&mut self) -> Result<(), Failed> {
        Ok(self.conn.query_drop(sql::ROLLBACK).await?)
    }

    async fn savepoint(&mut self) -> Result<(), Failed> {
        Ok(self.conn.query_drop(sql::save_point()).await?)
    }

    async fn rollback_to_savepoint(&mut self) -> Result<(), Failed> {
        Ok(self.conn.query_drop(sql::rollback_to_save_point()).await?)
    }

    async fn release_savepoint(&mut self) -> Result<(), Failed> {
        Ok(self.conn.query_drop(sql::release_save_point()).await?)
    }

    async fn load(&mut self, rows: Range<usize>) -> Result<Vec<Failure>, Failed> {
        if self.plan.upsert.is_some() {
            self.conn.query_drop(sql::empty_stage()).await?;
        }
        match self.rows.form {
            Form::LoadData => self.load_data(rows).await?,
            Form::Insert => self.insert(rows).await?,
        }
        if let Some(upsert) = &self.plan.upsert
            && let Err(error) = self.conn.query_drop(&upsert.merge_stage).await
        {
            // The merge's row numbers follow the staging table's scan, not the unit: halve.
            let mut failed = Failed::from(error);
            failed.row = None;
            return Err(failed);
        }
        Ok(Vec::new())
    }

    async fn record_and_commit(&mut self, entry: &LedgerEntry<'_>) -> Result<Recorded, Failed> {
        if let Some(fence) = &entry.fence {
            let recorded: Option<i64> = self
                .conn
                .exec_first(sql::locked_fence(&self.plan.fences), (fence.job,))
                .await?;
            match recorded {
                Some(token) if token > fence.token => return Ok(Recorded::Fenced),
                Some(token) if token == fence.token => {}
                _ => {
                    self.conn
                        .query_drop(sql::raise_fence(&self.plan.fences, fence))
                        .await?
                }
            }
        }
        match self
            .conn
            .query_drop(sql::insert_ledger(&self.plan.ledger, entry))
            .await
        {
            Ok(()) => {}
            Err(error) if errors::is_duplicate(&error) => return Ok(Recorded::Duplicate),
            Err(error) => return Err(error.into()),
        }
        self.conn.query_drop(sql::COMMIT).await?;
        Ok(Recorded::Committed)
    }

    async fn find_applied(&mut self, unit_id: &str) -> Result<Option<Applied>, Failed> {
        let row: Option<(i64, Option<String>)> = self
            .conn
            .exec_first(
                sql::find_applied(&self.plan.ledger),
                (self.plan.ledger_target.as_str(), unit_id),
            )
            .await?;
        Ok(row.map(|(written, failures)| Applied::from_ledger(written, failures.as_deref())))
    }

    async fn highest_fence(&mut self, job: &str) -> Result<Option<u64>, Failed> {
        read_highest_fence(self.conn, &self.plan.fences, job).await
    }
}

/// The highest fencing token recorded in `fences` for `job`, if any.
pub(super) async fn read_highest_fence(
    conn: &mut Conn,
    fences: &TableName,
    job: &str,
) -> Result<Option<u64>, Failed> {
    let token: Option<i64> = conn.exec_first(sql::highest_fence(fences), (job,)).await?;
    Ok(token.map(|token| token.max(0) as u64))
}

//! One unit over one PostgreSQL connection: the [`UnitSession`] steps the shared engine
//! ([`crate::sink::table`]) runs. Rows are encoded once into one `COPY` text buffer, so any
//! range of them is a slice of it; `append` copies straight into the table, `upsert` into a
//! per-connection staging table merged with one `INSERT ... ON CONFLICT DO UPDATE`.

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use futures::SinkExt;
use tokio_postgres::Error;

use super::copy::push_row;
use super::errors::{self, ErrorClass, classify, describe};
use super::schema::Target;
use super::sql::{self, TableName};
use crate::mapping::Row;
use crate::sink::Failure;
use crate::sink::table::{Applied, LedgerEntry, Recorded, UnitSession};

/// What every unit of a sink is written with, built once per process when the table has been
/// read: the columns and the statements that do not change from unit to unit.
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
    copy: String,
    /// Set in upsert mode.
    pub upsert: Option<Upsert>,
}

/// Upsert mode's key and staging statements.
pub(super) struct Upsert {
    /// The key columns as the rows name them.
    pub key: Vec<String>,
    reset_stage: String,
    merge_stage: String,
}

impl Plan {
    /// The plan for `target` (whose columns follow the mapped `names`), upserting by `key`
    /// (as mapped) if given, `batch_rows` rows per load.
    pub(super) fn new(
        target: Target,
        names: Vec<String>,
        key: Option<&[String]>,
        batch_rows: usize,
    ) -> Plan {
        let columns: Vec<String> = target.columns.iter().map(|c| c.name.clone()).collect();
        let upsert = key.map(|key| {
            // The key as the catalog spells it, for ON CONFLICT.
            let catalog_key: Vec<String> = key
                .iter()
                .filter_map(|k| names.iter().position(|n| n == k))
                .map(|at| columns[at].clone())
                .collect();
            Upsert {
                key: key.to_vec(),
                reset_stage: sql::reset_stage(&target.table, &columns),
                merge_stage: sql::merge_stage(&target.table, &columns, &catalog_key),
            }
        });
        let copy = match upsert {
            Some(_) => sql::copy_into(&format!("pg_temp.{}", sql::STAGE), &columns),
            None => sql::copy_into(&target.table.quoted(), &columns),
        };
        Plan {
            ledger: target.table.ledger(),
            fences: target.table.fences(),
            ledger_target: target.table.to_string(),
            batch_rows: batch_rows.max(1),
            names,
            copy,
            upsert,
            target,
        }
    }
}

/// A unit's rows encoded as `COPY` text: one buffer, and where each row ends in it.
pub(super) struct Encoded {
    text: Vec<u8>,
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
        let mut encoded = Encoded {
            text: Vec::with_capacity(kept.len() * 64),
            ends: Vec::with_capacity(kept.len()),
            indexes: Vec::with_capacity(kept.len()),
        };
        let mut failures = Vec::new();
        for (index, row) in kept {
            match push_row(&mut encoded.text, row, &plan.names, &plan.target.columns) {
                Ok(()) => {
                    encoded.ends.push(encoded.text.len());
                    encoded.indexes.push(*index);
                }
                Err(reason) => failures.push(Failure {
                    index: *index,
                    reason,
                }),
            }
        }
        (encoded, failures)
    }

    /// The text of rows `range`.
    fn slice(&self, range: Range<usize>) -> &[u8] {
        let start = match range.start {
            0 => 0,
            n => self.ends[n - 1],
        };
        let end = self.ends[range.end - 1];
        &self.text[start..end]
    }
}

/// The most bytes sent in one `CopyData` message.
const COPY_CHUNK: usize = 256 * 1024;

/// One unit's transaction over one pooled connection.
pub(super) struct PgSession<'a> {
    /// The connection.
    pub client: &'a deadpool_postgres::Client,
    /// How the sink writes.
    pub plan: &'a Plan,
    /// The unit's rows.
    pub rows: &'a Encoded,
}

#[async_trait]
impl UnitSession for PgSession<'_> {
    type Error = Error;

    fn is_data_error(&self, error: &Error) -> bool {
        classify(error) == ErrorClass::Data
    }

    fn describe(&self, error: &Error) -> String {
        describe(error)
    }

    fn row_at_fault(&self, error: &Error) -> Option<usize> {
        errors::copy_line(error)
    }

    async fn begin(&mut self) -> Result<(), Error> {
        self.client.batch_execute(sql::BEGIN).await
    }

    async fn rollback(&mut self) -> Result<(), Error> {
        self.client.batch_execute(sql::ROLLBACK).await
    }

    async fn savepoint(&mut self) -> Result<(), Error> {
        self.client.batch_execute(&sql::save_point()).await
    }

    async fn rollback_to_savepoint(&mut self) -> Result<(), Error> {
        self.client
            .batch_execute(&sql::rollback_to_save_point())
            .await
    }

    async fn release_savepoint(&mut self) -> Result<(), Error> {
        self.client.batch_execute(&sql::release_save_point()).await
    }

    async fn load(&mut self, rows: Range<usize>) -> Result<Vec<Failure>, Error> {
        if let Some(upsert) = &self.plan.upsert {
            self.client.batch_execute(&upsert.reset_stage).await?;
        }
        let statement = self.client.prepare_cached(&self.plan.copy).await?;
        let sink = self.client.copy_in::<_, Bytes>(&statement).await?;
        futures::pin_mut!(sink);
        for chunk in self.rows.slice(rows).chunks(COPY_CHUNK) {
            sink.send(Bytes::copy_from_slice(chunk)).await?;
        }
        sink.finish().await?;
        if let Some(upsert) = &self.plan.upsert {
            let merge = self.client.prepare_cached(&upsert.merge_stage).await?;
            self.client.execute(&merge, &[]).await?;
        }
        Ok(Vec::new())
    }

    async fn record_and_commit(&mut self, entry: &LedgerEntry<'_>) -> Result<Recorded, Error> {
        let statement = sql::record_and_commit(&self.plan.ledger, &self.plan.fences, entry);
        match self.client.batch_execute(&statement).await {
            Ok(()) => Ok(Recorded::Committed),
            Err(error) if errors::is_fenced(&error) => Ok(Recorded::Fenced),
            Err(error) if errors::is_ledger_duplicate(&error, &self.plan.ledger.name) => {
                Ok(Recorded::Duplicate)
            }
            Err(error) => Err(error),
        }
    }

    async fn find_applied(&mut self, unit_id: &str) -> Result<Option<Applied>, Error> {
        let row = self
            .client
            .query_opt(
                &sql::find_applied(&self.plan.ledger),
                &[&self.plan.ledger_target, &unit_id],
            )
            .await?;
        Ok(row.map(|row| {
            let failures: Option<String> = row.get(1);
            Applied::from_ledger(row.get(0), failures.as_deref())
        }))
    }

    async fn highest_fence(&mut self, job: &str) -> Result<Option<u64>, Error> {
        read_highest_fence(self.client, &self.plan.fences, job).await
    }
}

/// The highest fencing token recorded in `fences` for `job`, if any.
pub(super) async fn read_highest_fence(
    client: &tokio_postgres::Client,
    fences: &TableName,
    job: &str,
) -> Result<Option<u64>, Error> {
    let row = client
        .query_opt(&sql::highest_fence(fences), &[&job])
        .await?;
    Ok(row.map(|row| row.get::<_, i64>(0).max(0) as u64))
}

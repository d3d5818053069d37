//! Writing one unit: exactly once in effect, every good row landing, every bad row found.
//!
//! 1. The ledger is asked first: a unit recorded there was applied before (its ack was lost)
//!    and its recorded outcome is returned without writing.
//! 2. Rows are encoded for the table's columns; a value that does not fit fails alone.
//! 3. In one transaction: the rows are bulk-loaded in loads of `batch_rows`, each under a
//!    savepoint. A load the server refuses for a row's sake (NULL, duplicate key, constraint)
//!    is undone and split in halves, down to the single rows at fault, which are dead-lettered
//!    with the server's error number and message. Then the ledger entry is inserted and the
//!    transaction committed: rows and ledger land together or not at all.
//! 4. Upsert mode loads into a session staging table, deletes the target rows whose key is in
//!    it, and inserts the staged rows. Rows of one unit with the same key: the last one wins.
//!
//! Two consumers writing the same unit at once cannot both commit: the ledger's primary key
//! refuses the second, whose transaction is rolled back and whose outcome is read back.

use std::collections::HashMap;
use std::ops::Range;

use tiberius::error::Error;
use tiberius::{SqlBulkCopyOption, TokenRow};

use super::connection::Connection;
use super::encode::encode;
use super::errors::{ErrorClass, classify, describe};
use super::schema::Target;
use super::sql::{self, STAGE, TableName};
use crate::sink::{Batch, Failure, WriteOutcome};

/// What a unit is written with.
pub struct Plan<'a> {
    /// The table and its mapped columns.
    pub target: &'a Target,
    /// The ledger table.
    pub ledger: TableName,
    /// The ledger's `target` value for this sink's table.
    pub ledger_target: String,
    /// Key columns in upsert mode; `None` appends.
    pub key: Option<&'a Vec<String>>,
    /// Rows per bulk load.
    pub batch_rows: usize,
}

/// Why a unit was not written.
#[derive(Debug)]
pub enum WriteError {
    /// The server or the connection failed while doing `what`.
    Server {
        /// The step.
        what: &'static str,
        /// The error.
        error: Error,
    },
    /// The unit cannot be written as it is.
    Refused(String),
}

fn at(what: &'static str) -> impl FnOnce(Error) -> WriteError {
    move |error| WriteError::Server { what, error }
}

/// One row ready to load: its index in the unit and its values in column order.
#[derive(Clone)]
struct EncodedRow {
    index: usize,
    values: Vec<tiberius::ColumnData<'static>>,
}

/// The longest unit id the ledger's key holds.
const MAX_UNIT_ID: usize = 300;

/// Writes `batch` over `connection` as `plan` says.
pub async fn write_unit(
    connection: &mut Connection,
    plan: &Plan<'_>,
    batch: Batch,
) -> Result<WriteOutcome, WriteError> {
    if batch.unit_id.chars().count() > MAX_UNIT_ID {
        return Err(WriteError::Refused(format!(
            "unit id `{}` is longer than the ledger's {MAX_UNIT_ID} characters",
            batch.unit_id
        )));
    }
    if let Some(applied) = find_applied(connection, plan, &batch.unit_id).await? {
        return Ok(applied);
    }
    let Batch {
        unit_id,
        rows,
        mut failures,
    } = batch;
    let mut encoded = Vec::with_capacity(rows.len());
    for (index, row) in rows {
        let values: Result<Vec<_>, String> = plan
            .target
            .columns
            .iter()
            .map(|column| {
                encode(
                    row.get(&column.name).unwrap_or(&serde_json::Value::Null),
                    column,
                )
            })
            .collect();
        match values {
            Ok(values) => encoded.push(EncodedRow { index, values }),
            Err(reason) => failures.push(Failure { index, reason }),
        }
    }
    if let Some(key) = plan.key {
        encoded = last_per_key(encoded, plan.target, key);
    }

    run(connection, sql::BEGIN).await.map_err(at("begin"))?;
    let mut pending: Vec<Range<usize>> = (0..encoded.len())
        .step_by(plan.batch_rows.max(1))
        .map(|start| start..(start + plan.batch_rows).min(encoded.len()))
        .rev()
        .collect();
    let mut landed = 0u64;
    while let Some(range) = pending.pop() {
        run(connection, &sql::save_point())
            .await
            .map_err(at("savepoint"))?;
        match load(connection, plan, &encoded[range.clone()]).await {
            Ok(refused) => {
                landed += (range.len() - refused.len()) as u64;
                failures.extend(refused);
            }
            Err(WriteError::Server { error, .. }) if classify(&error) == ErrorClass::Data => {
                run(connection, &sql::rollback_to_save_point())
                    .await
                    .map_err(at("undo a refused load"))?;
                if range.len() == 1 {
                    failures.push(Failure {
                        index: encoded[range.start].index,
                        reason: describe(&error),
                    });
                } else {
                    let middle = range.start + range.len() / 2;
                    pending.push(middle..range.end);
                    pending.push(range.start..middle);
                }
            }
            Err(other) => return Err(other),
        }
    }
    failures.sort_by_key(|f| f.index);
    let recorded = insert_applied(connection, plan, &unit_id, landed, &failures).await;
    match recorded {
        Err(WriteError::Server { error, .. }) if matches!(error.code(), Some(2627 | 2601)) => {
            // Another consumer applied this unit meanwhile; its outcome stands.
            run(connection, sql::ROLLBACK_IF_OPEN)
                .await
                .map_err(at("roll back a duplicate"))?;
            find_applied(connection, plan, &unit_id)
                .await?
                .ok_or_else(|| {
                    WriteError::Refused(format!(
                        "unit {unit_id} was refused as a duplicate but is not in the ledger"
                    ))
                })
        }
        Err(other) => Err(other),
        Ok(()) => {
            run(connection, sql::COMMIT).await.map_err(at("commit"))?;
            Ok(WriteOutcome {
                fresh: true,
                written: landed,
                failures,
            })
        }
    }
}

/// Loads `rows` into the target (append) or through the staging table (upsert). Returns the
/// rows the client library refused to encode (they were not sent); a server error fails the
/// whole load.
async fn load(
    connection: &mut Connection,
    plan: &Plan<'_>,
    rows: &[EncodedRow],
) -> Result<Vec<Failure>, WriteError> {
    let names: Vec<String> = plan
        .target
        .columns
        .iter()
        .map(|c| sql::bracket(&c.name))
        .collect();
    let columns: Vec<&str> = names.iter().map(String::as_str).collect();
    let plain: Vec<String> = plan.target.columns.iter().map(|c| c.name.clone()).collect();
    let destination = match plan.key {
        None => plan.target.table.quoted(),
        Some(_) => {
            run(connection, &sql::create_stage(&plan.target.table, &plain))
                .await
                .map_err(at("create the staging table"))?;
            STAGE.to_string()
        }
    };
    let mut refused = Vec::new();
    let options = SqlBulkCopyOption::KeepNulls | SqlBulkCopyOption::CheckConstraints;
    let mut request = connection
        .bulk_insert_with_options(&destination, &columns, options, &[])
        .await
        .map_err(at("start the bulk load"))?;
    for row in rows {
        let mut token = TokenRow::with_capacity(row.values.len());
        for value in &row.values {
            token.push(value.clone());
        }
        match request.send(token).await {
            Ok(()) => {}
            Err(error @ (Error::BulkInput(_) | Error::Encoding(_) | Error::Conversion(_))) => {
                refused.push(Failure {
                    index: row.index,
                    reason: describe(&error),
                })
            }
            Err(error) => {
                return Err(WriteError::Server {
                    what: "bulk load",
                    error,
                });
            }
        }
    }
    request.finalize().await.map_err(at("bulk load"))?;
    if let Some(key) = plan.key {
        run(
            connection,
            &sql::merge_stage(&plan.target.table, &plain, key),
        )
        .await
        .map_err(at("merge the staged rows"))?;
    }
    Ok(refused)
}

/// Keeps the last row of each key, in unit order: in upsert mode a later record replaces an
/// earlier one with the same key, as it would have in a later unit.
fn last_per_key(rows: Vec<EncodedRow>, target: &Target, key: &[String]) -> Vec<EncodedRow> {
    let positions: Vec<usize> = key
        .iter()
        .filter_map(|k| {
            target
                .columns
                .iter()
                .position(|c| c.name.eq_ignore_ascii_case(k))
        })
        .collect();
    let key_of = |row: &EncodedRow| {
        format!(
            "{:?}",
            positions
                .iter()
                .map(|p| &row.values[*p])
                .collect::<Vec<_>>()
        )
    };
    let mut last: HashMap<String, usize> = HashMap::with_capacity(rows.len());
    for (position, row) in rows.iter().enumerate() {
        last.insert(key_of(row), position);
    }
    rows.into_iter()
        .enumerate()
        .filter(|(position, row)| last.get(&key_of(row)) == Some(position))
        .map(|(_, row)| row)
        .collect()
}

/// Runs a batch of statements and reads its replies to the end.
pub(super) async fn run(connection: &mut Connection, text: &str) -> tiberius::Result<()> {
    connection.simple_query(text).await?.into_results().await?;
    Ok(())
}

/// The recorded outcome of a unit applied before, if it was.
async fn find_applied(
    connection: &mut Connection,
    plan: &Plan<'_>,
    unit_id: &str,
) -> Result<Option<WriteOutcome>, WriteError> {
    let row = connection
        .query(
            sql::find_applied(&plan.ledger),
            &[&plan.ledger_target.as_str(), &unit_id],
        )
        .await
        .map_err(at("read the ledger"))?
        .into_row()
        .await
        .map_err(at("read the ledger"))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let written = row.get::<i32, _>(0).unwrap_or(0);
    let failures = row
        .get::<&str, _>(1)
        .map(serde_json::from_str::<Vec<Failure>>)
        .transpose()
        .map_err(|e| {
            WriteError::Refused(format!("the ledger entry of {unit_id} is unreadable: {e}"))
        })?
        .unwrap_or_default();
    Ok(Some(WriteOutcome {
        fresh: false,
        written: written.max(0) as u64,
        failures,
    }))
}

async fn insert_applied(
    connection: &mut Connection,
    plan: &Plan<'_>,
    unit_id: &str,
    written: u64,
    failures: &[Failure],
) -> Result<(), WriteError> {
    let failures_json = serde_json::to_string(failures).expect("failures serialize");
    let now = chrono::DateTime::from_timestamp_millis(crate::run_state::now_ms() as i64)
        .unwrap_or_default()
        .naive_utc();
    connection
        .execute(
            sql::insert_applied(&plan.ledger),
            &[
                &plan.ledger_target.as_str(),
                &unit_id,
                &(written as i32),
                &(failures.len() as i32),
                &failures_json.as_str(),
                &now,
            ],
        )
        .await
        .map_err(at("record the unit in the ledger"))?;
    Ok(())
}

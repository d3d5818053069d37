//! Writing one unit: exactly once in effect, every good row landing, every bad row found.
//!
//! 1. Rows are encoded for the table's columns; a value that does not fit fails alone.
//! 2. A transaction opens, and the rows are bulk-loaded in it, `batch_rows` at a time.
//! 3. One last batch passes the fence (a writer with a fencing token: see
//!    [`sql::pass_fence`]), inserts the unit's ledger entry and commits if the insert went in:
//!    rows and ledger entry land together or not at all, and never after a newer holder of the
//!    job's lock recorded its token (then the batch stops, and the transaction is rolled back).
//!    The ledger's primary key refuses a unit applied before (its ack was lost) or meanwhile by
//!    another session (the server makes us wait for it); then the transaction is rolled back
//!    and the recorded outcome returned. Five round trips for a unit that goes well, and the
//!    table is written (locked) only from the first load to the commit, never while the client
//!    is still encoding; the fence's row is locked only by that last batch, and shared by the
//!    writers of one token.
//! 4. If the server refuses a load for a row's sake (NULL, duplicate key, constraint), the
//!    transaction is rolled back. A unit the ledger holds (a redelivery refused by the table's
//!    own keys) returns its recorded outcome. Otherwise the unit is written again with each load
//!    under a savepoint: a refused load is undone and split in halves, down to the rows at
//!    fault, which are dead-lettered with the server's error number and message.
//! 5. Upsert mode loads into a session staging table, deletes the target rows whose key is in
//!    it, and inserts the staged rows. Rows of one unit with the same key: the last one wins.

use std::collections::HashMap;
use std::ops::Range;

use serde_json::Value;
use tiberius::error::Error;
use tiberius::{SqlBulkCopyOption, TokenRow};

use super::connection::Connection;
use super::encode::encode;
use super::errors::{ErrorClass, classify, describe};
use super::schema::Target;
use super::sql::{self, STAGE, TableName};
use crate::mapping::Row;
use crate::sink::table::ledger::check_unit_id;
use crate::sink::{Batch, Failure, Fence, WriteOutcome, unit_failures};

/// What every unit of a sink is written with, built once per process when the table has been
/// read: the columns and the statements that do not change from unit to unit.
pub(super) struct Plan {
    target: Target,
    ledger: TableName,
    /// The highest fencing token per job.
    fences: TableName,
    /// The ledger's `target` value for this sink's table.
    ledger_target: String,
    /// Rows per bulk load.
    batch_rows: usize,
    /// The mapped columns, bracketed, for the bulk load.
    bulk_columns: Vec<String>,
    /// Set in upsert mode.
    upsert: Option<Upsert>,
}

/// Upsert mode's key and staging statements.
struct Upsert {
    key: Vec<String>,
    create_stage: String,
    merge_stage: String,
}

impl Plan {
    /// The plan for `target`, upserting by `key` if given, `batch_rows` rows per load.
    pub(super) fn new(target: Target, key: Option<Vec<String>>, batch_rows: usize) -> Plan {
        let names: Vec<String> = target.columns.iter().map(|c| c.name.clone()).collect();
        let upsert = key.map(|key| Upsert {
            create_stage: sql::create_stage(&target.table, &names),
            merge_stage: sql::merge_stage(&target.table, &names, &key),
            key,
        });
        Plan {
            ledger: target.table.ledger(),
            fences: target.table.fences(),
            ledger_target: target.table.to_string(),
            batch_rows: batch_rows.max(1),
            bulk_columns: names.iter().map(|name| sql::bracket(name)).collect(),
            upsert,
            target,
        }
    }
}

/// Why a unit was not written.
#[derive(Debug)]
pub(super) enum WriteError {
    /// The server or the connection failed while doing `what`.
    Server {
        /// The step.
        what: &'static str,
        /// The error.
        error: Error,
    },
    /// The unit cannot be written as it is.
    Refused(String),
    /// A newer holder of the job's lock recorded `highest`: nothing was written.
    Fenced {
        /// The highest token recorded for the job.
        highest: u64,
    },
}

fn at(what: &'static str) -> impl FnOnce(Error) -> WriteError {
    move |error| WriteError::Server { what, error }
}

/// One row ready to load: its index in the unit and its values in column order.
struct EncodedRow<'a> {
    index: usize,
    values: Vec<tiberius::ColumnData<'a>>,
}

/// `fence` as the fence table holds it.
pub(super) fn fence_check(fence: &Fence) -> Result<sql::FenceCheck<'_>, WriteError> {
    sql::FenceCheck::of(fence).map_err(WriteError::Refused)
}

/// Writes `batch` over `connection` as `plan` says.
pub(super) async fn write_unit(
    connection: &mut Connection,
    plan: &Plan,
    batch: &Batch,
) -> Result<WriteOutcome, WriteError> {
    check_unit_id(&batch.unit_id).map_err(WriteError::Refused)?;
    let Batch {
        unit_id,
        rows,
        fence,
        ..
    } = batch;
    let fence = fence.as_ref().map(fence_check).transpose()?;
    let mut failures = Vec::new();
    let mut sources = Vec::with_capacity(rows.len());
    let mut encoded = Vec::with_capacity(rows.len());
    for (index, row) in rows {
        match encode_row(plan, *index, row) {
            Ok(values) => {
                sources.push((*index, row));
                encoded.push(values);
            }
            Err(failure) => failures.push(failure),
        }
    }
    if let Some(upsert) = &plan.upsert {
        (sources, encoded) = last_per_key(sources, encoded, &plan.target, &upsert.key);
    }
    let unit = Unit {
        id: unit_id,
        sources: &sources,
        fence: fence.as_ref(),
    };
    // The ledger keeps the unit's whole outcome, failures found before writing included.
    let failures = unit_failures(&batch.failures, failures);
    let planned = sources.len() as u64;
    run(connection, sql::BEGIN)
        .await
        .map_err(at("begin the unit's transaction"))?;
    // The expected case: every load goes through. Anything refused sends the unit down the
    // slower path that isolates rows.
    let mut refused = false;
    let mut rows_iter = encoded.into_iter();
    while rows_iter.len() > 0 {
        let chunk: Vec<EncodedRow> = rows_iter.by_ref().take(plan.batch_rows).collect();
        match load(connection, plan, chunk).await {
            Ok(client_refused) if client_refused.is_empty() => {}
            Ok(_) => {
                refused = true;
                break;
            }
            Err(WriteError::Server { error, .. }) if classify(&error) == ErrorClass::Data => {
                refused = true;
                break;
            }
            Err(other) => return Err(other),
        }
    }
    if !refused {
        return record(connection, plan, &unit, planned, failures).await;
    }
    run(connection, sql::ROLLBACK_IF_OPEN)
        .await
        .map_err(at("roll back a refused load"))?;
    if let Some(outcome) = find_applied(connection, plan, unit_id).await? {
        // Applied before; a fenced writer is still told so, as it would be at the commit.
        if let Some(fence) = &unit.fence
            && let Some(highest) = highest_fence(connection, plan, fence.job).await?
            && highest > fence.token as u64
        {
            return Err(WriteError::Fenced { highest });
        }
        return Ok(outcome);
    }
    write_isolating(connection, plan, &unit, failures).await
}

/// The rows of a unit that encoded, with their index in the unit, and its writer's token.
struct Unit<'a> {
    id: &'a str,
    sources: &'a [(usize, &'a Row)],
    fence: Option<&'a sql::FenceCheck<'a>>,
}

/// Writes the unit again with every load under a savepoint, splitting refused loads down to
/// the rows at fault.
async fn write_isolating(
    connection: &mut Connection,
    plan: &Plan,
    unit: &Unit<'_>,
    mut failures: Vec<Failure>,
) -> Result<WriteOutcome, WriteError> {
    run(connection, sql::BEGIN)
        .await
        .map_err(at("begin the unit's transaction"))?;
    let mut pending: Vec<Range<usize>> = (0..unit.sources.len())
        .step_by(plan.batch_rows)
        .map(|start| start..(start + plan.batch_rows).min(unit.sources.len()))
        .rev()
        .collect();
    let mut landed = 0u64;
    while let Some(range) = pending.pop() {
        run(connection, &sql::save_point())
            .await
            .map_err(at("savepoint"))?;
        let rows: Vec<EncodedRow> = unit.sources[range.clone()]
            .iter()
            .filter_map(|(index, row)| encode_row(plan, *index, row).ok())
            .collect();
        match load(connection, plan, rows).await {
            Ok(client_refused) => {
                landed += (range.len() - client_refused.len()) as u64;
                failures.extend(client_refused);
            }
            Err(WriteError::Server { error, .. }) if classify(&error) == ErrorClass::Data => {
                run(connection, &sql::rollback_to_save_point())
                    .await
                    .map_err(at("undo a refused load"))?;
                if range.len() == 1 {
                    failures.push(Failure {
                        index: unit.sources[range.start].0,
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
    record(connection, plan, unit, landed, failures).await
}

/// Passes the fence, records the unit in the ledger and commits. A unit the ledger already
/// holds is rolled back and its recorded outcome returned; so is a fenced one, refused.
async fn record(
    connection: &mut Connection,
    plan: &Plan,
    unit: &Unit<'_>,
    written: u64,
    failures: Vec<Failure>,
) -> Result<WriteOutcome, WriteError> {
    let unit_id = unit.id;
    let fence = unit.fence.copied();
    let entry = sql::LedgerEntry::now(&plan.ledger_target, unit.id, fence, written, &failures);
    let statement = sql::record_and_commit(&plan.ledger, &plan.fences, &entry);
    match run(connection, &statement).await {
        Ok(()) => Ok(WriteOutcome {
            fresh: true,
            written,
            failures,
            columns_added: Vec::new(),
        }),
        Err(error) if error.code() == Some(sql::FENCED) && unit.fence.is_some() => {
            run(connection, sql::ROLLBACK_IF_OPEN)
                .await
                .map_err(at("roll back a fenced unit"))?;
            let job = unit.fence.map_or("", |fence| fence.job);
            let highest = highest_fence(connection, plan, job).await?;
            Err(WriteError::Fenced {
                highest: highest.unwrap_or_default(),
            })
        }
        Err(error) if matches!(error.code(), Some(2627 | 2601)) => {
            run(connection, sql::ROLLBACK_IF_OPEN)
                .await
                .map_err(at("roll back a duplicate"))?;
            applied_before(connection, plan, unit_id).await
        }
        Err(error) => Err(WriteError::Server {
            what: "record the unit in the ledger and commit",
            error,
        }),
    }
}

/// The outcome recorded for a unit the ledger already holds.
async fn applied_before(
    connection: &mut Connection,
    plan: &Plan,
    unit_id: &str,
) -> Result<WriteOutcome, WriteError> {
    find_applied(connection, plan, unit_id)
        .await?
        .ok_or_else(|| {
            WriteError::Refused(format!(
                "unit {unit_id} was refused as a duplicate but is not in the ledger"
            ))
        })
}

fn encode_row<'a>(plan: &Plan, index: usize, row: &'a Row) -> Result<EncodedRow<'a>, Failure> {
    let values: Result<Vec<_>, String> = plan
        .target
        .columns
        .iter()
        .map(|column| encode(row.get(&column.name).unwrap_or(&Value::Null), column))
        .collect();
    values
        .map(|values| EncodedRow { index, values })
        .map_err(|reason| Failure { index, reason })
}

/// Loads `rows` into the target (append) or through the staging table (upsert). Returns the
/// rows the client library refused to encode (they were not sent); a server error fails the
/// whole load.
async fn load(
    connection: &mut Connection,
    plan: &Plan,
    rows: Vec<EncodedRow<'_>>,
) -> Result<Vec<Failure>, WriteError> {
    let columns: Vec<&str> = plan.bulk_columns.iter().map(String::as_str).collect();
    let destination = match &plan.upsert {
        None => plan.target.table.quoted(),
        Some(upsert) => {
            run(connection, &upsert.create_stage)
                .await
                .map_err(at("create the staging table"))?;
            STAGE.to_string()
        }
    };
    let options = SqlBulkCopyOption::KeepNulls | SqlBulkCopyOption::CheckConstraints;
    let mut request = connection
        .bulk_insert_with_options(&destination, &columns, options, &[])
        .await
        .map_err(at("start the bulk load"))?;
    let mut refused = Vec::new();
    for row in rows {
        let mut token = TokenRow::with_capacity(row.values.len());
        for value in row.values {
            token.push(value);
        }
        match request.send(token).await {
            Ok(()) => {}
            // The client library refused to encode the row (a character the column's code
            // page lacks, say); nothing of it was sent, the load goes on without it.
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
    if let Some(upsert) = &plan.upsert {
        run(connection, &upsert.merge_stage)
            .await
            .map_err(at("merge the staged rows"))?;
    }
    Ok(refused)
}

/// Keeps the last row of each key, in unit order: in upsert mode a later record replaces an
/// earlier one with the same key, as it would have in a later unit.
fn last_per_key<'a>(
    sources: Vec<(usize, &'a Row)>,
    encoded: Vec<EncodedRow<'a>>,
    target: &Target,
    key: &[String],
) -> (Vec<(usize, &'a Row)>, Vec<EncodedRow<'a>>) {
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
    let mut last: HashMap<String, usize> = HashMap::with_capacity(encoded.len());
    for (position, row) in encoded.iter().enumerate() {
        last.insert(key_of(row), position);
    }
    sources
        .into_iter()
        .zip(encoded)
        .enumerate()
        .filter(|(position, (_, row))| last.get(&key_of(row)) == Some(position))
        .map(|(_, pair)| pair)
        .unzip()
}

/// Runs a batch of statements and reads its replies to the end.
pub(super) async fn run(connection: &mut Connection, text: &str) -> tiberius::Result<()> {
    connection.simple_query(text).await?.into_results().await?;
    Ok(())
}

/// The highest fencing token recorded for `job`, if any (read outside a transaction: for the
/// refusal's message, and for a unit found applied before).
pub(super) async fn highest_fence(
    connection: &mut Connection,
    plan: &Plan,
    job: &str,
) -> Result<Option<u64>, WriteError> {
    read_highest_fence(connection, &plan.fences, job)
        .await
        .map_err(at("read the fence"))
}

/// The highest fencing token recorded in `fences` for `job`, if any.
pub(super) async fn read_highest_fence(
    connection: &mut Connection,
    fences: &TableName,
    job: &str,
) -> tiberius::Result<Option<u64>> {
    let row = connection
        .query(sql::highest_fence(fences), &[&job])
        .await?
        .into_row()
        .await?;
    Ok(row
        .and_then(|row| row.get::<i64, _>(0))
        .map(|token| token.max(0) as u64))
}

/// The recorded outcome of a unit applied before, if it was.
async fn find_applied(
    connection: &mut Connection,
    plan: &Plan,
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
        columns_added: Vec::new(),
    }))
}

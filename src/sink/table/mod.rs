//! What the SQL table sinks share: how one unit is written exactly once in effect, with
//! every good row landing and every bad row found, whatever the database.
//!
//! A database sink supplies a [`UnitSession`]: one connection's transaction steps (begin,
//! load rows, savepoints, record-and-commit, ledger and fence reads), each in its own SQL.
//! [`write_unit`] runs them the same way for every database:
//!
//! 1. A transaction opens and the rows are loaded in it, `batch_rows` at a time.
//! 2. The last step passes the fence (a writer with a fencing token), inserts the unit's
//!    ledger row and commits: rows and ledger row land together or not at all, and never after
//!    a newer holder of the job's lock recorded its token. A ledger that already holds the
//!    unit (its ack was lost, or another consumer applied it meanwhile) refuses the insert;
//!    the transaction is rolled back and the recorded outcome returned.
//! 3. A load the database refuses for a row's sake (NULL, key, CHECK, a bad value) rolls the
//!    transaction back. A unit the ledger holds returns its recorded outcome (a redelivery
//!    refused by the table's own keys). Otherwise the unit is written again with each load
//!    under a savepoint: a refused load is undone and cut down to the rows at fault (straight
//!    to the row when the database names it, else in halves), which are dead-lettered with
//!    the database's own message; the other rows land.
//! 4. Any other error (a lost connection, a deadlock, a timeout) fails the whole unit, for the
//!    consumer to retry: nothing is ever dead-lettered row by row for it.

pub(super) mod ledger;
pub(super) mod settings;

use std::ops::Range;

use async_trait::async_trait;

use super::{Failure, Fence, SinkError, SinkErrors, WriteOutcome, unit_failures};
pub(super) use ledger::{FenceCheck, LedgerEntry};

/// What the record-and-commit step found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recorded {
    /// The unit's rows and ledger row are committed.
    Committed,
    /// The ledger already holds the unit: nothing was committed; the transaction is still
    /// open (or aborted) for the caller to roll back.
    Duplicate,
    /// A newer fencing token is recorded for the job: nothing was committed; the transaction
    /// is still open (or aborted) for the caller to roll back.
    Fenced,
}

/// One connection's steps of writing a unit, in a database's own SQL. The unit's writable
/// rows are the session's, numbered from 0; loads name them by range.
#[async_trait]
pub(super) trait UnitSession: Send {
    /// The database client's error.
    type Error: Send;

    /// True when `error` was caused by the rows being loaded (a value, a NULL, a key, a
    /// constraint): the rows at fault are looked for and dead-lettered.
    fn is_data_error(&self, error: &Self::Error) -> bool;

    /// The error for a dead letter: the database's own number and message.
    fn describe(&self, error: &Self::Error) -> String;

    /// The row of the refused load that the database named (0 for its first), if it did.
    fn row_at_fault(&self, error: &Self::Error) -> Option<usize> {
        let _ = error;
        None
    }

    /// Opens the unit's transaction.
    async fn begin(&mut self) -> Result<(), Self::Error>;

    /// Undoes whatever is open; harmless when nothing is.
    async fn rollback(&mut self) -> Result<(), Self::Error>;

    /// Marks the start of one load.
    async fn savepoint(&mut self) -> Result<(), Self::Error>;

    /// Undoes the load since the savepoint; the transaction stays open.
    async fn rollback_to_savepoint(&mut self) -> Result<(), Self::Error>;

    /// Lets go of a savepoint whose load went in.
    async fn release_savepoint(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Loads the writable rows `rows` (into the table, or through a staging table). Returns
    /// the rows the client refused to send (they were left out); an error fails the load.
    async fn load(&mut self, rows: Range<usize>) -> Result<Vec<Failure>, Self::Error>;

    /// Passes the fence (if the entry has a token), inserts the ledger row and commits.
    async fn record_and_commit(&mut self, entry: &LedgerEntry<'_>)
    -> Result<Recorded, Self::Error>;

    /// The recorded outcome of `unit_id`, if the ledger holds it.
    async fn find_applied(&mut self, unit_id: &str) -> Result<Option<Applied>, Self::Error>;

    /// The highest fencing token recorded for `job`, if any.
    async fn highest_fence(&mut self, job: &str) -> Result<Option<u64>, Self::Error>;
}

/// A ledger row read back: what the unit landed and which entries did not.
#[derive(Debug, Clone)]
pub(super) enum Applied {
    /// The recorded outcome.
    Outcome(WriteOutcome),
    /// The row is there but its failures cannot be read (a message for the refusal).
    Unreadable(String),
}

impl Applied {
    /// A ledger row as read back: its `rows_written` and its `failures` JSON.
    pub(super) fn from_ledger(written: i64, failures: Option<&str>) -> Applied {
        match failures
            .map(serde_json::from_str::<Vec<Failure>>)
            .transpose()
        {
            Ok(failures) => Applied::Outcome(WriteOutcome {
                fresh: false,
                written: written.max(0) as u64,
                failures: failures.unwrap_or_default(),
                columns_added: Vec::new(),
            }),
            Err(error) => Applied::Unreadable(error.to_string()),
        }
    }
}

/// Why a unit was not written.
#[derive(Debug)]
pub(super) enum WriteError<E> {
    /// The database or the connection failed while doing `what`.
    Server {
        /// The step.
        what: &'static str,
        /// The error.
        error: E,
    },
    /// The unit cannot be written as it is.
    Refused(String),
    /// A newer holder of the job's lock recorded `highest`: nothing was written.
    Fenced {
        /// The highest token recorded for the job.
        highest: u64,
    },
}

impl<E> WriteError<E> {
    /// The error as the sink reports it: `server` words a database error met while doing a
    /// step; `fence` is the writer's token.
    pub(super) fn into_sink_error(
        self,
        errors: &SinkErrors,
        fence: Option<&Fence>,
        server: impl FnOnce(&'static str, E) -> SinkError,
    ) -> SinkError {
        match (self, fence) {
            (WriteError::Server { what, error }, _) => server(what, error),
            (WriteError::Refused(message), _) => errors.fatal(&message),
            (WriteError::Fenced { highest }, Some(fence)) => errors.fenced(fence, highest),
            (WriteError::Fenced { highest }, None) => errors.fatal(&format!(
                "fenced by token {highest} without a token of its own"
            )),
        }
    }
}

fn at<E>(what: &'static str) -> impl FnOnce(E) -> WriteError<E> {
    move |error| WriteError::Server { what, error }
}

/// The unit as the engine sees it: its id, the unit index of each writable row (rows that
/// failed before, e.g. while encoding, are in `failures` instead), and its writer's token.
pub(super) struct UnitRows<'a> {
    /// The unit's deterministic id.
    pub id: &'a str,
    /// For writable row `i`, its index in the unit.
    pub indexes: &'a [usize],
    /// The writer's fencing token.
    pub fence: Option<FenceCheck<'a>>,
    /// The ledger's `target` value for the sink's table.
    pub target: &'a str,
    /// Rows per load.
    pub batch_rows: usize,
}

/// Writes a unit through `session`, exactly once in effect (see the module's docs).
/// `before` are the entries that failed before the write (unparseable, unmappable,
/// unencodable): the ledger keeps them with the unit's outcome.
pub(super) async fn write_unit<S: UnitSession>(
    session: &mut S,
    unit: &UnitRows<'_>,
    before: Vec<Failure>,
) -> Result<WriteOutcome, WriteError<S::Error>> {
    let total = unit.indexes.len();
    let batch_rows = unit.batch_rows.max(1);
    session
        .begin()
        .await
        .map_err(at("begin the unit's transaction"))?;
    // The expected case: every load goes through. Anything refused sends the unit down the
    // slower path that isolates rows.
    let mut refused = false;
    for start in (0..total).step_by(batch_rows) {
        match session.load(start..(start + batch_rows).min(total)).await {
            Ok(left_out) if left_out.is_empty() => {}
            Ok(_) => {
                refused = true;
                break;
            }
            Err(error) if session.is_data_error(&error) => {
                refused = true;
                break;
            }
            Err(error) => {
                return Err(WriteError::Server {
                    what: "load",
                    error,
                });
            }
        }
    }
    if !refused {
        return record(session, unit, total as u64, before).await;
    }
    session
        .rollback()
        .await
        .map_err(at("roll back a refused load"))?;
    if let Some(outcome) = recorded_outcome(session, unit.id).await? {
        // Applied before; a fenced writer is still told so, as it would be at the commit.
        if let Some(fence) = &unit.fence
            && let Some(highest) = session
                .highest_fence(fence.job)
                .await
                .map_err(at("read the fence"))?
            && highest > fence.token as u64
        {
            return Err(WriteError::Fenced { highest });
        }
        return Ok(outcome);
    }
    write_isolating(session, unit, before).await
}

/// Writes the unit again with every load under a savepoint, cutting refused loads down to
/// the rows at fault.
async fn write_isolating<S: UnitSession>(
    session: &mut S,
    unit: &UnitRows<'_>,
    mut failures: Vec<Failure>,
) -> Result<WriteOutcome, WriteError<S::Error>> {
    let total = unit.indexes.len();
    let batch_rows = unit.batch_rows.max(1);
    session
        .begin()
        .await
        .map_err(at("begin the unit's transaction"))?;
    let mut pending: Vec<Range<usize>> = (0..total)
        .step_by(batch_rows)
        .map(|start| start..(start + batch_rows).min(total))
        .rev()
        .collect();
    let mut landed = 0u64;
    while let Some(range) = pending.pop() {
        if range.is_empty() {
            continue;
        }
        session.savepoint().await.map_err(at("savepoint"))?;
        match session.load(range.clone()).await {
            Ok(left_out) => {
                session
                    .release_savepoint()
                    .await
                    .map_err(at("release the savepoint"))?;
                landed += (range.len() - left_out.len()) as u64;
                failures.extend(left_out);
            }
            Err(error) if session.is_data_error(&error) => {
                session
                    .rollback_to_savepoint()
                    .await
                    .map_err(at("undo a refused load"))?;
                let named = session
                    .row_at_fault(&error)
                    .filter(|row| *row < range.len());
                match (range.len(), named) {
                    (1, _) => failures.push(Failure {
                        index: unit.indexes[range.start],
                        reason: session.describe(&error),
                    }),
                    (_, Some(row)) => {
                        let bad = range.start + row;
                        failures.push(Failure {
                            index: unit.indexes[bad],
                            reason: session.describe(&error),
                        });
                        pending.push(bad + 1..range.end);
                        pending.push(range.start..bad);
                    }
                    (_, None) => {
                        let middle = range.start + range.len() / 2;
                        pending.push(middle..range.end);
                        pending.push(range.start..middle);
                    }
                }
            }
            Err(error) => {
                return Err(WriteError::Server {
                    what: "load",
                    error,
                });
            }
        }
    }
    record(session, unit, landed, failures).await
}

/// Passes the fence, records the unit in the ledger and commits. A unit the ledger already
/// holds is rolled back and its recorded outcome returned; a fenced one is rolled back and
/// refused.
async fn record<S: UnitSession>(
    session: &mut S,
    unit: &UnitRows<'_>,
    written: u64,
    failures: Vec<Failure>,
) -> Result<WriteOutcome, WriteError<S::Error>> {
    // The ledger keeps the unit's whole outcome, failures found before writing included.
    let failures = unit_failures(&failures, Vec::new());
    let entry = LedgerEntry::now(unit.target, unit.id, unit.fence, written, &failures);
    match session
        .record_and_commit(&entry)
        .await
        .map_err(at("record the unit in the ledger and commit"))?
    {
        Recorded::Committed => Ok(WriteOutcome {
            fresh: true,
            written,
            failures,
            columns_added: Vec::new(),
        }),
        Recorded::Fenced => {
            session
                .rollback()
                .await
                .map_err(at("roll back a fenced unit"))?;
            let job = unit.fence.map_or("", |fence| fence.job);
            let highest = session
                .highest_fence(job)
                .await
                .map_err(at("read the fence"))?;
            Err(WriteError::Fenced {
                highest: highest.unwrap_or_default(),
            })
        }
        Recorded::Duplicate => {
            session
                .rollback()
                .await
                .map_err(at("roll back a duplicate"))?;
            recorded_outcome(session, unit.id).await?.ok_or_else(|| {
                WriteError::Refused(format!(
                    "unit {} was refused as a duplicate but is not in the ledger",
                    unit.id
                ))
            })
        }
    }
}

/// The outcome the ledger holds for `unit_id`, if any.
async fn recorded_outcome<S: UnitSession>(
    session: &mut S,
    unit_id: &str,
) -> Result<Option<WriteOutcome>, WriteError<S::Error>> {
    match session
        .find_applied(unit_id)
        .await
        .map_err(at("read the ledger"))?
    {
        None => Ok(None),
        Some(Applied::Outcome(outcome)) => Ok(Some(outcome)),
        Some(Applied::Unreadable(why)) => Err(WriteError::Refused(format!(
            "the ledger entry of {unit_id} is unreadable: {why}"
        ))),
    }
}

/// Keeps the last row of each key, in unit order: in upsert mode a later record replaces an
/// earlier one with the same key, as it would have in a later unit. `key_of` gives a row's
/// key as a comparable text.
pub(super) fn last_per_key<T>(rows: Vec<T>, key_of: impl Fn(&T) -> String) -> Vec<T> {
    let mut last = std::collections::HashMap::with_capacity(rows.len());
    for (position, row) in rows.iter().enumerate() {
        last.insert(key_of(row), position);
    }
    rows.into_iter()
        .enumerate()
        .filter(|(position, row)| last.get(&key_of(row)) == Some(position))
        .map(|(_, row)| row)
        .collect()
}

//! What a PostgreSQL error means for a unit: retry it, isolate the rows that caused it, or
//! stop. By SQLSTATE class, as PostgreSQL documents them (Appendix A); anything not listed is
//! fatal, because retrying or bisecting an error we do not understand (a missing permission,
//! say) would only send every row to the dead-letter queue.

use tokio_postgres::Error;

use super::sql::FENCED;

/// How the sink reacts to an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ErrorClass {
    /// Worth retrying: the connection broke, a deadlock, a serialization failure, a lock or
    /// statement timeout, a server shutting down or out of resources.
    Transient,
    /// Caused by the rows being written (a bad value, NULL, a key, a CHECK or foreign key, a
    /// trigger's refusal): the unit is cut down to the rows, which are dead-lettered.
    Data,
    /// Nothing retrying fixes: a missing table or permission, a wrong password.
    Fatal,
}

/// SQLSTATEs worth retrying outside the classes below: serialization failure, deadlock,
/// lock not available, query canceled (statement_timeout), idle-session timeout.
const TRANSIENT: &[&str] = &["40001", "40P01", "55P03", "57014", "57P05"];

/// Classifies an error from tokio-postgres.
pub(super) fn classify(error: &Error) -> ErrorClass {
    let Some(db) = error.as_db_error() else {
        // No answer from the server: the connection or the client failed.
        return ErrorClass::Transient;
    };
    let code = db.code().code();
    if TRANSIENT.contains(&code) {
        return ErrorClass::Transient;
    }
    match &code[..2] {
        // connection exception, operator intervention (shutdown), insufficient resources,
        // system error (I/O)
        "08" | "57" | "53" | "58" => ErrorClass::Transient,
        // data exception, integrity constraint violation, cardinality violation (one key
        // twice in one upsert), a trigger's RAISE (P0001)
        "22" | "23" | "21" => ErrorClass::Data,
        _ if code == "P0001" => ErrorClass::Data,
        _ => ErrorClass::Fatal,
    }
}

/// `PostgreSQL error 23502: null value in column ... (Failing row contains ...)`, or the
/// client's own words.
pub(super) fn describe(error: &Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!("PostgreSQL error {}: {}", db.code().code(), db.message());
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            text
        }
        None => match std::error::Error::source(error) {
            Some(cause) => format!("{error}: {cause}"),
            None => error.to_string(),
        },
    }
}

/// The row of a `COPY` the server named in its error's context (`COPY t, line 3, column
/// x: ...`), counted from 0.
pub(super) fn copy_line(error: &Error) -> Option<usize> {
    let context = error.as_db_error()?.where_()?;
    let after = context.strip_prefix("COPY ")?.split_once(", line ")?.1;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse::<usize>().ok()?.checked_sub(1)
}

/// True for the fence check's refusal.
pub(super) fn is_fenced(error: &Error) -> bool {
    error
        .as_db_error()
        .is_some_and(|db| db.code().code() == FENCED)
}

/// True when the ledger's primary key refused the unit's row: it was applied before.
pub(super) fn is_ledger_duplicate(error: &Error, ledger: &str) -> bool {
    error
        .as_db_error()
        .is_some_and(|db| db.code().code() == "23505" && db.table() == Some(ledger))
}

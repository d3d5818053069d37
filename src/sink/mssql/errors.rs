//! What a SQL Server error means for a unit: retry it, isolate the rows that caused it, or stop.
//!
//! The numbers are SQL Server's and Azure SQL's documented ones; anything not listed is
//! fatal, because retrying or bisecting an error we do not understand (a missing permission,
//! say) would only send every row to the dead-letter queue.

use tiberius::error::Error;

/// How the sink reacts to an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ErrorClass {
    /// Worth retrying: the connection broke, a deadlock, a timeout, Azure SQL throttling or
    /// failover.
    Transient,
    /// Caused by the rows being written (a NULL, a duplicate key, a value too long): the unit
    /// is split to find the rows, and those are dead-lettered with the error.
    Data,
    /// Nothing retrying fixes: a missing table or permission, a wrong password.
    Fatal,
}

/// Deadlock victim, lock timeout, and the errors Azure SQL returns while throttling, moving
/// or failing over a database (the list the SQL client libraries retry on).
const TRANSIENT: &[u32] = &[
    20, 64, 121, 233, 1205, 1222, 4060, 4221, 10053, 10054, 10060, 10928, 10929, 40143, 40197,
    40501, 40540, 40613, 41301, 41302, 41305, 41325, 42108, 42109, 49918, 49919, 49920,
];

/// Errors a row causes: NULL into NOT NULL (515), duplicate key (2627, 2601), constraint
/// (547), truncation (8152, 2628), conversion and overflow (220, 232, 241, 242, 245, 517,
/// 8114, 8115), bulk column values (4815, 4816).
const DATA: &[u32] = &[
    220, 232, 241, 242, 245, 515, 517, 547, 2601, 2627, 2628, 4815, 4816, 8114, 8115, 8152,
];

/// User-defined errors (`THROW`/`RAISERROR` from a trigger) start here; they judge rows.
const FIRST_USER_ERROR: u32 = 50_000;

/// Classifies an error from tiberius.
pub(super) fn classify(error: &Error) -> ErrorClass {
    match error {
        Error::Server(token) => {
            let code = token.code();
            if TRANSIENT.contains(&code) {
                ErrorClass::Transient
            } else if DATA.contains(&code) || code >= FIRST_USER_ERROR {
                ErrorClass::Data
            } else {
                ErrorClass::Fatal
            }
        }
        Error::Io { .. } | Error::Protocol(_) => ErrorClass::Transient,
        _ => ErrorClass::Fatal,
    }
}

/// `SQL Server error 2627: Violation of PRIMARY KEY ...`, or tiberius's own words.
pub(super) fn describe(error: &Error) -> String {
    match error {
        Error::Server(token) => {
            format!("SQL Server error {}: {}", token.code(), token.message())
        }
        other => other.to_string(),
    }
}

//! What a MySQL or MariaDB error means for a unit: retry it, isolate the rows that caused
//! it, or stop. By server error number and SQLSTATE class; anything not listed is fatal,
//! because retrying or bisecting an error we do not understand (a missing privilege, say)
//! would only send every row to the dead-letter queue.

use mysql_async::{DriverError, Error};

/// How the sink reacts to an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ErrorClass {
    /// Worth retrying: the connection broke, a deadlock, a lock wait timeout, a server
    /// shutting down or out of connections.
    Transient,
    /// Caused by the rows being written: the unit is cut down to the rows, which are
    /// dead-lettered.
    Data,
    /// Nothing retrying fixes.
    Fatal,
}

/// Lock wait timeout, deadlock, too many connections, shutdown in progress, query
/// interrupted, network read/write errors, aborted connection, max execution time, connection
/// killed (MariaDB), disconnected for inactivity (MySQL 8).
const TRANSIENT: &[u16] = &[
    1205, 1213, 1040, 1053, 1317, 1158, 1159, 1160, 1161, 1184, 3024, 1927, 4031,
];

/// Row errors whose SQLSTATE is not of class 22 or 23: no default for a field, incorrect
/// value, wrong value for a type, CHECK constraint (MySQL), a trigger's SIGNAL, invalid
/// JSON, a BIGINT out of range, invalid character string.
const DATA: &[u16] = &[
    1364, 1366, 1411, 3819, 1644, 3140, 1690, 1300, 1367, 1265, 1263,
];

/// LOAD DATA LOCAL INFILE refused by the server: MySQL 5.7/MariaDB < 10.5 (1148), MySQL 8
/// (3948), MariaDB 10.5+ (4166).
const LOCAL_INFILE_REFUSED: &[u16] = &[1148, 3948, 4166];

/// Classifies a server error by its number and SQLSTATE.
pub(super) fn classify_code(code: u16, state: &str) -> ErrorClass {
    if TRANSIENT.contains(&code) {
        ErrorClass::Transient
    } else if DATA.contains(&code) || state.starts_with("22") || state.starts_with("23") {
        ErrorClass::Data
    } else {
        ErrorClass::Fatal
    }
}

/// Classifies an error from mysql_async.
pub(super) fn classify(error: &Error) -> ErrorClass {
    match error {
        Error::Server(server) => classify_code(server.code, &server.state),
        Error::Url(_) => ErrorClass::Fatal,
        Error::Driver(DriverError::LocalInfile(_)) => ErrorClass::Fatal,
        // No answer from the server: the connection or the client failed.
        Error::Driver(_) | Error::Io(_) | Error::Other(_) => ErrorClass::Transient,
    }
}

/// True when the server refused `LOAD DATA LOCAL INFILE` because `local_infile` is off.
pub(super) fn is_local_infile_refused(error: &Error) -> bool {
    matches!(error, Error::Server(server) if LOCAL_INFILE_REFUSED.contains(&server.code))
}

/// True when `error` is a duplicate key.
pub(super) fn is_duplicate(error: &Error) -> bool {
    matches!(error, Error::Server(server) if server.code == 1062)
}

/// `MySQL error 1366 (HY000): Incorrect integer value ...`, or the client's own words.
pub(super) fn describe(error: &Error) -> String {
    match error {
        Error::Server(server) => format!(
            "MySQL error {} ({}): {}",
            server.code, server.state, server.message
        ),
        other => match std::error::Error::source(other) {
            Some(cause) => format!("{other}: {cause}"),
            None => other.to_string(),
        },
    }
}

/// The row a server message names (`... at row 3`), counted from 0.
pub(super) fn row_named(message: &str) -> Option<usize> {
    let after = message.rsplit_once(" at row ")?.1;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse::<usize>().ok()?.checked_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mysql_errors_are_classified_by_number_and_state() {
        assert_eq!(classify_code(1213, "40001"), ErrorClass::Transient);
        assert_eq!(classify_code(1205, "HY000"), ErrorClass::Transient);
        assert_eq!(classify_code(1406, "22001"), ErrorClass::Data);
        assert_eq!(classify_code(1452, "23000"), ErrorClass::Data);
        assert_eq!(classify_code(1366, "HY000"), ErrorClass::Data);
        assert_eq!(classify_code(1142, "42000"), ErrorClass::Fatal);
        assert_eq!(
            row_named("Incorrect integer value: 'x' for column `n` at row 12"),
            Some(11)
        );
        assert_eq!(row_named("Duplicate entry '1' for key 'PRIMARY'"), None);
    }
}

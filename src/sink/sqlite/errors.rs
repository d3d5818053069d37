//! What a SQLite error means: a row SQLite refuses fails alone; a busy or locked database, a
//! full disk or an I/O failure is worth retrying; anything else stops the run.

use std::path::Path;

use rusqlite::ErrorCode;

use crate::sink::SinkError;

/// Errors that concern one row's data (a constraint, a value too big, a field name SQLite
/// refuses), not the database: the row fails alone and the rest of the unit lands.
pub(super) fn is_row_error(error: &rusqlite::Error) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(e, _) if matches!(
        e.code,
        ErrorCode::ConstraintViolation | ErrorCode::TooBig | ErrorCode::TypeMismatch | ErrorCode::ParameterOutOfRange | ErrorCode::Unknown
    ))
}

/// The sink error for `error`: transient when trying again may help, else fatal.
pub(super) fn classify(sink: &str, path: &Path, error: rusqlite::Error) -> SinkError {
    let transient = matches!(&error, rusqlite::Error::SqliteFailure(e, _)
        if matches!(e.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::SystemIoFailure | ErrorCode::DiskFull | ErrorCode::OutOfMemory));
    let message = format!("{}: {error}", path.display());
    match transient {
        true => SinkError::transient(sink, message),
        false => SinkError::fatal(sink, message),
    }
}

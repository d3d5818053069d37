//! Every statement the `mysql` sink sends, in one place: SQL that MySQL 8 and MariaDB 10.6+
//! both take. Identifiers are backquoted; values are bound parameters, or literals escaped
//! for the session's own `sql_mode` (set by the sink: backslash escapes on).

use std::fmt;

use crate::sink::table::ledger::{FENCES, LEDGER};
use crate::sink::table::{FenceCheck, LedgerEntry};

/// The session's staging table for upserts (temporary: each connection has its own).
pub(super) const STAGE: &str = "stevedore_stage";

/// The savepoint each load runs under, so a refused load undoes only itself.
const SAVEPOINT: &str = "stevedore_load";

/// What every connection of the sink runs first: strict mode (a bad value is an error, never
/// a silent truncation), UTC for `TIMESTAMP` columns, notes left out of warning counts.
pub(super) const SESSION_SETUP: &[&str] = &[
    "SET NAMES utf8mb4",
    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,ERROR_FOR_DIVISION_BY_ZERO', \
     time_zone = '+00:00', sql_notes = 0",
];

/// `database.name` or `name` (in the URL's database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TableName {
    /// The database.
    pub database: String,
    /// The table.
    pub name: String,
}

impl TableName {
    /// `database.name`, or `name` in `default` (the URL's database).
    pub(super) fn parse(text: &str, default: &str) -> TableName {
        match text.split_once('.') {
            Some((database, name)) => TableName {
                database: database.to_string(),
                name: name.to_string(),
            },
            None => TableName {
                database: default.to_string(),
                name: text.to_string(),
            },
        }
    }

    /// As written in statements: `` `shop`.`orders` ``.
    pub(super) fn quoted(&self) -> String {
        format!("{}.{}", quote(&self.database), quote(&self.name))
    }

    /// The ledger table in the same database.
    pub(super) fn ledger(&self) -> TableName {
        self.sibling(LEDGER)
    }

    /// The fence table in the same database.
    pub(super) fn fences(&self) -> TableName {
        self.sibling(FENCES)
    }

    fn sibling(&self, name: &str) -> TableName {
        TableName {
            database: self.database.clone(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.database, self.name)
    }
}

/// `` `name` ``, with backquotes doubled.
pub(super) fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `'...'` with quotes, backslashes, NUL, newlines and Ctrl-Z escaped: the string literal of
/// `text` under the sink's `sql_mode`.
pub(super) fn literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    push_literal(&mut out, text);
    out
}

/// Appends the string literal of `text` to `out`.
pub(super) fn push_literal(out: &mut String, text: &str) {
    out.push('\'');
    for c in text.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\u{1a}' => out.push_str("\\Z"),
            c => out.push(c),
        }
    }
    out.push('\'');
}

/// `` `a`, `b` ``.
pub(super) fn column_list(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| quote(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Finds a table: `?` database, `?` name. Its database and name as the server spells them.
pub(super) const FIND_TABLE: &str = "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES \
     WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?";

/// The columns of a table (`?` database, `?` name): name, type, data type, nullable, has a
/// default or is filled by the server, generated.
pub(super) const TABLE_COLUMNS: &str = "SELECT COLUMN_NAME, COLUMN_TYPE, DATA_TYPE, IS_NULLABLE = 'YES', \
     (COLUMN_DEFAULT IS NOT NULL OR EXTRA LIKE '%auto_increment%' OR EXTRA LIKE '%DEFAULT_GENERATED%'), \
     COALESCE(GENERATION_EXPRESSION, '') <> '' \
     FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
     ORDER BY ORDINAL_POSITION";

/// The columns of the unique indexes of a table (`?` database, `?` name), in index order.
pub(super) const UNIQUE_INDEXES: &str = "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS \
     WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND NON_UNIQUE = 0 AND COLUMN_NAME IS NOT NULL \
     ORDER BY INDEX_NAME, SEQ_IN_INDEX";

/// Whether the server takes `LOAD DATA LOCAL INFILE`, and the largest statement it takes.
pub(super) const SERVER_LIMITS: &str = "SELECT @@GLOBAL.local_infile, @@max_allowed_packet";

/// Creates the ledger and the fence table if they are missing. Ids and job names compare
/// byte for byte, as stevedore's own do.
pub(super) fn create_ledger(ledger: &TableName, fences: &TableName) -> [String; 2] {
    [
        format!(
            "CREATE TABLE IF NOT EXISTS {} (target VARCHAR(200) NOT NULL, \
             unit_id VARCHAR(300) NOT NULL, rows_written BIGINT NOT NULL, \
             rows_failed BIGINT NOT NULL, failures LONGTEXT, applied_at DATETIME(3) NOT NULL, \
             fence BIGINT, PRIMARY KEY (target, unit_id)) \
             ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            ledger.quoted()
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {} (job VARCHAR(128) NOT NULL PRIMARY KEY, \
             token BIGINT NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            fences.quoted()
        ),
    ]
}

/// The job's recorded token, share-locked until the transaction ends: a newer holder's
/// raise waits for every unit that passed under the older token. `?` the job.
pub(super) fn locked_fence(fences: &TableName) -> String {
    format!(
        "SELECT token FROM {} WHERE job = ? LOCK IN SHARE MODE",
        fences.quoted()
    )
}

/// Raises the job's token to the writer's (or records it), never lowering it.
pub(super) fn raise_fence(fences: &TableName, fence: &FenceCheck<'_>) -> String {
    format!(
        "INSERT INTO {} (job, token) VALUES ({}, {}) \
         ON DUPLICATE KEY UPDATE token = GREATEST(token, VALUES(token))",
        fences.quoted(),
        literal(fence.job),
        fence.token
    )
}

/// The highest token recorded for a job: `?` the job.
pub(super) fn highest_fence(fences: &TableName) -> String {
    format!("SELECT token FROM {} WHERE job = ?", fences.quoted())
}

/// Looks a unit up in the ledger: `?` target, `?` unit id.
pub(super) fn find_applied(ledger: &TableName) -> String {
    format!(
        "SELECT rows_written, failures FROM {} WHERE target = ? AND unit_id = ?",
        ledger.quoted()
    )
}

/// The unit's ledger row; its primary key refuses (1062) a unit applied before.
pub(super) fn insert_ledger(ledger: &TableName, entry: &LedgerEntry<'_>) -> String {
    let token = entry
        .fence
        .map_or_else(|| "NULL".to_string(), |fence| fence.token.to_string());
    format!(
        "INSERT INTO {} (target, unit_id, rows_written, rows_failed, failures, applied_at, fence) \
         VALUES ({}, {}, {}, {}, {}, {}, {token})",
        ledger.quoted(),
        literal(entry.target),
        literal(entry.unit_id),
        entry.written,
        entry.failed,
        literal(&entry.failures),
        literal(&entry.applied_at.replace('T', " ")),
    )
}

/// Opens the unit's transaction.
pub(super) const BEGIN: &str = "START TRANSACTION";

/// Commits it.
pub(super) const COMMIT: &str = "COMMIT";

/// Undoes whatever is open; harmless when nothing is.
pub(super) const ROLLBACK: &str = "ROLLBACK";

/// Marks the start of one load.
pub(super) fn save_point() -> String {
    format!("SAVEPOINT {SAVEPOINT}")
}

/// Undoes one refused load; the transaction stays open.
pub(super) fn rollback_to_save_point() -> String {
    format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}")
}

/// Lets go of the savepoint of a load that went in.
pub(super) fn release_save_point() -> String {
    format!("RELEASE SAVEPOINT {SAVEPOINT}")
}

/// The connection's staging table, shaped like the mapped columns of the target (their types
/// copied by the server), made once per connection, outside any transaction.
pub(super) fn create_stage(target: &TableName, columns: &[String]) -> String {
    format!(
        "CREATE TEMPORARY TABLE IF NOT EXISTS {STAGE} ENGINE=InnoDB AS SELECT {} FROM {} WHERE 1 = 0",
        column_list(columns),
        target.quoted()
    )
}

/// Empties the staging table before a load (in the transaction: `TRUNCATE` would commit).
pub(super) fn empty_stage() -> String {
    format!("DELETE FROM {STAGE}")
}

/// `LOAD DATA LOCAL INFILE` of tab-separated rows (the statement's defaults: tab, newline,
/// backslash escapes, `\N` for NULL) into `table`. Byte columns arrive as hex in a user
/// variable and are decoded by the server.
pub(super) fn load_data(table: &str, columns: &[String], bytes: &[bool]) -> String {
    let mut targets = Vec::with_capacity(columns.len());
    let mut decoded = Vec::new();
    for (at, (column, is_bytes)) in columns.iter().zip(bytes).enumerate() {
        if *is_bytes {
            targets.push(format!("@stevedore_{at}"));
            decoded.push(format!("{} = UNHEX(@stevedore_{at})", quote(column)));
        } else {
            targets.push(quote(column));
        }
    }
    let set = if decoded.is_empty() {
        String::new()
    } else {
        format!(" SET {}", decoded.join(", "))
    };
    format!(
        "LOAD DATA LOCAL INFILE 'stevedore-unit' INTO TABLE {table} CHARACTER SET utf8mb4 ({}){set}",
        targets.join(", ")
    )
}

/// The start of a multi-row `INSERT` into `table` (the fallback when `local_infile` is off).
pub(super) fn insert_into(table: &str, columns: &[String]) -> String {
    format!("INSERT INTO {table} ({}) VALUES ", column_list(columns))
}

/// Moves the staged rows into the target: new keys are inserted, known keys updated.
pub(super) fn merge_stage(target: &TableName, columns: &[String], key: &[String]) -> String {
    let list = column_list(columns);
    let mut updates: Vec<String> = columns
        .iter()
        .filter(|column| !key.iter().any(|k| k.eq_ignore_ascii_case(column)))
        .map(|column| format!("{0} = VALUES({0})", quote(column)))
        .collect();
    if updates.is_empty() {
        updates = columns
            .iter()
            .map(|column| format!("{0} = {0}", quote(column)))
            .collect();
    }
    format!(
        "INSERT INTO {} ({list}) SELECT {list} FROM {STAGE} ON DUPLICATE KEY UPDATE {}",
        target.quoted(),
        updates.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mysql_statements_quote_identifiers_and_literals() {
        let table = TableName::parse("org.order", "ignored");
        assert_eq!(table.quoted(), "`org`.`order`");
        assert_eq!(
            TableName::parse("members", "org").to_string(),
            "org.members"
        );
        assert_eq!(literal("it's \\ \n"), "'it\\'s \\\\ \\n'");
        assert_eq!(
            merge_stage(&table, &["id".into(), "name".into()], &["id".into()]),
            "INSERT INTO `org`.`order` (`id`, `name`) SELECT `id`, `name` FROM stevedore_stage \
             ON DUPLICATE KEY UPDATE `name` = VALUES(`name`)"
        );
        assert_eq!(
            load_data("`t`", &["a".into(), "b".into()], &[false, true]),
            "LOAD DATA LOCAL INFILE 'stevedore-unit' INTO TABLE `t` CHARACTER SET utf8mb4 \
             (`a`, @stevedore_1) SET `b` = UNHEX(@stevedore_1)"
        );
    }
}

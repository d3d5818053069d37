//! Every statement the `postgres` sink sends, in one place: plain PostgreSQL 12+ SQL.
//!
//! Identifiers come from the validated config (letters, digits, `_`) or the catalog, and are
//! double-quoted anyway so reserved words work as names. Values in the one multi-statement
//! batch (the ledger row) are `E'...'` literals, which read alike whatever
//! `standard_conforming_strings` says; every other value is a bound parameter.

use std::fmt;

use crate::sink::table::ledger::{FENCES, LEDGER};
use crate::sink::table::{FenceCheck, LedgerEntry};

/// The SQLSTATE the fence check raises when a newer holder's token is recorded (a class of
/// stevedore's own: PostgreSQL's are digits and capitals too, and none starts with `SD`).
pub(super) const FENCED: &str = "SD001";

/// The session's staging table for upserts (in `pg_temp`: each connection has its own).
pub(super) const STAGE: &str = "stevedore_stage";

/// The savepoint each load runs under, so a refused load undoes only itself.
const SAVEPOINT: &str = "stevedore_load";

/// The advisory lock taken while a table and the ledger are created, so two processes
/// creating them at once do not collide in the catalog.
const CREATE_LOCK: i64 = 0x5354_4556_4544_4f52; // "STEVEDOR"

/// `schema.name` or `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TableName {
    /// The schema, if given.
    pub schema: Option<String>,
    /// The table.
    pub name: String,
}

impl TableName {
    /// `schema.name` or `name`, from the config.
    pub(super) fn parse(text: &str) -> TableName {
        match text.split_once('.') {
            Some((schema, name)) => TableName {
                schema: Some(schema.to_string()),
                name: name.to_string(),
            },
            None => TableName {
                schema: None,
                name: text.to_string(),
            },
        }
    }

    /// As written in statements: `"sales"."orders"`.
    pub(super) fn quoted(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", quote(schema), quote(&self.name)),
            None => quote(&self.name),
        }
    }

    /// The same name folded to lower case, as PostgreSQL folds an unquoted name.
    pub(super) fn folded(&self) -> TableName {
        TableName {
            schema: self.schema.as_deref().map(str::to_lowercase),
            name: self.name.to_lowercase(),
        }
    }

    /// The ledger table in the same schema.
    pub(super) fn ledger(&self) -> TableName {
        self.sibling(LEDGER)
    }

    /// The fence table in the same schema.
    pub(super) fn fences(&self) -> TableName {
        self.sibling(FENCES)
    }

    fn sibling(&self, name: &str) -> TableName {
        TableName {
            schema: self.schema.clone(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// `"name"`, with quotes doubled.
pub(super) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `E'...'` with quotes and backslashes escaped: the string literal of `text`.
pub(super) fn literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

/// Finds a table by its name as written (`$1`, quoted) or folded (`$2`): its schema, name
/// and oid.
pub(super) const FIND_TABLE: &str = "SELECT n.nspname::text, c.relname::text, c.oid \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.oid = COALESCE(to_regclass($1), to_regclass($2))";

/// The columns of table `$1` (an oid): name, type, type name, NOT NULL, filled by the
/// server, generated.
pub(super) const TABLE_COLUMNS: &str = "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
     t.typname::text, a.attnotnull, a.atthasdef OR a.attidentity <> '', a.attgenerated <> '' \
     FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
     WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum";

/// The column lists of the unique indexes of table `$1` (an oid) that `ON CONFLICT` can use:
/// plain columns, no predicate.
pub(super) const UNIQUE_INDEXES: &str = "SELECT ARRAY(SELECT a.attname::text FROM unnest(i.indkey) AS k(n) \
     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n) \
     FROM pg_index i WHERE i.indrelid = $1 AND i.indisunique AND i.indpred IS NULL \
     AND i.indexprs IS NULL";

/// Whether a table exists: `$1` its quoted name.
pub(super) const TABLE_EXISTS: &str = "SELECT to_regclass($1) IS NOT NULL";

/// Opens a transaction in which tables are created, one process at a time.
pub(super) fn begin_creating() -> String {
    format!("BEGIN; SELECT pg_advisory_xact_lock({CREATE_LOCK})")
}

/// Creates the ledger and the fence table if they are missing. Job names compare as
/// stevedore's own do (the Redis lock's key): byte for byte, whatever the database's collation.
pub(super) fn create_ledger(ledger: &TableName, fences: &TableName) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (target text NOT NULL, unit_id text NOT NULL, \
         rows_written bigint NOT NULL, rows_failed bigint NOT NULL, failures text, \
         applied_at timestamp(3) NOT NULL, fence bigint, PRIMARY KEY (target, unit_id)); \
         CREATE TABLE IF NOT EXISTS {} (job text COLLATE \"C\" NOT NULL PRIMARY KEY, \
         token bigint NOT NULL)",
        ledger.quoted(),
        fences.quoted()
    )
}

/// Statements that pass the fence in the caller's transaction, ending with `;`: the job's row
/// is raised to the token if lower (or inserted if missing), and a row above the token raises
/// [`FENCED`] before anything after it runs.
///
/// Locks: the raise takes the row's lock only when it changes it (a new holder's first
/// write); the insert of a missing row waits for a concurrent first insert and then does
/// nothing; the check holds a share lock on the row until the commit or rollback, so a newer
/// holder's raise waits for every unit that passed the check under the older token, and every
/// check after the raise sees the newer token. Writers of one token never wait for each other.
pub(super) fn pass_fence(fences: &TableName, fence: &FenceCheck<'_>) -> String {
    let table = fences.quoted();
    let job = literal(fence.job);
    let token = fence.token;
    format!(
        "UPDATE {table} SET token = {token} WHERE job = {job} AND token < {token};\n\
         INSERT INTO {table} (job, token) VALUES ({job}, {token}) ON CONFLICT (job) DO NOTHING;\n\
         DO $stevedore$BEGIN PERFORM 1 FROM {table} WHERE job = {job} FOR SHARE; \
         IF EXISTS (SELECT 1 FROM {table} WHERE job = {job} AND token > {token}) THEN \
         RAISE EXCEPTION 'stevedore: a newer fencing token is recorded for this job' \
         USING ERRCODE = '{FENCED}'; END IF; END$stevedore$;\n"
    )
}

/// Records the fencing token for the job (prepare, before any worker writes), in a
/// transaction of its own. [`FENCED`] leaves the transaction aborted for the caller to roll
/// back.
pub(super) fn record_fence(fences: &TableName, fence: &FenceCheck<'_>) -> String {
    format!("BEGIN;\n{}COMMIT", pass_fence(fences, fence))
}

/// The highest token recorded for a job: `$1` the job.
pub(super) fn highest_fence(fences: &TableName) -> String {
    format!("SELECT token FROM {} WHERE job = $1", fences.quoted())
}

/// Looks a unit up in the ledger: `$1` target, `$2` unit id.
pub(super) fn find_applied(ledger: &TableName) -> String {
    format!(
        "SELECT rows_written, failures FROM {} WHERE target = $1 AND unit_id = $2",
        ledger.quoted()
    )
}

/// Opens the unit's transaction.
pub(super) const BEGIN: &str = "BEGIN";

/// Undoes whatever is open; only warns when nothing is.
pub(super) const ROLLBACK: &str = "ROLLBACK";

/// Passes the fence (if the unit has a token), records the unit in the ledger and commits,
/// in one round trip. A newer token raises [`FENCED`] before the ledger insert; the ledger's
/// primary key refuses (23505) a unit applied before, or meanwhile by another session (which
/// the server makes us wait for). Either error stops the batch before the `COMMIT`, leaving
/// the transaction aborted for the caller to roll back.
pub(super) fn record_and_commit(
    ledger: &TableName,
    fences: &TableName,
    entry: &LedgerEntry<'_>,
) -> String {
    let (check, token) = match &entry.fence {
        Some(fence) => (pass_fence(fences, fence), fence.token.to_string()),
        None => (String::new(), "NULL".to_string()),
    };
    format!(
        "{check}INSERT INTO {} (target, unit_id, rows_written, rows_failed, failures, \
         applied_at, fence) VALUES ({}, {}, {}, {}, {}, {}, {token});\nCOMMIT",
        ledger.quoted(),
        literal(entry.target),
        literal(entry.unit_id),
        entry.written,
        entry.failed,
        literal(&entry.failures),
        literal(&entry.applied_at),
    )
}

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

/// `COPY` of the mapped columns from text rows into `table`.
pub(super) fn copy_into(table: &str, columns: &[String]) -> String {
    format!("COPY {table} ({}) FROM STDIN", column_list(columns))
}

/// An empty staging table shaped like the mapped columns of the target (their types copied by
/// the server), made once per connection and emptied before each load.
pub(super) fn reset_stage(target: &TableName, columns: &[String]) -> String {
    format!(
        "CREATE TEMP TABLE IF NOT EXISTS {STAGE} AS SELECT {} FROM {} WITH NO DATA; \
         TRUNCATE pg_temp.{STAGE}",
        column_list(columns),
        target.quoted()
    )
}

/// Moves the staged rows into the target: new keys are inserted, known keys updated.
pub(super) fn merge_stage(target: &TableName, columns: &[String], key: &[String]) -> String {
    let list = column_list(columns);
    let updates: Vec<String> = columns
        .iter()
        .filter(|column| !key.contains(column))
        .map(|column| format!("{0} = EXCLUDED.{0}", quote(column)))
        .collect();
    let action = if updates.is_empty() {
        "NOTHING".to_string()
    } else {
        format!("UPDATE SET {}", updates.join(", "))
    };
    format!(
        "INSERT INTO {} ({list}) SELECT {list} FROM pg_temp.{STAGE} ON CONFLICT ({}) DO {action}",
        target.quoted(),
        column_list(key),
    )
}

/// `"a", "b", "c"`.
pub(super) fn column_list(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| quote(c))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_statements_quote_identifiers_and_literals() {
        let table = TableName::parse("sales.order");
        assert_eq!(table.quoted(), "\"sales\".\"order\"");
        assert_eq!(literal(r"it's \ here"), r"E'it''s \\ here'");
        assert_eq!(
            merge_stage(&table, &["id".into(), "name".into()], &["id".into()]),
            "INSERT INTO \"sales\".\"order\" (\"id\", \"name\") SELECT \"id\", \"name\" FROM \
             pg_temp.stevedore_stage ON CONFLICT (\"id\") DO UPDATE SET \"name\" = EXCLUDED.\"name\""
        );
        assert!(merge_stage(&table, &["id".into()], &["id".into()]).ends_with("DO NOTHING"));
    }

    #[test]
    fn postgres_fence_check_comes_before_the_ledger_entry_and_the_commit() {
        let table = TableName::parse("orders");
        let entry = LedgerEntry {
            target: "orders",
            unit_id: "j/r/s/0.0",
            written: 2,
            failed: 0,
            failures: "[]".into(),
            applied_at: "2026-12-07T10:00:00.000".into(),
            fence: Some(FenceCheck {
                job: "it's",
                token: 7,
            }),
        };
        let text = record_and_commit(&table.ledger(), &table.fences(), &entry);
        let check = text.find("RAISE EXCEPTION").expect("a check");
        let insert = text
            .find("INSERT INTO \"stevedore_applied\"")
            .expect("an insert");
        let commit = text.rfind("COMMIT").expect("a commit");
        assert!(check < insert && insert < commit, "{text}");
        assert!(text.contains("job = E'it''s' AND token < 7"), "{text}");
        assert!(text.contains("E'2026-12-07T10:00:00.000', 7);"), "{text}");
        let unfenced = LedgerEntry {
            fence: None,
            ..entry
        };
        let text = record_and_commit(&table.ledger(), &table.fences(), &unfenced);
        assert!(text.starts_with("INSERT INTO"), "{text}");
        assert!(text.contains(", NULL);"), "{text}");
    }
}

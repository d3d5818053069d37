//! Every statement the `mssql` sink sends, in one place. They are plain T-SQL that SQL Server
//! and Azure SQL run unchanged, and that the TDS test server (testkit/src/tds) translates;
//! a statement added here needs a rule there.
//!
//! Identifiers come from the validated config (letters, digits, `_`), and are bracketed
//! anyway so reserved words work as column names.

use std::fmt;

pub(super) use crate::sink::table::ledger::{FENCES, LEDGER};
pub(super) use crate::sink::table::{FenceCheck, LedgerEntry};

/// The error number the fence check throws when a newer holder's token is recorded
/// (user-defined: 50000 and above).
pub(super) const FENCED: u32 = 51_000;

/// The session's staging table for upserts.
pub(super) const STAGE: &str = "#stevedore_stage";

/// The savepoint each bulk load runs under, so a refused load undoes only itself.
pub(super) const SAVEPOINT: &str = "stevedore_load";

/// `schema.name` or `name`, from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TableName {
    /// The schema, if given.
    pub schema: Option<String>,
    /// The table.
    pub name: String,
}

impl TableName {
    /// Splits a validated `schema.name` / `name`.
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

    /// As written in statements: `dbo.[orders]`.
    pub(super) fn quoted(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{schema}.{}", bracket(&self.name)),
            None => bracket(&self.name),
        }
    }

    /// The name a statement refers to the table by once it is in `FROM`: `[orders]`.
    pub(super) fn exposed(&self) -> String {
        bracket(&self.name)
    }

    /// The ledger table in the same schema.
    pub(super) fn ledger(&self) -> TableName {
        TableName {
            schema: self.schema.clone(),
            name: LEDGER.to_string(),
        }
    }

    /// The fence table in the same schema.
    pub(super) fn fences(&self) -> TableName {
        TableName {
            schema: self.schema.clone(),
            name: FENCES.to_string(),
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

/// `[name]`.
pub(super) fn bracket(name: &str) -> String {
    format!("[{}]", name.replace(']', "]]"))
}

/// Columns that must be given a value: NOT NULL, no default, not identity, not computed.
/// `@P1` is the table name.
pub(super) const REQUIRED_COLUMNS: &str = "SELECT name FROM sys.columns WHERE object_id = OBJECT_ID(@P1) \
     AND is_nullable = 0 AND is_identity = 0 AND is_computed = 0 AND default_object_id = 0";

/// Creates the ledger and the fence table if they are missing. The ledger's key fits SQL
/// Server's 900-byte index limit; its `fence` is the writer's fencing token (NULL without one).
/// Job names compare as stevedore's own do (the Redis lock's key): case and all, whatever
/// the database's collation.
pub(super) fn create_ledger(ledger: &TableName, fences: &TableName) -> String {
    format!(
        "IF OBJECT_ID(N'{ledger}', N'U') IS NULL CREATE TABLE {quoted} (\
         target nvarchar(128) NOT NULL, unit_id nvarchar(300) NOT NULL, \
         rows_written int NOT NULL, rows_failed int NOT NULL, failures nvarchar(max) NULL, \
         applied_at datetime2(3) NOT NULL, fence bigint NULL, \
         CONSTRAINT PK_{name} PRIMARY KEY (target, unit_id));\n\
         IF OBJECT_ID(N'{fences}', N'U') IS NULL CREATE TABLE {fences_quoted} (\
         job nvarchar(128) COLLATE Latin1_General_BIN2 NOT NULL, token bigint NOT NULL, \
         CONSTRAINT PK_{fences_name} PRIMARY KEY (job))",
        quoted = ledger.quoted(),
        name = ledger.name,
        fences_quoted = fences.quoted(),
        fences_name = fences.name,
    )
}

/// Adds the `fence` column to a ledger made before fencing tokens; a no-op on a newer one.
/// Sent as a batch of its own, after [`create_ledger`], so that it meets the ledger as it is.
pub(super) fn add_fence_column(ledger: &TableName) -> String {
    format!(
        "IF COL_LENGTH(N'{ledger}', N'fence') IS NULL ALTER TABLE {} ADD fence bigint NULL",
        ledger.quoted()
    )
}

/// Statements that pass the fence in the caller's transaction, ending with `;`: the job's row
/// is raised to the token if lower (or inserted if missing), and a row above the token makes
/// the batch stop with error [`FENCED`] before anything after it runs.
///
/// Locks, so that the check and the commit are atomic while writers of one token never wait
/// for each other:
/// - the raise takes an exclusive lock only when it changes the row (a new holder's first
///   write, if its prepare could not record the token); on a row already at the token its
///   update lock is let go at once;
/// - the insert of a missing row looks first without holding anything, then again under
///   UPDLOCK + HOLDLOCK (a key-range lock), so two first writers of a job do not both insert;
/// - the check reads the row under REPEATABLEREAD: its shared lock is held until the commit or
///   rollback, so a newer holder's raise (an exclusive lock) waits for every unit that passed
///   the check under the older token, and every check after the raise sees the newer token.
pub(super) fn pass_fence(fences: &TableName, fence: &FenceCheck<'_>) -> String {
    format!(
        "UPDATE {table} SET token = {token} WHERE job = {job} AND token < {token};\n\
         IF NOT EXISTS (SELECT 1 FROM {table} WHERE job = {job}) \
         INSERT INTO {table} (job, token) SELECT {job}, {token} WHERE NOT EXISTS \
         (SELECT 1 FROM {table} WITH (UPDLOCK, HOLDLOCK) WHERE job = {job});\n\
         IF EXISTS (SELECT 1 FROM {table} WITH (REPEATABLEREAD) WHERE job = {job} \
         AND token > {token}) THROW {FENCED}, N'stevedore: a newer fencing token is recorded \
         for this job', 1;\n",
        table = fences.quoted(),
        job = literal(fence.job),
        token = fence.token,
    )
}

/// Records the fencing token for the job (prepare, before any worker writes), in a
/// transaction of its own. Error [`FENCED`] leaves the transaction open for the caller to roll
/// back.
pub(super) fn record_fence(fences: &TableName, fence: &FenceCheck<'_>) -> String {
    format!(
        "BEGIN TRANSACTION;\n{}COMMIT TRANSACTION",
        pass_fence(fences, fence)
    )
}

/// The highest token recorded for a job: `@P1` the job.
pub(super) fn highest_fence(fences: &TableName) -> String {
    format!("SELECT token FROM {} WHERE job = @P1", fences.quoted())
}

/// Looks a unit up in the ledger: `@P1` target, `@P2` unit id.
pub(super) fn find_applied(ledger: &TableName) -> String {
    format!(
        "SELECT rows_written, failures FROM {} WHERE target = @P1 AND unit_id = @P2",
        ledger.quoted()
    )
}

/// Opens the unit's transaction. It takes no lock: the first write does.
pub(super) const BEGIN: &str = "BEGIN TRANSACTION";

/// Passes the fence (if the unit has a token) and records the unit in the ledger and commits,
/// in one round trip. A newer token stops the batch with error [`FENCED`] before the ledger
/// insert. The ledger's primary key refuses (2627) a unit applied before, or applied meanwhile
/// by another session (which the server makes us wait for); a refused INSERT affects no row,
/// so the transaction is left open, uncommitted, for the caller to roll back. Values are
/// literals: a transaction ended inside `sp_executesql` would not be ours.
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
        "{check}INSERT INTO {} (target, unit_id, rows_written, rows_failed, failures, applied_at, \
         fence) VALUES ({}, {}, {}, {}, {}, {}, {token});\nIF @@ROWCOUNT = 1 COMMIT TRANSACTION",
        ledger.quoted(),
        literal(entry.target),
        literal(entry.unit_id),
        entry.written,
        entry.failed,
        literal(&entry.failures),
        literal(&entry.applied_at),
    )
}

/// `N'...'` with quotes doubled: the T-SQL string literal of `text`.
pub(super) fn literal(text: &str) -> String {
    format!("N'{}'", text.replace('\'', "''"))
}

/// Undoes whatever is open; harmless when nothing is.
pub(super) const ROLLBACK_IF_OPEN: &str = "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION";

/// Marks the start of one bulk load.
pub(super) fn save_point() -> String {
    format!("SAVE TRANSACTION {SAVEPOINT}")
}

/// Undoes one refused bulk load; the transaction stays open.
pub(super) fn rollback_to_save_point() -> String {
    format!("ROLLBACK TRANSACTION {SAVEPOINT}")
}

/// A fresh staging table shaped like the mapped columns of the target (types and NULL-ability
/// copied by the server).
pub(super) fn create_stage(target: &TableName, columns: &[String]) -> String {
    format!(
        "DROP TABLE IF EXISTS {STAGE}; SELECT TOP 0 {} INTO {STAGE} FROM {}",
        column_list(columns),
        target.quoted()
    )
}

/// Replaces target rows by key from the staging table: delete the old, insert the new.
pub(super) fn merge_stage(target: &TableName, columns: &[String], key: &[String]) -> String {
    let matches = key
        .iter()
        .map(|k| format!("s.{} = {}.{}", bracket(k), target.exposed(), bracket(k)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let list = column_list(columns);
    format!(
        "DELETE FROM {table} WHERE EXISTS (SELECT 1 FROM {STAGE} AS s WHERE {matches}); \
         INSERT INTO {table} ({list}) SELECT {list} FROM {STAGE}; DROP TABLE {STAGE}",
        table = target.quoted(),
    )
}

/// `[a], [b], [c]`.
pub(super) fn column_list(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| bracket(c))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mssql_statements_quote_identifiers() {
        let table = TableName::parse("dbo.orders");
        assert_eq!(table.quoted(), "dbo.[orders]");
        assert_eq!(
            merge_stage(&table, &["id".into(), "order".into()], &["id".into()]),
            "DELETE FROM dbo.[orders] WHERE EXISTS (SELECT 1 FROM #stevedore_stage AS s WHERE \
             s.[id] = [orders].[id]); INSERT INTO dbo.[orders] ([id], [order]) SELECT [id], \
             [order] FROM #stevedore_stage; DROP TABLE #stevedore_stage"
        );
        assert_eq!(
            TableName::parse("orders").ledger().quoted(),
            "[stevedore_applied]"
        );
    }

    #[test]
    fn mssql_fence_check_comes_before_the_ledger_entry_and_the_commit() {
        let table = TableName::parse("sales.orders");
        let entry = LedgerEntry {
            target: "sales.orders",
            unit_id: "j/r/s/0.0",
            written: 2,
            failed: 0,
            failures: "[]".into(),
            applied_at: "2026-11-28T10:00:00.000".into(),
            fence: Some(FenceCheck {
                job: "it's",
                token: 7,
            }),
        };
        let text = record_and_commit(&table.ledger(), &table.fences(), &entry);
        assert_eq!(
            text,
            "UPDATE sales.[stevedore_fence] SET token = 7 WHERE job = N'it''s' AND token < 7;\n\
             IF NOT EXISTS (SELECT 1 FROM sales.[stevedore_fence] WHERE job = N'it''s') \
             INSERT INTO sales.[stevedore_fence] (job, token) SELECT N'it''s', 7 WHERE NOT EXISTS \
             (SELECT 1 FROM sales.[stevedore_fence] WITH (UPDLOCK, HOLDLOCK) WHERE job = N'it''s');\n\
             IF EXISTS (SELECT 1 FROM sales.[stevedore_fence] WITH (REPEATABLEREAD) WHERE job = \
             N'it''s' AND token > 7) THROW 51000, N'stevedore: a newer fencing token is recorded \
             for this job', 1;\n\
             INSERT INTO sales.[stevedore_applied] (target, unit_id, rows_written, rows_failed, \
             failures, applied_at, fence) VALUES (N'sales.orders', N'j/r/s/0.0', 2, 0, N'[]', \
             N'2026-11-28T10:00:00.000', 7);\nIF @@ROWCOUNT = 1 COMMIT TRANSACTION"
        );
        let unfenced = LedgerEntry {
            fence: None,
            ..entry
        };
        let text = record_and_commit(&table.ledger(), &table.fences(), &unfenced);
        assert!(
            text.starts_with("INSERT INTO sales.[stevedore_applied]"),
            "{text}"
        );
        assert!(
            text.contains("N'2026-11-28T10:00:00.000', NULL);"),
            "{text}"
        );
    }
}

//! Every statement the `mssql` sink sends, in one place. They are plain T-SQL that SQL Server
//! and Azure SQL run unchanged, and that the TDS test server (testkit/src/tds) translates;
//! a statement added here needs a rule there.
//!
//! Identifiers come from the validated config (letters, digits, `_`), and are bracketed
//! anyway so reserved words work as column names.

use std::fmt;

/// The ledger of applied units: one row per (sink target, unit id), written in the same
/// transaction as the unit's rows.
pub(super) const LEDGER: &str = "stevedore_applied";

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

/// Creates the ledger if it is missing. The key fits SQL Server's 900-byte index limit.
pub(super) fn create_ledger(ledger: &TableName) -> String {
    format!(
        "IF OBJECT_ID(N'{ledger}', N'U') IS NULL CREATE TABLE {quoted} (\
         target nvarchar(128) NOT NULL, unit_id nvarchar(300) NOT NULL, \
         rows_written int NOT NULL, rows_failed int NOT NULL, failures nvarchar(max) NULL, \
         applied_at datetime2(3) NOT NULL, \
         CONSTRAINT PK_{name} PRIMARY KEY (target, unit_id))",
        quoted = ledger.quoted(),
        name = ledger.name,
    )
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

/// Records the unit in the ledger and commits, in one round trip. The ledger's primary key
/// refuses (2627) a unit applied before, or applied meanwhile by another session (which the
/// server makes us wait for); a refused INSERT affects no row, so the transaction is left
/// open, uncommitted, for the caller to roll back. Values are literals: a transaction ended
/// inside `sp_executesql` would not be ours.
pub(super) fn record_and_commit(ledger: &TableName, entry: &LedgerEntry<'_>) -> String {
    format!(
        "INSERT INTO {} (target, unit_id, rows_written, rows_failed, failures, applied_at) \
         VALUES ({}, {}, {}, {}, {}, {});\nIF @@ROWCOUNT = 1 COMMIT TRANSACTION",
        ledger.quoted(),
        literal(entry.target),
        literal(entry.unit_id),
        entry.written,
        entry.failed,
        literal(&entry.failures),
        literal(&entry.applied_at),
    )
}

/// One ledger row.
pub(super) struct LedgerEntry<'a> {
    /// The sink's table, `schema.name`.
    pub target: &'a str,
    /// The unit.
    pub unit_id: &'a str,
    /// Rows landed.
    pub written: u64,
    /// Entries that did not land.
    pub failed: usize,
    /// Those entries, as JSON.
    pub failures: String,
    /// When, `YYYY-MM-DDTHH:MM:SS.fff` UTC.
    pub applied_at: String,
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
}

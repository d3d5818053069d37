//! SQL Server targets for the `mssql` tests: the TDS test server always (a protocol contract
//! test double backed by SQLite, see `tds`), and a real SQL Server as well when
//! `STEVEDORE_MSSQL_URL` holds an ADO.NET connection string to one. Every test runs its
//! scenario against each target it gets, and says when it skipped the real one.

use base64::Engine;
use serde_json::Value;
use tiberius::{ColumnData, FromSql};

use crate::block_on;
use crate::tds::{Faults, TdsServer, connect};

/// Where a scenario writes.
pub struct MssqlTarget {
    server: Option<TdsServer>,
    connection: String,
    suffix: String,
}

/// The real server's connection string, if the environment names one.
const REAL_SERVER_ENV: &str = "STEVEDORE_MSSQL_URL";

impl MssqlTarget {
    /// The TDS test server, then the real server if `STEVEDORE_MSSQL_URL` is set (printing
    /// that the real-server part of `test` was skipped otherwise).
    pub fn all(test: &str) -> Vec<MssqlTarget> {
        let mut targets = vec![MssqlTarget::test_server()];
        match std::env::var(REAL_SERVER_ENV) {
            Ok(connection) if !connection.trim().is_empty() => targets.push(MssqlTarget {
                server: None,
                connection,
                suffix: format!("_{}_{}", std::process::id(), unique()),
            }),
            _ => println!(
                "{test}: {REAL_SERVER_ENV} is not set; skipped the real SQL Server part (ran against the TDS test server only)"
            ),
        }
        targets
    }

    /// The TDS test server alone, for faults only it can inject.
    pub fn test_server() -> MssqlTarget {
        let server = TdsServer::start();
        MssqlTarget {
            connection: server.connection_string(),
            server: Some(server),
            suffix: String::new(),
        }
    }

    /// `test server` or `real server`, for assertion messages.
    pub fn label(&self) -> &'static str {
        if self.server.is_some() {
            "test server"
        } else {
            "real server"
        }
    }

    /// The ADO.NET connection string.
    pub fn connection_string(&self) -> &str {
        &self.connection
    }

    /// A table name unique to this target (a real server is shared between test runs).
    pub fn table(&self, base: &str) -> String {
        format!("{base}{}", self.suffix)
    }

    /// The test server's fault switches; `None` on a real server.
    pub fn faults(&self) -> Option<&Faults> {
        self.server.as_ref().map(TdsServer::faults)
    }

    /// The test server itself; `None` on a real server.
    pub fn server(&self) -> Option<&TdsServer> {
        self.server.as_ref()
    }

    /// Runs statements, failing the test on an error.
    pub fn execute(&self, sql: &str) {
        block_on(async {
            let mut client = connect(&self.connection).await.expect("connects");
            let replies = client.simple_query(sql).await;
            let done = match replies {
                Ok(replies) => replies.into_results().await.map(|_| ()),
                Err(error) => Err(error),
            };
            done.unwrap_or_else(|e| panic!("{sql}: {e}"));
        })
    }

    /// Drops `table` if it exists, then runs `create`.
    pub fn recreate(&self, table: &str, create: &str) {
        self.execute(&format!("DROP TABLE IF EXISTS {table}"));
        self.execute(create);
    }

    /// The rows of a query, each column as JSON: numbers, strings, booleans; decimals, dates
    /// and uuids as canonical strings, binary as base64.
    pub fn rows(&self, sql: &str) -> Vec<Vec<Value>> {
        block_on(async {
            let mut client = connect(&self.connection).await.expect("connects");
            let rows = client
                .simple_query(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .into_first_result()
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            rows.into_iter()
                .map(|row| row.into_iter().map(|data| json(&data)).collect())
                .collect()
        })
    }

    /// `SELECT COUNT(*)` of a table.
    pub fn count(&self, table: &str) -> i64 {
        self.rows(&format!("SELECT COUNT(*) FROM {table}"))[0][0]
            .as_i64()
            .expect("a count")
    }
}

fn unique() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as u64
        % 1_000_000_007
}

/// One value read back, as JSON (see [`MssqlTarget::rows`]).
pub fn json(data: &ColumnData<'static>) -> Value {
    fn or_null<T: Into<Value>>(value: Option<T>) -> Value {
        value.map_or(Value::Null, Into::into)
    }
    match data {
        ColumnData::U8(v) => or_null(*v),
        ColumnData::I16(v) => or_null(*v),
        ColumnData::I32(v) => or_null(*v),
        ColumnData::I64(v) => or_null(*v),
        ColumnData::F32(v) => or_null(v.map(f64::from)),
        ColumnData::F64(v) => or_null(*v),
        ColumnData::Bit(v) => or_null(*v),
        ColumnData::String(v) => or_null(v.as_ref().map(|s| s.to_string())),
        ColumnData::Guid(v) => or_null(v.map(|g| g.to_string())),
        ColumnData::Binary(v) => or_null(
            v.as_ref()
                .map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
        ),
        ColumnData::Numeric(v) => or_null(v.map(decimal_text)),
        ColumnData::DateTime(_) | ColumnData::DateTime2(_) | ColumnData::SmallDateTime(_) => {
            or_null(
                chrono::NaiveDateTime::from_sql(data)
                    .expect("a date and time")
                    .map(|v| v.format("%Y-%m-%dT%H:%M:%S%.f").to_string()),
            )
        }
        ColumnData::Date(_) => or_null(
            chrono::NaiveDate::from_sql(data)
                .expect("a date")
                .map(|v| v.format("%Y-%m-%d").to_string()),
        ),
        ColumnData::Time(_) => or_null(
            chrono::NaiveTime::from_sql(data)
                .expect("a time")
                .map(|v| v.format("%H:%M:%S%.f").to_string()),
        ),
        ColumnData::DateTimeOffset(_) => or_null(
            chrono::DateTime::<chrono::FixedOffset>::from_sql(data)
                .expect("a date and time with offset")
                .map(|v| v.to_rfc3339()),
        ),
        ColumnData::Xml(v) => or_null(v.as_ref().map(|x| x.to_string())),
    }
}

/// A decimal as SQL Server prints it: `12.50`, `-0.0001`, `99999` (scale 0: no point).
fn decimal_text(n: tiberius::numeric::Numeric) -> String {
    let sign = if n.value() < 0 { "-" } else { "" };
    let scale = usize::from(n.scale());
    let digits = format!("{:0>width$}", n.value().unsigned_abs(), width = scale + 1);
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let (whole, fraction) = digits.split_at(digits.len() - scale);
    format!("{sign}{whole}.{fraction}")
}

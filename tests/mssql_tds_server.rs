//! Protocol contract tests for the test-only TDS server in `tests/support/tds`: the real
//! tiberius client and FreeTDS (`tsql`, `freebcp`) against it. They prove the server speaks
//! the protocol the sink relies on, not SQL Server semantics.

mod support;

use support::tds::{TdsServer, connect};

#[tokio::test]
async fn mssql_tds_connects_and_reports_version() {
    let server = TdsServer::start();
    let mut client = connect(&server.connection_string()).await.expect("connect");
    let row = client
        .query("SELECT @@VERSION", &[])
        .await
        .expect("query")
        .into_row()
        .await
        .expect("row")
        .expect("one row");
    let version: &str = row.get(0).expect("version text");
    assert!(version.contains("stevedore TDS test server"), "{version}");
}

//! The `mysql` sink through its own API, against a throwaway MariaDB server started by the
//! tests (and an external MySQL 8 or MariaDB too when `STEVEDORE_MYSQL_URL` is set). Rows are
//! read back through `mariadb`, the server's own client.
//!
//! The tests of this binary take turns ([`turn`]): one of them switches the server's
//! `local_infile` off, which every other sink would notice.

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use stevedore::mapping::Row;
use stevedore::sink::{self, Batch, Fence, Sink};
use testkit::mariadb::{MariaDbServer, MysqlTarget};

/// Runs `future` on this binary's one runtime: a `mysql_async` pool lives on the runtime it
/// was first used on, as it does in a worker process.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    static RUNTIME: std::sync::LazyLock<tokio::runtime::Runtime> =
        std::sync::LazyLock::new(|| tokio::runtime::Runtime::new().expect("a runtime"));
    RUNTIME.block_on(future)
}

/// Holds this binary's turn: one test at a time.
fn turn() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A `mysql` sink for `table` on `target`, with `extra` settings and `map` lines.
fn sink_for(target: &MysqlTarget, table: &str, extra: &str, map: &str) -> Arc<dyn Sink> {
    let text = format!(
        r#"
        [job]
        name = "sinktest"
        [[source]]
        name = "gen"
        kind = "generator"
        count = 1
        [[sink]]
        name = "warehouse"
        kind = "mysql"
        connection = "{url}"
        table = "{table}"
        {extra}
        [sink.map]
        {map}
        "#,
        url = target.url(),
    );
    let config = stevedore::job::parse(&text, Path::new("test.toml"), &|_| None)
        .unwrap_or_else(|e| panic!("config: {e}"));
    sink::from_config(&config.sinks[0])
}

fn batch(unit_id: &str, rows: Vec<Value>) -> Arc<Batch> {
    Arc::new(Batch {
        unit_id: unit_id.to_string(),
        rows: rows
            .into_iter()
            .enumerate()
            .map(|(index, row)| {
                (
                    index,
                    Row::from_object(row.as_object().cloned().unwrap_or_default()),
                )
            })
            .collect(),
        failures: Vec::new(),
        fence: None,
    })
}

fn orders_table(target: &MysqlTarget, base: &str) -> String {
    let table = target.table(base);
    target.recreate(
        &table,
        &format!(
            "CREATE TABLE {table} (id bigint NOT NULL PRIMARY KEY, name varchar(50), \
             amount decimal(18,2))"
        ),
    );
    table
}

const ORDERS_MAP: &str = r#"id = "id"
        name = "name"
        amount = "amount""#;

fn orders(ids: std::ops::Range<i64>, name: &str) -> Vec<Value> {
    ids.map(|id| json!({"id": id, "name": format!("{name} {id}"), "amount": format!("{id}.50")}))
        .collect()
}

#[test]
fn mysql_redelivered_unit_lands_once_in_append_mode() {
    let _turn = turn();
    for target in MysqlTarget::all("mysql_redelivered_unit_lands_once_in_append_mode") {
        // With a primary key the table itself refuses the second load; without one only the
        // ledger stands between a redelivery and duplicate rows.
        for primary_key in ["PRIMARY KEY", ""] {
            let table = target.table(if primary_key.is_empty() {
                "heap"
            } else {
                "keyed"
            });
            target.recreate(
                &table,
                &format!(
                    "CREATE TABLE {table} (id bigint NOT NULL {primary_key}, \
                     name varchar(50), amount decimal(18,2))"
                ),
            );
            let sink = sink_for(&target, &table, "", ORDERS_MAP);
            let unit = batch("sinktest/r1/gen/1.0", orders(1..301, "order"));
            let first = block_on(sink.write(unit.clone())).expect("first write");
            assert!(first.fresh, "{} {table}", target.label());
            assert_eq!(first.written, 300);
            // The ack was lost: the same unit comes again.
            let again = block_on(sink.write(unit)).expect("second write");
            assert!(!again.fresh, "the ledger recognises the unit ({table})");
            assert_eq!(again.written, 300, "the recorded outcome is returned");
            assert_eq!(target.count(&table), 300, "{} {table}", target.label());
            assert_eq!(
                target.query(&format!("SELECT SUM(id), SUM(amount) FROM {table}")),
                ["45150\t45300.00"]
            );
        }
    }
}

#[test]
fn mysql_redelivered_unit_lands_once_in_upsert_mode() {
    let _turn = turn();
    for target in MysqlTarget::all("mysql_redelivered_unit_lands_once_in_upsert_mode") {
        let table = orders_table(&target, "upserted");
        let sink = sink_for(
            &target,
            &table,
            r#"mode = "upsert"
            key = ["id"]"#,
            ORDERS_MAP,
        );
        block_on(sink.write(batch("sinktest/r1/gen/1.0", orders(1..101, "old")))).expect("load");
        // A later unit updates 50 rows and adds 50; it also repeats one key (the last wins).
        let mut rows = orders(51..151, "new");
        rows.push(json!({"id": 60, "name": "newest 60", "amount": "1.00"}));
        let unit = batch("sinktest/r1/gen/2.0", rows);
        let first = block_on(sink.write(unit.clone())).expect("upsert");
        assert!(first.fresh);
        assert_eq!(first.written, 100, "the repeated key is written once");
        let again = block_on(sink.write(unit)).expect("redelivered upsert");
        assert!(!again.fresh, "the ledger recognises the unit");
        assert_eq!(target.count(&table), 150, "{}", target.label());
        assert_eq!(
            target.query(&format!(
                "SELECT id, name, amount FROM {table} WHERE id IN (50, 51, 60, 150) ORDER BY id"
            )),
            [
                "50\told 50\t50.50",
                "51\tnew 51\t51.50",
                "60\tnewest 60\t1.00",
                "150\tnew 150\t150.50"
            ],
            "{}",
            target.label()
        );
    }
}

#[test]
fn mysql_every_kind_of_bad_row_is_refused_alone_with_the_servers_words() {
    let _turn = turn();
    for target in
        MysqlTarget::all("mysql_every_kind_of_bad_row_is_refused_alone_with_the_servers_words")
    {
        let parents = target.table("parents");
        target.recreate(
            &parents,
            &format!("CREATE TABLE {parents} (id int PRIMARY KEY)"),
        );
        target.execute(&format!("INSERT INTO {parents} VALUES (1)"));
        let table = target.table("checked");
        target.execute(&format!("DROP TABLE IF EXISTS {table}"));
        target.execute(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, code varchar(3) NOT NULL, \
             qty smallint CHECK (qty >= 0), parent int, day date, doc json, raw blob, \
             FOREIGN KEY (parent) REFERENCES {parents} (id)) ENGINE=InnoDB"
        ));
        let sink = sink_for(
            &target,
            &table,
            "",
            r#"id = "id"
            code = "code"
            qty = "qty"
            parent = "parent"
            day = "day"
            doc = "doc"
            raw = "raw""#,
        );
        let good = |id: i64| {
            json!({"id": id, "code": "abc", "qty": 1, "parent": 1, "day": "2026-12-07",
                   "doc": {"n": id}, "raw": "AAE="})
        };
        let mut rows: Vec<Value> = (0..40).map(good).collect();
        rows[3]["code"] = json!("too long"); // value too long
        rows[7]["code"] = Value::Null; // NOT NULL
        rows[11]["qty"] = json!(-1); // CHECK
        rows[15]["parent"] = json!(2); // foreign key
        rows[19]["qty"] = json!(70000); // out of range
        rows[23]["day"] = json!("2026-02-30"); // invalid date
        rows[27]["raw"] = json!("not base64!"); // refused before sending
        let outcome = block_on(sink.write(batch("sinktest/r1/gen/3.0", rows))).expect("writes");
        let refused: Vec<(usize, String)> = outcome
            .failures
            .iter()
            .map(|f| (f.index, f.reason.clone()))
            .collect();
        // MariaDB's numbers; MySQL 8 has its own for some (3819 for a CHECK), so an
        // external server is held to the server's words only.
        let mariadb = target.server().is_some();
        let codes = [
            (
                3,
                if mariadb {
                    "MySQL warning 1265: Data truncated for column 'code'"
                } else {
                    "MySQL "
                },
            ),
            (
                7,
                if mariadb {
                    "MySQL warning 1263: Column set to default value; NULL supplied to NOT NULL column 'code'"
                } else {
                    "MySQL "
                },
            ),
            (
                11,
                if mariadb {
                    "MySQL warning 4025: CONSTRAINT"
                } else {
                    "MySQL "
                },
            ),
            (
                15,
                if mariadb {
                    "MySQL warning 1452: Cannot add or update a child row"
                } else {
                    "MySQL "
                },
            ),
            (
                19,
                if mariadb {
                    "MySQL warning 1264: Out of range value for column 'qty'"
                } else {
                    "MySQL "
                },
            ),
            (
                23,
                if mariadb {
                    "MySQL warning 1265: Data truncated for column 'day'"
                } else {
                    "MySQL "
                },
            ),
            (27, "column `raw` (blob): not base64"),
        ];
        assert_eq!(refused.len(), codes.len(), "{refused:?}");
        for ((index, reason), (want_index, want)) in refused.iter().zip(codes) {
            assert_eq!(*index, want_index, "{refused:?}");
            assert!(reason.starts_with(want), "row {index}: {reason}");
        }
        assert_eq!(outcome.written, 33);
        assert_eq!(target.count(&table), 33, "{}", target.label());
        assert_eq!(
            target.query(&format!(
                "SELECT JSON_VALUE(doc, '$.n'), HEX(raw), day FROM {table} WHERE id = 39"
            )),
            ["39\t0001\t2026-12-07"]
        );
    }
}

#[test]
fn mysql_table_is_created_from_the_map_and_check_leaves_no_trace() {
    let _turn = turn();
    for target in MysqlTarget::all("mysql_table_is_created_from_the_map_and_check_leaves_no_trace")
    {
        let table = target.table("members");
        target.execute(&format!("DROP TABLE IF EXISTS {table}"));
        let map = r#"userId = { from = "userid", type = "varchar(64)" }
        name = { from = "name", type = "text" }
        score = { from = "score", type = "decimal(30,10)" }
        active = { from = "active", type = "boolean" }
        updated_at = { from = "updated", type = "datetime(3)" }
        raw = { from = "raw", type = "varbinary(16)" }"#;
        let sink = sink_for(
            &target,
            &table,
            r#"mode = "upsert"
            key = ["userId"]"#,
            map,
        );
        let exists = || {
            target.query(&format!(
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() \
                 AND TABLE_NAME = '{table}'"
            ))
        };
        let said = block_on(sink.check()).expect("check passes");
        assert!(
            said.contains("does not exist; the run creates it"),
            "{said}"
        );
        assert_eq!(exists(), ["0"], "check created nothing");
        block_on(sink.prepare(None)).expect("prepare creates the table");
        assert_eq!(exists(), ["1"]);
        let row = json!({"userId": "u-1", "name": "Ada\ttab", "score": "12345678901234567890.0123456789",
            "active": true, "updated_at": "2026-12-07T10:00:00.250+01:00", "raw": "AAE="});
        let outcome =
            block_on(sink.write(batch("sinktest/r1/gen/4.0", vec![row]))).expect("writes");
        assert!(outcome.failures.is_empty(), "{:?}", outcome.failures);
        assert_eq!(
            target.query(&format!(
                "SELECT userId, name, score, active, updated_at, HEX(raw) FROM {table}"
            )),
            ["u-1\tAda\ttab\t12345678901234567890.0123456789\t1\t2026-12-07 09:00:00.250\t0001"]
        );
        let said = block_on(sink.check()).expect("check passes");
        assert!(said.contains("LOAD DATA LOCAL INFILE"), "{said}");
    }
}

#[test]
fn mysql_loads_with_inserts_when_local_infile_is_off_and_isolates_rows_alike() {
    let _turn = turn();
    let target = MysqlTarget::test_server();
    let server = MariaDbServer::shared();
    let table = orders_table(&target, "inserted");
    server
        .as_root("SET GLOBAL local_infile = 0")
        .expect("local_infile off");
    let sink = sink_for(&target, &table, "batch_rows = 70", ORDERS_MAP);
    let said = block_on(sink.check());
    let mut rows = orders(1..201, "order");
    rows[150]["amount"] = json!("not a number");
    let outcome = block_on(sink.write(batch("sinktest/r1/gen/6.0", rows)));
    server
        .as_root("SET GLOBAL local_infile = 1")
        .expect("local_infile on");
    let said = said.expect("check passes");
    assert!(said.contains("multi-row INSERTs"), "{said}");
    let outcome = outcome.expect("writes");
    assert_eq!(outcome.written, 199);
    assert_eq!(outcome.failures.len(), 1, "{:?}", outcome.failures);
    assert_eq!(outcome.failures[0].index, 150);
    assert!(
        outcome.failures[0].reason.contains("amount"),
        "{}",
        outcome.failures[0].reason
    );
    assert_eq!(target.count(&table), 199);
}

#[test]
fn mysql_writer_with_an_older_fencing_token_is_refused_and_writes_nothing() {
    let _turn = turn();
    for target in
        MysqlTarget::all("mysql_writer_with_an_older_fencing_token_is_refused_and_writes_nothing")
    {
        let table = orders_table(&target, "fenced");
        let sink = sink_for(&target, &table, "", ORDERS_MAP);
        let job = format!("fencejob{}", table);
        let fence = |token| Fence {
            job: job.clone(),
            token,
        };
        block_on(sink.prepare(Some(&fence(5)))).expect("prepare records 5");
        let fenced = |token, id: &str, first: i64| {
            let mut unit = (*batch(id, orders(first..first + 10, "x"))).clone();
            unit.fence = Some(fence(token));
            block_on(sink.write(Arc::new(unit)))
        };
        fenced(5, "sinktest/r1/gen/5.0", 1).expect("the holder writes");
        block_on(sink.prepare(Some(&fence(6)))).expect("a newer holder prepares");
        let error = fenced(5, "sinktest/r1/gen/5.1", 11).expect_err("the older holder is refused");
        assert!(error.is_fenced(), "{error}");
        assert!(
            block_on(sink.prepare(Some(&fence(4)))).is_err_and(|e| e.is_fenced()),
            "an older holder cannot prepare either"
        );
        assert_eq!(target.count(&table), 10, "{}", target.label());
        fenced(6, "sinktest/r1/gen/5.1", 11).expect("the newer holder writes");
        assert_eq!(target.count(&table), 20);
    }
}

#[test]
fn mysql_test_server_takes_password_logins_and_local_infile() {
    let _turn = turn();
    let server = MariaDbServer::shared();
    let target = MysqlTarget::test_server();
    let table = target.table("probe");
    target.recreate(
        &table,
        &format!("CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(20))"),
    );
    target.execute(&format!(
        "INSERT INTO {table} VALUES (1, 'tab\there'), (2, NULL)"
    ));
    assert_eq!(
        target.query(&format!("SELECT id, name FROM {table} ORDER BY id")),
        vec!["1\ttab\there".to_string(), "2\tNULL".to_string()]
    );
    assert_eq!(target.count(&table), 2);
    assert_eq!(target.query("SELECT @@GLOBAL.local_infile"), vec!["1"]);
    // The password is checked: the same login with another one is refused.
    let wrong = std::process::Command::new("mariadb")
        .args(["--no-defaults", "--protocol=TCP", "-h", "127.0.0.1"])
        .args([
            "-P",
            &server.port.to_string(),
            "-u",
            "stevedore",
            "-e",
            "SELECT 1",
        ])
        .env("MYSQL_PWD", "not-the-password")
        .output()
        .expect("mariadb runs");
    assert!(!wrong.status.success(), "a wrong password was let in");
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("Access denied"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    target.execute(&format!("DROP TABLE {table}"));
}

//! The `mssql` sink through its own API, over the real TDS protocol: against the TDS test
//! server (a protocol contract test double, not SQL Server), and against a real SQL Server
//! too when `STEVEDORE_MSSQL_URL` is set.

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use stevedore::mapping::Row;
use stevedore::sink::{self, Batch, Fence, Sink};
use testkit::block_on;
use testkit::mssql::MssqlTarget;

/// An `mssql` sink for `table` on `target`, with `extra` settings and `map` lines.
fn sink_for(target: &MssqlTarget, table: &str, extra: &str, map: &str) -> Arc<dyn Sink> {
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
        kind = "mssql"
        connection = "{connection}"
        table = "{table}"
        {extra}
        [sink.map]
        {map}
        "#,
        connection = target.connection_string(),
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

fn orders_table(target: &MssqlTarget) -> String {
    let table = target.table("orders");
    target.recreate(
        &table,
        &format!(
            "CREATE TABLE {table} (id bigint NOT NULL PRIMARY KEY, name nvarchar(50) NULL, \
             amount decimal(18,2) NULL)"
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
fn mssql_redelivered_unit_lands_once_in_append_mode() {
    for target in MssqlTarget::all("mssql_redelivered_unit_lands_once_in_append_mode") {
        // With a primary key the table itself refuses the second load; without one (a heap)
        // only the ledger stands between a redelivery and duplicate rows.
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
                     name nvarchar(50) NULL, amount decimal(18,2) NULL)"
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
            let sum = target.rows(&format!("SELECT SUM(id) FROM {table}"));
            assert_eq!(sum[0][0], json!(45150));
        }
    }
}

#[test]
fn mssql_redelivered_unit_lands_once_in_upsert_mode() {
    for target in MssqlTarget::all("mssql_redelivered_unit_lands_once_in_upsert_mode") {
        let table = orders_table(&target);
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
        let again = block_on(sink.write(unit)).expect("redelivered upsert");
        assert!(!again.fresh, "the ledger recognises the unit");
        assert_eq!(target.count(&table), 150, "{}", target.label());
        let rows = target.rows(&format!(
            "SELECT id, name, amount FROM {table} WHERE id IN (50, 51, 60, 150) ORDER BY id"
        ));
        assert_eq!(
            rows,
            vec![
                vec![json!(50), json!("old 50"), json!("50.50")],
                vec![json!(51), json!("new 51"), json!("51.50")],
                vec![json!(60), json!("newest 60"), json!("1.00")],
                vec![json!(150), json!("new 150"), json!("150.50")],
            ],
            "{}",
            target.label()
        );
    }
}

#[test]
fn mssql_refused_rows_are_isolated_and_the_rest_land() {
    for target in MssqlTarget::all("mssql_refused_rows_are_isolated_and_the_rest_land") {
        let table = target.table("checked");
        target.recreate(
            &table,
            &format!(
                "CREATE TABLE {table} (id bigint NOT NULL PRIMARY KEY, name nvarchar(20) NOT NULL, \
                 qty int NULL CHECK (qty >= 0))"
            ),
        );
        let sink = sink_for(
            &target,
            &table,
            "batch_rows = 64",
            "id = \"id\"\nname = \"name\"\nqty = \"qty\"",
        );
        let mut rows: Vec<Value> = (1..=500)
            .map(|id| json!({"id": id, "name": format!("n{id}"), "qty": id % 7}))
            .collect();
        rows[99] = json!({"id": 100, "name": null, "qty": 1}); // NULL into NOT NULL
        rows[249] = json!({"id": 17, "name": "dup", "qty": 1}); // duplicate key of row 17
        rows[449] = json!({"id": 450, "name": "n450", "qty": -5}); // CHECK constraint
        let outcome = block_on(sink.write(batch("sinktest/r1/gen/1.0", rows))).expect("write");
        assert_eq!(outcome.written, 497, "{}", target.label());
        let failed: Vec<(usize, String)> = outcome
            .failures
            .iter()
            .map(|f| (f.index, f.reason.clone()))
            .collect();
        assert_eq!(failed.len(), 3, "{failed:?}");
        assert_eq!(failed[0].0, 99);
        assert!(
            failed[0]
                .1
                .starts_with("SQL Server error 515: Cannot insert the value NULL"),
            "{failed:?}"
        );
        assert_eq!(failed[1].0, 249);
        assert!(
            failed[1]
                .1
                .starts_with("SQL Server error 2627: Violation of PRIMARY KEY"),
            "{failed:?}"
        );
        assert_eq!(failed[2].0, 449);
        assert!(
            failed[2].1.starts_with("SQL Server error 547:"),
            "{failed:?}"
        );
        assert_eq!(target.count(&table), 497);
        let name = target.rows(&format!("SELECT name FROM {table} WHERE id = 17"));
        assert_eq!(
            name,
            vec![vec![json!("n17")]],
            "the first row with the key stays"
        );
    }
}

#[test]
fn mssql_types_round_trip_with_nulls_unicode_and_maximum_lengths() {
    for target in MssqlTarget::all("mssql_types_round_trip_with_nulls_unicode_and_maximum_lengths")
    {
        let table = target.table("typed");
        target.recreate(
            &table,
            &format!(
                "CREATE TABLE {table} (k int NOT NULL PRIMARY KEY, i int NULL, b bigint NULL, \
                 s smallint NULL, t tinyint NULL, bt bit NULL, f float NULL, r real NULL, \
                 d decimal(38,10) NULL, n numeric(5,0) NULL, nv nvarchar(10) NULL, \
                 v varchar(10) NULL, nvm nvarchar(max) NULL, vm varchar(max) NULL, \
                 d2 datetime2(7) NULL, dt datetime NULL, da date NULL, ti time(7) NULL, \
                 dto datetimeoffset(7) NULL, u uniqueidentifier NULL, vb varbinary(8) NULL, \
                 vbm varbinary(max) NULL)"
            ),
        );
        let columns = [
            "k", "i", "b", "s", "t", "bt", "f", "r", "d", "n", "nv", "v", "nvm", "vm", "d2", "dt",
            "da", "ti", "dto", "u", "vb", "vbm",
        ];
        let map: String = columns.iter().map(|c| format!("{c} = \"{c}\"\n")).collect();
        let sink = sink_for(&target, &table, "", &map);
        let long_text = "Grüße, 東京 🚢 ".repeat(700); // > 8000 bytes as UTF-16: PLP chunks
        let long_bytes = base64_of(&vec![0xAB; 9000]);
        let extremes = json!({
            "k": 1, "i": i32::MIN, "b": i64::MAX, "s": i16::MIN, "t": 255, "bt": true,
            "f": 1.5e300, "r": 3.25, "d": "-1234567890123456789012345678.0123456789",
            "n": "99999", "nv": "Grüße東京🚢", "v": "abcdefghij", "nvm": long_text,
            "vm": "x".repeat(9000), "d2": "9999-12-31T23:59:59.9999999",
            "dt": "1753-01-01T00:00:00", "da": "0001-01-01", "ti": "23:59:59.9999999",
            "dto": "2024-02-29T12:30:00.1234567+05:45",
            "u": "6f9619ff-8b86-d011-b42d-00c04fc964ff", "vb": base64_of(&[0, 1, 2, 255, 254, 253, 128, 7]),
            "vbm": long_bytes,
        });
        let nulls = Value::Object(
            columns
                .iter()
                .map(|c| {
                    (
                        c.to_string(),
                        if *c == "k" { json!(2) } else { Value::Null },
                    )
                })
                .collect(),
        );
        let ordinary = json!({
            "k": 3, "i": "42", "b": -7, "s": 12, "t": 0, "bt": "false", "f": "2.5", "r": -0.5,
            "d": 0.1, "n": 12, "nv": "", "v": "plain", "nvm": "short", "vm": "", "d2": "2024-05-01 10:00:00",
            "dt": "2024-05-01T10:00:00.003", "da": "2024-05-01", "ti": "08:30", "dto": "2024-05-01T10:00:00Z",
            "u": "00000000-0000-0000-0000-000000000001", "vb": "", "vbm": base64_of(b"hello"),
        });
        let outcome = block_on(sink.write(batch(
            "sinktest/r1/gen/1.0",
            vec![extremes, nulls, ordinary],
        )))
        .expect("write");
        assert_eq!(outcome.failures, vec![], "{}", target.label());
        assert_eq!(outcome.written, 3);
        let rows = target.rows(&format!(
            "SELECT {} FROM {table} ORDER BY k",
            columns.join(", ")
        ));
        let expected_extremes = vec![
            json!(1),
            json!(i32::MIN),
            json!(i64::MAX),
            json!(i16::MIN),
            json!(255),
            json!(true),
            json!(1.5e300),
            json!(3.25),
            json!("-1234567890123456789012345678.0123456789"),
            json!("99999"),
            json!("Grüße東京🚢"),
            json!("abcdefghij"),
            json!(long_text),
            json!("x".repeat(9000)),
            json!("9999-12-31T23:59:59.999999900"),
            json!("1753-01-01T00:00:00"),
            json!("0001-01-01"),
            json!("23:59:59.999999900"),
            json!("2024-02-29T12:30:00.123456700+05:45"),
            json!("6f9619ff-8b86-d011-b42d-00c04fc964ff"),
            json!(base64_of(&[0, 1, 2, 255, 254, 253, 128, 7])),
            json!(base64_of(&vec![0xAB; 9000])),
        ];
        assert_eq!(rows[0], expected_extremes, "{}", target.label());
        let mut expected_nulls = vec![Value::Null; columns.len()];
        expected_nulls[0] = json!(2);
        assert_eq!(rows[1], expected_nulls, "{}", target.label());
        let expected_ordinary = vec![
            json!(3),
            json!(42),
            json!(-7),
            json!(12),
            json!(0),
            json!(false),
            json!(2.5),
            json!(-0.5),
            json!("0.1000000000"),
            json!("12"),
            json!(""),
            json!("plain"),
            json!("short"),
            json!(""),
            json!("2024-05-01T10:00:00"),
            json!("2024-05-01T10:00:00.003333333"),
            json!("2024-05-01"),
            json!("08:30:00"),
            json!("2024-05-01T10:00:00+00:00"),
            json!("00000000-0000-0000-0000-000000000001"),
            json!(""),
            json!(base64_of(b"hello")),
        ];
        assert_eq!(rows[2], expected_ordinary, "{}", target.label());
    }
}

#[test]
fn mssql_values_that_do_not_fit_fail_alone_naming_the_column() {
    for target in MssqlTarget::all("mssql_values_that_do_not_fit_fail_alone_naming_the_column") {
        let table = target.table("narrow");
        target.recreate(
            &table,
            &format!("CREATE TABLE {table} (id int NOT NULL, code nvarchar(3) NULL, at date NULL)"),
        );
        let sink = sink_for(
            &target,
            &table,
            "",
            "id = \"id\"\ncode = \"code\"\nat = \"at\"",
        );
        let rows = vec![
            json!({"id": 1, "code": "abc", "at": "2024-01-31"}),
            json!({"id": 2, "code": "abcd", "at": "2024-01-31"}),
            json!({"id": 3, "code": "ok", "at": "31/01/2024"}),
            json!({"id": 4_000_000_000_i64, "code": "ok"}),
        ];
        let outcome = block_on(sink.write(batch("sinktest/r1/gen/1.0", rows))).expect("write");
        assert_eq!(outcome.written, 1, "{}", target.label());
        let reasons: Vec<&str> = outcome.failures.iter().map(|f| f.reason.as_str()).collect();
        assert_eq!(reasons.len(), 3);
        assert!(
            reasons[0].starts_with("column `code` (nvarchar(3)): the value has 4"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].starts_with("column `at` (date): \"31/01/2024\" is not a date"),
            "{reasons:?}"
        );
        assert!(
            reasons[2].starts_with("column `id` (int): 4000000000 is out of range"),
            "{reasons:?}"
        );
    }
}

#[test]
fn mssql_check_names_missing_columns_and_unmapped_required_ones() {
    for target in MssqlTarget::all("mssql_check_names_missing_columns_and_unmapped_required_ones") {
        let table = target.table("strict");
        target.recreate(
            &table,
            &format!(
                "CREATE TABLE {table} (id int NOT NULL, must nvarchar(5) NOT NULL, \
                 later nvarchar(5) NOT NULL DEFAULT 'x', maybe int NULL)"
            ),
        );
        let sink = sink_for(&target, &table, "", "id = \"id\"\nghost = \"g\"");
        let error = block_on(sink.check())
            .expect_err("the mapping does not fit")
            .to_string();
        assert!(error.contains("column `ghost` does not exist"), "{error}");
        assert!(
            error.contains(
                "column `must` is NOT NULL without a default, and [sink.map] does not write it"
            ),
            "{error}"
        );
        assert!(
            !error.contains("`later`"),
            "a column with a default is fine: {error}"
        );
        let fitting = sink_for(&target, &table, "", "id = \"id\"\nmust = \"m\"");
        let report = block_on(fitting.check()).expect("fits");
        assert!(
            report.contains("id int NOT NULL, must nvarchar(5) NOT NULL"),
            "{report}"
        );
    }
}

/// `unit` as written by the holder of `job`'s lock with `token`.
fn fenced(unit: Arc<Batch>, job: &str, token: u64) -> Arc<Batch> {
    let mut unit = (*unit).clone();
    unit.fence = Some(Fence {
        job: job.to_string(),
        token,
    });
    Arc::new(unit)
}

#[test]
fn mssql_fence_refuses_an_older_token_once_a_newer_one_prepared_or_wrote() {
    for target in
        MssqlTarget::all("mssql_fence_refuses_an_older_token_once_a_newer_one_prepared_or_wrote")
    {
        let table = orders_table(&target);
        let sink = sink_for(&target, &table, "", ORDERS_MAP);
        // Fence rows are per job and shared by every run on a real server: a job of its own.
        let job = target.table("fencejob");
        let fence = |token| Fence {
            job: job.clone(),
            token,
        };
        block_on(sink.prepare(Some(&fence(4)))).expect("the holder of token 4 prepares");
        let outcome = block_on(sink.write(fenced(batch("u/1", orders(1..3, "a")), &job, 4)))
            .expect("the holder writes");
        assert_eq!(outcome.written, 2, "{}", target.label());
        // A newer holder prepares: the older one is refused from now on, and writes nothing.
        block_on(sink.prepare(Some(&fence(5)))).expect("the holder of token 5 prepares");
        let refused = block_on(sink.write(fenced(batch("u/2", orders(3..5, "b")), &job, 4)))
            .expect_err("the older holder is fenced off");
        assert!(refused.is_fenced(), "{}: {refused}", target.label());
        assert!(
            refused
                .to_string()
                .contains("fencing token 4 is older than 5"),
            "{refused}"
        );
        assert_eq!(target.count(&table), 2, "the refused unit left no row");
        let ledger = |unit: &str| {
            target.rows(&format!(
                "SELECT unit_id, fence FROM stevedore_applied WHERE target = N'{table}' \
                 AND unit_id = N'{unit}'"
            ))
        };
        assert_eq!(
            ledger("u/2"),
            Vec::<Vec<Value>>::new(),
            "nor a ledger entry"
        );
        // The older one cannot prepare again either; the newer one writes and is recorded.
        let error = block_on(sink.prepare(Some(&fence(4)))).expect_err("prepare is fenced too");
        assert!(error.is_fenced(), "{}: {error}", target.label());
        let outcome = block_on(sink.write(fenced(batch("u/2", orders(3..5, "b")), &job, 5)))
            .expect("the newer holder writes");
        assert!(outcome.fresh);
        assert_eq!(target.count(&table), 4);
        assert_eq!(ledger("u/1"), vec![vec![json!("u/1"), json!(4)]]);
        assert_eq!(ledger("u/2"), vec![vec![json!("u/2"), json!(5)]]);
        // A newer token raises the fence at its first write too (its prepare could not).
        let outcome = block_on(sink.write(fenced(batch("u/3", orders(5..6, "c")), &job, 6)))
            .expect("token 6 writes without having prepared");
        assert_eq!(outcome.written, 1);
        let refused = block_on(sink.write(fenced(batch("u/4", orders(6..7, "d")), &job, 5)))
            .expect_err("token 5 is fenced off by a write of token 6");
        assert!(refused.to_string().contains("older than 6"), "{refused}");
        // Other jobs have fences of their own, and writes without a token are not checked.
        let other = target.table("otherjob");
        block_on(sink.prepare(Some(&Fence {
            job: other.clone(),
            token: 1,
        })))
        .expect("another job's first token");
        block_on(sink.write(fenced(batch("u/5", orders(7..8, "e")), &other, 1)))
            .expect("another job writes");
        block_on(sink.write(batch("u/6", orders(8..9, "f")))).expect("a write without a token");
        assert_eq!(ledger("u/6"), vec![vec![json!("u/6"), Value::Null]]);
        assert_eq!(target.count(&table), 7, "{}", target.label());
    }
}

/// The ledger as stevedore made it before fencing tokens.
const LEDGER_WITHOUT_FENCE: &str = "(target nvarchar(128) NOT NULL, unit_id nvarchar(300) NOT NULL, \
     rows_written int NOT NULL, rows_failed int NOT NULL, failures nvarchar(max) NULL, \
     applied_at datetime2(3) NOT NULL, CONSTRAINT PK_stevedore_applied PRIMARY KEY (target, unit_id))";

#[test]
fn mssql_prepare_adds_the_fence_column_to_a_ledger_made_without_it() {
    for target in
        MssqlTarget::all("mssql_prepare_adds_the_fence_column_to_a_ledger_made_without_it")
    {
        // A real server's ledger is shared by every test and run: this one gets a schema of
        // its own there. The test server holds only this test's tables (all in dbo).
        let schema = target
            .server()
            .is_none()
            .then(|| target.table("fence_ledger"));
        if let Some(schema) = &schema {
            target.execute(&format!("CREATE SCHEMA [{schema}]"));
        }
        let qualify = |name: &str| match &schema {
            Some(schema) => format!("[{schema}].[{name}]"),
            None => name.to_string(),
        };
        let (orders_table, ledger) = (qualify("orders"), qualify("stevedore_applied"));
        target.recreate(
            &orders_table,
            &format!("CREATE TABLE {orders_table} (id bigint NOT NULL PRIMARY KEY, name nvarchar(50) NULL, amount decimal(18,2) NULL)"),
        );
        target.recreate(
            &ledger,
            &format!("CREATE TABLE {ledger} {LEDGER_WITHOUT_FENCE}"),
        );
        let table = match &schema {
            Some(schema) => format!("{schema}.orders"),
            None => "orders".to_string(),
        };
        let sink = sink_for(&target, &table, "", ORDERS_MAP);
        block_on(sink.prepare(None)).expect("prepare");
        let sink = sink_for(&target, &table, "", ORDERS_MAP); // another process: a no-op
        block_on(sink.prepare(Some(&Fence {
            job: target.table("fenceledgerjob"),
            token: 3,
        })))
        .expect("prepare again, with a token");
        block_on(sink.write(fenced(
            batch("u/1", orders(1..3, "a")),
            &target.table("fenceledgerjob"),
            3,
        )))
        .expect("write");
        let rows = target.rows(&format!("SELECT unit_id, fence FROM {ledger}"));
        assert_eq!(
            rows,
            vec![vec![json!("u/1"), json!(3)]],
            "{}",
            target.label()
        );
        if let Some(schema) = &schema {
            for name in ["orders", "stevedore_applied", "stevedore_fence"] {
                target.execute(&format!("DROP TABLE IF EXISTS [{schema}].[{name}]"));
            }
            target.execute(&format!("DROP SCHEMA [{schema}]"));
        }
    }
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

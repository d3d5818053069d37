//! `stevedore run` and `stevedore check` with an `mssql` sink, through real worker processes
//! and a real Redis, against the TDS test server (a protocol contract test double, not SQL
//! Server) and against a real SQL Server too when `STEVEDORE_MSSQL_URL` is set.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use testkit::mssql::MssqlTarget;
use testkit::{Job, TestRedis, queue_bodies};

/// A job reading `{dir}/data/*.jsonl` into the mssql sink `warehouse` (and whatever `more`
/// adds), with `sink_extra` settings and the standard orders mapping.
fn job(
    name: &str,
    redis: &TestRedis,
    target: &MssqlTarget,
    table: &str,
    sink_extra: &str,
    more: &str,
) -> Job {
    Job::new(&format!(
        r#"
        [job]
        name = "{name}"
        data_dir = "{{dir}}/var"
        [redis]
        url = "redis://127.0.0.1:{port}"
        [workers]
        producers = 2
        consumers = 2
        [queue]
        unit_records = 100
        max_receives = 4
        [[source]]
        name = "orders"
        kind = "files"
        path = "{{dir}}/data/*.jsonl"
        format = "jsonl"
        [[sink]]
        name = "warehouse"
        kind = "mssql"
        connection = "{connection}"
        table = "{table}"
        max_concurrency = 3
        max_units_per_second = 500
        {sink_extra}
        [sink.map]
        order_id = {{ from = "id", type = "bigint" }}
        customer = "customer.name"
        amount = {{ from = "amount", type = "decimal" }}
        placed_at = {{ from = "ts", type = "datetime2" }}
        {more}
        "#,
        port = redis.port,
        connection = target.connection_string(),
    ))
}

fn create_orders(target: &MssqlTarget, table: &str) {
    target.recreate(
        table,
        &format!(
            "CREATE TABLE {table} (order_id bigint NOT NULL PRIMARY KEY, customer nvarchar(40) NOT NULL, \
             amount decimal(12,2) NULL CHECK (amount >= 0), placed_at datetime2(3) NULL)"
        ),
    );
}

fn order(id: u64) -> Value {
    json!({
        "id": id,
        "customer": {"name": format!("Kunde {id} – Zürich")},
        "amount": format!("{}.{:02}", id % 1000, id % 100),
        "ts": format!("2026-11-{:02}T{:02}:{:02}:00.250", 1 + id % 28, id % 24, id % 60),
    })
}

fn write_orders(job: &Job, files: u64, per_file: u64) {
    for file in 0..files {
        let lines: String = (1..=per_file)
            .map(|n| format!("{}\n", order(file * per_file + n)))
            .collect();
        job.write(&format!("data/part-{file}.jsonl"), &lines);
    }
}

/// The table's rows as `id|customer|amount|placed_at` strings.
fn table_rows(target: &MssqlTarget, table: &str) -> BTreeSet<String> {
    target
        .rows(&format!(
            "SELECT order_id, customer, amount, placed_at FROM {table}"
        ))
        .into_iter()
        .map(|row| {
            row.iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

fn expected_rows(ids: impl Iterator<Item = u64>) -> BTreeSet<String> {
    ids.map(|id| {
        let o = order(id);
        format!(
            "{id}|{}|{}|{}",
            o["customer"]["name"].as_str().unwrap(),
            o["amount"].as_str().unwrap(),
            o["ts"].as_str().unwrap()
        )
    })
    .collect()
}

#[test]
fn mssql_pipeline_files_into_mssql_and_sqlite_hold_exactly_the_input() {
    for target in
        MssqlTarget::all("mssql_pipeline_files_into_mssql_and_sqlite_hold_exactly_the_input")
    {
        let redis = TestRedis::start();
        let table = target.table("orders_e2e");
        create_orders(&target, &table);
        let job = job(
            "mssqle2e",
            &redis,
            &target,
            &table,
            "",
            r#"
            [[sink]]
            name = "local"
            kind = "sqlite"
            path = "{dir}/out.db"
            table = "orders"
            [sink.map]
            order_id = { from = "id", type = "integer" }
            customer = "customer.name"
            amount = { from = "amount", type = "decimal" }
            placed_at = "ts"
            "#,
        );
        write_orders(&job, 5, 450);
        let result = job.run();
        result.expect_code(0);
        assert_eq!(result.summary["records_read"], 2250);
        assert_eq!(result.summary["sinks"]["warehouse"]["written"], 2250);
        assert_eq!(result.summary["sinks"]["local"]["written"], 2250);
        let expected = expected_rows(1..=2250);
        assert_eq!(table_rows(&target, &table), expected, "{}", target.label());
        let local: BTreeSet<String> = job
            .sqlite_rows("out.db", "orders")
            .iter()
            .map(|r| {
                format!(
                    "{}|{}|{}|{}",
                    r["order_id"],
                    r["customer"].as_str().unwrap(),
                    r["amount"]
                        .as_str()
                        .map_or_else(|| r["amount"].to_string(), str::to_string),
                    r["placed_at"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(local.len(), 2250);
        let ledger = target.rows(&format!(
            "SELECT COUNT(*), SUM(rows_written) FROM stevedore_applied WHERE target = '{table}' \
             AND unit_id LIKE 'mssqle2e/%'"
        ));
        assert_eq!(
            ledger,
            vec![vec![json!(25), json!(2250)]],
            "one ledger entry per unit"
        );
    }
}

#[test]
fn mssql_pipeline_connection_dropped_mid_bulk_load_is_retried_and_lands_once() {
    let target = MssqlTarget::test_server();
    println!(
        "mssql: dropping a connection mid bulk load needs the TDS test server's fault switch; this test has no real-server part"
    );
    let redis = TestRedis::start();
    let table = target.table("orders_dropped");
    create_orders(&target, &table);
    let job = job("mssqldrop", &redis, &target, &table, "", "");
    write_orders(&job, 2, 500);
    let faults = target.faults().expect("test server");
    faults.drop_during_bulk_load(3);
    let result = job.run();
    result.expect_code(0);
    assert_eq!(result.summary["sinks"]["warehouse"]["written"], 1000);
    assert_eq!(result.summary["sinks"]["warehouse"]["dead_lettered"], 0);
    assert_eq!(table_rows(&target, &table), expected_rows(1..=1000));
    assert_eq!(
        faults.bulk_loads(),
        10,
        "each of the 10 units completed one bulk load; the 3 dropped ones were rolled back"
    );
}

#[test]
fn mssql_pipeline_three_bad_rows_among_500_are_dead_lettered_with_the_server_error() {
    for target in MssqlTarget::all(
        "mssql_pipeline_three_bad_rows_among_500_are_dead_lettered_with_the_server_error",
    ) {
        let redis = TestRedis::start();
        let table = target.table("orders_bad");
        create_orders(&target, &table);
        let job = job("mssqlbad", &redis, &target, &table, "", "");
        let lines: String = (1..=500u64)
            .map(|id| {
                let mut o = order(id);
                match id {
                    100 => o["customer"] = json!({"name": null}), // NOT NULL: 515
                    250 => o["id"] = json!(17),                   // duplicate key: 2627
                    450 => o["amount"] = json!("-3.00"),          // CHECK: 547
                    _ => {}
                }
                format!("{o}\n")
            })
            .collect();
        // One unit of 500 records.
        job.write("data/one.jsonl", &lines);
        std::fs::write(
            &job.config,
            std::fs::read_to_string(&job.config)
                .unwrap()
                .replace("unit_records = 100", "unit_records = 500"),
        )
        .unwrap();
        let result = job.run();
        result.expect_code(3);
        assert_eq!(result.summary["sinks"]["warehouse"]["written"], 497);
        assert_eq!(result.summary["sinks"]["warehouse"]["dead_lettered"], 3);
        assert_eq!(target.count(&table), 497, "{}", target.label());
        let mut dead = queue_bodies(&redis, "mssqlbad-warehouse-dlq");
        dead.sort_by_key(|d| d["dead_letter"]["index"].as_u64());
        let found: Vec<(u64, String)> = dead
            .iter()
            .map(|d| {
                (
                    d["dead_letter"]["index"].as_u64().unwrap(),
                    d["dead_letter"]["reason"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(found[0].0, 99);
        assert!(
            found[0].1.starts_with("SQL Server error 515: "),
            "{found:?}"
        );
        assert_eq!(found[1].0, 249);
        assert!(
            found[1].1.starts_with("SQL Server error 2627: "),
            "{found:?}"
        );
        assert_eq!(found[2].0, 449);
        assert!(
            found[2].1.starts_with("SQL Server error 547: "),
            "{found:?}"
        );
        assert_eq!(
            dead[1]["record"]["id"], 17,
            "the record itself is kept for a replay"
        );
    }
}

/// `stevedore check` and `stevedore run` on a job whose sink cannot work: both exit 2 with
/// `expected` in their output, the password never appears, and no worker starts.
fn assert_refused(job: &Job, expected: &str, password: &str) {
    let check = job.command("check").output().expect("check runs");
    let check_out = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(check.status.code(), Some(2), "{check_out}");
    assert!(check_out.contains(expected), "check: {check_out}");
    assert!(
        !check_out.contains(password),
        "check leaks the password: {check_out}"
    );
    let run = job.run();
    let run_out = format!("{}{}", run.stdout, run.stderr);
    assert_eq!(run.code, 2, "{run_out}");
    assert!(run_out.contains(expected), "run: {run_out}");
    assert!(
        !run_out.contains(password),
        "run leaks the password: {run_out}"
    );
    assert!(!job.path("var/logs").exists(), "no worker started");
}

#[test]
fn mssql_pipeline_wrong_password_missing_table_and_unmapped_column_stop_check_and_run() {
    for target in MssqlTarget::all(
        "mssql_pipeline_wrong_password_missing_table_and_unmapped_column_stop_check_and_run",
    ) {
        let redis = TestRedis::start();
        let password = "Wrong-Pa55word!";
        let wrong = match target.server() {
            Some(server) => server.connection_string_with_password(password),
            None => format!("{};password={password}", target.connection_string()),
        };
        let table = target.table("orders_refused");
        create_orders(&target, &table);
        let job_wrong = job("mssqlpw", &redis, &target, &table, "", "");
        std::fs::write(
            &job_wrong.config,
            std::fs::read_to_string(&job_wrong.config)
                .unwrap()
                .replace(target.connection_string(), &wrong),
        )
        .unwrap();
        write_orders(&job_wrong, 1, 5);
        assert_refused(&job_wrong, "SQL Server error 18456: Login failed", password);

        let missing = target.table("no_such_table");
        let job_missing = job("mssqlmissing", &redis, &target, &missing, "", "");
        write_orders(&job_missing, 1, 5);
        assert_refused(
            &job_missing,
            &format!("table {missing} does not exist"),
            &password_of(target.connection_string()),
        );

        let narrow = target.table("orders_required");
        target.recreate(
            &narrow,
            &format!(
                "CREATE TABLE {narrow} (order_id bigint NOT NULL, customer nvarchar(40) NOT NULL, \
                 amount decimal(12,2) NULL, placed_at datetime2(3) NULL, region nchar(2) NOT NULL)"
            ),
        );
        let job_narrow = job("mssqlnarrow", &redis, &target, &narrow, "", "");
        write_orders(&job_narrow, 1, 5);
        assert_refused(
            &job_narrow,
            "column `region` is NOT NULL without a default, and [sink.map] does not write it",
            &password_of(target.connection_string()),
        );
    }
}

/// The `password=` value of an ADO.NET connection string.
fn password_of(connection: &str) -> String {
    connection
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(key, _)| key.trim().eq_ignore_ascii_case("password"))
        .map(|(_, value)| value.trim().to_string())
        .next_back()
        .expect("a password")
}

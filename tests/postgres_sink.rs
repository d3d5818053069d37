//! The `postgres` sink through its own API, against a throwaway PostgreSQL server started by
//! the tests (and an external one too when `STEVEDORE_POSTGRES_URL` is set). Rows are read
//! back through `psql`, the server's own client.

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use stevedore::mapping::Row;
use stevedore::sink::{self, Batch, Fence, Sink};
use testkit::block_on;
use testkit::postgres::PostgresTarget;

/// A `postgres` sink for `table` on `target`, with `extra` settings and `map` lines.
fn sink_for(target: &PostgresTarget, table: &str, extra: &str, map: &str) -> Arc<dyn Sink> {
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
        kind = "postgres"
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

fn orders_table(target: &PostgresTarget, base: &str) -> String {
    let table = target.table(base);
    target.recreate(
        &table,
        &format!(
            "CREATE TABLE {table} (id bigint NOT NULL PRIMARY KEY, name varchar(50), \
             amount numeric(18,2))"
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
fn postgres_redelivered_unit_lands_once_in_append_mode() {
    for target in PostgresTarget::all("postgres_redelivered_unit_lands_once_in_append_mode") {
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
                     name varchar(50), amount numeric(18,2))"
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
                target.psql(&format!("SELECT SUM(id), SUM(amount) FROM {table}")),
                ["45150|45300.00"]
            );
        }
    }
}

#[test]
fn postgres_redelivered_unit_lands_once_in_upsert_mode() {
    for target in PostgresTarget::all("postgres_redelivered_unit_lands_once_in_upsert_mode") {
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
            target.psql(&format!(
                "SELECT id, name, amount FROM {table} WHERE id IN (50, 51, 60, 150) ORDER BY id"
            )),
            [
                "50|old 50|50.50",
                "51|new 51|51.50",
                "60|newest 60|1.00",
                "150|new 150|150.50"
            ],
            "{}",
            target.label()
        );
    }
}

#[test]
fn postgres_every_kind_of_bad_row_is_refused_alone_with_the_servers_words() {
    for target in PostgresTarget::all(
        "postgres_every_kind_of_bad_row_is_refused_alone_with_the_servers_words",
    ) {
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
             qty smallint CHECK (qty >= 0), parent int REFERENCES {parents} (id), \
             day date, doc jsonb, raw bytea)"
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
        rows[3]["code"] = json!("too long"); // value too long: 22001
        rows[7]["code"] = Value::Null; // NOT NULL: 23502
        rows[11]["qty"] = json!(-1); // CHECK: 23514
        rows[15]["parent"] = json!(2); // foreign key: 23503
        rows[19]["qty"] = json!(70000); // out of range: 22003
        rows[23]["day"] = json!("2026-02-30"); // invalid date: 22008
        rows[27]["raw"] = json!("not base64!"); // refused before sending
        let outcome = block_on(sink.write(batch("sinktest/r1/gen/3.0", rows))).expect("writes");
        let refused: Vec<(usize, String)> = outcome
            .failures
            .iter()
            .map(|f| (f.index, f.reason.clone()))
            .collect();
        let codes = [
            (3, "PostgreSQL error 22001"),
            (7, "PostgreSQL error 23502"),
            (11, "PostgreSQL error 23514"),
            (15, "PostgreSQL error 23503"),
            (19, "PostgreSQL error 22003"),
            (23, "PostgreSQL error 22008"),
            (27, "column `raw` (bytea): not base64"),
        ];
        assert_eq!(refused.len(), codes.len(), "{refused:?}");
        for ((index, reason), (want_index, want)) in refused.iter().zip(codes) {
            assert_eq!(*index, want_index, "{refused:?}");
            assert!(reason.starts_with(want), "row {index}: {reason}");
        }
        assert_eq!(outcome.written, 33);
        assert_eq!(target.count(&table), 33, "{}", target.label());
        assert_eq!(
            target.psql(&format!(
                "SELECT doc->>'n', encode(raw, 'hex'), day FROM {table} WHERE id = 39"
            )),
            ["39|0001|2026-12-07"]
        );
    }
}

#[test]
fn postgres_table_is_created_from_the_map_and_check_leaves_no_trace() {
    for target in
        PostgresTarget::all("postgres_table_is_created_from_the_map_and_check_leaves_no_trace")
    {
        let schema = target.table("sd_schema");
        target.execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
        target.execute(&format!("CREATE SCHEMA {schema}"));
        let table = format!("{schema}.members");
        let map = r#"userId = { from = "userid", type = "varchar(64)" }
        name = { from = "name", type = "text" }
        score = { from = "score", type = "numeric(30,10)" }
        active = { from = "active", type = "boolean" }
        updated_at = { from = "updated", type = "timestamptz" }
        tag = { from = "tag", type = "uuid" }"#;
        let sink = sink_for(
            &target,
            &table,
            r#"mode = "upsert"
            key = ["userId"]"#,
            map,
        );
        let tables = || {
            target.psql(&format!(
                "SELECT count(*) FROM pg_tables WHERE schemaname = '{schema}'"
            ))
        };
        let said = block_on(sink.check()).expect("check passes");
        assert!(
            said.contains("does not exist; the run creates it"),
            "{said}"
        );
        assert_eq!(tables(), ["0"], "check created nothing");
        block_on(sink.prepare(None)).expect("prepare creates the table");
        assert_eq!(tables(), ["3"], "the table, the ledger and the fence table");
        // Rows as the mapping makes them: keyed by column.
        let row = json!({"userId": "u-1", "name": "Ada", "score": "12345678901234567890.0123456789",
            "active": true, "updated_at": "2026-12-07T10:00:00+01:00",
            "tag": "6f1c2b1e-8a5b-4d4e-9c2a-0c6d2f4b9e11"});
        let outcome =
            block_on(sink.write(batch("sinktest/r1/gen/4.0", vec![row]))).expect("writes");
        assert!(outcome.failures.is_empty(), "{:?}", outcome.failures);
        assert_eq!(
            target.psql(&format!(
                "SELECT userid, name, score, active, updated_at AT TIME ZONE 'UTC', tag FROM {table}"
            )),
            ["u-1|Ada|12345678901234567890.0123456789|t|2026-12-07 09:00:00|6f1c2b1e-8a5b-4d4e-9c2a-0c6d2f4b9e11"]
        );
        let said = block_on(sink.check()).expect("check passes");
        assert!(said.contains("stevedore_applied present"), "{said}");
    }
}

#[test]
fn postgres_writer_with_an_older_fencing_token_is_refused_and_writes_nothing() {
    for target in PostgresTarget::all(
        "postgres_writer_with_an_older_fencing_token_is_refused_and_writes_nothing",
    ) {
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

//! End-to-end runs into SQLite through real worker processes and a real Redis.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use testkit::{Job, TestRedis, queue_bodies};

/// Rows as canonical JSON strings, with NULL columns dropped (absent fields read back as NULL).
fn canonical(rows: &[Value]) -> BTreeSet<String> {
    rows.iter()
        .map(|row| {
            let object: serde_json::Map<String, Value> = row
                .as_object()
                .unwrap()
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let sorted: std::collections::BTreeMap<_, _> = object.into_iter().collect();
            serde_json::to_string(&sorted).unwrap()
        })
        .collect()
}

#[test]
fn sqlite_end_to_end_files_and_generator_land_exactly_once() {
    let redis = TestRedis::start();
    let job = Job::new(&format!(
        r#"
        [job]
        name = "e2e"
        data_dir = "{{dir}}/var"
        [redis]
        url = "{url}"
        [workers]
        producers = 2
        consumers = 2
        [queue]
        unit_records = 100
        [[source]]
        name = "orders"
        kind = "files"
        path = "{{dir}}/data/orders-*.jsonl"
        format = "jsonl"
        [[source]]
        name = "synthetic"
        kind = "generator"
        count = 5000
        seed = 11
        [[sink]]
        name = "raw"
        kind = "sqlite"
        path = "{{dir}}/out.db"
        table = "everything"
        [[sink]]
        name = "shaped"
        kind = "sqlite"
        path = "{{dir}}/out.db"
        table = "shaped"
        mode = "upsert"
        key = ["id"]
        [sink.map]
        id = "id"
        amount = {{ from = "total", type = "real" }}
        note = {{ from = "comment", default = "-" }}
        "#,
        url = redis.url()
    ));
    let mut input = Vec::new();
    for file in 0..3 {
        let mut text = String::new();
        for i in 0..250 {
            let record = json!({"id": format!("f{file}-{i}"), "total": i as f64 + 0.25, "comment": format!("ünï {i}"), "nested": {"a": [i]}});
            text.push_str(&record.to_string());
            text.push('\n');
            input.push(record);
        }
        job.write(&format!("data/orders-{file}.jsonl"), &text);
    }
    input.extend((0..5000).map(|n| stevedore::source::generated_record(11, n)));

    let result = job.run();
    result.expect_code(0);

    let summary = &result.summary;
    assert_eq!(summary["status"], "ok");
    assert_eq!(summary["records_read"], 5750);
    for sink in ["raw", "shaped"] {
        assert_eq!(summary["sinks"][sink]["written"], 5750, "{sink}");
        assert_eq!(summary["sinks"][sink]["dead_lettered"], 0, "{sink}");
    }
    let roles: Vec<&str> = summary["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles.iter().filter(|r| **r == "producer").count(), 2);
    assert_eq!(roles.iter().filter(|r| **r == "consumer").count(), 2);
    assert!(summary["duration_s"].as_f64().unwrap() > 0.0);

    // Passthrough: every input record is a row, exactly once, with identical content
    // (nested values are stored as JSON text).
    let rows = job.sqlite_rows("out.db", "everything");
    assert_eq!(rows.len(), 5750);
    let expected: Vec<Value> = input
        .iter()
        .map(|record| {
            let mut record = record.clone();
            if let Some(nested) = record.get("nested") {
                record["nested"] = Value::String(nested.to_string());
            }
            record
        })
        .collect();
    assert_eq!(canonical(&rows), canonical(&expected));

    // Mapped: renamed, cast and defaulted per the map.
    let shaped = job.sqlite_rows("out.db", "shaped");
    assert_eq!(shaped.len(), 5750);
    let by_id = |id: Value| shaped.iter().find(|row| row["id"] == id).cloned().unwrap();
    assert_eq!(
        by_id(json!("f1-7")),
        json!({"id": "f1-7", "amount": 7.25, "note": "ünï 7"})
    );
    let generated = stevedore::source::generated_record(11, 41);
    let expected_note = generated.get("comment").cloned().unwrap_or(json!("-"));
    assert_eq!(
        by_id(json!(42)),
        json!({"id": 42, "amount": generated["total"].as_f64().unwrap(), "note": expected_note})
    );
}

#[test]
fn sqlite_malformed_input_is_dead_lettered_with_reasons_and_the_rest_lands() {
    let redis = TestRedis::start();
    let job = Job::new(&format!(
        r#"
        [job]
        name = "bad"
        data_dir = "{{dir}}/var"
        [redis]
        url = "{url}"
        [workers]
        producers = 1
        consumers = 2
        [queue]
        unit_records = 8
        [[source]]
        name = "orders"
        kind = "files"
        path = "{{dir}}/orders.jsonl"
        format = "jsonl"
        [[sink]]
        name = "local"
        kind = "sqlite"
        path = "{{dir}}/out.db"
        table = "orders"
        [sink.map]
        id = "id"
        amount = {{ from = "total", type = "real" }}
        "#,
        url = redis.url()
    ));
    let mut lines: Vec<String> = (1..=20)
        .map(|i| json!({"id": i, "total": i}).to_string())
        .collect();
    lines[4] = "{\"id\": 5, \"total\": ".to_string();
    lines[11] = "not json at all".to_string();
    lines[16] = json!({"id": 17, "total": "seventeen"}).to_string();
    job.write("orders.jsonl", &(lines.join("\n") + "\n"));

    let result = job.run();
    result.expect_code(3);
    assert_eq!(result.summary["status"], "dead_letters");
    assert_eq!(result.summary["records_read"], 20);
    assert_eq!(result.summary["sinks"]["local"]["written"], 17);
    assert_eq!(result.summary["sinks"]["local"]["dead_lettered"], 3);
    assert!(
        result.stdout.contains("3 dead-lettered"),
        "{}",
        result.stdout
    );

    let ids: BTreeSet<i64> = job
        .sqlite_rows("out.db", "orders")
        .iter()
        .map(|row| row["id"].as_i64().unwrap())
        .collect();
    let expected: BTreeSet<i64> = (1..=20).filter(|i| ![5, 12, 17].contains(i)).collect();
    assert_eq!(ids, expected);

    let mut dead = queue_bodies(&redis, "bad-local-dlq");
    dead.sort_by_key(|message| message["dead_letter"]["index"].as_u64());
    assert_eq!(dead.len(), 3, "{dead:?}");
    let by_line = |line: u64| {
        dead.iter()
            .find(|m| m["dead_letter"]["line"] == line)
            .unwrap_or_else(|| panic!("line {line} in {dead:?}"))
    };
    assert!(
        by_line(5)["dead_letter"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON")
    );
    assert_eq!(by_line(5)["raw"], "{\"id\": 5, \"total\":");
    assert!(
        by_line(12)["dead_letter"]["origin"]
            .as_str()
            .unwrap()
            .ends_with("orders.jsonl")
    );
    let cast = dead
        .iter()
        .find(|m| m["record"]["id"] == 17)
        .expect("record 17 is dead-lettered");
    assert_eq!(
        cast["dead_letter"]["reason"],
        "field `total` (column `amount`): cannot cast \"seventeen\" to real"
    );
    assert_eq!(cast["dead_letter"]["sink"], "local");
    assert_eq!(
        cast["dead_letter"]["line"], 17,
        "a refused record carries its own line"
    );
}

#[test]
fn sqlite_unit_failing_every_attempt_is_dead_lettered_whole_after_max_receives() {
    let redis = TestRedis::start();
    let job = Job::new(&format!(
        r#"
        [job]
        name = "poison"
        data_dir = "{{dir}}/var"
        [redis]
        url = "{url}"
        [workers]
        producers = 1
        consumers = 1
        [queue]
        unit_records = 10
        visibility_timeout = "1s"
        max_receives = 2
        [[source]]
        name = "orders"
        kind = "files"
        path = "{{dir}}/orders.jsonl"
        format = "jsonl"
        [[sink]]
        name = "local"
        kind = "sqlite"
        path = "{{dir}}/out.db"
        table = "orders"
        busy_timeout = "50ms"
        "#,
        url = redis.url()
    ));
    let lines: Vec<String> = (1..=15).map(|i| json!({"id": i}).to_string()).collect();
    job.write("orders.jsonl", &(lines.join("\n") + "\n"));
    // Another program holds the database for the whole run: every write attempt fails.
    let holder = rusqlite::Connection::open(job.path("out.db")).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let result = job.run();
    holder.execute_batch("COMMIT").unwrap();
    result.expect_code(3);
    assert_eq!(result.summary["records_read"], 15);
    assert_eq!(result.summary["sinks"]["local"]["written"], 0);
    assert_eq!(result.summary["sinks"]["local"]["dead_lettered"], 15);
    let dead = queue_bodies(&redis, "poison-local-dlq");
    assert_eq!(
        dead.len(),
        2,
        "both units are dead-lettered whole: {dead:?}"
    );
    let counts: BTreeSet<u64> = dead
        .iter()
        .map(|unit| unit["count"].as_u64().unwrap())
        .collect();
    assert_eq!(
        counts,
        BTreeSet::from([5, 10]),
        "the envelopes keep their records"
    );
    for unit in &dead {
        let reason = unit["dead_letter"]["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("2 write attempt(s) failed; the last with: sink `local`")
                && reason.contains("database is locked"),
            "a whole-unit dead letter says why: {reason}"
        );
        assert_eq!(unit["dead_letter"]["attempts"], 2);
    }
    let attempts: Vec<u64> = redis.query(redis::cmd("HVALS").arg(format!(
        "stevedore:poison:run:{}:attempts:local",
        result.summary["run"].as_str().unwrap()
    )));
    assert_eq!(
        attempts,
        vec![3, 3],
        "two real attempts each, the third delivery dead-letters"
    );
}

/// Consumers keep every unit they hold hidden, waiting for its turn or being written, however
/// long that takes: here another program holds the database for three visibility timeouts, so
/// every unit in a consumer's hands outlives its visibility timeout several times over. No unit
/// is attempted twice and every record lands once.
#[test]
fn queue_units_stay_hidden_while_their_writes_outlast_the_visibility_timeout() {
    let redis = TestRedis::start();
    let job = Job::new(&format!(
        r#"
        [job]
        name = "slowwrites"
        data_dir = "{{dir}}/var"
        [redis]
        url = "{url}"
        [workers]
        producers = 1
        consumers = 2
        [queue]
        unit_records = 100
        visibility_timeout = "2s"
        [[source]]
        name = "synthetic"
        kind = "generator"
        count = 20000
        seed = 5
        [[sink]]
        name = "local"
        kind = "sqlite"
        path = "{{dir}}/out.db"
        table = "orders"
        busy_timeout = "120s"
        "#,
        url = redis.url()
    ));
    let run = job.spawn_run();
    let holder = rusqlite::Connection::open(job.path("out.db")).unwrap();
    holder.busy_timeout(testkit::PATIENCE).unwrap();
    testkit::wait_until("the sink has created its table", || {
        holder
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'orders'",
                [],
                |row| row.get::<_, i64>(0),
            )
            .is_ok_and(|tables| tables == 1)
    });
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    assert!(
        job.sqlite_count("out.db", "orders") < 20_000,
        "the database is taken while the run is under way"
    );
    // The stimulus, not a synchronisation: writes stay blocked for three visibility timeouts.
    std::thread::sleep(std::time::Duration::from_secs(6));
    let held = received_units_visible_now(&redis, "slowwrites-local");
    holder.execute_batch("COMMIT").unwrap();
    assert!(
        held.0 > 0,
        "consumers hold units while the database is taken"
    );
    assert!(
        held.1.is_empty(),
        "every unit a consumer holds stays hidden; visible again: {:?}",
        held.1
    );

    let result = job.finish(run);
    result.expect_code(0);
    assert_eq!(result.summary["sinks"]["local"]["written"], 20_000);
    assert_eq!(job.sqlite_count("out.db", "orders"), 20_000);
    let attempts: Vec<u64> = redis.query(redis::cmd("HVALS").arg(format!(
        "stevedore:slowwrites:run:{}:attempts:local",
        result.summary["run"].as_str().unwrap()
    )));
    assert_eq!(attempts.len(), 200, "every unit was attempted");
    assert!(
        attempts.iter().all(|&n| n == 1),
        "no unit became visible and was attempted again: {attempts:?}"
    );
}

/// How many units of an RSMQ queue have been received at least once, and which of those are
/// visible at this moment (by Redis' clock): a consumer's unit that is visible again can be
/// received by another consumer while the first is still writing it.
fn received_units_visible_now(redis: &TestRedis, queue: &str) -> (usize, Vec<String>) {
    let scores: Vec<(String, u64)> = redis.query(
        redis::cmd("ZRANGE")
            .arg(format!("rsmq:{queue}"))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES"),
    );
    let (seconds, micros): (u64, u64) = redis.query(&mut redis::cmd("TIME"));
    let now_ms = seconds * 1000 + micros / 1000;
    let mut received = 0;
    let mut visible = Vec::new();
    for (id, visible_at) in scores {
        let receives: Option<u64> = redis.query(
            redis::cmd("HGET")
                .arg(format!("rsmq:{queue}:Q"))
                .arg(format!("{id}:rc")),
        );
        if receives.unwrap_or(0) > 0 {
            received += 1;
            if visible_at <= now_ms {
                visible.push(id);
            }
        }
    }
    (received, visible)
}

/// A file bigger than `split_bytes` is read in byte ranges by two producers: every record
/// lands once, and a malformed line in a later range is dead-lettered with its line in the
/// whole file.
#[test]
fn sqlite_split_file_lands_every_record_once_and_dead_letters_a_late_line_by_its_true_line() {
    let redis = TestRedis::start();
    let job = Job::new(&format!(
        r#"
        [job]
        name = "split"
        data_dir = "{{dir}}/var"
        [redis]
        url = "{url}"
        [workers]
        producers = 2
        consumers = 2
        [queue]
        unit_records = 200
        [[source]]
        name = "orders"
        kind = "files"
        path = "{{dir}}/orders.jsonl"
        format = "jsonl"
        split_bytes = 1048576
        [[sink]]
        name = "local"
        kind = "sqlite"
        path = "{{dir}}/out.db"
        table = "orders"
        "#,
        url = redis.url()
    ));
    // 30,000 lines of about 125 bytes: 3.7 MB, four ranges of about 1 MiB.
    let pad = "p".repeat(100);
    let mut lines: Vec<String> = (1..=30_000)
        .map(|id| json!({"id": id, "pad": pad}).to_string())
        .collect();
    lines[27_999] = "{broken 28000".to_string();
    job.write("orders.jsonl", &(lines.join("\n") + "\n"));

    let result = job.run();
    result.expect_code(3);
    assert_eq!(result.summary["records_read"], 30_000);
    assert_eq!(result.summary["sinks"]["local"]["written"], 29_999);
    assert_eq!(result.summary["sinks"]["local"]["dead_lettered"], 1);
    assert_eq!(job.sqlite_count("out.db", "orders"), 29_999);
    let ids: BTreeSet<i64> = job
        .sqlite_rows("out.db", "orders")
        .iter()
        .map(|row| row["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, (1..=30_000).filter(|id| *id != 28_000).collect());

    // Unit ids are `job/run/source/item.chunk`: four items, the file's ranges.
    let run = result.summary["run"].as_str().unwrap();
    let units: Vec<String> =
        redis.query(redis::cmd("HKEYS").arg(format!("stevedore:split:run:{run}:written:local")));
    let items: BTreeSet<&str> = units
        .iter()
        .map(|unit| unit.rsplit('/').next().unwrap().split('.').next().unwrap())
        .collect();
    assert_eq!(items, BTreeSet::from(["0", "1", "2", "3"]));

    let dead = queue_bodies(&redis, "split-local-dlq");
    assert_eq!(dead.len(), 1, "{dead:?}");
    let letter = &dead[0]["dead_letter"];
    assert_eq!(letter["line"], 28_000, "its line in the file: {letter}");
    assert_eq!(dead[0]["raw"], "{broken 28000");
    assert!(
        letter["unit"].as_str().unwrap().contains("/orders/3."),
        "read in the last range: {letter}"
    );
    assert!(
        letter["origin"].as_str().unwrap().ends_with("orders.jsonl"),
        "{letter}"
    );
    // The producers' logs say which part of the file each item was.
    let logs = job.worker_logs();
    let done = logs
        .lines()
        .filter(|line| line.contains("work item done") && line.contains("part=bytes "))
        .count();
    assert_eq!(done, 4, "{logs}");
    assert!(logs.contains("part=bytes 0.."), "{logs}");
}

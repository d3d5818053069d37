//! `stevedore dlq list | show | export | replay | purge` on dead letters that real runs wrote,
//! through the real binary, a real Redis, SQLite and the TDS test server (and a real SQL Server
//! too when `STEVEDORE_MSSQL_URL` is set).

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::Arc;

use serde_json::{Value, json};
use testkit::mssql::MssqlTarget;
use testkit::{Job, RunResult, TestRedis, block_on, queue_bodies, wait_until};

/// `stevedore dlq <sub> --config job.toml <args>`, run to the end.
fn dlq(job: &Job, sub: &str, args: &[&str]) -> RunResult {
    let output = dlq_command(job, sub, args)
        .output()
        .expect("stevedore dlq runs");
    RunResult::from_output(output)
}

fn dlq_command(job: &Job, sub: &str, args: &[&str]) -> Command {
    let mut command = Command::new(testkit::stevedore_bin());
    command
        .args(["dlq", sub, "--config"])
        .arg(&job.config)
        .args(args)
        .current_dir(job.dir.path())
        .stdin(Stdio::null());
    command
}

/// Sends `body` to `queue` with RSMQ, as a consumer sends a letter.
fn send(redis: &TestRedis, queue: &str, body: &Value) {
    block_on(async {
        let link = stevedore::queue::RedisLink::new(&redis.url()).unwrap();
        let queues = stevedore::queue::Queues::new(Arc::new(link));
        queues
            .send_batch(queue, &[serde_json::to_vec(body).unwrap()])
            .await
            .unwrap();
    });
}

/// The letters of a queue by `dead_letter.id` (a letter stored twice is there once).
fn letters(redis: &TestRedis, queue: &str) -> BTreeMap<String, Value> {
    queue_bodies(redis, queue)
        .into_iter()
        .map(|body| {
            (
                body["dead_letter"]["id"].as_str().unwrap().to_string(),
                body,
            )
        })
        .collect()
}

/// The id of the letter of the record on input line `line`.
fn letter_at_line(redis: &TestRedis, queue: &str, line: u64) -> String {
    letters(redis, queue)
        .into_iter()
        .find(|(_, body)| body["dead_letter"]["line"] == line)
        .unwrap_or_else(|| panic!("a letter for line {line} in {queue}"))
        .0
}

/// How many rows each id has in a SQLite table.
fn sqlite_ids(job: &Job, table: &str) -> BTreeMap<i64, i64> {
    let connection = rusqlite::Connection::open(job.path("out.db")).unwrap();
    let mut statement = connection
        .prepare(&format!("SELECT id, count(*) FROM {table} GROUP BY id"))
        .unwrap();
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn sqlite_execute(job: &Job, sql: &str) {
    rusqlite::Connection::open(job.path("out.db"))
        .unwrap()
        .execute_batch(sql)
        .unwrap();
}

fn once_each(ids: impl Iterator<Item = i64>) -> BTreeMap<i64, i64> {
    ids.map(|id| (id, 1)).collect()
}

/// A job reading `{dir}/data/*.jsonl` into SQLite table `orders` of `{dir}/out.db`, with
/// `sink_extra` in the sink's table and `more` after it.
fn sqlite_job(name: &str, redis: &TestRedis, sink_extra: &str, more: &str) -> Job {
    Job::new(&format!(
        r#"
        [job]
        name = "{name}"
        data_dir = "{{dir}}/var"
        [redis]
        url = "{url}"
        [workers]
        producers = 1
        consumers = 1
        [queue]
        unit_records = 50
        [[source]]
        name = "orders"
        kind = "files"
        path = "{{dir}}/data/*.jsonl"
        format = "jsonl"
        [[sink]]
        name = "local"
        kind = "sqlite"
        path = "{{dir}}/out.db"
        table = "orders"
        {sink_extra}
        {more}
        "#,
        url = redis.url()
    ))
}

fn lines(records: &[Value]) -> String {
    records.iter().map(|r| format!("{r}\n")).collect()
}

#[test]
fn dlq_list_counts_by_reason_and_sink_once_each_page_by_page_and_export_and_show_read_them() {
    let redis = TestRedis::start();
    let job = sqlite_job(
        "dlqlist",
        &redis,
        r#"schema = "freeze""#,
        r#"
        [[sink]]
        name = "mirror"
        kind = "sqlite"
        path = "{dir}/out.db"
        table = "mirror"
        "#,
    );
    sqlite_execute(&job, "CREATE TABLE orders (id INTEGER, total REAL)");
    // 300 records with a field the frozen table lacks, 50 that fit, 3 lines that are no JSON.
    let refused: Vec<Value> = (1..=300)
        .map(|id| json!({"id": id, "total": id, "note": format!("n{id}")}))
        .collect();
    let mut input: Vec<String> = refused.iter().map(Value::to_string).collect();
    input.extend((301..=350).map(|id| json!({"id": id, "total": id}).to_string()));
    let broken = ["{oops", "not json", "{\"id\":"];
    input.extend(broken.iter().map(|b| b.to_string()));
    job.write("data/in.jsonl", &(input.join("\n") + "\n"));
    job.run().expect_code(3);

    // A letter stored twice, as after a consumer was killed between sending and acknowledging.
    let queue = "dlqlist-local-dlq";
    let twice = letter_at_line(&redis, queue, 7);
    send(&redis, queue, &letters(&redis, queue)[&twice]);
    let stored = |redis: &TestRedis| -> (Vec<String>, Vec<String>) {
        let scores = redis.query(
            redis::cmd("ZRANGE")
                .arg(format!("rsmq:{queue}"))
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES"),
        );
        let mut fields: Vec<String> =
            redis.query(redis::cmd("HKEYS").arg(format!("rsmq:{queue}:Q")));
        fields.sort();
        (scores, fields)
    };
    let before = stored(&redis);
    assert_eq!(before.0.len(), 2 * 304, "304 messages (one letter twice)");

    let listed = Command::new(testkit::stevedore_bin())
        .args(["dlq", "list", "--json", "--page-size", "50", "--config"])
        .arg(&job.config)
        .env("STEVEDORE_LOG", "stevedore::dlq=debug")
        .output()
        .unwrap();
    let listed = RunResult::from_output(listed);
    listed.expect_code(0);
    let report: Value = serde_json::from_str(&listed.stdout).expect(&listed.stdout);
    assert_eq!(report["letters_total"], 306, "{}", report["by_reason"]);
    assert_eq!(report["duplicates"], 1);
    assert_eq!(report["by_sink"], json!({"local": 303, "mirror": 3}));
    let freeze = "refused: field `note` has no column in table orders and schema = \"freeze\" leaves the table as it is";
    let by_reason = report["by_reason"].as_array().unwrap();
    assert_eq!(
        by_reason[0],
        json!({"sink": "local", "reason": freeze, "letters": 300})
    );
    let per_sink = |sink: &str| -> u64 {
        by_reason
            .iter()
            .filter(|r| r["sink"] == sink)
            .map(|r| r["letters"].as_u64().unwrap())
            .sum()
    };
    assert_eq!((per_sink("local"), per_sink("mirror")), (303, 3));
    let listed_letters = report["letters"].as_array().unwrap();
    assert_eq!(listed_letters.len(), 306);
    let local_ids: BTreeSet<&str> = listed_letters
        .iter()
        .filter(|l| l["sink"] == "local")
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert_eq!(local_ids.len(), 303, "each letter once");
    let kinds: BTreeMap<&str, usize> =
        listed_letters
            .iter()
            .fold(BTreeMap::new(), |mut kinds, letter| {
                *kinds.entry(letter["kind"].as_str().unwrap()).or_default() += 1;
                kinds
            });
    assert_eq!(kinds, BTreeMap::from([("raw", 6), ("record", 300)]));
    let pages = listed.stderr.matches("read a page of dead letters").count();
    assert!(
        pages > 4,
        "paged (50 a page): {pages} pages\n{}",
        listed.stderr
    );
    assert_eq!(
        stored(&redis),
        before,
        "reading changed nothing in the queue"
    );

    let text = dlq(&job, "list", &["--sink", "local"]);
    text.expect_code(0);
    assert!(
        text.stdout
            .starts_with("job dlqlist: 303 dead letter(s) (1 duplicate cop(ies) counted once)\n"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout
            .contains(&format!("       300  local  {freeze}\n"))
    );
    assert_eq!(text.stdout.matches(" record ").count(), 300);

    let exported = dlq(&job, "export", &["--sink", "local"]);
    exported.expect_code(0);
    let mut got: Vec<&str> = exported.stdout.lines().collect();
    got.sort();
    let mut expected: Vec<String> = refused.iter().map(Value::to_string).collect();
    expected.extend(broken.iter().map(|b| b.to_string()));
    expected.sort();
    assert_eq!(got, expected, "the records and lines as read, each once");

    let shown = dlq(&job, "show", &["--sink", "local", &twice]);
    shown.expect_code(0);
    let shown: Value = serde_json::from_str(&shown.stdout).unwrap();
    assert_eq!(shown, letters(&redis, queue)[&twice]);
    assert_eq!(shown["record"], json!({"id": 7, "total": 7, "note": "n7"}));
    assert!(
        dlq(&job, "show", &["--sink", "local", "no/such#1"])
            .stdout
            .is_empty()
    );
    dlq(&job, "show", &["no/such#1"]).expect_code(2);
    dlq(&job, "list", &["--sink", "nowhere"]).expect_code(2);
}

#[test]
fn dlq_replay_lands_each_fixed_record_once_however_often_and_partially_it_runs() {
    let redis = TestRedis::start();
    let job = sqlite_job("dlqreplay", &redis, r#"schema = "freeze""#, "");
    sqlite_execute(
        &job,
        "CREATE TABLE orders (id INTEGER, total REAL CHECK (total >= 0))",
    );
    // 1-10 fit; 11-60 carry a field the frozen table lacks, and 55-60 a negative total too.
    let records: Vec<Value> = (1..=60)
        .map(|id| match id {
            1..=10 => json!({"id": id, "total": id}),
            11..=54 => json!({"id": id, "total": id, "note": "late"}),
            _ => json!({"id": id, "total": -id, "note": "late"}),
        })
        .collect();
    job.write("data/in.jsonl", &(lines(&records) + "{oops\n"));
    job.run().expect_code(3);
    let queue = "dlqreplay-local-dlq";
    assert_eq!(letters(&redis, queue).len(), 51);
    assert_eq!(sqlite_ids(&job, "orders"), once_each(1..=10));

    // The cause: lift the freeze.
    let config = std::fs::read_to_string(&job.config).unwrap();
    std::fs::write(&job.config, config.replace(r#"schema = "freeze""#, "")).unwrap();

    // A subset first: two that now fit, one that still fails.
    let (l11, l12, l55) = (
        letter_at_line(&redis, queue, 11),
        letter_at_line(&redis, queue, 12),
        letter_at_line(&redis, queue, 55),
    );
    let kept_for_later = letters(&redis, queue)[&l11].clone();
    let subset = dlq(
        &job,
        "replay",
        &["--sink", "local", "--id", &l11, "--id", &l12, "--id", &l55],
    );
    subset.expect_code(3);
    assert!(
        subset.stdout.starts_with(&format!(
            "replayed 3 letter(s) of {queue} (3 record(s)) into local: 2 landed, 1 dead-lettered again"
        )),
        "{}",
        subset.stdout
    );
    let after_subset = letters(&redis, queue);
    assert_eq!(after_subset.len(), 49, "3 letters out, 1 back in");
    for gone in [&l11, &l12, &l55] {
        assert!(!after_subset.contains_key(gone), "{gone} was deleted");
    }
    let again = &after_subset[&format!("replay/{l55}#0")];
    assert_eq!(again["record"]["id"], 55);
    assert_eq!(
        again["dead_letter"]["line"], 55,
        "it keeps where it came from"
    );
    assert!(
        again["dead_letter"]["reason"]
            .as_str()
            .unwrap()
            .contains("CHECK constraint failed"),
        "the new reason: {again}"
    );

    // As if a replay had been killed after writing record 11 and before deleting its letter.
    send(&redis, queue, &kept_for_later);

    let all = dlq(&job, "replay", &["--sink", "local"]);
    all.expect_code(3);
    assert!(
        all.stdout
            .contains("1 letter(s) cannot be replayed and stay in the queue")
            && all.stdout.contains("never became a record"),
        "{}",
        all.stdout
    );
    assert!(
        all.stdout
            .contains("(1 of the landed had landed in an earlier, interrupted replay"),
        "{}",
        all.stdout
    );
    assert_eq!(sqlite_ids(&job, "orders"), once_each(1..=54));
    let left = letters(&redis, queue);
    let mut still_failing: Vec<i64> = left
        .values()
        .filter_map(|letter| letter["record"]["id"].as_i64())
        .collect();
    still_failing.sort();
    assert_eq!(still_failing, (55..=60).collect::<Vec<_>>());
    assert_eq!(
        left.len(),
        7,
        "6 records and the line that never became one"
    );
    assert!(left.values().any(|letter| letter["raw"] == "{oops"));

    // Run twice: nothing lands twice, what fails goes back once more.
    let twice = dlq(&job, "replay", &["--sink", "local"]);
    twice.expect_code(3);
    assert!(
        twice
            .stdout
            .contains("(6 record(s)) into local: 0 landed, 6 dead-lettered again"),
        "{}",
        twice.stdout
    );
    assert_eq!(sqlite_ids(&job, "orders"), once_each(1..=54));
    assert_eq!(letters(&redis, queue).len(), 7);
}

#[test]
fn dlq_replay_killed_half_way_and_run_again_lands_each_record_once() {
    let redis = TestRedis::start();
    let job = sqlite_job("dlqkill", &redis, r#"schema = "freeze""#, "");
    sqlite_execute(&job, "CREATE TABLE orders (id INTEGER, total REAL)");
    let records: Vec<Value> = (1..=400)
        .map(|id| json!({"id": id, "total": id, "note": "late"}))
        .collect();
    job.write("data/in.jsonl", &lines(&records));
    job.run().expect_code(3);
    sqlite_execute(&job, "ALTER TABLE orders ADD COLUMN note TEXT");

    let mut replay = dlq_command(&job, "replay", &["--sink", "local"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the replay has landed some records", || {
        job.sqlite_count("out.db", "orders") > 0
    });
    // SIGKILL wherever it is (if it already finished, the second replay finds nothing).
    let _ = replay.kill();
    let _ = replay.wait();
    println!(
        "killed the replay with {} of 400 records landed and {} letters left",
        job.sqlite_count("out.db", "orders"),
        letters(&redis, "dlqkill-local-dlq").len()
    );

    let rerun = dlq(&job, "replay", &["--sink", "local"]);
    rerun.expect_code(0);
    assert_eq!(sqlite_ids(&job, "orders"), once_each(1..=400));
    assert!(letters(&redis, "dlqkill-local-dlq").is_empty());
}

#[test]
fn dlq_whole_unit_letters_replay_whole() {
    let redis = TestRedis::start();
    let job = sqlite_job("dlqwhole", &redis, r#"busy_timeout = "50ms""#, "");
    let config = std::fs::read_to_string(&job.config).unwrap();
    std::fs::write(
        &job.config,
        config.replace(
            "unit_records = 50",
            "unit_records = 10\n        max_receives = 1",
        ),
    )
    .unwrap();
    sqlite_execute(&job, "CREATE TABLE orders (id INTEGER, total REAL)");
    let records: Vec<Value> = (1..=25).map(|id| json!({"id": id, "total": id})).collect();
    job.write("data/in.jsonl", &(lines(&records) + "{oops\n"));
    // The database stays locked by another program for the whole run: every unit goes whole
    // to the dead-letter queue after its attempt.
    let blocker = rusqlite::Connection::open(job.path("out.db")).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let run = job.run();
    drop(blocker);
    run.expect_code(3);
    let queue = "dlqwhole-local-dlq";
    let whole = letters(&redis, queue);
    assert_eq!(whole.len(), 3, "three units, whole");
    assert!(
        whole
            .values()
            .all(|letter| letter["dead_letter"]["attempts"] == 1)
    );

    let listed = dlq(&job, "list", &["--json"]);
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap();
    let records: u64 = listed["letters"]
        .as_array()
        .unwrap()
        .iter()
        .inspect(|letter| assert_eq!(letter["kind"], "unit"))
        .map(|letter| letter["records"].as_u64().unwrap())
        .sum();
    assert_eq!(records, 26);
    let exported = dlq(&job, "export", &["--sink", "local"]);
    assert_eq!(exported.stdout.lines().count(), 26);

    let replayed = dlq(&job, "replay", &["--sink", "local"]);
    replayed.expect_code(3);
    assert!(
        replayed.stdout.starts_with(&format!(
            "replayed 3 letter(s) of {queue} (26 record(s)) into local: 25 landed, 1 dead-lettered again"
        )),
        "{}",
        replayed.stdout
    );
    assert_eq!(sqlite_ids(&job, "orders"), once_each(1..=25));
    let left = letters(&redis, queue);
    assert_eq!(left.len(), 1, "{left:?}");
    let (id, letter) = left.iter().next().unwrap();
    // A whole unit replays under its own id: its reject comes back as `<unit id>#<index>`.
    assert!(id.starts_with("dlqwhole/"), "{id}");
    assert_eq!(letter["raw"], "{oops");
    dlq(&job, "replay", &["--sink", "local"]).expect_code(3);
    assert_eq!(sqlite_ids(&job, "orders"), once_each(1..=25));
}

#[test]
fn dlq_purge_before_a_time_removes_only_older_letters() {
    let redis = TestRedis::start();
    let job = sqlite_job("dlqpurge", &redis, "", "");
    job.write("data/in.jsonl", "{\"id\": 1}\nold one\nold two\n");
    job.run().expect_code(3);
    let queue = "dlqpurge-local-dlq";
    let old: BTreeSet<String> = letters(&redis, queue).into_keys().collect();
    let newest_old = letters(&redis, queue)
        .values()
        .map(|l| l["dead_letter"]["at_ms"].as_u64().unwrap())
        .max()
        .unwrap();
    // The clock has passed every old letter: the boundary lies between the two runs.
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    wait_until("the clock passed the old letters", || now_ms() > newest_old);
    let boundary = chrono::DateTime::from_timestamp_millis(now_ms() as i64)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    job.write("data/in.jsonl", "{\"id\": 2}\nnew one\n");
    job.run().expect_code(3);
    assert_eq!(letters(&redis, queue).len(), 3);

    let none = dlq(&job, "purge", &["--sink", "local", "--before", "1d"]);
    none.expect_code(0);
    assert!(
        none.stdout.starts_with("purged 0 letter(s)"),
        "{}",
        none.stdout
    );
    let purged = dlq(&job, "purge", &["--sink", "local", "--before", &boundary]);
    purged.expect_code(0);
    assert_eq!(
        purged.stdout.trim(),
        format!("purged 2 letter(s) (2 message(s)) from {queue}")
    );
    let left = letters(&redis, queue);
    assert_eq!(left.len(), 1);
    assert!(left.keys().all(|id| !old.contains(id)));
    assert_eq!(left.values().next().unwrap()["raw"], "new one");

    dlq(&job, "purge", &["--sink", "local", "--before", "soon"]).expect_code(2);
    let all = dlq(&job, "purge", &["--sink", "local"]);
    assert!(
        all.stdout.starts_with("purged 1 letter(s)"),
        "{}",
        all.stdout
    );
    assert!(letters(&redis, queue).is_empty());
    // The queue itself stays: the next run dead-letters into it.
    job.write("data/in.jsonl", "bad again\n");
    job.run().expect_code(3);
    assert_eq!(letters(&redis, queue).len(), 1);
}

#[test]
fn dlq_replay_refuses_while_the_job_runs_and_touches_nothing() {
    let redis = TestRedis::start();
    let job = sqlite_job("dlqlocked", &redis, r#"schema = "freeze""#, "");
    sqlite_execute(&job, "CREATE TABLE orders (id INTEGER)");
    job.write("data/in.jsonl", "{\"id\": 1, \"note\": \"x\"}\n");
    job.run().expect_code(3);
    sqlite_execute(&job, "ALTER TABLE orders ADD COLUMN note TEXT");
    let holder = "host elsewhere pid 4242 since 2026-11-28 14:33:31.123 UTC (boot b pidns n)";
    let _: () = redis.query(
        redis::cmd("SET")
            .arg("stevedore:dlqlocked:lock")
            .arg(holder)
            .arg("PX")
            .arg(600_000),
    );
    let refused = dlq(&job, "replay", &["--sink", "local"]);
    refused.expect_code(1);
    assert!(
        refused
            .stderr
            .contains("job `dlqlocked` is already running"),
        "{}",
        refused.stderr
    );
    assert_eq!(job.sqlite_count("out.db", "orders"), 0);
    assert_eq!(letters(&redis, "dlqlocked-local-dlq").len(), 1);
    let _: () = redis.query(redis::cmd("DEL").arg("stevedore:dlqlocked:lock"));
    dlq(&job, "replay", &["--sink", "nowhere"]).expect_code(2);
    // A table that does not fit the mapping is a config problem, as for `run`.
    let config = std::fs::read_to_string(&job.config).unwrap();
    std::fs::write(
        &job.config,
        format!("{config}\n        [sink.map]\n        id = \"id\"\n        region = \"id\"\n"),
    )
    .unwrap();
    let misfit = dlq(&job, "replay", &["--sink", "local"]);
    misfit.expect_code(2);
    assert!(
        misfit.stderr.contains("has no column(s) region"),
        "{}",
        misfit.stderr
    );
    std::fs::write(&job.config, config).unwrap();
    dlq(&job, "replay", &["--sink", "local"]).expect_code(0);
    assert_eq!(sqlite_ids(&job, "orders"), once_each(1..=1));
}

/// A job into the mssql sink `warehouse` (NOT NULL customer, CHECK amount >= 0, no key, so a
/// row landing twice would show) and the SQLite sink `local` (a frozen table).
fn mssql_job(redis: &TestRedis, target: &MssqlTarget, table: &str) -> Job {
    Job::new(&format!(
        r#"
        [job]
        name = "dlqmssql"
        data_dir = "{{dir}}/var"
        [redis]
        url = "{url}"
        [workers]
        producers = 1
        consumers = 1
        [queue]
        unit_records = 25
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
        [sink.map]
        order_id = {{ from = "id", type = "bigint" }}
        customer = "customer.name"
        amount = {{ from = "amount", type = "decimal" }}
        [[sink]]
        name = "local"
        kind = "sqlite"
        path = "{{dir}}/out.db"
        table = "orders"
        schema = "freeze"
        "#,
        url = redis.url(),
        connection = target.connection_string(),
    ))
}

#[test]
fn dlq_replay_into_mssql_and_sqlite_lands_each_fixed_record_once() {
    for target in MssqlTarget::all("dlq_replay_into_mssql_and_sqlite_lands_each_fixed_record_once")
    {
        let label = target.label();
        let redis = TestRedis::start();
        let table = target.table("dlq_orders");
        target.recreate(
            &table,
            &format!(
                "CREATE TABLE {table} (order_id bigint NOT NULL, customer nvarchar(40) NOT NULL, \
                 amount decimal(12,2) NULL CHECK (amount >= 0))"
            ),
        );
        let job = mssql_job(&redis, &target, &table);
        sqlite_execute(
            &job,
            "CREATE TABLE orders (id INTEGER, customer TEXT, amount TEXT)",
        );
        // 21-30: a field SQLite's frozen table lacks; 31-40: no customer (NOT NULL in SQL
        // Server), and 38-40 a negative amount too.
        let records: Vec<Value> = (1..=40)
            .map(|id| {
                let name = if id > 30 {
                    Value::Null
                } else {
                    json!(format!("K{id}"))
                };
                let amount = if id >= 38 {
                    format!("-{id}.50")
                } else {
                    format!("{id}.50")
                };
                let mut record = json!({"id": id, "customer": {"name": name}, "amount": amount});
                if (21..=30).contains(&id) {
                    record["note"] = json!("late");
                }
                record
            })
            .collect();
        job.write("data/in.jsonl", &lines(&records));
        let run = job.run();
        run.expect_code(3);
        assert_eq!(
            run.summary["sinks"]["warehouse"]["dead_lettered"], 10,
            "{label}"
        );
        assert_eq!(
            run.summary["sinks"]["local"]["dead_lettered"], 10,
            "{label}"
        );
        let warehouse = "dlqmssql-warehouse-dlq";

        // The causes: a default for the missing customer, and the column SQLite lacked.
        let config = std::fs::read_to_string(&job.config).unwrap();
        std::fs::write(
            &job.config,
            config.replace(
                r#"customer = "customer.name""#,
                r#"customer = { from = "customer.name", default = "unknown" }"#,
            ),
        )
        .unwrap();
        sqlite_execute(&job, "ALTER TABLE orders ADD COLUMN note TEXT");

        let (l31, l32) = (
            letter_at_line(&redis, warehouse, 31),
            letter_at_line(&redis, warehouse, 32),
        );
        dlq(
            &job,
            "replay",
            &["--sink", "warehouse", "--id", &l31, "--id", &l32],
        )
        .expect_code(0);
        let all = dlq(&job, "replay", &["--sink", "warehouse"]);
        all.expect_code(3);
        assert!(
            all.stdout
                .contains("(8 record(s)) into warehouse: 5 landed, 3 dead-lettered again"),
            "{label}: {}",
            all.stdout
        );
        let twice = dlq(&job, "replay", &["--sink", "warehouse"]);
        twice.expect_code(3);
        assert!(
            twice.stdout.contains("0 landed, 3 dead-lettered again"),
            "{label}: {}",
            twice.stdout
        );
        dlq(&job, "replay", &["--sink", "local"]).expect_code(0);
        dlq(&job, "replay", &["--sink", "local"]).expect_code(0);

        let counts: BTreeMap<i64, i64> = target
            .rows(&format!(
                "SELECT order_id, COUNT(*) FROM {table} GROUP BY order_id"
            ))
            .into_iter()
            .map(|row| (row[0].as_i64().unwrap(), row[1].as_i64().unwrap()))
            .collect();
        assert_eq!(counts, once_each(1..=37), "{label}");
        let unknown = target.rows(&format!(
            "SELECT COUNT(*) FROM {table} WHERE customer = 'unknown'"
        ));
        assert_eq!(unknown, vec![vec![json!(7)]], "{label}");
        let left = letters(&redis, warehouse);
        let mut ids: Vec<i64> = left
            .values()
            .map(|l| l["record"]["id"].as_i64().unwrap())
            .collect();
        ids.sort();
        assert_eq!(ids, [38, 39, 40], "{label}");
        for letter in left.values() {
            let reason = letter["dead_letter"]["reason"].as_str().unwrap();
            assert!(
                reason.starts_with("SQL Server error 547: "),
                "{label}: {reason}"
            );
        }
        assert_eq!(sqlite_ids(&job, "orders"), once_each(1..=40), "{label}");
        assert!(letters(&redis, "dlqmssql-local-dlq").is_empty(), "{label}");
    }
}

//! Hostile input and bad days: nothing is dropped silently, nothing leaks, and what cannot
//! work stops before any worker starts, with a clear word and a summary to read.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{Value, json};
use testkit::{Job, RunResult, TestRedis, free_port, queue_bodies, wait_until};

/// A job reading `source` (a files source table) into a passthrough SQLite table.
fn files_job(redis_url: &str, job_name: &str, format: &str, extra_queue: &str) -> Job {
    Job::new(&format!(
        r#"
        [job]
        name = "{job_name}"
        data_dir = "{{dir}}/var"
        [redis]
        url = "{redis_url}"
        [workers]
        producers = 1
        consumers = 1
        [queue]
        unit_records = 50
        {extra_queue}
        [[source]]
        name = "input"
        kind = "files"
        path = "{{dir}}/data/*.{format}"
        format = "{format}"
        [[sink]]
        name = "local"
        kind = "sqlite"
        path = "{{dir}}/out.db"
        table = "records"
        "#
    ))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn dead_reasons(redis: &TestRedis, queue: &str) -> Vec<(u64, String)> {
    let mut reasons: Vec<(u64, String)> = queue_bodies(redis, queue)
        .iter()
        .map(|message| {
            (
                message["dead_letter"]["line"].as_u64().unwrap_or(0),
                message["dead_letter"]["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    reasons.sort();
    reasons
}

#[test]
fn hardening_colliding_column_names_are_refused_with_a_reason_and_exit_3() {
    let redis = TestRedis::start();
    let csv = files_job(&redis.url(), "dupcsv", "csv", "");
    csv.write("data/a.csv", "id,a,a\n1,first,second\n");
    let result = csv.run();
    result.expect_code(3);
    assert_eq!(result.summary["records_read"], 1);
    assert_eq!(result.summary["sinks"]["local"]["dead_lettered"], 1);
    let dead = queue_bodies(&redis, "dupcsv-local-dlq");
    assert_eq!(dead[0]["raw"], "1,first,second", "the row is kept whole");
    let reason = dead[0]["dead_letter"]["reason"].as_str().unwrap();
    assert!(reason.contains("names `a` twice"), "{reason}");

    let jsonl = files_job(&redis.url(), "dupjson", "jsonl", "");
    jsonl.write(
        "data/a.jsonl",
        "{\"id\":1,\"a\":\"x\"}\n{\"id\":2,\"ID\":\"upper\",\"Id\":\"mixed\"}\n{\"id\":3,\"b\":1,\"b\":2}\n",
    );
    let result = jsonl.run();
    result.expect_code(3);
    assert_eq!(result.summary["sinks"]["local"]["written"], 1);
    assert_eq!(result.summary["sinks"]["local"]["dead_lettered"], 2);
    let reasons = dead_reasons(&redis, "dupjson-local-dlq");
    assert_eq!(reasons[0].0, 2, "the record's own line: {reasons:?}");
    assert!(
        reasons[0].1.contains("`id` and `ID` name the same column"),
        "{reasons:?}"
    );
    assert_eq!(reasons[1].0, 3);
    assert!(
        reasons[1].1.contains("field `b` appears twice"),
        "{reasons:?}"
    );
}

#[test]
fn hardening_run_preflights_its_sinks_and_exits_2_before_any_worker_starts() {
    let redis = TestRedis::start();
    let job = files_job(&redis.url(), "preflight", "jsonl", "");
    job.write("data/a.jsonl", "{\"id\":1}\n");
    std::fs::create_dir_all(job.path("out.db")).unwrap();
    let result = job.run();
    result.expect_code(2);
    assert!(
        result.stderr.contains("sink `local`") && result.stderr.contains("is a directory"),
        "{}",
        result.stderr
    );
    assert!(
        !job.path("var/logs").exists(),
        "no worker was started: no run directory"
    );
    assert_eq!(result.summary["status"], "failed");
    assert!(
        result.summary["reason"]
            .as_str()
            .unwrap()
            .contains("is a directory")
    );
}

#[test]
fn hardening_unreachable_redis_fails_fast_with_a_clear_word_and_a_summary() {
    let url = format!("redis://127.0.0.1:{}/0", free_port());
    let job = files_job(&url, "noredis", "jsonl", "");
    job.write("data/a.jsonl", "{\"id\":1}\n");
    let result = job.run();
    result.expect_code(1);
    assert!(
        result.stderr.contains("cannot reach redis at")
            && result.stderr.contains("nothing was started"),
        "{}",
        result.stderr
    );
    assert_eq!(result.summary["status"], "failed");
    assert_eq!(result.summary["job"], "noredis");
    assert!(
        result.summary["reason"]
            .as_str()
            .unwrap()
            .contains("cannot reach redis")
    );
}

/// A `redis-server` that never answers: the supervisor waits for it to become ready, and a
/// SIGTERM must end that wait (and the server) at once.
#[test]
fn hardening_a_signal_ends_a_run_still_waiting_for_redis() {
    let job = Job::new(
        r#"
        [job]
        name = "waiting"
        data_dir = "{dir}/var"
        [redis]
        url = "managed"
        data_dir = "{dir}/redis"
        server_bin = "{dir}/silent-redis"
        [[source]]
        name = "gen"
        kind = "generator"
        count = 10
        [[sink]]
        name = "nowhere"
        kind = "blackhole"
        "#,
    );
    let marker = job.path("server.pid");
    job.write(
        "silent-redis",
        &format!(
            "#!/bin/sh\necho $$ > {}\nexec sleep 600\n",
            marker.display()
        ),
    );
    std::fs::set_permissions(
        job.path("silent-redis"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let child = job.spawn_run();
    wait_until("the silent server is started", || {
        std::fs::read_to_string(&marker).is_ok_and(|pid| !pid.trim().is_empty())
    });
    testkit::kill(child.id(), "TERM");
    let result: RunResult = job.finish(child);
    result.expect_code(1);
    assert!(
        result.stderr.contains(
            "interrupted by SIGTERM while starting the managed redis, before any worker started"
        ),
        "{}",
        result.stderr
    );
    assert_eq!(result.summary["status"], "failed");
    let pid = std::fs::read_to_string(&marker).unwrap();
    wait_until("the silent server is stopped with the run", || {
        !Path::new(&format!("/proc/{}", pid.trim())).exists()
            || std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
                .is_ok_and(|stat| stat.contains(") Z "))
    });
}

#[test]
fn hardening_run_files_are_private_to_their_owner() {
    let redis = TestRedis::start();
    let job = files_job(&redis.url(), "private", "jsonl", "");
    job.write("data/a.jsonl", "{\"id\":1}\n");
    job.run().expect_code(0);
    let runs: Vec<_> = std::fs::read_dir(job.path("var/logs"))
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .collect();
    assert_eq!(runs.len(), 1);
    assert_eq!(mode(&job.path("var")), 0o700);
    assert_eq!(mode(&runs[0]), 0o700);
    assert_eq!(mode(&runs[0].join("job.toml")), 0o600, "the config copy");
    assert_eq!(mode(&runs[0].join("producer-1.log")), 0o600);
    assert_eq!(mode(&runs[0].join("consumer-1.log")), 0o600);
}

#[test]
fn hardening_paths_the_run_writes_are_checked_before_it_starts() {
    let redis = TestRedis::start();
    let job = files_job(&redis.url(), "paths", "jsonl", "");
    job.write("data/a.jsonl", "{\"id\":1}\n");
    let output = job
        .command("run")
        .args(["--summary-json", "/nonexistent-dir/summary.json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--summary-json /nonexistent-dir/summary.json: directory /nonexistent-dir does not exist"),
        "{stderr}"
    );
    assert!(!job.path("var").exists(), "nothing ran");

    // data_dir names a file.
    job.write("var", "not a directory");
    let result = job.run();
    result.expect_code(2);
    assert!(
        result.stderr.contains("is a file, not a directory"),
        "{}",
        result.stderr
    );
    assert_eq!(result.summary["status"], "failed");
    assert_eq!(job.sqlite_count("out.db", "records"), 0);
}

#[test]
fn hardening_check_leaves_no_trace() {
    let redis = TestRedis::start();
    let job = files_job(&redis.url(), "notrace", "jsonl", "");
    job.write("data/a.jsonl", "{\"id\":1}\n");
    let config = std::fs::read_to_string(&job.config)
        .unwrap()
        .replace("/out.db", "/sub/dir/out.db");
    std::fs::write(&job.config, config).unwrap();
    let output = job.command("check").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("will be created"), "{stdout}");
    assert!(
        !job.path("sub").exists(),
        "check created the sink's directory"
    );
    assert!(!job.path("var").exists(), "check created the data dir");
}

/// A 400 MB line without a newline is skipped while it is read: the producer's memory stays
/// bounded, the line is dead-lettered with its line number, length and first bytes, and the
/// lines around it land.
#[test]
fn hardening_a_400_mb_line_is_skipped_in_bounded_memory() {
    const LONG: usize = 400 << 20;
    let redis = TestRedis::start();
    let job = files_job(&redis.url(), "longline", "jsonl", "");
    std::fs::create_dir_all(job.path("data")).unwrap();
    {
        let mut file =
            std::io::BufWriter::new(std::fs::File::create(job.path("data/a.jsonl")).unwrap());
        writeln!(file, "{}", json!({"id": 1})).unwrap();
        file.write_all(b"{\"id\":2,\"blob\":\"").unwrap();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..(LONG >> 20) {
            file.write_all(&chunk).unwrap();
        }
        writeln!(file).unwrap();
        writeln!(file, "{}", json!({"id": 3})).unwrap();
    }
    let result = job.run();
    result.expect_code(3);
    assert_eq!(result.summary["records_read"], 3);
    assert_eq!(result.summary["sinks"]["local"]["written"], 2);
    let dead = queue_bodies(&redis, "longline-local-dlq");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["dead_letter"]["line"], 2);
    let reason = dead[0]["dead_letter"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!(
            "line is {} bytes, over queue.max_record_bytes (16777216)",
            LONG + 16
        )),
        "{reason}"
    );
    assert!(
        dead[0]["raw"]
            .as_str()
            .unwrap()
            .starts_with("{\"id\":2,\"blob\":\"xxx")
    );
    let logs = job.worker_logs();
    let peak_kib: u64 = logs
        .lines()
        .filter(|line| line.contains("producer-1") && line.contains("work done"))
        .find_map(|line| {
            line.split("peak_rss_kib=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or_else(|| panic!("the producer logs its peak memory:\n{logs}"));
    assert!(
        peak_kib < 64 * 1024,
        "the producer peaked at {peak_kib} KiB reading a 400 MB line"
    );
}

#[test]
fn hardening_schema_changes_are_counted_and_freeze_refuses_them() {
    let redis = TestRedis::start();
    let job = files_job(&redis.url(), "schema", "jsonl", "");
    job.write("data/a.jsonl", "{\"id\":1}\n");
    job.run().expect_code(0);
    job.write("data/a.jsonl", "{\"id\":2,\"note\":\"new\"}\n");
    let result = job.run();
    result.expect_code(0);
    assert_eq!(
        result.summary["sinks"]["local"]["columns_added"],
        json!(["note"])
    );
    assert!(
        result.stdout.contains("column(s) added: note"),
        "{}",
        result.stdout
    );

    let frozen = std::fs::read_to_string(&job.config).unwrap().replace(
        "table = \"records\"",
        "table = \"records\"\n        schema = \"freeze\"",
    );
    std::fs::write(&job.config, frozen).unwrap();
    job.write(
        "data/a.jsonl",
        "{\"id\":3,\"note\":\"ok\"}\n{\"id\":4,\"extra\":1}\n",
    );
    let result = job.run();
    result.expect_code(3);
    let reasons = dead_reasons(&redis, "schema-local-dlq");
    assert_eq!(reasons.len(), 1);
    assert!(
        reasons[0].1.contains("field `extra` has no column"),
        "{reasons:?}"
    );
    let ids: BTreeSet<i64> = job
        .sqlite_rows("out.db", "records")
        .iter()
        .map(|row| row["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, BTreeSet::from([1, 2, 3]));
}

/// Leaves in Redis the state an older build leaves when interrupted right after planning
/// job `job_name`'s run `run` from `basis`: the file `data/a.jsonl` one item, pending.
fn plant_unfinished_run(redis: &TestRedis, job: &Job, job_name: &str, run: &str, basis: &str) {
    let prefix = format!("stevedore:{job_name}:run:{run}");
    let origin = job.path("data/a.jsonl").display().to_string();
    let item = json!({"source": "input", "index": 0, "origin": origin}).to_string();
    let _: () = redis.query(
        redis::cmd("SET")
            .arg(format!("stevedore:{job_name}:current_run"))
            .arg(run),
    );
    let _: () = redis.query(
        redis::cmd("SET")
            .arg(format!("{prefix}:planned"))
            .arg(basis),
    );
    let _: () = redis.query(
        redis::cmd("RPUSH")
            .arg(format!("{prefix}:items:pending"))
            .arg(&item),
    );
}

/// A run planned by a build that cut units by record count only (its basis has no
/// `unit_bytes=`) is resumed cut the same way: its unit ids must keep meaning the same records.
#[test]
fn hardening_a_run_planned_before_the_byte_budget_resumes_cut_by_record_count() {
    let redis = TestRedis::start();
    let job = files_job(&redis.url(), "legacy", "jsonl", "");
    // 600 records of 40 KB: 24 MB per 600, so a byte budget of 16 MiB would cut at 419.
    let pad = "p".repeat(40_000);
    let lines: Vec<String> = (1..=600)
        .map(|id| json!({"id": id, "pad": pad}).to_string())
        .collect();
    job.write("data/a.jsonl", &(lines.join("\n") + "\n"));
    let config = std::fs::read_to_string(&job.config)
        .unwrap()
        .replace("unit_records = 50", "unit_records = 500");
    std::fs::write(&job.config, config).unwrap();
    // The state an older build leaves when interrupted right after planning.
    let run = "20261101T000000Z-0ld0";
    let basis = format!(
        "unit_records=500; input files {}/data/*.jsonl Jsonl",
        job.dir.path().display()
    );
    let prefix = format!("stevedore:legacy:run:{run}");
    plant_unfinished_run(&redis, &job, "legacy", run, &basis);

    let result = job.run();
    result.expect_code(0);
    assert_eq!(result.summary["resumed"], true);
    assert_eq!(result.summary["run"], run);
    assert_eq!(result.summary["sinks"]["local"]["written"], 600);
    let mut per_unit: Vec<u64> =
        redis.query(redis::cmd("HVALS").arg(format!("{prefix}:written:local")));
    per_unit.sort();
    assert_eq!(per_unit, [100, 500], "cut by record count, as planned");

    // A fresh run of the same job cuts by bytes too.
    let result = job.run();
    result.expect_code(0);
    let fresh = result.summary["run"].as_str().unwrap().to_string();
    let mut per_unit: Vec<u64> =
        redis.query(redis::cmd("HVALS").arg(format!("stevedore:legacy:run:{fresh}:written:local")));
    per_unit.sort();
    assert_eq!(per_unit.iter().sum::<u64>(), 600);
    assert!(per_unit.len() == 2 && per_unit[1] < 500, "{per_unit:?}");
}

/// A run planned by a build that read JSONL lines into values (its basis has no
/// `lines=text`) cut its units at the byte budget measuring the values' compact JSON, not the
/// lines as written. Resumed, it is cut where that build cut it: skipping the chunks its
/// checkpoint says were sent must skip exactly the records they held, or some would be lost.
#[test]
fn hardening_a_run_planned_before_lines_were_text_resumes_cut_where_that_build_cut() {
    let redis = TestRedis::start();
    let job = files_job(&redis.url(), "astext", "jsonl", "max_record_bytes = 2000");
    // Spaced lines of `1e5`s: about 120 bytes as written, about 200 as compact JSON
    // (`100000.0`), so the two ways of measuring cut at different records.
    let numbers = vec!["1e5"; 20].join(", ");
    let lines: Vec<String> = (1..=300)
        .map(|id| format!(r#"{{"id": {id}, "v": [{numbers}]}}"#))
        .collect();
    job.write("data/a.jsonl", &(lines.join("\n") + "\n"));
    // Where that build cut: at 50 records or once the records' compact JSON reached 2000.
    let mut old_units = vec![0u64];
    let mut bytes = 0;
    for line in &lines {
        let value: Value = serde_json::from_str(line).unwrap();
        bytes += value.to_string().len();
        *old_units.last_mut().unwrap() += 1;
        if *old_units.last().unwrap() == 50 || bytes >= 2000 {
            old_units.push(0);
            bytes = 0;
        }
    }
    assert!(old_units[0] < 15, "cut by bytes: {old_units:?}");
    // The state that build leaves when interrupted after sending and writing 3 units.
    let run = "20261205T000000Z-0ld2";
    let prefix = format!("stevedore:astext:run:{run}");
    let basis = format!(
        "unit_records=50 unit_bytes=2000; input files {}/data/*.jsonl Jsonl split_bytes=67108864",
        job.dir.path().display()
    );
    plant_unfinished_run(&redis, &job, "astext", run, &basis);
    let _: () = redis.query(
        redis::cmd("HSET")
            .arg(format!("{prefix}:checkpoint"))
            .arg("input/0")
            .arg(3),
    );
    for (chunk, records) in old_units[..3].iter().enumerate() {
        let _: () = redis.query(
            redis::cmd("HSET")
                .arg(format!("{prefix}:written:local"))
                .arg(format!("astext/{run}/input/0.{chunk}"))
                .arg(records),
        );
    }
    let sent: u64 = old_units[..3].iter().sum();

    let result = job.run();
    result.expect_code(0);
    assert_eq!(result.summary["resumed"], true);
    assert_eq!(result.summary["run"], run);
    assert_eq!(result.summary["sinks"]["local"]["written"], 300);
    // This run wrote exactly the records after the 3 units that build had written.
    let ids: BTreeSet<u64> = job
        .sqlite_rows("out.db", "records")
        .iter()
        .map(|row| row["id"].as_u64().expect("integer ids"))
        .collect();
    assert_eq!(ids, (sent + 1..=300).collect(), "units {old_units:?}");
}

/// A run planned by a build that read every file whole (its basis has no `split_bytes=`) is
/// resumed with its plan: each file one item, read whole, though the job now splits files
/// that big. A fresh run of the job reads the file in ranges.
#[test]
fn hardening_a_run_planned_before_files_were_split_resumes_reading_them_whole() {
    let redis = TestRedis::start();
    let job = files_job(&redis.url(), "unsplit", "jsonl", "");
    let config = std::fs::read_to_string(&job.config).unwrap().replace(
        "format = \"jsonl\"",
        "format = \"jsonl\"\nsplit_bytes = 1048576",
    );
    std::fs::write(&job.config, config).unwrap();
    // 3,000 records of about 1 KB: 3 MB, three ranges of 1 MiB for a new plan.
    let pad = "p".repeat(1_000);
    let lines: Vec<String> = (1..=3_000)
        .map(|id| json!({"id": id, "pad": pad}).to_string())
        .collect();
    job.write("data/a.jsonl", &(lines.join("\n") + "\n"));
    // The state such a build leaves when interrupted right after planning.
    let run = "20261201T000000Z-0ld1";
    let basis = format!(
        "unit_records=50 unit_bytes=16777216; input files {}/data/*.jsonl Jsonl",
        job.dir.path().display()
    );
    let prefix = format!("stevedore:unsplit:run:{run}");
    plant_unfinished_run(&redis, &job, "unsplit", run, &basis);

    let result = job.run();
    result.expect_code(0);
    assert_eq!(result.summary["resumed"], true);
    assert_eq!(result.summary["run"], run);
    assert_eq!(result.summary["sinks"]["local"]["written"], 3_000);
    let units: Vec<String> =
        redis.query(redis::cmd("HKEYS").arg(format!("{prefix}:written:local")));
    assert_eq!(units.len(), 60);
    assert!(
        units
            .iter()
            .all(|unit| unit.starts_with(&format!("unsplit/{run}/input/0."))),
        "one item, the whole file: {units:?}"
    );

    let result = job.run();
    result.expect_code(0);
    let fresh = result.summary["run"].as_str().unwrap().to_string();
    let units: Vec<String> = redis
        .query(redis::cmd("HKEYS").arg(format!("stevedore:unsplit:run:{fresh}:written:local")));
    let items: BTreeSet<&str> = units
        .iter()
        .map(|unit| unit.rsplit('/').next().unwrap().split('.').next().unwrap())
        .collect();
    assert_eq!(items, BTreeSet::from(["0", "1", "2"]), "three ranges");
    assert_eq!(job.sqlite_count("out.db", "records"), 6_000);
}

//! Supervision: killed workers are restarted, signals stop a run resumably, crash loops fail.

use std::collections::BTreeSet;

use serde_json::Value;
use testkit::{Job, TestRedis, kill, summary_worker, wait_for_rows, wait_until, worker_pid};

fn generator_job(redis: &TestRedis, job_name: &str, count: u64, extra: &str) -> Job {
    Job::new(&format!(
        r#"
        [job]
        name = "{job_name}"
        data_dir = "{{dir}}/var"
        [redis]
        url = "{url}"
        [workers]
        producers = 2
        consumers = 2
        {extra}
        [queue]
        unit_records = 200
        visibility_timeout = "2s"
        [[source]]
        name = "synthetic"
        kind = "generator"
        count = {count}
        seed = 3
        [[sink]]
        name = "local"
        kind = "sqlite"
        path = "{{dir}}/out.db"
        table = "orders"
        "#,
        url = redis.url()
    ))
}

fn distinct_ids(job: &Job) -> BTreeSet<i64> {
    job.sqlite_rows("out.db", "orders")
        .iter()
        .map(|row| row["id"].as_i64().unwrap())
        .collect()
}

#[test]
fn supervisor_restarts_a_killed_consumer_and_every_record_lands_once() {
    let redis = TestRedis::start();
    let job = generator_job(&redis, "killed", 100_000, "");
    let run = job.spawn_run();
    wait_for_rows(&job);
    let pid = worker_pid(&redis, "killed", "consumer-1");
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .replace('\0', " ");
    assert!(
        cmdline.contains("worker consumer --id 1"),
        "ps shows the role: {cmdline}"
    );
    assert!(
        !cmdline.contains("redis://"),
        "the Redis URL (and any password) stays out of argv: {cmdline}"
    );
    kill(pid, "KILL");

    let result = job.finish(run);
    result.expect_code(0);
    assert_eq!(result.summary["status"], "ok");
    let consumer = summary_worker(&result.summary, "consumer", 1);
    assert!(consumer["restarts"].as_u64().unwrap() >= 1, "{consumer}");
    assert_ne!(
        consumer["pid"].as_u64().unwrap(),
        u64::from(pid),
        "the restarted consumer is a new process"
    );
    assert_eq!(job.sqlite_count("out.db", "orders"), 100_000);
    assert_eq!(distinct_ids(&job), (1..=100_000).collect());
    assert_eq!(result.summary["sinks"]["local"]["written"], 100_000);
}

#[test]
fn supervisor_sigint_stops_resumably_and_the_next_run_finishes_the_job() {
    let redis = TestRedis::start();
    let job = generator_job(&redis, "interrupted", 150_000, "");
    let run = job.spawn_run();
    wait_for_rows(&job);
    kill(run.id(), "INT");
    let first = job.finish(run);
    first.expect_code(1);
    assert_eq!(first.summary["status"], "failed");
    assert!(
        first.summary["reason"]
            .as_str()
            .unwrap()
            .contains("interrupted by SIGINT"),
        "{}",
        first.summary
    );
    let landed = job.sqlite_count("out.db", "orders");
    assert!(landed < 150_000, "the run stopped early ({landed} rows)");

    // The run is resumable only under the sources and unit size it was planned with.
    let original = std::fs::read_to_string(&job.config).unwrap();
    let snapshot = job.path(&format!(
        "var/logs/{}/job.toml",
        first.summary["run"].as_str().unwrap()
    ));
    assert_eq!(
        std::fs::read_to_string(&snapshot).unwrap(),
        original,
        "workers ran from a copy of the config"
    );
    std::fs::write(
        &job.config,
        original.replace("unit_records = 200", "unit_records = 300"),
    )
    .unwrap();
    let refused = job.run();
    refused.expect_code(2);
    assert!(
        refused
            .stderr
            .contains("was planned from other sources or another queue.unit_records"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains(&snapshot.display().to_string()),
        "{}",
        refused.stderr
    );
    assert_eq!(
        job.sqlite_count("out.db", "orders"),
        landed,
        "a refused resume touches nothing"
    );
    std::fs::write(&job.config, &original).unwrap();

    let second = job.run();
    second.expect_code(0);
    assert_eq!(second.summary["resumed"], true);
    assert_eq!(
        second.summary["run"], first.summary["run"],
        "the interrupted run is continued, not restarted"
    );
    assert_eq!(second.summary["records_read"], 150_000);
    assert_eq!(job.sqlite_count("out.db", "orders"), 150_000);
    assert_eq!(distinct_ids(&job), (1..=150_000).collect());

    let third = job.run();
    third.expect_code(0);
    assert_eq!(
        third.summary["resumed"], false,
        "a finished run is not resumed"
    );
    assert_eq!(
        job.sqlite_count("out.db", "orders"),
        300_000,
        "append mode loads a fresh run again"
    );
}

#[test]
fn supervisor_fails_the_run_when_a_worker_crash_loops() {
    let redis = TestRedis::start();
    let job = generator_job(
        &redis,
        "looping",
        1_000,
        "max_restarts = 2\n        restart_window = \"1h\"",
    );
    // A fault the preflight does not look for: another program made a table of the ledger's
    // name, so every write fails fatally and consumers crash until the run gives up.
    rusqlite::Connection::open(job.path("out.db"))
        .unwrap()
        .execute_batch("CREATE TABLE stevedore_applied (unrelated TEXT)")
        .unwrap();
    let result = job.run();
    result.expect_code(1);
    let reason = result.summary["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("crashed more than 2 times"), "{reason}");
    assert!(
        reason.contains("out.db"),
        "the reason shows the worker's last log lines: {reason}"
    );
}

#[test]
fn supervisor_refuses_a_second_run_of_a_job_that_is_running() {
    let redis = TestRedis::start();
    let job = generator_job(&redis, "locked", 100_000, "");
    let first = job.spawn_run();
    wait_for_rows(&job);
    let output = job.command("run").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("job `locked` is already running (host"),
        "{stderr}"
    );
    // When it started, in words a person reads: `since 2026-11-28 14:33:31.123 UTC`.
    let since = stderr
        .split(" since ")
        .nth(1)
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        since.len() > 27
            && since[..4].parse::<u32>().is_ok()
            && since[19..].starts_with(".")
            && since[23..].starts_with(" UTC"),
        "{stderr}"
    );
    let result = job.finish(first);
    result.expect_code(0);
    assert_eq!(result.summary["resumed"], false);
    assert_eq!(
        distinct_ids(&job),
        (1..=100_000).collect(),
        "the refused run changed nothing"
    );
    assert_eq!(job.sqlite_count("out.db", "orders"), 100_000);
}

#[test]
fn supervisor_json_log_format_reaches_every_worker_log() {
    let redis = TestRedis::start();
    let job = generator_job(&redis, "jsonlogs", 1_000, "");
    let output = job
        .command("run")
        .args(["--log-format", "json"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let logs: Vec<_> = std::fs::read_dir(job.path("var/logs"))
        .unwrap()
        .flat_map(|run| std::fs::read_dir(run.unwrap().path()).unwrap())
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    assert_eq!(logs.len(), 4, "one log per worker: {logs:?}");
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.lines().count() >= 2, "{}: {text}", log.display());
        for line in text.lines() {
            let entry: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: {e}: {line}", log.display()));
            assert!(
                entry["level"].is_string() && entry["fields"].is_object(),
                "{line}"
            );
        }
    }
}

#[test]
fn supervisor_restarts_a_killed_producer_which_resumes_its_item_exactly_once() {
    let redis = TestRedis::start();
    let job = generator_job(&redis, "producerkill", 150_000, "");
    let run = job.spawn_run();
    wait_for_rows(&job);
    let pid = worker_pid(&redis, "producerkill", "producer-1");
    kill(pid, "KILL");

    let result = job.finish(run);
    result.expect_code(0);
    let producer = summary_worker(&result.summary, "producer", 1);
    assert!(producer["restarts"].as_u64().unwrap() >= 1, "{producer}");
    assert_eq!(
        result.summary["records_read"], 150_000,
        "a re-read item is counted once"
    );
    assert_eq!(result.summary["sinks"]["local"]["written"], 150_000);
    assert_eq!(job.sqlite_count("out.db", "orders"), 150_000);
    assert_eq!(distinct_ids(&job), (1..=150_000).collect());
}

/// A producer killed (-9) in the middle of a byte range of a big file: its restart resumes
/// that range from its checkpoint, and every record lands once (the same units get the same
/// ids, which the append-mode sink's ledger absorbs).
#[test]
fn supervisor_restarts_a_producer_killed_mid_range_which_resumes_it_exactly_once() {
    let redis = TestRedis::start();
    let job = Job::new(&format!(
        r#"
        [job]
        name = "rangekill"
        data_dir = "{{dir}}/var"
        [redis]
        url = "{url}"
        [workers]
        producers = 2
        consumers = 2
        [queue]
        unit_records = 200
        high_watermark = 5
        [[source]]
        name = "input"
        kind = "files"
        path = "{{dir}}/big.jsonl"
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
    // 100,000 lines of about 85 bytes: 8.5 MB, nine ranges; a queue of five units at most
    // keeps producers waiting in the middle of their ranges.
    let pad = "p".repeat(60);
    let text: String = (1..=100_000)
        .map(|id| format!("{{\"id\":{id},\"pad\":\"{pad}\"}}\n"))
        .collect();
    job.write("big.jsonl", &text);
    let run = job.spawn_run();
    let pid = worker_pid(&redis, "rangekill", "producer-1");
    let run_id: String = redis.query(redis::cmd("GET").arg("stevedore:rangekill:current_run"));
    let key = |suffix: &str| format!("stevedore:rangekill:run:{run_id}:{suffix}");
    // The range producer 1 holds with some of its units sent, if it holds one.
    let held_range = || -> Option<(Value, u64)> {
        let item: Option<String> = redis.query(redis::cmd("HGET").arg(key("items:held")).arg("1"));
        let item: Value = serde_json::from_str(&item?).unwrap();
        item.get("bytes")?;
        let checkpoint: Option<u64> = redis.query(
            redis::cmd("HGET")
                .arg(key("checkpoint"))
                .arg(format!("input/{}", item["index"])),
        );
        checkpoint.filter(|sent| *sent > 0).map(|sent| (item, sent))
    };
    // Stopped, the producer cannot move on: kill it only if what was seen still holds.
    let mut killed = None;
    wait_until("producer 1 is stopped in the middle of a range", || {
        if held_range().is_none() {
            return false;
        }
        kill(pid, "STOP");
        killed = held_range();
        kill(pid, if killed.is_some() { "KILL" } else { "CONT" });
        killed.is_some()
    });
    let (item, sent) = killed.unwrap();
    assert!(item["bytes"]["first_line"].as_u64().unwrap() >= 1, "{item}");

    let result = job.finish(run);
    result.expect_code(0);
    let producer = summary_worker(&result.summary, "producer", 1);
    assert!(producer["restarts"].as_u64().unwrap() >= 1, "{producer}");
    let resumed: u64 = redis.query(
        redis::cmd("HGET")
            .arg(key("checkpoint"))
            .arg(format!("input/{}", item["index"])),
    );
    assert!(resumed >= sent, "the range was finished after {sent} units");
    assert_eq!(
        result.summary["records_read"], 100_000,
        "a re-read range is counted once"
    );
    assert_eq!(result.summary["sinks"]["local"]["written"], 100_000);
    assert_eq!(job.sqlite_count("out.db", "orders"), 100_000);
    assert_eq!(distinct_ids(&job), (1..=100_000).collect());
}

#[test]
fn supervisor_takes_over_a_lock_whose_holder_on_this_host_no_longer_exists() {
    let redis = TestRedis::start();
    let job = generator_job(&redis, "stale", 1_000, "");
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let namespace = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let space = format!("boot {} pidns {}", boot.trim(), namespace.display());
    let holder = format!(
        "host {} pid {dead_pid} since 2026-11-28 10:00:00.000 UTC ({space})",
        host.trim()
    );
    let _: () = redis.query(
        redis::cmd("SET")
            .arg("stevedore:stale:lock")
            .arg(&holder)
            .arg("PX")
            .arg(600_000),
    );
    let result = job.run();
    result.expect_code(0);
    assert!(
        result.stderr.contains("took over the job lock") && result.stderr.contains(&holder),
        "{}",
        result.stderr
    );
    assert_eq!(job.sqlite_count("out.db", "orders"), 1_000);

    // A holder of another boot (or pid namespace, or host) is never second-guessed.
    let _: () = redis.query(
        redis::cmd("SET")
            .arg("stevedore:stale:lock")
            .arg(format!(
                "host {} pid {dead_pid} since 2026-11-28 10:00:00.000 UTC (boot other pidns {})",
                host.trim(),
                namespace.display()
            ))
            .arg("PX")
            .arg(600_000),
    );
    let output = job.command("run").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("(boot other pidns"), "{stderr}");
}

/// A preflight that waits on a locked database longer than the job lock lives keeps the lock:
/// a second run started meanwhile is refused, and the first finishes once the database is free.
#[test]
fn supervisor_keeps_the_job_lock_while_a_preflight_waits_on_a_locked_database() {
    let redis = TestRedis::start();
    let job = generator_job(&redis, "waitlock", 1_000, "");
    let config = std::fs::read_to_string(&job.config).unwrap().replace(
        "table = \"orders\"",
        "table = \"orders\"\n        busy_timeout = \"40s\"",
    );
    std::fs::write(&job.config, config).unwrap();
    let holder = rusqlite::Connection::open(job.path("out.db")).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let first = job.spawn_run();
    // Longer than the lock's 15 s TTL: only renewals keep it.
    wait_until("the first run holds the lock", || {
        redis
            .query::<Option<String>>(redis::cmd("GET").arg("stevedore:waitlock:lock"))
            .is_some()
    });
    std::thread::sleep(std::time::Duration::from_secs(20));
    let output = job.command("run").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is already running"), "{stderr}");
    holder.execute_batch("COMMIT").unwrap();
    let result = job.finish(first);
    result.expect_code(0);
    assert_eq!(job.sqlite_count("out.db", "orders"), 1_000);
}

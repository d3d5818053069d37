//! Bad configs stop `stevedore run` before any worker starts; `stevedore check` reaches
//! Redis and every sink.

use testkit::{Job, TestRedis};

const GOOD: &str = r#"
[job]
name = "cfg"
data_dir = "{dir}/var"
[redis]
url = "REDIS_URL"
[queue]
visibility_timeout = "30s"
[[source]]
name = "synthetic"
kind = "generator"
count = 10
[[sink]]
name = "local"
kind = "sqlite"
path = "{dir}/out.db"
table = "orders"
[sink.map]
id = "id"
amount = { from = "total", type = "real" }
"#;

#[test]
fn config_bad_configs_exit_2_naming_the_field_before_any_worker_starts() {
    let cases = [
        (
            "unknown key",
            GOOD.replace("count = 10", "count = 10\ncuont = 11"),
            "source[0] (synthetic).cuont: unknown key",
        ),
        (
            "missing sink table",
            GOOD.replace("table = \"orders\"\n", ""),
            "sink[0] (local): missing field `table`",
        ),
        (
            "bad duration",
            GOOD.replace("\"30s\"", "\"30 fortnights\""),
            "queue.visibility_timeout: invalid duration",
        ),
        (
            "missing env var",
            GOOD.replace("{dir}/out.db", "${STEVEDORE_TEST_UNSET_VAR}/out.db"),
            "sink[0].path: environment variable `STEVEDORE_TEST_UNSET_VAR` is not set",
        ),
        (
            "glob matches nothing",
            GOOD.replace(
                "kind = \"generator\"\ncount = 10",
                "kind = \"files\"\npath = \"{dir}/none-*.jsonl\"\nformat = \"jsonl\"",
            ),
            "matches no files",
        ),
    ];
    for (name, text, expected) in cases {
        let job = Job::new(&text.replace("REDIS_URL", "redis://127.0.0.1:1/0"));
        let result = job.run();
        result.expect_code(2);
        assert!(
            result.stderr.contains(expected),
            "{name}: stderr lacks `{expected}`:\n{}",
            result.stderr
        );
        assert!(
            !job.path("var/logs").exists(),
            "{name}: no worker may start on a bad config"
        );
    }
}

#[test]
fn config_every_problem_is_reported_at_once() {
    let text = GOOD
        .replace("count = 10", "count = 10\ncuont = 11")
        .replace("\"30s\"", "\"soon\"")
        .replace("table = \"orders\"", "table = \"1orders\"");
    let job = Job::new(&text.replace("REDIS_URL", "redis://127.0.0.1:1/0"));
    let result = job.run();
    result.expect_code(2);
    for expected in [
        "cuont: unknown key",
        "queue.visibility_timeout",
        "sink[0] (local).table: `1orders` is not a valid identifier",
    ] {
        assert!(
            result.stderr.contains(expected),
            "stderr lacks `{expected}`:\n{}",
            result.stderr
        );
    }
}

#[test]
fn config_check_connects_to_redis_and_sinks() {
    let redis = TestRedis::start();
    let job = Job::new(&GOOD.replace("REDIS_URL", &redis.url()));
    let output = job.command("check").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("redis: redis://127.0.0.1") && stdout.contains("reachable"),
        "{stdout}"
    );
    assert!(stdout.contains("check passed"), "{stdout}");

    rusqlite::Connection::open(job.path("out.db"))
        .unwrap()
        .execute_batch("CREATE TABLE orders (id INTEGER)")
        .unwrap();
    let output = job.command("check").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("has no column(s) amount"), "{stdout}");

    let unreachable = Job::new(&GOOD.replace(
        "REDIS_URL",
        &format!("redis://127.0.0.1:{}/0", testkit::free_port()),
    ));
    let output = unreachable.command("check").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("redis: redis://127.0.0.1"), "{stdout}");
}

#[test]
fn config_supervise_refuses_a_bad_schedule_before_anything_runs() {
    let redis = TestRedis::start();
    let job = Job::new(&GOOD.replace("REDIS_URL", &redis.url()));
    let supervise = format!(
        r#"
        [supervise]
        name = "loads"
        data_dir = "{dir}/supervise"
        [redis]
        url = "{url}"
        [[schedule]]
        name = "nightly"
        job = "{config}"
        cron = "30 25 * * *"
        [[schedule]]
        name = "zoned"
        job = "{config}"
        cron = "30 2 * * *"
        timezone = "Europe/Atlantis"
        [[schedule]]
        name = "gone"
        job = "{dir}/missing.toml"
        every = "1m"
        "#,
        dir = job.dir.path().display(),
        url = redis.url(),
        config = job.config.display(),
    );
    job.write("supervise.toml", &supervise);
    let output = std::process::Command::new(testkit::stevedore_bin())
        .args(["supervise", "--config"])
        .arg(job.path("supervise.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for expected in [
        "schedule[0] (nightly).cron: `30 25 * * *` is not a cron pattern",
        "schedule[1] (zoned).timezone: unknown time zone `Europe/Atlantis`",
        "schedule[2] (gone).job:",
        "missing.toml",
    ] {
        assert!(stderr.contains(expected), "`{expected}` in:\n{stderr}");
    }
    let keys: Vec<String> = redis.query(redis::cmd("KEYS").arg("*"));
    assert!(
        keys.is_empty(),
        "nothing ran, nothing was written: {keys:?}"
    );
    assert!(!job.path("supervise").exists());
}

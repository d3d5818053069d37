//! `stevedore supervise`: daemons on one real Redis running real passes (child `stevedore run`
//! processes) on seconds-level schedules. Every wait is for an event (a pass recorded, a
//! daemon beating); nothing here depends on how fast the machine is.

#[path = "support/group.rs"]
mod group;

use std::collections::BTreeSet;

use group::Group;
use serde_json::Value;
use testkit::{TestRedis, kill, wait_until, worker_pid};

fn outcomes(history: &[Value]) -> Vec<&str> {
    history
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect()
}

fn millis(time: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(time.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

#[test]
fn supervise_two_then_three_daemons_run_every_slot_exactly_once() {
    let redis = TestRedis::start();
    let group = Group::new(
        &redis,
        200,
        r#"
        [[schedule]]
        name = "orders"
        job = "{job}"
        cron = "*/2 * * * * *"
        "#,
    );
    let mut daemons = vec![group.daemon("prod", 1), group.daemon("prod", 2)];
    let slots_recorded = |at_least: usize| {
        wait_until(&format!("{at_least} slots are recorded"), || {
            group.history("orders").len() >= at_least
        })
    };
    slots_recorded(12);
    daemons.push(group.daemon("prod", 3));
    wait_until("three daemons beat", || {
        group.status()["daemons"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["alive"] == true)
            .count()
            == 3
    });
    slots_recorded(30);
    for daemon in &mut daemons {
        assert_eq!(daemon.stop(), 0, "{}", daemon.log_text());
    }

    let history = group.history("orders");
    let slots: Vec<i64> = history.iter().map(|e| millis(&e["slot"])).collect();
    let distinct: BTreeSet<i64> = slots.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        slots.len(),
        "a slot recorded twice: {history:#?}"
    );
    let (first, last) = (slots.iter().min().unwrap(), slots.iter().max().unwrap());
    let expected: BTreeSet<i64> = (0..)
        .map(|n| first + 2000 * n)
        .take_while(|s| s <= last)
        .collect();
    assert_eq!(
        distinct, expected,
        "every slot from the first to the last, none lost"
    );
    let ran: Vec<&Value> = history.iter().filter(|e| e["outcome"] == "ok").collect();
    assert!(
        outcomes(&history)
            .iter()
            .all(|o| ["ok", "skipped", "missed"].contains(o)),
        "{:?}",
        outcomes(&history)
    );
    assert!(ran.len() >= 10, "most slots ran: {:?}", outcomes(&history));
    // What landed says the same, without the daemons' bookkeeping: one run per slot that ran.
    let runs = group.runs_in_sink();
    let recorded_runs: BTreeSet<String> = ran
        .iter()
        .map(|e| e["run"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(recorded_runs.len(), ran.len(), "each pass its own run");
    assert_eq!(runs.keys().cloned().collect::<BTreeSet<_>>(), recorded_runs);
    assert!(runs.values().all(|units| *units == 2), "{runs:?}");
    assert_eq!(group.pass_dirs("orders").len(), ran.len());
}

#[test]
fn supervise_every_starts_the_next_pass_after_the_last_finished() {
    let redis = TestRedis::start();
    let group = Group::new(
        &redis,
        3000,
        r#"
        [[schedule]]
        name = "resync"
        job = "{job}"
        every = "2s"
        "#,
    );
    let mut daemon = group.daemon("prod", 1);
    wait_until("four passes ran", || group.history("resync").len() >= 4);
    assert_eq!(daemon.stop(), 0, "{}", daemon.log_text());
    let history = group.history("resync");
    assert!(
        outcomes(&history).iter().all(|o| *o == "ok"),
        "{history:#?}"
    );
    for pair in history.windows(2) {
        let finished = millis(&pair[0]["finished_at"]);
        let started = millis(&pair[1]["started_at"]);
        assert!(
            started >= finished + 2000,
            "a pass started {} ms after the last finished: {pair:#?}",
            started - finished
        );
    }
}

#[test]
fn supervise_gates_schedules_by_environment() {
    let redis = TestRedis::start();
    let group = Group::new(
        &redis,
        100,
        r#"
        [[schedule]]
        name = "nightly"
        job = "{job}"
        every = "1s"
        environments = ["prod"]
        [[schedule]]
        name = "anywhere"
        job = "{job}"
        every = "1s"
        [[schedule]]
        name = "watched"
        job = "{job}"
        cron = "* * * * * *"
        mode = "observe"
        "#,
    );
    let mut staging = group.daemon("staging", 1);
    wait_until("the ungated schedule ran twice", || {
        group.history("anywhere").len() >= 2
    });
    assert_eq!(staging.stop(), 0);
    let (_, text) = group.run("status", &["--env", "staging"]);
    assert!(
        text.contains("[gated: not run in this environment]"),
        "{text}"
    );
    let nightly = group.schedule("nightly");
    assert!(
        nightly["recent"].as_array().unwrap().is_empty(),
        "{nightly}"
    );
    assert!(nightly["last"]["outcome"].is_null(), "{nightly}");
    assert!(group.pass_dirs("nightly").is_empty());
    assert!(
        staging.log_text().contains("gated"),
        "{}",
        staging.log_text()
    );
    // `observe` computes and logs its slots, and records and runs nothing.
    assert!(
        staging
            .log_text()
            .contains("observe: this slot would run now"),
        "{}",
        staging.log_text()
    );
    let watched = group.schedule("watched");
    assert!(
        watched["recent"].as_array().unwrap().is_empty(),
        "{watched}"
    );
    assert!(group.pass_dirs("watched").is_empty());
}

#[test]
fn supervise_trigger_pause_resume_and_stop_do_what_they_say() {
    let redis = TestRedis::start();
    let group = Group::new(
        &redis,
        2_000_000,
        r#"
        [[schedule]]
        name = "yearly"
        job = "{job}"
        cron = "0 0 0 1 1 *"
        "#,
    );
    let mut daemon = group.daemon("prod", 1);
    let (code, text) = group.run("pause", &["yearly", "--reason", "migrating the table"]);
    assert_eq!(code, 0, "{text}");
    let (code, text) = group.run("trigger", &["yearly"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("triggered yearly"), "{text}");
    let paused = group.schedule("yearly");
    assert_eq!(paused["paused"]["reason"], "migrating the table");
    assert_eq!(paused["pending"].as_array().unwrap().len(), 1, "{paused}");
    assert!(paused["running"].is_null(), "paused: nothing starts");
    let (code, _) = group.run("resume", &["yearly"]);
    assert_eq!(code, 0);
    wait_until("the triggered pass runs and writes", || {
        !group.schedule("yearly")["running"].is_null()
            && group.files.sqlite_count("out.db", "orders") > 0
    });
    // A second trigger while it runs: overlap = skip.
    let (_, text) = group.run("trigger", &["yearly"]);
    assert!(text.contains("not triggered"), "{text}");
    let (code, text) = group.run("stop", &["yearly"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("asked pass 1 of yearly"), "{text}");
    wait_until("the pass stopped", || {
        group.schedule("yearly")["last"]["outcome"] == "stopped"
    });
    let history = group.history("yearly");
    assert_eq!(outcomes(&history), ["skipped", "stopped"], "{history:#?}");
    assert_eq!(history[1]["manual"], true);
    assert!(
        group.files.sqlite_count("out.db", "orders") < 2_000_000,
        "stopped before the end"
    );
    let (_, text) = group.run("stop", &["yearly"]);
    assert!(text.contains("no pass of yearly is running"), "{text}");
    assert_eq!(daemon.stop(), 0);
    let (code, text) = group.run("trigger", &["nightly"]);
    assert_eq!(code, 2, "an unknown schedule: {text}");
    assert!(text.contains("no schedule `nightly`"), "{text}");
}

/// Redis `TIME`, in milliseconds: the clock every daemon of the group goes by.
fn redis_now(redis: &TestRedis) -> i64 {
    let (seconds, micros): (i64, i64) = redis.query(&mut redis::cmd("TIME"));
    seconds * 1000 + micros / 1000
}

/// The SQLite ledger in rowid (commit) order: unit id and the writer's fencing token.
fn ledger(group: &Group) -> Vec<(String, i64)> {
    let connection = rusqlite::Connection::open(group.files.path("out.db")).unwrap();
    let mut statement = connection
        .prepare("SELECT unit_id, fence FROM stevedore_applied ORDER BY rowid")
        .unwrap();
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The highest fencing token the SQLite sink has seen for job `job` (0 before any).
fn sink_fence(group: &Group, job: &str) -> i64 {
    let Ok(connection) = rusqlite::Connection::open(group.files.path("out.db")) else {
        return 0;
    };
    connection
        .query_row(
            "SELECT token FROM stevedore_fence WHERE job = ?1",
            [job],
            |row| row.get(0),
        )
        .unwrap_or(0)
}

fn assert_every_record_once(group: &Group, records: i64) {
    let ids: BTreeSet<i64> = group
        .files
        .sqlite_rows("out.db", "orders")
        .iter()
        .map(|row| row["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        group.files.sqlite_count("out.db", "orders"),
        records,
        "no record twice"
    );
    assert_eq!(ids, (1..=records).collect(), "every record");
}

const YEARLY: &str = r#"
    [[schedule]]
    name = "orders"
    job = "{job}"
    cron = "0 0 0 1 1 *"
"#;

#[test]
fn supervise_fence_a_paused_pass_commits_nothing_after_another_took_over() {
    let redis = TestRedis::start();
    let group = Group::empty(&redis, YEARLY);
    // 1000 units at 20 a second: the pass outlasts the lease it loses.
    group.job(&redis, "orders", 100_000, "max_units_per_second = 20");
    let mut first = group.daemon("prod", 1);
    let (code, text) = group.run("trigger", &["orders"]);
    assert_eq!(code, 0, "{text}");
    let mut pass = 0;
    wait_until("the pass runs and writes", || {
        pass = group.schedule("orders")["running"]["pid"]
            .as_u64()
            .unwrap_or(0) as u32;
        pass != 0 && group.files.sqlite_count("out.db", "orders") > 0
    });
    let stale_consumer = worker_pid(&redis, "orders", "consumer-1");
    let mut second = group.daemon("prod", 2);
    // The host of the first daemon freezes: the daemon and the pass's supervisor stop; the
    // pass's workers (process groups of their own) go on writing until they are fenced off.
    kill(first.pid(), "STOP");
    kill(pass, "STOP");
    let old = sink_fence(&group, "orders");
    assert!(old > 0, "the pass prepared the sink with its token");
    wait_until(
        "another daemon took the pass over and its run prepared the sink",
        || sink_fence(&group, "orders") > old,
    );
    let new = sink_fence(&group, "orders");
    // The stale consumer's next write is refused: it exits (a zombie, its parent is stopped).
    wait_until("the stale consumer was fenced off", || {
        std::fs::read_to_string(format!("/proc/{stale_consumer}/stat"))
            .map(|stat| stat.split_whitespace().nth(2) == Some("Z"))
            .unwrap_or(true)
    });
    kill(pass, "CONT");
    kill(first.pid(), "CONT");
    wait_until("the pass ran to the end", || {
        group.schedule("orders")["last"]["outcome"] == "ok"
    });
    assert_eq!(first.stop(), 0, "{}", first.log_text());
    assert_eq!(second.stop(), 0, "{}", second.log_text());

    assert_every_record_once(&group, 100_000);
    let ledger = ledger(&group);
    let last_old = ledger.iter().rposition(|(_, token)| *token == old).unwrap();
    let first_new = ledger.iter().position(|(_, token)| *token == new).unwrap();
    assert!(
        last_old < first_new,
        "a unit committed under token {old} after token {new} wrote (rows {last_old} vs {first_new})"
    );
    assert!(
        ledger
            .iter()
            .all(|(_, token)| *token == old || *token == new)
    );
    let history = group.history("orders");
    assert_eq!(
        outcomes(&history),
        ["ok"],
        "one pass, resumed: {history:#?}"
    );
    let logs = group.files.worker_logs();
    assert!(
        logs.contains("fenced"),
        "the stale workers were refused:\n{logs}"
    );
}

#[test]
fn supervise_a_killed_daemons_pass_is_resumed_by_another_and_lands_once() {
    let redis = TestRedis::start();
    let group = Group::empty(&redis, YEARLY);
    group.job(&redis, "orders", 60_000, "max_units_per_second = 20");
    let mut first = group.daemon("prod", 1);
    let (code, text) = group.run("trigger", &["orders"]);
    assert_eq!(code, 0, "{text}");
    wait_until("the pass writes", || {
        !group.schedule("orders")["running"].is_null()
            && group.files.sqlite_count("out.db", "orders") > 0
    });
    let mut second = group.daemon("prod", 2);
    kill(first.pid(), "KILL");
    let _ = first.child.wait();
    wait_until("another daemon took the pass over", || {
        group.schedule("orders")["running"]["takeovers"] == 1
    });
    wait_until("the pass ran to the end", || {
        group.schedule("orders")["last"]["outcome"] == "ok"
    });
    assert_eq!(second.stop(), 0, "{}", second.log_text());
    assert_every_record_once(&group, 60_000);
    assert_eq!(outcomes(&group.history("orders")), ["ok"]);
    assert_eq!(group.runs_in_sink().len(), 1, "the pass resumed its run");
}

#[test]
fn supervise_missed_slots_follow_catchup_and_are_all_counted() {
    let redis = TestRedis::start();
    let mut schedules = String::new();
    for catchup in ["latest", "all", "skip"] {
        schedules.push_str(&format!(
            "[[schedule]]\nname = \"{catchup}\"\njob = \"{{dir}}/{catchup}.toml\"\n\
             cron = \"*/2 * * * * *\"\ncatchup = \"{catchup}\"\n"
        ));
    }
    let group = Group::empty(&redis, &schedules);
    for catchup in ["latest", "all", "skip"] {
        group.job(&redis, catchup, 10, "");
    }
    let mut daemon = group.daemon("prod", 1);
    wait_until("each schedule ran", || {
        ["latest", "all", "skip"]
            .iter()
            .all(|name| group.history(name).iter().any(|e| e["outcome"] == "ok"))
    });
    assert_eq!(daemon.stop(), 0, "{}", daemon.log_text());
    let down_from = redis_now(&redis);
    wait_until("five slots passed with no daemon up", || {
        redis_now(&redis) > down_from + 10_500
    });
    let up_at = redis_now(&redis);
    let mut daemon = group.daemon("prod", 2);
    wait_until("every schedule looked past the gap", || {
        ["latest", "all", "skip"].iter().all(|name| {
            group
                .history(name)
                .iter()
                .any(|e| millis(&e["slot"]) > up_at + 4_000)
        })
    });
    assert_eq!(daemon.stop(), 0, "{}", daemon.log_text());

    // The gap: slots after the last one decided before the stop, up to the restart.
    let gap = |name: &str| -> Vec<(i64, String)> {
        let history = group.history(name);
        let before = history
            .iter()
            .map(|e| millis(&e["slot"]))
            .filter(|slot| *slot < down_from)
            .max()
            .unwrap();
        history
            .iter()
            .map(|e| {
                (
                    millis(&e["slot"]),
                    e["outcome"].as_str().unwrap().to_string(),
                )
            })
            .filter(|(slot, _)| *slot > before && *slot <= up_at)
            .collect()
    };
    let skip = gap("skip");
    assert!(skip.len() >= 5, "{skip:?}");
    assert!(skip.iter().all(|(_, o)| o == "missed"), "{skip:?}");
    let all = gap("all");
    assert!(all.len() >= 5, "{all:?}");
    assert!(all.iter().all(|(_, o)| o == "ok"), "{all:?}");
    let started: Vec<i64> = group
        .history("all")
        .iter()
        .filter(|e| all.iter().any(|(slot, _)| *slot == millis(&e["slot"])))
        .map(|e| millis(&e["started_at"]))
        .collect();
    assert!(
        started.windows(2).all(|w| w[0] < w[1]),
        "in slot order: {started:?}"
    );
    let latest = gap("latest");
    assert!(latest.len() >= 5, "{latest:?}");
    let ran = latest.iter().filter(|(_, o)| o == "ok").count();
    assert!(ran <= 1, "at most the latest of the gap ran: {latest:?}");
    assert!(
        latest[..latest.len() - 1]
            .iter()
            .all(|(_, o)| o == "missed"),
        "{latest:?}"
    );
    // Every missed slot is counted, and visible in status.
    for name in ["latest", "skip"] {
        let schedule = group.schedule(name);
        let missed = group
            .history(name)
            .iter()
            .filter(|e| e["outcome"] == "missed")
            .count();
        assert_eq!(schedule["missed"], missed as i64, "{schedule}");
    }
    assert_eq!(group.schedule("all")["missed"], 0);
}

#[test]
fn supervise_goes_on_after_redis_restarts_from_its_append_only_file() {
    let mut redis = TestRedis::start_with_aof();
    let group = Group::new(
        &redis,
        200,
        r#"
        [[schedule]]
        name = "orders"
        job = "{job}"
        cron = "*/2 * * * * *"
        "#,
    );
    let mut daemon = group.daemon("prod", 1);
    let ran = |group: &Group| {
        group
            .history("orders")
            .iter()
            .filter(|e| e["outcome"] == "ok")
            .count()
    };
    wait_until("three passes ran", || ran(&group) >= 3);
    redis.restart();
    let after = ran(&group);
    wait_until("three more passes ran after the restart", || {
        ran(&group) >= after + 3
    });
    assert_eq!(daemon.stop(), 0, "{}", daemon.log_text());
    let history = group.history("orders");
    let slots: Vec<i64> = history.iter().map(|e| millis(&e["slot"])).collect();
    let distinct: BTreeSet<i64> = slots.iter().copied().collect();
    assert_eq!(distinct.len(), slots.len(), "no slot twice: {history:#?}");
    let passes: BTreeSet<String> = history
        .iter()
        .filter(|e| e["outcome"] == "ok")
        .map(|e| e["run"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        group
            .runs_in_sink()
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>(),
        passes,
        "one run per pass, none doubled"
    );
}

#[test]
fn supervise_timeout_stops_a_pass_and_retries_try_the_slot_again() {
    let redis = TestRedis::start();
    let group = Group::empty(
        &redis,
        r#"
        [[schedule]]
        name = "orders"
        job = "{job}"
        cron = "0 0 0 1 1 *"
        timeout = "2s"
        retries = 1
        retry_delay = "1s"
        "#,
    );
    group.job(&redis, "orders", 100_000, "max_units_per_second = 5");
    let mut daemon = group.daemon("prod", 1);
    let (code, text) = group.run("trigger", &["orders"]);
    assert_eq!(code, 0, "{text}");
    wait_until("both attempts timed out", || {
        group.history("orders").len() >= 2
    });
    assert_eq!(daemon.stop(), 0, "{}", daemon.log_text());
    let history = group.history("orders");
    assert_eq!(
        outcomes(&history),
        ["timed_out", "timed_out"],
        "{history:#?}"
    );
    assert_eq!(history[0]["attempt"], 1);
    assert_eq!(history[1]["attempt"], 2);
    assert_eq!(history[0]["slot"], history[1]["slot"], "the same slot");
    assert!(millis(&history[1]["started_at"]) >= millis(&history[0]["finished_at"]) + 1000);
    let schedule = group.schedule("orders");
    assert_eq!(schedule["consecutive_failures"], 2, "{schedule}");
    assert!(
        schedule["pending"].as_array().unwrap().is_empty(),
        "no third attempt"
    );
}

#[test]
fn supervise_dry_run_mode_and_read_only_leave_every_sink_untouched() {
    let redis = TestRedis::start();
    let group = Group::empty(
        &redis,
        r#"
        [[schedule]]
        name = "rehearsal"
        job = "{dir}/rehearsal.toml"
        every = "1s"
        mode = "dry_run"
        [[schedule]]
        name = "orders"
        job = "{job}"
        every = "1s"
        "#,
    );
    group.job(&redis, "rehearsal", 500, "");
    group.job(&redis, "orders", 500, "");
    let (code, text) = group.run("read-only", &["--reason", "incident 42"]);
    assert_eq!(code, 0, "{text}");
    let mut daemon = group.daemon("prod", 1);
    wait_until("both schedules ran two passes", || {
        ["rehearsal", "orders"].iter().all(|name| {
            group
                .history(name)
                .iter()
                .filter(|e| e["outcome"] == "ok")
                .count()
                >= 2
        })
    });
    let status = group.status();
    assert!(
        status["read_only"]
            .as_str()
            .unwrap()
            .contains("incident 42"),
        "{status}"
    );
    assert!(
        !group.files.path("out.db").exists(),
        "no pass wrote: read-only and dry_run passes touch no sink"
    );
    let keys: Vec<String> = redis.query(redis::cmd("KEYS").arg("stevedore:orders:*"));
    assert!(
        keys.is_empty(),
        "a dry run starts no run in redis: {keys:?}"
    );
    let summaries: Vec<Value> = group
        .pass_dirs("orders")
        .iter()
        .map(|dir| {
            let text = std::fs::read_to_string(
                group
                    .files
                    .path(&format!("supervise/orders/{dir}/summary.json")),
            )
            .unwrap();
            serde_json::from_str(&text).unwrap()
        })
        .collect();
    assert!(
        summaries
            .iter()
            .all(|s| s["dry_run"] == true && s["sinks"]["local"]["would_write"] == 500),
        "{summaries:#?}"
    );
    // Read-only off: the active schedule writes again; the dry_run one never does.
    let (code, text) = group.run("read-only", &["--off"]);
    assert_eq!(code, 0, "{text}");
    wait_until("the active schedule wrote", || {
        group.files.sqlite_count("out.db", "orders") >= 500
    });
    assert_eq!(daemon.stop(), 0, "{}", daemon.log_text());
    assert_eq!(group.files.sqlite_count("out.db", "rehearsal"), 0);
}

#[test]
fn supervise_sigterm_lets_passes_finish_within_grace_then_leaves_them_to_resume() {
    let redis = TestRedis::start();
    let group = Group::empty(&redis, YEARLY);
    group.job(&redis, "orders", 40_000, "max_units_per_second = 20");
    // A short grace: the pass cannot finish within it.
    let text = std::fs::read_to_string(&group.file)
        .unwrap()
        .replace("grace = \"30s\"", "grace = \"1s\"");
    std::fs::write(&group.file, text).unwrap();
    let mut first = group.daemon("prod", 1);
    let (code, text) = group.run("trigger", &["orders"]);
    assert_eq!(code, 0, "{text}");
    wait_until("the pass writes", || {
        group.files.sqlite_count("out.db", "orders") > 0
    });
    assert_eq!(first.stop(), 0, "{}", first.log_text());
    let left = group.schedule("orders");
    assert!(
        !left["running"].is_null(),
        "the pass is left to resume: {left}"
    );
    assert!(
        left["last"]["outcome"].is_null(),
        "not recorded as ended: {left}"
    );
    assert!(
        first.log_text().contains("grace is over"),
        "{}",
        first.log_text()
    );
    let landed = group.files.sqlite_count("out.db", "orders");
    assert!(landed < 40_000, "stopped early ({landed})");
    // The next daemon resumes it at once: the lease was given back, not left to lapse.
    let mut second = group.daemon("prod", 2);
    wait_until("the pass ran to the end", || {
        group.schedule("orders")["last"]["outcome"] == "ok"
    });
    assert_eq!(second.stop(), 0, "{}", second.log_text());
    assert_every_record_once(&group, 40_000);
    assert_eq!(group.runs_in_sink().len(), 1, "one run, resumed");
}

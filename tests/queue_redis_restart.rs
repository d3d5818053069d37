//! The queue survives a managed Redis being killed and restarted mid-run.

use std::collections::BTreeSet;

use testkit::{Job, kill, wait_for_rows};

#[test]
fn queue_managed_redis_killed_mid_run_is_restarted_and_every_record_lands_once() {
    let job = Job::new(
        r#"
        [job]
        name = "restarted"
        data_dir = "{dir}/var"
        [redis]
        url = "managed"
        data_dir = "{dir}/redis"
        [workers]
        producers = 2
        consumers = 2
        [queue]
        unit_records = 200
        visibility_timeout = "3s"
        [[source]]
        name = "synthetic"
        kind = "generator"
        count = 120000
        seed = 5
        [[sink]]
        name = "local"
        kind = "sqlite"
        path = "{dir}/out.db"
        table = "orders"
        mode = "upsert"
        key = ["id"]
        [[sink]]
        name = "nowhere"
        kind = "blackhole"
        "#,
    );
    let run = job.spawn_run();
    wait_for_rows(&job);
    let pid: u32 = std::fs::read_to_string(job.path("redis/redis.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    kill(pid, "KILL");
    let result = job.finish(run);
    result.expect_code(0);
    assert_eq!(result.summary["records_read"], 120_000);
    assert_eq!(result.summary["sinks"]["local"]["written"], 120_000);
    assert_eq!(result.summary["sinks"]["nowhere"]["written"], 120_000);
    let ids: BTreeSet<i64> = job
        .sqlite_rows("out.db", "orders")
        .iter()
        .map(|row| row["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, (1..=120_000).collect());
    assert_eq!(
        result.summary["redis_restarts"], 1,
        "the supervisor restarted the managed redis once"
    );
}

//! `stevedore run` and `stevedore check` with a `cosmos` sink, through real worker processes
//! and a real Redis, against the local Cosmos DB REST server (and a real account too when
//! `STEVEDORE_COSMOS_ENDPOINT` and `STEVEDORE_COSMOS_KEY` are set). Documents are read back
//! through the SDK.

use std::collections::BTreeMap;

use azure_data_cosmos::models::{ContainerProperties, ThroughputProperties};
use azure_data_cosmos::options::CreateContainerOptions;
use serde_json::{Value, json};
use testkit::block_on;
use testkit::cosmos::{CosmosTarget, read_all};
use testkit::{Job, TestRedis, kill, queue_bodies, wait_for_rows, worker_pid};

const KEY_PATH: &str = "/customerId";

/// A job reading `{dir}/data/*.jsonl` into the cosmos sink `documents` (and whatever `more`
/// adds), with `sink_extra` settings.
fn job(name: &str, redis: &TestRedis, target: &CosmosTarget, sink_extra: &str, more: &str) -> Job {
    let emulator = target.server().is_some();
    let job = Job::new(&format!(
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
        unit_records = 200
        max_receives = 4
        [[source]]
        name = "orders"
        kind = "files"
        path = "{{dir}}/data/*.jsonl"
        format = "jsonl"
        [[sink]]
        name = "documents"
        kind = "cosmos"
        endpoint = "{endpoint}"
        key = "${{STEVEDORE_TEST_COSMOS_KEY}}"
        database = "{database}"
        container = "orders"
        partition_key = "{KEY_PATH}"
        id = "{{order_id}}"
        create_if_missing = true
        emulator = {emulator}
        {sink_extra}
        [sink.map]
        order_id = "id"
        customerId = "customer"
        amount = "amount"
        note = "note"
        {more}
        "#,
        port = redis.port,
        endpoint = target.endpoint(),
        database = target.database(),
    ));
    job.with_env("STEVEDORE_TEST_COSMOS_KEY", target.key())
}

/// `stevedore check` (or another command without a summary) to the end.
fn command(job: &Job, subcommand: &str) -> testkit::RunResult {
    let output = job.command(subcommand).output().expect("stevedore runs");
    testkit::RunResult::from_output(output)
}

fn order(id: u64) -> Value {
    json!({"id": id, "customer": format!("c{}", id % 37), "amount": id * 3, "note": "ünïcode ✓"})
}

fn write_orders(job: &Job, files: u64, per_file: u64) {
    for file in 0..files {
        let lines: String = (1..=per_file)
            .map(|n| format!("{}\n", order(file * per_file + n)))
            .collect();
        job.write(&format!("data/part-{file}.jsonl"), &lines);
    }
}

/// Every document of the container, by id, read page by page.
fn documents(target: &CosmosTarget) -> BTreeMap<String, Value> {
    block_on(async {
        let client = target.client().await;
        let container = client
            .database_client(target.database())
            .container_client("orders", None)
            .await
            .expect("the container exists");
        read_all(&container).await
    })
}

/// What the container must hold for orders `ids`: each order's mapped fields, id as text.
fn assert_holds(target: &CosmosTarget, ids: impl Iterator<Item = u64>) {
    let held = documents(target);
    let mut expected = 0;
    for id in ids {
        expected += 1;
        let o = order(id);
        let document = held
            .get(&id.to_string())
            .unwrap_or_else(|| panic!("{}: document {id} is missing", target.label()));
        assert_eq!(document["customerId"], o["customer"], "{id}");
        assert_eq!(document["amount"], o["amount"], "{id}");
        assert_eq!(document["note"], o["note"], "{id}");
        assert_eq!(document["order_id"], o["id"], "{id}");
    }
    assert_eq!(
        held.len(),
        expected,
        "{}: no other documents",
        target.label()
    );
}

#[test]
fn cosmos_pipeline_files_into_cosmos_and_sqlite_hold_exactly_the_input_despite_kill_9() {
    for target in CosmosTarget::all("cosmos_pipeline_e2e") {
        let redis = TestRedis::start();
        let job = job(
            "cosmose2e",
            &redis,
            &target,
            // At most 100 requests/s per consumer: the ~1,100 requests of this job take
            // seconds on any machine, so consumer-1 is killed mid-run, never after it.
            "max_concurrency = 8\n            max_requests_per_second = 100",
            r#"
            [[sink]]
            name = "local"
            kind = "sqlite"
            path = "{dir}/out.db"
            table = "orders"
            "#,
        );
        write_orders(&job, 4, 1500);
        let run = job.spawn_run();
        wait_for_rows(&job);
        let pid = worker_pid(&redis, "cosmose2e", "consumer-1");
        kill(pid, "KILL");
        let result = job.finish(run);
        result.expect_code(0);
        assert_eq!(result.summary["records_read"], 6000);
        assert_eq!(result.summary["sinks"]["documents"]["written"], 6000);
        assert_eq!(result.summary["sinks"]["documents"]["dead_lettered"], 0);
        assert_eq!(result.summary["sinks"]["local"]["written"], 6000);
        assert_holds(&target, 1..=6000);
        assert_eq!(job.sqlite_count("out.db", "orders"), 6000);
        let consumer = testkit::summary_worker(&result.summary, "consumer", 1);
        assert!(consumer["restarts"].as_u64().unwrap() >= 1, "{consumer}");
    }
}

#[test]
fn cosmos_pipeline_bad_documents_are_dead_lettered_and_the_rest_lands() {
    for target in CosmosTarget::all("cosmos_pipeline_bad") {
        let redis = TestRedis::start();
        let job = job("cosmosbad", &redis, &target, "", "");
        let mut lines: Vec<String> = (1..=300).map(|id| order(id).to_string()).collect();
        // Line 11: an id that is not a string after templating (an object).
        lines[10] = json!({"id": {"n": 11}, "customer": "c1", "amount": 1}).to_string();
        // Line 101: over 2 MB.
        lines[100] =
            json!({"id": 101, "customer": "c2", "note": "x".repeat(2_200_000)}).to_string();
        // Line 201: no partition key field.
        lines[200] = json!({"id": 201, "amount": 5}).to_string();
        job.write("data/one.jsonl", &(lines.join("\n") + "\n"));
        let result = job.run();
        result.expect_code(3);
        assert_eq!(result.summary["sinks"]["documents"]["written"], 297);
        assert_eq!(result.summary["sinks"]["documents"]["dead_lettered"], 3);
        assert_holds(&target, (1..=300).filter(|id| ![11, 101, 201].contains(id)));
        let dead = queue_bodies(&redis, "cosmosbad-documents-dlq");
        let reasons: Vec<String> = dead
            .iter()
            .map(|d| d["dead_letter"]["reason"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        for (record_id, why) in [
            (
                json!({"n": 11}),
                "id template `{order_id}`: field `order_id` is an object",
            ),
            (
                json!(101),
                "is 2200069 bytes, over Cosmos DB's limit of 2097152 bytes",
            ),
            (
                json!(201),
                "partition key `/customerId`: the document's field is null",
            ),
        ] {
            let letter = dead
                .iter()
                .find(|d| d["record"]["id"] == record_id)
                .unwrap_or_else(|| panic!("no dead letter for {record_id}: {reasons:?}"));
            let reason = letter["dead_letter"]["reason"].as_str().unwrap();
            assert!(reason.contains(why), "{reason}");
        }
    }
}

#[test]
fn cosmos_pipeline_check_reports_the_partition_key_and_refuses_a_mismatch() {
    for target in CosmosTarget::all("cosmos_pipeline_check") {
        block_on(async {
            let client = target.client().await;
            target.create_container(&client, "orders", KEY_PATH).await;
        });
        let redis = TestRedis::start();
        let good = job("cosmoscheck", &redis, &target, "", "");
        write_orders(&good, 1, 10);
        let checked = command(&good, "check");
        checked.expect_code(0);
        assert!(
            checked.stdout.contains("partition key /customerId"),
            "{}",
            checked.stdout
        );
        let bad = job("cosmoscheck", &redis, &target, "", "");
        let text = std::fs::read_to_string(bad.path("job.toml"))
            .unwrap()
            .replace(
                "partition_key = \"/customerId\"",
                "partition_key = \"/amount\"",
            )
            .replace(
                "customerId = \"customer\"",
                "customerId = \"customer\"\namount2 = \"amount\"",
            );
        std::fs::write(bad.path("job.toml"), text).unwrap();
        write_orders(&bad, 1, 10);
        for subcommand in ["check", "run"] {
            let refused = command(&bad, subcommand);
            refused.expect_code(2);
            let all = format!("{}{}", refused.stdout, refused.stderr);
            assert!(
                all.contains("partitioned on /customerId, but partition_key is `/amount`"),
                "{subcommand}: {all}"
            );
            assert!(!all.contains(target.key()), "the key never shows: {all}");
        }
    }
}

#[test]
fn cosmos_pipeline_throttled_job_completes_with_every_document_once() {
    let target = CosmosTarget::test_server("cosmos_pipeline_throttled");
    let server = target.server().expect("the test server");
    let redis = TestRedis::start();
    let job = job(
        "cosmosthrottle",
        &redis,
        &target,
        "max_concurrency = 8\n        max_requests_per_second = 400\n        throttle_retries = 1",
        "",
    );
    write_orders(&job, 4, 5000);
    block_on(async {
        let client = target.client().await;
        target.create_container(&client, "orders", KEY_PATH).await;
    });
    server.throttle(0.3, 5);
    let started = std::time::Instant::now();
    let result = job.run();
    let seconds = started.elapsed().as_secs_f64();
    let counts = server.throttle_counts();
    server.throttle(0.0, 0);
    result.expect_code(0);
    assert_eq!(result.summary["sinks"]["documents"]["written"], 20_000);
    assert_eq!(result.summary["sinks"]["documents"]["dead_lettered"], 0);
    assert!(counts.throttled > 0, "{counts:?}");
    let share = counts.throttled as f64 / (counts.throttled + counts.served) as f64;
    assert!(
        (0.25..0.35).contains(&share),
        "30% of requests throttled: {counts:?}"
    );
    assert_holds(&target, 1..=20_000);
    assert!(
        job.worker_logs()
            .contains("throttled: lowering the request rate"),
        "the consumers lowered their rate"
    );
    println!(
        "cosmos throttled job: {} requests served, {} throttled ({:.0}%), {:.0} requests/s achieved \
         over {seconds:.1} s with 2 consumers configured at 400 requests/s each",
        counts.served,
        counts.throttled,
        share * 100.0,
        (counts.served + counts.throttled) as f64 / seconds
    );
}

/// The retry bound written in `src/retry.rs`, counted: a unit that Cosmos DB throttles forever
/// causes `max_receives` deliveries x 3 write attempts x 1 request in flight x (1 + SDK
/// retries) requests, not one more, and then goes whole to the dead-letter queue.
#[test]
fn cosmos_pipeline_a_unit_throttled_forever_costs_the_documented_number_of_requests() {
    let target = CosmosTarget::test_server("cosmos_pipeline_retry_bound");
    let server = target.server().expect("the test server");
    let redis = TestRedis::start();
    let job = job(
        "cosmosbound",
        &redis,
        &target,
        "max_concurrency = 1\n        throttle_retries = 2",
        "",
    );
    write_orders(&job, 1, 1);
    block_on(async {
        let client = target.client().await;
        target.create_container(&client, "orders", KEY_PATH).await;
    });
    server.throttle(1.0, 1);
    let result = job.run();
    let counts = server.throttle_counts();
    server.throttle(0.0, 0);
    result.expect_code(3);
    let (max_receives, write_attempts, in_flight, sdk_retries) = (4, 3, 1, 2);
    assert_eq!(
        counts.throttled,
        max_receives * write_attempts * in_flight * (1 + sdk_retries),
        "{counts:?}"
    );
    assert_eq!(counts.served, 0, "{counts:?}");
    assert_eq!(result.summary["sinks"]["documents"]["written"], 0);
    assert_eq!(result.summary["sinks"]["documents"]["dead_lettered"], 1);
    assert_eq!(queue_bodies(&redis, "cosmosbound-documents-dlq").len(), 1);
}

/// The real-account part of the throttling test: a container at Cosmos DB's minimum of 400 RU/s
/// and two consumers allowed 200 requests/s each (batches of a few documents cost tens of RU),
/// so the account itself throttles (the local server's switch does not exist there), while the
/// adaptive rate's floor (200/64 requests/s) stays under what the container serves. Smaller
/// than the local job: at 400 RU/s each thousand documents take several seconds.
#[test]
fn cosmos_pipeline_throttled_by_a_real_account_completes_with_every_document_once() {
    let Some(target) = CosmosTarget::real_account("cosmos_pipeline_throttled_real") else {
        return;
    };
    let redis = TestRedis::start();
    let job = job(
        "cosmosthrottlereal",
        &redis,
        &target,
        "max_concurrency = 16\n        max_requests_per_second = 200",
        "",
    );
    write_orders(&job, 2, 1000);
    let provisioned = block_on(async {
        let client = target.client().await;
        let database = target.create_database(&client).await;
        database
            .create_container(
                ContainerProperties::new("orders".to_string(), KEY_PATH.into()),
                Some(
                    CreateContainerOptions::default()
                        .with_throughput(ThroughputProperties::manual(400)),
                ),
            )
            .await
    });
    if let Err(error) = provisioned {
        // A serverless account has no provisioned throughput to exhaust.
        println!(
            "cosmos (real account): cannot create a 400 RU/s container ({error}); is the account \
             serverless? Skipped the real-account throttling test"
        );
        return;
    }
    let started = std::time::Instant::now();
    let result = job.run();
    result.expect_code(0);
    assert_eq!(result.summary["sinks"]["documents"]["written"], 2_000);
    assert_eq!(result.summary["sinks"]["documents"]["dead_lettered"], 0);
    assert_holds(&target, 1..=2_000);
    assert!(
        job.worker_logs()
            .contains("throttled: lowering the request rate"),
        "the account throttled and the consumers lowered their rate"
    );
    println!(
        "cosmos (real account): 2,000 documents into a 400 RU/s container in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

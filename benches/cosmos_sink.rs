//! The `cosmos` sink's consumer path against a bare `azure_data_cosmos` upsert loop, in one run
//! against the same local Cosmos DB REST server (testkit/cosmos). `bench/cosmos.sh` runs
//! it.
//!
//! - bare: documents already built as JSON values (not timed), then `BENCH_CONCURRENCY` tasks
//!   each upserting the next document (`upsert_item`) until none is left: what a hand-written
//!   loader does, spread over the runtime's threads as the sink's requests are.
//! - stevedore: per unit, what a consumer does after receiving it: decode the envelope, map the
//!   records, and `Sink::write` (ids from the template, grouping by partition key, the size
//!   check, requests under the sink's semaphore and adaptive rate), `Sink::concurrency` units
//!   at once, with `max_concurrency = BENCH_CONCURRENCY`.
//!
//! Two shapes of data, each in its own containers:
//! - `spread`: every document in a partition of its own, so the sink, like the bare loop,
//!   sends one upsert per document. This is the like-for-like comparison.
//! - `grouped`: ten partition key values per unit, so the sink sends transactional batches of
//!   up to 100 upserts where the bare loop still sends one request per document.
//!
//! The rate ceiling is set above what the server can serve, so pacing is on the path but does
//! not bind. Every round checks that the sink reported every document written, and reads a
//! sample of both containers back.
//!
//! The server runs on CPU 0 and the client on the others (`BENCH_PIN=0` turns that off).
//! A round runs bare, stevedore, stevedore, bare, each into a fresh container, so that which
//! loop goes first and any drift within the round cancel out; a warm-up round is not counted,
//! and the summary is the median of the per-round ratios. Each round also prints the
//! client's CPU time per document for both loops: on a small machine the client and the
//! server share the cores, so client work shows up as server throughput lost. Settings (environment): `BENCH_DOCS` (default 20000), `BENCH_UNIT`
//! (documents per unit, default 1000), `BENCH_CONCURRENCY` (default 16, the sink's default
//! `max_concurrency`), `BENCH_ROUNDS` (default 5), `BENCH_SHAPES` (default `spread,grouped`).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::models::ContainerProperties;
use common::{consumer_path, encode_units, median, setting};
use serde_json::Value;
use stevedore::config::SinkConfig;
use stevedore::sink;
use stevedore::source::generated_record;
use testkit::cosmos::CosmosServer;

/// How documents fall into partitions.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// One partition per document: single upserts on both sides.
    Spread,
    /// Ten partitions per unit: transactional batches on the sink's side.
    Grouped,
}

impl Shape {
    fn parse(name: &str) -> Shape {
        match name.trim() {
            "spread" => Shape::Spread,
            "grouped" => Shape::Grouped,
            other => panic!("BENCH_SHAPES: unknown shape `{other}` (spread, grouped)"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Shape::Spread => "spread",
            Shape::Grouped => "grouped",
        }
    }

    /// The record the producer would read: the generator's, with the partition key field.
    fn record(self, n: u64) -> Value {
        let mut record = generated_record(7, n);
        record["customerId"] = match self {
            Shape::Spread => Value::String(format!("k{n}")),
            Shape::Grouped => Value::String(format!("r{}", n % 10)),
        };
        record
    }
}

/// The document the bare loop writes for a record: what the sink makes of it, built by hand.
fn bare_document(record: &Value) -> (String, String, Value) {
    let id = format!("order-{}", record["id"]);
    let key = record["customerId"].as_str().expect("key").to_string();
    let document = serde_json::json!({
        "id": id,
        "order_id": record["id"],
        "customerId": key,
        "customer": record["customer"],
        "total": record["total"],
        "currency": record["currency"],
        "comment": record["comment"],
    });
    (id, key, document)
}

fn sink_config(server: &CosmosServer, container: &str, concurrency: usize) -> SinkConfig {
    let text = format!(
        r#"
        [job]
        name = "bench"
        [[source]]
        name = "gen"
        kind = "generator"
        count = 1
        [[sink]]
        name = "documents"
        kind = "cosmos"
        endpoint = "{}"
        key = "{}"
        database = "bench"
        container = "{container}"
        partition_key = "/customerId"
        id = "order-{{order_id}}"
        max_concurrency = {concurrency}
        max_requests_per_second = 1000000
        emulator = true
        [sink.map]
        order_id = "id"
        customerId = "customerId"
        customer = "customer"
        total = "total"
        currency = "currency"
        comment = "comment"
        "#,
        server.endpoint(),
        server.key()
    );
    let config = stevedore::job::parse(&text, Path::new("bench.toml"), &|_| None).expect("config");
    config.sinks[0].clone()
}

async fn create_container(server: &CosmosServer, name: &str) -> ContainerClient {
    let client = server.client().await;
    if let Err(error) = client.create_database("bench", None).await {
        assert!(
            error.status().is_conflict(),
            "creating the database: {error}"
        );
    }
    let database = client.database_client("bench");
    database
        .create_container(
            ContainerProperties::new(name.to_string(), "/customerId".into()),
            None,
        )
        .await
        .expect("container created");
    database
        .container_client(name, None)
        .await
        .expect("container opens")
}

/// Reads every `SAMPLE`th document back and checks it is the one written (the server's query
/// engine is too slow to count tens of thousands of documents).
async fn check_sample(container: &ContainerClient, documents: &[(String, String, Value)]) {
    for (id, key, document) in documents.iter().step_by(SAMPLE) {
        let stored: Value = container
            .read_item(key.clone(), id, None)
            .await
            .unwrap_or_else(|e| panic!("document {id} is missing: {e}"))
            .into_model()
            .expect("a document");
        assert_eq!(stored["total"], document["total"], "document {id}");
    }
}

/// Checks a pass's container and deletes it: the server keeps everything in memory, so every
/// pass meets the same server.
async fn finish(container: &ContainerClient, documents: &[(String, String, Value)]) {
    check_sample(container, documents).await;
    container.delete(None).await.expect("container deleted");
}

/// One in how many documents is read back.
const SAMPLE: usize = 97;

async fn bare(
    container: &ContainerClient,
    documents: &Arc<Vec<(String, String, Value)>>,
    concurrency: usize,
) -> f64 {
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (container, documents, next) = (container.clone(), documents.clone(), next.clone());
        workers.spawn(async move {
            while let Some((id, key, document)) =
                documents.get(next.fetch_add(1, Ordering::Relaxed))
            {
                container
                    .upsert_item(key.clone(), id, document, None)
                    .await
                    .expect("upsert");
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.expect("no panic");
    }
    started.elapsed().as_secs_f64()
}

/// CPU time this process has used so far (user and system), in seconds: what the client side
/// costs, apart from the server's share of the machine.
fn cpu_seconds() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Puts the server on CPU 0 and this process (and the runtime threads it starts next) on the
/// others, so the two never take turns on one core. Without this, on two cores, which threads
/// the scheduler put together changed a loop's rate by up to a half from one round to the
/// next. Does nothing on a single CPU.
fn pin_apart(server: &CosmosServer) {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if cpus < 2 {
        println!("one CPU: server and client share it");
        return;
    }
    let set = |pid: libc::pid_t, cpus: &mut dyn Iterator<Item = usize>| {
        // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity only touch it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for cpu in cpus {
                libc::CPU_SET(cpu, &mut set);
            }
            libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set)
        }
    };
    // Every thread of the server: node runs its event loop and its helpers on several.
    let tasks = std::fs::read_dir(format!("/proc/{}/task", server.pid())).expect("/proc");
    for task in tasks.flatten() {
        if let Ok(tid) = task.file_name().to_string_lossy().parse::<libc::pid_t>() {
            set(tid, &mut std::iter::once(0));
        }
    }
    assert_eq!(set(0, &mut (1..cpus)), 0, "pinning the client");
    println!("server pinned to CPU 0, client to CPUs 1..{}", cpus - 1);
}

fn main() {
    let docs = setting("BENCH_DOCS", 20_000);
    let unit = setting("BENCH_UNIT", 1000);
    let concurrency = setting("BENCH_CONCURRENCY", 16);
    let rounds = setting("BENCH_ROUNDS", 5);
    let shapes: Vec<Shape> = std::env::var("BENCH_SHAPES")
        .unwrap_or_else(|_| "spread,grouped".into())
        .split(',')
        .map(Shape::parse)
        .collect();
    let server = CosmosServer::start();
    if setting("BENCH_PIN", 1) == 1 {
        pin_apart(&server);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "cosmos sink vs bare azure_data_cosmos upsert_item loop: {docs} documents, {unit} per unit, \
         concurrency {concurrency}, local Cosmos DB REST server"
    );
    for shape in shapes {
        let records: Vec<Value> = (0..docs as u64).map(|n| shape.record(n)).collect();
        let documents: Arc<Vec<(String, String, Value)>> =
            Arc::new(records.iter().map(bare_document).collect());
        let (mut bare_rates, mut piped_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        // Round 0 warms up the server (node compiles its hot paths as it goes) and is not counted.
        for round in 0..=rounds {
            // bare, stevedore, stevedore, bare: order and drift within a round cancel out.
            let bare_pass = |pass: usize| {
                let name = format!("bare_{}_{round}_{pass}", shape.name());
                let container = runtime.block_on(create_container(&server, &name));
                let cpu = cpu_seconds();
                let elapsed = runtime.block_on(bare(&container, &documents, concurrency));
                let cpu = cpu_seconds() - cpu;
                runtime.block_on(finish(&container, &documents));
                (elapsed, cpu)
            };
            let first = bare_pass(0);
            let piped_pass = |pass: usize| {
                let name = format!("piped_{}_{round}_{pass}", shape.name());
                let container = runtime.block_on(create_container(&server, &name));
                let units = encode_units(&records, unit, &name);
                let config = Arc::new(sink_config(&server, &name, concurrency));
                let sink = sink::from_config(&config);
                runtime.block_on(sink.prepare(None)).expect("prepare");
                let cpu = cpu_seconds();
                let elapsed = runtime.block_on(consumer_path(sink, config, &units, None));
                let cpu = cpu_seconds() - cpu;
                runtime.block_on(finish(&container, &documents));
                (elapsed, cpu)
            };
            let (second, third) = (piped_pass(1), piped_pass(2));
            let fourth = bare_pass(3);
            let per_doc = |a: (f64, f64), b: (f64, f64)| {
                (
                    2.0 * docs as f64 / (a.0 + b.0),
                    (a.1 + b.1) / (2.0 * docs as f64) * 1e6,
                )
            };
            let ((bare_rate, bare_cpu), (piped_rate, piped_cpu)) =
                (per_doc(first, fourth), per_doc(second, third));
            println!(
                "{:>7} round {round}{}: bare {bare_rate:>7.0} docs/s   stevedore {piped_rate:>7.0} docs/s   ratio {:.3}   (client CPU per document: bare {bare_cpu:.1} µs, stevedore {piped_cpu:.1} µs)",
                shape.name(),
                if round == 0 { " (warm-up)" } else { "" },
                piped_rate / bare_rate,
            );
            if round > 0 {
                bare_rates.push(bare_rate);
                piped_rates.push(piped_rate);
                ratios.push(piped_rate / bare_rate);
            }
        }
        println!(
            "{:>7} median: bare {:.0} docs/s, stevedore {:.0} docs/s, ratio {:.3} (median of the rounds' ratios)",
            shape.name(),
            median(&mut bare_rates),
            median(&mut piped_rates),
            median(&mut ratios)
        );
    }
}

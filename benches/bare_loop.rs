//! The yardstick of stevedore's throughput: a bare program that does only the irreducible
//! work of the same pipeline, on the same Redis. Producers generate the same records
//! (`stevedore::source::generated_record`), encode units in the same wire format byte for byte
//! (checked at start against `DataUnit::encode`) and send them 16 at a time with
//! `send_message_batch`; consumers receive 16 at a time, decode each unit into its records and
//! delete the batch in one transaction. Nothing else: no checkpoints, no counts, no ledger, no
//! heartbeats, no logs. `bench/yardstick.sh` runs it and `stevedore run` alternately and
//! prints both rates and their ratio.
//!
//! ```text
//! bare_loop run --redis URL --records N --producers P --consumers C --unit U
//! ```
//!
//! prints one JSON line: records, wall seconds, records/s, CPU seconds of the producers and of
//! the consumers (their own rusage). `cargo bench` alone runs nothing here.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rsmq_async::{Rsmq, RsmqConnection, RsmqError};
use stevedore::source::generated_record;
use stevedore::unit::{DataUnit, record, unit_id};

/// The queue, in RSMQ's default namespace (stevedore's queues live in their own).
const QUEUE: &str = "bare";
/// Set when every producer has exited: consumers then stop at the first empty receive.
const DONE_KEY: &str = "bare:done";
/// Units per send and per receive.
const BATCH: usize = 16;
/// Records of one generator work item, in units (as stevedore's generator plans them).
const UNITS_PER_ITEM: u64 = 50;
/// Units over this many bytes of records are compressed (stevedore's default).
const COMPRESS_ABOVE: usize = 16384;
/// The generator's seed (stevedore's default).
const SEED: u64 = 0;

struct Settings {
    redis: String,
    records: u64,
    producers: u64,
    consumers: u64,
    unit: u64,
    from: u64,
    to: u64,
}

fn settings(args: &[String]) -> Settings {
    let value = |name: &str| {
        args.iter()
            .position(|arg| arg == name)
            .and_then(|at| args.get(at + 1))
            .cloned()
    };
    let number = |name: &str, default: u64| {
        value(name)
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{name} takes a number"))
            })
            .unwrap_or(default)
    };
    Settings {
        redis: value("--redis").unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
        records: number("--records", 1_000_000),
        producers: number("--producers", 2),
        consumers: number("--consumers", 2),
        unit: number("--unit", 500),
        from: number("--from", 0),
        to: number("--to", 0),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let settings = settings(&args);
    match args.first().map(String::as_str) {
        Some("run") => coordinate(&settings),
        Some("produce") => runtime().block_on(produce(&settings)),
        Some("consume") => runtime().block_on(consume(&settings)),
        _ => println!("bare_loop: run by bench/yardstick.sh; nothing to do under `cargo bench`"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

async fn connect(url: &str) -> (Rsmq, redis::aio::MultiplexedConnection) {
    let client = redis::Client::open(url).expect("a Redis URL");
    let connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is reachable");
    let rsmq = Rsmq::new_with_connection(connection.clone(), false, None)
        .await
        .expect("RSMQ scripts load");
    (rsmq, connection)
}

/// Starts the producers and consumers, waits for them, prints the result.
fn coordinate(settings: &Settings) {
    check_wire_format(settings.unit);
    runtime().block_on(async {
        let (mut rsmq, mut redis) = connect(&settings.redis).await;
        match rsmq.delete_queue(QUEUE).await {
            Ok(()) | Err(RsmqError::QueueNotFound) => {}
            Err(error) => panic!("cannot delete the old queue: {error}"),
        }
        rsmq.create_queue(
            QUEUE,
            Some(Duration::from_secs(30)),
            Some(Duration::ZERO),
            Some(-1),
        )
        .await
        .expect("the queue is created");
        redis::cmd("DEL")
            .arg(DONE_KEY)
            .query_async::<()>(&mut redis)
            .await
            .expect("the done flag is cleared");
    });
    let exe = std::env::current_exe().expect("this program's path");
    let started = Instant::now();
    let spawn = |role: &str, from: u64, to: u64| {
        Command::new(&exe)
            .args([role, "--redis", &settings.redis, "--unit"])
            .arg(settings.unit.to_string())
            .args(["--from", &from.to_string(), "--to", &to.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("a worker starts")
    };
    let consumers: Vec<_> = (0..settings.consumers)
        .map(|_| spawn("consume", 0, 0))
        .collect();
    // Producers share the records by whole work items, as stevedore's claim them.
    let per_item = settings.unit * UNITS_PER_ITEM;
    let items = settings.records.div_ceil(per_item);
    let producers: Vec<_> = (0..settings.producers)
        .map(|p| {
            let first = items * p / settings.producers * per_item;
            let last = (items * (p + 1) / settings.producers * per_item).min(settings.records);
            spawn("produce", first, last)
        })
        .collect();
    let producer_cpu: f64 = producers.into_iter().map(|child| reap(child).1).sum();
    runtime().block_on(async {
        let (_, mut redis) = connect(&settings.redis).await;
        redis::cmd("SET")
            .arg(DONE_KEY)
            .arg(1)
            .query_async::<()>(&mut redis)
            .await
            .expect("the done flag is set");
    });
    let mut consumed = 0u64;
    let mut consumer_cpu = 0.0;
    for child in consumers {
        let (output, cpu) = reap(child);
        consumed += output
            .trim()
            .parse::<u64>()
            .expect("a consumer prints its count");
        consumer_cpu += cpu;
    }
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(consumed, settings.records, "every record was consumed once");
    println!(
        "{{\"records\":{consumed},\"seconds\":{seconds:.3},\"records_per_s\":{:.0},\
         \"producer_cpu_s\":{producer_cpu:.3},\"consumer_cpu_s\":{consumer_cpu:.3}}}",
        consumed as f64 / seconds
    );
}

/// Waits for a child; returns what it printed and the CPU seconds it used.
fn reap(mut child: std::process::Child) -> (String, f64) {
    let mut output = String::new();
    if let Some(mut out) = child.stdout.take() {
        std::io::Read::read_to_string(&mut out, &mut output).expect("the child's output");
    }
    let mut status = 0;
    // SAFETY: wait4 only writes the status and the usage it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut usage) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "a worker failed"
    );
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    (output, seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// The unit of records `start..end`, as stevedore's producer writes it.
fn encode_unit(start: u64, end: u64, unit: u64) -> Vec<u8> {
    let per_item = unit * UNITS_PER_ITEM;
    let id = unit_id(
        "yardstick",
        "bare",
        "synthetic",
        start / per_item,
        (start % per_item) / unit,
    );
    let mut records = Vec::with_capacity((end - start) as usize * 160);
    records.push(b'[');
    for n in start..end {
        if n > start {
            records.push(b',');
        }
        serde_json::to_writer(&mut records, &generated_record(SEED, n)).expect("records serialize");
    }
    records.push(b']');
    let mut out = Vec::with_capacity(records.len() / 2 + 200);
    write!(
        out,
        "{{\"v\":1,\"id\":{},\"source\":\"synthetic\",\"origin\":\"generator\",\
         \"first_line\":{},\"last_line\":{end},\"count\":{},",
        serde_json::to_string(&id).expect("strings serialize"),
        start + 1,
        end - start
    )
    .expect("writing to memory");
    if records.len() > COMPRESS_ABOVE {
        let packed = zstd::bulk::compress(&records, 1).expect("zstd in memory");
        out.extend_from_slice(b"\"records_zstd\":\"");
        out.extend_from_slice(BASE64.encode(packed).as_bytes());
        out.extend_from_slice(b"\"}");
    } else {
        out.extend_from_slice(b"\"records\":");
        out.extend_from_slice(&records);
        out.push(b'}');
    }
    out
}

/// Stops at once if the bare units are not stevedore's, byte for byte.
fn check_wire_format(unit: u64) {
    for (start, end) in [(0, unit), (unit, unit + 3)] {
        let per_item = unit * UNITS_PER_ITEM;
        let stevedore = DataUnit {
            id: unit_id(
                "yardstick",
                "bare",
                "synthetic",
                start / per_item,
                (start % per_item) / unit,
            ),
            source: "synthetic".into(),
            origin: "generator".into(),
            first_line: start + 1,
            last_line: end,
            records: (start..end)
                .map(|n| record(&generated_record(SEED, n)))
                .collect(),
            lines: Vec::new(),
            rejects: Vec::new(),
        }
        .encode(COMPRESS_ABOVE);
        assert!(
            encode_unit(start, end, unit) == stevedore,
            "the bare loop's units differ from stevedore's"
        );
    }
}

async fn produce(settings: &Settings) {
    let (mut rsmq, _) = connect(&settings.redis).await;
    let mut batch = Vec::with_capacity(BATCH);
    let mut start = settings.from;
    while start < settings.to {
        let end = (start + settings.unit).min(settings.to);
        batch.push(encode_unit(start, end, settings.unit));
        if batch.len() == BATCH || end == settings.to {
            rsmq.send_message_batch(QUEUE, std::mem::take(&mut batch), Some(Duration::ZERO))
                .await
                .expect("units are sent");
        }
        start = end;
    }
}

async fn consume(settings: &Settings) {
    let (mut rsmq, mut redis) = connect(&settings.redis).await;
    let key = format!("rsmq:{QUEUE}");
    let mut records = 0u64;
    loop {
        let messages = rsmq
            .receive_message_batch::<Vec<u8>>(QUEUE, Some(Duration::from_secs(30)), BATCH as u32)
            .await
            .expect("units are received");
        if messages.is_empty() {
            let done: bool = redis::cmd("EXISTS")
                .arg(DONE_KEY)
                .query_async(&mut redis)
                .await
                .expect("the done flag is read");
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let mut delete = redis::pipe();
        delete.atomic();
        for message in &messages {
            let unit = DataUnit::decode(&message.message).expect("units decode");
            records += unit.records.len() as u64;
            delete
                .cmd("ZREM")
                .arg(&key)
                .arg(&message.id)
                .ignore()
                .cmd("HDEL")
                .arg(format!("{key}:Q"))
                .arg(&message.id)
                .arg(format!("{}:rc", message.id))
                .arg(format!("{}:fr", message.id))
                .ignore();
        }
        delete
            .query_async::<()>(&mut redis)
            .await
            .expect("units are deleted");
    }
    println!("{records}");
}

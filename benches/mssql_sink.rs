//! The `mssql` sink's consumer path against a bare tiberius bulk-insert loop, in one run
//! against the same TDS test server (testkit/src/tds). `bench/mssql.sh` runs it.
//!
//! - bare: rows already converted to tiberius values (not timed), then per chunk
//!   `bulk_insert` + `send` + `finalize` on one connection: the most a client can do.
//! - stevedore: per unit, what a consumer does after receiving it: decode the envelope, map the
//!   records, and `Sink::write` (transaction, bulk load, fence check, ledger entry, commit),
//!   up to the sink's `max_concurrency` units at once, with a fencing token as a run's
//!   consumers have (prepared first, as the run's supervisor does).
//!
//! The two loops take turns going first, round by round, so neither always meets a warmer or
//! busier machine; the summary is the median of the per-round ratios.
//!
//! Settings (environment): `BENCH_ROWS` (default 200000), `BENCH_UNIT` (rows per unit and per
//! bare chunk, default 1000), `BENCH_CONCURRENCY` (default 4, the sink's default `max_concurrency`), `BENCH_ROUNDS` (default 5),
//! `BENCH_FENCE` (default 1; 0 writes without a fencing token).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use stevedore::sink;
use stevedore::source::generated_record;
use stevedore::unit::DataUnit;
use testkit::tds;
use tiberius::{IntoSql, TokenRow};

use common::{consumer_path, encode_units, median, setting};

const COLUMNS: [&str; 5] = ["id", "customer", "total", "currency", "comment"];

fn create_table(name: &str) -> String {
    format!(
        "CREATE TABLE {name} (id bigint NOT NULL PRIMARY KEY, customer nvarchar(20) NOT NULL, \
         total bigint NOT NULL, currency nvarchar(3) NOT NULL, comment nvarchar(100) NULL)"
    )
}

/// The generated records as tiberius rows, the way a hand-written loader would hold them.
fn token_row(record: &Value) -> TokenRow<'static> {
    let mut row = TokenRow::with_capacity(COLUMNS.len());
    row.push(record["id"].as_i64().into_sql());
    row.push(record["customer"].as_str().map(str::to_string).into_sql());
    row.push(record["total"].as_i64().into_sql());
    row.push(record["currency"].as_str().map(str::to_string).into_sql());
    row.push(record["comment"].as_str().map(str::to_string).into_sql());
    row
}

fn sink_config(
    server: &tds::TdsServer,
    table: &str,
    concurrency: usize,
    unit: usize,
) -> stevedore::config::SinkConfig {
    let text = format!(
        r#"
        [job]
        name = "bench"
        [[source]]
        name = "gen"
        kind = "generator"
        count = 1
        [[sink]]
        name = "warehouse"
        kind = "mssql"
        connection = "{}"
        table = "{table}"
        max_concurrency = {concurrency}
        batch_rows = {unit}
        [sink.map]
        id = {{ from = "id", type = "bigint" }}
        customer = "customer"
        total = "total"
        currency = "currency"
        comment = "comment"
        "#,
        server.connection_string()
    );
    let config = stevedore::job::parse(&text, Path::new("bench.toml"), &|_| None).expect("config");
    config.sinks[0].clone()
}

async fn execute(connection: &str, sql: &str) {
    let mut client = tds::connect(connection).await.expect("connects");
    client
        .simple_query(sql)
        .await
        .expect("runs")
        .into_results()
        .await
        .expect("runs");
}

async fn bare(connection: &str, table: &str, chunks: &[Vec<TokenRow<'static>>]) -> f64 {
    let mut client = tds::connect(connection).await.expect("connects");
    let started = Instant::now();
    for chunk in chunks {
        let mut request = client
            .bulk_insert_columns(table, &COLUMNS)
            .await
            .expect("bulk insert");
        for row in chunk {
            request.send(row.clone()).await.expect("send");
        }
        request.finalize().await.expect("finalize");
    }
    started.elapsed().as_secs_f64()
}

fn main() {
    let rows = setting("BENCH_ROWS", 200_000);
    let unit = setting("BENCH_UNIT", 1000);
    let concurrency = setting("BENCH_CONCURRENCY", 4);
    let rounds = setting("BENCH_ROUNDS", 5);
    let fence = (setting("BENCH_FENCE", 1) != 0).then(|| sink::Fence {
        job: "bench".into(),
        token: 1,
    });
    let records: Vec<Value> = (0..rows as u64).map(|n| generated_record(7, n)).collect();
    let chunks: Vec<Vec<TokenRow<'static>>> = records
        .chunks(unit)
        .map(|chunk| chunk.iter().map(token_row).collect())
        .collect();
    let server = tds::TdsServer::start();
    let connection = server.connection_string();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "mssql sink vs bare tiberius bulk_insert: {rows} rows, {unit} rows per unit/chunk, \
         concurrency {concurrency}, fencing token {}, TDS test server",
        if fence.is_some() { "on" } else { "off" }
    );
    let (mut bare_rates, mut piped_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let units = encode_units(&records, unit, &format!("r{round}"));
        let (bare_table, piped_table) = (format!("bare_{round}"), format!("piped_{round}"));
        runtime.block_on(execute(&connection, &create_table(&bare_table)));
        runtime.block_on(execute(&connection, &create_table(&piped_table)));
        let config = Arc::new(sink_config(&server, &piped_table, concurrency, unit));
        let sink = sink::from_config(&config);
        runtime
            .block_on(sink.prepare(fence.as_ref()))
            .expect("prepare");
        let client_started = Instant::now();
        for bytes in &units {
            let unit = DataUnit::decode(bytes).expect("decodes");
            std::hint::black_box(stevedore::worker::map_unit(&config, &unit, true));
        }
        let client_s = client_started.elapsed().as_secs_f64();
        let (bare_s, piped_s) = if round % 2 == 1 {
            let bare_s = runtime.block_on(bare(&connection, &bare_table, &chunks));
            (
                bare_s,
                runtime.block_on(consumer_path(sink, config, &units, fence.clone())),
            )
        } else {
            let piped_s = runtime.block_on(consumer_path(sink, config, &units, fence.clone()));
            (
                runtime.block_on(bare(&connection, &bare_table, &chunks)),
                piped_s,
            )
        };
        let (bare_rate, piped_rate) = (rows as f64 / bare_s, rows as f64 / piped_s);
        println!(
            "round {round}: bare {bare_rate:>9.0} rows/s   stevedore {piped_rate:>9.0} rows/s   ratio {:.3}   (decode + map alone: {:.0} rows/s)",
            piped_rate / bare_rate,
            rows as f64 / client_s
        );
        bare_rates.push(bare_rate);
        piped_rates.push(piped_rate);
        ratios.push(piped_rate / bare_rate);
    }
    let (bare_median, piped_median) = (median(&mut bare_rates), median(&mut piped_rates));
    println!(
        "median: bare {bare_median:.0} rows/s, stevedore {piped_median:.0} rows/s, \
         ratio {:.3} (median of the rounds' ratios)",
        median(&mut ratios)
    );
}

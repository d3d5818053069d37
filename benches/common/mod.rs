//! What the sink benchmarks share: settings from the environment, units as a producer makes
//! them, the consumer's path over them, and medians.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use stevedore::config::SinkConfig;
use stevedore::sink::{Fence, Sink};
use stevedore::unit::DataUnit;

/// The environment variable `name` as a number, or `default`.
pub fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `records` cut into encoded units of `unit` records, ids unique to `label`.
pub fn encode_units(records: &[Value], unit: usize, label: &str) -> Vec<Vec<u8>> {
    records
        .chunks(unit)
        .enumerate()
        .map(|(n, chunk)| {
            DataUnit {
                id: format!("bench/{label}/gen/{n}.0"),
                source: "gen".into(),
                origin: "generator".into(),
                first_line: (n * unit + 1) as u64,
                last_line: ((n + 1) * unit) as u64,
                records: chunk.iter().map(stevedore::unit::record).collect(),
                lines: Vec::new(),
                rejects: Vec::new(),
            }
            .encode(16 * 1024)
        })
        .collect()
}

/// What a consumer does with each unit after receiving it (decode, map, `Sink::write` with the
/// run's fencing token if any), `Sink::concurrency` units at once; every record must be
/// written. Returns the seconds taken.
pub async fn consumer_path(
    sink: Arc<dyn Sink>,
    config: Arc<SinkConfig>,
    units: &[Vec<u8>],
    fence: Option<Fence>,
) -> f64 {
    let started = Instant::now();
    let mut running = tokio::task::JoinSet::new();
    for bytes in units {
        let bytes = bytes.clone();
        if running.len() >= sink.concurrency() {
            running
                .join_next()
                .await
                .expect("running")
                .expect("no panic");
        }
        let (sink, config, fence) = (sink.clone(), config.clone(), fence.clone());
        running.spawn(async move {
            let unit = DataUnit::decode(&bytes).expect("decodes");
            let mut batch = stevedore::worker::map_unit(&config, &unit, sink.reads_fields());
            batch.fence = fence;
            let outcome = sink.write(Arc::new(batch)).await.expect("writes");
            assert!(outcome.failures.is_empty(), "{:?}", outcome.failures);
            assert_eq!(
                outcome.written as usize,
                unit.records.len(),
                "records written"
            );
        });
    }
    while let Some(done) = running.join_next().await {
        done.expect("no panic");
    }
    started.elapsed().as_secs_f64()
}

/// The median of `values` (the upper one of an even count).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

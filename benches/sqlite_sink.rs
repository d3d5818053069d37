//! The SQLite sink's write path, one 500-row unit per write, with and without a fencing token
//! (the token adds one upsert of the job's fence row to each unit's transaction).
//! `cargo bench --bench sqlite_sink`

use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use stevedore::mapping::Row;
use stevedore::sink::{Batch, Fence, Sink};

const ROWS: usize = 500;

fn sink(dir: &Path, table: &str) -> Arc<dyn Sink> {
    let text = format!(
        "[job]\nname = \"bench\"\n[[source]]\nname = \"gen\"\nkind = \"generator\"\ncount = 1\n\
         [[sink]]\nname = \"local\"\nkind = \"sqlite\"\npath = \"{}/out.db\"\ntable = \"{table}\"\n",
        dir.display()
    );
    let config = stevedore::job::parse(&text, Path::new("bench.toml"), &|_| None).unwrap();
    stevedore::sink::from_config(&config.sinks[0])
}

fn batch(unit: u64, fence: Option<Fence>) -> Arc<Batch> {
    let rows = (0..ROWS)
        .map(|index| {
            let row = serde_json::json!({"id": unit * ROWS as u64 + index as u64,
                                         "customer": format!("customer-{}", index % 97),
                                         "amount": index as f64 * 1.25});
            (index, Row::from_object(row.as_object().unwrap().clone()))
        })
        .collect();
    Arc::new(Batch {
        unit_id: format!("bench/run/gen/{unit}"),
        rows,
        failures: Vec::new(),
        fence,
    })
}

fn write(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("sqlite_unit_500_rows");
    group.throughput(Throughput::Elements(ROWS as u64));
    for (label, fenced) in [("unfenced", false), ("fenced", true)] {
        let sink = sink(dir.path(), label);
        let fence = fenced.then(|| Fence {
            job: "bench".into(),
            token: 1,
        });
        runtime.block_on(sink.prepare(fence.as_ref())).unwrap();
        let mut unit = 0;
        group.bench_function(label, |b| {
            b.iter(|| {
                unit += 1;
                runtime
                    .block_on(sink.write(batch(unit, fence.clone())))
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, write);
criterion_main!(benches);

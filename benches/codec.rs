//! Unit encode/decode, mapping and the cosmos sink's document shaping: the per-record work on the producer and consumer hot paths.
//! `cargo bench --bench codec`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use stevedore::mapping::Mapping;
use stevedore::sink::Batch;
use stevedore::sink::cosmos::document::{IdTemplate, PartitionKeyPath, Shape};
use stevedore::source::generated_record;
use stevedore::unit::{DataUnit, record};

fn unit(records: u64) -> DataUnit {
    DataUnit {
        id: "bench/run/synthetic/0.0".into(),
        source: "synthetic".into(),
        origin: "generator".into(),
        first_line: 1,
        last_line: records,
        records: (0..records)
            .map(|n| record(&generated_record(7, n)))
            .collect(),
        lines: Vec::new(),
        rejects: Vec::new(),
    }
}

fn codec(c: &mut Criterion) {
    let unit = unit(500);
    let mut group = c.benchmark_group("unit_500_records");
    group.throughput(Throughput::Elements(500));
    for (name, threshold) in [("inline", usize::MAX), ("zstd", 16 * 1024)] {
        let bytes = unit.encode(threshold);
        group.bench_function(format!("encode_{name}"), |b| {
            b.iter(|| black_box(unit.encode(threshold)))
        });
        group.bench_function(format!("decode_{name}"), |b| {
            b.iter(|| black_box(DataUnit::decode(black_box(&bytes)).unwrap()))
        });
    }
    let table: toml::Table = toml::from_str(
        r#"id = "id"
amount = { from = "total", type = "real" }
note = { from = "comment", default = "" }"#,
    )
    .unwrap();
    let mapping = Mapping::parse(&table, "map", &mut Default::default()).unwrap();
    group.bench_function("map_3_columns", |b| {
        b.iter(|| {
            for record in &unit.records {
                black_box(mapping.apply_raw(record).unwrap());
            }
        })
    });
    group.finish();
}

/// The cosmos sink's work on a mapped unit: ids, partition keys, document text, grouping.
fn cosmos_documents(c: &mut Criterion) {
    let table: toml::Table = toml::from_str(
        r#"order_id = "id"
customerId = "customer"
total = "total"
currency = "currency"
comment = "comment""#,
    )
    .unwrap();
    let mapping = Mapping::parse(&table, "map", &mut Default::default()).unwrap();
    let shape = Shape {
        id: IdTemplate::parse("order-{order_id}").unwrap(),
        key: PartitionKeyPath::parse("/customerId").unwrap(),
    };
    let batch = Batch {
        unit_id: "bench".into(),
        rows: unit(500)
            .records
            .iter()
            .enumerate()
            .map(|(index, record)| (index, mapping.apply_raw(record).unwrap()))
            .collect(),
        failures: Vec::new(),
        fence: None,
    };
    let mut group = c.benchmark_group("unit_500_records");
    group.throughput(Throughput::Elements(500));
    group.bench_function("cosmos_requests", |b| {
        b.iter(|| black_box(shape.requests(black_box(&batch))))
    });
    group.finish();
}

criterion_group!(benches, codec, cosmos_documents);
criterion_main!(benches);

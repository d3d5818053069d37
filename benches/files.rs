//! The files source's reading path: parsing JSONL lines and CSV rows into records, the
//! producer's per-record work before units are cut; and one big JSONL file's byte ranges
//! read into units by 1 and by 2 threads, what splitting a file buys the producers when
//! nothing else competes for the cores. `cargo bench --bench files`

use std::io::Write;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use stevedore::source::{FileFormat, FilesSource, OpenContext, Source, WorkItem};

#[path = "common/jsonl_units.rs"]
mod jsonl_units;
use jsonl_units::read_jsonl_item_into_units;

const RECORDS: u64 = 20_000;

/// Writes `RECORDS` records like `bench/throughput.sh` does, in `format`.
fn write_file(dir: &std::path::Path, format: FileFormat) -> String {
    let (name, header) = match format {
        FileFormat::Jsonl => ("input.jsonl", None),
        FileFormat::Csv => ("input.csv", Some("id,customer,amount,note")),
    };
    let path = dir.join(name);
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    if let Some(header) = header {
        writeln!(file, "{header}").unwrap();
    }
    for n in 1..=RECORDS {
        match format {
            FileFormat::Jsonl => writeln!(
                file,
                "{}",
                serde_json::json!({"id": n, "customer": format!("customer-{}", n % 977),
                                   "amount": n as f64 * 1.25, "note": "plain \"quoted\" text"})
            ),
            FileFormat::Csv => writeln!(
                file,
                "{n},customer-{},{:.2},\"plain, \"\"quoted\"\" text\"",
                n % 977,
                n as f64 * 1.25
            ),
        }
        .unwrap();
    }
    path.display().to_string()
}

fn read(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("files_20000_records");
    group.throughput(Throughput::Elements(RECORDS));
    for (label, format) in [("jsonl", FileFormat::Jsonl), ("csv", FileFormat::Csv)] {
        let path = write_file(dir.path(), format);
        let source = FilesSource::new("bench", &path, format);
        let item = source.plan(500).unwrap().remove(0);
        group.bench_function(label, |b| {
            b.iter(|| {
                let entries = source
                    .open(&item, &OpenContext::local("bench", 16 << 20))
                    .unwrap();
                black_box(entries.map(Result::unwrap).count())
            })
        });
    }
    group.finish();
}

/// Records of the big file, as `bench/split_file.sh` writes them (about 115 bytes each).
const BIG_RECORDS: u64 = 200_000;

/// Writes `BIG_RECORDS` JSONL records to `dir/big.jsonl`.
fn write_big_file(dir: &std::path::Path) -> String {
    let path = dir.join("big.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for n in 1..=BIG_RECORDS {
        writeln!(
            file,
            r#"{{"id":{n},"customer":"customer-{}","amount":{},"note":"plain \"quoted\" text","tags":["a","b"]}}"#,
            n % 977,
            n as f64 * 1.25
        )
        .unwrap();
    }
    path.display().to_string()
}

/// Reads the work items in turn, claimed from `next`, into encoded units as a producer does;
/// returns the records read.
fn read_items_into_units(source: &FilesSource, items: &[WorkItem], next: &AtomicUsize) -> u64 {
    let mut read = 0;
    while let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) {
        read += read_jsonl_item_into_units(source, item);
    }
    read
}

fn read_ranges(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_big_file(dir.path());
    let source = FilesSource::new("big", &path, FileFormat::Jsonl).with_split_bytes(1 << 20);
    let items = source.plan(500).unwrap();
    let mut group = c.benchmark_group("files_one_big_jsonl_in_ranges");
    group.throughput(Throughput::Elements(BIG_RECORDS));
    group.sample_size(10);
    for threads in [1, 2] {
        group.bench_function(format!("{threads}_threads_{}_ranges", items.len()), |b| {
            b.iter(|| {
                let next = AtomicUsize::new(0);
                let read: u64 = std::thread::scope(|scope| {
                    let readers: Vec<_> = (0..threads)
                        .map(|_| scope.spawn(|| read_items_into_units(&source, &items, &next)))
                        .collect();
                    readers
                        .into_iter()
                        .map(|reader| reader.join().unwrap())
                        .sum()
                });
                assert_eq!(read, BIG_RECORDS);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, read, read_ranges);
criterion_main!(benches);

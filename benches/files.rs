//! The files source's reading path: parsing JSONL lines and CSV rows into records, the
//! producer's per-record work before units are cut. `cargo bench --bench files`

use std::io::Write;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use stevedore::source::{FileFormat, FilesSource, OpenContext, Source};

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

criterion_group!(benches, read);
criterion_main!(benches);

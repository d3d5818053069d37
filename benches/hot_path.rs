//! The per-record work of the two hot paths, for instruction counts under callgrind
//! (`bench/instructions.sh`), which stay comparable across days when wall times do not:
//!
//! - `producer UNITS`: generate each record, serialize it into its unit's array, encode
//!   units of 500 (zstd above 16 KiB), as a run's producer does;
//! - `consumer UNITS`: decode those units and map every record with the pass-through mapping
//!   (what a sink that reads fields gets without a `[sink.map]`);
//! - `jsonl FILE`: read a JSONL file with the files source, put each record into its unit's
//!   array and encode units of 500, as a run's producer reading a file does.
//!
//! The script runs each mode at two sizes and divides the difference by the records between
//! them, so start-up does not count, and takes the producer's count off the consumer's (which
//! encodes its units first).
//! `cargo bench` alone runs nothing here.

use std::hint::black_box;

use stevedore::mapping::Mapping;
use stevedore::source::{FileFormat, FilesSource, Source, generated_record};
use stevedore::unit::{DataUnit, OutgoingUnit, RecordArray};

#[path = "common/jsonl_units.rs"]
mod jsonl_units;
use jsonl_units::read_jsonl_item_into_units;

const UNIT: u64 = 500;
const COMPRESS_ABOVE: usize = 16 * 1024;

/// Unit `index` encoded as the producer does: each record serialized once, straight into the
/// unit's array (`RecordArray`), then the envelope (zstd above 16 KiB).
fn encoded_unit(index: u64) -> Vec<u8> {
    let start = index * UNIT;
    let mut records = RecordArray::default();
    for n in start..start + UNIT {
        records.push(&generated_record(0, n));
    }
    OutgoingUnit {
        id: format!("bench/run/synthetic/0.{index}"),
        source: "synthetic".into(),
        origin: "generator".into(),
        first_line: start + 1,
        last_line: start + UNIT,
        records,
        lines: Vec::new(),
        rejects: Vec::new(),
    }
    .encode(COMPRESS_ABOVE)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let units: u64 = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(0);
    match args.first().map(String::as_str) {
        Some("producer") => {
            for index in 0..units {
                black_box(encoded_unit(index));
            }
        }
        Some("consumer") => {
            let encoded: Vec<Vec<u8>> = (0..units).map(encoded_unit).collect();
            let mapping = Mapping::passthrough();
            // The encoding above is the `producer` mode's work: the script subtracts it.
            for bytes in &encoded {
                let unit = DataUnit::decode(bytes).expect("units decode");
                for record in &unit.records {
                    black_box(mapping.apply_raw(record).expect("records map"));
                }
            }
        }
        Some("jsonl") => {
            let source = FilesSource::new("bench", &args[1], FileFormat::Jsonl).with_split_bytes(0);
            let item = source.plan(500).expect("the file plans").remove(0);
            black_box(read_jsonl_item_into_units(&source, &item));
        }
        _ => println!("hot_path: run by bench/instructions.sh; nothing to do under `cargo bench`"),
    }
}

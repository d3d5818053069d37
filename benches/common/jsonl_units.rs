//! What the producer benchmarks share: a JSONL work item read into encoded units of 500
//! records, as a run's producer does (records carried as their checked text, units encoded
//! with zstd above 16 KiB).

use std::hint::black_box;

use stevedore::source::{Entry, FilesSource, OpenContext, Source, WorkItem};
use stevedore::unit::{OutgoingUnit, RecordArray};

/// Records per unit.
pub const UNIT_RECORDS: usize = 500;

/// Reads `item` of `source` (a JSONL file) into units of [`UNIT_RECORDS`], each encoded;
/// returns the records read.
pub fn read_jsonl_item_into_units(source: &FilesSource, item: &WorkItem) -> u64 {
    let entries = source
        .open(item, &OpenContext::local("bench", 16 << 20))
        .expect("the file opens");
    let (mut records, mut read, mut chunk) = (RecordArray::default(), 0u64, 0u64);
    let mut cut = |records: &mut RecordArray, read: u64| {
        let count = records.len() as u64;
        let unit = OutgoingUnit {
            id: format!("bench/run/file/{}.{chunk}", item.index),
            source: "file".into(),
            origin: item.origin.clone(),
            first_line: read + 1 - count,
            last_line: read,
            records: std::mem::take(records),
            lines: Vec::new(),
            rejects: Vec::new(),
        };
        chunk += 1;
        black_box(unit.encode(16 * 1024));
    };
    for entry in entries {
        match entry.expect("the file reads") {
            Entry::Text { record, .. } => records.push_text(&record),
            other => panic!("the bench file holds only JSONL records: {other:?}"),
        };
        read += 1;
        if records.len() == UNIT_RECORDS {
            cut(&mut records, read);
        }
    }
    if !records.is_empty() {
        cut(&mut records, read);
    }
    read
}

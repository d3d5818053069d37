//! Deterministic synthetic records: the same `count` and `seed` always give the same records,
//! each with a unique integer `id` (1..=count). For demos, tests and benchmarks.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Entries, Entry, OpenContext, Source, SourceError, SourceKind, WorkItem};
use crate::config::SourceConfig;
use crate::settings::{KindSettings, Section};

/// The `generator` kind.
pub(super) const KIND: SourceKind = SourceKind {
    name: "generator",
    read,
    build,
};

/// Settings of the `generator` source.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct GeneratorConfig {
    /// How many records.
    pub count: u64,
    /// Seed of the record contents.
    #[serde(default)]
    pub seed: u64,
}

impl KindSettings for GeneratorConfig {
    fn basis(&self) -> String {
        format!("{} {}", self.count, self.seed)
    }
}

fn read(section: &mut Section<'_>) -> Option<Arc<dyn KindSettings>> {
    let config: GeneratorConfig = section.read()?;
    Some(Arc::new(config))
}

fn build(config: &SourceConfig) -> Box<dyn Source> {
    let generator: &GeneratorConfig = config.settings();
    Box::new(GeneratorSource::new(
        &config.name,
        generator.count,
        generator.seed,
    ))
}

/// Units per generator work item: large enough to amortise a claim, small enough to balance.
const UNITS_PER_ITEM: u64 = 50;

/// The `generator` source.
pub struct GeneratorSource {
    name: String,
    count: u64,
    seed: u64,
}

impl GeneratorSource {
    /// A generator of `count` records from `seed`.
    pub fn new(name: &str, count: u64, seed: u64) -> GeneratorSource {
        GeneratorSource {
            name: name.to_string(),
            count,
            seed,
        }
    }
}

/// Record number `n` (0-based) of the stream seeded with `seed`.
pub fn record(seed: u64, n: u64) -> Value {
    let hash = splitmix64(seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let currency = ["EUR", "USD", "GBP", "NOK"][(hash >> 40) as usize % 4];
    let mut record = json!({
        "id": n + 1,
        "customer": format!("c{:05}", hash % 10_000),
        "total": (hash >> 16) % 100_000,
        "currency": currency,
        "ts": 1_700_000_000 + (hash >> 20) % 31_536_000,
    });
    if !hash.is_multiple_of(3) {
        record["comment"] = Value::String(format!("order {} for c{:05}", n + 1, hash % 10_000));
    }
    record
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Source for GeneratorSource {
    fn plan(&self, unit_records: usize) -> Result<Vec<WorkItem>, SourceError> {
        let per_item = unit_records as u64 * UNITS_PER_ITEM;
        Ok((0..self.count.div_ceil(per_item))
            .map(|index| WorkItem {
                source: self.name.clone(),
                index,
                origin: "generator".to_string(),
                range: Some((index * per_item, ((index + 1) * per_item).min(self.count))),
                bytes: None,
            })
            .collect())
    }

    fn open(&self, item: &WorkItem, _context: &OpenContext) -> Result<Entries, SourceError> {
        // Generated records are a few dozen bytes: never near the cap.
        let (start, end) = item.range.unwrap_or((0, 0));
        let seed = self.seed;
        Ok(Box::new((start..end).map(move |n| {
            Ok(Entry::Record {
                line: n + 1,
                value: record(seed, n),
            })
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_deterministic_with_unique_ids_across_items() {
        let source = GeneratorSource::new("synthetic", 60_123, 7);
        let items = source.plan(500).unwrap();
        assert_eq!(items.len(), 3);
        let mut ids = Vec::new();
        for item in &items {
            for entry in source
                .open(item, &OpenContext::local("j", usize::MAX))
                .unwrap()
            {
                let Entry::Record { value, .. } = entry.unwrap() else {
                    panic!("generator never rejects")
                };
                ids.push(value["id"].as_u64().unwrap());
            }
        }
        assert_eq!(ids, (1..=60_123).collect::<Vec<_>>());
        assert_eq!(record(7, 5), record(7, 5));
        assert_ne!(record(7, 5), record(8, 5));
    }
}

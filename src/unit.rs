//! The data unit: a batch of records that crosses the queue, its deterministic id, and its
//! wire encoding.
//!
//! The envelope is plain JSON so a producer in any language can write units:
//!
//! ```json
//! {"v":1,"id":"demo/20261122T153000Z/orders/0.3","source":"orders","origin":"data/orders-1.jsonl",
//!  "first_line":1501,"last_line":2000,"count":500,"records":[{"id":1}, ...],
//!  "rejects":[{"line":1733,"raw":"{oops","reason":"invalid JSON: ..."}]}
//! ```
//!
//! When the records' JSON is larger than a threshold it is zstd-compressed and base64-encoded
//! into `records_zstd` instead of `records`. `rejects` carries source lines that could not be
//! parsed, so that each sink dead-letters them with their reason.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

mod record_text;

pub use record_text::RecordText;

/// One record as the JSON text its producer wrote. Consumers parse only the fields their
/// mappings need, and dead letters carry the record exactly as it was read.
pub type Record = Box<RawValue>;

/// A record from a JSON value (producers build values; units carry text).
pub fn record(value: &Value) -> Record {
    serde_json::value::to_raw_value(value).expect("JSON values always serialize")
}

/// Version of the envelope format this build writes and reads.
pub const WIRE_VERSION: u32 = 1;

/// A batch of records read from one place in one source.
#[derive(Debug, Clone)]
pub struct DataUnit {
    /// Deterministic id `job/run/source/item.chunk`: the same input always yields the same id,
    /// which is what makes redelivered and re-produced units idempotent at the sinks.
    pub id: String,
    /// The source's name.
    pub source: String,
    /// Where the records came from: a file path, or `generator`.
    pub origin: String,
    /// First source line (or record number) in this unit, 1-based.
    pub first_line: u64,
    /// Last source line (or record number) in this unit.
    pub last_line: u64,
    /// The records, JSON objects as text.
    pub records: Vec<Record>,
    /// The source line of each record, when they are not simply `first_line`, `first_line + 1`,
    /// ... (blank or rejected lines between them); empty otherwise. See [`DataUnit::record_line`].
    pub lines: Vec<u64>,
    /// Source lines that could not be parsed into records.
    pub rejects: Vec<Reject>,
}

/// A piece of input that never became a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reject {
    /// Line (or record number) in the origin.
    pub line: u64,
    /// The raw text, as read.
    pub raw: String,
    /// Why it was rejected.
    pub reason: String,
}

/// Builds the deterministic unit id for chunk `chunk` of work item `item` of a source.
pub fn unit_id(job: &str, run: &str, source: &str, item: u64, chunk: u64) -> String {
    format!("{job}/{run}/{source}/{item}.{chunk}")
}

/// Why bytes from the queue are not a unit this build can read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a JSON envelope.
    #[error("unit envelope is not valid JSON: {0}")]
    Envelope(serde_json::Error),
    /// Written by a newer format.
    #[error("unit envelope version {0} is not supported (this build reads version {WIRE_VERSION})")]
    Version(u32),
    /// Neither `records` nor `records_zstd`.
    #[error("unit envelope has neither `records` nor `records_zstd`")]
    NoRecords,
    /// `records_zstd` is not base64.
    #[error("records_zstd is not valid base64: {0}")]
    Base64(base64::DecodeError),
    /// `records_zstd` does not decompress.
    #[error("records_zstd does not decompress: {0}")]
    Zstd(std::io::Error),
    /// The records are not a JSON array.
    #[error("unit records are not a JSON array: {0}")]
    Records(serde_json::Error),
}

/// The envelope as written: `records` is the records' JSON array, already serialized (inline)
/// or absent (compressed into `records_zstd`).
#[derive(Serialize)]
struct WriteEnvelope<'a> {
    v: u32,
    id: &'a str,
    source: &'a str,
    origin: &'a str,
    first_line: u64,
    last_line: u64,
    count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    records: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    records_zstd: Option<String>,
    #[serde(skip_serializing_if = "<[u64]>::is_empty")]
    lines: &'a [u64],
    #[serde(skip_serializing_if = "<[Reject]>::is_empty")]
    rejects: &'a [Reject],
}

/// Everything of a unit's envelope but its records.
struct Head<'a> {
    id: &'a str,
    source: &'a str,
    origin: &'a str,
    first_line: u64,
    last_line: u64,
    lines: &'a [u64],
    rejects: &'a [Reject],
}

impl Head<'_> {
    /// The envelope around `records`, the JSON array of `count` records; compressed when
    /// larger than `compress_above` bytes.
    fn encode(&self, records: Vec<u8>, count: usize, compress_above: usize) -> Vec<u8> {
        let (inline, compressed) = if records.len() > compress_above {
            let packed = zstd::bulk::compress(&records, 1)
                .expect("in-memory zstd compression does not fail");
            (None, Some(BASE64.encode(packed)))
        } else {
            // Small units only (under `compress_above`): checking the text again costs little.
            let text = String::from_utf8(records).expect("serde_json writes UTF-8");
            let raw = RawValue::from_string(text).expect("serde_json output is valid JSON");
            (Some(raw), None)
        };
        let envelope = WriteEnvelope {
            v: WIRE_VERSION,
            id: self.id,
            source: self.source,
            origin: self.origin,
            first_line: self.first_line,
            last_line: self.last_line,
            count,
            records: inline.as_deref(),
            records_zstd: compressed,
            lines: self.lines,
            rejects: self.rejects,
        };
        serde_json::to_vec(&envelope).expect("envelope always serializes")
    }
}

/// Records serialized once, straight into the JSON array a unit carries them in: what a
/// producer builds a unit from, one buffer per unit instead of one string per record that
/// is then copied into the array.
#[derive(Debug)]
pub struct RecordArray {
    /// `[`, then the records separated by commas (the closing `]` is added when encoding).
    json: Vec<u8>,
    count: usize,
}

impl RecordArray {
    /// An empty array with room for about `bytes` of records.
    pub fn with_capacity(bytes: usize) -> RecordArray {
        let mut json = Vec::with_capacity(bytes + 2);
        json.push(b'[');
        RecordArray { json, count: 0 }
    }

    /// Appends `value`; returns the length of its JSON text.
    pub fn push(&mut self, value: &Value) -> usize {
        let start = self.start_record();
        serde_json::to_writer(&mut self.json, value).expect("JSON values always serialize");
        self.json.len() - start
    }

    /// Appends a record that is already JSON text, as it is; returns its length.
    pub fn push_text(&mut self, record: &RecordText) -> usize {
        self.start_record();
        self.json.extend_from_slice(record.as_str().as_bytes());
        record.as_str().len()
    }

    /// Counts one more record and returns where its text begins.
    fn start_record(&mut self) -> usize {
        if self.count > 0 {
            self.json.push(b',');
        }
        self.count += 1;
        self.json.len()
    }

    /// Takes back the record just pushed, `length` bytes long (see [`RecordArray::push`]),
    /// and returns its text.
    pub fn pop(&mut self, length: usize) -> String {
        let start = self.json.len() - length;
        let text = String::from_utf8_lossy(&self.json[start..]).into_owned();
        self.count -= 1;
        let separator = usize::from(self.count > 0);
        self.json.truncate(start - separator);
        text
    }

    /// How many records the array holds.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The array's JSON text, closed.
    fn into_json(mut self) -> Vec<u8> {
        self.json.push(b']');
        self.json
    }
}

impl Default for RecordArray {
    fn default() -> RecordArray {
        RecordArray::with_capacity(0)
    }
}

/// A unit as a producer builds it, its records already one JSON array: encodes to exactly
/// the bytes [`DataUnit::encode`] writes for the same records.
#[derive(Debug)]
pub struct OutgoingUnit {
    /// As [`DataUnit::id`].
    pub id: String,
    /// As [`DataUnit::source`].
    pub source: String,
    /// As [`DataUnit::origin`].
    pub origin: String,
    /// As [`DataUnit::first_line`].
    pub first_line: u64,
    /// As [`DataUnit::last_line`].
    pub last_line: u64,
    /// The records.
    pub records: RecordArray,
    /// As [`DataUnit::lines`].
    pub lines: Vec<u64>,
    /// As [`DataUnit::rejects`].
    pub rejects: Vec<Reject>,
}

impl OutgoingUnit {
    /// Number of input records this unit stands for, rejects included.
    pub fn input_count(&self) -> u64 {
        (self.records.len() + self.rejects.len()) as u64
    }

    /// Encodes the unit; records larger than `compress_above` bytes are compressed.
    pub fn encode(self, compress_above: usize) -> Vec<u8> {
        let head = Head {
            id: &self.id,
            source: &self.source,
            origin: &self.origin,
            first_line: self.first_line,
            last_line: self.last_line,
            lines: &self.lines,
            rejects: &self.rejects,
        };
        let count = self.records.len();
        head.encode(self.records.into_json(), count, compress_above)
    }
}

/// The envelope as read: inline records are split into their texts in the same pass.
#[derive(Deserialize)]
struct ReadEnvelope<'a> {
    v: u32,
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    source: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    origin: std::borrow::Cow<'a, str>,
    first_line: u64,
    last_line: u64,
    #[serde(default)]
    records: Option<Vec<Record>>,
    #[serde(default)]
    records_zstd: Option<String>,
    #[serde(default)]
    lines: Vec<u64>,
    #[serde(default)]
    rejects: Vec<Reject>,
}

impl DataUnit {
    /// Number of input records this unit stands for, rejects included.
    pub fn input_count(&self) -> u64 {
        (self.records.len() + self.rejects.len()) as u64
    }

    /// The source line of record `index` (see [`DataUnit::lines`]).
    pub fn record_line(&self, index: usize) -> u64 {
        match self.lines.get(index) {
            Some(line) => *line,
            None => self.first_line + index as u64,
        }
    }

    /// Encodes the unit; records larger than `compress_above` bytes are compressed.
    pub fn encode(&self, compress_above: usize) -> Vec<u8> {
        let records = serde_json::to_vec(&self.records).expect("JSON values always serialize");
        let head = Head {
            id: &self.id,
            source: &self.source,
            origin: &self.origin,
            first_line: self.first_line,
            last_line: self.last_line,
            lines: &self.lines,
            rejects: &self.rejects,
        };
        head.encode(records, self.records.len(), compress_above)
    }

    /// Decodes a unit from its wire bytes.
    pub fn decode(bytes: &[u8]) -> Result<DataUnit, DecodeError> {
        let envelope: ReadEnvelope =
            serde_json::from_slice(bytes).map_err(|error| match peek_version(bytes) {
                Some(version) if version != WIRE_VERSION => DecodeError::Version(version),
                _ => DecodeError::Envelope(error),
            })?;
        if envelope.v != WIRE_VERSION {
            return Err(DecodeError::Version(envelope.v));
        }
        let records: Vec<Record> = match (envelope.records, &envelope.records_zstd) {
            (Some(records), _) => records,
            (None, Some(packed)) => {
                let packed = BASE64.decode(packed).map_err(DecodeError::Base64)?;
                let json =
                    zstd::stream::decode_all(packed.as_slice()).map_err(DecodeError::Zstd)?;
                serde_json::from_slice(&json).map_err(DecodeError::Records)?
            }
            (None, None) => return Err(DecodeError::NoRecords),
        };
        Ok(DataUnit {
            id: envelope.id.into_owned(),
            source: envelope.source.into_owned(),
            origin: envelope.origin.into_owned(),
            first_line: envelope.first_line,
            last_line: envelope.last_line,
            records,
            lines: envelope.lines,
            rejects: envelope.rejects,
        })
    }

    /// The records as JSON values, for tests and tools that look at them whole.
    pub fn record_values(&self) -> Vec<Value> {
        self.records
            .iter()
            .map(|record| serde_json::from_str(record.get()).expect("records are valid JSON"))
            .collect()
    }

    /// Reads just the id of an encoded unit, for dead letters whose body cannot be decoded whole.
    pub fn peek_id(bytes: &[u8]) -> Option<String> {
        #[derive(Deserialize)]
        struct IdOnly {
            id: String,
        }
        serde_json::from_slice::<IdOnly>(bytes)
            .ok()
            .map(|unit| unit.id)
    }
}

/// The envelope's version, when the bytes are JSON with a numeric `v`.
fn peek_version(bytes: &[u8]) -> Option<u32> {
    #[derive(Deserialize)]
    struct VersionOnly {
        v: u32,
    }
    serde_json::from_slice::<VersionOnly>(bytes)
        .ok()
        .map(|envelope| envelope.v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_record_array_encodes_byte_for_byte_as_the_unit_of_its_records() {
        let values: Vec<Value> = (0..6)
            .map(|n| json!({"n": n, "text": format!("r\"{n}\u{1}")}))
            .collect();
        for compress_above in [0, usize::MAX] {
            for popped in [None, Some(0), Some(3), Some(5)] {
                let mut array = RecordArray::default();
                let mut kept = Vec::new();
                for (index, value) in values.iter().enumerate() {
                    let length = array.push(value);
                    if Some(index) == popped {
                        // Taken back, as a producer takes back a record over the cap.
                        assert_eq!(array.pop(length), value.to_string());
                    } else {
                        kept.push(record(value));
                    }
                }
                let unit = DataUnit {
                    id: "j/r/s/0.0".into(),
                    source: "s".into(),
                    origin: "o".into(),
                    first_line: 1,
                    last_line: 6,
                    records: kept,
                    lines: vec![1, 2, 4, 5, 6],
                    rejects: Vec::new(),
                };
                let outgoing = OutgoingUnit {
                    id: unit.id.clone(),
                    source: unit.source.clone(),
                    origin: unit.origin.clone(),
                    first_line: 1,
                    last_line: 6,
                    records: array,
                    lines: unit.lines.clone(),
                    rejects: Vec::new(),
                };
                assert_eq!(outgoing.input_count(), unit.input_count());
                assert_eq!(
                    outgoing.encode(compress_above),
                    unit.encode(compress_above),
                    "popped {popped:?}, compress above {compress_above}"
                );
            }
        }
        // Nothing pushed, or everything taken back: an empty array.
        let mut array = RecordArray::with_capacity(10);
        let length = array.push(&json!({"a": 1}));
        array.pop(length);
        assert!(array.is_empty());
        assert_eq!(array.into_json(), b"[]");
        assert_eq!(RecordArray::default().into_json(), b"[]");
    }
    use serde_json::json;

    fn sample(records: usize) -> DataUnit {
        DataUnit {
            id: unit_id("demo", "r1", "orders", 2, 17),
            source: "orders".into(),
            origin: "data/orders-1.jsonl".into(),
            first_line: 1,
            last_line: records as u64 + 1,
            records: (0..records)
                .map(|i| record(&json!({"id": i, "note": "ünïcode ✓", "total": i as f64 * 1.5})))
                .collect(),
            lines: Vec::new(),
            rejects: vec![Reject {
                line: 3,
                raw: "{oops".into(),
                reason: "invalid JSON".into(),
            }],
        }
    }

    fn assert_same(decoded: &DataUnit, unit: &DataUnit) {
        assert_eq!(format!("{decoded:?}"), format!("{unit:?}"));
        assert_eq!(decoded.record_values(), unit.record_values());
    }

    #[test]
    fn unit_codec_round_trips_inline_and_compressed() {
        let unit = sample(50);
        let inline = unit.encode(usize::MAX);
        assert!(String::from_utf8_lossy(&inline).contains("\"records\":["));
        assert_same(&DataUnit::decode(&inline).unwrap(), &unit);
        let packed = unit.encode(0);
        assert!(String::from_utf8_lossy(&packed).contains("\"records_zstd\":"));
        assert!(
            packed.len() < inline.len(),
            "compression should shrink repetitive records"
        );
        assert_same(&DataUnit::decode(&packed).unwrap(), &unit);
    }

    #[test]
    fn unit_codec_reads_a_hand_written_envelope() {
        let text = r#"{"v":1,"id":"j/r/s/0.0","source":"s","origin":"x","first_line":1,"last_line":2,"count":2,"records":[{"a":1},{"a":2}]}"#;
        let unit = DataUnit::decode(text.as_bytes()).unwrap();
        assert_eq!(unit.record_values(), vec![json!({"a":1}), json!({"a":2})]);
        assert_eq!(
            unit.records[1].get(),
            r#"{"a":2}"#,
            "records keep their text"
        );
        assert!(unit.rejects.is_empty());
        assert_eq!(
            DataUnit::peek_id(text.as_bytes()).as_deref(),
            Some("j/r/s/0.0")
        );
    }

    #[test]
    fn unit_codec_rejects_bad_envelopes_with_reasons() {
        assert!(matches!(
            DataUnit::decode(b"not json"),
            Err(DecodeError::Envelope(_))
        ));
        let future = r#"{"v":9,"id":"a","source":"s","origin":"x","first_line":1,"last_line":1,"count":0,"records":[]}"#;
        assert!(matches!(
            DataUnit::decode(future.as_bytes()),
            Err(DecodeError::Version(9))
        ));
        let empty =
            r#"{"v":1,"id":"a","source":"s","origin":"x","first_line":1,"last_line":1,"count":0}"#;
        assert!(matches!(
            DataUnit::decode(empty.as_bytes()),
            Err(DecodeError::NoRecords)
        ));
    }
}

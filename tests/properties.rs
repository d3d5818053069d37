//! Property tests over stevedore's public API: the unit codec round-trips any unit, the job
//! loader and the file readers never panic on any input, and a mapping gives the same row from
//! a record's value as from its text.
//!
//! Each property runs proptest's default number of cases: 256, or `PROPTEST_CASES` when set
//! (proptest reads it in `ProptestConfig::default()`). Generated JSON is bounded in depth and
//! size, so no property takes more than about 2.5 s for 256 cases on one core (debug build).

use std::io::Write;
use std::path::Path;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Value, json};

use stevedore::mapping::{Cast, ColumnMap, MapError, Mapping, Row};
use stevedore::settings::Problems;
use stevedore::source::{Entry, FileFormat, FilesSource, OpenContext, Source, SourceError};
use stevedore::unit::{DataUnit, Reject, record};

// ---------------------------------------------------------------------------------------------
// Strategies

/// Characters that trip up encoders and parsers, mixed into generated text.
const TRICKY: &[char] = &[
    '"',
    '\\',
    '\0',
    '\n',
    '\r',
    '\t',
    '\u{7f}',
    '\u{1b}',
    '\u{2028}',
    '\u{feff}',
    '\u{fffd}',
    '{',
    '}',
    '[',
    ']',
    ',',
    ':',
    '.',
    '$',
    'é',
    'ß',
    '中',
    '😀',
    '\u{10ffff}',
];

/// Any short string: arbitrary Unicode (control characters included) and tricky characters.
fn text() -> impl Strategy<Value = String> {
    vec(prop_oneof![any::<char>(), select(TRICKY)], 0..12).prop_map(String::from_iter)
}

/// Field names: mostly ones the test mappings read, so that paths resolve, sometimes anything.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(&["i", "r", "d", "b", "t", "j", "u", "a", "x", "n", "id", "c", "", "a.b"][..])
            .prop_map(str::to_string),
        1 => text(),
    ]
}

/// Strings that the casts parse, or nearly do.
fn cast_bait() -> impl Strategy<Value = String> {
    select(
        &[
            "42",
            " 42 ",
            "-7",
            "+3",
            "1.5",
            " 12.50 ",
            "1e3",
            "1E-3",
            "-0",
            ".5",
            "5.",
            ".",
            "e5",
            "12,5",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775809",
            "12345678901234567890.123456789",
            "1e400",
            "NaN",
            "inf",
            "-inf",
            "true",
            "FALSE",
            "yes",
            "No",
            "1",
            "0",
            "2",
            "",
            " ",
            "null",
            "{}",
            "[]",
        ][..],
    )
    .prop_map(str::to_string)
}

/// A JSON leaf: null, booleans, numbers of every kind (non-finite floats become null, as
/// `serde_json` makes them), arbitrary strings and strings the casts parse.
fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        (-3i64..=3).prop_map(Value::from),
        select(
            &[
                0.0,
                -0.0,
                0.5,
                1.0,
                2.0,
                -1.5,
                9.0e15,
                1.0e16,
                1.0e300,
                f64::MIN_POSITIVE
            ][..]
        )
        .prop_map(Value::from),
        text().prop_map(Value::String),
        cast_bait().prop_map(Value::String),
    ]
}

/// Any JSON value, at most 4 levels deep with at most 6 items per array or object.
fn json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((key(), inner), 0..6).prop_map(|fields| Value::Object(Map::from_iter(fields))),
        ]
    })
}

/// A JSON object: what sources produce and units carry.
fn object() -> impl Strategy<Value = Value> {
    vec((key(), json()), 0..8).prop_map(|fields| Value::Object(Map::from_iter(fields)))
}

fn reject() -> impl Strategy<Value = Reject> {
    (any::<u64>(), text(), text()).prop_map(|(line, raw, reason)| Reject { line, raw, reason })
}

fn unit_parts() -> impl Strategy<Value = (DataUnit, Vec<Value>)> {
    (
        (text(), text(), text()),
        (any::<u64>(), any::<u64>()),
        vec(object(), 0..8),
        vec(reject(), 0..4),
        any::<bool>(),
    )
        .prop_map(
            |((id, source, origin), (first_line, last_line), values, rejects, spread)| {
                // Records on lines that do not count up from the first carry their lines.
                let lines = match spread {
                    true => (0..values.len() as u64).map(|n| n * 3 + 1).collect(),
                    false => Vec::new(),
                };
                let unit = DataUnit {
                    id,
                    source,
                    origin,
                    first_line,
                    last_line,
                    records: values.iter().map(record).collect(),
                    lines,
                    rejects,
                };
                (unit, values)
            },
        )
}

// ---------------------------------------------------------------------------------------------
// Unit codec

fn assert_same_unit(decoded: &DataUnit, unit: &DataUnit, values: &[Value]) {
    assert_eq!(decoded.id, unit.id);
    assert_eq!(decoded.source, unit.source);
    assert_eq!(decoded.origin, unit.origin);
    assert_eq!(
        (decoded.first_line, decoded.last_line),
        (unit.first_line, unit.last_line)
    );
    let texts = |unit: &DataUnit| -> Vec<String> {
        unit.records.iter().map(|r| r.get().to_string()).collect()
    };
    assert_eq!(texts(decoded), texts(unit), "records keep their text");
    assert_eq!(decoded.record_values(), values);
    assert_eq!(decoded.rejects, unit.rejects);
    assert_eq!(decoded.lines, unit.lines);
    assert_eq!(decoded.input_count(), unit.input_count());
}

proptest! {
    #[test]
    fn unit_codec_round_trips_any_records((unit, values) in unit_parts()) {
        for compress_above in [0, usize::MAX] {
            let bytes = unit.encode(compress_above);
            let decoded = DataUnit::decode(&bytes).unwrap_or_else(|error| {
                panic!("compress_above {compress_above}: {error}")
            });
            assert_same_unit(&decoded, &unit, &values);
            prop_assert_eq!(DataUnit::peek_id(&bytes), Some(unit.id.clone()));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Job config loader

/// A valid job that reaches every source and sink kind, mappings with every cast, and `${VAR}`
/// interpolation: the starting point of the mutations.
const VALID_JOB: &str = r#"[job]
name = "demo"
data_dir = "var/demo"
[redis]
url = "managed"
data_dir = "var/redis"
[workers]
producers = 2
consumers = 3
heartbeat_timeout = "30s"
max_restarts = 5
restart_window = "60s"
[queue]
unit_records = 250
visibility_timeout = "45s"
max_receives = 4
high_watermark = 200
compress_above = 16384
[[source]]
name = "orders"
kind = "files"
path = "data/orders-*.jsonl"
format = "jsonl"
[[source]]
name = "people"
kind = "files"
path = "data/people-*.csv"
format = "csv"
[[source]]
name = "synthetic"
kind = "generator"
count = 1000
seed = 7
[[sink]]
name = "local"
kind = "sqlite"
path = "${DB_PATH}"
table = "orders"
mode = "upsert"
key = ["id"]
busy_timeout = "60s"
[sink.map]
id = "id"
amount = { from = "total", type = "real" }
note = { from = "comment", default = "" }
city = { from = "address.city", required = true }
[[sink]]
name = "warehouse"
kind = "mssql"
connection = "${MSSQL_CONNECTION}"
table = "dbo.orders"
mode = "upsert"
key = ["order_id"]
pool_size = 4
max_concurrency = 4
max_units_per_second = 50
batch_rows = 5000
connect_timeout = "15s"
pool_timeout = "60s"
[sink.map]
order_id = { from = "id", type = "bigint" }
placed_at = { from = "ts", type = "datetime2" }
price = { from = "price", type = "decimal" }
paid = { from = "paid", type = "bit" }
extra = { from = "extra", type = "json" }
label = { from = "label", type = "nvarchar" }
[[sink]]
name = "documents"
kind = "cosmos"
endpoint = "https://account.documents.azure.com:443/"
key = "${COSMOS_KEY}"
database = "shop"
container = "orders"
partition_key = "/customerId"
id = "{order_id}"
max_concurrency = 16
max_requests_per_second = 1000
[sink.map]
order_id = "id"
customerId = "customer"
[[sink]]
name = "nowhere"
kind = "blackhole"
"#;

fn job_env(name: &str) -> Option<String> {
    match name {
        "DB_PATH" => Some("/tmp/x.db".to_string()),
        "MSSQL_CONNECTION" => {
            Some("server=tcp:db.example.com,1433;user id=u;password=p".to_string())
        }
        "COSMOS_KEY" => Some("a2V5".to_string()),
        "WEIRD" => Some("\"]\n[job]\u{0}${DB_PATH}$$".to_string()),
        _ => None,
    }
}

fn parse_job(text: &str) {
    // Ok or Err are both fine; the property is that it returns at all.
    let _ = stevedore::job::parse(text, Path::new("job.toml"), &job_env);
}

/// Keys of job settings, real and not.
fn job_key() -> impl Strategy<Value = String> {
    select(
        &[
            "name",
            "kind",
            "path",
            "format",
            "count",
            "seed",
            "url",
            "data_dir",
            "server_bin",
            "producers",
            "consumers",
            "heartbeat_timeout",
            "max_restarts",
            "restart_window",
            "unit_records",
            "visibility_timeout",
            "max_receives",
            "high_watermark",
            "compress_above",
            "table",
            "mode",
            "key",
            "busy_timeout",
            "connection",
            "pool_size",
            "max_concurrency",
            "max_units_per_second",
            "batch_rows",
            "connect_timeout",
            "pool_timeout",
            "endpoint",
            "database",
            "container",
            "partition_key",
            "id",
            "create_if_missing",
            "max_requests_per_second",
            "max_ru_per_second",
            "throttle_retries",
            "throttle_max_wait",
            "emulator",
            "from",
            "type",
            "default",
            "required",
            "amount",
            "a.b",
            "\"quoted key\"",
            "'lit'",
            "",
        ][..],
    )
    .prop_map(str::to_string)
}

/// Values of job settings, right and wrong.
fn job_value() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => select(
            &[
                "0", "1", "-1", "4294967296", "99999999999999999999", "1.5", "nan", "inf",
                "-inf", "true", "false", "\"\"", "\"managed\"", "\"files\"", "\"generator\"",
                "\"sqlite\"", "\"mssql\"", "\"cosmos\"", "\"blackhole\"", "\"jsonl\"",
                "\"csv\"", "\"upsert\"", "\"append\"", "\"30s\"", "\"0s\"", "\"1e400s\"",
                "\"18446744073709551616s\"", "\"soon\"", "\"${DB_PATH}\"", "\"${UNSET}\"",
                "\"${UNSET:-fallback}\"", "\"${\"", "\"$$\"", "\"${WEIRD}\"", "\"$\"", "\"/\"",
                "\"/a/b/\"", "\"{order_id}\"", "\"{\"", "\"}{\"", "\"{}\"", "\"[*]\"",
                "\"**/*\"", "\"redis://\"", "\"rediss://:p@h:1/0\"", "\"server=;\"",
                "\"encrypt=DANGER_PLAINTEXT\"", "\"\\u0000\"", "[]", "[\"id\"]",
                "[\"id\", \"id\"]", "[1, \"a\"]", "{}", "{ from = \"x\" }",
                "{ from = \"\", type = \"money\" }",
                "{ type = \"integer\", default = 1.5, required = true }",
                "{ from = \"a..b\", type = \"json\", default = { x = [1] } }",
                "1979-05-27T07:32:00Z", "07:32:00", "0x10", "1_000",
            ][..],
        )
        .prop_map(str::to_string),
        1 => text().prop_map(|text| format!("{text:?}")),
    ]
}

/// Table headers, right and wrong.
fn job_header() -> impl Strategy<Value = String> {
    select(
        &[
            "[job]",
            "[redis]",
            "[workers]",
            "[queue]",
            "[[source]]",
            "[[sink]]",
            "[sink.map]",
            "[[sink.map]]",
            "[source]",
            "[sink]",
            "[job.extra]",
            "[a.b.c]",
            "[]",
            "[[",
            "]]",
            "#",
            "\"",
            "'''",
            "\"\"\"",
        ][..],
    )
    .prop_map(str::to_string)
}

/// Lines that look like job settings, right or wrong.
fn job_line() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (job_key(), job_value()).prop_map(|(key, value)| format!("{key} = {value}")),
        2 => job_header(),
        1 => text(),
    ]
}

/// One edit of a job's lines (positions are taken modulo the number of lines).
#[derive(Debug, Clone)]
enum Edit {
    /// A new value for a `key = value` line (a new line elsewhere).
    SetValue(usize, String),
    /// A new key for a `key = value` line.
    Rename(usize, String),
    Replace(usize, String),
    Insert(usize, String),
    Delete(usize),
    Duplicate(usize),
    Truncate(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let at = any::<usize>();
    prop_oneof![
        6 => (at, job_value()).prop_map(|(at, value)| Edit::SetValue(at, value)),
        1 => (at, job_key()).prop_map(|(at, key)| Edit::Rename(at, key)),
        1 => (at, job_line()).prop_map(|(at, line)| Edit::Replace(at, line)),
        3 => (at, job_line()).prop_map(|(at, line)| Edit::Insert(at, line)),
        2 => at.prop_map(Edit::Delete),
        1 => at.prop_map(Edit::Duplicate),
        1 => (at, any::<usize>()).prop_map(|(at, cut)| Edit::Truncate(at, cut)),
    ]
}

fn mutate(base: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = base.lines().map(str::to_string).collect();
    for edit in edits {
        let len = lines.len();
        match edit.clone() {
            Edit::Insert(at, line) => lines.insert(at % (len + 1), line),
            _ if len == 0 => {}
            Edit::SetValue(at, value) => {
                let line = &mut lines[at % len];
                if let Some((key, _)) = line.split_once(" = ") {
                    *line = format!("{key} = {value}");
                }
            }
            Edit::Rename(at, key) => {
                let line = &mut lines[at % len];
                if let Some((_, value)) = line.split_once(" = ") {
                    *line = format!("{key} = {value}");
                }
            }
            Edit::Replace(at, line) => lines[at % len] = line,
            Edit::Delete(at) => {
                lines.remove(at % len);
            }
            Edit::Duplicate(at) => {
                let line = lines[at % len].clone();
                lines.insert(at % len, line);
            }
            Edit::Truncate(at, cut) => {
                let line = &mut lines[at % len];
                let cut = line
                    .char_indices()
                    .map(|(i, _)| i)
                    .nth(cut % (line.chars().count() + 1))
                    .unwrap_or(line.len());
                line.truncate(cut);
            }
        }
    }
    lines.join("\n")
}

#[test]
fn config_mutation_base_job_is_valid() {
    if let Err(error) = stevedore::job::parse(VALID_JOB, Path::new("job.toml"), &job_env) {
        panic!("the base job of the mutations must load: {error}");
    }
}

proptest! {
    #[test]
    fn config_loader_never_panics_on_arbitrary_bytes(
        bytes in prop_oneof![
            vec(any::<u8>(), 0..200),
            vec(job_line(), 0..12).prop_map(|lines| lines.join("\n").into_bytes()),
        ],
    ) {
        parse_job(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn config_loader_never_panics_on_mutated_valid_jobs(edits in vec(edit(), 1..5)) {
        parse_job(&mutate(VALID_JOB, &edits));
    }
}

// ---------------------------------------------------------------------------------------------
// Files source

/// Writes `bytes` to a file and reads it whole through a `files` source in `format`. The one
/// place that builds the source. Stops after more entries than the file has bytes, which no
/// reader should yield.
fn read_entries(format: FileFormat, bytes: &[u8]) -> Vec<Result<Entry, SourceError>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(match format {
        FileFormat::Jsonl => "input.jsonl",
        FileFormat::Csv => "input.csv",
    });
    std::fs::File::create(&path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
    let pattern = glob::Pattern::escape(&path.display().to_string());
    let source = FilesSource::new("props", &pattern, format);
    let items = source.plan(100).unwrap();
    assert_eq!(items.len(), 1, "the pattern names one file");
    let entries: Vec<_> = source
        .open(&items[0], &OpenContext::local("props", 1 << 20))
        .unwrap()
        .take(bytes.len() + 2)
        .collect();
    assert!(
        entries.len() <= bytes.len() + 1,
        "the reader yielded more entries than the file has bytes"
    );
    entries
}

/// Reads `bytes` as a file of `format` in ranges cut at `split_bytes`, one range after
/// another, and whole; returns both (errors as text).
type Read = Vec<Result<Entry, String>>;
fn read_split_and_whole(format: FileFormat, bytes: &[u8], split_bytes: u64) -> (Read, Read) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input");
    std::fs::write(&path, bytes).unwrap();
    let pattern = glob::Pattern::escape(&path.display().to_string());
    let context = OpenContext::local("props", 64);
    let read = |split_bytes: u64| -> Read {
        let source = FilesSource::new("props", &pattern, format).with_split_bytes(split_bytes);
        source
            .plan(100)
            .unwrap()
            .iter()
            .flat_map(|item| source.open(item, &context).unwrap())
            .map(|entry| entry.map_err(|error| error.to_string()))
            .collect()
    };
    (read(split_bytes), read(0))
}

const BOM: &[u8] = b"\xef\xbb\xbf";

/// Byte strings that readers may choke on.
const FRAGMENTS: &[&[u8]] = &[
    b"\"",
    b"\"\"",
    b",",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b"\\",
    b"\\u",
    b"\0",
    b"\r",
    b"\n",
    b"\r\n",
    b" ",
    b"\t",
    b"\x0b",
    b"\x0c",
    b"\xff",
    b"\xfe",
    b"\xc3",
    b"\xed\xa0\x80",
    BOM,
    "é中😀".as_bytes(),
    b"a",
    b"1",
    b"null",
    b"{}",
    b"[1,2]",
    b"{\"id\":1}",
    b"\"a,b\"",
    b"\"a\"\"b\"",
    b"\"open",
];

/// Line endings, right and wrong.
const ENDINGS: &[&[u8]] = &[b"\n", b"\r\n", b"\n\n", b" \n", b"\r"];

/// Pieces of a line: arbitrary bytes, tricky fragments, valid objects.
fn fragment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => vec(any::<u8>(), 0..16),
        2 => select(FRAGMENTS).prop_map(<[u8]>::to_vec),
        1 => object().prop_map(|value| value.to_string().into_bytes()),
    ]
}

/// Bytes shaped like a file: an optional BOM, then lines of fragments or valid objects.
fn file_bytes() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        3 => vec(fragment(), 0..6).prop_map(|pieces| pieces.concat()),
        1 => object().prop_map(|value| value.to_string().into_bytes()),
    ];
    let ending = select(ENDINGS);
    prop_oneof![
        1 => vec(any::<u8>(), 0..256),
        3 => (any::<bool>(), vec((line, ending), 0..12)).prop_map(|(bom, lines)| {
            let mut bytes = if bom { BOM.to_vec() } else { Vec::new() };
            for (line, ending) in lines {
                bytes.extend_from_slice(&line);
                bytes.extend_from_slice(ending);
            }
            bytes
        }),
    ]
}

/// Header rows, usual and odd.
const CSV_HEADERS: &[&[u8]] = &[
    b"id,name,note",
    b"id",
    b"id,id",
    b"\"quoted, header\",\"multi\nline\",x",
    b"",
    b",",
    b"\xff,bad",
];

/// Bytes shaped like a CSV file: an optional BOM, a header row, rows of comma-separated
/// fragments; or any bytes shaped like a file.
fn csv_bytes() -> impl Strategy<Value = Vec<u8>> {
    let header = select(CSV_HEADERS);
    let row = (vec(fragment(), 0..5), select(ENDINGS))
        .prop_map(|(fields, ending)| [fields.join(&b","[..]), ending.to_vec()].concat());
    prop_oneof![
        1 => file_bytes(),
        3 => (any::<bool>(), header, select(ENDINGS), vec(row, 0..10)).prop_map(
            |(bom, header, ending, rows)| {
                let mut bytes = if bom { BOM.to_vec() } else { Vec::new() };
                bytes.extend_from_slice(header);
                bytes.extend_from_slice(ending);
                bytes.extend(rows.concat());
                bytes
            }
        ),
    ]
}

proptest! {
    #[test]
    fn files_jsonl_reader_never_panics_on_arbitrary_bytes(bytes in file_bytes()) {
        let entries = read_entries(FileFormat::Jsonl, &bytes);
        // Every line with more than ASCII whitespace yields exactly one entry, in order; a
        // byte order mark is not part of the first line.
        let lines: Vec<(u64, &[u8])> = bytes
            .strip_prefix(BOM)
            .unwrap_or(&bytes)
            .split(|&byte| byte == b'\n')
            .enumerate()
            .map(|(at, line)| (at as u64 + 1, line.trim_ascii()))
            .filter(|(_, line)| !line.is_empty())
            .collect();
        prop_assert_eq!(entries.len(), lines.len(), "one entry per non-blank line");
        for (entry, (line, text)) in entries.into_iter().zip(lines) {
            let entry = entry.expect("a readable file yields no I/O errors");
            prop_assert_eq!(entry.line(), line);
            match (entry, serde_json::from_slice::<Value>(text)) {
                (Entry::Text { record, .. }, Ok(parsed @ Value::Object(_))) => {
                    // The line itself, trimmed, and it means what a parse of it means.
                    prop_assert_eq!(record.as_str().as_bytes(), text);
                    let value: Value = serde_json::from_str(record.as_str()).unwrap();
                    prop_assert_eq!(value, parsed)
                }
                (Entry::Rejected(reject), Ok(Value::Object(_)))
                    if reject.reason.contains("appears twice") => {}
                (Entry::Rejected(reject), Ok(Value::Object(_))) => {
                    prop_assert!(false, "line {} is an object but was rejected: {:?}", line, reject)
                }
                (Entry::Rejected(reject), _) => {
                    prop_assert_eq!(reject.raw, String::from_utf8_lossy(text));
                    prop_assert!(!reject.reason.is_empty());
                }
                (record, _) => prop_assert!(false, "line {} is no object: {:?}", line, record),
            }
        }
    }

    /// Big files are read in byte ranges by several producers: whatever the input and the
    /// split, the ranges read one after another give what one reader of the whole file gives
    /// (records, rejects, line numbers). A cap of 64 bytes makes rows over it common.
    #[test]
    fn files_split_ranges_read_what_the_whole_file_reads(
        bytes in csv_bytes(),
        csv in any::<bool>(),
        split_bytes in 1..48u64,
    ) {
        let format = if csv { FileFormat::Csv } else { FileFormat::Jsonl };
        let (split, whole) = read_split_and_whole(format, &bytes, split_bytes);
        prop_assert_eq!(split, whole);
    }

    #[test]
    fn files_csv_reader_never_panics_on_arbitrary_bytes(bytes in csv_bytes()) {
        let entries = read_entries(FileFormat::Csv, &bytes);
        for entry in entries {
            match entry {
                Ok(Entry::Record { value, .. }) => {
                    let Value::Object(fields) = value else {
                        panic!("a CSV record is an object: {value:?}")
                    };
                    prop_assert!(fields.values().all(Value::is_string), "CSV values are strings");
                }
                Ok(Entry::Rejected(reject)) => prop_assert!(!reject.reason.is_empty()),
                Ok(Entry::Text { .. }) => prop_assert!(false, "CSV rows are read into values"),
                Ok(Entry::Resumable { .. }) => prop_assert!(false, "files never resume mid-file"),
                // An unreadable header row ends the file with an error.
                Err(_) => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Mapping

fn mapping(toml_text: &str) -> Mapping {
    let table: toml::Table = toml::from_str(toml_text).unwrap();
    let mut problems = Problems::default();
    let mapping = Mapping::parse(&table, "sink[0].map", &mut problems);
    assert!(problems.is_empty(), "{problems}");
    mapping.expect("a map without problems")
}

/// Mappings with every cast (and SQL aliases), nested paths, roots read by several columns,
/// defaults of every JSON type and required fields.
fn mappings() -> Vec<Mapping> {
    vec![
        Mapping::passthrough(),
        mapping(
            r#"
            i = { type = "integer" }
            r = { type = "real" }
            d = { type = "decimal" }
            b = { type = "boolean" }
            t = { type = "text" }
            j = { type = "json" }
            u = "u"
            "#,
        ),
        mapping(
            r#"
            big = { from = "i", type = "bigint" }
            small = { from = "i", type = "tinyint" }
            f = { from = "r", type = "float" }
            num = { from = "d", type = "numeric" }
            bit = { from = "b", type = "bit" }
            s = { from = "t", type = "nvarchar" }
            at = { from = "t", type = "datetime2" }
            guid = { from = "x", type = "uniqueidentifier" }
            "#,
        ),
        mapping(
            r#"
            ab = "a.b"
            abi = { from = "a.b", type = "integer" }
            ac = { from = "a.c", type = "real", default = 0.5 }
            abc = { from = "a.b.c", type = "boolean", default = false }
            aempty = { from = "a..b", type = "text" }
            x = { from = "x", type = "decimal", default = "0.00" }
            id = { from = "id", type = "integer", required = true }
            n = { from = "n", type = "json", default = { k = [1, "two", 3.5] } }
            t = { from = "t", type = "text", default = "none" }
            dotted = { from = "a.b", type = "json", required = true }
            "#,
        ),
        mapping(
            r#"
            i = { from = "i", type = "integer", default = -1 }
            r = { from = "r", type = "real", default = "not cast" }
            b = { from = "b", type = "boolean", required = true, default = true }
            whole = { from = "a", type = "json" }
            "#,
        ),
    ]
}

/// What a cast may produce.
fn fits(cast: Cast, value: &Value) -> bool {
    match cast {
        Cast::Integer => value.is_i64(),
        Cast::Real => value.is_f64(),
        Cast::Decimal => value.is_number() || value.is_string(),
        Cast::Boolean => value.is_boolean(),
        Cast::Text => value.is_string(),
        Cast::Json => true,
    }
}

fn check_row(mapping: &Mapping, input: &Value, row: &Row) {
    let Some(columns) = mapping.columns() else {
        assert_eq!(
            &Value::Object(row.to_object()),
            input,
            "passthrough keeps the record"
        );
        return;
    };
    let names: Vec<&str> = columns.iter().map(|c| c.column.as_str()).collect();
    assert_eq!(
        row.names(),
        names,
        "a row has the mapping's columns, in order"
    );
    for (column, value) in columns.iter().zip(row.values()) {
        if column.required && column.default.is_none() {
            assert!(
                !value.is_null(),
                "required column {} is null",
                column.column
            );
        }
        let from_default = column.default.as_ref() == Some(value);
        if let Some(cast) = column.cast
            && !value.is_null()
            && !from_default
        {
            assert!(
                fits(cast, value),
                "column {} ({cast:?}) got {value}",
                column.column
            );
        }
    }
}

/// Top-level fields the test mappings read (besides `a`).
const MAPPED: &[&str] = &["i", "r", "d", "b", "t", "j", "u", "x", "n", "id"];

/// A value that field `name`'s casts in the test mappings usually accept.
fn castable(name: &str) -> BoxedStrategy<Value> {
    let integral = prop_oneof![
        any::<i64>().prop_map(Value::from),
        (-1000i64..1000).prop_map(|n| Value::from(n as f64)),
        (-1000i64..1000).prop_map(|n| Value::from(format!(" {n} "))),
        any::<bool>().prop_map(Value::from),
    ];
    let real = prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::num::f64::NORMAL.prop_map(Value::from),
        prop::num::f64::NORMAL.prop_map(|f| Value::from(f.to_string())),
    ];
    match name {
        "i" | "id" => integral.boxed(),
        "r" | "d" | "x" => real.boxed(),
        "b" => prop_oneof![
            any::<bool>().prop_map(Value::from),
            (0i64..=1).prop_map(Value::from),
            select(&["true", "False", " yes ", "NO", "1", "0"][..]).prop_map(Value::from),
        ]
        .boxed(),
        _ => json().boxed(),
    }
}

/// An object that has most of the mapped fields, `a` usually an object with `b`, `c` and `""`.
fn mapped_record() -> impl Strategy<Value = Value> {
    let value = |name: &str| prop_oneof![3 => castable(name), 1 => leaf(), 1 => json()];
    let nested = prop_oneof![
        3 => (
            prop_oneof![
                2 => castable("i"),
                1 => value("b").prop_map(|c| json!({"c": c})),
                1 => json(),
            ],
            value("r"),
            value("t"),
        )
            .prop_map(|(b, c, empty)| json!({"b": b, "c": c, "": {"b": empty}})),
        1 => json(),
    ];
    (
        vec((key(), json()), 0..3),
        MAPPED
            .iter()
            .map(|name| prop::option::weighted(0.8, value(name)))
            .collect::<Vec<_>>(),
        prop::option::weighted(0.9, nested),
    )
        .prop_map(|(extra, fields, nested)| {
            let mut object = Map::from_iter(extra);
            for (name, value) in MAPPED.iter().zip(fields) {
                if let Some(value) = value {
                    object.insert(name.to_string(), value);
                }
            }
            if let Some(nested) = nested {
                object.insert("a".to_string(), nested);
            }
            Value::Object(object)
        })
}

/// Records for the mappings: any JSON (objects or not), any objects, and objects with most
/// of the mapped fields.
fn mapping_input() -> impl Strategy<Value = Value> {
    prop_oneof![1 => json(), 1 => object(), 3 => mapped_record()]
}

proptest! {
    #[test]
    fn mapping_never_panics_on_arbitrary_json(input in mapping_input()) {
        let raw = record(&input);
        for mapping in mappings() {
            let from_text = mapping.apply_raw(&raw);
            let from_value = mapping.apply(input.clone());
            prop_assert_eq!(&from_text, &from_value, "apply_raw and apply disagree");
            match from_value {
                Ok(row) => check_row(&mapping, &input, &row),
                Err(MapError::NotAnObject { .. }) => prop_assert!(!input.is_object()),
                Err(MapError::Invalid(error)) => {
                    prop_assert!(false, "a record's own text is invalid: {}", error)
                }
                Err(MapError::Cast { .. } | MapError::Missing { .. }) => {
                    prop_assert!(input.is_object())
                }
            }
        }
    }

    /// A column whose field no other column reads has its value moved into the row rather
    /// than copied: both ways must cast alike.
    #[test]
    fn mapping_sole_and_shared_readers_cast_alike(
        input in object(),
        cast in select(&[None, Some(Cast::Integer), Some(Cast::Real), Some(Cast::Decimal),
            Some(Cast::Boolean), Some(Cast::Text), Some(Cast::Json)][..]),
        default in prop::option::of(leaf()),
        required in any::<bool>(),
        from in select(&["i", "a", "x"][..]),
    ) {
        let column = |name: &str, cast, default, required| ColumnMap {
            column: name.to_string(),
            from: vec![from.to_string()],
            cast,
            default,
            required,
            sql_type: None,
        };
        let sole = Mapping::from_columns(vec![column("v", cast, default.clone(), required)]);
        let shared = Mapping::from_columns(vec![
            column("v", cast, default, required),
            column("w", None, None, false),
        ]);
        let value = |mapping: &Mapping| {
            mapping.apply(input.clone()).map(|row| row.get("v").cloned())
        };
        prop_assert_eq!(value(&sole), value(&shared));
    }
}

//! The `files` source: every file matching a glob is one work item, read line by line (JSONL)
//! or record by record (CSV with a header row). A line that does not parse becomes a
//! [`Reject`] carrying its line number, raw text and reason; the rest of the file still loads.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::{Entries, Entry, OpenContext, Source, SourceError, SourceKind, WorkItem};
use crate::config::SourceConfig;
use crate::settings::{KindSettings, Section};
use crate::unit::Reject;

/// The `files` kind.
pub(super) const KIND: SourceKind = SourceKind {
    name: "files",
    read,
    build,
};

/// Settings of the `files` source.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct FilesConfig {
    /// The glob pattern, e.g. `data/orders-*.jsonl`.
    pub path: String,
    /// How each file is parsed.
    pub format: FileFormat,
}

impl KindSettings for FilesConfig {
    fn basis(&self) -> String {
        format!("{} {:?}", self.path, self.format)
    }
}

/// File formats the `files` source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated with a header row; values are strings.
    Csv,
}

/// Reads `[[source]] kind = "files"`: a glob that parses, and a format.
fn read(section: &mut Section<'_>) -> Option<Arc<dyn KindSettings>> {
    let config: FilesConfig = section.read()?;
    if let Err(error) = glob::Pattern::new(&config.path) {
        section.problem("path", format!("not a valid glob: {error}"));
    }
    Some(Arc::new(config))
}

fn build(config: &SourceConfig) -> Box<dyn Source> {
    let files: &FilesConfig = config.settings();
    Box::new(FilesSource::new(&config.name, &files.path, files.format))
}

/// The `files` source.
pub struct FilesSource {
    name: String,
    pattern: String,
    format: FileFormat,
}

impl FilesSource {
    /// Files matching `pattern`, parsed as `format`.
    pub fn new(name: &str, pattern: &str, format: FileFormat) -> FilesSource {
        FilesSource {
            name: name.to_string(),
            pattern: pattern.to_string(),
            format,
        }
    }

    fn io_error(&self, path: &str, error: std::io::Error) -> SourceError {
        SourceError::Io {
            source_name: self.name.clone(),
            path: path.to_string(),
            error,
        }
    }
}

impl Source for FilesSource {
    fn plan(&self, _unit_records: usize) -> Result<Vec<WorkItem>, SourceError> {
        let paths = glob::glob(&self.pattern).map_err(|error| {
            self.io_error(
                &self.pattern,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, error.to_string()),
            )
        })?;
        let mut files = Vec::new();
        for path in paths {
            let path = path.map_err(|error| self.io_error(&self.pattern, error.into()))?;
            if path.is_file() {
                files.push(path.display().to_string());
            }
        }
        if files.is_empty() {
            return Err(SourceError::NoFiles {
                source_name: self.name.clone(),
                pattern: self.pattern.clone(),
            });
        }
        files.sort();
        Ok(WorkItem::numbered(&self.name, files))
    }

    fn open(&self, item: &WorkItem, context: &OpenContext) -> Result<Entries, SourceError> {
        let max_record_bytes = context.max_record_bytes;
        let origin = FileOrigin {
            source_name: self.name.clone(),
            path: item.origin.clone(),
        };
        let file = File::open(&item.origin).map_err(|error| origin.error(error))?;
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        skip_bom(&mut reader).map_err(|error| origin.error(error))?;
        Ok(match self.format {
            FileFormat::Jsonl => Box::new(JsonLines {
                reader,
                line: 0,
                buffer: Vec::new(),
                max_bytes: max_record_bytes,
                origin,
            }),
            FileFormat::Csv => Box::new(CsvRecords {
                rows: CsvRows::new(reader, max_record_bytes),
                header: None,
                origin,
            }),
        })
    }
}

/// A UTF-8 byte order mark at the start of a file is not part of its first record.
fn skip_bom(reader: &mut impl BufRead) -> std::io::Result<()> {
    if reader.fill_buf()?.starts_with(b"\xEF\xBB\xBF") {
        reader.consume(3);
    }
    Ok(())
}

/// How many bytes of a skipped record its dead letter shows.
const PREVIEW_BYTES: usize = 256;

/// The first bytes of a record too long to keep, for its dead letter.
fn preview(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(PREVIEW_BYTES)];
    format!("{}…", String::from_utf8_lossy(shown))
}

/// The reason given for a record over `queue.max_record_bytes`.
fn too_long(what: &str, length: u64, max_bytes: usize) -> String {
    format!(
        "{what} is {length} bytes, over queue.max_record_bytes ({max_bytes}); it was skipped \
         without being read whole (raw holds its first {PREVIEW_BYTES} bytes)"
    )
}

/// The file a reader reads, and its source: what a read error names.
struct FileOrigin {
    source_name: String,
    path: String,
}

impl FileOrigin {
    fn error(&self, error: std::io::Error) -> SourceError {
        SourceError::Io {
            source_name: self.source_name.clone(),
            path: self.path.clone(),
            error,
        }
    }
}

struct JsonLines<R> {
    reader: R,
    line: u64,
    buffer: Vec<u8>,
    max_bytes: usize,
    origin: FileOrigin,
}

impl<R: BufRead> Iterator for JsonLines<R> {
    type Item = Result<Entry, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.buffer.clear();
            // Never more than the cap (plus a line end, `\r\n`) in memory.
            let limit = self.max_bytes as u64 + 2;
            match (&mut self.reader)
                .take(limit)
                .read_until(b'\n', &mut self.buffer)
            {
                Ok(0) => return None,
                Ok(_) => {}
                Err(error) => return Some(Err(self.origin.error(error))),
            }
            self.line += 1;
            let line = self.line;
            let complete = self.buffer.last() == Some(&b'\n') || (self.buffer.len() as u64) < limit;
            let content = trim_line_end(&self.buffer).len();
            if !complete || content > self.max_bytes {
                let rest = match complete {
                    true => 0,
                    false => match skip_line(&mut self.reader) {
                        Ok(rest) => rest,
                        Err(error) => return Some(Err(self.origin.error(error))),
                    },
                };
                let length = content as u64 + rest;
                let reject = Reject {
                    line,
                    raw: preview(&self.buffer),
                    reason: too_long("line", length, self.max_bytes),
                };
                self.buffer = Vec::new(); // give the cap's worth of memory back
                return Some(Ok(Entry::Rejected(reject)));
            }
            let text = self.buffer.trim_ascii();
            if text.is_empty() {
                continue;
            }
            let reject = |reason: String| {
                Some(Ok(Entry::Rejected(Reject {
                    line,
                    raw: String::from_utf8_lossy(text).into_owned(),
                    reason,
                })))
            };
            return match parse_object(text) {
                Ok(object) => Some(Ok(Entry::Record {
                    line,
                    value: Value::Object(object),
                })),
                Err(reason) => reject(reason),
            };
        }
    }
}

/// Parses one JSONL line into an object, refusing a field named twice in any object of it: a
/// plain parse would keep the last value and silently drop the other.
fn parse_object(text: &[u8]) -> Result<Map<String, Value>, String> {
    use serde::de::Deserializer as _;

    let mut parser = serde_json::Deserializer::from_slice(text);
    let parsed = parser
        .deserialize_map(UniqueFields)
        .and_then(|object| parser.end().map(|()| object));
    parsed.map_err(|error| {
        let message = error.to_string();
        if message.starts_with("invalid type") {
            // Not an object: say whether it is JSON at all.
            match serde_json::from_slice::<serde::de::IgnoredAny>(text) {
                Ok(_) => "line is valid JSON but not an object".to_string(),
                Err(error) => format!("invalid JSON: {error}"),
            }
        } else if message.starts_with("field `") {
            message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_string()
        } else {
            format!("invalid JSON: {error}")
        }
    })
}

/// Builds JSON values like `serde_json::Value` does, refusing an object that names a field
/// twice, at any depth.
struct UniqueFields;

impl<'de> serde::de::Visitor<'de> for UniqueFields {
    type Value = Map<String, Value>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error as _;
        let mut object = Map::new();
        while let Some(field) = map.next_key::<String>()? {
            if object.contains_key(&field) {
                return Err(A::Error::custom(format!(
                    "field `{field}` appears twice; the record is refused rather than keeping \
                     one of its values"
                )));
            }
            let value = map.next_value_seed(UniqueValue)?;
            object.insert(field, value);
        }
        Ok(object)
    }
}

/// Any JSON value, its objects read with [`UniqueFields`].
struct UniqueValue;

impl<'de> serde::de::DeserializeSeed<'de> for UniqueValue {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueValue {
    type Value = Value;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_string()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(UniqueValue)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
        UniqueFields.visit_map(map).map(Value::Object)
    }
}

/// Reads past the rest of a line and its newline; returns how many bytes were skipped before
/// the newline.
fn skip_line(reader: &mut impl BufRead) -> std::io::Result<u64> {
    let mut skipped = 0;
    loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            return Ok(skipped);
        }
        match buffer.iter().position(|&byte| byte == b'\n') {
            Some(at) => {
                reader.consume(at + 1);
                return Ok(skipped + at as u64);
            }
            None => {
                let read = buffer.len();
                reader.consume(read);
                skipped += read as u64;
            }
        }
    }
}

/// One CSV row as read: where it starts, its raw text (or the first bytes of a row too long
/// to keep) and its fields.
struct CsvRow<'a> {
    line: u64,
    raw: &'a [u8],
    /// The row's length in bytes when it was over the cap (its fields were not kept).
    skipped_length: Option<u64>,
    /// More fields than the reader keeps (see [`CsvRows::max_fields`]); none were kept.
    too_many_fields: bool,
    fields: Vec<&'a [u8]>,
}

/// Most columns a CSV header may have.
const MAX_COLUMNS: usize = 16_384;

/// Buffers grown past this for one big row are given back before the next.
const KEEP_BUFFER: usize = 1 << 20;

/// Splits a CSV stream into rows with `csv_core`, holding at most the cap's worth of one row
/// and a bounded number of fields: a longer row is read past, not buffered. Keeps each row's
/// raw text for dead letters.
struct CsvRows<R> {
    reader: R,
    parser: csv_core::Reader,
    max_bytes: usize,
    /// Fields kept per row: the header's count once the header is read (a row with more is
    /// refused whatever they hold).
    max_fields: usize,
    /// The line the reader is on (1-based).
    line: u64,
    output: Vec<u8>,
    ends: Vec<usize>,
    raw: Vec<u8>,
}

impl<R: BufRead> CsvRows<R> {
    fn new(reader: R, max_bytes: usize) -> CsvRows<R> {
        CsvRows {
            reader,
            parser: csv_core::Reader::new(),
            max_bytes,
            max_fields: MAX_COLUMNS,
            line: 1,
            output: vec![0; 4096],
            ends: vec![0; 64],
            raw: Vec::new(),
        }
    }

    /// Gives back what one big row made the buffers grow to (`ends` is bounded by the
    /// columns allowed, so it is kept).
    fn shrink_buffers(&mut self) {
        if self.output.len() > KEEP_BUFFER {
            self.output.truncate(4096);
            self.output.shrink_to_fit();
        }
        if self.raw.capacity() > KEEP_BUFFER {
            self.raw = Vec::new();
        }
    }

    /// The next row, `None` at the end of the input.
    fn next_row(&mut self) -> std::io::Result<Option<CsvRow<'_>>> {
        use csv_core::ReadRecordResult as Read;
        self.shrink_buffers();
        self.raw.clear();
        // The raw text and the fields are kept up to the cap plus a line end (`\r\n`).
        let keep_bytes = self.max_bytes + 2;
        let (mut written, mut ended, mut length) = (0usize, 0usize, 0u64);
        let (mut over_cap, mut too_many_fields) = (false, false);
        let mut start_line = None;
        let mut last_two = [0u8; 2];
        loop {
            let input = self.reader.fill_buf()?;
            let (result, read, wrote, ends) = self.parser.read_record(
                input,
                &mut self.output[written..],
                &mut self.ends[ended..],
            );
            for &byte in &input[..read] {
                if start_line.is_none() && byte != b'\n' && byte != b'\r' {
                    start_line = Some(self.line);
                }
                if start_line.is_some() {
                    length += 1;
                    last_two = [last_two[1], byte];
                    if self.raw.len() < keep_bytes {
                        self.raw.push(byte);
                    } else {
                        over_cap = true;
                    }
                }
                if byte == b'\n' {
                    self.line += 1;
                }
            }
            self.reader.consume(read);
            (written, ended) = (written + wrote, ended + ends);
            match result {
                Read::InputEmpty => {}
                Read::OutputFull if self.output.len() >= keep_bytes => over_cap = true,
                Read::OutputFull => {
                    let size = (self.output.len() * 2).min(keep_bytes);
                    self.output.resize(size, 0);
                }
                Read::OutputEndsFull if self.ends.len() > self.max_fields => too_many_fields = true,
                Read::OutputEndsFull => {
                    let size = (self.ends.len() * 2).min(self.max_fields + 1);
                    self.ends.resize(size, 0);
                }
                Read::Record => {
                    let line = start_line.unwrap_or(self.line);
                    let content = length - line_end_length(last_two);
                    if over_cap || content > self.max_bytes as u64 {
                        return Ok(Some(CsvRow {
                            line,
                            raw: &self.raw[..self.raw.len().min(PREVIEW_BYTES)],
                            skipped_length: Some(content),
                            too_many_fields: false,
                            fields: Vec::new(),
                        }));
                    }
                    let raw = trim_line_end(&self.raw);
                    if too_many_fields || ended > self.max_fields {
                        return Ok(Some(CsvRow {
                            line,
                            raw,
                            skipped_length: None,
                            too_many_fields: true,
                            fields: Vec::new(),
                        }));
                    }
                    let mut fields = Vec::with_capacity(ended);
                    let mut from = 0;
                    for &end in &self.ends[..ended] {
                        fields.push(&self.output[from..end]);
                        from = end;
                    }
                    return Ok(Some(CsvRow {
                        line,
                        raw,
                        skipped_length: None,
                        too_many_fields: false,
                        fields,
                    }));
                }
                Read::End => return Ok(None),
            }
            if over_cap || too_many_fields {
                // Parse on to the row's end, keeping nothing more.
                (written, ended) = (0, 0);
            }
        }
    }
}

/// How many of a row's last two bytes are its line end (`\n`, `\r\n` or a lone `\r`).
fn line_end_length(last_two: [u8; 2]) -> u64 {
    match last_two {
        [b'\r', b'\n'] => 2,
        [_, b'\n' | b'\r'] => 1,
        _ => 0,
    }
}

fn trim_line_end(raw: &[u8]) -> &[u8] {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    raw.strip_suffix(b"\r").unwrap_or(raw)
}

/// A CSV file's header row: the field names, or why the file's rows cannot be records.
type Header = Result<Vec<String>, String>;

struct CsvRecords<R> {
    rows: CsvRows<R>,
    header: Option<Header>,
    origin: FileOrigin,
}

/// The header's names, refused when one is empty, not UTF-8, or repeated: two fields of one
/// name would silently keep one value of each row.
fn read_header(row: &CsvRow<'_>, max_bytes: usize) -> Header {
    if let Some(length) = row.skipped_length {
        return Err(format!(
            "the file's rows were refused: {}",
            too_long("its CSV header", length, max_bytes)
        ));
    }
    let refuse = |why: String| {
        Err(format!(
            "the file's rows were refused: its CSV header {why}"
        ))
    };
    if row.too_many_fields {
        return refuse(format!("has more than {MAX_COLUMNS} columns"));
    }
    let mut names: Vec<String> = Vec::with_capacity(row.fields.len());
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(row.fields.len());
    for (index, field) in row.fields.iter().enumerate() {
        let Ok(name) = std::str::from_utf8(field) else {
            return refuse(format!("column {} is not valid UTF-8", index + 1));
        };
        if name.trim().is_empty() {
            return refuse(format!("column {} has no name", index + 1));
        }
        if let Some(earlier) = seen.insert(name, index) {
            return refuse(format!(
                "names `{name}` twice (columns {} and {}); each row would keep one value of the two",
                earlier + 1,
                index + 1
            ));
        }
        names.push(name.to_string());
    }
    Ok(names)
}

impl<R: BufRead> Iterator for CsvRecords<R> {
    type Item = Result<Entry, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        let max_bytes = self.rows.max_bytes;
        if self.header.is_none() {
            let header = match self.rows.next_row() {
                Ok(Some(row)) => read_header(&row, max_bytes),
                Ok(None) => return None,
                Err(error) => return Some(Err(self.origin.error(error))),
            };
            if let Ok(names) = &header {
                self.rows.max_fields = names.len();
            }
            self.header = Some(header);
        }
        let row = match self.rows.next_row() {
            Ok(Some(row)) => row,
            Ok(None) => return None,
            Err(error) => return Some(Err(self.origin.error(error))),
        };
        let header = self.header.as_ref().expect("read above");
        let reject = |reason: String| {
            Some(Ok(Entry::Rejected(Reject {
                line: row.line,
                raw: match row.skipped_length {
                    Some(_) => preview(row.raw),
                    None => String::from_utf8_lossy(row.raw).into_owned(),
                },
                reason,
            })))
        };
        let names = match header {
            Ok(names) => names,
            Err(why) => return reject(why.clone()),
        };
        if let Some(length) = row.skipped_length {
            return reject(too_long("CSV row", length, max_bytes));
        }
        if row.too_many_fields {
            return reject(format!(
                "invalid CSV record: more than {} fields where the header has {}",
                names.len(),
                names.len()
            ));
        }
        if row.fields.len() != names.len() {
            return reject(format!(
                "invalid CSV record: {} field(s) where the header has {}",
                row.fields.len(),
                names.len()
            ));
        }
        let mut value = Map::with_capacity(names.len());
        for (index, (name, field)) in names.iter().zip(&row.fields).enumerate() {
            let Ok(field) = std::str::from_utf8(field) else {
                return reject(format!(
                    "invalid CSV record: field {} (`{name}`) is not valid UTF-8",
                    index + 1
                ));
            };
            value.insert(name.clone(), Value::String(field.to_string()));
        }
        Some(Ok(Entry::Record {
            line: row.line,
            value: Value::Object(value),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read_all(format: FileFormat, text: &str) -> Vec<Entry> {
        read_capped(format, text.as_bytes(), 1024)
    }

    fn read_capped(format: FileFormat, bytes: &[u8], max_record_bytes: usize) -> Vec<Entry> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(match format {
            FileFormat::Jsonl => "a.jsonl",
            FileFormat::Csv => "a.csv",
        });
        File::create(&path).unwrap().write_all(bytes).unwrap();
        let source = FilesSource::new("s", &dir.path().join("*").display().to_string(), format);
        let items = source.plan(10).unwrap();
        assert_eq!(items.len(), 1);
        source
            .open(&items[0], &OpenContext::local("j", max_record_bytes))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn files_jsonl_rejects_bad_lines_with_line_numbers_and_keeps_the_rest() {
        let entries = read_all(
            FileFormat::Jsonl,
            "{\"id\":1}\n{broken\n\n[1,2]\n{\"id\":2}",
        );
        assert_eq!(entries.len(), 4);
        assert!(matches!(&entries[0], Entry::Record { line: 1, .. }));
        let Entry::Rejected(reject) = &entries[1] else {
            panic!("line 2 is broken")
        };
        assert_eq!((reject.line, reject.raw.as_str()), (2, "{broken"));
        assert!(
            reject.reason.starts_with("invalid JSON"),
            "{}",
            reject.reason
        );
        assert!(matches!(
            &entries[2],
            Entry::Rejected(Reject { line: 4, .. })
        ));
        assert!(matches!(&entries[3], Entry::Record { line: 5, .. }));
    }

    #[test]
    fn files_csv_reads_header_and_rejects_short_rows() {
        let entries = read_all(FileFormat::Csv, "id,name\n1,\"a, b\"\n2\n3,c\n");
        assert_eq!(entries.len(), 3);
        assert_eq!(
            entries[0],
            Entry::Record {
                line: 2,
                value: serde_json::json!({"id": "1", "name": "a, b"})
            }
        );
        assert!(matches!(
            &entries[1],
            Entry::Rejected(Reject { line: 3, .. })
        ));
        assert!(matches!(&entries[2], Entry::Record { line: 4, .. }));
    }

    #[test]
    fn files_glob_without_matches_is_an_error_naming_the_source() {
        let source = FilesSource::new("orders", "/nonexistent/dir/*.jsonl", FileFormat::Jsonl);
        let error = source.plan(10).unwrap_err().to_string();
        assert!(
            error.contains("orders") && error.contains("matches no files"),
            "{error}"
        );
    }

    fn reject(entry: &Entry) -> &Reject {
        match entry {
            Entry::Rejected(reject) => reject,
            Entry::Record { line, .. } => panic!("line {line} should be rejected"),
            Entry::Resumable { .. } => panic!("files are never resumed mid-file"),
        }
    }

    #[test]
    fn hardening_jsonl_strips_a_byte_order_mark() {
        let entries = read_capped(
            FileFormat::Jsonl,
            b"\xEF\xBB\xBF{\"id\":1}\n{\"id\":2}\n",
            1024,
        );
        assert_eq!(
            entries,
            vec![
                Entry::Record {
                    line: 1,
                    value: serde_json::json!({"id": 1})
                },
                Entry::Record {
                    line: 2,
                    value: serde_json::json!({"id": 2})
                },
            ]
        );
    }

    #[test]
    fn hardening_jsonl_refuses_a_field_named_twice() {
        let entries = read_all(
            FileFormat::Jsonl,
            "{\"id\":1,\"a\":\"first\",\"a\":\"second\"}\n",
        );
        let reject = reject(&entries[0]);
        assert!(
            reject.reason.contains("field `a` appears twice"),
            "{}",
            reject.reason
        );
        assert_eq!(reject.raw, "{\"id\":1,\"a\":\"first\",\"a\":\"second\"}");
    }

    #[test]
    fn hardening_jsonl_skips_a_line_over_the_cap_and_reads_on() {
        let long = format!("{{\"id\":2,\"pad\":\"{}\"}}", "x".repeat(5000));
        let text = format!("{{\"id\":1}}\n{long}\n{{\"id\":3}}\n{}", "y".repeat(3000));
        let entries = read_capped(FileFormat::Jsonl, text.as_bytes(), 1024);
        assert_eq!(entries.len(), 4);
        assert!(matches!(&entries[0], Entry::Record { line: 1, .. }));
        let skipped = reject(&entries[1]);
        assert_eq!(skipped.line, 2);
        assert!(
            skipped.reason.starts_with(&format!(
                "line is {} bytes, over queue.max_record_bytes (1024)",
                long.len()
            )),
            "{}",
            skipped.reason
        );
        assert!(skipped.raw.starts_with("{\"id\":2,\"pad\":\"xxx") && skipped.raw.len() < 300);
        assert!(matches!(&entries[2], Entry::Record { line: 3, .. }));
        // A last line without a newline, over the cap, is measured to the end of the file.
        assert!(reject(&entries[3]).reason.starts_with("line is 3000 bytes"));
    }

    #[test]
    fn hardening_csv_header_naming_a_column_twice_refuses_every_row() {
        let entries = read_all(FileFormat::Csv, "id,a,a\n1,first,second\n2,x,y\n");
        assert_eq!(entries.len(), 2, "each row is still accounted for");
        let first = reject(&entries[0]);
        assert_eq!((first.line, first.raw.as_str()), (2, "1,first,second"));
        assert!(
            first.reason.contains("names `a` twice (columns 2 and 3)"),
            "{}",
            first.reason
        );
        assert_eq!(reject(&entries[1]).line, 3);
    }

    #[test]
    fn hardening_csv_header_with_an_empty_name_refuses_every_row() {
        let entries = read_all(FileFormat::Csv, "id,,b\n1,2,3\n");
        assert!(reject(&entries[0]).reason.contains("column 2 has no name"));
    }

    #[test]
    fn hardening_csv_ragged_row_keeps_its_raw_text() {
        let entries = read_all(FileFormat::Csv, "id,name\n1,\"a, b\",extra\n");
        let ragged = reject(&entries[0]);
        assert_eq!(ragged.raw, "1,\"a, b\",extra");
        assert_eq!(
            ragged.reason,
            "invalid CSV record: more than 2 fields where the header has 2"
        );
    }

    #[test]
    fn hardening_csv_bom_quoted_newlines_and_long_rows() {
        let long = "z".repeat(4000);
        let text = format!("\u{FEFF}id,note\r\n1,\"two\nlines\"\r\n\r\n2,{long}\n3,ok");
        let entries = read_capped(FileFormat::Csv, text.as_bytes(), 1024);
        assert_eq!(entries.len(), 3);
        assert_eq!(
            entries[0],
            Entry::Record {
                line: 2,
                value: serde_json::json!({"id": "1", "note": "two\nlines"})
            }
        );
        let skipped = reject(&entries[1]);
        assert_eq!(skipped.line, 5);
        assert!(
            skipped.reason.starts_with("CSV row is 4002 bytes"),
            "{}",
            skipped.reason
        );
        assert_eq!(
            entries[2],
            Entry::Record {
                line: 6,
                value: serde_json::json!({"id": "3", "note": "ok"})
            }
        );
    }

    #[test]
    fn hardening_lines_and_rows_of_exactly_the_cap_are_read_with_any_line_end() {
        let exact = format!("{{\"pad\":\"{}\"}}", "x".repeat(1024 - 10));
        assert_eq!(exact.len(), 1024);
        for end in ["\n", "\r\n"] {
            let text = format!("{exact}{end}{exact}x{end}");
            let entries = read_capped(FileFormat::Jsonl, text.as_bytes(), 1024);
            assert!(
                matches!(&entries[0], Entry::Record { line: 1, .. }),
                "{end:?}"
            );
            let over = reject(&entries[1]);
            assert!(
                over.reason.starts_with("line is 1025 bytes"),
                "{end:?}: {}",
                over.reason
            );

            let row = "y".repeat(1024);
            let text = format!("a{end}{row}{end}{row}y{end}z{end}");
            let entries = read_capped(FileFormat::Csv, text.as_bytes(), 1024);
            assert!(
                matches!(&entries[0], Entry::Record { line: 2, .. }),
                "{end:?}"
            );
            let over = reject(&entries[1]);
            assert_eq!(over.line, 3);
            assert!(
                over.reason.starts_with("CSV row is 1025 bytes"),
                "{end:?}: {}",
                over.reason
            );
            assert!(
                matches!(&entries[2], Entry::Record { line: 4, .. }),
                "{end:?}"
            );
        }
    }

    #[test]
    fn hardening_jsonl_refuses_nested_duplicates_and_names_broken_arrays_as_broken() {
        let entries = read_all(
            FileFormat::Jsonl,
            "{\"a\":{\"b\":1,\"b\":2}}\n[1,2\n[1,2]\n{\"a\":[{\"c\":1,\"c\":1}]}\n",
        );
        assert!(
            reject(&entries[0])
                .reason
                .contains("field `b` appears twice")
        );
        assert!(
            reject(&entries[1]).reason.starts_with("invalid JSON"),
            "{}",
            reject(&entries[1]).reason
        );
        assert_eq!(
            reject(&entries[2]).reason,
            "line is valid JSON but not an object"
        );
        assert!(
            reject(&entries[3])
                .reason
                .contains("field `c` appears twice")
        );
    }

    #[test]
    fn hardening_csv_keeps_no_more_fields_than_the_header_has() {
        let commas = ",".repeat(100_000);
        let text = format!("a,b\n1,2\n{commas}\n3,4\n");
        let entries = read_capped(FileFormat::Csv, text.as_bytes(), 1 << 20);
        assert_eq!(entries.len(), 3);
        let wide = reject(&entries[1]);
        assert_eq!(
            wide.reason,
            "invalid CSV record: more than 2 fields where the header has 2"
        );
        assert_eq!(wide.raw.len(), 100_000, "the row's raw text is kept");
        assert!(matches!(&entries[2], Entry::Record { line: 4, .. }));
        let wide_header = format!(
            "{}\n1\n",
            (0..=MAX_COLUMNS)
                .map(|n| format!("c{n}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let entries = read_capped(FileFormat::Csv, wide_header.as_bytes(), 1 << 20);
        assert!(
            reject(&entries[0])
                .reason
                .contains("has more than 16384 columns")
        );
    }
}

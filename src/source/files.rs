//! The `files` source: every file matching a glob is one work item, read line by line (JSONL)
//! or record by record (CSV with a header row); a file bigger than `split_bytes` is several,
//! byte ranges that producers read side by side (see [`split`]). A line that does not parse
//! becomes a [`Reject`] carrying its line number in the file, raw text and reason; the rest
//! of the file still loads.

mod split;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::{ByteRange, Entries, Entry, OpenContext, Source, SourceError, SourceKind, WorkItem};
use crate::config::SourceConfig;
use crate::settings::{KindSettings, Section};
use crate::unit::{RecordText, Reject};

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
    /// A file bigger than this many bytes is read in ranges of about this size, so that
    /// producers share it; 0 reads every file whole.
    #[serde(default = "default_split_bytes")]
    pub split_bytes: u64,
}

/// Ranges of 64 MiB: a second or so of one producer's reading, and few work items even for
/// files of many gigabytes.
const DEFAULT_SPLIT_BYTES: u64 = 64 << 20;

/// The smallest `split_bytes` but 0: smaller ranges would share nothing worth a work item of
/// its own (and a big file would make millions of them).
const MIN_SPLIT_BYTES: u64 = 1 << 20;

fn default_split_bytes() -> u64 {
    DEFAULT_SPLIT_BYTES
}

impl KindSettings for FilesConfig {
    /// JSONL lines are carried as their text: units are cut measuring the lines as written,
    /// so a plan by a build that measured their compact JSON has another basis.
    fn basis(&self) -> String {
        match self.format {
            FileFormat::Jsonl => format!("{} lines=text", self.basis_before_text()),
            FileFormat::Csv => self.basis_before_text(),
        }
    }

    /// The split is part of it: the items of a plan depend on it, and a build that does not
    /// know ranges would read each range of a plan as the whole file.
    fn basis_before_text(&self) -> String {
        format!(
            "{} split_bytes={}",
            self.basis_before_split(),
            self.split_bytes
        )
    }

    fn basis_before_split(&self) -> String {
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

/// Reads `[[source]] kind = "files"`: a glob that parses, a format, and a split of 0 or at
/// least [`MIN_SPLIT_BYTES`].
fn read(section: &mut Section<'_>) -> Option<Arc<dyn KindSettings>> {
    let config: FilesConfig = section.read()?;
    if let Err(error) = glob::Pattern::new(&config.path) {
        section.problem("path", format!("not a valid glob: {error}"));
    }
    if (1..MIN_SPLIT_BYTES).contains(&config.split_bytes) {
        section.problem(
            "split_bytes",
            format!(
                "must be 0 (read every file whole) or at least {MIN_SPLIT_BYTES} (1 MiB), \
                 not {}",
                config.split_bytes
            ),
        );
    }
    Some(Arc::new(config))
}

fn build(config: &SourceConfig) -> Box<dyn Source> {
    let files: &FilesConfig = config.settings();
    Box::new(
        FilesSource::new(&config.name, &files.path, files.format)
            .with_split_bytes(files.split_bytes),
    )
}

/// The `files` source.
pub struct FilesSource {
    name: String,
    pattern: String,
    format: FileFormat,
    split_bytes: u64,
}

impl FilesSource {
    /// Files matching `pattern`, parsed as `format`; one over 64 MiB is read in ranges.
    pub fn new(name: &str, pattern: &str, format: FileFormat) -> FilesSource {
        FilesSource {
            name: name.to_string(),
            pattern: pattern.to_string(),
            format,
            split_bytes: DEFAULT_SPLIT_BYTES,
        }
    }

    /// The same source, reading a file bigger than `split_bytes` in ranges of about that
    /// size (0: every file whole). Any size is honoured here; the job file allows 0 or at
    /// least 1 MiB.
    pub fn with_split_bytes(mut self, split_bytes: u64) -> FilesSource {
        self.split_bytes = split_bytes;
        self
    }

    /// How file `path` is read: in byte ranges, or whole (`[None]`). A file whose cuts cannot
    /// be trusted is read whole, with a warning saying why.
    fn ranges(&self, path: &str) -> Result<Vec<Option<ByteRange>>, SourceError> {
        let size = std::fs::metadata(path)
            .map_err(|error| self.io_error(path, error))?
            .len();
        let cut = split::cut(Path::new(path), self.format, size, self.split_bytes)
            .map_err(|error| self.io_error(path, error))?;
        Ok(match cut {
            split::Cut::Whole => vec![None],
            split::Cut::Ranges(ranges) => ranges.into_iter().map(Some).collect(),
            split::Cut::Unsafe(why) => {
                tracing::warn!(
                    source = %self.name,
                    file = %path,
                    size,
                    "{path} is not split into ranges: {why}; one producer reads it whole"
                );
                vec![None]
            }
        })
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
        let mut items = Vec::with_capacity(files.len());
        for origin in files {
            for bytes in self.ranges(&origin)? {
                items.push(WorkItem {
                    source: self.name.clone(),
                    index: items.len() as u64,
                    origin: origin.clone(),
                    range: None,
                    bytes,
                });
            }
        }
        Ok(items)
    }

    fn open(&self, item: &WorkItem, context: &OpenContext) -> Result<Entries, SourceError> {
        let max_record_bytes = context.max_record_bytes;
        let origin = FileOrigin {
            source_name: self.name.clone(),
            path: item.origin.clone(),
        };
        let mut file = File::open(&item.origin).map_err(|error| origin.error(error))?;
        let range = match item.bytes {
            Some(range) => origin.seek(&mut file, range)?,
            None => ByteRange {
                start: 0,
                end: u64::MAX,
                first_line: 1,
            },
        };
        let length = range.end.saturating_sub(range.start);
        let mut reader = BufReader::with_capacity(256 * 1024, file.take(length));
        if range.start == 0 {
            skip_bom(&mut reader).map_err(|error| origin.error(error))?;
        }
        Ok(match self.format {
            FileFormat::Jsonl => Box::new(JsonLines {
                reader,
                line: range.first_line.saturating_sub(1),
                buffer: Vec::new(),
                max_bytes: max_record_bytes,
                as_values: context.lines_as_values,
                origin,
            }),
            FileFormat::Csv => {
                let mut rows = CsvRows::new(reader, max_record_bytes);
                rows.line = range.first_line;
                // A range after the first begins past the header row: it is read from the
                // file's start.
                let header = match range.start {
                    0 => None,
                    _ => Some(origin.csv_header(max_record_bytes)?),
                };
                if let Some(Ok(names)) = &header {
                    rows.max_fields = names.len();
                }
                Box::new(CsvRecords {
                    rows,
                    header,
                    origin,
                })
            }
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

    /// Why the file cannot be read as planned: it changed since.
    fn changed(&self, what: String) -> SourceError {
        SourceError::Invalid {
            source_name: self.source_name.clone(),
            reason: format!(
                "{}: {what}; the file changed since the run was planned, so its ranges no \
                 longer fall between records",
                self.path
            ),
        }
    }

    /// Positions `file` at the start of `range`, refusing a file now shorter than the range.
    fn seek(&self, file: &mut File, range: ByteRange) -> Result<ByteRange, SourceError> {
        let size = file.metadata().map_err(|error| self.error(error))?.len();
        if size < range.end {
            return Err(self.changed(format!(
                "it is {size} bytes, and bytes {}..{} were planned to be read",
                range.start, range.end
            )));
        }
        file.seek(SeekFrom::Start(range.start))
            .map_err(|error| self.error(error))?;
        Ok(range)
    }

    /// The CSV file's header row, read from its start, for a range that begins past it.
    fn csv_header(&self, max_bytes: usize) -> Result<Header, SourceError> {
        let file = File::open(&self.path).map_err(|error| self.error(error))?;
        let mut reader = BufReader::with_capacity(64 * 1024, file);
        skip_bom(&mut reader).map_err(|error| self.error(error))?;
        let mut rows = CsvRows::new(reader, max_bytes);
        match rows.next_row().map_err(|error| self.error(error))? {
            Some(row) => Ok(read_header(&row, max_bytes)),
            None => Err(self.changed("it has no header row".to_string())),
        }
    }
}

struct JsonLines<R> {
    reader: R,
    line: u64,
    buffer: Vec<u8>,
    max_bytes: usize,
    /// See [`OpenContext::lines_as_values`].
    as_values: bool,
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
            return match RecordText::check(text) {
                Ok(record) if self.as_values => {
                    // Checked: it parses, and no field is named twice for a parse to drop.
                    let value = serde_json::from_str(record.as_str()).expect("a checked record");
                    Some(Ok(Entry::Record { line, value }))
                }
                Ok(record) => Some(Ok(Entry::Text { line, record })),
                Err(reason) => reject(reason),
            };
        }
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
    /// The parser has been given input.
    started: bool,
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
            started: false,
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
            // `csv_core` drops a byte order mark at the start of its first input. The mark is
            // ours to skip, at the start of the file only: a range of the file may begin with
            // a row whose first character is U+FEFF. Less than a mark's three bytes first
            // keeps every byte.
            let input = match self.started {
                true => input,
                false => &input[..input.len().min(1)],
            };
            self.started = true;
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

    /// The entry a JSONL line `json` reads as.
    fn jsonl_record(line: u64, json: &str) -> Entry {
        let record = RecordText::check(json.as_bytes()).unwrap();
        Entry::Text { line, record }
    }

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
        assert!(matches!(&entries[0], Entry::Text { line: 1, .. }));
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
        assert!(matches!(&entries[3], Entry::Text { line: 5, .. }));
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

    /// Writes `bytes` as the one file of a source that splits files at `split_bytes`.
    fn split_source(
        format: FileFormat,
        bytes: &[u8],
        split_bytes: u64,
    ) -> (tempfile::TempDir, FilesSource) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("input"), bytes).unwrap();
        let pattern = dir.path().join("input").display().to_string();
        let source = FilesSource::new("s", &pattern, format).with_split_bytes(split_bytes);
        (dir, source)
    }

    /// Every entry of `items`, read one item after another, each by a reader of its own.
    fn read_items(source: &FilesSource, items: &[WorkItem], max_record_bytes: usize) -> Vec<Entry> {
        let context = OpenContext::local("j", max_record_bytes);
        items
            .iter()
            .flat_map(|item| source.open(item, &context).unwrap().map(Result::unwrap))
            .collect()
    }

    /// For every split size from 1 byte to past the file's size: the ranges cover the file
    /// end to end, and read one after another they give exactly what the whole file gives
    /// (records, rejects, their lines). Returns the most items a split made.
    fn assert_ranges_read_as_the_whole_file(format: FileFormat, bytes: &[u8], cap: usize) -> usize {
        let (_dir, whole) = split_source(format, bytes, 0);
        let items = whole.plan(10).unwrap();
        assert_eq!(items.len(), 1);
        let expected = read_items(&whole, &items, cap);
        let mut most = 0;
        for split_bytes in 1..=bytes.len() as u64 + 1 {
            let (_dir, source) = split_source(format, bytes, split_bytes);
            let items = source.plan(10).unwrap();
            most = most.max(items.len());
            if items.len() > 1 {
                let ranges: Vec<ByteRange> = items.iter().map(|item| item.bytes.unwrap()).collect();
                assert_eq!(ranges[0].start, 0, "split {split_bytes}");
                assert_eq!(ranges.last().unwrap().end, bytes.len() as u64);
                for pair in ranges.windows(2) {
                    assert_eq!(
                        pair[0].end, pair[1].start,
                        "split {split_bytes}: {ranges:?}"
                    );
                }
            }
            let indexes: Vec<u64> = items.iter().map(|item| item.index).collect();
            assert_eq!(indexes, (0..items.len() as u64).collect::<Vec<_>>());
            assert_eq!(
                read_items(&source, &items, cap),
                expected,
                "split {split_bytes}: {items:?}"
            );
        }
        most
    }

    #[test]
    fn files_jsonl_ranges_read_every_line_once_for_every_split_size() {
        let long = format!("{{\"id\":9,\"pad\":\"{}\"}}", "x".repeat(80));
        let text = format!(
            "{{\"id\":1}}\n\n{{\"id\":2,\"s\":\"a\\nb\"}}\r\n{{broken\n   \n[1,2]\n{long}\n\
             \u{FEFF}{{\"id\":3}}\n{{\"id\":4,\"id\":5}}\n{{\"id\":6}}"
        );
        let lines = text.matches('\n').count() + 1;
        let most = assert_ranges_read_as_the_whole_file(FileFormat::Jsonl, text.as_bytes(), 64);
        assert_eq!(most, lines, "split by 1 byte, every line is a range");
        let most = assert_ranges_read_as_the_whole_file(
            FileFormat::Jsonl,
            format!("\u{FEFF}{text}\n").as_bytes(),
            64,
        );
        assert_eq!(most, lines, "with a byte order mark and a last newline");
    }

    #[test]
    fn files_jsonl_record_straddling_a_boundary_belongs_to_the_range_it_begins_in() {
        let text = "{\"id\":1}\n{\"id\":2,\"pad\":\"xxxxxxxxxx\"}\n{\"id\":3}\n";
        // Offset 12 is inside record 2: its range is the one it begins in.
        let (_dir, source) = split_source(FileFormat::Jsonl, text.as_bytes(), 12);
        let items = source.plan(10).unwrap();
        let ranges: Vec<ByteRange> = items.iter().map(|item| item.bytes.unwrap()).collect();
        let second = text.find("{\"id\":3}").unwrap() as u64;
        assert_eq!(
            ranges,
            [
                ByteRange {
                    start: 0,
                    end: second,
                    first_line: 1
                },
                ByteRange {
                    start: second,
                    end: text.len() as u64,
                    first_line: 3
                }
            ]
        );
        let first = read_items(&source, &items[..1], 1024);
        let lines: Vec<u64> = first.iter().map(Entry::line).collect();
        assert_eq!(lines, [1, 2]);
        assert_eq!(
            read_items(&source, &items[1..], 1024),
            [jsonl_record(3, r#"{"id":3}"#)]
        );
    }

    #[test]
    fn files_csv_ranges_with_quoted_newlines_read_every_row_once_for_every_split_size() {
        let long = "z".repeat(80);
        // A quoted header name with a newline, quoted newlines and `""` in rows, a quote
        // inside an unquoted field (data), CRLF and lone CR, blank lines, a ragged row, a row
        // over the cap and a row beginning with U+FEFF.
        let text = format!(
            "\"i\nd\",note\r\n1,\"two\nlines\"\r\n\r\n2,\"say \"\"hi\"\"\n\"\n3,5\" screen\n\
             4\n\n5,{long}\n6,\"\"\"\n\"\"\"\r7,x\n\u{FEFF}8,bom\n9,\"end\n\""
        );
        let most = assert_ranges_read_as_the_whole_file(FileFormat::Csv, text.as_bytes(), 64);
        assert!(most >= 8, "cut between most rows: {most}");
        assert_ranges_read_as_the_whole_file(
            FileFormat::Csv,
            format!("\u{FEFF}{text}\n").as_bytes(),
            64,
        );
        // Blank lines before the header: no range begins before it ends.
        assert_ranges_read_as_the_whole_file(
            FileFormat::Csv,
            format!("\n\r\n{text}").as_bytes(),
            64,
        );
    }

    #[test]
    fn files_csv_every_range_reads_the_header_of_the_file() {
        let mut text = String::from("\u{FEFF}\"id\",name,note\n");
        for n in 1..=40 {
            text.push_str(&format!("{n},name {n},\"note\n{n}\"\n"));
        }
        let (_dir, source) = split_source(FileFormat::Csv, text.as_bytes(), 64);
        let items = source.plan(10).unwrap();
        assert!(items.len() > 10, "{} items", items.len());
        let mut ids = Vec::new();
        for item in &items {
            for entry in read_items(&source, std::slice::from_ref(item), 1024) {
                let Entry::Record { value, line } = entry else {
                    panic!("every row fits the header: {entry:?}")
                };
                let names: Vec<&String> = value.as_object().unwrap().keys().collect();
                assert_eq!(names, ["id", "name", "note"], "{item:?}");
                let id: u64 = value["id"].as_str().unwrap().parse().unwrap();
                assert_eq!(line, 2 * id, "row {id} begins on line {}", 2 * id);
                ids.push(id);
            }
        }
        assert_eq!(ids, (1..=40).collect::<Vec<_>>());
    }

    #[test]
    fn files_csv_with_unbalanced_quotes_is_one_item_read_whole() {
        let text = "id,note\n1,ok\n2,\"never closed\n3,x\n4,y\n";
        let (_dir, source) = split_source(FileFormat::Csv, text.as_bytes(), 4);
        let items = source.plan(10).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].bytes, None, "read whole, as without splitting");
        let entries = read_items(&source, &items, 1024);
        assert_eq!(entries.len(), 2);
        assert!(matches!(&entries[0], Entry::Record { line: 2, .. }));
        assert_eq!(
            entries[1],
            Entry::Record {
                line: 3,
                value: serde_json::json!({"id": "2", "note": "never closed\n3,x\n4,y\n"})
            },
            "the quote runs to the end of the file"
        );
    }

    #[test]
    fn files_range_items_round_trip_and_old_items_still_decode() {
        let (_dir, source) = split_source(FileFormat::Jsonl, b"{}\n{}\n{}\n", 3);
        let items = source.plan(10).unwrap();
        assert_eq!(items.len(), 3);
        for item in &items {
            let decoded: WorkItem = serde_json::from_str(&item.encode()).unwrap();
            assert_eq!(&decoded, item);
        }
        // A plan stored by a build from before ranges: whole files.
        let old: WorkItem =
            serde_json::from_str(r#"{"source":"s","index":0,"origin":"a.jsonl"}"#).unwrap();
        assert_eq!(old.bytes, None);
        assert!(!old.encode().contains("bytes"), "{}", old.encode());
    }

    #[test]
    fn files_range_of_a_file_that_shrank_since_planning_is_refused() {
        let (dir, source) = split_source(FileFormat::Jsonl, b"{}\n{}\n{}\n", 3);
        let items = source.plan(10).unwrap();
        std::fs::write(dir.path().join("input"), b"{}\n").unwrap();
        let Err(error) = source.open(&items[2], &OpenContext::local("j", 1024)) else {
            panic!("the last range is past the file's end")
        };
        let error = error.to_string();
        assert!(
            error.contains("input: it is 3 bytes, and bytes 6..9 were planned")
                && error.contains("changed since the run was planned"),
            "{error}"
        );
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
            Entry::Record { line, .. } | Entry::Text { line, .. } => {
                panic!("line {line} should be rejected")
            }
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
                jsonl_record(1, r#"{"id":1}"#),
                jsonl_record(2, r#"{"id":2}"#),
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
        assert!(matches!(&entries[0], Entry::Text { line: 1, .. }));
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
        assert!(matches!(&entries[2], Entry::Text { line: 3, .. }));
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
                matches!(&entries[0], Entry::Text { line: 1, .. }),
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

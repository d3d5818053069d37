//! The `files` source: every file matching a glob is one work item, read line by line (JSONL)
//! or record by record (CSV with a header row). A line that does not parse becomes a
//! [`Reject`] carrying its line number, raw text and reason; the rest of the file still loads.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::{Entries, Entry, Source, SourceError, SourceKind, WorkItem};
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
        Ok(files
            .into_iter()
            .enumerate()
            .map(|(index, origin)| WorkItem {
                source: self.name.clone(),
                index: index as u64,
                origin,
                range: None,
            })
            .collect())
    }

    fn open(&self, item: &WorkItem) -> Result<Entries, SourceError> {
        let file = File::open(&item.origin).map_err(|error| self.io_error(&item.origin, error))?;
        let reader = BufReader::with_capacity(256 * 1024, file);
        let (name, origin) = (self.name.clone(), item.origin.clone());
        Ok(match self.format {
            FileFormat::Jsonl => Box::new(JsonLines {
                reader,
                line: 0,
                buffer: Vec::new(),
                name,
                origin,
            }),
            FileFormat::Csv => {
                let mut reader = csv::ReaderBuilder::new()
                    .flexible(false)
                    .from_reader(reader);
                let headers = reader
                    .headers()
                    .map(|h| h.iter().map(str::to_string).collect::<Vec<_>>());
                match headers {
                    Ok(headers) => Box::new(CsvRecords {
                        records: reader.into_records(),
                        headers,
                    }),
                    Err(error) => {
                        let error = SourceError::Io {
                            source_name: name,
                            path: origin,
                            error: csv_io_error(error),
                        };
                        Box::new(std::iter::once(Err(error)))
                    }
                }
            }
        })
    }
}

struct JsonLines<R> {
    reader: R,
    line: u64,
    buffer: Vec<u8>,
    name: String,
    origin: String,
}

impl<R: BufRead> Iterator for JsonLines<R> {
    type Item = Result<Entry, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.buffer.clear();
            match self.reader.read_until(b'\n', &mut self.buffer) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(error) => {
                    let error = SourceError::Io {
                        source_name: self.name.clone(),
                        path: self.origin.clone(),
                        error,
                    };
                    return Some(Err(error));
                }
            }
            self.line += 1;
            let text = self.buffer.trim_ascii();
            if text.is_empty() {
                continue;
            }
            let line = self.line;
            let reject = |reason: String| {
                Some(Ok(Entry::Rejected(Reject {
                    line,
                    raw: String::from_utf8_lossy(text).into_owned(),
                    reason,
                })))
            };
            return match serde_json::from_slice::<Value>(text) {
                Ok(value @ Value::Object(_)) => Some(Ok(Entry::Record { line, value })),
                Ok(_) => reject("line is valid JSON but not an object".to_string()),
                Err(error) => reject(format!("invalid JSON: {error}")),
            };
        }
    }
}

struct CsvRecords<R> {
    records: csv::StringRecordsIntoIter<R>,
    headers: Vec<String>,
}

impl<R: std::io::Read> Iterator for CsvRecords<R> {
    type Item = Result<Entry, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        let result = self.records.next()?;
        Some(Ok(match result {
            Ok(record) => {
                let line = record.position().map_or(0, |p| p.line());
                let value: Map<String, Value> = self
                    .headers
                    .iter()
                    .cloned()
                    .zip(record.iter().map(|field| Value::String(field.to_string())))
                    .collect();
                Entry::Record {
                    line,
                    value: Value::Object(value),
                }
            }
            Err(error) => {
                let line = error.position().map_or(0, |p| p.line());
                let raw = match error.kind() {
                    csv::ErrorKind::UnequalLengths { .. } => format!(
                        "{} fields where the header has {}",
                        field_count(&error),
                        self.headers.len()
                    ),
                    _ => String::new(),
                };
                Entry::Rejected(Reject {
                    line,
                    raw,
                    reason: format!("invalid CSV record: {error}"),
                })
            }
        }))
    }
}

fn field_count(error: &csv::Error) -> u64 {
    match error.kind() {
        csv::ErrorKind::UnequalLengths { len, .. } => *len,
        _ => 0,
    }
}

fn csv_io_error(error: csv::Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read_all(format: FileFormat, text: &str) -> Vec<Entry> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(match format {
            FileFormat::Jsonl => "a.jsonl",
            FileFormat::Csv => "a.csv",
        });
        File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let source = FilesSource::new("s", &dir.path().join("*").display().to_string(), format);
        let items = source.plan(10).unwrap();
        assert_eq!(items.len(), 1);
        source
            .open(&items[0])
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
}

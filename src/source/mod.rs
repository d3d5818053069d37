//! Sources: where records come from. Each kind lists its work items (so producers can share
//! them through Redis) and opens one item as a stream of entries, never loading it whole.

mod files;
mod generator;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{ReadSource, SourceConfig, SourceReader};

use crate::unit::Reject;

pub use files::{FileFormat, FilesConfig, FilesSource};
pub use generator::{GeneratorConfig, GeneratorSource, record as generated_record};

/// Every source kind this build knows: adding a kind is its file plus one line here.
pub const KINDS: &[SourceKind] = &[files::KIND, generator::KIND];

/// One kind of source: how its `[[source]]` table is read and how its reader is built.
pub struct SourceKind {
    /// The kind's name, as written in `kind = "..."`.
    pub name: &'static str,
    /// Reads and checks the kind's settings; `None` after recording every problem found.
    pub read: ReadSource,
    /// Builds the reader of source `config`. Cannot fail: the settings were checked when read.
    pub build: fn(&SourceConfig) -> Box<dyn Source>,
}

/// How the job file reads every registered source kind.
pub fn readers() -> Vec<SourceReader> {
    KINDS
        .iter()
        .map(|kind| SourceReader {
            name: kind.name,
            read: kind.read,
        })
        .collect()
}

/// One piece of source work handed to one producer: a file, or a range of generated records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkItem {
    /// The source's name.
    pub source: String,
    /// Position of this item among its source's items; part of unit ids.
    pub index: u64,
    /// A file path, or `generator`.
    pub origin: String,
    /// For generated records: the half-open range of record numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<(u64, u64)>,
}

impl WorkItem {
    /// A stable key for per-item hashes.
    pub fn key(&self) -> String {
        format!("{}/{}", self.source, self.index)
    }

    /// The item as stored in Redis.
    pub(crate) fn encode(&self) -> String {
        serde_json::to_string(self).expect("work items always serialize")
    }
}

/// One thing read from a source: a record, or input that could not become one.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// A parsed record, a JSON object.
    Record {
        /// Line (or record number) in the origin, 1-based.
        line: u64,
        /// The record.
        value: Value,
    },
    /// Unparseable input, kept with its reason for the dead-letter queues.
    Rejected(Reject),
}

impl Entry {
    /// The entry's line (or record number) in its origin.
    pub fn line(&self) -> u64 {
        match self {
            Entry::Record { line, .. } => *line,
            Entry::Rejected(reject) => reject.line,
        }
    }
}

/// Why a source could not be planned or read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The glob matched nothing.
    #[error("source `{source_name}`: path `{pattern}` matches no files")]
    NoFiles {
        /// The source.
        source_name: String,
        /// The glob.
        pattern: String,
    },
    /// Listing or reading failed.
    #[error("source `{source_name}`: {path}: {error}")]
    Io {
        /// The source.
        source_name: String,
        /// The file or pattern.
        path: String,
        /// What failed.
        #[source]
        error: std::io::Error,
    },
}

/// A stream of entries from one work item.
pub type Entries = Box<dyn Iterator<Item = Result<Entry, SourceError>> + Send>;

/// What every kind of source does.
pub trait Source: Send + Sync {
    /// Lists the work items as of now: one per file, or ranges of generated records.
    fn plan(&self, unit_records: usize) -> Result<Vec<WorkItem>, SourceError>;

    /// Opens one of this source's work items. An input record longer than `max_record_bytes`
    /// is never held whole: it becomes a [`Reject`] with its first bytes.
    fn open(&self, item: &WorkItem, max_record_bytes: usize) -> Result<Entries, SourceError>;
}

/// Builds the source a config describes.
pub fn from_config(config: &SourceConfig) -> Box<dyn Source> {
    let kind = KINDS
        .iter()
        .find(|kind| kind.name == config.kind)
        .expect("a source config names a registered kind: only they can be read");
    (kind.build)(config)
}

//! Sources: where records come from. Each kind lists its work items (so producers can share
//! them through Redis) and opens one item as a stream of entries, never loading it whole.

mod files;
mod generator;

use serde_json::Value;

use crate::config::{SourceConfig, SourceKind};
use crate::run_state::WorkItem;
use crate::unit::Reject;

pub use files::FilesSource;
pub use generator::{GeneratorSource, record as generated_record};

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
        error: std::io::Error,
    },
}

/// A stream of entries from one work item.
pub type Entries = Box<dyn Iterator<Item = Result<Entry, SourceError>> + Send>;

/// What every kind of source does.
pub trait Source: Send + Sync {
    /// Lists the work items as of now: one per file, or ranges of generated records.
    fn plan(&self, unit_records: usize) -> Result<Vec<WorkItem>, SourceError>;

    /// Opens one of this source's work items.
    fn open(&self, item: &WorkItem) -> Result<Entries, SourceError>;
}

/// Builds the source a config describes.
pub fn from_config(config: &SourceConfig) -> Box<dyn Source> {
    match &config.kind {
        SourceKind::Files { path, format } => {
            Box::new(FilesSource::new(&config.name, path, *format))
        }
        SourceKind::Generator { count, seed } => {
            Box::new(GeneratorSource::new(&config.name, *count, *seed))
        }
    }
}

//! Sources: where records come from. Each kind lists its work items (so producers can share
//! them through Redis) and opens one item as a stream of entries, never loading it whole.

mod files;
mod generator;
mod http;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{ReadSource, SourceConfig, SourceReader};
use crate::queue::RedisLink;

use crate::unit::{RecordText, Reject};

pub use files::{FileFormat, FilesConfig, FilesSource};
pub use generator::{GeneratorConfig, GeneratorSource, record as generated_record};

/// Every source kind this build knows: adding a kind is its file plus one line here.
pub const KINDS: &[SourceKind] = &[files::KIND, generator::KIND, http::KIND];

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

/// One piece of source work handed to one producer: a file, a byte range of a big file, or a
/// range of generated records.
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
    /// For part of a big file: which bytes of it, so that several producers share the file.
    /// Absent for a whole file (and in plans stored before files were split).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<ByteRange>,
}

/// The bytes `[start, end)` of a file that one work item reads: whole records only, `start`
/// being where a record starts, so ranges read one after another read what one reader of the
/// whole file reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteRange {
    /// Offset of the range's first byte.
    pub start: u64,
    /// Offset just past the range's last byte.
    pub end: u64,
    /// The file's line number at `start` (1-based), so records report their line in the
    /// whole file, not in the range.
    pub first_line: u64,
}

impl WorkItem {
    /// A stable key for per-item hashes.
    pub fn key(&self) -> String {
        format!("{}/{}", self.source, self.index)
    }

    /// Which part of its origin the item is, for logs: a file's byte range (and the line it
    /// begins on), generated record numbers, or `whole`.
    pub fn part(&self) -> String {
        match (self.bytes, self.range) {
            (Some(bytes), _) => format!(
                "bytes {}..{} from line {}",
                bytes.start, bytes.end, bytes.first_line
            ),
            (None, Some((start, end))) => format!("records {start}..{end}"),
            (None, None) => "whole".to_string(),
        }
    }

    /// One item per origin (a tenant) of source `source`, numbered in order.
    pub(crate) fn numbered(source: &str, origins: Vec<String>) -> Vec<WorkItem> {
        origins
            .into_iter()
            .enumerate()
            .map(|(index, origin)| WorkItem {
                source: source.to_string(),
                index: index as u64,
                origin,
                range: None,
                bytes: None,
            })
            .collect()
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
    /// A record that arrived as JSON text (a JSONL line), checked and passed on as it was
    /// written rather than parsed into a value and written out again.
    Text {
        /// Line in the origin, 1-based.
        line: u64,
        /// The record's text.
        record: RecordText,
    },
    /// Unparseable input, kept with its reason for the dead-letter queues.
    Rejected(Reject),
    /// Everything before this entry is read; opening the item again with
    /// [`OpenContext::resume`] set to `position` goes on right after it (a page boundary of an
    /// HTTP API). Sources that cannot resume mid-item never send one.
    Resumable {
        /// The source's own note of where to go on from.
        position: String,
    },
}

impl Entry {
    /// The entry's line (or record number) in its origin.
    pub fn line(&self) -> u64 {
        match self {
            Entry::Record { line, .. } | Entry::Text { line, .. } => *line,
            Entry::Rejected(reject) => reject.line,
            Entry::Resumable { .. } => 0,
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
    /// The source's input is not what it should be (a tenants file with a bad line).
    #[error("source `{source_name}`: {reason}")]
    Invalid {
        /// The source.
        source_name: String,
        /// What is wrong, naming the file and line.
        reason: String,
    },
    /// One work item cannot be read on (an API refused a tenant, a page is not what the
    /// config says): the item fails, the job's other items go on, and the run ends failed
    /// naming it. What was read before the failure is kept.
    #[error("source `{source_name}`: {item} failed at {position}: {reason}")]
    ItemFailed {
        /// The source.
        source_name: String,
        /// The item, e.g. `tenant \`acme\``.
        item: String,
        /// Where in it, e.g. `page 3`.
        position: String,
        /// What went wrong, without secrets.
        reason: String,
    },
    /// Shutdown was asked for while the source waited (an API's `Retry-After`): the item
    /// is picked up again where its checkpoint says.
    #[error("source `{source_name}`: stopped on request")]
    Interrupted {
        /// The source.
        source_name: String,
    },
    /// The source's coordination through Redis (shared limits, tokens) failed.
    #[error("source `{source_name}`: {error}")]
    Redis {
        /// The source.
        source_name: String,
        /// What failed (boxed: a Redis error is large, and rare here).
        #[source]
        error: Box<crate::queue::LinkError>,
    },
}

impl SourceError {
    /// True when only the item being read failed, not the process reading it.
    pub fn fails_item_only(&self) -> bool {
        matches!(self, SourceError::ItemFailed { .. })
    }
}

/// What opening a work item may use besides the item itself.
#[derive(Clone, Default)]
pub struct OpenContext {
    /// An input record longer than this is never held whole: it becomes a [`Reject`] with
    /// its first bytes.
    pub max_record_bytes: usize,
    /// The job's name: keys of what the job's processes share are under it.
    pub job: String,
    /// The job's Redis, for limits and tokens shared by every process of the job; `None`
    /// where nothing may be written to Redis (`run --dry-run`; `check` without a reachable
    /// Redis): limits then hold for this process alone.
    pub link: Option<Arc<RedisLink>>,
    /// Where an earlier reader of the item got to ([`Entry::Resumable`]); `None` from the
    /// start.
    pub resume: Option<String>,
    /// Set when the reading process is asked to stop: a source that may wait long (an API's
    /// `Retry-After`) stops waiting and ends with [`SourceError::Interrupted`].
    pub stop: Option<crate::worker::Shutdown>,
    /// Read JSONL lines into values ([`Entry::Record`]) rather than as text: for a run
    /// planned by a build that did (`PlannedBy::reads_lines_as_values`), whose units were cut
    /// measuring the values' compact JSON.
    pub lines_as_values: bool,
}

impl OpenContext {
    /// Opening with no shared state and no resume point: record cap only.
    pub fn local(job: &str, max_record_bytes: usize) -> OpenContext {
        OpenContext {
            max_record_bytes,
            job: job.to_string(),
            link: None,
            resume: None,
            stop: None,
            lines_as_values: false,
        }
    }
}

/// A stream of entries from one work item.
pub type Entries = Box<dyn Iterator<Item = Result<Entry, SourceError>> + Send>;

/// What every kind of source does.
pub trait Source: Send + Sync {
    /// Lists the work items as of now: one per file, or ranges of generated records.
    fn plan(&self, unit_records: usize) -> Result<Vec<WorkItem>, SourceError>;

    /// Opens one of this source's work items (see [`OpenContext`]). Called within a tokio
    /// runtime; the entries are read on a thread that may block.
    fn open(&self, item: &WorkItem, context: &OpenContext) -> Result<Entries, SourceError>;

    /// What `stevedore check` says after reaching the source (an API's first page), on a
    /// thread that may block; `None` for sources with nothing to reach.
    fn probe(
        &self,
        _items: &[WorkItem],
        _context: &OpenContext,
    ) -> Option<Result<String, SourceError>> {
        None
    }
}

/// Builds the source a config describes.
pub fn from_config(config: &SourceConfig) -> Box<dyn Source> {
    let kind = KINDS
        .iter()
        .find(|kind| kind.name == config.kind)
        .expect("a source config names a registered kind: only they can be read");
    (kind.build)(config)
}

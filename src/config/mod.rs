//! The job config: typed structs, loading from TOML with `${ENV}` interpolation, and validation
//! that reports every problem at once, each with the field path it concerns.
//!
//! Loading is three steps: parse the TOML text, interpolate environment variables over the
//! tree, then read each section into a typed struct ([`raw`]) and check what spans the job
//! ([`validate`]). Each `[[source]]` and `[[sink]]` table goes to the kind its `kind` names,
//! through the [`Kinds`] given by the caller; the kind reads and checks its own settings, so
//! this module never names one. Every step adds to one [`Problems`] list so a user fixes a
//! config in one round, not one error per run.

mod interpolate;
mod raw;
mod validate;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::mapping::Mapping;
use crate::settings::{KindSettings, Section, settings_of};

pub use crate::settings::{Problem, Problems, Secret};
pub use interpolate::interpolate;

/// How a plan basis says that its units are also cut by bytes: `unit_bytes=<budget>`.
const UNIT_BYTES_BASIS: &str = "unit_bytes=";

/// A whole, validated job: what `stevedore run` and its workers act on.
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// The job's identity and where it keeps local state.
    pub job: JobSection,
    /// Where the queues live.
    pub redis: RedisConfig,
    /// How many worker processes of each role, and how they are supervised.
    pub workers: WorkersConfig,
    /// How records are cut into units and how units are delivered.
    pub queue: QueueConfig,
    /// Where records come from, in config order.
    pub sources: Vec<SourceConfig>,
    /// Where records go, in config order; each sink has its own queue.
    pub sinks: Vec<SinkConfig>,
    /// The config file as written (before interpolation, so without secrets): saved with each
    /// run so that its workers read exactly what the supervisor read.
    pub text: String,
}

/// `[job]`: the job's name (part of every queue name and unit id) and its local data dir.
#[derive(Debug, Clone)]
pub struct JobSection {
    /// Job name: letters, digits, `-` and `_`.
    pub name: String,
    /// Directory for worker logs and local state (default `var/<job name>`).
    pub data_dir: PathBuf,
}

/// `[redis]`: an external Redis, or one that stevedore starts and supervises itself.
#[derive(Debug, Clone)]
pub enum RedisConfig {
    /// `url = "managed"`: stevedore runs `redis-server` with AOF (`appendfsync always`).
    Managed {
        /// Directory for the AOF and the server's pid file.
        data_dir: PathBuf,
        /// The `redis-server` binary to run (default: found on `PATH`).
        server_bin: PathBuf,
    },
    /// `url = "redis://host:port/db"`: a Redis someone else runs.
    External {
        /// The connection URL as given.
        url: String,
    },
}

/// `[workers]`: process counts and supervision limits.
#[derive(Debug, Clone)]
pub struct WorkersConfig {
    /// Producer processes.
    pub producers: u32,
    /// Consumer processes; each serves every sink's queue.
    pub consumers: u32,
    /// A worker whose last heartbeat is older than this is killed and restarted.
    pub heartbeat_timeout: Duration,
    /// More restarts than this within `restart_window` fail the run (crash loop).
    pub max_restarts: u32,
    /// The window over which restarts are counted.
    pub restart_window: Duration,
}

/// `[queue]`: unit size and delivery guarantees.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Records per data unit.
    pub unit_records: usize,
    /// How long a received unit stays invisible before it is redelivered.
    pub visibility_timeout: Duration,
    /// Deliveries after which a unit goes to its sink's dead-letter queue.
    pub max_receives: u64,
    /// Producers pause while a sink queue holds more units than this.
    pub high_watermark: u64,
    /// Unit payloads larger than this many bytes are zstd-compressed on the wire.
    pub compress_above: usize,
    /// A longer input record (a line, a CSV row) is skipped while reading, never buffered
    /// whole, and dead-lettered with its line, length and first bytes. Also the byte budget
    /// of a unit's records, so a unit stays well under Redis's 512 MiB.
    pub max_record_bytes: usize,
}

/// One `[[source]]`.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Unique source name; part of unit ids.
    pub name: String,
    /// The kind's name, as written in `kind = "..."`.
    pub kind: &'static str,
    /// The kind's own settings, read and checked by the kind at load.
    pub settings: Arc<dyn KindSettings>,
}

impl SourceConfig {
    /// The settings as the kind's own type (for the kind that read them).
    pub fn settings<T: KindSettings>(&self) -> &T {
        settings_of(self.settings.as_ref())
    }
}

/// One `[[sink]]`.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Unique sink name; names its queue and dead-letter queue.
    pub name: String,
    /// The kind's name, as written in `kind = "..."`.
    pub kind: &'static str,
    /// Field mapping applied to every record before it is written.
    pub map: Mapping,
    /// The kind's own settings, read and checked by the kind at load.
    pub settings: Arc<dyn KindSettings>,
}

impl SinkConfig {
    /// The settings as the kind's own type (for the kind that read them).
    pub fn settings<T: KindSettings>(&self) -> &T {
        settings_of(self.settings.as_ref())
    }
}

/// How a source kind reads its `[[source]]` table (without `name` and `kind`).
#[derive(Clone, Copy)]
pub struct SourceReader {
    /// The kind's name, as written in `kind = "..."`.
    pub name: &'static str,
    /// Reads and checks the kind's settings; `None` after recording why not.
    pub read: ReadSource,
}

/// A source kind's reader: checks its table and returns its settings, or `None` after
/// recording every problem found.
pub type ReadSource = fn(&mut Section<'_>) -> Option<Arc<dyn KindSettings>>;

/// A sink kind's reader: like [`ReadSource`], given the sink's mapping too.
pub type ReadSink = fn(&mut Section<'_>, Option<&Mapping>) -> Option<Arc<dyn KindSettings>>;

/// How a sink kind reads its `[[sink]]` table (without `name`, `kind` and `map`), knowing the
/// sink's mapping (`None` when `[sink.map]` itself has problems: checks against it are skipped,
/// so that they add no problems of their own).
#[derive(Clone, Copy)]
pub struct SinkReader {
    /// The kind's name, as written in `kind = "..."`.
    pub name: &'static str,
    /// Reads and checks the kind's settings against the mapping; `None` after recording why.
    pub read: ReadSink,
}

/// The kinds a job file may name. Given by the layer that knows them (`crate::job`), so this
/// module reads `[[source]]` and `[[sink]]` tables without naming any kind.
#[derive(Clone)]
pub struct Kinds {
    /// Source kinds, in the order error messages list them.
    pub sources: Vec<SourceReader>,
    /// Sink kinds, in the order error messages list them.
    pub sinks: Vec<SinkReader>,
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {file}: {source}")]
    Read {
        /// The config file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config {file} is not valid TOML: {message}")]
    Syntax {
        /// The config file.
        file: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file parsed but some values are wrong.
    #[error("config {file} has {count} problem(s):\n{problems}", count = problems.len())]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// Every problem found.
        problems: Problems,
    },
}

/// Reads a `[redis]` table (`url`, and for `managed` its `data_dir` and `server_bin`), the
/// same for jobs and for `stevedore supervise`; problems go under `redis.`.
pub fn read_redis(value: toml::Value, problems: &mut Problems) -> Option<RedisConfig> {
    raw::read_redis_table(value, problems)
}

/// The text of config `file`.
pub fn read_text(file: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: file.to_path_buf(),
        source,
    })
}

/// The process environment, as `${VAR}` reads it.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// How every stevedore file is read (job files, supervise files): TOML, then `${VAR}`s from
/// `env`, then `read` over the root table. Every problem found on the way is returned at once.
pub fn parse_with<T>(
    text: &str,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    read: impl FnOnce(toml::Table, &mut Problems) -> Option<T>,
) -> Result<T, ConfigError> {
    let mut tree: toml::Value = toml::from_str::<toml::Table>(text)
        .map(toml::Value::Table)
        .map_err(|error| ConfigError::Syntax {
            file: file.to_path_buf(),
            message: error.to_string().trim_end().to_string(),
        })?;
    let mut problems = Problems::default();
    interpolate(&mut tree, "", env, &mut problems);
    let toml::Value::Table(root) = tree else {
        unreachable!("parsed as a table above");
    };
    match read(root, &mut problems) {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(ConfigError::Invalid {
            file: file.to_path_buf(),
            problems,
        }),
    }
}

/// Reports every top-level key of `root` that is not one of `sections`.
pub fn check_sections(root: &toml::Table, sections: &[&str], problems: &mut Problems) {
    for key in root.keys() {
        if !sections.contains(&key.as_str()) {
            problems.push(
                key.clone(),
                format!("unknown section (expected one of: {})", sections.join(", ")),
            );
        }
    }
}

/// Which build planned a run, where it changes how the run is resumed: a run is resumed
/// cut into the units it was planned with, so that a unit id keeps meaning the same records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlannedBy {
    /// This build, or one that plans and cuts as it does.
    This,
    /// A build that cut units by record count only: no byte budget.
    CountOnly,
    /// A build that read every file whole (before byte ranges); it read JSONL lines into
    /// values too, see [`PlannedBy::BeforeText`].
    BeforeSplit,
    /// A build that read JSONL lines into values and wrote them out again: its units were cut
    /// at the byte budget measuring that compact JSON, not the lines as written.
    BeforeText,
}

impl PlannedBy {
    /// Whether JSONL lines must be read into values and written out again, so that units
    /// are cut at the byte budget where the planning build cut them.
    pub fn reads_lines_as_values(self) -> bool {
        matches!(self, PlannedBy::BeforeSplit | PlannedBy::BeforeText)
    }

    /// The bytes of records after which a unit is cut, given `queue.max_record_bytes`: none
    /// for a build that cut by record count only.
    pub fn unit_byte_budget(self, max_record_bytes: usize) -> usize {
        match self {
            PlannedBy::CountOnly => usize::MAX,
            _ => max_record_bytes,
        }
    }
}

/// Which sources' settings a basis holds: this build's, or an earlier build's.
#[derive(Clone, Copy)]
enum SourceBasis {
    This,
    BeforeText,
    BeforeSplit,
}

impl JobConfig {
    /// Parses config `text` (named `file` in errors) with variables from `env`, reading
    /// sources and sinks of the given `kinds`.
    pub fn parse(
        text: &str,
        file: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        kinds: &Kinds,
    ) -> Result<JobConfig, ConfigError> {
        parse_with(text, file, env, |root, problems| {
            raw::read(root, text, kinds, problems)
        })
    }

    /// What a run's unit ids and checkpoints depend on: the sources, the unit size in records
    /// and in bytes. A run may only be resumed under the same basis.
    pub fn plan_basis(&self) -> String {
        self.basis(Some(self.queue.max_record_bytes), SourceBasis::This)
    }

    /// The basis a build without the byte budget wrote (units cut by record count only), when
    /// the config would have had it: such a run resumes, cut as it was planned.
    pub fn count_only_plan_basis(&self) -> Option<String> {
        (self.queue.max_record_bytes == raw::DEFAULT_MAX_RECORD_BYTES)
            .then(|| self.basis(None, SourceBasis::BeforeSplit))
    }

    /// The basis a build from before big files were cut into ranges wrote: such a run
    /// resumes, its files read whole as they were planned.
    pub fn before_split_plan_basis(&self) -> String {
        self.basis(Some(self.queue.max_record_bytes), SourceBasis::BeforeSplit)
    }

    /// The basis a build from before JSONL lines were carried as their text wrote.
    pub fn before_text_plan_basis(&self) -> String {
        self.basis(Some(self.queue.max_record_bytes), SourceBasis::BeforeText)
    }

    /// Which build planned a run from `basis`, as far as resuming it goes; `None` when the
    /// basis is another config's (the run may not be resumed under this one).
    pub fn planned_by(&self, basis: &str) -> Option<PlannedBy> {
        if basis == self.plan_basis() {
            Some(PlannedBy::This)
        } else if self.count_only_plan_basis().as_deref() == Some(basis) {
            Some(PlannedBy::CountOnly)
        } else if basis == self.before_split_plan_basis() {
            Some(PlannedBy::BeforeSplit)
        } else if basis == self.before_text_plan_basis() {
            Some(PlannedBy::BeforeText)
        } else {
            None
        }
    }

    fn basis(&self, unit_bytes: Option<usize>, sources: SourceBasis) -> String {
        let mut basis = format!("unit_records={}", self.queue.unit_records);
        if let Some(bytes) = unit_bytes {
            basis.push_str(&format!(" {UNIT_BYTES_BASIS}{bytes}"));
        }
        for source in &self.sources {
            let settings = match sources {
                SourceBasis::This => source.settings.basis(),
                SourceBasis::BeforeText => source.settings.basis_before_text(),
                SourceBasis::BeforeSplit => source.settings.basis_before_split(),
            };
            basis.push_str(&format!("; {} {} {settings}", source.name, source.kind));
        }
        basis
    }

    /// The sink named `name`, if the config has one.
    pub fn sink(&self, name: &str) -> Option<&SinkConfig> {
        self.sinks.iter().find(|sink| sink.name == name)
    }
}

//! The job config: typed structs, loading from TOML with `${ENV}` interpolation, and validation
//! that reports every problem at once, each with the field path it concerns.
//!
//! Loading is three steps: parse the TOML text, interpolate environment variables over the
//! tree, then read each section into a typed struct ([`raw`]) and check what types alone
//! cannot ([`validate`]). Every step adds to one [`Problems`] list so a user fixes a config
//! in one round, not one error per run.

mod interpolate;
mod raw;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::mapping::Mapping;

pub use interpolate::interpolate;
pub(crate) use validate::check_identifier;

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
}

/// One `[[source]]`.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Unique source name; part of unit ids.
    pub name: String,
    /// What to read.
    pub kind: SourceKind,
}

/// The kinds of source and their settings.
#[derive(Debug, Clone)]
pub enum SourceKind {
    /// Files matched by a glob; each file is one work item, streamed.
    Files {
        /// The glob pattern, e.g. `data/orders-*.jsonl`.
        path: String,
        /// How each file is parsed.
        format: FileFormat,
    },
    /// Deterministic synthetic records for demos and benchmarks.
    Generator {
        /// How many records.
        count: u64,
        /// Seed of the record contents.
        seed: u64,
    },
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

/// One `[[sink]]`.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Unique sink name; names its queue and dead-letter queue.
    pub name: String,
    /// Where and how to write.
    pub kind: SinkKind,
    /// Field mapping applied to every record before it is written.
    pub map: Mapping,
}

/// The kinds of sink and their settings.
#[derive(Debug, Clone)]
pub enum SinkKind {
    /// An embedded SQLite database file.
    Sqlite(SqliteSinkConfig),
    /// A SQL Server or Azure SQL table, written by bulk load.
    Mssql(MssqlSinkConfig),
    /// An Azure Cosmos DB (NoSQL API) container, written by idempotent upserts.
    Cosmos(CosmosSinkConfig),
    /// Accepts and counts; measures the pipeline itself.
    Blackhole,
}

impl SinkKind {
    /// The kind's name, as written in `kind = "..."`.
    pub fn name(&self) -> &'static str {
        match self {
            SinkKind::Sqlite(_) => "sqlite",
            SinkKind::Mssql(_) => "mssql",
            SinkKind::Cosmos(_) => "cosmos",
            SinkKind::Blackhole => "blackhole",
        }
    }
}

/// Settings of the `sqlite` sink.
#[derive(Debug, Clone)]
pub struct SqliteSinkConfig {
    /// Database file; created with its parent directory if missing.
    pub path: PathBuf,
    /// Target table; created if missing.
    pub table: String,
    /// Append rows, or replace rows by key.
    pub mode: WriteMode,
    /// Key columns for upsert mode.
    pub key: Vec<String>,
    /// How long a write waits for another writer's lock before it counts as a failed attempt.
    pub busy_timeout: Duration,
}

/// Settings of the `mssql` sink.
#[derive(Debug, Clone)]
pub struct MssqlSinkConfig {
    /// ADO.NET connection string; holds a password, so it is never printed.
    pub connection: Secret,
    /// Target table, `name` or `schema.name`.
    pub table: String,
    /// Append rows, or replace rows by key.
    pub mode: WriteMode,
    /// Key columns for upsert mode.
    pub key: Vec<String>,
    /// Connections per consumer process.
    pub pool_size: usize,
    /// Units written at once per consumer process.
    pub max_concurrency: usize,
    /// Units started per second per consumer process, if limited.
    pub max_units_per_second: Option<f64>,
    /// Rows per bulk load; a larger unit is loaded in several, in one transaction.
    pub batch_rows: usize,
    /// How long connecting (TCP, login) may take.
    pub connect_timeout: Duration,
    /// How long a write waits for a free pooled connection.
    pub pool_timeout: Duration,
}

/// Settings of the `cosmos` sink.
#[derive(Debug, Clone)]
pub struct CosmosSinkConfig {
    /// Account endpoint, `https://account.documents.azure.com:443/`.
    pub endpoint: String,
    /// Account key; never printed.
    pub key: Secret,
    /// Database name.
    pub database: String,
    /// Container name.
    pub container: String,
    /// Partition key path, `/customerId` (nested: `/a/b`).
    pub partition_key: String,
    /// Document id template over the document's fields, `{order_id}` or `{region}-{id}`.
    pub id: String,
    /// Create the database and container (with `partition_key`) when they are missing.
    pub create_if_missing: bool,
    /// Requests in flight per consumer process.
    pub max_concurrency: usize,
    /// Requests started per second per consumer process; lowered while Cosmos throttles.
    pub max_requests_per_second: f64,
    /// Request units per second per consumer process, by the charge Cosmos reports; 0 is off.
    pub max_ru_per_second: f64,
    /// Retries of a throttled request inside the SDK (its `ThrottlingRetryOptions`).
    pub throttle_retries: u32,
    /// The most the SDK waits in all for one throttled request's retries.
    pub throttle_max_wait: Duration,
    /// A local emulator: accept its self-signed certificate (loopback only), HTTP/1.1, JSON.
    pub emulator: bool,
}

/// A value that must never be printed: `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How a sink applies rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// Insert every row; a unit applied twice is caught by the ledger.
    Append,
    /// Replace rows with the same key.
    Upsert,
}

/// One problem found in a config, at a field path like `sink[1].map.amount.type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: the field path inside the config.
    pub path: String,
    /// What is wrong, for a person.
    pub message: String,
}

/// Every problem found so far; loading continues past each one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(Vec<Problem>);

impl Problems {
    /// Records a problem at `path`.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The problems, in the order found.
    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.0.iter()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            if problem.path.is_empty() {
                write!(f, "  - {}", problem.message)?;
            } else {
                write!(f, "  - {}: {}", problem.path, problem.message)?;
            }
        }
        Ok(())
    }
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
    #[error("config {file} has {count} problem(s):\n{problems}", count = problems.0.len())]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// Every problem found.
        problems: Problems,
    },
}

impl JobConfig {
    /// Loads, interpolates and validates the config at `file` using the process environment.
    pub fn load(file: &Path) -> Result<JobConfig, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        Self::parse(&text, file, &|name| std::env::var(name).ok())
    }

    /// Parses config `text` (named `file` in errors) with variables from `env`.
    pub fn parse(
        text: &str,
        file: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<JobConfig, ConfigError> {
        let mut tree: toml::Value = toml::from_str::<toml::Table>(text)
            .map(toml::Value::Table)
            .map_err(|error| ConfigError::Syntax {
                file: file.to_path_buf(),
                message: error.to_string().trim_end().to_string(),
            })?;
        let mut problems = Problems::default();
        interpolate(&mut tree, "", env, &mut problems);
        let config = raw::read(tree, text, &mut problems);
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError::Invalid {
                file: file.to_path_buf(),
                problems,
            }),
        }
    }

    /// What a run's unit ids and checkpoints depend on: the sources and the unit size. A run
    /// may only be resumed under the same basis.
    pub fn plan_basis(&self) -> String {
        let mut basis = format!("unit_records={}", self.queue.unit_records);
        for source in &self.sources {
            match &source.kind {
                SourceKind::Files { path, format } => {
                    basis.push_str(&format!("; {} files {path} {format:?}", source.name))
                }
                SourceKind::Generator { count, seed } => {
                    basis.push_str(&format!("; {} generator {count} {seed}", source.name))
                }
            }
        }
        basis
    }

    /// The sink named `name`, if the config has one.
    pub fn sink(&self, name: &str) -> Option<&SinkConfig> {
        self.sinks.iter().find(|sink| sink.name == name)
    }
}

#[cfg(test)]
mod tests;

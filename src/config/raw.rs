//! Reading the interpolated TOML tree into typed sections. Each section is read on its own
//! so a wrong value in one does not hide problems in another; unknown keys are collected
//! (not rejected one at a time) with their full path.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::validate;
use super::{
    CosmosSinkConfig, FileFormat, JobConfig, JobSection, MssqlSinkConfig, Problems, QueueConfig,
    RedisConfig, Secret, SinkConfig, SinkKind, SourceConfig, SourceKind, SqliteSinkConfig,
    WorkersConfig, WriteMode,
};
use crate::mapping::Mapping;

#[derive(Deserialize)]
struct RawJob {
    name: String,
    data_dir: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
struct RawRedis {
    url: Option<String>,
    data_dir: Option<PathBuf>,
    server_bin: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
struct RawWorkers {
    producers: Option<u32>,
    consumers: Option<u32>,
    heartbeat_timeout: Option<String>,
    max_restarts: Option<u32>,
    restart_window: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawQueue {
    unit_records: Option<usize>,
    visibility_timeout: Option<String>,
    max_receives: Option<u64>,
    high_watermark: Option<u64>,
    compress_above: Option<usize>,
}

#[derive(Deserialize)]
struct RawFiles {
    path: String,
    format: FileFormat,
}

#[derive(Deserialize)]
struct RawGenerator {
    count: u64,
    #[serde(default)]
    seed: u64,
}

#[derive(Deserialize)]
struct RawSqlite {
    path: PathBuf,
    table: String,
    #[serde(default = "append")]
    mode: WriteMode,
    #[serde(default)]
    key: Vec<String>,
    busy_timeout: Option<String>,
}

#[derive(Deserialize)]
struct RawMssql {
    connection: String,
    table: String,
    #[serde(default = "append")]
    mode: WriteMode,
    #[serde(default)]
    key: Vec<String>,
    pool_size: Option<usize>,
    max_concurrency: Option<usize>,
    max_units_per_second: Option<f64>,
    batch_rows: Option<usize>,
    connect_timeout: Option<String>,
    pool_timeout: Option<String>,
}

#[derive(Deserialize)]
struct RawCosmos {
    endpoint: String,
    key: String,
    database: String,
    container: String,
    partition_key: String,
    id: String,
    #[serde(default)]
    create_if_missing: bool,
    max_concurrency: Option<usize>,
    max_requests_per_second: Option<f64>,
    max_ru_per_second: Option<f64>,
    throttle_retries: Option<u32>,
    throttle_max_wait: Option<String>,
    #[serde(default)]
    emulator: bool,
}

#[derive(Deserialize)]
struct RawBlackhole {}

fn append() -> WriteMode {
    WriteMode::Append
}

const SECTIONS: &[&str] = &["job", "redis", "workers", "queue", "source", "sink"];

/// Reads the whole tree; returns `None` when a required part could not be read at all.
pub(super) fn read(tree: toml::Value, text: &str, problems: &mut Problems) -> Option<JobConfig> {
    let toml::Value::Table(mut root) = tree else {
        return None;
    };
    for key in root.keys() {
        if !SECTIONS.contains(&key.as_str()) {
            problems.push(
                key.clone(),
                format!("unknown section (expected one of: {})", SECTIONS.join(", ")),
            );
        }
    }
    let job = match root.remove("job") {
        Some(value) => section::<RawJob>(value, "job", problems),
        None => {
            problems.push("job", "missing section `[job]` (it needs at least `name`)");
            None
        }
    };
    let redis = optional_section::<RawRedis>(&mut root, "redis", problems);
    let workers = optional_section::<RawWorkers>(&mut root, "workers", problems);
    let queue = optional_section::<RawQueue>(&mut root, "queue", problems);
    let sources = read_array(&mut root, "source", problems, read_source);
    let sinks = read_array(&mut root, "sink", problems, read_sink);

    let job = job.map(|job| JobSection {
        data_dir: job
            .data_dir
            .unwrap_or_else(|| PathBuf::from("var").join(&job.name)),
        name: job.name,
    });
    let redis = redis.map(|redis| read_redis(redis, problems));
    let workers = workers.map(|workers| WorkersConfig {
        producers: workers.producers.unwrap_or(1),
        consumers: workers.consumers.unwrap_or(2),
        heartbeat_timeout: duration(
            workers.heartbeat_timeout,
            "30s",
            "workers.heartbeat_timeout",
            problems,
        ),
        max_restarts: workers.max_restarts.unwrap_or(5),
        restart_window: duration(
            workers.restart_window,
            "60s",
            "workers.restart_window",
            problems,
        ),
    });
    let queue = queue.map(|queue| QueueConfig {
        unit_records: queue.unit_records.unwrap_or(500),
        visibility_timeout: duration(
            queue.visibility_timeout,
            "30s",
            "queue.visibility_timeout",
            problems,
        ),
        max_receives: queue.max_receives.unwrap_or(5),
        high_watermark: queue.high_watermark.unwrap_or(200),
        compress_above: queue.compress_above.unwrap_or(16 * 1024),
    });
    let config = JobConfig {
        job: job?,
        redis: redis?,
        workers: workers?,
        queue: queue?,
        sources,
        sinks,
        text: text.to_string(),
    };
    validate::validate(&config, problems);
    Some(config)
}

/// Deserializes one section, recording unknown keys and the first type error with full paths.
fn section<T: DeserializeOwned>(
    value: toml::Value,
    path: &str,
    problems: &mut Problems,
) -> Option<T> {
    let mut unknown = Vec::new();
    let result = {
        let mut record_unknown = |field: serde_ignored::Path| unknown.push(field.to_string());
        let ignored = serde_ignored::Deserializer::new(value, &mut record_unknown);
        serde_path_to_error::deserialize::<_, T>(ignored)
    };
    for field in unknown {
        problems.push(join(path, &field), "unknown key");
    }
    match result {
        Ok(value) => Some(value),
        Err(error) => {
            let inner = error.path().to_string();
            let at = if inner == "." {
                path.to_string()
            } else {
                join(path, &inner)
            };
            problems.push(at, error.into_inner().to_string());
            None
        }
    }
}

fn optional_section<T: DeserializeOwned + Default>(
    root: &mut toml::Table,
    name: &str,
    problems: &mut Problems,
) -> Option<T> {
    match root.remove(name) {
        Some(value) => section(value, name, problems),
        None => Some(T::default()),
    }
}

fn read_array<T>(
    root: &mut toml::Table,
    name: &str,
    problems: &mut Problems,
    read_one: fn(toml::Table, &str, &mut Problems) -> Option<T>,
) -> Vec<T> {
    match root.remove(name) {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .filter_map(|(index, item)| {
                let path = format!("{name}[{index}]");
                match item {
                    toml::Value::Table(table) => read_one(table, &path, problems),
                    _ => {
                        problems.push(path, format!("expected a table (write it as [[{name}]])"));
                        None
                    }
                }
            })
            .collect(),
        Some(_) => {
            problems.push(
                name,
                format!("expected an array of tables (write each as [[{name}]])"),
            );
            Vec::new()
        }
    }
}

/// Removes and returns a required string key of a source or sink table.
fn take_string(
    table: &mut toml::Table,
    key: &str,
    path: &str,
    problems: &mut Problems,
) -> Option<String> {
    match table.remove(key) {
        Some(toml::Value::String(value)) => Some(value),
        Some(other) => {
            problems.push(
                join(path, key),
                format!("expected a string, found {}", other.type_str()),
            );
            None
        }
        None => {
            problems.push(path, format!("missing key `{key}`"));
            None
        }
    }
}

fn read_source(
    mut table: toml::Table,
    path: &str,
    problems: &mut Problems,
) -> Option<SourceConfig> {
    let name = take_string(&mut table, "name", path, problems);
    let kind = take_string(&mut table, "kind", path, problems)?;
    let path = &match &name {
        Some(name) => format!("{path} ({name})"),
        None => path.to_string(),
    };
    let rest = toml::Value::Table(table);
    let kind = match kind.as_str() {
        "files" => section::<RawFiles>(rest, path, problems).map(|files| SourceKind::Files {
            path: files.path,
            format: files.format,
        }),
        "generator" => {
            section::<RawGenerator>(rest, path, problems).map(|generator| SourceKind::Generator {
                count: generator.count,
                seed: generator.seed,
            })
        }
        other => {
            problems.push(
                join(path, "kind"),
                format!("unknown source kind `{other}` (expected files or generator)"),
            );
            None
        }
    };
    Some(SourceConfig {
        name: name?,
        kind: kind?,
    })
}

fn read_sink(mut table: toml::Table, path: &str, problems: &mut Problems) -> Option<SinkConfig> {
    let name = take_string(&mut table, "name", path, problems);
    let kind = take_string(&mut table, "kind", path, problems)?;
    let path = &match &name {
        Some(name) => format!("{path} ({name})"),
        None => path.to_string(),
    };
    let map = match table.remove("map") {
        None => Some(Mapping::passthrough()),
        Some(toml::Value::Table(map)) => Mapping::parse(&map, &join(path, "map"), problems),
        Some(other) => {
            problems.push(
                join(path, "map"),
                format!("expected a table, found {}", other.type_str()),
            );
            None
        }
    };
    let rest = toml::Value::Table(table);
    let kind = match kind.as_str() {
        "sqlite" => section::<RawSqlite>(rest, path, problems).map(|sqlite| {
            let busy_timeout = duration(
                sqlite.busy_timeout,
                "60s",
                &join(path, "busy_timeout"),
                problems,
            );
            SinkKind::Sqlite(SqliteSinkConfig {
                path: sqlite.path,
                table: sqlite.table,
                mode: sqlite.mode,
                key: sqlite.key,
                busy_timeout,
            })
        }),
        "mssql" => section::<RawMssql>(rest, path, problems).map(|mssql| {
            let max_concurrency = mssql.max_concurrency.unwrap_or(4);
            SinkKind::Mssql(MssqlSinkConfig {
                connection: Secret::new(mssql.connection),
                table: mssql.table,
                mode: mssql.mode,
                key: mssql.key,
                pool_size: mssql.pool_size.unwrap_or(max_concurrency),
                max_concurrency,
                max_units_per_second: mssql.max_units_per_second,
                batch_rows: mssql.batch_rows.unwrap_or(5000),
                connect_timeout: duration(
                    mssql.connect_timeout,
                    "15s",
                    &join(path, "connect_timeout"),
                    problems,
                ),
                pool_timeout: duration(
                    mssql.pool_timeout,
                    "60s",
                    &join(path, "pool_timeout"),
                    problems,
                ),
            })
        }),
        "cosmos" => section::<RawCosmos>(rest, path, problems).map(|cosmos| {
            SinkKind::Cosmos(CosmosSinkConfig {
                endpoint: cosmos.endpoint,
                key: Secret::new(cosmos.key),
                database: cosmos.database,
                container: cosmos.container,
                partition_key: cosmos.partition_key,
                id: cosmos.id,
                create_if_missing: cosmos.create_if_missing,
                max_concurrency: cosmos.max_concurrency.unwrap_or(16),
                max_requests_per_second: cosmos.max_requests_per_second.unwrap_or(1000.0),
                max_ru_per_second: cosmos.max_ru_per_second.unwrap_or(0.0),
                throttle_retries: cosmos.throttle_retries.unwrap_or(9),
                throttle_max_wait: duration(
                    cosmos.throttle_max_wait,
                    "30s",
                    &join(path, "throttle_max_wait"),
                    problems,
                ),
                emulator: cosmos.emulator,
            })
        }),
        "blackhole" => section::<RawBlackhole>(rest, path, problems).map(|_| SinkKind::Blackhole),
        other => {
            problems.push(
                join(path, "kind"),
                format!(
                    "unknown sink kind `{other}` (expected sqlite, mssql, cosmos or blackhole)"
                ),
            );
            None
        }
    };
    Some(SinkConfig {
        name: name?,
        kind: kind?,
        map: map?,
    })
}

fn read_redis(redis: RawRedis, problems: &mut Problems) -> RedisConfig {
    let url = redis.url.unwrap_or_else(|| "managed".to_string());
    if url == "managed" {
        return RedisConfig::Managed {
            data_dir: redis.data_dir.unwrap_or_else(|| PathBuf::from("var/redis")),
            server_bin: redis
                .server_bin
                .unwrap_or_else(|| PathBuf::from("redis-server")),
        };
    }
    if redis.data_dir.is_some() || redis.server_bin.is_some() {
        problems.push(
            "redis",
            "`data_dir` and `server_bin` apply only to `url = \"managed\"`",
        );
    }
    if let Err(error) = redis::Client::open(url.as_str()) {
        problems.push(
            "redis.url",
            format!("not a Redis URL (redis://host:port/db, rediss://..., or managed): {error}"),
        );
    }
    RedisConfig::External { url }
}

fn duration(value: Option<String>, default: &str, path: &str, problems: &mut Problems) -> Duration {
    let text = value.as_deref().unwrap_or(default);
    match humantime::parse_duration(text) {
        Ok(duration) => duration,
        Err(error) => {
            problems.push(
                path,
                format!(
                    "invalid duration `{text}` ({error}); write e.g. \"30s\", \"5m\", \"1h 30m\""
                ),
            );
            Duration::ZERO
        }
    }
}

fn join(path: &str, field: &str) -> String {
    match (path.is_empty(), field.starts_with('[')) {
        (true, _) => field.to_string(),
        (false, true) => format!("{path}{field}"),
        (false, false) => format!("{path}.{field}"),
    }
}

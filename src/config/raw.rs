//! Reading the interpolated TOML tree into typed sections. Each section is read on its own
//! so a wrong value in one does not hide problems in another; unknown keys are collected
//! (not rejected one at a time) with their full path.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::validate;
use super::{
    JobConfig, JobSection, Kinds, QueueConfig, RedisConfig, SinkConfig, SourceConfig, WorkersConfig,
};
use crate::mapping::Mapping;
use crate::settings::{Problems, Section, join, parse_duration, read_value};

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
    max_record_bytes: Option<usize>,
}

/// `queue.max_record_bytes` when not set: 16 MiB.
pub(super) const DEFAULT_MAX_RECORD_BYTES: usize = 16 << 20;

const SECTIONS: &[&str] = &["job", "redis", "workers", "queue", "source", "sink"];

/// Reads the whole tree; returns `None` when a required part could not be read at all.
pub(super) fn read(
    mut root: toml::Table,
    text: &str,
    kinds: &Kinds,
    problems: &mut Problems,
) -> Option<JobConfig> {
    super::check_sections(&root, SECTIONS, problems);
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
    // A job without any table is a problem; tables that could not be read have theirs already.
    for (name, what) in [("source", "[[source]]"), ("sink", "[[sink]]")] {
        let empty = match root.get(name) {
            None => true,
            Some(toml::Value::Array(items)) => items.is_empty(),
            Some(_) => false, // reported as not an array of tables
        };
        if empty {
            problems.push(name, format!("the job has no {what}"));
        }
    }
    let sources = read_array(&mut root, "source", problems, |table, path, problems| {
        read_source(table, path, kinds, problems)
    });
    let sinks = read_array(&mut root, "sink", problems, |table, path, problems| {
        read_sink(table, path, kinds, problems)
    });

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
        max_record_bytes: queue.max_record_bytes.unwrap_or(DEFAULT_MAX_RECORD_BYTES),
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
    read_value(value, path, problems)
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
    mut read_one: impl FnMut(toml::Table, &str, &mut Problems) -> Option<T>,
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

/// What every `[[source]]` and `[[sink]]` table starts with: its name (if readable), its kind,
/// and the path its problems are reported under, `sink[1] (orders)`.
struct Head {
    name: Option<String>,
    kind: String,
    path: String,
}

fn read_head(table: &mut toml::Table, path: &str, problems: &mut Problems) -> Option<Head> {
    let name = take_string(table, "name", path, problems);
    let kind = take_string(table, "kind", path, problems)?;
    let path = match &name {
        Some(name) => format!("{path} ({name})"),
        None => path.to_string(),
    };
    Some(Head { name, kind, path })
}

/// The reader registered for `head.kind` among `readers`, or a problem listing the known ones.
fn find_kind<'k, R>(
    readers: &'k [R],
    name_of: fn(&R) -> &'static str,
    what: &str,
    head: &Head,
    problems: &mut Problems,
) -> Option<&'k R> {
    let found = readers.iter().find(|reader| name_of(reader) == head.kind);
    if found.is_none() {
        let known: Vec<&str> = readers.iter().map(name_of).collect();
        problems.push(
            join(&head.path, "kind"),
            format!(
                "unknown {what} kind `{}` (expected {})",
                head.kind,
                one_of(&known)
            ),
        );
    }
    found
}

fn read_source(
    mut table: toml::Table,
    path: &str,
    kinds: &Kinds,
    problems: &mut Problems,
) -> Option<SourceConfig> {
    let head = read_head(&mut table, path, problems)?;
    let reader = find_kind(&kinds.sources, |r| r.name, "source", &head, problems)?;
    let settings = (reader.read)(&mut Section::new(table, &head.path, problems));
    Some(SourceConfig {
        name: head.name?,
        kind: reader.name,
        settings: settings?,
    })
}

fn read_sink(
    mut table: toml::Table,
    path: &str,
    kinds: &Kinds,
    problems: &mut Problems,
) -> Option<SinkConfig> {
    let head = read_head(&mut table, path, problems)?;
    let map = match table.remove("map") {
        None => Some(Mapping::passthrough()),
        Some(toml::Value::Table(map)) => Mapping::parse(&map, &join(&head.path, "map"), problems),
        Some(other) => {
            problems.push(
                join(&head.path, "map"),
                format!("expected a table, found {}", other.type_str()),
            );
            None
        }
    };
    let reader = find_kind(&kinds.sinks, |r| r.name, "sink", &head, problems)?;
    let mut section = Section::new(table, &head.path, problems);
    // Without a readable mapping the kind still reads its settings, so that its own problems
    // are reported in the same round.
    let settings = (reader.read)(&mut section, map.as_ref());
    Some(SinkConfig {
        name: head.name?,
        kind: reader.name,
        map: map?,
        settings: settings?,
    })
}

/// `a`, `a or b`, `a, b or c`.
fn one_of(names: &[&str]) -> String {
    match names {
        [] => "none".to_string(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// Reads a `[redis]` table at path `redis` (also `stevedore supervise`'s).
pub(super) fn read_redis_table(value: toml::Value, problems: &mut Problems) -> Option<RedisConfig> {
    section::<RawRedis>(value, "redis", problems).map(|redis| read_redis(redis, problems))
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
    parse_duration(value.as_deref(), default, path, problems)
}

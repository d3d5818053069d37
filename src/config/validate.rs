//! Checks across fields that types alone cannot express: names, ranges, keys that must
//! agree with each other. Each failed check adds a problem; none stops the others.

use std::collections::HashSet;

use super::{
    CosmosSinkConfig, JobConfig, MssqlSinkConfig, Problems, SinkKind, SourceKind, WriteMode,
};
use crate::mapping::Mapping;

/// Adds a problem for every rule `config` breaks.
pub(super) fn validate(config: &JobConfig, problems: &mut Problems) {
    check_name(&config.job.name, "job.name", problems);
    if config.workers.producers == 0 {
        problems.push("workers.producers", "must be at least 1");
    }
    if config.workers.consumers == 0 {
        problems.push("workers.consumers", "must be at least 1");
    }
    if !(1..=100_000).contains(&config.queue.unit_records) {
        problems.push("queue.unit_records", "must be between 1 and 100000");
    }
    if config.queue.max_receives == 0 {
        problems.push("queue.max_receives", "must be at least 1");
    }
    if config.queue.visibility_timeout < std::time::Duration::from_secs(1) {
        problems.push("queue.visibility_timeout", "must be at least 1s");
    }
    if config.sources.is_empty() {
        problems.push("source", "the job has no [[source]]");
    }
    if config.sinks.is_empty() {
        problems.push("sink", "the job has no [[sink]]");
    }
    let mut names = HashSet::new();
    for (index, source) in config.sources.iter().enumerate() {
        let path = format!("source[{index}] ({})", source.name);
        check_name(&source.name, &format!("{path}.name"), problems);
        if !names.insert(source.name.as_str()) {
            problems.push(format!("{path}.name"), "another source has this name");
        }
        match &source.kind {
            SourceKind::Files { path: pattern, .. } => {
                if let Err(error) = glob::Pattern::new(pattern) {
                    problems.push(format!("{path}.path"), format!("not a valid glob: {error}"));
                }
            }
            SourceKind::Generator { .. } => {}
        }
    }
    let mut names = HashSet::new();
    let mut sqlite_targets = HashSet::new();
    for (index, sink) in config.sinks.iter().enumerate() {
        let path = format!("sink[{index}] ({})", sink.name);
        check_name(&sink.name, &format!("{path}.name"), problems);
        if !names.insert(sink.name.as_str()) {
            problems.push(format!("{path}.name"), "another sink has this name");
        }
        match &sink.kind {
            SinkKind::Sqlite(sqlite) => {
                check_identifier(&sqlite.table, &format!("{path}.table"), problems);
                if !sqlite_targets.insert((sqlite.path.clone(), sqlite.table.to_lowercase())) {
                    problems.push(
                        format!("{path}.table"),
                        "another sqlite sink writes this table of this file",
                    );
                }
                check_keys(sqlite.mode, &sqlite.key, &sink.map, &path, problems);
            }
            SinkKind::Mssql(mssql) => {
                check_mssql(mssql, &path, problems);
                if sink.map.is_passthrough() {
                    problems.push(
                        format!("{path}.map"),
                        "an mssql sink needs [sink.map]: the table's columns are fixed",
                    );
                }
                check_keys(mssql.mode, &mssql.key, &sink.map, &path, problems);
            }
            SinkKind::Cosmos(cosmos) => check_cosmos(cosmos, &sink.map, &path, problems),
            SinkKind::Blackhole => {}
        }
    }
}

/// Upsert needs key columns that the mapping writes; append takes none.
fn check_keys(mode: WriteMode, key: &[String], map: &Mapping, path: &str, problems: &mut Problems) {
    match mode {
        WriteMode::Upsert if key.is_empty() => problems.push(
            format!("{path}.key"),
            "upsert mode needs the key columns, e.g. key = [\"id\"]",
        ),
        WriteMode::Append if !key.is_empty() => problems.push(
            format!("{path}.key"),
            "key applies only to mode = \"upsert\"",
        ),
        _ => {}
    }
    for column in key {
        check_identifier(column, &format!("{path}.key"), problems);
        if !map.is_passthrough() && !map.has_column(column) {
            problems.push(
                format!("{path}.key"),
                format!("key column `{column}` is not in [sink.map]"),
            );
        }
    }
}

/// Limits of the `mssql` sink, and a connection string that parses.
fn check_mssql(mssql: &MssqlSinkConfig, path: &str, problems: &mut Problems) {
    let parts: Vec<&str> = mssql.table.split('.').collect();
    if parts.len() > 2 {
        problems.push(
            format!("{path}.table"),
            format!("`{}` is not `name` or `schema.name`", mssql.table),
        );
    }
    for part in parts {
        check_identifier(part, &format!("{path}.table"), problems);
    }
    if let Err(error) = crate::sink::mssql::ConnectionSettings::parse(&mssql.connection) {
        problems.push(format!("{path}.connection"), error.to_string());
    }
    if !(1..=256).contains(&mssql.max_concurrency) {
        problems.push(
            format!("{path}.max_concurrency"),
            "must be between 1 and 256",
        );
    }
    if mssql.pool_size < mssql.max_concurrency {
        problems.push(
            format!("{path}.pool_size"),
            format!(
                "must be at least max_concurrency ({}): each unit written at once holds a connection",
                mssql.max_concurrency
            ),
        );
    }
    if let Some(rate) = mssql.max_units_per_second
        && !(rate.is_finite() && rate > 0.0)
    {
        problems.push(
            format!("{path}.max_units_per_second"),
            "must be a positive number",
        );
    }
    if !(1..=1_000_000).contains(&mssql.batch_rows) {
        problems.push(
            format!("{path}.batch_rows"),
            "must be between 1 and 1000000",
        );
    }
}

/// Limits of the `cosmos` sink, an id template and key path that parse, and fields the
/// mapping writes.
fn check_cosmos(cosmos: &CosmosSinkConfig, map: &Mapping, path: &str, problems: &mut Problems) {
    use crate::sink::cosmos::document::{IdTemplate, PartitionKeyPath};
    if !(cosmos.endpoint.starts_with("https://") || cosmos.endpoint.starts_with("http://")) {
        problems.push(
            format!("{path}.endpoint"),
            "must be an https:// URL, e.g. \"https://myaccount.documents.azure.com:443/\"",
        );
    }
    if cosmos.key.expose().is_empty() {
        problems.push(
            format!("{path}.key"),
            "is empty; write key = \"${COSMOS_KEY}\"",
        );
    }
    for (field, value) in [
        ("database", &cosmos.database),
        ("container", &cosmos.container),
    ] {
        if value.is_empty() || value.contains(['/', '\\', '?', '#']) {
            problems.push(
                format!("{path}.{field}"),
                "must be a non-empty name without / \\ ? #",
            );
        }
    }
    let mut fields = Vec::new();
    match PartitionKeyPath::parse(&cosmos.partition_key) {
        Ok(key) if key.is_document_id() => {}
        Ok(key) if key.field() == "id" => problems.push(
            format!("{path}.partition_key"),
            format!(
                "`{}` reads inside `id`, but a document's id is the rendered id text; use \"/id\" or another field",
                key.as_str()
            ),
        ),
        Ok(key) => fields.push(key.field().to_string()),
        Err(error) => problems.push(format!("{path}.partition_key"), error),
    }
    match IdTemplate::parse(&cosmos.id) {
        Ok(id) => fields.extend(id.fields().map(str::to_string)),
        Err(error) => problems.push(format!("{path}.id"), error),
    }
    if !map.is_passthrough() {
        for field in fields {
            if !map.has_column(&field) {
                problems.push(
                    format!("{path}.map"),
                    format!(
                        "`{field}` is used by id or partition_key but not written by [sink.map]"
                    ),
                );
            }
        }
    }
    if !(1..=256).contains(&cosmos.max_concurrency) {
        problems.push(
            format!("{path}.max_concurrency"),
            "must be between 1 and 256",
        );
    }
    if !(cosmos.max_requests_per_second.is_finite() && cosmos.max_requests_per_second > 0.0) {
        problems.push(
            format!("{path}.max_requests_per_second"),
            "must be a positive number",
        );
    }
    if !(cosmos.max_ru_per_second.is_finite() && cosmos.max_ru_per_second >= 0.0) {
        problems.push(
            format!("{path}.max_ru_per_second"),
            "must be 0 (off) or a positive number",
        );
    }
}

/// Job, source and sink names appear in queue names and unit ids.
fn check_name(name: &str, path: &str, problems: &mut Problems) {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        problems.push(
            path,
            format!("`{name}` is not a valid name (1-64 letters, digits, `-` or `_`)"),
        );
    }
}

/// Table and column names are spliced into SQL, so they must be plain identifiers.
pub(crate) fn check_identifier(name: &str, path: &str, problems: &mut Problems) {
    let mut chars = name.chars();
    let valid = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128;
    if !valid {
        problems.push(path, format!("`{name}` is not a valid identifier (letters, digits and `_`, not starting with a digit)"));
    }
}

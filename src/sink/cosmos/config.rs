//! `kind = "cosmos"`: its settings, their defaults, and the checks made once at load. The id
//! template and the partition key path are parsed here into the [`Shape`] of every document.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::document::{IdTemplate, PartitionKeyPath, Shape};
use crate::mapping::Mapping;
use crate::settings::{HOUR, KindSettings, Secret, Section};

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
    /// Partition key path as written, `/customerId` (nested: `/a/b`).
    pub partition_key: String,
    /// Document id template as written, `{order_id}` or `{region}-{id}`.
    pub id: String,
    /// Both parsed: how a row becomes a document.
    pub shape: Shape,
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

impl KindSettings for CosmosSinkConfig {}

/// The table as written.
#[derive(Deserialize)]
struct Raw {
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

/// Reads `[[sink]] kind = "cosmos"`: limits, an id template and key path that parse, and
/// fields the mapping writes.
pub(super) fn read(
    section: &mut Section<'_>,
    map: Option<&Mapping>,
) -> Option<Arc<dyn KindSettings>> {
    let raw: Raw = section.read()?;
    let throttle_max_wait = section.duration(
        raw.throttle_max_wait.as_deref(),
        "30s",
        "throttle_max_wait",
        Duration::ZERO..=HOUR,
    );
    let max_concurrency = raw.max_concurrency.unwrap_or(16);
    let max_requests_per_second = raw.max_requests_per_second.unwrap_or(1000.0);
    let max_ru_per_second = raw.max_ru_per_second.unwrap_or(0.0);
    if !(raw.endpoint.starts_with("https://") || raw.endpoint.starts_with("http://")) {
        section.problem(
            "endpoint",
            "must be an https:// URL, e.g. \"https://myaccount.documents.azure.com:443/\"",
        );
    }
    if raw.key.is_empty() {
        section.problem("key", "is empty; write key = \"${COSMOS_KEY}\"");
    }
    for (field, value) in [("database", &raw.database), ("container", &raw.container)] {
        if value.is_empty() || value.contains(['/', '\\', '?', '#']) {
            section.problem(field, "must be a non-empty name without / \\ ? #");
        }
    }
    let mut fields = Vec::new();
    let key = match PartitionKeyPath::parse(&raw.partition_key) {
        Ok(key) if key.is_document_id() => Some(key),
        Ok(key) if key.field() == "id" => {
            section.problem(
                "partition_key",
                format!(
                    "`{}` reads inside `id`, but a document's id is the rendered id text; use \"/id\" or another field",
                    key.as_str()
                ),
            );
            None
        }
        Ok(key) => {
            fields.push(key.field().to_string());
            Some(key)
        }
        Err(error) => {
            section.problem("partition_key", error);
            None
        }
    };
    let id = match IdTemplate::parse(&raw.id) {
        Ok(id) => {
            fields.extend(id.fields().map(str::to_string));
            Some(id)
        }
        Err(error) => {
            section.problem("id", error);
            None
        }
    };
    if let Some(map) = map.filter(|map| !map.is_passthrough()) {
        for field in fields {
            if !map.has_column(&field) {
                section.problem(
                    "map",
                    format!(
                        "`{field}` is used by id or partition_key but not written by [sink.map]"
                    ),
                );
            }
        }
    }
    if !(1..=256).contains(&max_concurrency) {
        section.problem("max_concurrency", "must be between 1 and 256");
    }
    if !(max_requests_per_second.is_finite() && max_requests_per_second > 0.0) {
        section.problem("max_requests_per_second", "must be a positive number");
    }
    if !(max_ru_per_second.is_finite() && max_ru_per_second >= 0.0) {
        section.problem("max_ru_per_second", "must be 0 (off) or a positive number");
    }
    Some(Arc::new(CosmosSinkConfig {
        shape: Shape { id: id?, key: key? },
        endpoint: raw.endpoint,
        key: Secret::new(raw.key),
        database: raw.database,
        container: raw.container,
        partition_key: raw.partition_key,
        id: raw.id,
        create_if_missing: raw.create_if_missing,
        max_concurrency,
        max_requests_per_second,
        max_ru_per_second,
        throttle_retries: raw.throttle_retries.unwrap_or(9),
        throttle_max_wait,
        emulator: raw.emulator,
    }))
}

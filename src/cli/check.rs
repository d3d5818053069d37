//! `stevedore check`: validate a config and reach everything it names, before a deploy.

use std::path::Path;
use std::time::Duration;

use super::{EXIT_CONFIG, load_config};
use crate::config::RedisConfig;
use crate::plan::plan_sources;
use crate::queue::redact_url;

/// Checks the job in `config_path`; returns 0 when everything is reachable, else 2.
pub async fn check(config_path: &Path) -> i32 {
    let Some(config) = load_config(config_path) else {
        return EXIT_CONFIG;
    };
    println!(
        "config {}: valid (job {})",
        config_path.display(),
        config.job.name
    );
    let mut ok = true;
    let data_dir = &config.job.data_dir;
    if data_dir.exists() && !data_dir.is_dir() {
        println!(
            "data_dir: {} is a file, not a directory",
            data_dir.display()
        );
        ok = false;
    }
    let items = match plan_sources(&config) {
        Ok(items) => {
            println!("sources: {} work item(s)", items.len());
            items
        }
        Err(error) => {
            println!("sources: {error}");
            ok = false;
            Vec::new()
        }
    };
    let redis_ok = match check_redis(&config.redis).await {
        Ok(line) => {
            println!("redis: {line}");
            true
        }
        Err(line) => {
            println!("redis: {line}");
            ok = false;
            false
        }
    };
    if !items.is_empty() {
        ok &= probe_sources(&config, items, redis_ok).await;
    }
    for sink_config in &config.sinks {
        match crate::sink::from_config(sink_config).check().await {
            Ok(line) => println!("sink {}: {line}", sink_config.name),
            Err(error) => {
                println!("sink {}: {error}", sink_config.name);
                ok = false;
            }
        }
    }
    if ok {
        println!("check passed");
        0
    } else {
        println!("check failed");
        EXIT_CONFIG
    }
}

/// Reaches what the sources read (an API's first page). The requests count against the
/// job's shared limits when its Redis is reachable, so a check beside a running job cannot
/// push the API over its limit.
async fn probe_sources(
    config: &crate::config::JobConfig,
    items: Vec<crate::source::WorkItem>,
    redis_ok: bool,
) -> bool {
    let link = match (&config.redis, redis_ok) {
        (RedisConfig::External { url }, true) => crate::queue::RedisLink::new(url)
            .ok()
            .map(|link| std::sync::Arc::new(link.with_patience(crate::queue::Patience::Impatient))),
        _ => None,
    };
    let mut ok = true;
    for source_config in &config.sources {
        let context = crate::source::OpenContext {
            link: link.clone(),
            ..crate::source::OpenContext::local(&config.job.name, config.queue.max_record_bytes)
        };
        let source = crate::source::from_config(source_config);
        let items = items.clone();
        let probed = tokio::task::spawn_blocking(move || source.probe(&items, &context)).await;
        match probed {
            Ok(None) => {}
            Ok(Some(Ok(line))) => println!("source {}: {line}", source_config.name),
            Ok(Some(Err(error))) => {
                println!("source {}: {error}", source_config.name);
                ok = false;
            }
            Err(error) => {
                println!("source {}: reading failed: {error}", source_config.name);
                ok = false;
            }
        }
    }
    ok
}

async fn check_redis(redis: &RedisConfig) -> Result<String, String> {
    match redis {
        RedisConfig::Managed {
            server_bin,
            data_dir,
        } => {
            let output = tokio::process::Command::new(server_bin)
                .arg("--version")
                .output()
                .await
                .map_err(|e| format!("managed, but {} cannot run: {e}", server_bin.display()))?;
            let version = String::from_utf8_lossy(&output.stdout);
            Ok(format!(
                "managed ({}), data in {}",
                version
                    .split_whitespace()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" "),
                data_dir.display()
            ))
        }
        RedisConfig::External { url } => {
            let shown = redact_url(url);
            let client = redis::Client::open(url.as_str()).map_err(|e| format!("{shown}: {e}"))?;
            // The 5 s below is the one limit: the client's own (1 s to connect, 0.5 s a reply)
            // would call a busy but healthy Redis unreachable.
            let patient = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(None)
                .set_response_timeout(None);
            let ping = async {
                let mut connection = client
                    .get_multiplexed_async_connection_with_config(&patient)
                    .await?;
                redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
            };
            match tokio::time::timeout(Duration::from_secs(5), ping).await {
                Ok(Ok(_)) => Ok(format!("{shown}: reachable")),
                Ok(Err(error)) => Err(format!("{shown}: {error}")),
                Err(_) => Err(format!("{shown}: no answer within 5 s")),
            }
        }
    }
}

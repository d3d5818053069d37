//! `stevedore run`: run a job once and report.
//!
//! Whatever happens, a `--summary-json` file is written (also when the config is bad or Redis
//! cannot be reached), so automation always has a status and a reason to read. The paths the
//! run writes to are checked before anything starts.

use std::path::Path;
use std::time::Instant;

use serde_json::json;

use super::{EXIT_CONFIG, EXIT_FAILED};
use crate::supervisor::{self, RunOptions};
use crate::worker::LogFormat;

/// How `stevedore run` was asked to run.
pub struct RunFlags<'a> {
    /// `--summary-json`.
    pub summary_json: Option<&'a Path>,
    /// `--dry-run`: read, map and check; write nothing.
    pub dry_run: bool,
    /// A pass of `stevedore supervise` runs on the group's Redis, whatever the job's `[redis]`.
    pub pass_redis: Option<&'a str>,
    /// How workers log.
    pub log_format: LogFormat,
    /// `--metrics-addr`: serve `/metrics` there while the run lasts.
    pub metrics_addr: Option<&'a str>,
}

/// Runs the job in `config_path` once; returns the exit code.
pub async fn run(config_path: &Path, flags: RunFlags<'_>) -> i32 {
    let RunFlags {
        summary_json,
        dry_run,
        pass_redis,
        log_format,
        metrics_addr,
    } = flags;
    let started = Instant::now();
    if let Some(path) = summary_json
        && let Err(why) = check_output_file(path)
    {
        eprintln!("stevedore: --summary-json {}: {why}", path.display());
        return EXIT_CONFIG;
    }
    let early = EarlyExit {
        summary_json,
        started,
    };
    let config = match crate::job::load(config_path) {
        Ok(mut config) => {
            if let Some(url) = pass_redis {
                config.redis = crate::config::RedisConfig::External {
                    url: url.to_string(),
                };
            }
            config
        }
        Err(error) => {
            eprintln!("stevedore: {error}");
            return early.fail(None, &error.to_string(), EXIT_CONFIG);
        }
    };
    if dry_run {
        let (report, misfit) = crate::dry_run::dry_run(&config).await;
        print!("{}", report.render());
        let json = serde_json::to_value(&report).expect("reports serialize");
        return write_summary(summary_json, &json).unwrap_or(report.exit_code(misfit));
    }
    let job = Some(config.job.name.as_str());
    if let Err(why) = check_data_dir(&config.job.data_dir) {
        let reason = format!("job.data_dir {}: {why}", config.job.data_dir.display());
        eprintln!("stevedore: {reason}");
        return early.fail(job, &reason, EXIT_CONFIG);
    }
    let metrics = match metrics_addr {
        Some(addr) => match crate::metrics::http::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(error) => {
                let reason = format!("--metrics-addr: {error}");
                eprintln!("stevedore: {reason}");
                return early.fail(job, &reason, EXIT_CONFIG);
            }
        },
        None => None,
    };
    let name = config.job.name.clone();
    let options = RunOptions {
        log_format,
        metrics,
    };
    let summary = match supervisor::run_once(config, options).await {
        Ok(summary) => summary,
        Err(error) => {
            eprintln!("stevedore: {error}");
            let code = if error.is_config_error() {
                EXIT_CONFIG
            } else {
                EXIT_FAILED
            };
            return early.fail(Some(&name), &error.to_string(), code);
        }
    };
    println!("{}", summary.render());
    let json = serde_json::to_value(&summary).expect("summaries serialize");
    write_summary(summary_json, &json).unwrap_or(summary.exit_code())
}

/// Writes `--summary-json`, if asked for; `Some(EXIT_FAILED)` when the file cannot be written.
fn write_summary(path: Option<&Path>, summary: &serde_json::Value) -> Option<i32> {
    let path = path?;
    let error = write_json(path, summary).err()?;
    eprintln!(
        "stevedore: cannot write the summary to {}: {error}",
        path.display()
    );
    Some(EXIT_FAILED)
}

/// A run that ended before it had a summary of its own.
struct EarlyExit<'a> {
    summary_json: Option<&'a Path>,
    started: Instant,
}

impl EarlyExit<'_> {
    /// Writes the summary of a run that failed before its workers ran; returns `code`.
    fn fail(&self, job: Option<&str>, reason: &str, code: i32) -> i32 {
        if self.summary_json.is_none() {
            return code;
        }
        let summary = json!({
            "job": job,
            "run": null,
            "resumed": false,
            "status": "failed",
            "reason": reason,
            "records_read": 0,
            "sinks": {},
            "workers": [],
            "duration_s": self.started.elapsed().as_secs_f64(),
            "log_dir": null,
        });
        // The run's own failure is what the exit code reports, whether or not this is written.
        let _ = write_summary(self.summary_json, &summary);
        code
    }
}

fn write_json(path: &Path, value: &serde_json::Value) -> std::io::Result<()> {
    let json = serde_json::to_string_pretty(value).expect("JSON values serialize");
    std::fs::write(path, json + "\n")
}

/// The summary file can be written: its directory exists and takes the file. Probed by
/// opening it for appending, which leaves an existing file as it is.
fn check_output_file(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        return Err("is a directory".into());
    }
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(format!("directory {} does not exist", dir.display()));
    }
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map(drop)
        .map_err(|error| format!("cannot be written: {error}"))
}

/// The data dir is a directory that can be created (0700) or already is one.
fn check_data_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.exists() && !dir.is_dir() {
        return Err("is a file, not a directory".into());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|error| format!("cannot be created: {error}"))
}

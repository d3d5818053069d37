//! `stevedore run`: run a job once and report.

use std::path::Path;

use super::{EXIT_CONFIG, EXIT_FAILED, load_config};
use crate::supervisor::{self, RunOptions};
use crate::worker::LogFormat;

/// Runs the job in `config_path` once; returns the exit code.
pub async fn run(config_path: &Path, summary_json: Option<&Path>, log_format: LogFormat) -> i32 {
    let Some(config) = load_config(config_path) else {
        return EXIT_CONFIG;
    };
    let options = RunOptions { log_format };
    let summary = match supervisor::run_once(config, options).await {
        Ok(summary) => summary,
        Err(error) => {
            eprintln!("stevedore: {error}");
            return if error.is_config_error() {
                EXIT_CONFIG
            } else {
                EXIT_FAILED
            };
        }
    };
    println!("{}", summary.render());
    if let Some(path) = summary_json {
        let json = serde_json::to_string_pretty(&summary).expect("summaries serialize");
        if let Err(error) = std::fs::write(path, json + "\n") {
            eprintln!(
                "stevedore: cannot write the summary to {}: {error}",
                path.display()
            );
            return EXIT_FAILED;
        }
    }
    summary.exit_code()
}

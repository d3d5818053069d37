//! `stevedore supervise`: the long-running daemon, one per host, and what the commands that
//! talk to a group of daemons share: loading the supervise file and reaching the group's Redis.

use std::path::Path;

use super::{EXIT_CONFIG, EXIT_FAILED};
use crate::config::RedisConfig;
use crate::queue::{Patience, RedisLink};
use crate::schedule::SuperviseConfig;
use crate::schedule::daemon::{self, DaemonOptions};
use crate::worker::LogFormat;

/// Runs the daemon for the supervise file at `config_path`; returns the exit code.
pub async fn supervise(
    config_path: &Path,
    environment: Option<&str>,
    log_format: LogFormat,
) -> i32 {
    let Some(config) = load_supervise(config_path) else {
        return EXIT_CONFIG;
    };
    if let Some(environment) = environment {
        let mut problems = crate::settings::Problems::default();
        crate::settings::check_name(environment, "--env", &mut problems);
        if !problems.is_empty() {
            eprintln!("stevedore: --env `{environment}` is not a name (letters, digits, `-`, `_`)");
            return EXIT_CONFIG;
        }
    }
    let options = DaemonOptions {
        environment: environment.map(str::to_string),
        log_format: log_format.as_str(),
    };
    match daemon::supervise(config, options).await {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("stevedore: {error}");
            EXIT_FAILED
        }
    }
}

/// Loads a supervise file, printing every problem; `None` means exit 2.
pub(super) fn load_supervise(path: &Path) -> Option<SuperviseConfig> {
    match SuperviseConfig::load(path) {
        Ok(config) => Some(config),
        Err(error) => {
            eprintln!("stevedore: {error}");
            None
        }
    }
}

/// A link to the group's Redis for one command (`status`, `trigger`, ...): a managed Redis is
/// found through the URL file its daemon wrote.
pub(super) fn group_link(config: &SuperviseConfig) -> Result<RedisLink, String> {
    let url = match &config.redis {
        RedisConfig::External { url } => url.clone(),
        RedisConfig::Managed { data_dir, .. } => {
            let file = daemon::managed_url_file(data_dir);
            std::fs::read_to_string(&file)
                .map(|url| url.trim().to_string())
                .map_err(|error| {
                    format!(
                        "the group's redis is managed by its daemon, which is not running here \
                         ({}: {error})",
                        file.display()
                    )
                })?
        }
    };
    let link = RedisLink::new(&url).map_err(|error| error.to_string())?;
    Ok(link.with_patience(Patience::Impatient))
}

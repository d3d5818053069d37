//! Loading a job file with every source and sink kind this build registers: the one place
//! where [`config`](crate::config), which knows no kind, meets [`source::KINDS`] and
//! [`sink::KINDS`].

use std::path::Path;

use crate::config::{ConfigError, JobConfig, Kinds, process_env, read_text};
use crate::{sink, source};

/// Every registered kind, as the job file reads them.
pub fn kinds() -> Kinds {
    Kinds {
        sources: source::readers(),
        sinks: sink::readers(),
    }
}

/// Loads, interpolates and validates the job file at `file` with the process environment.
pub fn load(file: &Path) -> Result<JobConfig, ConfigError> {
    parse_file(file, &process_env)
}

/// Loads the job file at `file` with variables from `env` (a supervise file checks each of
/// its schedules' jobs with the environment it was read with).
pub fn parse_file(
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<JobConfig, ConfigError> {
    parse(&read_text(file)?, file, env)
}

/// Parses job file `text` (named `file` in errors) with variables from `env`.
pub fn parse(
    text: &str,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<JobConfig, ConfigError> {
    JobConfig::parse(text, file, env, &kinds())
}

#[cfg(test)]
mod tests;

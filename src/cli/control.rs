//! `stevedore trigger | stop | pause | resume SCHEDULE`: tell a group of daemons what to do
//! with one schedule, from any host. Each is one change in Redis that every daemon honours.

use std::path::Path;

use super::supervise::{group_link, load_supervise};
use super::{EXIT_CONFIG, EXIT_FAILED};
use crate::queue::RedisLink;
pub use crate::schedule::control::Control;
use crate::schedule::state::GroupState;
use crate::schedule::{ScheduleConfig, SuperviseConfig};

/// Switches the whole group to read-only (every pass runs with `--dry-run`) with a reason, or
/// back (`reason` is `None`).
pub async fn read_only(config_path: &Path, reason: Option<&str>) -> i32 {
    let (config, link) = match open_group(config_path) {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let state = GroupState::new(&link, &config.group.name);
    let group = &config.group.name;
    let result = match reason {
        Some(reason) => state
            .set_read_only(Some(&format!("{reason} ({})", who())))
            .await
            .map(|()| {
                format!("group {group} is read-only: passes that start from now run with --dry-run")
            }),
        None => state
            .set_read_only(None)
            .await
            .map(|()| format!("group {group} writes again")),
    };
    report(result.map_err(|error| error.to_string()))
}

/// Loads the supervise file and links to its group's Redis; the exit code if either fails.
pub(super) fn open_group(config_path: &Path) -> Result<(SuperviseConfig, RedisLink), i32> {
    let config = load_supervise(config_path).ok_or(EXIT_CONFIG)?;
    match group_link(&config) {
        Ok(link) => Ok((config, link)),
        Err(error) => {
            eprintln!("stevedore: {error}");
            Err(EXIT_FAILED)
        }
    }
}

/// Prints what a command did (exit 0) or why it failed (exit 1).
fn report(result: Result<String, String>) -> i32 {
    match result {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(error) => {
            eprintln!("stevedore: {error}");
            EXIT_FAILED
        }
    }
}

/// Carries out `control` on schedule `name` of the supervise file at `config_path`.
pub async fn control(config_path: &Path, name: &str, control: Control) -> i32 {
    let (config, link) = match open_group(config_path) {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let Some(schedule) = find(&config, name) else {
        return EXIT_CONFIG;
    };
    let state = GroupState::new(&link, &config.group.name);
    let result = crate::schedule::control::apply(&state, schedule, control, &who()).await;
    report(result)
}

/// The schedule called `name`, or a message listing the ones there are.
pub(super) fn find<'a>(config: &'a SuperviseConfig, name: &str) -> Option<&'a ScheduleConfig> {
    let found = config.schedules.iter().find(|s| s.name == name);
    if found.is_none() {
        let names: Vec<&str> = config.schedules.iter().map(|s| s.name.as_str()).collect();
        eprintln!(
            "stevedore: no schedule `{name}` in this file (there are: {})",
            names.join(", ")
        );
    }
    found
}

/// `user@host`, for a pause's record.
fn who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        // SAFETY: getuid has no preconditions and cannot fail.
        .unwrap_or_else(|_| format!("uid {}", unsafe { libc::getuid() }));
    format!("{user}@{}", crate::supervisor::host_name())
}

//! `stevedore trigger | stop | pause | resume SCHEDULE`: tell a group of daemons what to do
//! with one schedule, from any host. Each is one change in Redis that every daemon honours.

use std::path::Path;

use super::supervise::{group_link, load_supervise};
use super::{EXIT_CONFIG, EXIT_FAILED};
use crate::queue::RedisLink;
use crate::schedule::slots::{decide, signature};
use crate::schedule::state::{GroupState, Paused};
use crate::schedule::{ScheduleConfig, SuperviseConfig};

/// What to do with the schedule.
#[derive(Debug, Clone)]
pub enum Control {
    /// Run a pass now, through the overlap policy.
    Trigger,
    /// Stop the running pass gracefully.
    Stop,
    /// No new passes until resumed.
    Pause {
        /// Why, for `status`.
        reason: Option<String>,
    },
    /// New passes again.
    Resume,
}

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
    let result = match control {
        Control::Trigger => trigger(&state, schedule).await,
        Control::Stop => stop(&state, schedule).await,
        Control::Pause { reason } => {
            let paused = Paused {
                by: who(),
                reason,
                at: crate::clock::now_ms() as i64,
            };
            state
                .set_paused(name, Some(&paused))
                .await
                .map(|()| format!("paused {name}: no new pass starts until `stevedore resume {name}` (a running pass goes on)"))
                .map_err(|error| error.to_string())
        }
        Control::Resume => state
            .set_paused(name, None)
            .await
            .map(|()| format!("resumed {name}"))
            .map_err(|error| error.to_string()),
    };
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

/// Queues a pass now, going through the overlap policy like a slot would.
async fn trigger(state: &GroupState<'_>, schedule: &ScheduleConfig) -> Result<String, String> {
    let name = &schedule.name;
    let signature = signature(schedule);
    // Daemons record their looks several times a second: try until ours lands.
    for _ in 0..50 {
        let seen = state.read(name).await.map_err(|e| e.to_string())?;
        let decision = decide(schedule, &seen.observed, true);
        if state
            .apply(name, &seen, &signature, &decision)
            .await
            .map_err(|e| e.to_string())?
        {
            let queued = decision.run.iter().any(|q| q.manual);
            return Ok(if queued && decision.cancel_running {
                format!(
                    "triggered {name}: the running pass is asked to stop (overlap = cancel_other), then this one runs"
                )
            } else if queued && seen.observed.running {
                format!(
                    "triggered {name}: it runs when the running pass ends (overlap = buffer_one)"
                )
            } else if queued {
                format!("triggered {name}: a daemon of its environment starts it now")
            } else {
                format!(
                    "not triggered: a pass of {name} runs and its overlap policy skips new ones; the trigger is counted as skipped"
                )
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Err(format!(
        "could not record the trigger of {name}: the daemons kept deciding first; try again"
    ))
}

/// Asks the running pass, named by its number, to stop.
async fn stop(state: &GroupState<'_>, schedule: &ScheduleConfig) -> Result<String, String> {
    let name = &schedule.name;
    let seen = state.read(name).await.map_err(|e| e.to_string())?;
    let Some(running) = seen.running else {
        return Ok(format!("no pass of {name} is running"));
    };
    let pass = running.pass.unwrap_or(0);
    if state
        .request_stop(name, pass)
        .await
        .map_err(|e| e.to_string())?
    {
        Ok(format!(
            "asked pass {pass} of {name} (host {}, pid {}) to stop; its run is resumed by the next pass",
            running.host.as_deref().unwrap_or("?"),
            running
                .pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "?".into())
        ))
    } else {
        Ok(format!(
            "pass {pass} of {name} ended before it could be asked to stop"
        ))
    }
}

/// `user@host`, for a pause's record.
fn who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        // SAFETY: getuid has no preconditions and cannot fail.
        .unwrap_or_else(|_| format!("uid {}", unsafe { libc::getuid() }));
    format!("{user}@{}", crate::supervisor::host_name())
}

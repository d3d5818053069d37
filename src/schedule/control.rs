//! What `trigger`, `stop`, `pause` and `resume` do to one schedule: each is one change in
//! Redis that every daemon of the group honours. The commands and the status page's buttons
//! both come here.

use super::ScheduleConfig;
use super::slots::{decide, signature};
use super::state::{GroupState, Paused};

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

/// Carries out `control` on `schedule`, on behalf of `who` (recorded with a pause); a line
/// saying what happened, or why it could not.
pub async fn apply(
    state: &GroupState<'_>,
    schedule: &ScheduleConfig,
    control: Control,
    who: &str,
) -> Result<String, String> {
    let name = &schedule.name;
    match control {
        Control::Trigger => trigger(state, schedule).await,
        Control::Stop => stop(state, schedule).await,
        Control::Pause { reason } => {
            let paused = Paused {
                by: who.to_string(),
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
    }
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

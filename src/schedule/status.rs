//! The status of a supervise group as one JSON object: what `stevedore status --json`
//! prints, what a daemon serves at `/status`, and what its status page and metrics show.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::daemon::DAEMON_ALIVE_MS;
use super::slots::signature;
use super::state::{GroupState, Snapshot};
use super::{ScheduleConfig, SuperviseConfig, Timing};
use crate::queue::{LinkError, Queues, RedisLink, SinkQueues};
use crate::run_state::RunState;

/// The whole status as one JSON object.
pub async fn collect(
    config: &SuperviseConfig,
    link: &Arc<RedisLink>,
    environment: &str,
) -> Result<Value, LinkError> {
    let state = GroupState::new(link, &config.group.name);
    let (now, daemons) = state.daemons().await?;
    let daemons: Vec<Value> = daemons
        .into_iter()
        .map(|d| {
            json!({
                "id": d.id,
                "host": d.host,
                "pid": d.pid,
                "environment": d.environment,
                "started_at": time(d.started_at),
                "last_heartbeat": time(d.heartbeat),
                "alive": now - d.heartbeat <= DAEMON_ALIVE_MS,
            })
        })
        .collect();
    let mut schedules = Vec::new();
    let mut read_only = None;
    for schedule in &config.schedules {
        let seen = state.read(&schedule.name).await?;
        read_only = seen.read_only.clone();
        let recent = state.recent(&schedule.name).await?;
        let queues = Queues::new(link.clone());
        let mut dead_letters = serde_json::Map::new();
        for sink in &schedule.sinks {
            let dead = queues
                .counts(&SinkQueues::new(&schedule.job_name, sink).dead)
                .await?;
            dead_letters.insert(sink.clone(), json!(dead.waiting + dead.in_flight));
        }
        let running = match &seen.running {
            Some(pass) => Some(running(link, schedule, pass, seen.leased).await?),
            None => None,
        };
        schedules.push(json!({
            "name": schedule.name,
            "job": schedule.job.display().to_string(),
            "timing": signature(schedule),
            "environments": schedule.environments,
            "gated": !schedule.runs_in(environment),
            "mode": format!("{:?}", schedule.mode).to_lowercase(),
            "paused": seen.fields.get("paused").and_then(|p| serde_json::from_str::<Value>(p).ok()),
            "next_fire": next_fire(schedule, &seen),
            "running": running,
            "pending": seen.pending.iter().map(|p| json!({"slot": time(p.slot), "attempt": p.attempt, "manual": p.manual})).collect::<Vec<_>>(),
            "last": {
                "started_at": seen.number("last_start").map(time),
                "finished_at": seen.number("last_finish").map(time),
                "outcome": seen.fields.get("last_outcome"),
                "exit_code": seen.number("last_exit"),
            },
            "last_success_at": seen.number("last_success").map(time),
            "consecutive_failures": seen.number("failures").unwrap_or(0),
            "missed": seen.number("missed").unwrap_or(0),
            "skipped": seen.number("skipped").unwrap_or(0),
            "dead_letters": dead_letters,
            "recent": recent.iter().map(|r| json!({
                "slot": time(r.slot),
                "run": r.run,
                "host": r.host,
                "pid": r.pid,
                "started_at": r.started_at.map(time),
                "finished_at": r.finished_at.map(time),
                "outcome": r.outcome,
                "exit_code": r.exit_code,
                "attempt": r.attempt,
                "manual": r.manual,
            })).collect::<Vec<_>>(),
        }));
    }
    Ok(json!({
        "group": config.group.name,
        "environment": environment,
        "redis": link.display_url(),
        "now": time(now),
        "read_only": read_only,
        "daemons": daemons,
        "schedules": schedules,
    }))
}

/// The running pass with its run's progress.
async fn running(
    link: &Arc<RedisLink>,
    schedule: &ScheduleConfig,
    pass: &super::state::PassEntry,
    leased: bool,
) -> Result<Value, LinkError> {
    let run: Option<String> = link
        .query(
            "reading the job's current run",
            &redis::Cmd::get(RunState::current_run_key(&schedule.job_name)),
        )
        .await?;
    let progress = match &run {
        Some(run) => Some(
            RunState::new(link.clone(), &schedule.job_name, run)
                .ledger()
                .progress()
                .await?,
        ),
        None => None,
    };
    Ok(json!({
        "pass": pass.pass,
        "slot": time(pass.slot),
        "attempt": pass.attempt,
        "manual": pass.manual,
        "host": pass.host,
        "pid": pass.pid,
        "started_at": pass.started_at.map(time),
        "takeovers": pass.takeovers,
        "run": run,
        "records_read": progress.as_ref().map(|p| p.read),
        "written": progress.as_ref().map(|p| p.written.clone()),
        "dead_lettered": progress.as_ref().map(|p| p.dead.clone()),
        "daemon_alive": leased,
    }))
}

/// When the next pass is due, in UTC and the schedule's zone; `null` while a cyclic
/// schedule's pass runs (it is due `every` after that pass ends).
fn next_fire(schedule: &ScheduleConfig, seen: &Snapshot) -> Value {
    let now = seen.observed.now_ms;
    match &schedule.timing {
        Timing::Cron(cron) => {
            let after = seen.observed.last_slot.unwrap_or(now).max(now);
            match cron.next_slot(after) {
                Some(slot) => {
                    let local = DateTime::from_timestamp_millis(slot)
                        .map(|at| at.with_timezone(&cron.zone()).to_rfc3339());
                    json!({"utc": time(slot), "local": local, "zone": cron.zone().name()})
                }
                None => Value::Null,
            }
        }
        Timing::Every(_) if seen.running.is_some() || !seen.pending.is_empty() => Value::Null,
        Timing::Every(_) => {
            let slot = seen.observed.next_fire.unwrap_or(now);
            json!({"utc": time(slot), "local": null, "zone": null})
        }
    }
}

/// Milliseconds as an RFC 3339 UTC time.
pub fn time(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

//! `stevedore status`: every schedule of a group as Redis knows it, from any host: next fire
//! (in its zone and UTC), gated or paused, the running pass and its progress, the last
//! outcomes, failures in a row, missed and skipped slots, and the live daemons.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::EXIT_FAILED;
use crate::queue::{LinkError, RedisLink};
use crate::run_state::RunState;
use crate::schedule::daemon::DAEMON_ALIVE_MS;
use crate::schedule::slots::signature;
use crate::schedule::state::{GroupState, Snapshot};
use crate::schedule::{ScheduleConfig, SuperviseConfig, Timing};

/// Prints the status of the group in `config_path` (as one JSON object with `json`).
pub async fn status(config_path: &Path, environment: Option<&str>, json: bool) -> i32 {
    let (config, link) = match super::control::open_group(config_path) {
        Ok((config, link)) => (config, Arc::new(link)),
        Err(code) => return code,
    };
    let environment = environment.unwrap_or(&config.group.environment);
    match collect(&config, &link, environment).await {
        Ok(status) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&status).expect("JSON values serialize")
            );
            0
        }
        Ok(status) => {
            print!("{}", render(&status));
            0
        }
        Err(error) => {
            eprintln!("stevedore: {error}");
            EXIT_FAILED
        }
    }
}

/// The whole status as one JSON object.
async fn collect(
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
            "consecutive_failures": seen.number("failures").unwrap_or(0),
            "missed": seen.number("missed").unwrap_or(0),
            "skipped": seen.number("skipped").unwrap_or(0),
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
    pass: &crate::schedule::state::PassEntry,
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
fn time(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// The status for a person.
fn render(status: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "group {} on {} (environment {}), {}",
        status["group"].as_str().unwrap_or("?"),
        status["redis"].as_str().unwrap_or("?"),
        status["environment"].as_str().unwrap_or("?"),
        status["now"].as_str().unwrap_or("?")
    );
    if let Some(reason) = status["read_only"].as_str() {
        let _ = writeln!(out, "READ-ONLY: every pass runs with --dry-run ({reason})");
    }
    for s in status["schedules"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "\n{}  {}  job {}{}{}",
            s["name"].as_str().unwrap_or("?"),
            s["timing"].as_str().unwrap_or("?"),
            s["job"].as_str().unwrap_or("?"),
            if s["gated"] == true {
                "  [gated: not run in this environment]"
            } else {
                ""
            },
            if s["mode"] != "active" {
                format!("  [{}]", s["mode"].as_str().unwrap_or("?"))
            } else {
                String::new()
            },
        );
        if let Some(paused) = s["paused"].as_object() {
            let _ = writeln!(
                out,
                "  PAUSED by {}{}",
                paused.get("by").and_then(Value::as_str).unwrap_or("?"),
                paused
                    .get("reason")
                    .and_then(Value::as_str)
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            );
        }
        match &s["next_fire"] {
            Value::Null => {
                let _ = writeln!(out, "  next:     after the running pass");
            }
            next => {
                let _ = writeln!(
                    out,
                    "  next:     {}{}",
                    next["utc"].as_str().unwrap_or("?"),
                    next["local"]
                        .as_str()
                        .map(|l| format!(" ({l} {})", next["zone"].as_str().unwrap_or("")))
                        .unwrap_or_default()
                );
            }
        }
        if let Some(r) = s["running"].as_object() {
            let _ = writeln!(
                out,
                "  running:  pass {} on {} pid {}, run {}, {} read, since {}{}",
                r["pass"],
                r["host"].as_str().unwrap_or("?"),
                r["pid"],
                r["run"].as_str().unwrap_or("(starting)"),
                r["records_read"].as_u64().unwrap_or(0),
                r["started_at"].as_str().unwrap_or("?"),
                if r["daemon_alive"] == false {
                    " (its daemon is gone: another takes it over)"
                } else {
                    ""
                }
            );
        }
        let last = &s["last"];
        if let Some(outcome) = last["outcome"].as_str() {
            let _ = writeln!(
                out,
                "  last:     {outcome} (exit {}) at {}",
                last["exit_code"],
                last["finished_at"].as_str().unwrap_or("?")
            );
        }
        let _ = writeln!(
            out,
            "  counts:   {} failure(s) in a row, {} missed, {} skipped, {} waiting",
            s["consecutive_failures"],
            s["missed"],
            s["skipped"],
            s["pending"].as_array().map_or(0, Vec::len)
        );
    }
    let _ = writeln!(out, "\ndaemons:");
    for d in status["daemons"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  {} pid {} environment {}, last heartbeat {}{}",
            d["host"].as_str().unwrap_or("?"),
            d["pid"],
            d["environment"].as_str().unwrap_or("?"),
            d["last_heartbeat"].as_str().unwrap_or("?"),
            if d["alive"] == true {
                ""
            } else {
                " (silent: gone?)"
            }
        );
    }
    out
}

//! `stevedore status`: every schedule of a group as Redis knows it, from any host: next fire
//! (in its zone and UTC), gated or paused, the running pass and its progress, the last
//! outcomes, failures in a row, missed and skipped slots, and the live daemons.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use super::EXIT_FAILED;
use crate::schedule::status::collect;

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

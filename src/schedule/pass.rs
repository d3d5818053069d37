//! One pass: a child `stevedore run` process with its own directory (log and summary) under
//! the daemon's data dir. The daemon never shares memory with a pass; it starts, signals and
//! reaps it, and reads its exit code and summary.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::state::PassEntry;
use crate::supervisor::{detach_from_terminal, send_signal};

/// The environment variable that hands a pass the group's Redis URL (not shown by `ps`). The
/// pass runs on the group's Redis whatever its job file says, so that its lock, run state and
/// fencing token are where every daemon of the group looks.
pub const PASS_REDIS_ENV: &str = "STEVEDORE_RUN_REDIS_URL";

/// How many pass directories each schedule keeps (the oldest are removed).
const KEPT_PASS_DIRS: usize = 100;

/// Why the daemon ended a pass early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// `stevedore stop` (or `cancel_other`) asked for it.
    Stopped,
    /// It ran longer than the schedule's `timeout`.
    TimedOut,
    /// The daemon is shutting down and the grace ran out: another daemon resumes it.
    Shutdown,
    /// Another daemon took the pass over (this one was cut off from Redis or paused).
    LeaseLost,
}

/// A running pass.
pub struct Pass {
    /// What Redis knows of it.
    pub entry: PassEntry,
    /// The process.
    pub child: Child,
    /// Its pid.
    pub pid: u32,
    /// When it started, by this host's monotonic clock.
    pub started: Instant,
    /// Its directory.
    pub dir: PathBuf,
    /// Set once the daemon asked it to end.
    pub ending: Option<Ending>,
    /// When the daemon last asked (a pass that ignores SIGTERM is asked again, then killed).
    pub asked_at: Option<Instant>,
    /// When the daemon last renewed the pass's lease.
    pub renewed: Option<Instant>,
}

/// How to start passes.
pub struct PassLauncher {
    /// This binary.
    pub exe: PathBuf,
    /// The group's Redis.
    pub redis_url: String,
    /// The daemon's data dir; each schedule has a directory in it.
    pub data_dir: PathBuf,
    /// `--log-format` for the pass.
    pub log_format: &'static str,
}

impl PassLauncher {
    /// Starts `entry` of `schedule` for job file `job`; `dry_run` passes `--dry-run`.
    pub fn spawn(
        &self,
        schedule: &str,
        job: &Path,
        entry: PassEntry,
        dry_run: bool,
    ) -> std::io::Result<Pass> {
        let schedule_dir = self.data_dir.join(schedule);
        let dir = schedule_dir.join(format!(
            "{}-pass{}",
            stamp(entry.slot),
            entry.pass.unwrap_or(0)
        ));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(dir.join("pass.log"))?;
        let mut command = Command::new(&self.exe);
        command
            .args(["--log-format", self.log_format, "run", "--config"])
            .arg(job)
            .arg("--summary-json")
            .arg(dir.join("summary.json"))
            .env(PASS_REDIS_ENV, &self.redis_url)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if dry_run {
            command.arg("--dry-run");
        }
        // Its own process group, and SIGTERM from the kernel if the daemon dies: the pass then
        // stops cleanly, and the daemon that takes the slot over resumes it.
        detach_from_terminal(&mut command);
        let child = command.spawn()?;
        prune(&schedule_dir, KEPT_PASS_DIRS);
        Ok(Pass {
            pid: child.id().unwrap_or(0),
            entry,
            child,
            started: Instant::now(),
            dir,
            ending: None,
            asked_at: None,
            renewed: None,
        })
    }
}

impl Pass {
    /// Asks the pass to stop (SIGTERM: its workers finish or give back their units); asked
    /// again a minute later, `stevedore run` kills its workers at once (units in flight are
    /// delivered again later).
    pub fn ask_to_end(&mut self, why: Ending) {
        if self.ending.is_none() || why == Ending::LeaseLost {
            self.ending = Some(why);
        }
        let again = self
            .asked_at
            .is_none_or(|at| at.elapsed() > Duration::from_secs(60));
        if again {
            send_signal(self.pid, libc::SIGTERM);
            self.asked_at = Some(Instant::now());
        }
    }

    /// Kills the pass at once (a second SIGTERM makes `stevedore run` kill its workers).
    pub fn end_now(&mut self) {
        send_signal(self.pid, libc::SIGTERM);
    }

    /// The run id its summary names, if it wrote one.
    pub fn run_id(&self) -> Option<String> {
        self.summary_text("run")
    }

    /// Why the run failed, as its summary says (cut to 1,000 characters), for alerts.
    pub fn reason(&self) -> Option<String> {
        let reason = self.summary_text("reason")?;
        Some(match reason.char_indices().nth(1_000) {
            Some((end, _)) => format!("{}...", &reason[..end]),
            None => reason,
        })
    }

    /// A text field of the summary the pass wrote, if any.
    fn summary_text(&self, field: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.join("summary.json")).ok()?;
        let summary: serde_json::Value = serde_json::from_str(&text).ok()?;
        summary[field].as_str().map(str::to_string)
    }
}

/// A slot as a file-name-safe UTC stamp: `20261128T023000.000Z`.
pub fn stamp(slot: i64) -> String {
    chrono::DateTime::from_timestamp_millis(slot)
        .map(|at| at.format("%Y%m%dT%H%M%S%.3fZ").to_string())
        .unwrap_or_else(|| slot.to_string())
}

/// Removes all but the `keep` newest directories in `dir`.
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|entry| Some((entry.metadata().ok()?.modified().ok()?, entry.path())))
        .collect();
    if dirs.len() <= keep {
        return;
    }
    dirs.sort();
    for (_, old) in &dirs[..dirs.len() - keep] {
        if let Err(error) = std::fs::remove_dir_all(old) {
            tracing::warn!(%error, dir = %old.display(), "cannot remove an old pass directory");
        }
    }
}

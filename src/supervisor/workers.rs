//! Worker processes: how they are started (re-executing this binary with the hidden `worker`
//! subcommand), where their output goes, and when a dead one is restarted.

use std::collections::VecDeque;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::retry;
use crate::worker::{LogFormat, Role, WorkerArgs, worker_name};

/// The environment variable that hands workers the Redis URL: unlike an argument, it does
/// not show a password to everyone who runs `ps`.
pub(crate) const REDIS_URL_ENV: &str = "STEVEDORE_REDIS_URL";

/// Everything needed to start a worker of this run.
pub(crate) struct Launcher {
    /// This binary.
    pub exe: PathBuf,
    /// The job config file, as the supervisor read it.
    pub config_path: PathBuf,
    /// The run id.
    pub run: String,
    /// The Redis URL workers connect to.
    pub redis_url: String,
    /// Where worker logs go.
    pub log_dir: PathBuf,
    /// How workers log.
    pub log_format: LogFormat,
    /// The job lock's fencing token, checked by every write of the workers.
    pub fence: u64,
}

impl Launcher {
    /// Starts worker `role` number `id`, appending its output to its log file.
    pub(crate) fn spawn(&self, role: Role, id: u32) -> std::io::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.log_path(role, id))?;
        // A resumed run's log may have been created by an older version, with wider rights.
        log.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let args = WorkerArgs {
            role,
            id,
            config: self.config_path.clone(),
            run: self.run.clone(),
            fence: self.fence,
        };
        let mut command = Command::new(&self.exe);
        command
            .args(args.command_line(self.log_format))
            .env(REDIS_URL_ENV, &self.redis_url)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        detach_from_terminal(&mut command);
        command.spawn()
    }

    /// The log file of worker `role` number `id`.
    pub(crate) fn log_path(&self, role: Role, id: u32) -> PathBuf {
        self.log_dir.join(format!("{}.log", worker_name(role, id)))
    }
}

/// Puts a child in its own process group (a terminal's Ctrl-C reaches only the supervisor,
/// which then stops children in order) and has the kernel send it SIGTERM if the supervisor dies.
pub(crate) fn detach_from_terminal(command: &mut Command) {
    command.process_group(0);
    // SAFETY: prctl is async-signal-safe and touches only the child being set up.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

/// Sends `signal` to process `pid`.
pub(crate) fn signal(pid: u32, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// Where a worker is in its life.
pub(crate) enum State {
    /// Running as this child.
    Running(Child),
    /// Died; to be started again at this instant.
    Waiting(Instant),
    /// Finished its work (or stopped on request) and will not be restarted.
    Exited(i32),
}

/// One supervised worker.
pub(crate) struct WorkerProcess {
    /// Its role.
    pub role: Role,
    /// Its number within the role.
    pub id: u32,
    /// Its current state.
    pub state: State,
    /// Its latest process id.
    pub pid: u32,
    /// When its current process started.
    pub started: Instant,
    /// Restarts so far.
    pub restarts: u32,
    recent_restarts: VecDeque<Instant>,
}

impl WorkerProcess {
    /// A worker that has just been started as `child`.
    pub(crate) fn new(role: Role, id: u32, child: Child) -> WorkerProcess {
        let pid = child.id().unwrap_or(0);
        WorkerProcess {
            role,
            id,
            state: State::Running(child),
            pid,
            started: Instant::now(),
            restarts: 0,
            recent_restarts: VecDeque::new(),
        }
    }

    /// `producer-1`, `consumer-2`: the name in logs and heartbeats.
    pub(crate) fn name(&self) -> String {
        worker_name(self.role, self.id)
    }

    /// Schedules a restart with exponential backoff. Returns false when the worker restarted
    /// more than `max_restarts` times within `window`: a crash loop.
    pub(crate) fn schedule_restart(&mut self, max_restarts: u32, window: Duration) -> bool {
        let now = Instant::now();
        while self
            .recent_restarts
            .front()
            .is_some_and(|at| now.duration_since(*at) > window)
        {
            self.recent_restarts.pop_front();
        }
        if self.recent_restarts.len() >= max_restarts as usize {
            return false;
        }
        let backoff = retry::WORKER_RESTART.wait(self.recent_restarts.len() as u32 + 1);
        self.recent_restarts.push_back(now);
        self.state = State::Waiting(now + backoff);
        true
    }

    /// Replaces the process after a restart.
    pub(crate) fn restarted(&mut self, child: Child) {
        self.pid = child.id().unwrap_or(0);
        self.started = Instant::now();
        self.restarts += 1;
        self.state = State::Running(child);
    }

    /// True once the worker finished and will not run again.
    pub(crate) fn has_exited(&self) -> bool {
        matches!(self.state, State::Exited(_))
    }
}

/// The last `lines` lines of a log, to show why a worker failed.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

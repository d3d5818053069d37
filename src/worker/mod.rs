//! The two loops that run inside worker processes, and what they share: the job config, the
//! Redis link, the run's state, a heartbeat and a shutdown signal.

mod consumer;
mod producer;
pub mod shutdown;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::JobConfig;
use crate::queue::{LinkError, Queues, RedisLink};
use crate::run_state::RunState;
use crate::sink::SinkError;
use crate::source::SourceError;

pub(crate) use consumer::{Writer, dead_letter, whole_unit_dead_letter, write_with_retries};
pub use consumer::{map_unit, run_consumer};
pub use producer::run_producer;
pub use shutdown::{Shutdown, ShutdownTrigger};

/// Exit code of a worker that stopped on request before its work was done.
pub const EXIT_INTERRUPTED: i32 = 10;

/// How often a worker reports that it is alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// The two kinds of worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads sources, sends units.
    Producer,
    /// Receives units, writes sinks.
    Consumer,
}

impl Role {
    /// `producer` or `consumer`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Producer => "producer",
            Role::Consumer => "consumer",
        }
    }
}

/// The name of worker `id` of `role` in logs, heartbeats and log file names: `consumer-2`.
pub fn worker_name(role: Role, id: u32) -> String {
    format!("{}-{id}", role.as_str())
}

/// How processes log: for people, or one JSON object per line for log collectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `text` or `json`, as written on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The command line of one worker process (`stevedore worker ...`): the supervisor builds it
/// with [`WorkerArgs::command_line`], the binary parses it with clap, so the two cannot drift.
/// The Redis URL is not part of it: it travels in the environment, out of `ps`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct WorkerArgs {
    /// Producer or consumer.
    pub role: Role,
    /// Number within the role, from 1.
    #[arg(long)]
    pub id: u32,
    /// The job config.
    #[arg(long)]
    pub config: PathBuf,
    /// The run id.
    #[arg(long)]
    pub run: String,
    /// The fencing token of the run's job lock: every write that records progress checks it.
    #[arg(long)]
    pub fence: u64,
}

impl WorkerArgs {
    /// The worker's name, e.g. `consumer-2`.
    pub fn name(&self) -> String {
        worker_name(self.role, self.id)
    }

    /// The arguments after the binary: `worker ROLE --id N --run R --log-format F --config C`
    /// (role and number first, so `ps` shows which worker a process is).
    pub fn command_line(&self, log_format: LogFormat) -> Vec<OsString> {
        let mut args: Vec<OsString> = [
            "worker",
            self.role.as_str(),
            "--id",
            &self.id.to_string(),
            "--run",
            &self.run,
            "--fence",
            &self.fence.to_string(),
            "--log-format",
            log_format.as_str(),
            "--config",
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        args.push(self.config.clone().into_os_string());
        args
    }
}

/// How a worker's loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// All its work is done.
    Done,
    /// Shutdown was asked for first; the rest is picked up later.
    Interrupted,
}

/// Exit code of a worker whose write was refused by a fence: a newer holder of the job's lock
/// exists, so the supervisor stops the run instead of restarting the worker.
pub const EXIT_FENCED: i32 = 11;

/// Why a worker failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Redis stayed unreachable.
    #[error(transparent)]
    Redis(#[from] LinkError),
    /// A source could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The thread reading a source failed.
    #[error("reading the source failed: {0}")]
    Reader(String),
    /// A sink failed in a way retries cannot fix.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

impl WorkerError {
    /// True when a fence refused a write: a newer holder of the job's lock exists.
    pub fn is_fenced(&self) -> bool {
        match self {
            WorkerError::Redis(error) => error.is_fenced(),
            WorkerError::Sink(error) => error.is_fenced(),
            _ => false,
        }
    }
}

/// Everything a worker loop needs.
#[derive(Clone)]
pub struct WorkerContext {
    /// The job.
    pub config: Arc<JobConfig>,
    /// Queue operations.
    pub queues: Queues,
    /// The run's shared state.
    pub state: RunState,
    /// This worker's number within its role, from 1.
    pub id: u32,
    /// Stop taking work once set.
    pub shutdown: Shutdown,
    /// The run's fencing token, for the sinks to check.
    pub fence: Option<crate::sink::Fence>,
}

impl WorkerContext {
    /// Connects a worker of run `run` to Redis at `redis_url`; its writes check `fence`.
    pub fn new(
        config: JobConfig,
        redis_url: &str,
        run: &str,
        id: u32,
        shutdown: Shutdown,
        fence: Option<u64>,
    ) -> Result<WorkerContext, LinkError> {
        let link = Arc::new(RedisLink::new(redis_url)?);
        let mut state = RunState::new(link.clone(), &config.job.name, run);
        if let Some(token) = fence {
            state = state.fenced(token);
        }
        let fence = fence.map(|token| crate::sink::Fence {
            job: config.job.name.clone(),
            token,
        });
        Ok(WorkerContext {
            config: Arc::new(config),
            queues: Queues::new(link),
            state,
            id,
            shutdown,
            fence,
        })
    }
}

/// Beats every [`HEARTBEAT_INTERVAL`] until shutdown; triggers shutdown if the parent
/// (the supervisor) goes away, so orphaned workers do not run on unsupervised.
pub async fn heartbeat(
    state: RunState,
    name: String,
    trigger: ShutdownTrigger,
    mut shutdown: Shutdown,
) {
    let parent = std::os::unix::process::parent_id();
    let pid = std::process::id();
    while !shutdown.is_set() {
        if let Err(error) = state.liveness().beat(&name, pid).await {
            tracing::warn!(%error, "heartbeat failed");
        }
        if std::os::unix::process::parent_id() != parent {
            tracing::warn!("supervisor is gone; stopping");
            trigger.trigger();
        }
        shutdown.sleep(HEARTBEAT_INTERVAL).await;
    }
}

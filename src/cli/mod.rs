//! The command line: one file per subcommand. Each returns the process exit code; the binary
//! only parses arguments, sets up logging and exits with that code.
//!
//! Exit codes: 0 everything landed; 3 finished with dead letters; 2 bad config or usage,
//! reported before any worker starts; 1 the run failed.

mod check;
mod control;
mod dlq;
mod run;
mod status;
mod supervise;
mod worker;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::worker::{LogFormat, WorkerArgs};

pub use check::check;
pub use control::{Control, control, read_only};
pub use dlq::{DlqCommand, dlq};
pub use run::{RunFlags, run};
pub use status::status;
pub use supervise::supervise;
pub use worker::worker;

/// Exit code: bad config or usage.
pub const EXIT_CONFIG: i32 = 2;
/// Exit code: the run failed.
pub const EXIT_FAILED: i32 = 1;

/// stevedore: load records from files and generators into databases through Redis queues,
/// with worker processes, exactly once.
#[derive(Debug, Parser)]
#[command(name = "stevedore", version, about)]
pub struct Cli {
    /// Log format: `text` for people, `json` for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a job once: exit 0 when every record landed, 3 with dead letters, 2 bad config, 1 failure.
    Run {
        /// The job config (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Also write the summary as JSON to this file.
        #[arg(long)]
        summary_json: Option<PathBuf>,
        /// Read, map and validate every record and check every sink, writing nothing (not to
        /// a sink, not to Redis); report what would be written and dead-lettered.
        #[arg(long)]
        dry_run: bool,
        /// Serve Prometheus metrics at http://ADDR/metrics while the run lasts
        /// (e.g. 127.0.0.1:9188).
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<String>,
        /// Internal: the Redis a `supervise` pass runs on (the group's, whatever the job file
        /// says). Set by the daemon in the environment, never on the command line.
        #[arg(long, env = crate::schedule::pass::PASS_REDIS_ENV, hide = true, hide_env_values = true)]
        pass_redis: Option<String>,
    },
    /// Run scheduled jobs (cron or cyclic) as a long-running daemon, one per host; daemons
    /// sharing a Redis run each slot once.
    Supervise {
        /// The supervise config (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// The environment this daemon runs schedules for (overrides `[supervise] environment`).
        #[arg(long)]
        env: Option<String>,
    },
    /// Show every schedule of a supervise group: next fire, running pass, last outcomes, daemons.
    Status {
        /// The supervise config (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Judge gating for this environment (default: the file's).
        #[arg(long)]
        env: Option<String>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a pass of a schedule now (it goes through the schedule's overlap policy).
    Trigger {
        /// The supervise config (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// The schedule's name.
        schedule: String,
    },
    /// Stop the running pass of a schedule gracefully, wherever it runs.
    Stop {
        /// The supervise config (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// The schedule's name.
        schedule: String,
    },
    /// Start no new passes of a schedule until it is resumed.
    Pause {
        /// The supervise config (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// The schedule's name.
        schedule: String,
        /// Why, shown by `status`.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Switch a whole supervise group to read-only (every pass runs with --dry-run), or back.
    ReadOnly {
        /// The supervise config (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Why (shown by `status`); required to switch on.
        #[arg(long, required_unless_present = "off")]
        reason: Option<String>,
        /// Switch read-only off: passes write again.
        #[arg(long, conflicts_with = "reason")]
        off: bool,
    },
    /// Start passes of a paused schedule again.
    Resume {
        /// The supervise config (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// The schedule's name.
        schedule: String,
    },
    /// A job's dead letters: list, show, export, replay (after fixing the cause), purge.
    Dlq {
        /// What to do with them.
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Validate a config and connect to Redis and every sink: exit 0 or 2.
    Check {
        /// The job config (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Internal: one worker process, started by the supervisor.
    #[command(hide = true)]
    Worker {
        /// Which worker, of which run, of which job.
        #[command(flatten)]
        args: WorkerArgs,
        /// The Redis URL (set by the supervisor in the environment, never on the command line).
        #[arg(long, env = "STEVEDORE_REDIS_URL", hide_env_values = true)]
        redis: String,
    },
}

/// Loads a config, printing every problem; `None` means exit 2.
fn load_config(path: &std::path::Path) -> Option<crate::config::JobConfig> {
    match crate::job::load(path) {
        Ok(config) => Some(config),
        Err(error) => {
            eprintln!("stevedore: {error}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::{LogFormat, Role};

    #[test]
    fn supervisor_worker_command_line_parses_back_to_the_same_worker() {
        let args = WorkerArgs {
            role: Role::Consumer,
            id: 2,
            config: PathBuf::from("/var/job dir/config.toml"),
            run: "20261128T000000Z-abcd".to_string(),
            fence: 42,
        };
        let mut argv = vec![std::ffi::OsString::from("stevedore")];
        argv.extend(args.command_line(LogFormat::Json));
        argv.extend(["--redis".into(), "redis://127.0.0.1:1/0".into()]);
        let cli = Cli::try_parse_from(argv).expect("the supervisor's command line parses");
        assert_eq!(cli.log_format, LogFormat::Json);
        let Command::Worker { args: parsed, .. } = cli.command else {
            panic!("a worker command")
        };
        assert_eq!(parsed, args);
        assert_eq!(parsed.name(), "consumer-2");
    }
}

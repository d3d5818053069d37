//! The `stevedore` binary: parse the command line, set up logging, run the command, exit
//! with its code. Everything else lives in the library.

use std::io::IsTerminal;

use clap::Parser;
use stevedore::cli::{self, Cli, Command};
use stevedore::worker::LogFormat;
use tracing_subscriber::EnvFilter;

fn main() {
    keep_error_backtraces_off();
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("stevedore: cannot start the async runtime: {error}");
            std::process::exit(cli::EXIT_FAILED);
        }
    };
    let code = runtime.block_on(async {
        match &cli.command {
            Command::Run {
                config,
                summary_json,
                dry_run,
                pass_redis,
                metrics_addr,
            } => {
                let options = cli::RunFlags {
                    summary_json: summary_json.as_deref(),
                    dry_run: *dry_run,
                    pass_redis: pass_redis.as_deref(),
                    log_format: cli.log_format,
                    metrics_addr: metrics_addr.as_deref(),
                };
                cli::run(config, options).await
            }
            Command::Supervise { config, env } => {
                cli::supervise(config, env.as_deref(), cli.log_format).await
            }
            Command::Status { config, env, json } => {
                cli::status(config, env.as_deref(), *json).await
            }
            Command::Trigger { config, schedule } => {
                cli::control(config, schedule, cli::Control::Trigger).await
            }
            Command::Stop { config, schedule } => {
                cli::control(config, schedule, cli::Control::Stop).await
            }
            Command::Pause {
                config,
                schedule,
                reason,
            } => {
                let reason = reason.clone();
                cli::control(config, schedule, cli::Control::Pause { reason }).await
            }
            Command::ReadOnly {
                config,
                reason,
                off,
            } => {
                let reason = if *off { None } else { reason.as_deref() };
                cli::read_only(config, reason).await
            }
            Command::Resume { config, schedule } => {
                cli::control(config, schedule, cli::Control::Resume).await
            }
            Command::Check { config } => cli::check(config).await,
            Command::Dlq { command } => cli::dlq(command).await,
            Command::Worker { args, redis } => cli::worker(args, redis).await,
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}

/// `RUST_BACKTRACE=1` also makes every library error capture a backtrace, and the Cosmos DB
/// SDK builds and drops an error for each optional header a response lacks, several per
/// request: with it set, SDK writes ran at about half their rate (`bench/cosmos.sh`).
/// Panics keep their backtraces; `RUST_LIB_BACKTRACE=1` still turns error backtraces on.
fn keep_error_backtraces_off() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: the first thing `main` does, before any other thread exists.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}

/// Logs go to stderr (workers' stderr is their log file) at info, `check` at warn;
/// `STEVEDORE_LOG` overrides.
fn init_logging(cli: &Cli) {
    let default = match cli.command {
        Command::Check { .. }
        | Command::Status { .. }
        | Command::Trigger { .. }
        | Command::Stop { .. }
        | Command::Pause { .. }
        | Command::Resume { .. }
        | Command::ReadOnly { .. }
        | Command::Dlq { .. } => "warn",
        _ => "info",
    };
    let filter =
        EnvFilter::try_from_env("STEVEDORE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if cli.log_format == LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
}

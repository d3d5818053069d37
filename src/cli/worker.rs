//! `stevedore worker`: the hidden subcommand the supervisor starts for each worker process.

use tokio::signal::unix::{SignalKind, signal};

use super::{EXIT_CONFIG, EXIT_FAILED, load_config};
use crate::worker::{self, EXIT_FENCED, EXIT_INTERRUPTED, Finish, Role, WorkerArgs, WorkerContext};

/// Runs one worker until its work is done or it is asked to stop; returns the exit code.
pub async fn worker(args: &WorkerArgs, redis_url: &str) -> i32 {
    let WorkerArgs { role, id, run, .. } = args;
    let (role, id, run) = (*role, *id, run.as_str());
    let Some(config) = load_config(&args.config) else {
        return EXIT_CONFIG;
    };
    let (trigger, shutdown) = worker::shutdown::channel();
    let fence = Some(args.fence);
    let context = match WorkerContext::new(config, redis_url, run, id, shutdown.clone(), fence) {
        Ok(context) => context,
        Err(error) => {
            tracing::error!(%error, "cannot connect");
            return EXIT_FAILED;
        }
    };
    let name = args.name();
    tracing::info!(worker = %name, pid = std::process::id(), run, "worker started");
    tokio::spawn(listen_for_signals(trigger.clone()));
    let beating = tokio::spawn(worker::heartbeat(
        context.state.clone(),
        name.clone(),
        trigger,
        shutdown,
    ));
    let result = match role {
        Role::Producer => worker::run_producer(context).await,
        Role::Consumer => worker::run_consumer(context).await,
    };
    beating.abort();
    match result {
        Ok(Finish::Done) => {
            tracing::info!(worker = %name, peak_rss_kib = peak_rss_kib(), cpu_s = cpu_seconds(), "work done");
            0
        }
        Ok(Finish::Interrupted) => {
            tracing::info!(worker = %name, "stopped on request");
            EXIT_INTERRUPTED
        }
        Err(error) if error.is_fenced() => {
            tracing::error!(worker = %name, %error, "fenced off: another run holds the job now");
            EXIT_FENCED
        }
        Err(error) => {
            tracing::error!(worker = %name, %error, "worker failed");
            EXIT_FAILED
        }
    }
}

/// First SIGINT/SIGTERM: stop taking work. Second: exit at once (in-flight units are
/// redelivered after their visibility timeout, so nothing is lost).
async fn listen_for_signals(trigger: worker::ShutdownTrigger) {
    let (Ok(mut interrupts), Ok(mut terminations)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    for round in 0.. {
        tokio::select! {
            _ = interrupts.recv() => {}
            _ = terminations.recv() => {}
        }
        if round > 0 {
            std::process::exit(EXIT_INTERRUPTED);
        }
        tracing::info!("stop requested; finishing the unit in hand");
        trigger.trigger();
    }
}

/// CPU time the process used (user and system), logged when a worker finishes, so that a
/// benchmark can tell what each role costs (`bench/yardstick.sh`).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// The process's peak resident memory (`VmHWM`), logged when a worker finishes so that memory
/// per worker can be watched (and is, by the tests of the record size cap).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

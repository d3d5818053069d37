//! The supervisor: plans a run, starts worker processes (and a managed Redis), watches them,
//! and ends with a summary.
//!
//! It restarts a worker that exits or stops beating, with exponential backoff, and fails the
//! run when one crash-loops. On SIGINT/SIGTERM it asks workers to stop (they finish or release
//! their in-flight units) and still reports; a second signal kills them at once. Either way the
//! run stays resumable: the next `stevedore run` continues it. The supervisor never touches a
//! sink: it knows processes, Redis and counts.

mod lock;
mod managed_redis;
mod progress;
pub(crate) mod summary;
pub(crate) mod workers;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};

use crate::clock::now_ms;
use crate::config::{JobConfig, PlannedBy, RedisConfig};
use crate::metrics;
use crate::plan;
use crate::queue::{LinkError, Patience, Queues, RedisLink, SinkQueues};
use crate::run_state::{Planned, RunState, new_run_id};
use crate::sink::SinkError;
use crate::source::SourceError;
use crate::source::WorkItem;
use crate::unit::DataUnit;
use crate::worker::{EXIT_FENCED, EXIT_INTERRUPTED, LogFormat, Role};

pub(crate) use lock::{JobLock, LOCK_TTL, LockError, host_name};
pub(crate) use managed_redis::{ManagedRedis, ManagedRedisError};
pub(crate) use summary::{Status, Summary};
use workers::{Launcher, State, WorkerProcess, log_tail};
pub(crate) use workers::{detach_from_terminal, signal as send_signal};

/// How often the supervisor looks at its workers.
const TICK: Duration = Duration::from_millis(250);

/// Why the supervisor could not run a job.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SupervisorError {
    /// A source could not be planned (e.g. its glob matches nothing): a config problem.
    #[error(transparent)]
    Plan(#[from] SourceError),
    /// The managed Redis could not be started.
    #[error("managed redis: {0}")]
    Redis(#[from] ManagedRedisError),
    /// Redis was unreachable.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// Redis did not answer at start-up: nothing was started.
    #[error(
        "cannot reach {error}; nothing was started (is the server running, and is [redis] url \
         right?)"
    )]
    Unreachable {
        /// The last error; it names the URL, without its password.
        error: LinkError,
    },
    /// A stop signal ended a wait outside the supervision loop.
    #[error("interrupted by {signal} while {during}; run `stevedore run` again to go on")]
    Interrupted {
        /// The signal's name.
        signal: &'static str,
        /// What the supervisor was waiting for.
        during: &'static str,
    },
    /// The unfinished run cannot be resumed under the config as it is now: a config problem.
    #[error(
        "the unfinished run {run} of job {job} was planned from other sources or another \
         queue.unit_records ({planned_from}); resuming it under this config would mis-identify \
         its units. Restore those settings to finish it (the config it last ran with is saved in \
         {})",
        snapshot.display()
    )]
    Changed {
        /// The run that cannot be resumed.
        run: String,
        /// The job.
        job: String,
        /// The basis the run was planned from.
        planned_from: String,
        /// The config the run last ran with.
        snapshot: PathBuf,
    },
    /// Another supervisor runs the job.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The job lock expired before the workers started, and another supervisor took it.
    #[error("lost the job lock before any worker started: another supervisor took over this job")]
    LockLost,
    /// A sink's target does not fit the config (fatal), or cannot be reached (transient).
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// Local files or processes failed.
    #[error("{what}: {source}")]
    Local {
        /// What the supervisor was doing, e.g. `cannot write var/logs/.../job.toml`.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl SupervisorError {
    /// A local I/O failure while doing `what`.
    fn local(what: impl Into<String>, source: std::io::Error) -> SupervisorError {
        SupervisorError::Local {
            what: what.into(),
            source,
        }
    }

    /// True when the user's config is at fault (exit code 2).
    pub(crate) fn is_config_error(&self) -> bool {
        match self {
            SupervisorError::Plan(_) | SupervisorError::Changed { .. } => true,
            SupervisorError::Sink(error) => !error.is_transient(),
            _ => false,
        }
    }
}

/// How `run` was invoked.
pub(crate) struct RunOptions {
    /// How workers log.
    pub log_format: LogFormat,
    /// Where to serve `/metrics` while the run lasts (`run --metrics-addr`), bound already.
    pub metrics: Option<tokio::net::TcpListener>,
}

/// The signal streams, registered before anything starts so none is missed. SIGINT, SIGTERM
/// and SIGHUP (the terminal went away) stop the run gracefully; SIGCHLD wakes the loop the
/// moment a worker exits. The `supervise` daemon listens through it too.
pub(crate) struct Signals {
    interrupts: tokio::signal::unix::Signal,
    terminations: tokio::signal::unix::Signal,
    hangups: tokio::signal::unix::Signal,
    children: tokio::signal::unix::Signal,
}

/// What woke the supervisor's loop.
enum Wake {
    /// A signal asking the run to stop.
    Stop(&'static str),
    /// A child process exited.
    ChildExited,
}

impl Signals {
    pub(crate) fn listen() -> std::io::Result<Signals> {
        Ok(Signals {
            interrupts: signal(SignalKind::interrupt())?,
            terminations: signal(SignalKind::terminate())?,
            hangups: signal(SignalKind::hangup())?,
            children: signal(SignalKind::child())?,
        })
    }

    /// Waits for a signal that asks the run to stop, and names it.
    pub(crate) async fn stop_requested(&mut self) -> &'static str {
        loop {
            if let Wake::Stop(name) = self.next().await {
                return name;
            }
        }
    }

    /// Runs `work` unless a stop signal comes first: every wait before the workers start
    /// (Redis starting, retries of an unreachable one) gives way to SIGINT and SIGTERM.
    async fn unless_stopped<T, E: Into<SupervisorError>>(
        &mut self,
        during: &'static str,
        work: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, SupervisorError> {
        tokio::select! {
            result = work => result.map_err(Into::into),
            signal = self.stop_requested() => Err(SupervisorError::Interrupted { signal, during }),
        }
    }

    /// The next signal received.
    async fn next(&mut self) -> Wake {
        tokio::select! {
            _ = self.interrupts.recv() => Wake::Stop("SIGINT"),
            _ = self.terminations.recv() => Wake::Stop("SIGTERM"),
            _ = self.hangups.recv() => Wake::Stop("SIGHUP"),
            _ = self.children.recv() => Wake::ChildExited,
        }
    }
}

/// What one supervised run works with.
struct Invocation<'a> {
    config: &'a JobConfig,
    options: &'a RunOptions,
    redis_url: &'a str,
    link: Arc<RedisLink>,
    lock: JobLock,
}

/// Runs the job once, to completion, failure or interruption.
pub(crate) async fn run_once(
    config: JobConfig,
    mut options: RunOptions,
) -> Result<Summary, SupervisorError> {
    let started = Instant::now();
    let mut signals = Signals::listen()
        .map_err(|source| SupervisorError::local("cannot listen for signals", source))?;
    let items = plan::plan_sources(&config)?;
    let mut managed = match &config.redis {
        RedisConfig::Managed {
            data_dir,
            server_bin,
        } => Some(
            signals
                .unless_stopped(
                    "starting the managed redis, before any worker started",
                    ManagedRedis::start(server_bin, data_dir),
                )
                .await?,
        ),
        RedisConfig::External { .. } => None,
    };
    let redis_url = match (&managed, &config.redis) {
        (Some(managed), _) => managed.url(),
        (None, RedisConfig::External { url }) => url.clone(),
        (None, RedisConfig::Managed { .. }) => unreachable!("a managed redis was started above"),
    };
    let result = async {
        let link = Arc::new(RedisLink::new(&redis_url)?);
        let _metrics = options
            .metrics
            .take()
            .map(|listener| serve_metrics(listener, &link, &config));
        let before = "reaching redis, before any worker started";
        signals.unless_stopped(before, reach(&link)).await?;
        let lock = signals
            .unless_stopped(before, JobLock::acquire(&link, &config.job.name))
            .await?;
        tracing::debug!(fencing_token = lock.fencing_token, "holding the job lock");
        let mut invocation = Invocation {
            config: &config,
            options: &options,
            redis_url: &redis_url,
            link,
            lock,
        };
        // Sinks are readied under the lock (a second run of a running job touches no sink),
        // and a database that makes the preflight wait gives way to a signal.
        let result = async {
            let preparing = prepare_fenced(&mut invocation.lock, &invocation.link, &config);
            signals
                .unless_stopped("preparing the sinks, before any worker started", preparing)
                .await?;
            supervise(&invocation, items, managed.as_mut(), &mut signals).await
        }
        .await;
        if let Err(error) = invocation.lock.release(&invocation.link).await {
            tracing::warn!(%error, "could not release the job lock; it expires by itself");
        }
        result
    }
    .await;
    let redis_restarts = managed.as_ref().map(|managed| managed.restarts);
    if let Some(managed) = managed {
        managed.stop().await;
    }
    let mut summary = result?;
    summary.redis_restarts = redis_restarts;
    summary.duration_s = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Serves `/metrics` (the job's numbers, read from Redis at each scrape) and `/healthz` until
/// the returned guard is dropped.
fn serve_metrics(
    listener: tokio::net::TcpListener,
    link: &Arc<RedisLink>,
    config: &JobConfig,
) -> metrics::http::ServerGuard {
    let link = Arc::new(link.with_patience(Patience::Impatient));
    let job = config.job.name.clone();
    let sinks: Arc<[String]> = config.sinks.iter().map(|s| s.name.clone()).collect();
    let handler: metrics::http::Handler = Arc::new(move |request| {
        let (link, job, sinks) = (link.clone(), job.clone(), sinks.clone());
        Box::pin(async move {
            match request.path.as_str() {
                "/metrics" => {
                    let mut samples = metrics::Samples::default();
                    match metrics::job_metrics(&mut samples, &link, &job, &sinks, &[]).await {
                        Ok(()) => metrics::http::Response::new(
                            200,
                            metrics::CONTENT_TYPE,
                            samples.render(Default::default()),
                        ),
                        Err(error) => metrics::http::Response::text(503, format!("{error}\n")),
                    }
                }
                "/healthz" => metrics::http::Response::text(200, "ok\n"),
                _ => metrics::http::Response::text(404, "not found\n"),
            }
        })
    });
    metrics::http::ServerGuard::spawn(listener, handler)
}

/// Prepares the sinks under the lock, recording its fencing token in those that check one. A
/// sink that has seen a higher token than this Redis ever granted (the Redis lost its data)
/// moves the counter past it, once; a token that a newer holder took stands.
async fn prepare_fenced(
    lock: &mut JobLock,
    link: &RedisLink,
    config: &JobConfig,
) -> Result<(), SupervisorError> {
    let mut raised = false;
    loop {
        let fence = crate::sink::Fence {
            job: config.job.name.clone(),
            token: lock.fencing_token,
        };
        let prepared = holding(lock, link, async {
            Ok(plan::prepare_sinks(config, Some(&fence)).await?)
        })
        .await;
        match prepared {
            Err(SupervisorError::Sink(SinkError::Fenced { highest, .. })) if !raised => {
                raised = lock.raise_fence(link, &config.job.name, highest).await?;
                if !raised {
                    return prepared;
                }
            }
            other => return other,
        }
    }
}

/// Runs `work` while renewing the job lock: it must not expire under a supervisor before its
/// loop renews it.
async fn holding<T>(
    lock: &JobLock,
    link: &RedisLink,
    work: impl std::future::Future<Output = Result<T, SupervisorError>>,
) -> Result<T, SupervisorError> {
    lock.holding(link, work, || SupervisorError::LockLost).await
}

/// Creates `dir` (0700, and its missing parents) and writes `file` in it (0600).
fn write_private(dir: &std::path::Path, file: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)?;
    // A resumed run's file may have been written by an older version, with wider rights.
    out.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    out.write_all(text.as_bytes())
}

/// Probes Redis a few times, a second each, before anything starts: a wrong URL or a server
/// that is down is reported in seconds, not after the minute of retries a running job gets.
async fn reach(link: &RedisLink) -> Result<(), SupervisorError> {
    let probe = link.with_patience(Patience::Impatient);
    let mut last = None;
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        match probe
            .query::<String>("reaching redis", &redis::cmd("PING"))
            .await
        {
            Ok(_) => return Ok(()),
            Err(error) => last = Some(error),
        }
    }
    Err(SupervisorError::Unreachable {
        error: last.expect("three attempts failed"),
    })
}

async fn supervise(
    invocation: &Invocation<'_>,
    items: Vec<WorkItem>,
    mut managed: Option<&mut ManagedRedis>,
    signals: &mut Signals,
) -> Result<Summary, SupervisorError> {
    let Invocation {
        config,
        options,
        redis_url,
        link,
        lock,
    } = invocation;
    let queues = Queues::new(link.clone());
    let setup = async {
        for sink in &config.sinks {
            let names = SinkQueues::new(&config.job.name, &sink.name);
            queues
                .ensure(&names.units, config.queue.visibility_timeout)
                .await?;
            queues
                .ensure(&names.dead, config.queue.visibility_timeout)
                .await?;
        }
        let (state, resumed) =
            RunState::begin(link.clone(), &config.job.name, &new_run_id()).await?;
        // The supervisor's own writes (dead units it counts) are fenced like its workers'.
        let state = state.fenced(lock.fencing_token);
        let log_dir = config.job.data_dir.join("logs").join(state.run_id());
        if let Planned::Changed { planned_from } =
            state.items().plan(&items, &config.plan_basis()).await?
        {
            let resumed_as = match config.planned_by(&planned_from) {
                Some(PlannedBy::CountOnly) => "a build that cut units by record count only",
                Some(PlannedBy::BeforeSplit) => "a build that read every file whole",
                Some(PlannedBy::BeforeText) => {
                    "a build that read JSONL lines into values (units cut measuring their \
                     compact JSON)"
                }
                Some(PlannedBy::This) | None => {
                    return Err(SupervisorError::Changed {
                        run: state.run_id().to_string(),
                        job: config.job.name.clone(),
                        planned_from,
                        snapshot: log_dir.join("job.toml"),
                    });
                }
            };
            tracing::info!(
                run = state.run_id(),
                "the unfinished run was planned by {resumed_as}; it is resumed that way"
            );
        }
        if resumed {
            let released = state.items().release_held_items().await?;
            let retried = state.items().retry_failed_items().await?;
            tracing::info!(
                run = state.run_id(),
                released,
                retried,
                "resuming the unfinished run (work items that failed are read again from their \
                 checkpoints)"
            );
        }
        Ok::<_, SupervisorError>((state, resumed, log_dir))
    };
    let (state, resumed, log_dir) = signals
        .unless_stopped(
            "preparing the run in redis, before any worker started",
            holding(lock, link, setup),
        )
        .await?;
    let snapshot = log_dir.join("job.toml");
    // Workers read this copy, never the original: an edit of the config file while the run
    // goes on cannot reach a restarted worker. It holds `${VAR}`s, not their values.
    // Private to the user who runs the job: the config may hold a literal secret, and the
    // worker logs name what was loaded.
    write_private(&log_dir, &snapshot, &config.text).map_err(|source| {
        SupervisorError::local(format!("cannot write {}", snapshot.display()), source)
    })?;
    let launcher = Launcher {
        exe: std::env::current_exe()
            .map_err(|source| SupervisorError::local("cannot find this executable", source))?,
        config_path: snapshot.canonicalize().unwrap_or_else(|_| snapshot.clone()),
        run: state.run_id().to_string(),
        redis_url: redis_url.to_string(),
        log_dir: log_dir.clone(),
        log_format: options.log_format,
        fence: lock.fencing_token,
    };
    tracing::info!(
        run = state.run_id(),
        producers = config.workers.producers,
        consumers = config.workers.consumers,
        "starting workers; their logs are in {}",
        log_dir.display()
    );
    let mut workers = Vec::new();
    for (role, count) in [
        (Role::Producer, config.workers.producers),
        (Role::Consumer, config.workers.consumers),
    ] {
        for id in 1..=count {
            let child = launcher.spawn(role, id).map_err(|e| {
                SupervisorError::local(format!("cannot start {} {id}", role.as_str()), e)
            })?;
            workers.push(WorkerProcess::new(role, id, child));
        }
    }

    // Per-tick reads go through an impatient view of Redis: one attempt of at most a second,
    // so an outage never stops the loop that handles signals, reaps workers and revives Redis.
    let ticker_link = Arc::new(link.with_patience(Patience::Impatient));
    let ticker_state = RunState::new(ticker_link.clone(), &config.job.name, state.run_id())
        .fenced(lock.fencing_token);
    let mut monitor = Monitor {
        config,
        state: &ticker_state,
        launcher: &launcher,
        workers,
        stopping: None,
        stop_deadline: None,
        drained: false,
        heartbeat_grace_until: Instant::now(),
        restarted: Vec::new(),
    };
    let sink_names: Vec<String> = config.sinks.iter().map(|s| s.name.clone()).collect();
    let display = progress::ProgressLine::new();
    let mut tick = tokio::time::interval(TICK);
    let mut last_renewal = Instant::now();
    while !monitor.all_exited() {
        tokio::select! {
            wake = signals.next() => if let Wake::Stop(name) = wake { monitor.on_signal(name) },
            _ = tick.tick() => {}
        }
        if let Some(managed) = managed.as_deref_mut()
            && let Err(error) = managed.revive().await
        {
            monitor.stop(error.to_string());
        }
        if last_renewal.elapsed() > LOCK_TTL / 3 {
            match lock.renew(&ticker_link).await {
                Ok(true) => last_renewal = Instant::now(),
                Ok(false) => {
                    monitor.stop("lost the job lock: another supervisor took over this job".into())
                }
                Err(error) => tracing::warn!(%error, "could not renew the job lock"),
            }
        }
        monitor.reap();
        monitor.report_restarts().await;
        monitor.restart_due();
        monitor.check_heartbeats().await;
        monitor.drain_when_produced().await;
        if let Ok(progress) = ticker_state.ledger().progress().await {
            display.update(&progress, &sink_names);
        }
    }
    display.finish();
    let worker_summaries = monitor
        .workers
        .iter()
        .map(|w| summary::WorkerSummary {
            role: w.role,
            id: w.id,
            pid: w.pid,
            restarts: w.restarts,
        })
        .collect();
    let reason = monitor.stopping.clone();
    // Redis may be down now: its retries give way to a signal like every other wait.
    let summary = summarize(
        config,
        &queues,
        &state,
        resumed,
        reason,
        worker_summaries,
        &log_dir,
    );
    signals
        .unless_stopped("summarizing the run (its workers have stopped)", summary)
        .await
}

/// The supervisor's view of its workers during a run.
struct Monitor<'a> {
    config: &'a JobConfig,
    state: &'a RunState,
    launcher: &'a Launcher,
    workers: Vec<WorkerProcess>,
    stopping: Option<String>,
    stop_deadline: Option<Instant>,
    drained: bool,
    /// Heartbeats are not judged before this: after Redis was unreachable, every beat is old.
    heartbeat_grace_until: Instant,
    /// Restarts not yet added to the run's telemetry.
    restarted: Vec<Role>,
}

impl Monitor<'_> {
    fn all_exited(&self) -> bool {
        self.workers.iter().all(WorkerProcess::has_exited)
    }

    fn on_signal(&mut self, name: &str) {
        if self.stopping.is_some() {
            eprintln!(
                "stevedore: second {name}: killing workers now (in-flight units are redelivered later)"
            );
            self.signal_all(libc::SIGKILL);
        } else {
            eprintln!(
                "stevedore: {name}: stopping workers; in-flight units finish or return to the queue (again to kill now)"
            );
            self.stop(format!(
                "interrupted by {name}; run `stevedore run` again to resume"
            ));
        }
    }

    /// Asks every worker to stop, and gives them until the visibility timeout (plus a margin).
    fn stop(&mut self, reason: String) {
        if self.stopping.is_none() {
            tracing::warn!(%reason, "stopping the run");
            self.stopping = Some(reason);
            self.stop_deadline = Some(
                Instant::now() + self.config.queue.visibility_timeout + Duration::from_secs(10),
            );
        }
        for worker in &mut self.workers {
            if matches!(worker.state, State::Waiting(_)) {
                worker.state = State::Exited(EXIT_INTERRUPTED);
            }
        }
        self.signal_all(libc::SIGTERM);
    }

    fn signal_all(&self, signal: i32) {
        for worker in &self.workers {
            if matches!(worker.state, State::Running(_)) {
                send_signal(worker.pid, signal);
            }
        }
    }

    fn reap(&mut self) {
        if self
            .stop_deadline
            .is_some_and(|deadline| Instant::now() > deadline)
        {
            self.signal_all(libc::SIGKILL);
        }
        let mut crash_loop = None;
        let mut fenced = None;
        for worker in &mut self.workers {
            let State::Running(child) = &mut worker.state else {
                continue;
            };
            let Ok(Some(status)) = child.try_wait() else {
                continue;
            };
            let code = status.code();
            if code == Some(EXIT_FENCED) {
                worker.state = State::Exited(EXIT_FENCED);
                fenced = Some(worker.name());
                continue;
            }
            if code == Some(0) || self.stopping.is_some() {
                worker.state = State::Exited(code.unwrap_or(-1));
                continue;
            }
            tracing::warn!(worker = %worker.name(), %status, "worker exited; restarting it");
            self.restarted.push(worker.role);
            if !worker.schedule_restart(
                self.config.workers.max_restarts,
                self.config.workers.restart_window,
            ) {
                let log = self.launcher.log_path(worker.role, worker.id);
                crash_loop = Some(format!(
                    "{} crashed more than {} times within {}; last lines of {}:\n{}",
                    worker.name(),
                    self.config.workers.max_restarts,
                    humantime::format_duration(self.config.workers.restart_window),
                    log.display(),
                    log_tail(&log, 5)
                ));
                worker.state = State::Exited(code.unwrap_or(-1));
            }
        }
        if let Some(worker) = fenced {
            self.stop(format!(
                "{worker} was fenced off: another run of this job took its lock (this one was \
                 paused or cut off past the lock's lease); it writes nothing more"
            ));
        }
        if let Some(reason) = crash_loop {
            self.stop(reason);
        }
    }

    /// Adds the restarts since the last tick to the run's telemetry, for dashboards.
    async fn report_restarts(&mut self) {
        if self.restarted.is_empty() {
            return;
        }
        let deltas: Vec<(String, u64)> = std::mem::take(&mut self.restarted)
            .into_iter()
            .map(|role| (format!("restarts:{}", role.as_str()), 1))
            .collect();
        if let Err(error) = self.state.telemetry().add(&deltas).await {
            tracing::debug!(%error, "could not report worker restarts");
        }
    }

    fn restart_due(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        let mut failure = None;
        for worker in &mut self.workers {
            let State::Waiting(at) = worker.state else {
                continue;
            };
            if Instant::now() < at {
                continue;
            }
            match self.launcher.spawn(worker.role, worker.id) {
                Ok(child) => worker.restarted(child),
                Err(error) => failure = Some(format!("cannot restart {}: {error}", worker.name())),
            }
        }
        if let Some(reason) = failure {
            self.stop(reason);
        }
    }

    /// Kills (for restart) any worker whose heartbeat is older than the timeout.
    async fn check_heartbeats(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        let timeout = self.config.workers.heartbeat_timeout;
        let Ok(beats) = self.state.liveness().heartbeats().await else {
            self.heartbeat_grace_until = Instant::now() + timeout;
            return;
        };
        if Instant::now() < self.heartbeat_grace_until {
            return;
        }
        let now = now_ms();
        for worker in &self.workers {
            if !matches!(worker.state, State::Running(_)) || worker.started.elapsed() < timeout {
                continue;
            }
            let silent_for = match beats.get(&worker.name()) {
                Some(beat) if beat.pid == worker.pid => {
                    Duration::from_millis(now.saturating_sub(beat.at_ms))
                }
                _ => worker.started.elapsed(),
            };
            if silent_for > timeout {
                tracing::warn!(worker = %worker.name(), ?silent_for, "no heartbeat; killing the worker to restart it");
                send_signal(worker.pid, libc::SIGKILL);
            }
        }
    }

    /// Once every producer is done and no work item is left, tells consumers to finish.
    async fn drain_when_produced(&mut self) {
        if self.drained || self.stopping.is_some() {
            return;
        }
        let producers_done = self
            .workers
            .iter()
            .filter(|w| w.role == Role::Producer)
            .all(|w| matches!(w.state, State::Exited(0)));
        if !producers_done {
            return;
        }
        match self.state.items().unfinished_items().await {
            Ok(0) => match self.state.liveness().set_drain().await {
                Ok(()) => self.drained = true,
                Err(error) => tracing::warn!(%error, "cannot set the drain flag yet"),
            },
            Ok(left) => self.stop(format!(
                "producers finished but {left} work item(s) were left unprocessed"
            )),
            Err(error) => tracing::warn!(%error, "cannot count work items yet"),
        }
    }
}

async fn summarize(
    config: &JobConfig,
    queues: &Queues,
    state: &RunState,
    resumed: bool,
    mut reason: Option<String>,
    workers: Vec<summary::WorkerSummary>,
    log_dir: &std::path::Path,
) -> Result<Summary, SupervisorError> {
    let sink_names: Vec<String> = config.sinks.iter().map(|s| s.name.clone()).collect();
    for sink in &config.sinks {
        count_dead_units(config, queues, state, &sink.name).await?;
    }
    let totals = state.ledger().totals(&sink_names).await?;
    let mut sinks = BTreeMap::new();
    for sink in &config.sinks {
        let written = totals.written.get(&sink.name).copied().unwrap_or(0);
        let dead_lettered = totals.dead.get(&sink.name).copied().unwrap_or(0);
        if reason.is_none() && written + dead_lettered != totals.read {
            reason = Some(format!(
                "sink {}: {written} written + {dead_lettered} dead-lettered does not add up to {} read",
                sink.name, totals.read
            ));
        }
        let dead_letter_queue = SinkQueues::new(&config.job.name, &sink.name).dead;
        sinks.insert(
            sink.name.clone(),
            summary::SinkSummary {
                kind: sink.kind.to_string(),
                written,
                dead_lettered,
                dead_letter_queue,
                columns_added: state.ledger().columns_added(&sink.name).await?,
            },
        );
    }
    // After the sums: what was read of a failed item must add up like the rest.
    let failed = state.items().failed_items().await?;
    if !failed.is_empty() {
        let reasons: Vec<&str> = failed.iter().map(|(_, why)| why.as_str()).collect();
        let failed = format!(
            "{} work item(s) failed; the next run reads them again from where they stopped: {}",
            failed.len(),
            reasons.join("; ")
        );
        reason = Some(match reason {
            Some(earlier) => format!("{earlier}; {failed}"),
            None => failed,
        });
    }
    let status = match &reason {
        Some(_) => Status::Failed,
        None if sinks.values().any(|s| s.dead_lettered > 0) => Status::DeadLetters,
        None => Status::Ok,
    };
    if status != Status::Failed {
        state.finish(&sink_names).await?;
    }
    Ok(Summary {
        job: config.job.name.clone(),
        run: state.run_id().to_string(),
        resumed,
        status,
        reason,
        records_read: totals.read,
        sinks,
        workers,
        redis_restarts: None,
        duration_s: 0.0,
        log_dir: log_dir.display().to_string(),
    })
}

/// Counts units of this run that the queue moved whole to the dead-letter queue (delivered
/// `max_receives` times without success), unless they were written after all.
async fn count_dead_units(
    config: &JobConfig,
    queues: &Queues,
    state: &RunState,
    sink: &str,
) -> Result<(), SupervisorError> {
    let prefix = format!("{}/{}/", config.job.name, state.run_id());
    let written = state.ledger().written_units(sink).await?;
    for message in queues
        .read_all(&SinkQueues::new(&config.job.name, sink).dead)
        .await?
    {
        if let Ok(unit) = DataUnit::decode(&message.body)
            && unit.id.starts_with(&prefix)
            && !written.contains_key(&unit.id)
        {
            tracing::warn!(unit = %unit.id, sink, "unit was dead-lettered whole after repeated failed deliveries");
            state
                .ledger()
                .record_dead_unit(sink, &unit.id, unit.input_count())
                .await?;
        }
    }
    Ok(())
}

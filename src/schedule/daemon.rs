//! `stevedore supervise`: the daemon. Several times a second it looks at each schedule its
//! environment runs: records what became of the slots due since the last look (run, missed,
//! skipped; [`super::slots`]), starts the next waiting slot as a pass if no pass runs, takes
//! over a pass whose daemon died, and tends its own passes (lease, `stop`, `timeout`, exit).
//!
//! Every decision goes through a script in Redis that refuses it if another daemon decided
//! first, so any number of daemons on one Redis run each slot once. A Redis outage only
//! pauses the looking: passes go on, and slots that came meanwhile are missed slots that
//! follow `catchup`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::{Mode, ScheduleConfig, SuperviseConfig, Timing};
use super::http::DaemonMetrics;
use super::pass::{Ending, Pass, PassLauncher};
use super::slots::{decide, signature};
use super::state::{DaemonInfo, GroupState, LEASE_TTL, PassEnd, PassEntry, RecentEntry, Renewal};
use crate::queue::{LinkError, Patience, RedisLink};
use crate::supervisor::Signals;

/// How often the daemon looks at its schedules.
const TICK: Duration = Duration::from_millis(200);

/// How often a quiet look (nothing due) is recorded, at most.
const QUIET_RECORD_MS: i64 = 1_000;

/// How many times a lease is renewed within its TTL.
const RENEWALS_PER_LEASE: u32 = 8;

/// How often it tells the group it is alive.
const BEAT_EVERY: Duration = Duration::from_secs(2);

/// A daemon is counted live while its last heartbeat is younger than this.
pub const DAEMON_ALIVE_MS: i64 = 10_000;

/// How a daemon runs: where it is, and how its passes log.
pub struct DaemonOptions {
    /// `--env`, overriding the file's `environment`.
    pub environment: Option<String>,
    /// `--log-format` for passes.
    pub log_format: &'static str,
}

/// Why the daemon stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Redis could not be reached at start-up.
    #[error("cannot reach {0}; no schedule was looked at")]
    Unreachable(LinkError),
    /// Local files or processes failed.
    #[error("{what}: {source}")]
    Local {
        /// What the daemon was doing.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The managed Redis could not be started.
    #[error("managed redis: {0}")]
    ManagedRedis(String),
}

/// This daemon's identity in the group.
struct Me {
    id: String,
    host: String,
    environment: String,
}

/// A schedule this daemon looks after.
struct Watch {
    config: ScheduleConfig,
    signature: String,
    pass: Option<Pass>,
    /// The last problem logged, so an outage is logged once, not every tick.
    last_warning: Option<String>,
    /// `observe` mode: the last slot logged.
    observed_until: Option<i64>,
    /// This daemon's counters (shared by every watch and the HTTP server).
    metrics: Arc<DaemonMetrics>,
}

/// Runs the daemon until SIGTERM/SIGINT: returns the exit code.
pub async fn supervise(config: SuperviseConfig, options: DaemonOptions) -> Result<(), DaemonError> {
    let mut signals = Signals::listen().map_err(|source| DaemonError::Local {
        what: "cannot listen for signals".into(),
        source,
    })?;
    let environment = options
        .environment
        .clone()
        .unwrap_or_else(|| config.group.environment.clone());
    let mut managed = match &config.redis {
        crate::config::RedisConfig::Managed {
            data_dir,
            server_bin,
        } => Some(
            crate::supervisor::ManagedRedis::start(server_bin, data_dir)
                .await
                .map_err(|error| DaemonError::ManagedRedis(error.to_string()))?,
        ),
        crate::config::RedisConfig::External { .. } => None,
    };
    let redis_url = match (&managed, &config.redis) {
        (Some(managed), _) => managed.url(),
        (None, crate::config::RedisConfig::External { url }) => url.clone(),
        (None, _) => unreachable!("a managed redis was started above"),
    };
    if let crate::config::RedisConfig::Managed { data_dir, .. } = &config.redis {
        let file = managed_url_file(data_dir);
        std::fs::write(&file, &redis_url).map_err(|source| DaemonError::Local {
            what: format!("cannot write {}", file.display()),
            source,
        })?;
    }
    let link = RedisLink::new(&redis_url).map_err(DaemonError::Unreachable)?;
    let link = link.with_patience(Patience::Impatient);
    link.query::<String>("reaching redis", &redis::cmd("PING"))
        .await
        .map_err(DaemonError::Unreachable)?;
    let host = crate::supervisor::host_name();
    let me = Me {
        id: format!(
            "{host}:{}:{}",
            std::process::id(),
            crate::run_state::new_run_id()
        ),
        host,
        environment,
    };
    let launcher = PassLauncher {
        exe: std::env::current_exe().map_err(|source| DaemonError::Local {
            what: "cannot find this executable".into(),
            source,
        })?,
        redis_url,
        data_dir: config.group.data_dir.clone(),
        log_format: options.log_format,
    };
    let metrics = Arc::new(DaemonMetrics::default());
    let _http = match &config.group.http {
        Some(http) => {
            let listener = crate::metrics::http::bind(&http.addr)
                .await
                .map_err(|source| DaemonError::Local {
                    what: "supervise.http".into(),
                    source,
                })?;
            tracing::info!(
                "serving /metrics, /status and the status page on http://{}/",
                http.addr
            );
            let context = super::http::HttpContext {
                config: Arc::new(config.clone()),
                link: Arc::new(link.with_patience(Patience::Impatient)),
                environment: me.environment.clone(),
                metrics: metrics.clone(),
            };
            Some(super::http::spawn(listener, context))
        }
        None => None,
    };
    let state = GroupState::new(&link, &config.group.name);
    let mut watches: Vec<Watch> = Vec::new();
    for schedule in &config.schedules {
        if schedule.runs_in(&me.environment) {
            metrics.watch(schedule);
            watches.push(Watch {
                signature: signature(schedule),
                config: schedule.clone(),
                pass: None,
                last_warning: None,
                observed_until: None,
                metrics: metrics.clone(),
            });
        } else {
            tracing::info!(schedule = %schedule.name, environments = ?schedule.environments, environment = %me.environment, "gated: this daemon's environment does not run it");
        }
    }
    tracing::info!(
        group = %config.group.name,
        daemon = %me.id,
        environment = %me.environment,
        schedules = watches.len(),
        "supervising"
    );
    let about = DaemonInfo {
        id: me.id.clone(),
        host: me.host.clone(),
        pid: std::process::id(),
        environment: me.environment.clone(),
        started_at: crate::clock::now_ms() as i64,
        heartbeat: 0,
    };
    let mut alerts = super::alerts::Alerts::new(&config, &me.host, &me.environment);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_beat: Option<Instant> = None;
    let mut shutdown: Option<Instant> = None;
    let mut hurry = false;
    loop {
        tokio::select! {
            name = signals.stop_requested() => {
                if shutdown.is_some() {
                    tracing::warn!(signal = name, "second signal: stopping every pass now");
                    for watch in &mut watches {
                        if let Some(pass) = &mut watch.pass {
                            pass.ending = Some(Ending::Shutdown);
                            pass.end_now();
                        }
                    }
                    hurry = true;
                } else {
                    tracing::info!(signal = name, grace = ?config.group.grace, "stopping: no new passes; running ones may finish within the grace");
                    shutdown = Some(Instant::now());
                }
            }
            _ = tick.tick() => {}
        }
        if let Some(managed) = managed.as_mut()
            && let Err(error) = managed.revive().await
        {
            tracing::error!(%error, "managed redis");
        }
        if last_beat.is_none_or(|at| at.elapsed() >= BEAT_EVERY) && shutdown.is_none() {
            match state.beat(&me.id, &about).await {
                Ok(_) => last_beat = Some(Instant::now()),
                Err(error) => tracing::debug!(%error, "cannot beat"),
            }
        }
        let grace_over = hurry || shutdown.is_some_and(|at| at.elapsed() >= config.group.grace);
        for watch in &mut watches {
            tend(watch, &state, &me, grace_over).await;
            if shutdown.is_none() {
                look(watch, &state, &me, &launcher).await;
            }
        }
        alerts
            .tick(&state, watches.iter().map(|w| w.config.name.as_str()))
            .await;
        if shutdown.is_some() && watches.iter().all(|w| w.pass.is_none()) {
            break;
        }
    }
    if let Err(error) = state.leave(&me.id).await {
        tracing::warn!(%error, "could not leave the group; its heartbeat ages out");
    }
    if let Some(managed) = managed {
        managed.stop().await;
    }
    tracing::info!("supervise stopped");
    Ok(())
}

/// Where a daemon that manages the group's Redis leaves its URL, for `status` and the other
/// commands of the group.
pub fn managed_url_file(redis_dir: &std::path::Path) -> std::path::PathBuf {
    redis_dir.join("url")
}

/// Looks at one schedule: records due slots, then starts or takes over a pass.
async fn look(watch: &mut Watch, state: &GroupState<'_>, me: &Me, launcher: &PassLauncher) {
    if watch.config.mode == Mode::Observe {
        observe(watch, state).await;
        return;
    }
    let result = async {
        let seen = state.read(&watch.config.name).await?;
        let decision = decide(&watch.config, &seen.observed, false);
        let quiet = decision.is_quiet();
        // A quiet look is recorded about once a second (any daemon's record will do): enough
        // to tell a gap in the watching, and Redis (fsync on every write with AOF) is spared.
        let recently_recorded = seen
            .observed
            .checked_at
            .is_some_and(|at| seen.observed.now_ms - at < QUIET_RECORD_MS);
        if !quiet || !recently_recorded {
            let applied = state
                .apply(&watch.config.name, &seen, &watch.signature, &decision)
                .await?;
            if applied && !quiet {
                log_decision(&watch.config.name, &decision);
            }
        }
        if let Some(pass) = watch.pass.as_mut() {
            // `stop` names the pass by number: a stop meant for an earlier pass is ignored.
            let stop = seen.fields.get("stop").and_then(|s| s.parse::<u64>().ok());
            if stop.is_some() && stop == pass.entry.pass && pass.ending.is_none() {
                tracing::warn!(schedule = %watch.config.name, pass = pass.entry.pass, "asked to stop the pass: stopping it");
                pass.ask_to_end(Ending::Stopped);
            }
            return Ok(());
        }
        // A pass whose daemon's lease lapsed is taken over; else the next waiting slot starts.
        let orphan = seen.running.is_some() && !seen.leased;
        let waiting = seen.running.is_none()
            && (!decision.run.is_empty() || !seen.pending.is_empty())
            && !seen.fields.contains_key("paused");
        if !orphan && !waiting {
            return Ok(());
        }
        // The job's own lock: a pass cannot start while another process runs the job (a
        // pass of a daemon that died, still stopping; a `stevedore run` by hand).
        let lock: Option<String> = state
            .link()
            .query(
                "reading the job lock",
                &redis::Cmd::get(crate::supervisor::JobLock::key(&watch.config.job_name)),
            )
            .await?;
        if let Some(holder) = lock {
            warn_once(
                watch,
                format!(
                    "waiting: job `{}` is locked by {holder}",
                    watch.config.job_name
                ),
            );
            return Ok(());
        }
        let entry = match &seen.running {
            Some(_) if !seen.leased => {
                state
                    .take_over(&watch.config.name, &me.id, &me.host)
                    .await?
            }
            Some(_) => None,
            None => state.start(&watch.config.name, &me.id, &me.host).await?,
        };
        if let Some(entry) = entry {
            if let Some(reason) = &seen.read_only {
                tracing::warn!(schedule = %watch.config.name, %reason, "the group is read-only: this pass runs with --dry-run");
            }
            let dry_run = watch.config.mode == Mode::DryRun || seen.read_only.is_some();
            start_pass(watch, state, me, launcher, entry, dry_run).await;
        }
        Ok::<(), LinkError>(())
    }
    .await;
    match result {
        Ok(()) => {}
        Err(error) => warn_once(watch, error.to_string()),
    }
}

async fn start_pass(
    watch: &mut Watch,
    state: &GroupState<'_>,
    me: &Me,
    launcher: &PassLauncher,
    entry: PassEntry,
    dry_run: bool,
) {
    let name = watch.config.name.clone();
    match launcher.spawn(&name, &watch.config.job, entry.clone(), dry_run) {
        Ok(mut pass) => {
            pass.entry.pid = Some(pass.pid);
            pass.entry.dir = Some(pass.dir.display().to_string());
            tracing::info!(
                schedule = %name,
                pass = pass.entry.pass,
                slot = %super::pass::stamp(pass.entry.slot),
                attempt = pass.entry.attempt,
                takeovers = pass.entry.takeovers,
                pid = pass.pid,
                dry_run,
                "pass started; its log is {}",
                pass.dir.join("pass.log").display()
            );
            if let Err(error) = state.update_running(&name, &me.id, &pass.entry).await {
                tracing::warn!(%error, "could not record the pass's pid");
            }
            watch.last_warning = None;
            watch.pass = Some(pass);
        }
        Err(error) => {
            tracing::error!(schedule = %name, %error, "cannot start a pass");
            let failed = PassEnd {
                pass: entry.pass.unwrap_or(0),
                entry: RecentEntry {
                    outcome: "failed".into(),
                    host: Some(me.host.clone()),
                    started_at: entry.started_at,
                    attempt: entry.attempt,
                    manual: entry.manual,
                    pass: entry.pass,
                    reason: Some(format!("cannot start the pass: {error}")),
                    ..RecentEntry::not_run(entry.slot, "failed")
                },
                failed: true,
                retry: None,
                retry_delay: Duration::ZERO,
                every: every_of(&watch.config),
            };
            let _ = state.finish(&name, &me.id, &failed).await;
        }
    }
}

/// Tends this daemon's pass of `watch`: renews its lease, carries out `stop` and `timeout`,
/// and records its end.
async fn tend(watch: &mut Watch, state: &GroupState<'_>, me: &Me, grace_over: bool) {
    let name = watch.config.name.clone();
    let Some(pass) = watch.pass.as_mut() else {
        return;
    };
    match pass.child.try_wait() {
        Ok(Some(status)) => {
            let pass = watch.pass.take().expect("a pass");
            finish(watch, state, me, pass, status.code()).await;
            return;
        }
        Ok(None) => {}
        Err(error) => tracing::warn!(schedule = %name, %error, "cannot poll the pass"),
    }
    if grace_over && pass.ending.is_none() {
        tracing::warn!(schedule = %name, pass = pass.entry.pass, "grace is over: stopping the pass; another daemon resumes it");
        pass.ask_to_end(Ending::Shutdown);
    }
    if let Some(timeout) = watch.config.timeout
        && pass.started.elapsed() > timeout
        && pass.ending.is_none()
    {
        tracing::warn!(schedule = %name, pass = pass.entry.pass, ?timeout, "the pass timed out: stopping it");
        pass.ask_to_end(Ending::TimedOut);
    }
    if let Some(ending) = pass.ending
        && pass
            .asked_at
            .is_some_and(|at| at.elapsed() > Duration::from_secs(60))
    {
        tracing::warn!(schedule = %name, ?ending, "the pass is still there; asking again (now its workers are killed)");
        pass.ask_to_end(ending);
    }
    if pass
        .renewed
        .is_some_and(|at| at.elapsed() < LEASE_TTL / RENEWALS_PER_LEASE)
    {
        return;
    }
    match state.renew(&name, &me.id).await {
        Ok(Renewal::Held) => pass.renewed = Some(Instant::now()),
        Ok(Renewal::Lost) => {
            if pass.ending != Some(Ending::LeaseLost) {
                watch.metrics.lease_lost(&watch.config);
                tracing::error!(schedule = %name, pass = pass.entry.pass, "another daemon took this pass over (this one was cut off or paused): stopping it");
            }
            pass.ask_to_end(Ending::LeaseLost);
        }
        Err(error) => tracing::debug!(%error, "cannot renew the lease"),
    }
}

/// Records how `pass` ended (exit `code`), queueing a retry if the slot has attempts left.
async fn finish(watch: &mut Watch, state: &GroupState<'_>, me: &Me, pass: Pass, code: Option<i32>) {
    let name = &watch.config.name;
    let outcome = match (pass.ending, code) {
        (_, Some(0)) => "ok",
        (_, Some(3)) => "dead_letters",
        (Some(Ending::LeaseLost), _) => {
            tracing::warn!(schedule = %name, pass = pass.entry.pass, ?code, "the pass ended after another daemon took it over");
            return;
        }
        (Some(Ending::Shutdown), _) => {
            tracing::info!(schedule = %name, pass = pass.entry.pass, "the pass stopped for the shutdown; the next daemon to look resumes it");
            if let Err(error) = state.release(name, &me.id).await {
                tracing::warn!(%error, "could not release the lease; it lapses by itself");
            }
            return;
        }
        (Some(Ending::Stopped), _) => "stopped",
        (Some(Ending::TimedOut), _) => "timed_out",
        (None, _) => "failed",
    };
    let failed = matches!(outcome, "failed" | "timed_out");
    watch
        .metrics
        .pass_ended(&watch.config, outcome, pass.started.elapsed());
    let retry = (failed && pass.entry.attempt <= watch.config.retries).then(|| PassEntry {
        slot: pass.entry.slot,
        attempt: pass.entry.attempt + 1,
        manual: pass.entry.manual,
        ..PassEntry::default()
    });
    let entry = RecentEntry {
        slot: pass.entry.slot,
        run: pass.run_id(),
        host: Some(me.host.clone()),
        pid: Some(pass.pid),
        started_at: pass.entry.started_at,
        finished_at: None,
        outcome: outcome.to_string(),
        exit_code: code,
        attempt: pass.entry.attempt,
        manual: pass.entry.manual,
        pass: pass.entry.pass,
        dir: Some(pass.dir.display().to_string()),
        reason: pass.reason(),
    };
    let level_warn = failed || outcome == "stopped";
    if level_warn {
        tracing::warn!(schedule = %name, pass = pass.entry.pass, outcome, ?code, retry = retry.is_some(), "pass ended; see {}", pass.dir.join("pass.log").display());
    } else {
        tracing::info!(schedule = %name, pass = pass.entry.pass, outcome, run = ?entry.run, "pass ended");
    }
    let end = PassEnd {
        pass: pass.entry.pass.unwrap_or(0),
        entry,
        failed,
        retry,
        retry_delay: watch.config.retry_delay,
        every: every_of(&watch.config),
    };
    // The record must land: a pass whose end is not recorded would run again.
    for attempt in 0..30 {
        match state.finish(name, &me.id, &end).await {
            Ok(true) => return,
            Ok(false) => {
                tracing::warn!(schedule = %name, "the pass's end was not recorded: another daemon had taken it over");
                return;
            }
            Err(error) => {
                if attempt == 0 {
                    tracing::warn!(%error, "cannot record the pass's end yet; retrying");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    tracing::error!(schedule = %name, "gave up recording the pass's end; the lease lapses and the slot is resumed");
}

/// `observe` mode: logs each slot as it comes, records and runs nothing.
async fn observe(watch: &mut Watch, state: &GroupState<'_>) {
    let Timing::Cron(cron) = &watch.config.timing else {
        if watch.observed_until.is_none() {
            tracing::info!(schedule = %watch.config.name, "observe: would run every {}", signature(&watch.config));
            watch.observed_until = Some(0);
        }
        return;
    };
    let Ok(seen) = state.read(&watch.config.name).await else {
        return;
    };
    let now = seen.observed.now_ms;
    let from = *watch.observed_until.get_or_insert(now);
    if let Some(slot) = cron.next_slot(from)
        && slot <= now
    {
        tracing::info!(schedule = %watch.config.name, slot = %super::pass::stamp(slot), "observe: this slot would run now");
        watch.observed_until = Some(slot);
    }
}

fn log_decision(name: &str, decision: &super::slots::Decision) {
    if decision.missed > 0 {
        tracing::warn!(schedule = name, missed = decision.missed, latest = ?decision.missed_slots.last().map(|s| super::pass::stamp(*s)), "slots were missed (no daemon looked, or redis was away)");
    }
    if decision.skipped > 0 {
        tracing::info!(
            schedule = name,
            skipped = decision.skipped,
            "slots skipped: a pass was running"
        );
    }
    if decision.cancel_running {
        tracing::info!(
            schedule = name,
            "a new slot came: asking the running pass to stop (cancel_other)"
        );
    }
    for queued in &decision.run {
        tracing::debug!(schedule = name, slot = %super::pass::stamp(queued.slot), "slot due");
    }
}

fn warn_once(watch: &mut Watch, message: String) {
    if watch.last_warning.as_deref() != Some(message.as_str()) {
        tracing::warn!(schedule = %watch.config.name, "{message}");
        watch.last_warning = Some(message);
    }
}

fn every_of(schedule: &ScheduleConfig) -> Option<Duration> {
    match schedule.timing {
        Timing::Every(every) => Some(every),
        Timing::Cron(_) => None,
    }
}

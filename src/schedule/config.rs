//! The `stevedore supervise` file: `[supervise]`, `[redis]` and one `[[schedule]]` per job. Read
//! like job files: every problem at once, each at its field path, and every schedule's job file
//! loaded and checked, so a bad schedule stops the daemon before anything runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::alerts::{AlertsConfig, read_alerts};
use super::timing::{CronTiming, parse_zone};
use crate::config::{
    ConfigError, Problems, RedisConfig, check_sections, parse_with, process_env, read_redis,
    read_text,
};
use crate::settings::{check_name, join, parse_duration, read_value};

/// A whole, checked supervise file.
#[derive(Debug, Clone)]
pub struct SuperviseConfig {
    /// The group of daemons sharing one Redis.
    pub group: GroupSection,
    /// The Redis every daemon of the group shares.
    pub redis: RedisConfig,
    /// The schedules, in file order.
    pub schedules: Vec<ScheduleConfig>,
    /// `[alerts]`: when failing schedules alert, and where to; none without the section.
    pub alerts: Option<AlertsConfig>,
}

/// `[supervise]`: the group's name and this daemon's environment and local state.
#[derive(Debug, Clone)]
pub struct GroupSection {
    /// Namespace of the group in Redis.
    pub name: String,
    /// The environment this daemon runs schedules for (`--env` overrides).
    pub environment: String,
    /// Where pass logs and summaries are kept, per schedule.
    pub data_dir: PathBuf,
    /// On SIGTERM, how long running passes may go on before they are stopped.
    pub grace: Duration,
    /// `http`, `http_control`, `http_token`: where this daemon serves metrics, status and the
    /// status page; `None` when it serves nothing.
    pub http: Option<HttpSettings>,
}

/// What the daemon's HTTP address serves.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// `host:port` to listen on.
    pub addr: String,
    /// The token the status page's trigger/pause/resume buttons must send; `None` when the
    /// page is read-only (the default).
    pub control_token: Option<String>,
}

/// When a schedule's passes are due.
#[derive(Debug, Clone)]
pub enum Timing {
    /// On the slots of a cron pattern in a zone (boxed: a parsed pattern is large).
    Cron(Box<CronTiming>),
    /// This long after the last pass finished.
    Every(Duration),
}

/// What a daemon does with a due pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Runs it.
    Active,
    /// Runs it with `--dry-run`: reads, maps and checks, writes nothing.
    DryRun,
    /// Computes and logs it, runs nothing.
    Observe,
}

/// What a slot does when it comes while a pass of the schedule runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// The slot is skipped (and counted).
    Skip,
    /// One slot waits for the running pass; further ones are skipped.
    BufferOne,
    /// The running pass is stopped, then the slot's pass starts.
    CancelOther,
}

/// What happens to slots missed while no daemon ran the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Catchup {
    /// The latest missed slot runs; the others are counted.
    Latest,
    /// Every missed slot runs, oldest first.
    All,
    /// None runs; all are counted.
    Skip,
}

/// One `[[schedule]]`.
#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    /// Unique name (default: the job's name).
    pub name: String,
    /// The job file, as `stevedore run` takes it (checked at load).
    pub job: PathBuf,
    /// The job's name (`[job] name`): its lock and run state in Redis are keyed by it.
    pub job_name: String,
    /// The job's sink names (for metrics and the status page).
    pub sinks: Vec<String>,
    /// When passes are due.
    pub timing: Timing,
    /// Environments whose daemons run it; empty means every one.
    pub environments: Vec<String>,
    /// Run, dry-run or only observe.
    pub mode: Mode,
    /// Slots that come while a pass runs.
    pub overlap: Overlap,
    /// Slots missed while no daemon ran.
    pub catchup: Catchup,
    /// Missed slots older than this are only counted.
    pub catchup_window: Duration,
    /// A pass running longer is stopped and counts as failed.
    pub timeout: Option<Duration>,
    /// Extra attempts within one slot after a failed pass.
    pub retries: u32,
    /// The wait before each of those attempts.
    pub retry_delay: Duration,
}

impl ScheduleConfig {
    /// True when a daemon of `environment` runs this schedule (the others show it as gated).
    pub fn runs_in(&self, environment: &str) -> bool {
        self.environments.is_empty() || self.environments.iter().any(|e| e == environment)
    }
}

#[derive(Deserialize)]
struct RawGroup {
    name: String,
    environment: Option<String>,
    data_dir: Option<PathBuf>,
    grace: Option<String>,
    http: Option<String>,
    #[serde(default)]
    http_control: bool,
    http_token: Option<String>,
}

#[derive(Deserialize)]
struct RawSchedule {
    name: Option<String>,
    job: PathBuf,
    cron: Option<String>,
    every: Option<String>,
    timezone: Option<String>,
    #[serde(default)]
    environments: Vec<String>,
    #[serde(default = "active")]
    mode: Mode,
    #[serde(default = "skip_overlap")]
    overlap: Overlap,
    #[serde(default = "latest")]
    catchup: Catchup,
    catchup_window: Option<String>,
    timeout: Option<String>,
    #[serde(default)]
    retries: u32,
    retry_delay: Option<String>,
}

fn active() -> Mode {
    Mode::Active
}

fn skip_overlap() -> Overlap {
    Overlap::Skip
}

fn latest() -> Catchup {
    Catchup::Latest
}

const SECTIONS: &[&str] = &["supervise", "redis", "schedule", "alerts"];

impl SuperviseConfig {
    /// Loads `file` with the process environment; job paths are relative to the directory
    /// `stevedore` runs in, like every path of a job file.
    pub fn load(file: &Path) -> Result<SuperviseConfig, ConfigError> {
        Self::parse(&read_text(file)?, file, &process_env)
    }

    /// Parses supervise `text` (named `file` in errors) with variables from `env`.
    pub fn parse(
        text: &str,
        file: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<SuperviseConfig, ConfigError> {
        parse_with(text, file, env, |root, problems| read(root, env, problems))
    }
}

fn read(
    mut root: toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Problems,
) -> Option<SuperviseConfig> {
    check_sections(&root, SECTIONS, problems);
    let group = match root.remove("supervise") {
        Some(value) => read_value::<RawGroup>(value, "supervise", problems),
        None => {
            problems.push(
                "supervise",
                "missing section `[supervise]` (it needs at least `name`)",
            );
            None
        }
    };
    let redis = match root.remove("redis") {
        Some(value) => read_redis(value, problems),
        None => read_redis(toml::Value::Table(toml::Table::new()), problems),
    };
    let group = group.map(|group| read_group(group, problems));
    let alerts = root
        .remove("alerts")
        .map(|value| read_alerts(value, problems));
    let schedules = match root.remove("schedule") {
        Some(toml::Value::Array(items)) if !items.is_empty() => items
            .into_iter()
            .enumerate()
            .filter_map(|(index, item)| read_schedule(item, index, env, problems))
            .collect(),
        Some(toml::Value::Array(_)) | None => {
            problems.push("schedule", "the file has no [[schedule]]");
            Vec::new()
        }
        Some(_) => {
            problems.push(
                "schedule",
                "expected an array of tables (write each as [[schedule]])",
            );
            Vec::new()
        }
    };
    let mut names = std::collections::HashSet::new();
    for (index, schedule) in schedules.iter().enumerate() {
        if !names.insert(schedule.name.as_str()) {
            problems.push(
                format!("schedule[{index}] ({}).name", schedule.name),
                "another schedule has this name",
            );
        }
    }
    Some(SuperviseConfig {
        group: group?,
        redis: redis?,
        schedules,
        alerts: alerts.flatten(),
    })
}

fn read_group(group: RawGroup, problems: &mut Problems) -> GroupSection {
    check_name(&group.name, "supervise.name", problems);
    let environment = group.environment.unwrap_or_else(|| "dev".to_string());
    check_name(&environment, "supervise.environment", problems);
    let grace = parse_duration(group.grace.as_deref(), "60s", "supervise.grace", problems);
    let http = read_http(group.http, group.http_control, group.http_token, problems);
    GroupSection {
        http,
        data_dir: group
            .data_dir
            .unwrap_or_else(|| PathBuf::from("var/supervise").join(&group.name)),
        name: group.name,
        environment,
        grace,
    }
}

/// Minimum length of `http_token`: a guessable token would make the buttons anyone's.
const MIN_TOKEN_CHARS: usize = 16;

fn read_http(
    addr: Option<String>,
    control: bool,
    token: Option<String>,
    problems: &mut Problems,
) -> Option<HttpSettings> {
    let Some(addr) = addr else {
        if control || token.is_some() {
            problems.push(
                "supervise.http",
                "`http_control`/`http_token` need `http = \"127.0.0.1:9187\"`",
            );
        }
        return None;
    };
    if addr.parse::<std::net::SocketAddr>().is_err() {
        problems.push(
            "supervise.http",
            format!("`{addr}` is not an address to listen on (e.g. \"127.0.0.1:9187\")"),
        );
    }
    let control_token = match (control, token) {
        (false, Some(_)) => {
            problems.push(
                "supervise.http_token",
                "is set but `http_control` is not true; remove it or turn control on",
            );
            None
        }
        (false, None) => None,
        (true, None) => {
            problems.push(
                "supervise.http_token",
                "`http_control = true` needs a token (e.g. http_token = \"${STEVEDORE_HTTP_TOKEN}\")",
            );
            None
        }
        (true, Some(token)) if token.chars().count() < MIN_TOKEN_CHARS => {
            problems.push(
                "supervise.http_token",
                format!("must be at least {MIN_TOKEN_CHARS} characters"),
            );
            None
        }
        (true, Some(token)) => Some(token),
    };
    Some(HttpSettings {
        addr,
        control_token,
    })
}

fn read_schedule(
    item: toml::Value,
    index: usize,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Problems,
) -> Option<ScheduleConfig> {
    let named = item
        .get("name")
        .and_then(toml::Value::as_str)
        .map(str::to_string);
    let mut path = match &named {
        Some(name) => format!("schedule[{index}] ({name})"),
        None => format!("schedule[{index}]"),
    };
    let raw: RawSchedule = read_value(item, &path, problems)?;
    // The job is loaded now: a schedule whose job has problems stops the daemon at start.
    let job = match crate::job::parse_file(&raw.job, env) {
        Ok(job) => Some(job),
        Err(error) => {
            problems.push(join(&path, "job"), error.to_string());
            None
        }
    };
    let name = raw
        .name
        .clone()
        .or_else(|| job.as_ref().map(|job| job.job.name.clone()))
        .unwrap_or_default();
    if named.is_none() && !name.is_empty() {
        path = format!("schedule[{index}] ({name})");
    }
    check_name(&name, &join(&path, "name"), problems);
    let field = |name: &str| join(&path, name);
    let timing = match (&raw.cron, &raw.every) {
        (Some(pattern), None) => {
            let zone = raw.timezone.as_deref().unwrap_or("UTC");
            match CronTiming::parse(pattern, zone) {
                Ok(timing) => Some(Timing::Cron(Box::new(timing))),
                Err(error) => {
                    let at = if parse_zone(zone).is_err() {
                        "timezone"
                    } else {
                        "cron"
                    };
                    problems.push(field(at), error);
                    None
                }
            }
        }
        (None, Some(every)) => {
            if raw.timezone.is_some() {
                problems.push(
                    field("timezone"),
                    "applies only to `cron` (`every` counts from the last pass's end)",
                );
            }
            let every = parse_duration(Some(every), "", &field("every"), problems);
            if every < Duration::from_secs(1) {
                problems.push(field("every"), "must be at least 1s");
            }
            Some(Timing::Every(every))
        }
        (Some(_), Some(_)) => {
            problems.push(path.clone(), "has both `cron` and `every`; keep one");
            None
        }
        (None, None) => {
            problems.push(
                path.clone(),
                "needs `cron = \"30 2 * * *\"` or `every = \"10m\"`",
            );
            None
        }
    };
    for environment in &raw.environments {
        check_name(environment, &field("environments"), problems);
    }
    let catchup_window = parse_duration(
        raw.catchup_window.as_deref(),
        "6h",
        &field("catchup_window"),
        problems,
    );
    let timeout = raw
        .timeout
        .as_deref()
        .map(|timeout| parse_duration(Some(timeout), "", &field("timeout"), problems));
    if timeout.is_some_and(|timeout| timeout < Duration::from_secs(1)) {
        problems.push(field("timeout"), "must be at least 1s");
    }
    if raw.retries > 100 {
        problems.push(field("retries"), "must be at most 100");
    }
    let retry_delay = parse_duration(
        raw.retry_delay.as_deref(),
        "1m",
        &field("retry_delay"),
        problems,
    );
    let job = job?;
    Some(ScheduleConfig {
        name,
        job: raw.job,
        job_name: job.job.name,
        sinks: job.sinks.iter().map(|sink| sink.name.clone()).collect(),
        timing: timing?,
        environments: raw.environments,
        mode: raw.mode,
        overlap: raw.overlap,
        catchup: raw.catchup,
        catchup_window,
        timeout,
        retries: raw.retries,
        retry_delay,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = r#"
[job]
name = "orders"
[[source]]
name = "gen"
kind = "generator"
count = 10
[[sink]]
name = "nowhere"
kind = "blackhole"
"#;

    fn parse(dir: &Path, text: &str) -> Result<SuperviseConfig, ConfigError> {
        std::fs::write(dir.join("orders.toml"), JOB).unwrap();
        std::fs::write(dir.join("broken.toml"), "[job]\nname = 5\n").unwrap();
        let text = text.replace("{dir}", &dir.display().to_string());
        let env = |name: &str| (name == "STEVEDORE_ENV").then(|| "prod".to_string());
        SuperviseConfig::parse(&text, Path::new("supervise.toml"), &env)
    }

    #[test]
    fn schedule_config_reads_a_group_and_its_schedules() {
        let dir = tempfile::tempdir().unwrap();
        let config = parse(
            dir.path(),
            r#"
[supervise]
name = "loads"
environment = "${STEVEDORE_ENV:-dev}"
[redis]
url = "redis://127.0.0.1:6379/0"
[[schedule]]
job = "{dir}/orders.toml"
cron = "30 2 * * *"
timezone = "Europe/Berlin"
environments = ["prod"]
overlap = "buffer_one"
catchup = "all"
timeout = "2h"
retries = 1
[[schedule]]
name = "resync"
job = "{dir}/orders.toml"
every = "10m"
mode = "dry_run"
"#,
        )
        .unwrap();
        assert_eq!(config.group.environment, "prod");
        assert_eq!(config.group.data_dir, PathBuf::from("var/supervise/loads"));
        let [nightly, resync] = &config.schedules[..] else {
            panic!("two schedules")
        };
        assert_eq!(nightly.name, "orders", "the job's name by default");
        assert!(matches!(&nightly.timing, Timing::Cron(t) if t.pattern() == "30 2 * * *"));
        assert_eq!(
            (nightly.overlap, nightly.catchup, nightly.retries),
            (Overlap::BufferOne, Catchup::All, 1)
        );
        assert!(nightly.runs_in("prod") && !nightly.runs_in("staging"));
        assert!(matches!(resync.timing, Timing::Every(d) if d == Duration::from_secs(600)));
        assert_eq!(resync.mode, Mode::DryRun);
        assert!(resync.runs_in("staging"), "no environments: every one");
    }

    #[test]
    fn schedule_config_the_example_file_is_valid() {
        let config = SuperviseConfig::load(Path::new("config/supervise.toml"))
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(config.schedules.len(), 2);
        assert_eq!(config.schedules[0].job_name, "demo");
    }

    #[test]
    fn schedule_config_reads_alerts_with_secrets_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("orders.toml"), JOB).unwrap();
        let text = r#"
[supervise]
name = "loads"
[[schedule]]
job = "{dir}/orders.toml"
every = "10m"
[alerts]
after_failures = 2
[alerts.email]
smtp = "smtp://u:${SMTP_PASSWORD}@mail.example.com"
from = "stevedore@example.com"
to = ["oncall@example.com"]
"#
        .replace("{dir}", &dir.path().display().to_string());
        let env = |name: &str| (name == "SMTP_PASSWORD").then(|| "s3cret".to_string());
        let config = SuperviseConfig::parse(&text, Path::new("supervise.toml"), &env).unwrap();
        let alerts = config.alerts.unwrap();
        assert_eq!(alerts.after_failures, 2);
        assert_eq!(alerts.repeat_every, Duration::from_secs(6 * 3600));
        let (_, password) = alerts.email.unwrap().smtp.login.unwrap();
        assert_eq!(password.expose(), "s3cret");
        let error = SuperviseConfig::parse(
            &text.replace("after_failures = 2", "after_failures = -1"),
            Path::new("supervise.toml"),
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("alerts.after_failures"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
    }

    #[test]
    fn schedule_config_reports_every_problem_naming_schedule_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let error = parse(
            dir.path(),
            r#"
[supervise]
name = "loads"
[[schedule]]
name = "nightly"
job = "{dir}/orders.toml"
cron = "61 2 * * *"
[[schedule]]
name = "zoned"
job = "{dir}/orders.toml"
cron = "30 2 * * *"
timezone = "Europe/Atlantis"
[[schedule]]
name = "both"
job = "{dir}/orders.toml"
cron = "* * * * *"
every = "1m"
[[schedule]]
name = "broken"
job = "{dir}/broken.toml"
every = "1m"
[[schedule]]
name = "missing"
job = "{dir}/nope.toml"
every = "1m"
overlap = "queue_all"
"#,
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "schedule[0] (nightly).cron: `61 2 * * *` is not a cron pattern",
            "schedule[1] (zoned).timezone: unknown time zone `Europe/Atlantis`",
            "schedule[2] (both): has both `cron` and `every`",
            "schedule[3] (broken).job: config",
            "job.name: expected a string, found integer `5`",
            "schedule[4] (missing).overlap: unknown variant `queue_all`",
        ] {
            assert!(error.contains(expected), "`{expected}` in:\n{error}");
        }
    }
}

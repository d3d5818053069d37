//! A supervise group for tests: a temporary directory with job files (a generator into
//! SQLite) and a supervise file, daemons started from it, and what `status` says. Shared by
//! the test binaries that run `stevedore supervise` (each uses part of it).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use testkit::{Job, PATIENCE, TestRedis, kill, stevedore_bin};

/// A supervise group in a temporary directory: a job (a generator into SQLite) and a
/// supervise file with `schedules` (where `{job}` is the job file), sharing `redis`.
pub struct Group {
    pub files: Job,
    pub file: PathBuf,
}

/// A `stevedore supervise` process; killed if the test ends without stopping it.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits for the daemon to exit; returns its exit code.
    pub fn stop(&mut self) -> i32 {
        kill(self.child.id(), "TERM");
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon did not stop; its log:\n{}",
                self.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Group {
    /// A group whose one job, `orders`, loads `records` generated records into SQLite.
    pub fn new(redis: &TestRedis, records: u64, schedules: &str) -> Group {
        let group = Group::empty(redis, schedules);
        group.job(redis, "orders", records, "");
        group
    }

    /// A group with no job yet: `{dir}` in `schedules` is the group's directory.
    pub fn empty(redis: &TestRedis, schedules: &str) -> Group {
        Group::with_settings(redis, "", schedules)
    }

    /// Like [`Group::empty`], with `settings` (more lines of `[supervise]`).
    pub fn with_settings(redis: &TestRedis, settings: &str, schedules: &str) -> Group {
        let files = Job::new("");
        let dir = files.dir.path().display().to_string();
        let supervise = format!(
            r#"
            [supervise]
            name = "loads"
            environment = "prod"
            data_dir = "{dir}/supervise"
            grace = "30s"
            {settings}
            [redis]
            url = "{url}"
            {schedules}
            "#,
            url = redis.url(),
            schedules = schedules
                .replace("{job}", &format!("{dir}/orders.toml"))
                .replace("{dir}", &dir),
        );
        files.write("supervise.toml", &supervise);
        let file = files.path("supervise.toml");
        Group { files, file }
    }

    /// Writes job `name` (`<name>.toml`): `records` generated records into table `name` of
    /// `out.db`, with `sink_extra` lines in its sink.
    pub fn job(&self, redis: &TestRedis, name: &str, records: u64, sink_extra: &str) {
        let dir = self.files.dir.path().display().to_string();
        let table = if name == "orders" { "orders" } else { name };
        let job = format!(
            r#"
            [job]
            name = "{name}"
            data_dir = "{dir}/var"
            [redis]
            url = "{url}"
            [workers]
            producers = 1
            consumers = 1
            [queue]
            unit_records = 100
            visibility_timeout = "5s"
            [[source]]
            name = "synthetic"
            kind = "generator"
            count = {records}
            [[sink]]
            name = "local"
            kind = "sqlite"
            path = "{dir}/out.db"
            table = "{table}"
            {sink_extra}
            "#,
            url = redis.url()
        );
        self.files.write(&format!("{name}.toml"), &job);
    }

    pub fn command(&self, subcommand: &str) -> Command {
        let mut command = Command::new(stevedore_bin());
        command
            .arg(subcommand)
            .arg("--config")
            .arg(&self.file)
            .current_dir(self.files.dir.path());
        command
    }

    /// Starts a daemon of `environment`; its log goes to `daemon-<n>.log`.
    pub fn daemon(&self, environment: &str, n: u32) -> Daemon {
        let log = self.files.path(&format!("daemon-{n}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = self
            .command("supervise")
            .args(["--env", environment])
            .env("STEVEDORE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("stevedore supervise starts");
        Daemon { child, log }
    }

    /// `stevedore <subcommand> --config supervise.toml <args>`: exit code and output.
    pub fn run(&self, subcommand: &str, args: &[&str]) -> (i32, String) {
        let output = self.command(subcommand).args(args).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code().unwrap_or(-1), text)
    }

    pub fn status(&self) -> Value {
        let (code, text) = self.run("status", &["--json"]);
        assert_eq!(code, 0, "status: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("status JSON ({e}): {text}"))
    }

    pub fn schedule(&self, name: &str) -> Value {
        let status = self.status();
        status["schedules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no schedule {name} in {status}"))
    }

    /// The history of schedule `name`, oldest first.
    pub fn history(&self, name: &str) -> Vec<Value> {
        let mut recent = self.schedule(name)["recent"].as_array().unwrap().clone();
        recent.reverse();
        recent
    }

    /// The runs whose units the SQLite ledger holds, with how many units each applied.
    pub fn runs_in_sink(&self) -> BTreeMap<String, u64> {
        let connection = rusqlite::Connection::open(self.files.path("out.db")).unwrap();
        let mut statement = connection
            .prepare("SELECT unit_id FROM stevedore_applied")
            .unwrap();
        let mut runs = BTreeMap::new();
        for unit in statement
            .query_map([], |row| row.get::<_, String>(0))
            .unwrap()
        {
            let unit = unit.unwrap();
            let run = unit.split('/').nth(1).unwrap().to_string();
            *runs.entry(run).or_insert(0) += 1;
        }
        runs
    }

    /// Pass directories of schedule `name` (`<slot>-pass<n>`).
    pub fn pass_dirs(&self, name: &str) -> Vec<String> {
        let mut dirs: Vec<String> =
            std::fs::read_dir(self.files.path(&format!("supervise/{name}")))
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
        dirs.sort();
        dirs
    }
}

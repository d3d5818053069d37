//! stevedore's test support, a dev-only crate compiled once for every test binary and bench:
//! real servers on free loopback ports (Redis, PostgreSQL, the TDS test server, the Cosmos DB test server,
//! an SMTP server, a webhook receiver) and a way to write a job and run the real `stevedore` binary against them. Every test gets
//! its own Redis and its own files, so tests run in parallel and never touch a shared Redis.
//!
//! Nothing here may depend on how fast the machine is: every wait is for an event, with
//! [`PATIENCE`] far above the normal time, and a wait that runs out says what it waited for.

#![warn(missing_docs)]

pub mod cosmos;
pub mod http_api;
pub mod mariadb;
pub mod mssql;
pub mod postgres;
pub mod smtp;
pub mod tds;
mod watchdog;
pub mod web;
pub mod webhook;

use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Runs `npm ci` in `dir` (a folder of testkit with a `package-lock.json`) unless its
/// `node_modules` already holds what the lock pins (`package`, the one the tests start, is
/// there and a stamp matches the lock). Across processes (test binaries run one after the
/// other, but a developer may run several) an exclusive lock on a file beside `node_modules`
/// serialises the check and the install; callers keep it to once per process.
pub(crate) fn npm_ci(dir: &Path, package: &str) {
    let lock_path = dir.join(".npm-ci.lock");
    let lock = std::fs::File::create(&lock_path)
        .unwrap_or_else(|e| panic!("creating {}: {e}", lock_path.display()));
    lock.lock()
        .unwrap_or_else(|e| panic!("locking {}: {e}", lock_path.display()));
    let wanted = std::fs::read(dir.join("package-lock.json")).expect("package-lock.json");
    let stamp = dir.join("node_modules/.stevedore-installed-lock.json");
    let installed = dir.join("node_modules").join(package).join("package.json");
    if installed.exists() && std::fs::read(&stamp).ok().as_deref() == Some(wanted.as_slice()) {
        return;
    }
    let output = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("npm must be installed (scripts/ensure-deps.sh)");
    assert!(
        output.status.success(),
        "npm ci in {} failed\nstdout:\n{}\nstderr:\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::write(&stamp, &wanted).expect("writing the npm install stamp");
    // The lock is released when `lock` is dropped here.
}

/// How long a test waits for anything before it fails.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// Runs a future to completion on a small runtime of its own (tests are synchronous: they
/// also run the `stevedore` binary).
pub fn block_on<T>(future: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// A throwaway `redis-server`, killed when dropped.
pub struct TestRedis {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    aof: bool,
    dir: tempfile::TempDir,
}

impl TestRedis {
    /// Starts `redis-server` (from PATH) on a free port, without persistence.
    pub fn start() -> TestRedis {
        Self::launch(false)
    }

    /// Starts one that persists every write (`appendonly yes`, `appendfsync always`), as a
    /// production Redis would, so [`TestRedis::restart`] loses nothing acknowledged.
    pub fn start_with_aof() -> TestRedis {
        Self::launch(true)
    }

    fn launch(aof: bool) -> TestRedis {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut tries = 0;
        loop {
            // Another test may take the free port before this server binds it: then start
            // again on another one.
            let port = free_port();
            let mut child = spawn_redis(port, dir.path(), aof);
            match wait_for_own_server(&mut child, port) {
                Ok(()) => {
                    return TestRedis {
                        child,
                        port,
                        aof,
                        dir,
                    };
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    tries += 1;
                    assert!(tries < 5, "could not start a test redis-server: {why}");
                }
            }
        }
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and data directory.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_redis(self.port, self.dir.path(), self.aof);
        if let Err(why) = wait_for_own_server(&mut self.child, self.port) {
            panic!("the test redis-server did not come back: {why}");
        }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Runs a command and returns its reply, waiting for the server as long as [`PATIENCE`].
    pub fn query<T: redis::FromRedisValue>(&self, command: &mut redis::Cmd) -> T {
        let port = self.port;
        let mut connection = redis::Client::open(self.url())
            .and_then(|client| client.get_connection_with_timeout(PATIENCE))
            .unwrap_or_else(|e| panic!("connecting to the test redis on port {port}: {e}"));
        command
            .query(&mut connection)
            .unwrap_or_else(|e| panic!("the test redis on port {port} refused a command: {e}"))
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (up to [`PATIENCE`]) until the redis-server `child` answers on `port` as itself
/// (`INFO server` names its pid). Fails when it exits first or another server answers there.
fn wait_for_own_server(child: &mut Child, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!(
                "redis-server on port {port} exited at start ({status})"
            ));
        }
        if let Some(pid) = server_pid(port) {
            return if pid == child.id() {
                Ok(())
            } else {
                Err(format!("port {port} is another redis-server's (pid {pid})"))
            };
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until redis-server answers on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The process id of the Redis server answering on `port`, if one answers.
fn server_pid(port: u16) -> Option<u32> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).ok()?;
    let mut connection = client
        .get_connection_with_timeout(Duration::from_secs(1))
        .ok()?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut connection)
        .ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

fn spawn_redis(port: u16, dir: &Path, aof: bool) -> Child {
    let persistence: &[&str] = if aof {
        &["--appendonly", "yes", "--appendfsync", "always"]
    } else {
        &["--appendonly", "no"]
    };
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(persistence)
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (scripts/ensure-deps.sh)")
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A suffix for names on a server that several tests and test processes share (tables):
/// unique to this process and call.
pub(crate) fn unique_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let next = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("_{}_{next}", std::process::id())
}

/// Polls `condition` until it holds; fails the test after [`PATIENCE`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the job's SQLite table `orders` in `out.db` has rows: the run is under way.
pub fn wait_for_rows(job: &Job) {
    wait_until("rows are landing", || {
        job.sqlite_count("out.db", "orders") > 0
    });
}

/// The summary entry of worker `role` number `id`.
pub fn summary_worker(summary: &Value, role: &str, id: u64) -> Value {
    summary["workers"]
        .as_array()
        .and_then(|workers| workers.iter().find(|w| w["role"] == role && w["id"] == id))
        .cloned()
        .unwrap_or_else(|| panic!("no {role} {id} in {summary}"))
}

/// The `stevedore` binary under test: `STEVEDORE_BIN` when set, otherwise the one cargo built
/// beside the running test (`target/<profile>/stevedore`; cargo builds a package's binaries
/// before it runs the package's integration tests).
pub fn stevedore_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("STEVEDORE_BIN") {
        return PathBuf::from(path);
    }
    let test = std::env::current_exe().expect("the running test's path");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/stevedore
    let bin = test
        .parent()
        .and_then(Path::parent)
        .map(|profile| profile.join(format!("stevedore{}", std::env::consts::EXE_SUFFIX)))
        .expect("tests run from target/<profile>/deps");
    assert!(
        bin.exists(),
        "no stevedore binary at {} (run the tests with cargo test, which builds it, or set STEVEDORE_BIN)",
        bin.display()
    );
    bin
}

/// How long a test lets one `stevedore run` go on before it kills it and fails: far above the
/// longest run of the suite on a slow machine, so that a hung run fails with its logs instead
/// of hanging the suite.
pub const RUN_PATIENCE: Duration = Duration::from_secs(15 * 60);

/// Reads a child's pipe to the end on a thread of its own, so the child never blocks on a full
/// pipe while the test waits for it.
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// A job written to a temporary directory.
pub struct Job {
    /// The directory holding the config, data, database and logs.
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    /// Environment every `stevedore` command of the job gets (secrets for `${VAR}`).
    env: Vec<(String, String)>,
}

impl Job {
    /// Writes `toml` (where `{dir}` stands for the job's directory) as the job's config.
    pub fn new(toml: &str) -> Job {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("job.toml");
        std::fs::write(
            &config,
            toml.replace("{dir}", &dir.path().display().to_string()),
        )
        .unwrap();
        Job {
            dir,
            config,
            env: Vec::new(),
        }
    }

    /// Sets an environment variable for every `stevedore` command of the job, the way users
    /// pass secrets to `${VAR}` in the config.
    pub fn with_env(mut self, name: &str, value: &str) -> Job {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// A path inside the job's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a data file inside the job's directory.
    pub fn write(&self, name: &str, text: &str) {
        let path = self.path(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// `stevedore <args> --config job.toml`, not yet started.
    pub fn command(&self, subcommand: &str) -> Command {
        let mut command = Command::new(stevedore_bin());
        command
            .arg(subcommand)
            .arg("--config")
            .arg(&self.config)
            .current_dir(self.dir.path())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Runs `stevedore run` to the end (at most [`RUN_PATIENCE`]).
    pub fn run(&self) -> RunResult {
        let child = self.spawn_run();
        self.finish(child)
    }

    /// Starts `stevedore run` in the background.
    pub fn spawn_run(&self) -> Child {
        let summary_path = self.path("summary.json");
        let _ = std::fs::remove_file(&summary_path);
        self.command("run")
            .arg("--summary-json")
            .arg(&summary_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("stevedore starts")
    }

    /// Waits for a background run (at most [`RUN_PATIENCE`]) and collects its result. A run
    /// still going then is killed, and the test fails with its workers' last log lines.
    pub fn finish(&self, mut child: Child) -> RunResult {
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let deadline = Instant::now() + RUN_PATIENCE;
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting for stevedore") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "stevedore run did not finish within {RUN_PATIENCE:?}; killed it\n{}",
                    self.worker_log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let output = Output {
            status,
            stdout: stdout.join().expect("reading stdout"),
            stderr: stderr.join().expect("reading stderr"),
        };
        let mut result = RunResult::new(output, &self.path("summary.json"));
        result.worker_log_tail = self.worker_log_tail();
        result
    }

    /// Every worker log of every run of the job (`<data_dir>/logs/<run>/<role>-<id>.log`, with
    /// `data_dir = "{dir}/var"`), one after another.
    pub fn worker_logs(&self) -> String {
        self.worker_log_paths()
            .iter()
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .collect()
    }

    /// The last lines of each worker log, headed by its path: what a failed run's message shows.
    pub fn worker_log_tail(&self) -> String {
        const LINES: usize = 20;
        let mut tail = String::new();
        for path in self.worker_log_paths() {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            tail.push_str(&format!("--- {} (last {LINES} lines)\n", path.display()));
            for line in &lines[lines.len().saturating_sub(LINES)..] {
                tail.push_str(line);
                tail.push('\n');
            }
        }
        tail
    }

    fn worker_log_paths(&self) -> Vec<PathBuf> {
        let Ok(runs) = std::fs::read_dir(self.path("var/logs")) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = runs
            .flatten()
            .filter_map(|run| std::fs::read_dir(run.path()).ok())
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
            .collect();
        paths.sort();
        paths
    }

    /// Rows of a SQLite table, each as `id -> row` in JSON, from the job's database.
    pub fn sqlite_rows(&self, database: &str, table: &str) -> Vec<Value> {
        let connection = rusqlite::Connection::open(self.path(database)).expect("database exists");
        let mut statement = connection
            .prepare(&format!("SELECT * FROM {table}"))
            .expect("table exists");
        let names: Vec<String> = statement
            .column_names()
            .into_iter()
            .map(str::to_string)
            .collect();
        statement
            .query_map([], |row| {
                let mut object = serde_json::Map::new();
                for (index, name) in names.iter().enumerate() {
                    let value = match row.get_ref(index)? {
                        rusqlite::types::ValueRef::Null => Value::Null,
                        rusqlite::types::ValueRef::Integer(i) => Value::from(i),
                        rusqlite::types::ValueRef::Real(f) => Value::from(f),
                        rusqlite::types::ValueRef::Text(t) => {
                            Value::from(String::from_utf8_lossy(t).into_owned())
                        }
                        rusqlite::types::ValueRef::Blob(_) => Value::from("<blob>"),
                    };
                    object.insert(name.clone(), value);
                }
                Ok(Value::Object(object))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// Number of rows in a SQLite table, 0 while it does not exist yet.
    pub fn sqlite_count(&self, database: &str, table: &str) -> i64 {
        let Ok(connection) = rusqlite::Connection::open(self.path(database)) else {
            return 0;
        };
        connection
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
                row.get(0)
            })
            .unwrap_or(0)
    }
}

/// The outcome of one `stevedore run`.
pub struct RunResult {
    /// Exit code.
    pub code: i32,
    /// Standard output (the human summary).
    pub stdout: String,
    /// Standard error (problems, supervisor log).
    pub stderr: String,
    /// The `--summary-json` document, if written.
    pub summary: Value,
    /// The last lines of each worker log (runs through [`Job`] only), shown when the exit code
    /// is not the expected one: a sink's timeouts and retries are only there.
    pub worker_log_tail: String,
}

impl RunResult {
    /// The result of a command other than `run` (no summary).
    pub fn from_output(output: Output) -> RunResult {
        RunResult::new(output, Path::new("/nonexistent/summary.json"))
    }

    fn new(output: Output, summary_path: &Path) -> RunResult {
        let summary = std::fs::read_to_string(summary_path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or(Value::Null);
        RunResult {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            summary,
            worker_log_tail: String::new(),
        }
    }

    /// Fails with everything the run printed when the exit code is not `expected`.
    pub fn expect_code(&self, expected: i32) -> &RunResult {
        assert_eq!(
            self.code, expected,
            "unexpected exit code\nstdout:\n{}\nstderr:\n{}\nworker logs:\n{}",
            self.stdout, self.stderr, self.worker_log_tail
        );
        self
    }
}

/// Reads every message body of an RSMQ queue without receiving it.
pub fn queue_bodies(redis: &TestRedis, queue: &str) -> Vec<Value> {
    let ids: Vec<String> = redis.query(
        redis::cmd("ZRANGE")
            .arg(format!("rsmq:{queue}"))
            .arg(0)
            .arg(-1),
    );
    ids.iter()
        .map(|id| {
            let body: String =
                redis.query(redis::cmd("HGET").arg(format!("rsmq:{queue}:Q")).arg(id));
            serde_json::from_str(&body).expect("queue messages are JSON")
        })
        .collect()
}

/// The pid of a worker (e.g. `consumer-1`) of the job's current run: waits until the worker's
/// heartbeat names a process that is alive and is that worker.
pub fn worker_pid(redis: &TestRedis, job: &str, worker: &str) -> u32 {
    let (role, id) = worker
        .split_once('-')
        .expect("a worker name is <role>-<id>");
    let argv = format!("worker {role} --id {id}");
    let mut pid = 0;
    wait_until(
        &format!("{worker} of job {job} beats from a live process"),
        || {
            let Some(beating) = heartbeat_pid(redis, job, worker) else {
                return false;
            };
            pid = beating;
            std::fs::read(format!("/proc/{beating}/cmdline"))
                .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
                .is_ok_and(|cmdline| cmdline.contains(&argv))
        },
    );
    pid
}

/// The pid in a worker's last heartbeat of the job's current run, if it has one.
fn heartbeat_pid(redis: &TestRedis, job: &str, worker: &str) -> Option<u32> {
    let run: Option<String> =
        redis.query(redis::cmd("GET").arg(format!("stevedore:{job}:current_run")));
    let beat: Option<String> = redis.query(
        redis::cmd("HGET")
            .arg(format!("stevedore:{job}:run:{}:heartbeats", run?))
            .arg(worker),
    );
    serde_json::from_str::<Value>(&beat?).ok()?["pid"]
        .as_u64()
        .map(|pid| pid as u32)
}

/// Sends `signal` to `pid`.
pub fn kill(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

//! `redis.url = "managed"`: a `redis-server` that stevedore starts, watches and restarts.
//!
//! It runs with `appendonly yes` and `appendfsync always`, so a write Redis acknowledged
//! survives a crash of Redis itself; bound to loopback on a free port; in its own process
//! group (a Ctrl-C at the terminal reaches the supervisor, which stops Redis last); and with a
//! parent-death signal, so it never outlives a killed supervisor.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::SupervisorError;

/// A supervised `redis-server`.
pub struct ManagedRedis {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Child,
    /// How many times it was restarted after exiting.
    pub restarts: u32,
}

impl ManagedRedis {
    /// Starts `bin` with its data in `dir` and waits until it answers.
    pub async fn start(bin: &Path, dir: &Path) -> Result<ManagedRedis, SupervisorError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| SupervisorError::Redis(format!("cannot create {}: {e}", dir.display())))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| SupervisorError::Redis(format!("{}: {e}", dir.display())))?;
        if let Some(pid) = live_pid(&dir.join("redis.pid")) {
            return Err(SupervisorError::Redis(format!(
                "the managed redis in {} is already in use (pid {pid}); is another stevedore running this job?",
                dir.display()
            )));
        }
        let port = free_port().map_err(|e| SupervisorError::Redis(format!("no free port: {e}")))?;
        let child = spawn(bin, &dir, port)?;
        let mut redis = ManagedRedis {
            bin: bin.to_path_buf(),
            dir,
            port,
            child,
            restarts: 0,
        };
        redis.wait_ready().await?;
        Ok(redis)
    }

    /// The URL workers use.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Restarts the server if it has exited; true if it did.
    pub async fn revive(&mut self) -> Result<bool, SupervisorError> {
        match self.child.try_wait() {
            Ok(None) => Ok(false),
            Ok(Some(status)) => {
                tracing::warn!(%status, "managed redis exited; restarting it from its append-only file");
                let _ = std::fs::remove_file(self.dir.join("redis.pid"));
                self.child = spawn(&self.bin, &self.dir, self.port)?;
                self.restarts += 1;
                self.wait_ready().await?;
                Ok(true)
            }
            Err(error) => Err(SupervisorError::Redis(format!(
                "cannot poll redis-server: {error}"
            ))),
        }
    }

    /// Stops the server cleanly (it flushes its append-only file).
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            super::workers::signal(pid, libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }

    /// Waits until the server answers, and is this process (not another Redis that took the
    /// port between our choosing it and the server binding it).
    async fn wait_ready(&mut self) -> Result<(), SupervisorError> {
        let client =
            redis::Client::open(self.url()).map_err(|e| SupervisorError::Redis(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + READY_PATIENCE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(SupervisorError::Redis(format!(
                    "redis-server exited during start-up ({status}); see {}",
                    self.dir.join("redis.log").display()
                )));
            }
            let last = match server_pid(&client).await {
                Ok(pid) if Some(pid) == self.child.id() => return Ok(()),
                Ok(pid) => {
                    return Err(SupervisorError::Redis(format!(
                        "port {} is served by another redis-server (pid {pid}), not ours",
                        self.port
                    )));
                }
                Err(error) => error.to_string(),
            };
            if tokio::time::Instant::now() > deadline {
                return Err(SupervisorError::Redis(format!(
                    "redis-server on port {} did not answer within {} s (last: {last}); see {}",
                    self.port,
                    READY_PATIENCE.as_secs(),
                    self.dir.join("redis.log").display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// How long a starting `redis-server` may take to answer (it normally takes milliseconds).
const READY_PATIENCE: Duration = Duration::from_secs(60);

/// The process id the server at `client` reports (`INFO server`).
async fn server_pid(client: &redis::Client) -> redis::RedisResult<u32> {
    let mut connection = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut connection)
        .await?;
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
        .ok_or_else(|| (redis::ErrorKind::Parse, "no process_id in INFO server").into())
}

fn spawn(bin: &Path, dir: &Path, port: u16) -> Result<Child, SupervisorError> {
    let mut command = Command::new(bin);
    command
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "no",
        ])
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir)
        .arg("--pidfile")
        .arg(dir.join("redis.pid"))
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    super::workers::detach_from_terminal(&mut command);
    command.spawn().map_err(|error| {
        SupervisorError::Redis(format!(
            "cannot start {} ({error}); install redis-server or set redis.server_bin",
            bin.display()
        ))
    })
}

fn live_pid(pidfile: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    // SAFETY: signal 0 only checks that the process exists.
    (unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

//! `redis.url = "managed"`: a `redis-server` that stevedore starts, watches and restarts.
//!
//! It runs with `appendonly yes` and `appendfsync always`, so a write Redis acknowledged
//! survives a crash of Redis itself; bound to loopback on a free port; in its own process
//! group (a Ctrl-C at the terminal reaches the supervisor, which stops Redis last); and with a
//! parent-death signal, so it never outlives a killed supervisor.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// Why the managed Redis could not be started or kept running.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ManagedRedisError {
    /// A local file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, e.g. `cannot create var/redis`.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Another process holds the data directory.
    #[error(
        "the managed redis in {} is already in use (pid {pid}); is another stevedore running this job?",
        dir.display()
    )]
    InUse {
        /// The data directory.
        dir: PathBuf,
        /// The process holding it.
        pid: i32,
    },
    /// The binary could not be started.
    #[error("cannot start {} ({source}); install redis-server or set redis.server_bin", bin.display())]
    Spawn {
        /// The `redis-server` binary.
        bin: PathBuf,
        /// Why it could not start.
        source: std::io::Error,
    },
    /// The server exited while starting.
    #[error("redis-server exited during start-up ({status}); see {}", log.display())]
    Exited {
        /// How it exited.
        status: std::process::ExitStatus,
        /// Its log file.
        log: PathBuf,
    },
    /// Another Redis answers on the port chosen for ours.
    #[error("port {port} is served by another redis-server (pid {pid}), not ours")]
    PortTaken {
        /// The port.
        port: u16,
        /// The other server's pid.
        pid: u32,
    },
    /// The server did not answer in time.
    #[error(
        "redis-server on port {port} did not answer within {} s (last: {last}); see {}",
        READY_PATIENCE.as_secs(),
        log.display()
    )]
    NotReady {
        /// The port.
        port: u16,
        /// The last error seen while asking.
        last: String,
        /// Its log file.
        log: PathBuf,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ManagedRedisError {
    let what = what.into();
    move |source| ManagedRedisError::Io { what, source }
}

/// A supervised `redis-server`.
pub(crate) struct ManagedRedis {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Child,
    /// How many times it was restarted after exiting.
    pub restarts: u32,
}

impl ManagedRedis {
    /// Starts `bin` with its data in `dir` and waits until it answers.
    pub(crate) async fn start(bin: &Path, dir: &Path) -> Result<ManagedRedis, ManagedRedisError> {
        // The append-only file holds every unit's records: readable by its owner only.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(format!("cannot create {}", dir.display())))?;
        let dir = dir.canonicalize().map_err(io(dir.display().to_string()))?;
        if let Some(pid) = live_pid(&dir.join("redis.pid")) {
            return Err(ManagedRedisError::InUse { dir, pid });
        }
        let port = free_port().map_err(io("no free port"))?;
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
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Restarts the server if it has exited; true if it did.
    pub(crate) async fn revive(&mut self) -> Result<bool, ManagedRedisError> {
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
            Err(error) => Err(io("cannot poll redis-server")(error)),
        }
    }

    /// Stops the server cleanly (it flushes its append-only file).
    pub(crate) async fn stop(mut self) {
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
    async fn wait_ready(&mut self) -> Result<(), ManagedRedisError> {
        let client = redis::Client::open(self.url()).expect("a loopback URL with a port is valid");
        let deadline = tokio::time::Instant::now() + READY_PATIENCE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(ManagedRedisError::Exited {
                    status,
                    log: self.dir.join("redis.log"),
                });
            }
            let last = match server_pid(&client).await {
                Ok(pid) if Some(pid) == self.child.id() => return Ok(()),
                Ok(pid) => {
                    return Err(ManagedRedisError::PortTaken {
                        port: self.port,
                        pid,
                    });
                }
                Err(error) => error.to_string(),
            };
            if tokio::time::Instant::now() > deadline {
                return Err(ManagedRedisError::NotReady {
                    port: self.port,
                    last,
                    log: self.dir.join("redis.log"),
                });
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

fn spawn(bin: &Path, dir: &Path, port: u16) -> Result<Child, ManagedRedisError> {
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
        // A supervisor that gives up half way (a signal during start-up) leaves no server.
        .kill_on_drop(true)
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
    command.spawn().map_err(|source| ManagedRedisError::Spawn {
        bin: bin.to_path_buf(),
        source,
    })
}

fn live_pid(pidfile: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    // SAFETY: signal 0 only checks that the process exists.
    (unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
}

/// A loopback port nobody listens on right now.
pub(super) fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

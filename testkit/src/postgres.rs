//! PostgreSQL for the `postgres` tests: a throwaway server from Debian's package (`initdb` +
//! `postgres` on a free loopback port, password login over TCP, in a temporary directory),
//! started once per test binary; and a real server as well when `STEVEDORE_POSTGRES_URL`
//! names one. Every test runs its scenario against each target it gets, in tables of its
//! own, and says when it skipped the external one.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::watchdog::{Watched, log_tail, server_user, versioned_binary};
use crate::{PATIENCE, block_on, free_port, unique_suffix};

/// The external server's URL, if the environment names one.
const REAL_SERVER_ENV: &str = "STEVEDORE_POSTGRES_URL";

/// The user the throwaway server's tests log in as.
const USER: &str = "stevedore";

/// The throwaway server of this test binary.
pub struct PostgresServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    password: String,
    _process: Mutex<Watched>,
}

impl PostgresServer {
    /// The server of this test binary, started on first use.
    pub fn shared() -> &'static PostgresServer {
        static SERVER: OnceLock<PostgresServer> = OnceLock::new();
        SERVER.get_or_init(PostgresServer::start)
    }

    fn start() -> PostgresServer {
        let mut tries = 0;
        loop {
            match PostgresServer::try_start() {
                Ok(server) => return server,
                Err(why) => {
                    tries += 1;
                    assert!(tries < 4, "could not start a test PostgreSQL server: {why}");
                }
            }
        }
    }

    fn try_start() -> Result<PostgresServer, String> {
        let dir: PathBuf = tempfile::Builder::new()
            .prefix("stevedore-pg-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let password = format!("pg-{}-{}", std::process::id(), free_port());
        let data = dir.join("data");
        let pwfile = dir.join("password");
        std::fs::write(&pwfile, &password).expect("password file");
        let user = server_user("postgres", &dir);
        let initdb = versioned_binary("/usr/lib/postgresql", "initdb");
        let mut command = match user {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(&initdb);
                command
            }
            None => Command::new(&initdb),
        };
        let output = command
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                USER,
                "-A",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .arg("--no-sync")
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "{} must be installed (package postgresql, scripts/ensure-deps.sh): {e}",
                    initdb.display()
                )
            });
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let port = free_port();
        let log = dir.join("server.log");
        let args: Vec<String> = [
            "-D".to_string(),
            data.display().to_string(),
            "-p".into(),
            port.to_string(),
            "-k".into(),
            dir.display().to_string(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            "-c".into(),
            "fsync=off".into(),
            "-c".into(),
            "synchronous_commit=off".into(),
            "-c".into(),
            "full_page_writes=off".into(),
            "-c".into(),
            "max_connections=300".into(),
        ]
        .to_vec();
        let mut process = Watched::start(
            &versioned_binary("/usr/lib/postgresql", "postgres"),
            &args,
            user,
            &log,
            &dir,
            "INT",
        );
        let url = url_of(port, &password);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = process.exited() {
                return Err(format!(
                    "postgres on port {port} exited at start ({status}): {}",
                    log_tail(&log)
                ));
            }
            if block_on(connect(&url)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting until postgres answers on port {port}: {}",
                log_tail(&log)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(PostgresServer {
            port,
            password,
            _process: Mutex::new(process),
        })
    }

    /// A URL for database `postgres` as the test user, over plain TCP.
    pub fn url(&self) -> String {
        url_of(self.port, &self.password)
    }

    /// The same URL with another password.
    pub fn url_with_password(&self, password: &str) -> String {
        url_of(self.port, password)
    }
}

fn url_of(port: u16, password: &str) -> String {
    format!("postgres://{USER}:{password}@127.0.0.1:{port}/postgres?sslmode=disable")
}

/// Connects once, over plain TCP unless the URL asks for TLS (then it fails: the tests'
/// helpers read back over plain connections or `psql`).
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Where a scenario writes.
pub struct PostgresTarget {
    url: String,
    external: bool,
    suffix: String,
}

impl PostgresTarget {
    /// The throwaway server, then the external one if `STEVEDORE_POSTGRES_URL` is set
    /// (printing that the external part of `test` was skipped otherwise).
    pub fn all(test: &str) -> Vec<PostgresTarget> {
        let mut targets = vec![PostgresTarget::test_server()];
        match std::env::var(REAL_SERVER_ENV) {
            Ok(url) if !url.trim().is_empty() => targets.push(PostgresTarget {
                url,
                external: true,
                suffix: unique_suffix(),
            }),
            _ => println!(
                "{test}: {REAL_SERVER_ENV} is not set; skipped the external PostgreSQL part (ran against the throwaway server only)"
            ),
        }
        targets
    }

    /// The throwaway server alone, for what only it can be made to do.
    pub fn test_server() -> PostgresTarget {
        PostgresTarget {
            url: PostgresServer::shared().url(),
            external: false,
            suffix: unique_suffix(),
        }
    }

    /// `throwaway server` or `external server`, for assertion messages.
    pub fn label(&self) -> &'static str {
        if self.external {
            "external server"
        } else {
            "throwaway server"
        }
    }

    /// The URL the sink connects with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The throwaway server, when this target is it.
    pub fn server(&self) -> Option<&'static PostgresServer> {
        (!self.external).then(PostgresServer::shared)
    }

    /// A table name unique to this target and test (servers are shared).
    pub fn table(&self, base: &str) -> String {
        format!("{base}{}", self.suffix)
    }

    /// Runs statements, failing the test on an error.
    pub fn execute(&self, sql: &str) {
        block_on(async {
            let client = connect(&self.url).await.expect("connects");
            client
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        })
    }

    /// Drops `table` if it exists, then runs `create`.
    pub fn recreate(&self, table: &str, create: &str) {
        self.execute(&format!("DROP TABLE IF EXISTS {table}"));
        self.execute(create);
    }

    /// The rows of a query through `psql` (the server's own client, so that a bug shared by
    /// the sink and a Rust reader cannot hide): each row its columns' text, `|`-separated,
    /// NULL as the empty string.
    pub fn psql(&self, sql: &str) -> Vec<String> {
        let output = Command::new("psql")
            .arg(&self.url)
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql must be installed (package postgresql-client)");
        assert!(
            output.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The rows of a query, each column as JSON text (`to_jsonb`), parsed.
    pub fn rows(&self, sql: &str) -> Vec<Value> {
        block_on(async {
            let client = connect(&self.url).await.expect("connects");
            let wrapped = format!("SELECT to_jsonb(q)::text FROM ({sql}) AS q");
            client
                .query(&wrapped, &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
                .iter()
                .map(|row| serde_json::from_str(row.get::<_, &str>(0)).expect("JSON"))
                .collect()
        })
    }

    /// `SELECT COUNT(*)` of a table, through `psql`.
    pub fn count(&self, table: &str) -> i64 {
        self.psql(&format!("SELECT COUNT(*) FROM {table}"))[0]
            .parse()
            .expect("a count")
    }
}

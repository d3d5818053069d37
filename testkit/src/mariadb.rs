//! MariaDB for the `mysql` tests: a throwaway server from Debian's package
//! (`mariadb-install-db` + `mariadbd` on a free loopback port, password login over TCP, in a
//! temporary directory), started once per test binary; and a real server (MySQL 8 or
//! MariaDB) as well when `STEVEDORE_MYSQL_URL` names one. Every test runs its scenario
//! against each target it gets, in tables of its own, and says when it skipped the external
//! one. Read-backs go through the `mariadb` command-line client, the server's own.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::watchdog::{Watched, log_tail, server_user};
use crate::{PATIENCE, free_port, unique_suffix};

/// The external server's URL, if the environment names one.
const REAL_SERVER_ENV: &str = "STEVEDORE_MYSQL_URL";

/// The user and database the throwaway server's tests use.
const USER: &str = "stevedore";
const DATABASE: &str = "stevedore";

/// The throwaway server of this test binary.
pub struct MariaDbServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    password: String,
    socket: PathBuf,
    _process: Mutex<Watched>,
}

impl MariaDbServer {
    /// The server of this test binary, started on first use.
    pub fn shared() -> &'static MariaDbServer {
        static SERVER: OnceLock<MariaDbServer> = OnceLock::new();
        SERVER.get_or_init(MariaDbServer::start)
    }

    fn start() -> MariaDbServer {
        let mut tries = 0;
        loop {
            match MariaDbServer::try_start() {
                Ok(server) => return server,
                Err(why) => {
                    tries += 1;
                    assert!(tries < 4, "could not start a test MariaDB server: {why}");
                }
            }
        }
    }

    fn try_start() -> Result<MariaDbServer, String> {
        let dir: PathBuf = tempfile::Builder::new()
            .prefix("stevedore-mariadb-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let data = dir.join("data");
        let socket = dir.join("mariadb.sock");
        let user = server_user("mysql", &dir);
        let mut install = match user {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--", "mariadb-install-db"]);
                command
            }
            None => Command::new("mariadb-install-db"),
        };
        let output = install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--auth-root-authentication-method=socket", "--skip-test-db"])
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "mariadb-install-db must be installed (package mariadb-server, scripts/ensure-deps.sh): {e}"
                )
            });
        if !output.status.success() {
            return Err(format!(
                "mariadb-install-db failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let port = free_port();
        let log = dir.join("server.log");
        let args: Vec<String> = vec![
            "--no-defaults".into(),
            format!("--datadir={}", data.display()),
            format!("--socket={}", socket.display()),
            format!("--port={port}"),
            "--bind-address=127.0.0.1".into(),
            "--local-infile=1".into(),
            "--skip-log-bin".into(),
            "--innodb-flush-log-at-trx-commit=0".into(),
            "--innodb-buffer-pool-size=128M".into(),
            "--innodb-log-file-size=64M".into(),
            "--max-connections=300".into(),
            // A lock the tests provoke is reported in seconds, not the default 50.
            "--innodb-lock-wait-timeout=10".into(),
        ];
        let mut process = Watched::start(
            &PathBuf::from("/usr/sbin/mariadbd"),
            &args,
            user,
            &log,
            &dir,
            "TERM",
        );
        let password = format!("my-{}-{}", std::process::id(), free_port());
        let server = |process| MariaDbServer {
            port,
            password: password.clone(),
            socket: socket.clone(),
            _process: Mutex::new(process),
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = process.exited() {
                return Err(format!(
                    "mariadbd on port {port} exited at start ({status}): {}",
                    log_tail(&log)
                ));
            }
            let probe = Command::new("mariadb")
                .arg("--no-defaults")
                .arg(format!("--socket={}", socket.display()))
                .args(["-u", "root", "-e", "SELECT 1"])
                .output();
            if probe.is_ok_and(|output| output.status.success()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting until mariadbd answers on port {port}: {}",
                log_tail(&log)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let server = server(process);
        server.as_root(&format!(
            "CREATE USER '{USER}'@'%' IDENTIFIED BY '{password}'; \
             GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'%'; CREATE DATABASE {DATABASE};"
        ))?;
        Ok(server)
    }

    /// Runs statements as the server's root user over its socket (settings only a root may
    /// change, such as `local_infile`).
    pub fn as_root(&self, sql: &str) -> Result<(), String> {
        let output = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-u", "root", "-e", sql])
            .output()
            .map_err(|e| format!("mariadb: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{sql}: {}",
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// A URL for the test database as the test user, over plain TCP.
    pub fn url(&self) -> String {
        url_of(self.port, &self.password)
    }

    /// The same URL with another password.
    pub fn url_with_password(&self, password: &str) -> String {
        url_of(self.port, password)
    }
}

fn url_of(port: u16, password: &str) -> String {
    format!("mysql://{USER}:{password}@127.0.0.1:{port}/{DATABASE}?ssl-mode=DISABLED")
}

/// The parts of a `mysql://` URL the command-line client needs.
struct Login {
    host: String,
    port: u16,
    user: String,
    password: String,
    database: String,
}

impl Login {
    fn of(url: &str) -> Login {
        let parsed = url::Url::parse(url).unwrap_or_else(|e| panic!("a mysql:// URL: {e}"));
        let decode = |text: &str| {
            percent_encoding::percent_decode_str(text)
                .decode_utf8_lossy()
                .into_owned()
        };
        Login {
            host: parsed.host_str().unwrap_or("127.0.0.1").to_string(),
            port: parsed.port().unwrap_or(3306),
            user: decode(parsed.username()),
            password: decode(parsed.password().unwrap_or_default()),
            database: parsed.path().trim_start_matches('/').to_string(),
        }
    }

    /// `mariadb` logged in (the password through the environment, not the command line).
    fn client(&self) -> Command {
        let mut command = Command::new("mariadb");
        command
            .arg("--no-defaults")
            .args([
                "-h",
                &self.host,
                "-P",
                &self.port.to_string(),
                "-u",
                &self.user,
            ])
            .args(["--protocol=TCP", "--batch", "--skip-column-names", "--raw"])
            .arg(&self.database)
            .env("MYSQL_PWD", &self.password);
        command
    }
}

/// Where a scenario writes.
pub struct MysqlTarget {
    url: String,
    login: Login,
    external: bool,
    suffix: String,
}

impl MysqlTarget {
    /// The throwaway server, then the external one if `STEVEDORE_MYSQL_URL` is set (printing
    /// that the external part of `test` was skipped otherwise).
    pub fn all(test: &str) -> Vec<MysqlTarget> {
        let mut targets = vec![MysqlTarget::test_server()];
        match std::env::var(REAL_SERVER_ENV) {
            Ok(url) if !url.trim().is_empty() => targets.push(MysqlTarget {
                login: Login::of(&url),
                url,
                external: true,
                suffix: unique_suffix(),
            }),
            _ => println!(
                "{test}: {REAL_SERVER_ENV} is not set; skipped the external MySQL part (ran against the throwaway server only)"
            ),
        }
        targets
    }

    /// The throwaway server alone, for what only it can be made to do.
    pub fn test_server() -> MysqlTarget {
        let url = MariaDbServer::shared().url();
        MysqlTarget {
            login: Login::of(&url),
            url,
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
    pub fn server(&self) -> Option<&'static MariaDbServer> {
        (!self.external).then(MariaDbServer::shared)
    }

    /// A table name unique to this target and test (servers are shared).
    pub fn table(&self, base: &str) -> String {
        format!("{base}{}", self.suffix)
    }

    /// Runs statements, failing the test on an error.
    pub fn execute(&self, sql: &str) {
        self.query(sql);
    }

    /// Drops `table` if it exists, then runs `create`.
    pub fn recreate(&self, table: &str, create: &str) {
        self.execute(&format!("DROP TABLE IF EXISTS {table}; {create}"));
    }

    /// The rows of a query through `mariadb`: each row its columns' text, tab-separated,
    /// NULL as `NULL`.
    pub fn query(&self, sql: &str) -> Vec<String> {
        let output = self
            .login
            .client()
            .args(["-e", sql])
            .output()
            .expect("mariadb must be installed (package mariadb-client)");
        assert!(
            output.status.success(),
            "mariadb {sql}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `SELECT COUNT(*)` of a table.
    pub fn count(&self, table: &str) -> i64 {
        self.query(&format!("SELECT COUNT(*) FROM {table}"))[0]
            .parse()
            .expect("a count")
    }
}

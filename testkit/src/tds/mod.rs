//! A test-only TDS server: a protocol contract test double, **not SQL Server**.
//!
//! It speaks enough TDS 7.4 (PRELOGIN without encryption, LOGIN7, SQL batch, RPC
//! `sp_executesql`, BulkLoad, transaction tokens, ERROR tokens) for the real `tiberius` 0.13
//! client and for FreeTDS `tsql` / `freebcp`, and keeps its data in a SQLite file. It runs the
//! statement shapes listed in [`translate`], with SQL Server's error numbers and messages for
//! the failures the sink has to handle. Passing tests against it prove that the client code
//! speaks the protocol and handles these replies; they do not prove SQL Server semantics.
//!
//! One std thread listens; each connection gets its own thread and its own SQLite connection
//! (so transactions and `#temp` tables are per session, as in SQL Server).

pub mod session;
pub mod translate;
pub mod types;
pub mod wire;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Login and database the server accepts.
#[derive(Clone, Debug)]
pub struct TdsOptions {
    /// The only user that may log in.
    pub user: String,
    /// That user's password.
    pub password: String,
    /// The only database (an empty database in LOGIN7 means this one too).
    pub database: String,
}

impl Default for TdsOptions {
    fn default() -> TdsOptions {
        TdsOptions {
            user: "sa".into(),
            password: "Stevedore-test-1".into(),
            database: "stevedore".into(),
        }
    }
}

/// What the connection threads share.
pub struct Shared {
    /// Login and database.
    pub options: TdsOptions,
    /// Injected faults.
    pub faults: Arc<Faults>,
    /// The SQLite file.
    pub sqlite_path: PathBuf,
    /// Write transactions queue here.
    pub writer: WriterGate,
}

/// One write transaction at a time, waiters woken as soon as it ends, like SQL Server's lock
/// queue. (SQLite's own busy timeout sleeps up to 100 ms between tries, which would make
/// concurrent writers look far slower than they are against a real server.)
#[derive(Default)]
pub struct WriterGate {
    taken: std::sync::Mutex<bool>,
    released: std::sync::Condvar,
}

impl WriterGate {
    /// Waits until no other session writes, then takes the gate.
    pub fn enter(&self) {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        while *taken {
            taken = self.released.wait(taken).unwrap_or_else(|p| p.into_inner());
        }
        *taken = true;
    }

    /// Lets the next waiting session in.
    pub fn leave(&self) {
        *self.taken.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.released.notify_one();
    }
}

/// A running server; it stops listening when dropped (open connections end with their client).
pub struct TdsServer {
    port: u16,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TdsServer {
    /// Starts a server with the default options.
    pub fn start() -> TdsServer {
        Self::start_with(TdsOptions::default())
    }

    /// Starts a server on 127.0.0.1 and a free port.
    pub fn start_with(options: TdsOptions) -> TdsServer {
        let dir = tempfile::tempdir().expect("temp dir for the TDS server");
        let sqlite_path = dir.path().join("stevedore.sqlite");
        let shared = Arc::new(Shared {
            options,
            faults: Arc::new(Faults::default()),
            sqlite_path,
            writer: WriterGate::default(),
        });
        // Create the file and switch it to WAL once, before any client arrives.
        session::open_db(&shared).expect("create the SQLite file");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the TDS server");
        let port = listener.local_addr().expect("local address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        let shared = shared.clone();
                        std::thread::spawn(move || session::serve(stream, shared));
                    }
                }
            })
        };
        TdsServer {
            port,
            shared,
            stop,
            acceptor: Some(acceptor),
            _dir: dir,
        }
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// An ADO.NET connection string for tiberius, with the configured password.
    pub fn connection_string(&self) -> String {
        self.connection_string_with_password(&self.shared.options.password)
    }

    /// An ADO.NET connection string with another password (to test failed logins).
    pub fn connection_string_with_password(&self, password: &str) -> String {
        let o = &self.shared.options;
        format!(
            "server=tcp:127.0.0.1,{};database={};user id={};password={password};encrypt=DANGER_PLAINTEXT",
            self.port, o.database, o.user
        )
    }

    /// The SQLite file behind the server.
    pub fn sqlite_path(&self) -> &Path {
        &self.shared.sqlite_path
    }

    /// The faults to inject.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }
}

impl Drop for TdsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// A failure `fail_next` injects.
struct InjectedFailure {
    contains: String,
    number: u32,
    message: String,
    remaining: u32,
}

/// Faults to inject, shared with every connection thread.
#[derive(Default)]
pub struct Faults {
    drop_bulk: AtomicU32,
    delay: Mutex<Duration>,
    failures: Mutex<Vec<InjectedFailure>>,
    bulk_loads: AtomicU32,
}

impl Faults {
    /// The next `times` bulk loads: read the first BulkLoad packet, then close the socket
    /// without replying (the session's open transaction is rolled back).
    pub fn drop_during_bulk_load(&self, times: u32) {
        self.drop_bulk.store(times, Ordering::SeqCst);
    }

    /// Every reply waits this long first (`Duration::ZERO` turns it off).
    pub fn delay_replies(&self, delay: Duration) {
        *self.delay.lock().expect("delay lock") = delay;
    }

    /// The next `times` statements (batch statement, RPC statement text, or `INSERT BULK`)
    /// containing `statement_contains` (ignoring ASCII case) get an ERROR token with `number` instead of running.
    pub fn fail_next(&self, statement_contains: &str, number: u32, message: &str, times: u32) {
        self.failures
            .lock()
            .expect("failures lock")
            .push(InjectedFailure {
                contains: statement_contains.to_string(),
                number,
                message: message.to_string(),
                remaining: times,
            });
    }

    /// How many bulk loads completed.
    pub fn bulk_loads(&self) -> u32 {
        self.bulk_loads.load(Ordering::SeqCst)
    }

    /// Consumes one "drop during bulk load", if any is left.
    fn take_bulk_drop(&self) -> bool {
        self.drop_bulk
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn delay(&self) -> Duration {
        *self.delay.lock().expect("delay lock")
    }

    /// Consumes one injected failure matching this statement, if any.
    fn take_failure(&self, statement: &str) -> Option<(u32, String)> {
        let mut failures = self.failures.lock().expect("failures lock");
        let failure = failures
            .iter_mut()
            .find(|f| f.remaining > 0 && contains_ignore_case(statement, &f.contains))?;
        failure.remaining -= 1;
        Some((failure.number, failure.message.clone()))
    }

    fn count_bulk_load(&self) {
        self.bulk_loads.fetch_add(1, Ordering::SeqCst);
    }
}

fn contains_ignore_case(text: &str, needle: &str) -> bool {
    text.to_ascii_lowercase()
        .contains(&needle.to_ascii_lowercase())
}

/// A tiberius client connected to `conn_str` over plain TCP.
pub async fn connect(
    conn_str: &str,
) -> tiberius::Result<tiberius::Client<tokio_util::compat::Compat<tokio::net::TcpStream>>> {
    use tokio_util::compat::TokioAsyncWriteCompatExt;
    let config = tiberius::Config::from_ado_string(conn_str)?;
    let tcp = tokio::net::TcpStream::connect(config.get_addr()).await?;
    tcp.set_nodelay(true)?;
    tiberius::Client::connect(config, tcp.compat_write()).await
}

//! Reaching SQL Server: the connection string, and each consumer process's own pool of
//! tiberius connections (a small deadpool [`Manager`]: the published adapters need
//! tiberius 0.12).
//!
//! Encryption follows the connection string and defaults to required with certificate
//! validation; `encrypt=false` (login only), `trustservercertificate=true` and
//! `encrypt=DANGER_PLAINTEXT` (no TLS at all) are the user's explicit choices. The password
//! never reaches a log line or an error message.

use std::time::Duration;

use deadpool::managed::{self, Metrics, Pool, RecycleError, RecycleResult};
use tiberius::{Client, Config};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use crate::settings::Secret;

/// A connected tiberius client over plain tokio TCP (TLS inside, when negotiated).
pub(super) type Connection = Client<Compat<TcpStream>>;

/// The pool type of the sink.
pub(super) type ConnectionPool = Pool<TdsManager>;

/// How long recycling a pooled connection (its `SELECT 1` check) may take.
const RECYCLE_TIMEOUT: Duration = Duration::from_secs(5);

/// A parsed connection string, and a description of it that is safe to print.
#[derive(Clone)]
pub struct ConnectionSettings {
    config: Config,
    /// `host:port/database as user`, never the password.
    pub description: String,
    /// The password, to be hidden in every message.
    password: Secret,
}

impl std::fmt::Debug for ConnectionSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionSettings")
            .field("description", &self.description)
            .finish()
    }
}

/// Why a connection string cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("not a usable ADO.NET connection string: {0}")]
pub struct ConnectionStringError(String);

impl ConnectionSettings {
    /// Parses an ADO.NET connection string
    /// (`server=tcp:host,1433;database=..;user id=..;password=..;encrypt=true`).
    pub fn parse(connection: &Secret) -> Result<ConnectionSettings, ConnectionStringError> {
        let text = connection.expose();
        let config = Config::from_ado_string(text)
            .map_err(|error| ConnectionStringError(redact(&error.to_string(), text)))?;
        let user = ado_value(text, &["user id", "uid", "user", "username"]);
        let database = ado_value(text, &["database", "initial catalog"]);
        let description = format!(
            "{}/{} as {}",
            config.get_addr(),
            database.as_deref().unwrap_or("(default database)"),
            user.as_deref().unwrap_or("(integrated)")
        );
        Ok(ConnectionSettings {
            config,
            description,
            password: password_of(text),
        })
    }

    /// The password, to hide in messages.
    pub fn password(&self) -> &Secret {
        &self.password
    }

    /// Connects once: TCP, pre-login, TLS as configured, login. Follows an Azure SQL
    /// gateway's redirect to the database's own node.
    pub async fn connect(&self) -> tiberius::Result<Connection> {
        let mut config = self.config.clone();
        for _ in 0..3 {
            let tcp = TcpStream::connect(config.get_addr()).await?;
            tcp.set_nodelay(true)?;
            match Client::connect(config.clone(), tcp.compat_write()).await {
                Err(tiberius::error::Error::Routing { host, port }) => {
                    config.host(&host);
                    config.port(port);
                }
                result => return result,
            }
        }
        Err(tiberius::error::Error::Protocol(
            "the server redirected the connection more than 3 times".into(),
        ))
    }
}

/// Builds the pool of one consumer process: at most `size` connections, waits for a free one
/// at most `wait`, gives up connecting after `connect`.
pub(super) fn pool(
    settings: ConnectionSettings,
    size: usize,
    wait: Duration,
    connect: Duration,
) -> ConnectionPool {
    Pool::builder(TdsManager { settings })
        .max_size(size)
        .wait_timeout(Some(wait))
        .create_timeout(Some(connect))
        .recycle_timeout(Some(RECYCLE_TIMEOUT))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .expect("a runtime and a size are set")
}

/// Creates and checks pooled connections.
pub(super) struct TdsManager {
    settings: ConnectionSettings,
}

impl managed::Manager for TdsManager {
    type Type = Connection;
    type Error = tiberius::error::Error;

    async fn create(&self) -> Result<Connection, tiberius::error::Error> {
        self.settings.connect().await
    }

    /// A connection goes back into use only if it still answers.
    async fn recycle(
        &self,
        connection: &mut Connection,
        _: &Metrics,
    ) -> RecycleResult<tiberius::error::Error> {
        connection
            .simple_query("SELECT 1")
            .await
            .map_err(RecycleError::Backend)?
            .into_results()
            .await
            .map_err(RecycleError::Backend)?;
        Ok(())
    }
}

/// The value of the first of `keys` in an ADO.NET string (keys are case-insensitive).
fn ado_value(text: &str, keys: &[&str]) -> Option<String> {
    text.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        keys.contains(&key.as_str())
            .then(|| value.trim().trim_matches(['\'', '"']).to_string())
    })
}

/// `message` with the connection string's password replaced by `***`.
pub(super) fn redact(message: &str, connection: &str) -> String {
    password_of(connection).hide_in(message)
}

/// The password of an ADO.NET string (empty when it has none).
fn password_of(connection: &str) -> Secret {
    Secret::new(ado_value(connection, &["password", "pwd"]).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mssql_connection_description_hides_the_password() {
        let settings = ConnectionSettings::parse(&Secret::new(
            "server=tcp:db.example.com,1433;database=shop;user id=loader;password=S3cret!;encrypt=true",
        ))
        .expect("parses");
        assert_eq!(settings.description, "db.example.com:1433/shop as loader");
        assert!(!settings.description.contains("S3cret"));
    }

    #[test]
    fn mssql_connection_redacts_password_in_messages() {
        let text = "server=tcp:h,1;user id=u;Password='p@ss';";
        assert_eq!(
            redact("login with p@ss failed", text),
            "login with *** failed"
        );
    }
}

//! Reaching PostgreSQL: the connection URL, TLS, and each consumer process's own pool of
//! connections (`deadpool-postgres`).
//!
//! TLS is required unless the URL says otherwise, and the server's certificate is always
//! checked against the platform's roots (`sslmode=require`, `verify-ca` and `verify-full`
//! all mean that here: stricter than libpq's `require`, which checks nothing).
//! `sslmode=disable` (no TLS: a local server) and `sslmode=prefer` are the user's explicit
//! choices. The password never reaches a log line or an error message.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::config::SslMode;

use crate::settings::Secret;

/// The pool type of the sink.
pub(super) type ConnectionPool = Pool;

/// How long recycling a pooled connection may take.
const RECYCLE_TIMEOUT: Duration = Duration::from_secs(5);

/// A parsed connection URL, and a description of it that is safe to print.
#[derive(Clone)]
pub struct ConnectionSettings {
    config: tokio_postgres::Config,
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

/// Why a connection URL cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("not a usable PostgreSQL URL (postgres://user:password@host:port/database): {0}")]
pub struct ConnectionUrlError(String);

impl ConnectionSettings {
    /// Parses `postgres://user:password@host:port/database?sslmode=...`.
    pub fn parse(connection: &Secret) -> Result<ConnectionSettings, ConnectionUrlError> {
        let text = connection.expose();
        let mut url = url::Url::parse(text)
            .map_err(|error| ConnectionUrlError(redact(&error.to_string(), text)))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(ConnectionUrlError(format!(
                "the scheme is `{}`, not postgres",
                url.scheme()
            )));
        }
        let password = Secret::new(
            percent_encoding::percent_decode_str(url.password().unwrap_or_default())
                .decode_utf8_lossy()
                .into_owned(),
        );
        let mut ssl_mode = SslMode::Require;
        let mut kept = Vec::new();
        for (key, value) in url.query_pairs() {
            if key == "sslmode" {
                ssl_mode = match value.as_ref() {
                    "disable" => SslMode::Disable,
                    "prefer" => SslMode::Prefer,
                    "require" | "verify-ca" | "verify-full" => SslMode::Require,
                    other => {
                        return Err(ConnectionUrlError(format!(
                            "sslmode `{other}` is not one of disable, prefer, require, \
                             verify-ca, verify-full"
                        )));
                    }
                };
            } else {
                kept.push((key.into_owned(), value.into_owned()));
            }
        }
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
        let mut config: tokio_postgres::Config =
            url.as_str()
                .parse()
                .map_err(|error: tokio_postgres::Error| {
                    ConnectionUrlError(password.hide_in(&error.to_string()))
                })?;
        config.ssl_mode(ssl_mode);
        let host = url.host_str().unwrap_or("localhost");
        let port = url.port().unwrap_or(5432);
        let database = url.path().trim_start_matches('/');
        let user = percent_encoding::percent_decode_str(url.username()).decode_utf8_lossy();
        let description = format!(
            "{host}:{port}/{} as {}",
            if database.is_empty() {
                "(the user's database)"
            } else {
                database
            },
            if user.is_empty() { "(no user)" } else { &user }
        );
        Ok(ConnectionSettings {
            config,
            description,
            password,
        })
    }

    /// The password, to hide in messages.
    pub fn password(&self) -> &Secret {
        &self.password
    }

    /// Whether connections are plain TCP (`sslmode=disable`).
    fn plain(&self) -> bool {
        self.config.get_ssl_mode() == SslMode::Disable
    }
}

/// Builds the pool of one consumer process: at most `size` connections, waits for a free one
/// at most `wait`, gives up connecting after `connect`.
pub(super) fn pool(
    settings: &ConnectionSettings,
    size: usize,
    wait: Duration,
    connect: Duration,
) -> Result<ConnectionPool, String> {
    let mut config = settings.config.clone();
    config.connect_timeout(connect);
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = if settings.plain() {
        Manager::from_config(config, tokio_postgres::NoTls, manager_config)
    } else {
        Manager::from_config(config, tls()?, manager_config)
    };
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(wait))
        .create_timeout(Some(connect))
        .recycle_timeout(Some(RECYCLE_TIMEOUT))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|error| format!("cannot build the connection pool: {error}"))
}

/// TLS with the platform's certificate verifier, on the crypto provider the rest of the tree
/// uses.
fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_platform_verifier())
        .map_err(|error| format!("cannot set up TLS: {error}"))?
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// `message` with the URL's password replaced by `***`.
fn redact(message: &str, connection: &str) -> String {
    let password = url::Url::parse(connection)
        .ok()
        .and_then(|url| url.password().map(str::to_string))
        .unwrap_or_default();
    Secret::new(password).hide_in(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_connection_description_hides_the_password() {
        let settings = ConnectionSettings::parse(&Secret::new(
            "postgres://loader:S3cret%21@db.example.com:6432/shop?application_name=sync",
        ))
        .expect("parses");
        assert_eq!(settings.description, "db.example.com:6432/shop as loader");
        assert_eq!(settings.password().expose(), "S3cret!");
        assert_eq!(settings.config.get_ssl_mode(), SslMode::Require);
        assert_eq!(settings.config.get_application_name(), Some("sync"));
        assert!(!format!("{settings:?}").contains("S3cret"));
    }

    #[test]
    fn postgres_connection_tls_is_required_unless_disabled_by_name() {
        let mode = |url: &str| {
            ConnectionSettings::parse(&Secret::new(url))
                .map(|s| s.config.get_ssl_mode())
                .map_err(|e| e.to_string())
        };
        assert_eq!(mode("postgres://u:p@h/db"), Ok(SslMode::Require));
        assert_eq!(
            mode("postgres://u:p@h/db?sslmode=verify-full"),
            Ok(SslMode::Require)
        );
        assert_eq!(
            mode("postgresql://u:p@h/db?sslmode=disable"),
            Ok(SslMode::Disable)
        );
        let wrong = mode("postgres://u:hunter2@h/db?sslmode=sometimes").unwrap_err();
        assert!(wrong.contains("sslmode `sometimes`"), "{wrong}");
        let scheme = mode("mysql://u:hunter2@h/db").unwrap_err();
        assert!(scheme.contains("not postgres"), "{scheme}");
        assert!(!scheme.contains("hunter2"));
    }
}

//! Reaching MySQL or MariaDB: the connection URL, TLS, and each consumer process's own pool
//! of connections (`mysql_async`'s pool, its connections set up for the sink).
//!
//! TLS is required unless the URL says `ssl-mode=DISABLED` (a local server); `REQUIRED`,
//! `VERIFY_CA` and `VERIFY_IDENTITY` all verify the server's certificate and name (stricter
//! than the MySQL client's `REQUIRED`, which checks nothing), against the bundled web roots
//! and the CA file `ssl-ca` names, if any. The password never reaches a log line or an
//! error message.

use std::path::PathBuf;
use std::time::Duration;

use mysql_async::{OptsBuilder, Pool, PoolConstraints, PoolOpts, SslOpts};

use super::sql::SESSION_SETUP;
use crate::settings::Secret;

/// How long an idle pooled connection is kept.
const IDLE: Duration = Duration::from_secs(60);

/// A parsed connection URL, and a description of it that is safe to print.
#[derive(Clone)]
pub struct ConnectionSettings {
    options: OptsBuilder,
    /// The URL's database, where a table named without one is.
    pub database: String,
    /// `host:port/database as user`, never the password.
    pub description: String,
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
#[error("not a usable MySQL URL (mysql://user:password@host:port/database): {0}")]
pub struct ConnectionUrlError(String);

impl ConnectionSettings {
    /// Parses `mysql://user:password@host:port/database?ssl-mode=...&ssl-ca=...`.
    pub fn parse(connection: &Secret) -> Result<ConnectionSettings, ConnectionUrlError> {
        let text = connection.expose();
        let url = url::Url::parse(text).map_err(|error| {
            let password = url_password(text);
            ConnectionUrlError(password.hide_in(&error.to_string()))
        })?;
        if !matches!(url.scheme(), "mysql" | "mariadb") {
            return Err(ConnectionUrlError(format!(
                "the scheme is `{}`, not mysql",
                url.scheme()
            )));
        }
        let decode = |part: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8_lossy()
                .into_owned()
        };
        let password = Secret::new(decode(url.password().unwrap_or_default()));
        let user = decode(url.username());
        let host = url.host_str().unwrap_or("localhost").to_string();
        let port = url.port().unwrap_or(3306);
        let database = decode(url.path().trim_start_matches('/'));
        let mut tls = Some(SslOpts::default());
        let mut ca: Option<PathBuf> = None;
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "ssl-mode" | "sslmode" | "ssl_mode" => {
                    tls = match value.to_ascii_uppercase().as_str() {
                        "DISABLED" => None,
                        "REQUIRED" | "VERIFY_CA" | "VERIFY_IDENTITY" => Some(SslOpts::default()),
                        other => {
                            return Err(ConnectionUrlError(format!(
                                "ssl-mode `{other}` is not one of DISABLED, REQUIRED, VERIFY_CA, \
                                 VERIFY_IDENTITY (PREFERRED is not offered: say which you mean)"
                            )));
                        }
                    }
                }
                "ssl-ca" | "ssl_ca" => ca = Some(PathBuf::from(value.as_ref())),
                other => {
                    return Err(ConnectionUrlError(format!(
                        "unknown parameter `{other}` (known: ssl-mode, ssl-ca)"
                    )));
                }
            }
        }
        if let (Some(tls_options), Some(ca)) = (tls.take(), ca) {
            tls = Some(tls_options.with_root_certs(vec![ca.into()]));
        }
        let options = OptsBuilder::default()
            .ip_or_hostname(host.clone())
            .tcp_port(port)
            .user((!user.is_empty()).then(|| user.clone()))
            .pass((!password.expose().is_empty()).then(|| password.expose().to_string()))
            .db_name((!database.is_empty()).then(|| database.clone()))
            .ssl_opts(tls)
            .prefer_socket(false)
            .init(SESSION_SETUP.to_vec());
        let description = format!(
            "{host}:{port}/{} as {}",
            if database.is_empty() {
                "(no database)"
            } else {
                &database
            },
            if user.is_empty() { "(no user)" } else { &user }
        );
        Ok(ConnectionSettings {
            options,
            database,
            description,
            password,
        })
    }

    /// The password, to hide in messages.
    pub fn password(&self) -> &Secret {
        &self.password
    }
}

/// Builds the pool of one consumer process: at most `size` connections. Connections are
/// not reset when they come back (the sink leaves none in a transaction: it rolls back, or
/// drops a connection it cannot roll back), so each keeps its staging table.
pub(super) fn pool(settings: &ConnectionSettings, size: usize) -> Pool {
    let constraints = PoolConstraints::new(0, size.max(1)).expect("0 <= size and size > 0");
    let pool_options = PoolOpts::default()
        .with_constraints(constraints)
        .with_reset_connection(false)
        .with_inactive_connection_ttl(IDLE);
    Pool::new(settings.options.clone().pool_opts(pool_options))
}

fn url_password(text: &str) -> Secret {
    Secret::new(
        url::Url::parse(text)
            .ok()
            .and_then(|url| url.password().map(str::to_string))
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mysql_connection_description_hides_the_password() {
        let settings = ConnectionSettings::parse(&Secret::new(
            "mysql://sync:S3cret%21@db.example.com:3307/org",
        ))
        .expect("parses");
        assert_eq!(settings.description, "db.example.com:3307/org as sync");
        assert_eq!(settings.password().expose(), "S3cret!");
        assert_eq!(settings.database, "org");
        assert!(!format!("{settings:?}").contains("S3cret"));
    }

    #[test]
    fn mysql_connection_tls_is_required_unless_disabled_by_name() {
        let parse =
            |url: &str| ConnectionSettings::parse(&Secret::new(url)).map_err(|e| e.to_string());
        assert!(parse("mysql://u:p@h/db").is_ok());
        assert!(parse("mysql://u:p@h/db?ssl-mode=DISABLED").is_ok());
        let wrong = parse("mysql://u:hunter2@h/db?ssl-mode=PREFERRED").unwrap_err();
        assert!(wrong.contains("PREFERRED is not offered"), "{wrong}");
        let unknown = parse("mysql://u:hunter2@h/db?sslmode=x&pool_max=3").unwrap_err();
        assert!(unknown.contains("ssl-mode `X`"), "{unknown}");
        let scheme = parse("postgres://u:hunter2@h/db").unwrap_err();
        assert!(
            scheme.contains("not mysql") && !scheme.contains("hunter2"),
            "{scheme}"
        );
    }
}

//! Alerts by mail: one message per event to every recipient, over SMTP with lettre (rustls,
//! the platform's certificate verifier). A new connection per message: alerts are rare.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::config::{EmailConfig, SmtpSecurity};
use super::message::Message;
use super::{SendError, Verdict};

/// How long one SMTP command may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(20);

/// Sends alert mails through one relay.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    config: EmailConfig,
}

impl Mailer {
    /// A mailer for `config`, greeting the relay as `host`.
    pub fn new(config: &EmailConfig, host: &str) -> Result<Mailer, SendError> {
        let relay = &config.smtp;
        let tls = || {
            TlsParameters::new(relay.host.clone()).map_err(|error| SendError {
                channel: "email",
                verdict: Verdict::GiveUp,
                message: format!("TLS for {}: {error}", relay.shown),
            })
        };
        let tls = match relay.security {
            SmtpSecurity::Implicit => Tls::Wrapper(tls()?),
            SmtpSecurity::StartTls => Tls::Required(tls()?),
            SmtpSecurity::Opportunistic => Tls::Opportunistic(tls()?),
            SmtpSecurity::None => Tls::None,
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&relay.host)
            .port(relay.port)
            .tls(tls)
            .hello_name(ClientId::Domain(host.to_string()))
            .timeout(Some(SMTP_TIMEOUT));
        if let Some((user, password)) = &relay.login {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose().to_string(),
            ));
        }
        Ok(Mailer {
            transport: builder.build(),
            config: config.clone(),
        })
    }

    /// Sends `message` to every recipient in one mail.
    pub async fn send(&self, message: &Message) -> Result<(), SendError> {
        let mut mail = lettre::Message::builder()
            .from(self.config.from.clone())
            .subject(&message.subject)
            .header(ContentType::TEXT_PLAIN);
        for to in &self.config.to {
            mail = mail.to(to.clone());
        }
        let mail = mail.body(message.text.clone()).map_err(|error| SendError {
            channel: "email",
            verdict: Verdict::GiveUp,
            message: format!("cannot build the mail: {error}"),
        })?;
        match self.transport.send(mail).await {
            Ok(_) => Ok(()),
            Err(error) => Err(SendError {
                channel: "email",
                // A relay's 5xx (a refused sender, recipient or login) stays so; the rest
                // (connection, timeout, 4xx) may pass.
                verdict: if error.is_permanent() {
                    Verdict::GiveUp
                } else {
                    Verdict::Retry
                },
                message: format!("via {}: {error}", self.config.smtp.shown),
            }),
        }
    }
}

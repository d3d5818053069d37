//! `[alerts]` of the supervise file: when a failing schedule alerts, and where to (mail over
//! SMTP, a signed webhook). Read like the rest of the file: every problem at its field path,
//! and no secret in any message (a bad SMTP URL is shown without its password).

use std::time::Duration;

use lettre::message::Mailbox;
use serde::Deserialize;

use crate::settings::{Problems, SECOND, Secret, join, parse_duration, read_value};

/// `[alerts]`, checked.
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    /// Failed passes in a row before a schedule alerts (a pass that exits 2 alerts at once).
    pub after_failures: u32,
    /// How often a schedule that stays broken is reminded of.
    pub repeat_every: Duration,
    /// `[alerts.email]`, if given.
    pub email: Option<EmailConfig>,
    /// `[alerts.webhook]`, if given.
    pub webhook: Option<WebhookConfig>,
}

/// `[alerts.email]`: the relay, the sender and the recipients.
#[derive(Debug, Clone)]
pub struct EmailConfig {
    /// The relay, parsed from `smtp`.
    pub smtp: SmtpRelay,
    /// The sender.
    pub from: Mailbox,
    /// The recipients (at least one).
    pub to: Vec<Mailbox>,
}

/// An SMTP relay from a URL: `smtp://` (STARTTLS required, port 587), `smtps://` (implicit TLS,
/// port 465); `?tls=opportunistic` (STARTTLS when offered, else plain) and `?tls=none` (plain)
/// are for relays on a trusted network and tests.
#[derive(Debug, Clone)]
pub struct SmtpRelay {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// How the connection is encrypted.
    pub security: SmtpSecurity,
    /// User name and password, when the URL has them (percent-decoded).
    pub login: Option<(String, Secret)>,
    /// The URL without its password, for messages.
    pub shown: String,
}

/// How the connection to the relay is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// TLS from the first byte (`smtps://`).
    Implicit,
    /// STARTTLS, and no mail if the relay does not offer it (`smtp://`).
    StartTls,
    /// STARTTLS when offered, else plain (`smtp://...?tls=opportunistic`).
    Opportunistic,
    /// Plain text (`smtp://...?tls=none`).
    None,
}

/// `[alerts.webhook]`: where alerts are POSTed, and the key that signs them.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The receiver (http or https).
    pub url: reqwest::Url,
    /// The HMAC-SHA256 key of `X-Stevedore-Signature`.
    pub secret: Secret,
}

#[derive(Deserialize)]
struct RawAlerts {
    #[serde(default = "three")]
    after_failures: u32,
    repeat_every: Option<String>,
    email: Option<RawEmail>,
    webhook: Option<RawWebhook>,
}

#[derive(Deserialize)]
struct RawEmail {
    smtp: String,
    from: String,
    to: Vec<String>,
}

#[derive(Deserialize)]
struct RawWebhook {
    url: String,
    secret: String,
}

fn three() -> u32 {
    3
}

/// Reads `[alerts]` (the value at `alerts`), recording every problem.
pub fn read_alerts(value: toml::Value, problems: &mut Problems) -> Option<AlertsConfig> {
    let path = "alerts";
    let raw: RawAlerts = read_value(value, path, problems)?;
    if raw.after_failures == 0 {
        problems.push(join(path, "after_failures"), "must be at least 1");
    }
    let repeat_every = parse_duration(
        raw.repeat_every.as_deref(),
        "6h",
        &join(path, "repeat_every"),
        problems,
    );
    if repeat_every < SECOND {
        problems.push(join(path, "repeat_every"), "must be at least 1s");
    }
    if raw.email.is_none() && raw.webhook.is_none() {
        problems.push(
            path,
            "says where to send nothing: add [alerts.email] or [alerts.webhook]",
        );
    }
    let email = raw.email.map(|email| read_email(email, problems));
    let webhook = raw.webhook.map(|webhook| read_webhook(webhook, problems));
    Some(AlertsConfig {
        after_failures: raw.after_failures,
        repeat_every,
        email: email.flatten(),
        webhook: webhook.flatten(),
    })
}

fn read_email(raw: RawEmail, problems: &mut Problems) -> Option<EmailConfig> {
    let smtp = match parse_smtp_url(&raw.smtp) {
        Ok(relay) => Some(relay),
        Err(why) => {
            problems.push("alerts.email.smtp", why);
            None
        }
    };
    let mailbox = |text: &str, at: &str, problems: &mut Problems| match text.parse::<Mailbox>() {
        Ok(mailbox) => Some(mailbox),
        Err(error) => {
            problems.push(at, format!("`{text}` is not a mail address ({error})"));
            None
        }
    };
    let from = mailbox(&raw.from, "alerts.email.from", problems);
    if raw.to.is_empty() {
        problems.push("alerts.email.to", "names no recipient");
    }
    let to: Vec<Option<Mailbox>> = raw
        .to
        .iter()
        .enumerate()
        .map(|(index, to)| mailbox(to, &format!("alerts.email.to[{index}]"), problems))
        .collect();
    Some(EmailConfig {
        smtp: smtp?,
        from: from?,
        to: to.into_iter().collect::<Option<Vec<_>>>()?,
    })
}

fn read_webhook(raw: RawWebhook, problems: &mut Problems) -> Option<WebhookConfig> {
    let url = match reqwest::Url::parse(&raw.url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Some(url),
        Ok(_) => {
            problems.push("alerts.webhook.url", "must be an http:// or https:// URL");
            None
        }
        Err(error) => {
            problems.push("alerts.webhook.url", format!("not a URL ({error})"));
            None
        }
    };
    if raw.secret.is_empty() {
        problems.push(
            "alerts.webhook.secret",
            "is empty: receivers check each alert's signature with it",
        );
    }
    Some(WebhookConfig {
        url: url?,
        secret: Secret::new(raw.secret),
    })
}

/// Parses an SMTP relay URL; the error never shows the password.
pub fn parse_smtp_url(text: &str) -> Result<SmtpRelay, String> {
    let url = url::Url::parse(text).map_err(|error| {
        format!(
            "`{}` is not a URL ({error}); percent-encode `/`, `?`, `#` and `%` in the password",
            without_password(text)
        )
    })?;
    let mut shown = url.clone();
    if url.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    let shown = shown.to_string();
    let tls = url
        .query_pairs()
        .find(|(key, _)| key == "tls")
        .map(|(_, value)| value.into_owned());
    let security = match (url.scheme(), tls.as_deref()) {
        ("smtps", None) => SmtpSecurity::Implicit,
        ("smtp", None | Some("required")) => SmtpSecurity::StartTls,
        ("smtp", Some("opportunistic")) => SmtpSecurity::Opportunistic,
        ("smtp", Some("none")) => SmtpSecurity::None,
        ("smtp" | "smtps", Some(other)) => {
            return Err(format!(
                "`{shown}`: unknown `tls={other}` (smtp:// takes tls=required, the default, \
                 tls=opportunistic or tls=none; smtps:// is always TLS)"
            ));
        }
        (scheme, _) => {
            return Err(format!(
                "`{shown}`: unknown scheme `{scheme}` (smtp:// for STARTTLS, smtps:// for TLS)"
            ));
        }
    };
    let host = url
        .host_str()
        .filter(|host| !host.is_empty())
        .ok_or_else(|| format!("`{shown}` names no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url.port().unwrap_or(match security {
        SmtpSecurity::Implicit => 465,
        _ => 587,
    });
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .map(|text| text.into_owned())
            .map_err(|_| format!("`{shown}`: the user or password is not UTF-8 once decoded"))
    };
    let login = match url.password() {
        Some(password) => Some((decode(url.username())?, Secret::new(decode(password)?))),
        None if !url.username().is_empty() => {
            return Err(format!("`{shown}` has a user but no password"));
        }
        None => None,
    };
    Ok(SmtpRelay {
        host,
        port,
        security,
        login,
        shown,
    })
}

/// `text` with whatever stands between `://user:` and `@` replaced by `***`, for a URL that
/// does not parse.
fn without_password(text: &str) -> String {
    let Some(start) = text.find("://").map(|at| at + 3) else {
        return text.to_string();
    };
    let Some(end) = text.rfind('@').filter(|end| *end > start) else {
        return text.to_string();
    };
    match text[start..end].find(':') {
        Some(colon) => format!("{}***{}", &text[..start + colon + 1], &text[end..]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<AlertsConfig, String> {
        let value: toml::Table = toml::from_str(text).unwrap();
        let mut problems = Problems::default();
        let config = read_alerts(value["alerts"].clone(), &mut problems);
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(problems.to_string()),
        }
    }

    #[test]
    fn alerts_config_reads_email_and_webhook() {
        let config = read(
            r#"
            [alerts]
            after_failures = 2
            repeat_every = "30m"
            [alerts.email]
            smtp = "smtp://user:p%40ss@mail.example.com"
            from = "Stevedore <stevedore@example.com>"
            to = ["oncall@example.com", "ops@example.com"]
            [alerts.webhook]
            url = "https://hooks.example.com/stevedore"
            secret = "k"
            "#,
        )
        .unwrap();
        assert_eq!(config.after_failures, 2);
        assert_eq!(config.repeat_every, Duration::from_secs(1800));
        let email = config.email.unwrap();
        assert_eq!(email.smtp.security, SmtpSecurity::StartTls);
        assert_eq!(
            (email.smtp.host.as_str(), email.smtp.port),
            ("mail.example.com", 587)
        );
        let (user, password) = email.smtp.login.unwrap();
        assert_eq!((user.as_str(), password.expose()), ("user", "p@ss"));
        assert_eq!(email.smtp.shown, "smtp://user:***@mail.example.com");
        assert_eq!(email.to.len(), 2);
        assert_eq!(config.webhook.unwrap().secret.expose(), "k");
    }

    #[test]
    fn alerts_config_smtp_url_schemes_and_tls_modes() {
        let relay = |url: &str| parse_smtp_url(url).map(|r| (r.security, r.port));
        assert_eq!(relay("smtps://h"), Ok((SmtpSecurity::Implicit, 465)));
        assert_eq!(
            relay("smtp://h:25?tls=required"),
            Ok((SmtpSecurity::StartTls, 25))
        );
        assert_eq!(
            relay("smtp://h:2525?tls=opportunistic"),
            Ok((SmtpSecurity::Opportunistic, 2525))
        );
        assert_eq!(
            relay("smtp://h:1025?tls=none"),
            Ok((SmtpSecurity::None, 1025))
        );
        for bad in [
            "smtps://h?tls=none",
            "smtp://h?tls=maybe",
            "imap://h",
            "smtp://u@h",
        ] {
            assert!(relay(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn alerts_config_reports_every_problem_and_never_a_password() {
        let error = read(
            r#"
            [alerts]
            after_failures = 0
            repeat_every = "soon"
            [alerts.email]
            smtp = "pop3://user:hunter2@mail.example.com"
            from = "not an address"
            to = []
            [alerts.webhook]
            url = "ftp://hooks.example.com"
            secret = ""
            "#,
        )
        .unwrap_err();
        for expected in [
            "alerts.after_failures: must be at least 1",
            "alerts.repeat_every: invalid duration `soon`",
            "alerts.email.smtp: `pop3://user:***@mail.example.com`: unknown scheme `pop3`",
            "alerts.email.from: `not an address` is not a mail address",
            "alerts.email.to: names no recipient",
            "alerts.webhook.url: must be an http:// or https:// URL",
            "alerts.webhook.secret: is empty",
        ] {
            assert!(error.contains(expected), "`{expected}` in:\n{error}");
        }
        assert!(!error.contains("hunter2"), "{error}");
        assert!(
            read("[alerts]\nafter_failures = 1\n")
                .unwrap_err()
                .contains("add [alerts.email] or [alerts.webhook]")
        );
        assert!(
            !parse_smtp_url("smtp://u:hunter2@[bad")
                .unwrap_err()
                .contains("hunter2")
        );
    }
}

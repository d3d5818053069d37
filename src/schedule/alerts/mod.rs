//! Alerts of `stevedore supervise`: a schedule that fails `after_failures` passes in a row
//! (or whose pass exits 2, an error in its job file) alerts once, is reminded of every
//! `repeat_every` while it stays broken, and resolves once on its next success: by mail,
//! webhook, or both ([`config`]).
//!
//! With several daemons on one Redis each event is sent once in all: every daemon looks at
//! each schedule every [`CHECK_EVERY`], and one Redis script decides the events from the
//! recorded passes and claims each unsent one for one daemon ([`claim`]). The claimer writes
//! the message ([`message`]) and sends it on a task of its own ([`email`], [`webhook`]),
//! retrying with the one retry policy, so a schedule never waits for an alert.

pub mod claim;
pub mod config;
pub mod email;
pub mod message;
pub mod webhook;

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::Retryable;

pub use config::{AlertsConfig, EmailConfig, SmtpSecurity, WebhookConfig, read_alerts};

use self::claim::{AlertKeys, CLAIM_TTL, Claimed, Rules};
use self::email::Mailer;
use self::message::{Sender, compose};
use self::webhook::Webhook;
use super::state::GroupState;
use crate::queue::{Patience, RedisLink};
use crate::retry::ALERT_SEND;
use crate::settings::Secret;

/// How often a daemon looks at each schedule's alerts: one Redis script per schedule.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// An alert that was not sent.
#[derive(Debug, Clone, thiserror::Error)]
#[error("alert by {channel}: {message}")]
pub struct SendError {
    /// `email` or `webhook`.
    pub channel: &'static str,
    /// Whether another attempt may help.
    pub verdict: Verdict,
    /// What went wrong, without secrets.
    pub message: String,
}

/// Whether a failed send is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The receiver may take it later (connection, timeout, 5xx, 429).
    Retry,
    /// It never will (refused address, 4xx): logged and dropped.
    GiveUp,
}

/// A daemon's alerting: off when the supervise file has no `[alerts]`.
pub struct Alerts {
    active: Option<Arc<Active>>,
    checked: Option<Instant>,
    link: Option<Arc<RedisLink>>,
}

/// What a daemon with `[alerts]` sends with.
struct Active {
    rules: Rules,
    mailer: Option<Mailer>,
    webhook: Option<Webhook>,
    sender: Sender,
}

impl Alerts {
    /// The alerting of a daemon on `host` in `environment` for `config`. A channel that
    /// cannot be set up is logged and left out.
    pub fn new(config: &super::SuperviseConfig, host: &str, environment: &str) -> Alerts {
        let Some(alerts) = &config.alerts else {
            return Alerts {
                active: None,
                checked: None,
                link: None,
            };
        };
        let mut secrets: Vec<Secret> = Vec::new();
        if let Some(email) = &alerts.email
            && let Some((_, password)) = &email.smtp.login
        {
            secrets.push(password.clone());
        }
        if let Some(webhook) = &alerts.webhook {
            secrets.push(webhook.secret.clone());
        }
        if let crate::config::RedisConfig::External { url } = &config.redis
            && let Ok(url) = url::Url::parse(url)
            && let Some(password) = url.password()
        {
            secrets.push(Secret::new(password));
        }
        let active = Active {
            rules: Rules {
                after_failures: alerts.after_failures,
                repeat_every: alerts.repeat_every,
            },
            mailer: alerts
                .email
                .as_ref()
                .and_then(|email| set_up(Mailer::new(email, host))),
            webhook: alerts
                .webhook
                .as_ref()
                .and_then(|hook| set_up(Webhook::new(hook))),
            sender: Sender {
                group: config.group.name.clone(),
                host: host.to_string(),
                environment: environment.to_string(),
                secrets,
            },
        };
        Alerts {
            active: Some(Arc::new(active)),
            checked: None,
            link: None,
        }
    }

    /// Every [`CHECK_EVERY`]: decides and claims the events of `schedules`, and sends the
    /// claimed ones on tasks of their own. Returns at once otherwise; never fails (a Redis
    /// outage is retried on the next check).
    pub async fn tick<'a>(
        &mut self,
        state: &GroupState<'_>,
        schedules: impl IntoIterator<Item = &'a str>,
    ) {
        let Some(active) = &self.active else { return };
        if self.checked.is_some_and(|at| at.elapsed() < CHECK_EVERY) {
            return;
        }
        self.checked = Some(Instant::now());
        // Sending tasks outlive the loop's borrow: they get their own patient link.
        let link = self
            .link
            .get_or_insert_with(|| Arc::new(state.link().with_patience(Patience::Patient)))
            .clone();
        let mut channels = Vec::new();
        if active.mailer.is_some() {
            channels.push("email");
        }
        if active.webhook.is_some() {
            channels.push("webhook");
        }
        if channels.is_empty() {
            // No channel could be set up here: deciding events this daemon cannot send would
            // record them as handled for the whole group. Leave them to a daemon that can.
            return;
        }
        for name in schedules {
            let keys = AlertKeys::of(&state.keys().schedule(name));
            let claimed = claim::tick(
                state.link(),
                &keys,
                name,
                active.rules,
                &channels,
                CLAIM_TTL,
            )
            .await;
            match claimed {
                Ok(claimed) => {
                    for claimed in claimed {
                        let (active, link, keys) = (active.clone(), link.clone(), keys.clone());
                        tokio::spawn(async move { deliver(&active, &link, &keys, claimed).await });
                    }
                }
                Err(error) => tracing::debug!(%error, schedule = name, "alerts: cannot look"),
            }
        }
    }
}

/// The longest one attempt to send may take: 6 attempts and their backoff (about 31 s) stay
/// under [`CLAIM_TTL`].
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(40);

/// Sends one claimed entry, retrying, then takes it out of the outbox (also when it gave up:
/// it is logged, and the next event of the schedule comes in its own time).
async fn deliver(active: &Active, link: &RedisLink, keys: &AlertKeys, claimed: Claimed) {
    let message = compose(&claimed.event, &active.sender);
    let schedule = &claimed.event.schedule;
    let event = &message::public_id(&active.sender.group, &claimed.event);
    let attempt = || async {
        let send = async {
            match claimed.channel.as_str() {
                "email" => match &active.mailer {
                    Some(mailer) => mailer.send(&message).await,
                    None => Err(not_here("email")),
                },
                "webhook" => match &active.webhook {
                    Some(webhook) => webhook.send(&message, event).await,
                    None => Err(not_here("webhook")),
                },
                _ => Err(not_here("an unknown channel")),
            }
        };
        // Every attempt ends in time, so all of them with their waits end well within the
        // claim's lease: no other daemon takes the entry over while this one still sends it.
        tokio::time::timeout(ATTEMPT_TIMEOUT, send)
            .await
            .unwrap_or_else(|_| {
                Err(SendError {
                    channel: if claimed.channel == "email" {
                        "email"
                    } else {
                        "webhook"
                    },
                    verdict: Verdict::Retry,
                    message: format!("no answer within {ATTEMPT_TIMEOUT:?}"),
                })
            })
    };
    let sent = attempt
        .retry(ALERT_SEND.backoff())
        .when(|error: &SendError| error.verdict == Verdict::Retry)
        .notify(|error, wait| {
            tracing::warn!(%error, schedule, event, ?wait, "alert not sent yet; retrying");
        })
        .await;
    match &sent {
        Ok(()) => tracing::info!(schedule, event, channel = %claimed.channel, "alert sent"),
        Err(error) => tracing::error!(%error, schedule, event, "alert not sent; giving up"),
    }
    if let Err(error) = claim::done(link, keys, &claimed.field).await {
        tracing::warn!(%error, schedule, event, "cannot clear a sent alert; its claim lapses and it may be sent again");
    }
}

/// A channel that could not be set up is logged and left out.
fn set_up<T>(channel: Result<T, SendError>) -> Option<T> {
    channel
        .inspect_err(|error| tracing::error!(%error, "alerts: cannot set up; this channel is off"))
        .ok()
}

fn not_here(channel: &'static str) -> SendError {
    SendError {
        channel,
        verdict: Verdict::GiveUp,
        message: "this daemon's [alerts] has no such channel (give every daemon of a group the same supervise file)".into(),
    }
}

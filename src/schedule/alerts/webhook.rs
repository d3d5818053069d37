//! Alerts by webhook: the event's JSON POSTed to a URL, signed so the receiver can tell it
//! came from the group.
//!
//! Headers: `X-Stevedore-Signature: sha256=<hex>`, the HMAC-SHA256 of the exact body bytes
//! with the configured secret; `X-Stevedore-Timestamp: <unix seconds>` when it was sent (also
//! in the body, `sent_at`, so that it is signed too); `X-Stevedore-Event: <event id>`, the
//! same for a rare second delivery of one event.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::config::WebhookConfig;
use super::message::Message;
use super::{SendError, Verdict};

/// How long one POST may take, answer included.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(20);

/// The signature header.
pub const SIGNATURE_HEADER: &str = "X-Stevedore-Signature";
/// The timestamp header.
pub const TIMESTAMP_HEADER: &str = "X-Stevedore-Timestamp";
/// The event id header.
pub const EVENT_HEADER: &str = "X-Stevedore-Event";

/// POSTs alerts to one URL.
pub struct Webhook {
    client: reqwest::Client,
    config: WebhookConfig,
}

impl Webhook {
    /// A webhook for `config`.
    pub fn new(config: &WebhookConfig) -> Result<Webhook, SendError> {
        let client = reqwest::Client::builder()
            .timeout(WEBHOOK_TIMEOUT)
            .user_agent(concat!("stevedore/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| SendError {
                channel: "webhook",
                verdict: Verdict::GiveUp,
                message: format!("cannot build an HTTP client: {}", error.without_url()),
            })?;
        Ok(Webhook {
            client,
            config: config.clone(),
        })
    }

    /// POSTs `message`'s payload, signed, with `sent_at` (unix seconds) added.
    pub async fn send(&self, message: &Message, event_id: &str) -> Result<(), SendError> {
        let sent_at = crate::clock::now_ms() / 1000;
        let mut payload = message.payload.clone();
        payload["sent_at"] = sent_at.into();
        let body = serde_json::to_vec(&payload).expect("JSON values serialize");
        let signature = sign(self.config.secret.expose().as_bytes(), &body);
        let failed = |verdict, message: String| SendError {
            channel: "webhook",
            verdict,
            message,
        };
        let response = self
            .client
            .post(self.config.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, format!("sha256={signature}"))
            .header(TIMESTAMP_HEADER, sent_at.to_string())
            .header(EVENT_HEADER, event_id)
            .body(body)
            .send()
            .await
            // The URL may hold a token of the receiver's: errors never show it.
            .map_err(|error| failed(Verdict::Retry, error.without_url().to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let verdict =
            if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
                Verdict::Retry
            } else {
                Verdict::GiveUp
            };
        Err(failed(verdict, format!("the receiver answered {status}")))
    }
}

/// The lowercase hex HMAC-SHA256 of `body` with `key`.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_webhook_signature_is_rfc_4231_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}

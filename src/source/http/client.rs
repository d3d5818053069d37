//! One request of an HTTP source, the way a careful client sends it: paced by the job's
//! limits, authorised with the shared token (fetched, refreshed, and renewed once on a 401),
//! and retried on 429, 408, 5xx and network errors after the server's `Retry-After` or a
//! backoff that holds the whole job off. Any other 4xx is the item's failure, never retried:
//! retrying an invalid lookup is how clients get banned.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use url::Url;

use super::pacing::Pacing;
use super::pages::start_of;
use super::settings::{Auth, ClientCredentials, HttpSettings};
use super::tokens::{Current, Fetched, Tokens};
use crate::queue::{LinkError, RedisLink};
use crate::retry::{HTTP_REQUEST, Policy, honour_hint};
use crate::settings::Secret;

/// A page body larger than this fails its item instead of filling memory.
pub(super) const MAX_BODY_BYTES: usize = 64 << 20;

/// A `Retry-After` longer than this fails the item instead of holding the whole job.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(900);

/// Why a request gave no page.
#[derive(Debug)]
pub(super) enum Failure {
    /// The API's answer (or silence) fails this item: the message says why, without secrets.
    Item(String),
    /// Redis, which holds the job's limits and token, failed.
    Redis(LinkError),
    /// The reading process was asked to stop while it waited.
    Interrupted,
}

impl From<LinkError> for Failure {
    fn from(error: LinkError) -> Failure {
        Failure::Redis(error)
    }
}

/// A successful answer.
pub(super) struct Answer {
    /// The body.
    pub body: Vec<u8>,
    /// The `Link` header, if any.
    pub link: Option<String>,
}

/// An answer read whole (status, headers, body), or a network error in words.
type Sent = Result<(StatusCode, HeaderMap, Vec<u8>), String>;

/// What a request loop does after one answer.
enum Step<T> {
    /// It has what it asked for.
    Done(T),
    /// It asks again (after a hold-off or a new token).
    Again,
    /// The network failed: wait, then ask again while retries are left.
    NetworkError(String),
}

/// The client of one source in one process.
pub(super) struct Client {
    http: reqwest::Client,
    headers: HeaderMap,
    auth: Auth,
    tokens: Tokens,
    pacing: Pacing,
    retry: Policy,
    secrets: Vec<Secret>,
    token_in_use: Mutex<Option<Secret>>,
}

impl Client {
    /// A client for source `source` of `job`, sharing limits and tokens through `link`.
    pub(super) fn new(
        settings: &HttpSettings,
        link: Option<Arc<RedisLink>>,
        job: &str,
        source: &str,
    ) -> Result<Client, String> {
        // Redirects are not followed: each hop would be a request the job's limits never
        // saw, and headers such as an API key would go to whatever host it names.
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("stevedore/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| format!("cannot build an HTTP client: {}", error.without_url()))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &settings.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .expect("header names were checked when the config was read");
            let mut value = HeaderValue::from_str(value.expose())
                .expect("header values were checked when the config was read");
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let mut secrets: Vec<Secret> = settings.headers.iter().map(|(_, v)| v.clone()).collect();
        match &settings.auth {
            Auth::Bearer(token) => secrets.push(token.clone()),
            Auth::ClientCredentials(credentials) => secrets.push(credentials.client_secret.clone()),
            Auth::None => {}
        }
        Ok(Client {
            http,
            headers,
            auth: settings.auth.clone(),
            tokens: Tokens::new(link.clone(), job, source),
            pacing: Pacing::new(link, job, source, &settings.limits),
            retry: Policy {
                retries: settings.limits.retries as usize,
                ..HTTP_REQUEST
            },
            secrets,
            token_in_use: Mutex::new(None),
        })
    }

    /// GETs one page, retrying what may be retried.
    pub(super) async fn get(&self, url: &Url) -> Result<Answer, Failure> {
        let mut renewed = false;
        let mut retries = 0;
        loop {
            // Everything from reading the token to acting on the answer happens under one
            // permit: the token is read just before it is used, and no other request of the
            // job slips out between a 429 and the hold-off it causes.
            let permit = self.pacing.permit().await?;
            let step = self
                .pacing
                .holding(&permit, self.try_page(url, &mut renewed, &mut retries))
                .await;
            self.pacing.done(permit).await?;
            match step?? {
                Step::Done(answer) => return Ok(answer),
                Step::Again => {}
                Step::NetworkError(error) => self.after_network_error(error, &mut retries).await?,
            }
        }
    }

    /// One attempt at a page, under a permit.
    async fn try_page(
        &self,
        url: &Url,
        renewed: &mut bool,
        retries: &mut usize,
    ) -> Result<Step<Answer>, Failure> {
        let token = match &self.auth {
            Auth::None => None,
            Auth::Bearer(token) => Some(token.clone()),
            Auth::ClientCredentials(credentials) => Some(self.token(credentials).await?),
        };
        self.pacing.grant().await?;
        let mut request = self.http.get(url.clone()).headers(self.headers.clone());
        if let Some(token) = &token {
            request = request.bearer_auth(token.expose());
        }
        Ok(match self.read(request).await? {
            Ok((status, headers, body)) if status.is_success() => Step::Done(Answer {
                body,
                link: header(&headers, "link"),
            }),
            Ok((StatusCode::UNAUTHORIZED, _, _))
                if !*renewed && matches!(self.auth, Auth::ClientCredentials(_)) =>
            {
                // The token ran out early or was revoked: one new token, then once more.
                *renewed = true;
                tracing::info!("the API refused the token (401); fetching a new one");
                if let Some(token) = &token {
                    self.tokens.refused(token).await?;
                }
                Step::Again
            }
            Ok((status, headers, body)) => {
                self.after_refusal(status, &headers, &body, retries).await?;
                Step::Again
            }
            Err(error) => Step::NetworkError(error),
        })
    }

    /// The shared token, fetched by this process (under the caller's permit) if none is
    /// there.
    async fn token(&self, credentials: &ClientCredentials) -> Result<Secret, Failure> {
        let token = match self.tokens.current().await? {
            Current::Token(token) => token,
            Current::Fetch => match self.tokens.fetching(self.fetch_token(credentials)).await? {
                Ok(fetched) => {
                    self.tokens.store(&fetched).await?;
                    fetched.token
                }
                Err(failure) => {
                    self.tokens.give_up_fetch().await?;
                    return Err(failure);
                }
            },
        };
        *self.token_in_use.lock().expect("never poisoned") = Some(token.clone());
        Ok(token)
    }

    async fn fetch_token(&self, credentials: &ClientCredentials) -> Result<Fetched, Failure> {
        let mut retries = 0;
        loop {
            self.pacing.grant().await?;
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "client_credentials")
                .append_pair("client_id", &credentials.client_id)
                .append_pair("client_secret", credentials.client_secret.expose());
            if let Some(scope) = &credentials.scope {
                form.append_pair("scope", scope);
            }
            let request = self
                .http
                .post(&credentials.token_url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("accept", "application/json")
                .body(form.finish());
            match self.read(request).await? {
                Ok((status, _, body)) if status.is_success() => {
                    return Fetched::from_answer(&body).map_err(|reason| {
                        Failure::Item(format!(
                            "the token endpoint answered {status} without a usable token \
                             ({reason})"
                        ))
                    });
                }
                Ok((status, headers, body)) => self
                    .after_refusal(status, &headers, &body, &mut retries)
                    .await
                    .map_err(|failure| match failure {
                        Failure::Item(reason) => {
                            Failure::Item(format!("the token endpoint: {reason}"))
                        }
                        other => other,
                    })?,
                Err(error) => self.after_network_error(error, &mut retries).await?,
            }
        }
    }

    /// Sends one request and reads its whole answer; the inner error is a network error or
    /// timeout, described without the URL.
    async fn read(&self, request: reqwest::RequestBuilder) -> Result<Sent, Failure> {
        let answer = async {
            let mut response = request.send().await?;
            let (status, headers) = (response.status(), response.headers().clone());
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return Ok(Err(format!(
                        "HTTP {status}: the body is over {} MiB",
                        MAX_BODY_BYTES >> 20
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Ok((status, headers, body)))
        }
        .await;
        match answer {
            Ok(Ok(answer)) => Ok(Ok(answer)),
            Ok(Err(too_big)) => Err(Failure::Item(too_big)),
            Err(error) => Ok(Err(self.hide(&describe(&error)))),
        }
    }

    /// After an answer that is not a success: waits and returns to retry a 429, 408 or 5xx
    /// while retries are left (holding the whole job off), else fails the item.
    async fn after_refusal(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        retries: &mut usize,
    ) -> Result<(), Failure> {
        let retryable = status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
            || status.is_server_error();
        let mut answered = format!("HTTP {status}: {}", self.hide(&start_of(body)));
        if status.is_redirection() {
            answered.push_str(
                " (redirects are not followed: set `url` to where the API lives, https included)",
            );
        }
        if !retryable {
            return Err(Failure::Item(answered));
        }
        if *retries >= self.retry.retries {
            return Err(Failure::Item(format!(
                "{answered} (after {retries} retries)"
            )));
        }
        *retries += 1;
        let hint =
            header(headers, "retry-after").and_then(|value| retry_after(&value, SystemTime::now()));
        if let Some(hint) = hint.filter(|hint| *hint > MAX_RETRY_AFTER) {
            return Err(Failure::Item(format!(
                "{answered}; it asked to wait {} s (Retry-After), over the {} s stevedore \
                 holds a job for",
                hint.as_secs(),
                MAX_RETRY_AFTER.as_secs()
            )));
        }
        let wait = honour_hint(hint, Some(self.retry.wait(*retries as u32)))
            .expect("a planned wait stays one");
        tracing::warn!(
            status = status.as_u16(),
            wait = ?wait,
            retry = *retries,
            "the API asked to slow down; holding every request of the job off"
        );
        self.pacing.hold_off(wait).await?;
        Ok(())
    }

    /// After a network error or timeout: waits and returns to retry while retries are left.
    async fn after_network_error(&self, error: String, retries: &mut usize) -> Result<(), Failure> {
        if *retries >= self.retry.retries {
            return Err(Failure::Item(format!("{error} (after {retries} retries)")));
        }
        *retries += 1;
        let wait = self.retry.wait(*retries as u32);
        tracing::warn!(%error, wait = ?wait, retry = *retries, "request failed; retrying");
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// `text` with every configured secret, and the token in use, replaced by `***`.
    pub(super) fn hide(&self, text: &str) -> String {
        let token = self.token_in_use.lock().expect("never poisoned").clone();
        self.secrets
            .iter()
            .chain(token.as_ref())
            .fold(text.to_string(), |text, secret| secret.hide_in(&text))
    }
}

/// A network error in words, without the URL (its query may hold a key).
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    let mut text = format!("the request {kind}");
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
}

/// A `Retry-After` value: seconds, or an HTTP date in any of its three forms (a date in the
/// past means now).
pub(super) fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110's example).
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(
            retry_after("Sunday, 06-Nov-94 08:50:07 GMT", now),
            Some(Duration::from_secs(30)),
            "RFC 850"
        );
        assert_eq!(
            retry_after("Sun Nov  6 08:50:07 1994", now),
            Some(Duration::from_secs(30)),
            "asctime"
        );
        assert_eq!(retry_after("soon", now), None);
    }
}

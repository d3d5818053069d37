//! The `[[source]] kind = "http"` table: read, checked and turned into what the reader uses.
//! Every problem names its field; secrets (tokens, client secrets, header values) are kept
//! as [`Secret`]s so that no `Debug` or message shows them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::settings::{KindSettings, Secret, Section};

/// The placeholder in `url` that each tenant replaces.
pub(super) const TENANT: &str = "{tenant}";

/// The checked settings of an `http` source.
#[derive(Debug, Clone)]
pub(crate) struct HttpSettings {
    /// The URL, `{tenant}` still in it.
    pub url: String,
    /// JSON pointer to the array of records in each response (`""`: the body is the array).
    pub records: String,
    /// Headers sent with every request (values may be secrets).
    pub headers: Vec<(String, Secret)>,
    /// Where the tenants come from, if the URL has `{tenant}`.
    pub tenants: Tenants,
    /// How long one request may take, body included.
    pub timeout: Duration,
    /// How pages follow each other.
    pub pagination: Pagination,
    /// How requests prove who sends them.
    pub auth: Auth,
    /// Limits for the whole job.
    pub limits: Limits,
}

/// The tenants a URL is called for: one work item each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tenants {
    /// One item, the URL as written.
    None,
    /// Listed in the config.
    List(Vec<String>),
    /// One `{"tenant": ...}` per line of a JSONL file, read when the run is planned.
    File(PathBuf),
}

/// How an API links its pages.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub(crate) enum Pagination {
    /// One request per item.
    None,
    /// `?page=N&per_page=M`, counting from `start`; a short page is the last.
    Page {
        /// The page number's query parameter.
        #[serde(default = "page_param")]
        param: String,
        /// The page size's query parameter.
        #[serde(default = "per_page_param")]
        size_param: String,
        /// Records asked for per page.
        #[serde(default = "default_size")]
        size: u64,
        /// The first page's number.
        #[serde(default = "one")]
        start: u64,
    },
    /// `?offset=N&limit=M`, from `start`; a short page is the last.
    Offset {
        /// The offset's query parameter.
        #[serde(default = "offset_param")]
        param: String,
        /// The page size's query parameter.
        #[serde(default = "limit_param")]
        size_param: String,
        /// Records asked for per page.
        #[serde(default = "default_size")]
        size: u64,
        /// The first offset.
        #[serde(default)]
        start: u64,
    },
    /// `?cursor=C` with the cursor read from each body at a JSON pointer.
    Cursor {
        /// The cursor's query parameter.
        param: String,
        /// JSON pointer of the next cursor; absent, null or empty on the last page.
        next: String,
    },
    /// An RFC 8288 `Link: <url>; rel="next"` header on every page but the last.
    Link,
}

fn page_param() -> String {
    "page".into()
}
fn per_page_param() -> String {
    "per_page".into()
}
fn offset_param() -> String {
    "offset".into()
}
fn limit_param() -> String {
    "limit".into()
}
fn default_size() -> u64 {
    100
}
fn one() -> u64 {
    1
}

impl Pagination {
    /// Query parameters the reader sets itself: their values are shown in messages.
    pub(super) fn own_params(&self) -> Vec<&str> {
        match self {
            Pagination::Page {
                param, size_param, ..
            }
            | Pagination::Offset {
                param, size_param, ..
            } => vec![param, size_param],
            Pagination::Cursor { param, .. } => vec![param],
            Pagination::Link | Pagination::None => Vec::new(),
        }
    }
}

/// How requests are authorised.
#[derive(Debug, Clone)]
pub(crate) enum Auth {
    /// No `Authorization` header.
    None,
    /// `Authorization: Bearer <token>`, a fixed token.
    Bearer(Secret),
    /// Tokens from an OAuth2 client-credentials endpoint, shared by the job's processes.
    ClientCredentials(ClientCredentials),
}

/// An OAuth2 client-credentials grant (RFC 6749 section 4.4).
#[derive(Debug, Clone)]
pub(crate) struct ClientCredentials {
    /// The token endpoint.
    pub token_url: String,
    /// The client id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: Secret,
    /// The scope asked for, if any.
    pub scope: Option<String>,
}

/// Limits of the whole job, every producer process on every host together.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Limits {
    /// Requests a second.
    pub requests_per_second: f64,
    /// Requests in flight at once.
    #[serde(default = "one_u32")]
    pub max_concurrency: u32,
    /// Retries of one request after 429, 5xx, 408 or a network error.
    #[serde(default = "five")]
    pub retries: u32,
}

fn one_u32() -> u32 {
    1
}
fn five() -> u32 {
    5
}

impl KindSettings for HttpSettings {
    /// What decides the items and which records a stored page position means: a change
    /// makes an unfinished run unresumable. The URL's query values are left out (a key in
    /// them may be rotated, and the basis is shown in messages); the `records` pointer too,
    /// so that a run whose pages failed for a wrong pointer can be fixed and resumed.
    fn basis(&self) -> String {
        let tenants = match &self.tenants {
            Tenants::None => String::new(),
            Tenants::List(list) => list.join(","),
            Tenants::File(path) => path.display().to_string(),
        };
        let url = match url::Url::parse(&self.url.replace(TENANT, "{t}")) {
            Ok(url) => super::shown_url(&url, &[]),
            Err(_) => String::new(),
        };
        format!("{url} {:?} {tenants}", self.pagination)
    }
}

/// The table as written.
#[derive(Deserialize)]
struct Raw {
    url: String,
    #[serde(default)]
    records: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    tenants: Option<Vec<String>>,
    tenants_file: Option<PathBuf>,
    timeout: Option<String>,
    #[serde(default = "no_pagination")]
    pagination: Pagination,
    #[serde(default)]
    auth: RawAuth,
    limits: Limits,
}

fn no_pagination() -> Pagination {
    Pagination::None
}

#[derive(Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum RawAuth {
    #[default]
    None,
    Bearer {
        token: String,
    },
    #[serde(rename = "oauth2_client_credentials")]
    ClientCredentials {
        token_url: String,
        client_id: String,
        client_secret: String,
        scope: Option<String>,
    },
}

/// Reads and checks the table; `None` after recording every problem found.
pub(super) fn read(section: &mut Section<'_>) -> Option<HttpSettings> {
    let raw: Raw = section.read()?;
    let timeout = section.duration(
        raw.timeout.as_deref(),
        "30s",
        "timeout",
        Duration::from_secs(1)..=Duration::from_secs(600),
    );
    let tenants = match (raw.tenants, raw.tenants_file) {
        (Some(_), Some(_)) => {
            section.problem("tenants_file", "give `tenants` or `tenants_file`, not both");
            Tenants::None
        }
        (Some(list), None) => {
            if list.is_empty() {
                section.problem("tenants", "is empty: no tenant would be read");
            }
            if let Some(blank) = list.iter().position(|t| t.trim().is_empty()) {
                section.problem("tenants", format!("tenant {} is empty", blank + 1));
            }
            Tenants::List(list)
        }
        (None, Some(path)) => Tenants::File(path),
        (None, None) => Tenants::None,
    };
    match (raw.url.contains(TENANT), &tenants) {
        (true, Tenants::None) => section.problem(
            "url",
            "has `{tenant}` but no `tenants` or `tenants_file` says which",
        ),
        (false, Tenants::List(_) | Tenants::File(_)) => section.problem(
            "url",
            "has no `{tenant}`: every tenant would call the same URL",
        ),
        _ => {}
    }
    match url::Url::parse(&raw.url.replace(TENANT, "t")) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => {}
        Ok(url) => section.problem(
            "url",
            format!("scheme `{}` is not http or https", url.scheme()),
        ),
        Err(error) => section.problem("url", format!("is not a URL: {error}")),
    }
    check_pointer(section, "records", &raw.records);
    match &raw.pagination {
        Pagination::Cursor { next, .. } => check_pointer(section, "pagination.next", next),
        Pagination::Page { size, .. } | Pagination::Offset { size, .. } if *size == 0 => {
            section.problem("pagination.size", "must be at least 1")
        }
        _ => {}
    }
    let mut headers = Vec::new();
    for (name, value) in raw.headers {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            section.problem("headers", format!("`{name}` is not a header name"));
        } else if reqwest::header::HeaderValue::from_str(&value).is_err() {
            section.problem(
                "headers",
                format!("the value of `{name}` is not a valid header value"),
            );
        }
        headers.push((name, Secret::new(value)));
    }
    let auth = match raw.auth {
        RawAuth::None => Auth::None,
        RawAuth::Bearer { token } => {
            if token.is_empty() {
                section.problem("auth.token", "is empty");
            }
            Auth::Bearer(Secret::new(token))
        }
        RawAuth::ClientCredentials {
            token_url,
            client_id,
            client_secret,
            scope,
        } => {
            if url::Url::parse(&token_url).is_err() {
                section.problem("auth.token_url", "is not a URL");
            }
            Auth::ClientCredentials(ClientCredentials {
                token_url,
                client_id,
                client_secret: Secret::new(client_secret),
                scope,
            })
        }
    };
    let limits = raw.limits;
    if !(limits.requests_per_second.is_finite() && limits.requests_per_second > 0.0) {
        section.problem(
            "limits.requests_per_second",
            "must be above 0: stevedore paces every request of the job by it",
        );
    }
    if limits.max_concurrency == 0 {
        section.problem("limits.max_concurrency", "must be at least 1");
    }
    if limits.retries > 100 {
        section.problem("limits.retries", "must be at most 100");
    }
    Some(HttpSettings {
        url: raw.url,
        records: raw.records,
        headers,
        tenants,
        timeout,
        pagination: raw.pagination,
        auth,
        limits,
    })
}

fn check_pointer(section: &mut Section<'_>, field: &str, pointer: &str) {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        section.problem(
            field,
            format!(
                "`{pointer}` is not a JSON pointer: it starts with `/` (`\"\"` is the whole body)"
            ),
        );
    }
}

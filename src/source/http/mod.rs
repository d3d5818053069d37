//! The `http` source: somebody else's REST API, read page by page, one work item per tenant,
//! without ever going over the API's limits.
//!
//! - **Limits for the whole job.** Every request of every producer (token requests too) is
//!   paced by one rate and one count of requests in flight held in Redis ([`pacing`]); a
//!   429 or 5xx holds every process off, not only the one that was told.
//! - **Resumable pages.** Each page ends with an [`Entry::Resumable`] that carries where the
//!   next page is ([`pages::Position`]): the producer cuts a unit there and stores the
//!   position with its checkpoint, so a producer that dies resumes at the page it reached,
//!   and unit ids stay the same per (tenant, page).
//! - **Tokens** of an OAuth2 client-credentials grant are shared through Redis ([`tokens`]).
//! - **Failures stay with their item.** A 4xx other than 401/408/429, retries running out, or
//!   a body that does not hold records fails the tenant ([`SourceError::ItemFailed`]); the
//!   other tenants go on, and the run ends failed naming the tenant and page.

mod client;
mod pacing;
mod pages;
mod settings;
mod tokens;

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::Value;
use url::Url;

use super::{Entries, Entry, OpenContext, Source, SourceError, SourceKind, WorkItem};
use crate::config::SourceConfig;
use crate::settings::{KindSettings, Section};
use crate::unit::Reject;
use client::{Client, Failure};
use pages::{Position, page_url, read_page};
pub(crate) use settings::HttpSettings;
use settings::{TENANT, Tenants};

/// The `http` kind.
pub(super) const KIND: SourceKind = SourceKind {
    name: "http",
    read,
    build,
};

fn read(section: &mut Section<'_>) -> Option<Arc<dyn KindSettings>> {
    settings::read(section).map(|settings| Arc::new(settings) as Arc<dyn KindSettings>)
}

fn build(config: &SourceConfig) -> Box<dyn Source> {
    Box::new(HttpSource {
        name: config.name.clone(),
        settings: config.settings::<HttpSettings>().clone(),
    })
}

/// How much of a record that is not an object its dead letter shows.
const PREVIEW_CHARS: usize = 256;

/// The `http` source.
pub(crate) struct HttpSource {
    name: String,
    settings: HttpSettings,
}

impl HttpSource {
    fn tenants(&self) -> Result<Option<Vec<String>>, SourceError> {
        match &self.settings.tenants {
            Tenants::None => Ok(None),
            Tenants::List(list) => Ok(Some(list.clone())),
            Tenants::File(path) => {
                let invalid = |line: usize, reason: String| SourceError::Invalid {
                    source_name: self.name.clone(),
                    reason: format!("{} line {line}: {reason}", path.display()),
                };
                let text = std::fs::read_to_string(path).map_err(|error| SourceError::Io {
                    source_name: self.name.clone(),
                    path: path.display().to_string(),
                    error,
                })?;
                let mut tenants = Vec::new();
                for (index, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let value: Value = serde_json::from_str(line)
                        .map_err(|error| invalid(index + 1, format!("not JSON: {error}")))?;
                    match value.get("tenant") {
                        Some(Value::String(tenant)) if !tenant.trim().is_empty() => {
                            tenants.push(tenant.clone())
                        }
                        Some(Value::Number(tenant)) => tenants.push(tenant.to_string()),
                        _ => {
                            return Err(invalid(
                                index + 1,
                                "expected an object with a non-empty `tenant`".into(),
                            ));
                        }
                    }
                }
                if tenants.is_empty() {
                    return Err(SourceError::Invalid {
                        source_name: self.name.clone(),
                        reason: format!("{} lists no tenant", path.display()),
                    });
                }
                Ok(Some(tenants))
            }
        }
    }

    /// The item's URL before pagination: the tenant spliced in as one path segment.
    fn item_url(&self, item: &WorkItem) -> Result<Url, SourceError> {
        let text = match self.settings.tenants {
            Tenants::None => self.settings.url.clone(),
            _ => {
                let tenant = percent_encoding::utf8_percent_encode(
                    &item.origin,
                    percent_encoding::NON_ALPHANUMERIC,
                );
                self.settings.url.replace(TENANT, &tenant.to_string())
            }
        };
        Url::parse(&text).map_err(|error| self.failed(item, "page 1", error.to_string()))
    }

    fn failed(&self, item: &WorkItem, position: &str, reason: String) -> SourceError {
        SourceError::ItemFailed {
            source_name: self.name.clone(),
            item: self.item_name(item),
            position: position.to_string(),
            reason,
        }
    }

    fn item_name(&self, item: &WorkItem) -> String {
        match self.settings.tenants {
            Tenants::None => "the API".into(),
            _ => format!("tenant `{}`", item.origin),
        }
    }
}

impl Source for HttpSource {
    fn plan(&self, _unit_records: usize) -> Result<Vec<WorkItem>, SourceError> {
        let origins = match self.tenants()? {
            Some(tenants) => tenants,
            None => vec![shown_url(
                &Url::parse(&self.settings.url).expect("the URL was checked when read"),
                &[],
            )],
        };
        Ok(WorkItem::numbered(&self.name, origins))
    }

    fn open(&self, item: &WorkItem, context: &OpenContext) -> Result<Entries, SourceError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|error| self.failed(item, "page 1", error.to_string()))?;
        let client = Client::new(
            &self.settings,
            context.link.clone(),
            &context.job,
            &self.name,
        )
        .map_err(|reason| self.failed(item, "page 1", reason))?;
        let position = match context.resume.as_deref() {
            None => Position::start(&self.settings.pagination),
            // Starting over instead would cut the item's first pages into units numbered
            // after the checkpoint: records sent twice under new ids.
            Some(stored) => Position::decode(stored).ok_or_else(|| {
                self.failed(
                    item,
                    "its stored position",
                    "the position stored by an earlier reader cannot be read by this build".into(),
                )
            })?,
        };
        Ok(Box::new(PageReader {
            base: self.item_url(item)?,
            source: HttpSource {
                name: self.name.clone(),
                settings: self.settings.clone(),
            },
            item: item.clone(),
            runtime,
            client,
            position,
            entries: VecDeque::new(),
            done: false,
            stop: context.stop.clone(),
        }))
    }

    fn probe(
        &self,
        items: &[WorkItem],
        context: &OpenContext,
    ) -> Option<Result<String, SourceError>> {
        let item = items.iter().find(|item| item.source == self.name)?;
        let entries = match self.open(item, context) {
            Ok(entries) => entries,
            Err(error) => return Some(Err(error)),
        };
        let (mut records, mut refused) = (0u64, 0u64);
        for entry in entries {
            match entry {
                Ok(Entry::Resumable { .. }) => break,
                Ok(Entry::Record { .. } | Entry::Text { .. }) => records += 1,
                Ok(Entry::Rejected(_)) => refused += 1,
                Err(error) => return Some(Err(error)),
            }
        }
        let refused = match refused {
            0 => String::new(),
            n => format!(" and {n} that are not objects (they would be dead-lettered)"),
        };
        Some(Ok(format!(
            "the first page of {} holds {records} record(s){refused}",
            self.item_name(item)
        )))
    }
}

/// Reads one item page by page on a thread that may block, each request on the runtime.
struct PageReader {
    source: HttpSource,
    item: WorkItem,
    base: Url,
    runtime: tokio::runtime::Handle,
    client: Client,
    position: Position,
    entries: VecDeque<Entry>,
    done: bool,
    stop: Option<crate::worker::Shutdown>,
}

impl PageReader {
    /// Reads the next page into `entries`.
    fn read_next_page(&mut self) -> Result<(), SourceError> {
        let pagination = &self.source.settings.pagination;
        let page_name = format!("page {}", self.position.pages + 1);
        let url = page_url(&self.base, pagination, &self.position.next)
            .map_err(|reason| self.source.failed(&self.item, &page_name, reason))?;
        let shown = shown_url(&url, &pagination.own_params());
        let at = format!("{page_name} ({shown})");
        let get = self.client.get(&url);
        let answer = match self.stop.clone() {
            None => self.runtime.block_on(get),
            Some(mut stop) => self.runtime.block_on(async {
                tokio::select! {
                    answer = get => answer,
                    () = stop.wait() => Err(Failure::Interrupted),
                }
            }),
        };
        let answer = answer.map_err(|failure| match failure {
            Failure::Item(reason) => self.source.failed(&self.item, &at, reason),
            Failure::Redis(error) => SourceError::Redis {
                source_name: self.source.name.clone(),
                error: Box::new(error),
            },
            Failure::Interrupted => SourceError::Interrupted {
                source_name: self.source.name.clone(),
            },
        })?;
        let page = read_page(
            &answer.body,
            answer.link.as_deref(),
            &self.source.settings.records,
            pagination,
            &self.position,
        )
        .map_err(|reason| {
            let reason = self.client.hide(&reason);
            self.source
                .failed(&self.item, &at, format!("HTTP 200: {reason}"))
        })?;
        let count = page.records.len() as u64;
        self.position.largest = self.position.largest.max(count);
        for value in page.records {
            let line = self.position.line;
            self.position.line += 1;
            self.entries.push_back(match value {
                Value::Object(_) => Entry::Record { line, value },
                other => Entry::Rejected(Reject {
                    line,
                    raw: other.to_string().chars().take(PREVIEW_CHARS).collect(),
                    reason: format!(
                        "record {line} (page {}) is {}, not a JSON object",
                        self.position.pages + 1,
                        crate::mapping::json_type(&other)
                    ),
                }),
            });
        }
        self.position.pages += 1;
        match page.next {
            Some(next) => {
                self.position.next = next;
                self.entries.push_back(Entry::Resumable {
                    position: self.position.encode(),
                });
            }
            None => self.done = true,
        }
        Ok(())
    }
}

impl Iterator for PageReader {
    type Item = Result<Entry, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.entries.pop_front() {
                return Some(Ok(entry));
            }
            if self.done {
                return None;
            }
            if let Err(error) = self.read_next_page() {
                self.done = true;
                return Some(Err(error));
            }
        }
    }
}

/// This process, as it names itself in the job's shared permits and token lock.
fn this_process() -> String {
    format!("{}:{}", crate::supervisor::host_name(), std::process::id())
}

/// `url` as messages show it: no user or password, and the values of query parameters other
/// than `shown` (the pagination's own) replaced by `***`, since a query may carry a key.
fn shown_url(url: &Url, shown: &[&str]) -> String {
    let mut shown_url = url.clone();
    let _ = shown_url.set_username("");
    let _ = shown_url.set_password(None);
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(name, value)| {
            let value = if shown.contains(&name.as_ref()) {
                value.into_owned()
            } else {
                "***".to_string()
            };
            (name.into_owned(), value)
        })
        .collect();
    if pairs.is_empty() {
        shown_url.set_query(None);
    } else {
        shown_url
            .query_pairs_mut()
            .clear()
            .extend_pairs(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    }
    shown_url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_shown_url_hides_credentials_and_foreign_query_values() {
        let url = Url::parse("https://me:pw@api.test/v1/users?api_key=k3y&cursor=abc").unwrap();
        let shown = shown_url(&url, &["cursor"]);
        assert_eq!(shown, "https://api.test/v1/users?api_key=***&cursor=abc");
        assert!(!shown.contains("k3y") && !shown.contains("pw"));
    }
}

//! Reading a dead-letter queue page by page, straight from RSMQ's structures in Redis
//! (rsmq_async 18): the sorted set `rsmq:<queue>` holds the message ids, scored by the time
//! each becomes visible (for a letter: when it was sent, in ms), and the hash
//! `rsmq:<queue>:Q` holds each body under its id (beside `<id>:rc`, `<id>:fr` and the queue's
//! attributes). `ZSCAN` and `HMGET` only read: no letter's visibility or receive count
//! changes, as receiving would, and memory holds one page of bodies whatever the queue holds.
//!
//! `ZSCAN` returns every message that stays in the queue from the first page to the last at
//! least once (one may come twice while Redis resizes the set; callers deduplicate by letter id
//! anyway). Messages that arrive during a scan may or may not come, so a scan takes only the
//! messages that entered the queue before it started: a replay never meets the letters it
//! writes itself, and both passes of a listing see the same letters.

use std::collections::{BTreeMap, HashSet};

use super::Letter;
use crate::queue::{LinkError, RSMQ_NAMESPACE, RedisLink};

/// Letters read per page unless `--page-size` says otherwise.
pub(crate) const DEFAULT_PAGE: usize = 500;

/// One scan over one queue.
pub(crate) struct Scan<'a> {
    link: &'a RedisLink,
    queue: String,
    key: String,
    /// The next `ZSCAN` cursor; `None` once the scan is done.
    cursor: Option<u64>,
    page: usize,
    /// Redis's clock when the scan started, in ms: later messages are left out.
    started_ms: u64,
    pages: u64,
}

impl<'a> Scan<'a> {
    /// Starts a scan of `queue`, `page` letters at a time.
    pub(crate) async fn start(
        link: &'a RedisLink,
        queue: &str,
        page: usize,
    ) -> Result<Scan<'a>, LinkError> {
        Ok(Scan {
            link,
            queue: queue.to_string(),
            key: format!("{RSMQ_NAMESPACE}:{queue}"),
            cursor: Some(0),
            page: page.max(1),
            started_ms: redis_now_ms(link).await?,
            pages: 0,
        })
    }

    /// The next page of letters (possibly empty); `None` when the scan is done.
    pub(crate) async fn next_page(&mut self) -> Result<Option<Vec<Letter>>, LinkError> {
        let Some(cursor) = self.cursor else {
            return Ok(None);
        };
        let (next, flat): (String, Vec<String>) = self
            .link
            .query(
                &format!("scanning {}", self.queue),
                redis::cmd("ZSCAN")
                    .arg(&self.key)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(self.page),
            )
            .await?;
        self.cursor = match next.parse::<u64>() {
            Ok(0) | Err(_) => None,
            Ok(next) => Some(next),
        };
        self.pages += 1;
        let members: Vec<(String, u64)> = flat
            .chunks_exact(2)
            .filter_map(|pair| {
                let score = pair[1].parse::<f64>().ok()? as u64;
                (score < self.started_ms).then(|| (pair[0].clone(), score))
            })
            .collect();
        tracing::debug!(queue = %self.queue, page = self.pages, letters = members.len(), "read a page of dead letters");
        if members.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let bodies: Vec<Option<Vec<u8>>> = self
            .link
            .query(
                &format!("reading letters of {}", self.queue),
                redis::cmd("HMGET")
                    .arg(format!("{}:Q", self.key))
                    .arg(members.iter().map(|(id, _)| id).collect::<Vec<_>>()),
            )
            .await?;
        Ok(Some(
            members
                .into_iter()
                .zip(bodies)
                // A message deleted since the page was scanned has no body any more.
                .filter_map(|((id, sent_ms), body)| Some(Letter::parse(id, sent_ms, body?)))
                .collect(),
        ))
    }
}

/// Redis's clock in ms, the clock RSMQ scores messages by.
async fn redis_now_ms(link: &RedisLink) -> Result<u64, LinkError> {
    let (seconds, micros): (u64, u64) = link
        .query("reading redis's clock", &redis::cmd("TIME"))
        .await?;
    Ok(seconds * 1000 + micros / 1000)
}

/// Letters counted once each, by sink and by reason: the head of `dlq list`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Distinct letters.
    pub(crate) letters: u64,
    /// Copies of letters counted above (messages beyond the first with the same id).
    pub(crate) duplicates: u64,
    /// Distinct letters per sink.
    pub(crate) by_sink: BTreeMap<String, u64>,
    /// Distinct letters per (sink, reason).
    pub(crate) by_reason: BTreeMap<(String, String), u64>,
}

impl Tally {
    /// Counts `letter` of `sink`, unless `seen` already holds its id.
    pub(crate) fn add(&mut self, seen: &mut HashSet<String>, sink: &str, letter: &Letter) {
        if !seen.insert(letter.id.clone()) {
            self.duplicates += 1;
            return;
        }
        self.letters += 1;
        *self.by_sink.entry(sink.to_string()).or_default() += 1;
        *self
            .by_reason
            .entry((sink.to_string(), letter.reason().to_string()))
            .or_default() += 1;
    }

    /// The reasons, most frequent first.
    pub(crate) fn reasons(&self) -> Vec<(&str, &str, u64)> {
        let mut reasons: Vec<_> = self
            .by_reason
            .iter()
            .map(|((sink, reason), count)| (sink.as_str(), reason.as_str(), *count))
            .collect();
        reasons.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(b.0)).then(a.1.cmp(b.1)));
        reasons
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn letter(message: &str, id: &str, reason: &str) -> Letter {
        let body = json!({"record": {}, "dead_letter": {"id": id, "reason": reason}});
        Letter::parse(message.into(), 1, serde_json::to_vec(&body).unwrap())
    }

    #[test]
    fn dlq_tally_counts_each_letter_once_by_sink_and_reason() {
        let mut tally = Tally::default();
        let mut local = HashSet::new();
        tally.add(&mut local, "local", &letter("m1", "u#1", "bad"));
        tally.add(&mut local, "local", &letter("m2", "u#1", "bad"));
        tally.add(&mut local, "local", &letter("m3", "u#2", "bad"));
        tally.add(&mut local, "local", &letter("m4", "u#3", "worse"));
        // Each sink's queue has its own letters with the same ids.
        let mut remote = HashSet::new();
        tally.add(&mut remote, "remote", &letter("m5", "u#1", "worse"));
        assert_eq!((tally.letters, tally.duplicates), (4, 1));
        assert_eq!(tally.by_sink["local"], 3);
        assert_eq!(
            tally.reasons(),
            [
                ("local", "bad", 2),
                ("local", "worse", 1),
                ("remote", "worse", 1)
            ]
        );
    }
}

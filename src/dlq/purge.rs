//! `dlq purge`: deleting a sink's dead letters, all of them or those older than a time, page
//! by page. A message is deleted the way RSMQ deletes one (its id from the sorted set, its
//! body and counters from the hash), one atomic step per page, so the queue itself (its
//! attributes in the same hash) stays as it is.

use std::collections::HashSet;

use super::read::Scan;
use crate::queue::{LinkError, RSMQ_NAMESPACE, RedisLink};

/// What a purge deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Purged {
    /// Distinct letters.
    pub(crate) letters: u64,
    /// Messages (a letter stored twice is two).
    pub(crate) messages: u64,
}

/// Deletes the letters of `queue` dead-lettered before `before_ms` (every letter with `None`),
/// `page` at a time.
pub(crate) async fn purge(
    link: &RedisLink,
    queue: &str,
    before_ms: Option<u64>,
    page: usize,
) -> Result<Purged, LinkError> {
    let mut scan = Scan::start(link, queue, page).await?;
    let mut purged = Purged::default();
    let mut seen = HashSet::new();
    while let Some(letters) = scan.next_page().await? {
        let doomed: Vec<_> = letters
            .into_iter()
            .filter(|letter| before_ms.is_none_or(|before| letter.at_ms() < before))
            .collect();
        let ids: Vec<&str> = doomed.iter().map(|l| l.message_id.as_str()).collect();
        let deleted = delete_messages(link, queue, &ids).await?;
        for (letter, deleted) in doomed.iter().zip(deleted) {
            if deleted {
                purged.messages += 1;
                if seen.insert(letter.id.clone()) {
                    purged.letters += 1;
                }
            }
        }
    }
    Ok(purged)
}

/// Deletes messages `ids` of `queue` in one atomic step; says which were there.
async fn delete_messages(
    link: &RedisLink,
    queue: &str,
    ids: &[&str],
) -> Result<Vec<bool>, LinkError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let key = format!("{RSMQ_NAMESPACE}:{queue}");
    let mut pipe = redis::pipe();
    pipe.atomic();
    for id in ids {
        pipe.cmd("ZREM").arg(&key).arg(id);
        pipe.cmd("HDEL")
            .arg(format!("{key}:Q"))
            .arg(id)
            .arg(format!("{id}:rc"))
            .arg(format!("{id}:fr"))
            .ignore();
    }
    let removed: Vec<u64> = link
        .query_pipe(&format!("deleting letters of {queue}"), &pipe)
        .await?;
    Ok(removed.into_iter().map(|removed| removed == 1).collect())
}

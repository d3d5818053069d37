//! `dlq replay`: a sink's dead letters sent through the sink again once their cause is fixed.
//!
//! Each letter becomes a unit of its own, whose id derives from the letter's id
//! ([`replay_unit_id`]), and is mapped and written exactly as a consumer writes a unit (the
//! consumer's own functions and retry policy), under the job's lock and with its fencing
//! token, so a replay never races a run of the job. What fails again goes back to the queue
//! with its new reason, under an id derived from the replay unit's; the old letter is deleted
//! only after its replay landed or was dead-lettered again.
//!
//! **One unit per letter** is what keeps a replay exactly-once. Sinks recognise a unit they
//! applied by its id, in the same transaction as its rows. A unit's id must therefore name the
//! same records every time it is written, whatever else happens: if letters were grouped (all
//! selected letters, or a page of them, in one unit), a replay of a subset (`--id`), or a
//! replay run again after one was killed between writing a unit and deleting its letters, would
//! group the records differently, under new ids, and land the ones already written a second
//! time. A unit made of one letter and named by it lands once, however often, in whatever
//! company, and however interrupted it is replayed. (A whole-unit letter replays whole: it is
//! one letter.)

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tracing::Instrument;

use serde_json::value::RawValue;

use super::read::Scan;
use super::{DlqError, Kind, Letter};
use crate::config::{JobConfig, SinkConfig};
use crate::metrics::SinkStats;
use crate::queue::{Queues, RedisLink, SinkQueues};
use crate::sink::{self, Fence, Sink, SinkError, unit_failures};
use crate::supervisor::JobLock;
use crate::unit::DataUnit;
use crate::worker::{Writer, dead_letter, map_unit, whole_unit_dead_letter, write_with_retries};

/// The id of the unit that replays the record of letter `letter_id` (`<unit id>#<index>`). A
/// prefix, not a suffix: a replay unit must never look like a unit of a run
/// (`<job>/<run>/...`), which that run's summary would count as its own. A letter of a replay
/// unit that failed again is `replay/<letter id>#0`, and its replay `replay/replay/<letter
/// id>#0`: each round has ids of its own. A unit dead-lettered whole keeps its own id instead
/// (see [`replay_unit`]).
pub(crate) fn replay_unit_id(letter_id: &str) -> String {
    format!("replay/{letter_id}")
}

/// What to replay.
pub(crate) struct Replay<'a> {
    /// The job.
    pub(crate) config: &'a JobConfig,
    /// The sink whose letters are replayed.
    pub(crate) sink: &'a SinkConfig,
    /// Its Redis.
    pub(crate) link: Arc<RedisLink>,
    /// Only the letters with these ids (all when empty).
    pub(crate) ids: &'a [String],
    /// Letters read per page.
    pub(crate) page: usize,
}

/// What a replay did, also when it stopped half way.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ReplayReport {
    /// Letters replayed (landed or dead-lettered again) and deleted.
    pub(crate) letters: u64,
    /// Records in them.
    pub(crate) records: u64,
    /// Records that landed.
    pub(crate) landed: u64,
    /// Of those, records an earlier, interrupted replay had already landed (the sink's ledger
    /// knew their unit): not written again.
    pub(crate) landed_before: u64,
    /// Records dead-lettered again, with their new reasons.
    pub(crate) dead_again: u64,
    /// Letters that cannot be replayed, and why; they stay in the queue.
    pub(crate) skipped: Vec<(String, String)>,
    /// Ids asked for with `--id` that are not in the queue.
    pub(crate) missing: Vec<String>,
}

/// A letter id's fate so far in this replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Replayed,
    Skipped,
}

/// Replays the letters `replay` selects, adding to `report` as it goes. Takes the job's lock
/// for the whole replay (a run of the job refuses to start meanwhile, and a replay refuses to
/// start while one runs), and readies the sink with the lock's fencing token first.
pub(crate) async fn replay(replay: &Replay<'_>, report: &mut ReplayReport) -> Result<(), DlqError> {
    let job = &replay.config.job.name;
    let link = &replay.link;
    let mut lock = JobLock::acquire(link, job).await?;
    tracing::debug!(fencing_token = lock.fencing_token, "holding the job lock");
    let sink = sink::from_config(replay.sink);
    let result = async {
        let fence = prepare_fenced(&mut lock, link, job, sink.as_ref()).await?;
        let lost = || DlqError::LockLost {
            job: job.to_string(),
        };
        // A replay's write latencies are not a run's: counted here, reported nowhere.
        let stats = SinkStats::new(&replay.sink.name);
        let writer = Writer {
            sink: sink.as_ref(),
            stats: &stats,
        };
        lock.holding(link, replay_letters(replay, writer, &fence, report), lost)
            .await
    }
    .await;
    if let Err(error) = lock.release(link).await {
        tracing::warn!(%error, "could not release the job lock; it expires by itself");
    }
    result
}

/// Readies the sink under the lock, recording the lock's fencing token in it, exactly as a run
/// does: a sink that saw a higher token than this Redis ever granted moves the counter past it
/// once; a token a newer holder took stands, and the replay stops.
async fn prepare_fenced(
    lock: &mut JobLock,
    link: &RedisLink,
    job: &str,
    sink: &dyn Sink,
) -> Result<Fence, DlqError> {
    let mut raised = false;
    loop {
        let fence = Fence {
            job: job.to_string(),
            token: lock.fencing_token,
        };
        match sink.prepare(Some(&fence)).await {
            Ok(()) => return Ok(fence),
            Err(SinkError::Fenced { highest, .. }) if !raised => {
                raised = lock.raise_fence(link, job, highest).await?;
                if !raised {
                    return Err(DlqError::LockLost {
                        job: job.to_string(),
                    });
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
}

async fn replay_letters(
    replay: &Replay<'_>,
    writer: Writer<'_>,
    fence: &Fence,
    report: &mut ReplayReport,
) -> Result<(), DlqError> {
    let queue = SinkQueues::new(&replay.config.job.name, &replay.sink.name).dead;
    let queues = Queues::new(replay.link.clone());
    let wanted: HashSet<&str> = replay.ids.iter().map(String::as_str).collect();
    let mut fates: HashMap<String, Fate> = HashMap::new();
    let mut scan = Scan::start(&replay.link, &queue, replay.page).await?;
    while let Some(letters) = scan.next_page().await? {
        for letter in letters {
            if !wanted.is_empty() && !wanted.contains(letter.id.as_str()) {
                continue;
            }
            match fates.get(&letter.id) {
                // Another copy of a letter already replayed: its replay is done.
                Some(Fate::Replayed) => queues.ack(&queue, &letter.message_id).await?,
                Some(Fate::Skipped) => {}
                None => {
                    let fate =
                        replay_one(replay, writer, fence, &queues, &queue, &letter, report).await?;
                    fates.insert(letter.id, fate);
                }
            }
        }
    }
    report.missing = replay
        .ids
        .iter()
        .filter(|id| !fates.contains_key(id.as_str()))
        .cloned()
        .collect();
    Ok(())
}

/// Replays one letter: write its unit, send what failed back to the queue with the new
/// reasons, then delete the letter. Killed anywhere, a replay run again repeats only what is
/// safe to repeat: the sink's ledger knows the unit (and returns its recorded failures), and
/// new letters sent twice are one letter to every tool.
async fn replay_one(
    replay: &Replay<'_>,
    writer: Writer<'_>,
    fence: &Fence,
    queues: &Queues,
    queue: &str,
    letter: &Letter,
    report: &mut ReplayReport,
) -> Result<Fate, DlqError> {
    let unit = match replay_unit(letter) {
        Ok(unit) => unit,
        Err(why) => {
            report.skipped.push((letter.id.clone(), why));
            return Ok(Fate::Skipped);
        }
    };
    let config = replay.sink;
    let span =
        tracing::info_span!("replay", letter = %letter.id, unit = %unit.id, sink = %config.name);
    // Attached to the future, not entered across its awaits (see the consumer).
    async {
        let mut batch = map_unit(config, &unit, writer.sink.reads_fields());
        batch.fence = Some(fence.clone());
        let batch = Arc::new(batch);
        let dead_letters = match write_with_retries(writer, batch.clone()).await {
            Ok(outcome) => {
                let failures = unit_failures(&batch.failures, outcome.failures);
                report.landed += outcome.written;
                if !outcome.fresh {
                    report.landed_before += outcome.written;
                }
                for column in &outcome.columns_added {
                    tracing::info!(column, "added a column for a new field");
                }
                report.dead_again += failures.len() as u64;
                failures
                    .iter()
                    .map(|failure| dead_letter(&config.name, &unit, failure))
                    .collect()
            }
            // The sink is unavailable (after the retry policy's attempts) or fenced: stop, and
            // leave this letter and the rest where they are.
            Err(error) if error.is_transient() || error.is_fenced() => return Err(error.into()),
            // A run's consumer would try again and then dead-letter the unit whole with this
            // reason; a replay is that last attempt.
            Err(error) => {
                report.dead_again += unit.input_count();
                let reason = format!("replay: the write failed: {error}");
                let envelope = unit.encode(replay.config.queue.compress_above);
                vec![whole_unit_dead_letter(
                    &envelope,
                    &config.name,
                    &unit.id,
                    &reason,
                    1,
                )]
            }
        };
        tracing::debug!(dead_again = dead_letters.len(), "replayed");
        queues.send_batch(queue, &dead_letters).await?;
        queues.ack(queue, &letter.message_id).await?;
        report.letters += 1;
        report.records += unit.input_count();
        Ok(Fate::Replayed)
    }
    .instrument(span)
    .await
}

/// The unit that replays `letter`, or why it cannot be replayed.
///
/// A unit dead-lettered whole replays under **its own id**, never a new one: a consumer may
/// have committed it at the sink and died before recording it (then `max_receives` cut-short
/// attempts sent it here), and a replay that wrote it whole again may have been killed between
/// dead-lettering it again and deleting this letter. In both cases the sink's ledger knows the
/// id and writes nothing twice; under a new id the same records would land again.
fn replay_unit(letter: &Letter) -> Result<DataUnit, String> {
    match letter.kind {
        Kind::Record => {
            let id = replay_unit_id(&letter.id);
            let text = letter.record_text().unwrap_or("null").to_string();
            let record = RawValue::from_string(text).map_err(|e| e.to_string())?;
            let field = |name: &str| {
                letter
                    .context
                    .get(name)
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let line = letter
                .context
                .get("line")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            Ok(DataUnit {
                id,
                source: field("source"),
                origin: field("origin"),
                first_line: line,
                last_line: line,
                records: vec![record],
                lines: Vec::new(),
                rejects: Vec::new(),
            })
        }
        Kind::Unit => match letter.unit() {
            Some(Ok(unit)) => Ok(unit),
            Some(Err(error)) => Err(format!("the unit cannot be read: {error}")),
            None => Err("not a unit".into()),
        },
        Kind::Raw => Err(
            "input that never became a record: there is nothing to send again (export it, fix \
             it at its source and load it again, then purge the letter)"
                .into(),
        ),
        Kind::Unreadable => Err(
            "not a record or unit stevedore can read (see `dlq show`); purge it when done".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn letter(body: serde_json::Value) -> Letter {
        Letter::parse("m".into(), 1, serde_json::to_vec(&body).unwrap())
    }

    #[test]
    fn dlq_replay_unit_of_a_record_is_named_by_its_letter_and_keeps_where_it_came_from() {
        let record = letter(json!({"record": {"id": 17},
            "dead_letter": {"id": "j/r/s/0.1#3", "source": "orders", "origin": "a.jsonl",
                            "index": 3, "line": 21, "reason": "bad"}}));
        let unit = replay_unit(&record).unwrap();
        assert_eq!(unit.id, "replay/j/r/s/0.1#3");
        assert_eq!(
            (unit.source.as_str(), unit.origin.as_str()),
            ("orders", "a.jsonl")
        );
        assert_eq!(unit.record_line(0), 21);
        assert_eq!(unit.record_values(), [json!({"id": 17})]);
        // The same letter always makes the same unit: a second replay is recognised.
        assert_eq!(replay_unit(&record).unwrap().id, unit.id);
    }

    #[test]
    fn dlq_replay_unit_of_a_whole_unit_keeps_every_record_and_reject() {
        let whole = letter(
            json!({"v": 1, "id": "j/r/s/0.2", "source": "s", "origin": "o",
            "first_line": 1, "last_line": 3, "count": 2, "records": [{"a": 1}, {"a": 2}],
            "rejects": [{"line": 2, "raw": "nope", "reason": "invalid JSON"}],
            "dead_letter": {"id": "j/r/s/0.2", "attempts": 5, "reason": "locked"}}),
        );
        let unit = replay_unit(&whole).unwrap();
        assert_eq!(
            unit.id, "j/r/s/0.2",
            "a whole unit replays under its own id"
        );
        assert_eq!(unit.input_count(), 3);
        let raw = letter(json!({"raw": "{oops", "dead_letter": {"id": "j/r/s/0.2#5"}}));
        assert!(
            replay_unit(&raw)
                .unwrap_err()
                .contains("never became a record")
        );
    }
}

//! The consumer loop, one task per sink: receive units in batches, and for each: map its
//! records, write them, send what failed to the dead-letter queue with reasons, record the
//! counts, acknowledge.
//!
//! Up to [`Sink::concurrency`](crate::sink::Sink::concurrency) units of a sink are written at
//! once, each in its own task; the consumer stops taking units when all are busy.
//!
//! Each step is safe to repeat: a unit already recorded is only acknowledged; a unit already
//! written is recognised by the sink's ledger; counts are stored per unit id. So a consumer may
//! die anywhere and its unit, redelivered after the visibility timeout, lands exactly once.
//!
//! A unit goes whole to the dead-letter queue after `max_receives` real write attempts, counted
//! per unit in Redis when an attempt starts. RSMQ's own receive count is not used for that: it
//! also counts deliveries that were never attempted (units prefetched by a consumer that was
//! then stopped or killed), which would dead-letter healthy units after a few interruptions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::Retryable;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::{Finish, WorkerContext, WorkerError};
use crate::clock::now_ms;
use crate::config::SinkConfig;
use crate::mapping::Row;
use crate::metrics::SinkStats;
use crate::queue::{Delivery, Queues, SinkQueues};
use crate::retry;
use crate::run_state::UnitDone;
use crate::sink::{self, Batch, Failure, Sink, WriteOutcome};
use crate::unit::DataUnit;

/// How long an idle consumer waits before polling an empty queue again, at most.
const MAX_IDLE_WAIT: Duration = Duration::from_millis(100);

/// Units received per call (at least the sink's concurrency); they are kept hidden until each
/// is done, and the ones still waiting their turn are released at once on shutdown.
const PREFETCH: u32 = 4;

/// Runs consumer `context.id`: one task per sink, until every queue is drained or shutdown.
pub async fn run_consumer(context: WorkerContext) -> Result<Finish, WorkerError> {
    let mut tasks = tokio::task::JoinSet::new();
    for sink_config in context.config.sinks.clone() {
        let context = context.clone();
        tasks.spawn(async move { consume_sink(context, sink_config).await });
    }
    let mut finish = Finish::Done;
    while let Some(result) = tasks.join_next().await {
        match result.expect("consumer tasks do not panic") {
            Ok(Finish::Done) => {}
            Ok(Finish::Interrupted) => finish = Finish::Interrupted,
            Err(error) => return Err(error),
        }
    }
    Ok(finish)
}

async fn consume_sink(context: WorkerContext, config: SinkConfig) -> Result<Finish, WorkerError> {
    let queues = Arc::new(SinkQueues::new(&context.config.job.name, &config.name));
    let config = Arc::new(config);
    let sink = sink::from_config(&config);
    let stats = Arc::new(SinkStats::new(&config.name));
    let reporter = tokio::spawn(report_stats(context.clone(), sink.clone(), stats.clone()));
    let result = consume_units(&context, config, sink.clone(), queues, stats.clone()).await;
    reporter.abort();
    // The last second's numbers, unless Redis is away (they are for dashboards only).
    let last = stats.flush(&context.state, sink.throttled_requests());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), last).await;
    result
}

/// Adds the sink's write metrics to the run's telemetry once a heartbeat (see [`SinkStats`]).
async fn report_stats(context: WorkerContext, sink: Arc<dyn Sink>, stats: Arc<SinkStats>) {
    loop {
        tokio::time::sleep(super::HEARTBEAT_INTERVAL).await;
        stats.flush(&context.state, sink.throttled_requests()).await;
    }
}

/// Receives and writes units of one sink until its queue is drained or shutdown.
async fn consume_units(
    context: &WorkerContext,
    config: Arc<SinkConfig>,
    sink: Arc<dyn Sink>,
    queues: Arc<SinkQueues>,
    stats: Arc<SinkStats>,
) -> Result<Finish, WorkerError> {
    let concurrency = sink.concurrency().max(1);
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut running = JoinSet::new();
    let mut shutdown = context.shutdown.clone();
    let visibility = context.config.queue.visibility_timeout;
    let mut idle = Duration::from_millis(5);
    loop {
        collect_finished(&mut running)?;
        if shutdown.is_set() {
            return finish_running(running).await;
        }
        let deliveries = context
            .queues
            .receive_batch(&queues.units, visibility, PREFETCH.max(concurrency as u32))
            .await?;
        if deliveries.is_empty() {
            if running.is_empty()
                && context.state.liveness().draining().await?
                && context.queues.depth(&queues.units).await? == 0
            {
                return Ok(Finish::Done);
            }
            shutdown.sleep(idle).await;
            idle = (idle * 2).min(MAX_IDLE_WAIT);
            continue;
        }
        idle = Duration::from_millis(5);
        let hidden = HiddenUnits::new(deliveries.iter().map(|d| d.message_id.clone()));
        let keeper = keep_hidden(
            context.queues.clone(),
            queues.units.clone(),
            hidden.clone(),
            visibility,
        );
        let mut deliveries = deliveries.into_iter();
        while let Some(delivery) = deliveries.next() {
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => Some(permit.expect("never closed")),
                _ = shutdown.wait() => None,
            };
            let Some(permit) = permit else {
                // The units not started yet are given back at once; the keeper goes on for
                // the ones being written until they are done.
                for unstarted in std::iter::once(delivery).chain(deliveries) {
                    hidden.done(&unstarted.message_id);
                    context
                        .queues
                        .extend(&queues.units, &unstarted.message_id, Duration::ZERO)
                        .await?;
                }
                return finish_running(running).await;
            };
            let (context, config, queues, sink, hidden, stats) = (
                context.clone(),
                config.clone(),
                queues.clone(),
                sink.clone(),
                hidden.clone(),
                stats.clone(),
            );
            running.spawn(async move {
                let kept = hidden.until_done(&delivery.message_id);
                let writer = Writer {
                    sink: sink.as_ref(),
                    stats: &stats,
                };
                handle(&context, &config, &queues, writer, delivery, &kept, permit).await
            });
            if let Err(error) = collect_finished(&mut running) {
                keeper.abort();
                return Err(error);
            }
        }
    }
}

/// Takes the results of units that finished; the first error stops the consumer.
fn collect_finished(running: &mut JoinSet<Result<(), WorkerError>>) -> Result<(), WorkerError> {
    while let Some(result) = running.try_join_next() {
        result.expect("unit tasks do not panic")?;
    }
    Ok(())
}

/// Lets the units being written finish (a write is never cut off half way), then reports
/// the consumer as interrupted.
async fn finish_running(
    mut running: JoinSet<Result<(), WorkerError>>,
) -> Result<Finish, WorkerError> {
    while let Some(result) = running.join_next().await {
        result.expect("unit tasks do not panic")?;
    }
    Ok(Finish::Interrupted)
}

/// The units of one received batch that are not done yet: waiting for their turn or being
/// written. One keeper extends them all until the last is done, so a unit has no moment
/// between waiting and being written, or between being written and being acknowledged, in
/// which it could become visible to another consumer.
#[derive(Clone)]
struct HiddenUnits(Arc<Mutex<Vec<String>>>);

impl HiddenUnits {
    fn new(ids: impl Iterator<Item = String>) -> HiddenUnits {
        HiddenUnits(Arc::new(Mutex::new(ids.collect())))
    }

    fn current(&self) -> Vec<String> {
        self.0.lock().expect("not poisoned").clone()
    }

    /// The keeper leaves `id` alone from now on.
    fn done(&self, id: &str) {
        self.0
            .lock()
            .expect("not poisoned")
            .retain(|kept| kept != id);
    }

    /// A guard for one unit: kept hidden until [`KeptHidden::done`] or until it is dropped.
    fn until_done(&self, id: &str) -> KeptHidden {
        KeptHidden {
            units: self.clone(),
            id: id.to_string(),
        }
    }
}

/// One unit's place in its batch's [`HiddenUnits`].
struct KeptHidden {
    units: HiddenUnits,
    id: String,
}

impl KeptHidden {
    /// Called right before the unit's last queue operation (acknowledge, release, dead-letter),
    /// so the keeper does not extend a unit that is gone.
    fn done(&self) {
        self.units.done(&self.id);
    }
}

impl Drop for KeptHidden {
    fn drop(&mut self) {
        self.done();
    }
}

/// Keeps the batch's units hidden, extending them every half visibility timeout, until every
/// one is done (or the keeper is aborted).
fn keep_hidden(
    queues: Queues,
    queue: String,
    units: HiddenUnits,
    visibility: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(visibility / 2).await;
            let current = units.current();
            if current.is_empty() {
                return;
            }
            for message_id in current {
                if let Err(error) = queues.extend(&queue, &message_id, visibility).await {
                    tracing::warn!(%error, "could not extend a unit's visibility");
                }
            }
        }
    })
}

async fn handle(
    context: &WorkerContext,
    config: &SinkConfig,
    queues: &SinkQueues,
    writer: Writer<'_>,
    delivery: Delivery,
    kept: &KeptHidden,
    permit: OwnedSemaphorePermit,
) -> Result<(), WorkerError> {
    let unit = match DataUnit::decode(&delivery.body) {
        Ok(unit) => unit,
        Err(error) => {
            let id = DataUnit::peek_id(&delivery.body).unwrap_or_else(|| "?".into());
            tracing::error!(sink = %config.name, unit = %id, %error, "undecodable unit moved to the dead-letter queue");
            let reason = format!("the unit cannot be read: {error}");
            let body = whole_unit_dead_letter(&delivery.body, &config.name, &id, &reason, 1);
            kept.done();
            context
                .queues
                .move_message_with_body(&queues.units, &delivery.message_id, &queues.dead, &body)
                .await?;
            return Ok(());
        }
    };
    let span = tracing::info_span!("unit", id = %unit.id, sink = %config.name, receives = delivery.receives);
    // The span is attached to the future, not entered: entering it across an await would
    // leave it current on the thread while other units' tasks run there.
    async {
        let Some(attempt) = context
            .state
            .ledger()
            .begin_attempt(&config.name, &unit.id)
            .await?
        else {
            tracing::debug!("already recorded; acknowledging");
            kept.done();
            return Ok(context
                .queues
                .ack(&queues.units, &delivery.message_id)
                .await?);
        };
        if attempt > context.config.queue.max_receives {
            let attempts = attempt - 1;
            let reason = match context
                .state
                .ledger()
                .last_error(&config.name, &unit.id)
                .await?
            {
                Some(error) => format!("{attempts} write attempt(s) failed; the last with: {error}"),
                None => format!(
                    "{attempts} write attempt(s) were cut short: the consumer writing the unit \
                     stopped or died each time (see the consumer logs)"
                ),
            };
            tracing::warn!(attempts, %reason, "moving the unit whole to the dead-letter queue");
            let body =
                whole_unit_dead_letter(&delivery.body, &config.name, &unit.id, &reason, attempts);
            kept.done();
            context
                .queues
                .move_message_with_body(&queues.units, &delivery.message_id, &queues.dead, &body)
                .await?;
            return Ok(());
        }
        let mut batch = map_unit(config, &unit, writer.sink.reads_fields());
        batch.fence = context.fence.clone();
        let batch = Arc::new(batch);
        let written = write_with_retries(writer, batch.clone()).await;
        // The sink is free for the next unit while this one's bookkeeping goes to Redis: the
        // permit bounds concurrent writes, and the two overlap instead of adding up.
        drop(permit);
        let outcome = match written {
            Ok(outcome) => outcome,
            Err(error) => {
                if error.is_fenced() {
                    writer.stats.fenced();
                    // Another run holds the job now: touch nothing more, not even the queue.
                    return Err(error.into());
                }
                // Kept for the unit's dead letter, should every attempt fail.
                context
                    .state
                    .ledger()
                    .note_failed_attempt(&config.name, &unit.id, &error.to_string())
                    .await?;
                if !error.is_transient() {
                    return Err(error.into());
                }
                let planned = retry::REDELIVERY.wait(attempt.try_into().unwrap_or(u32::MAX));
                let retry_in =
                    retry::honour_hint(error.retry_after(), Some(planned)).unwrap_or(planned);
                tracing::warn!(%error, attempt, ?retry_in, "write failed; releasing the unit for a later attempt");
                kept.done();
                context
                    .queues
                    .extend(&queues.units, &delivery.message_id, retry_in)
                    .await?;
                return Ok(());
            }
        };
        let WriteOutcome {
            fresh,
            written,
            failures,
            columns_added,
        } = outcome;
        if !columns_added.is_empty() {
            context
                .state
                .ledger()
                .record_columns_added(&config.name, &unit.id, &columns_added)
                .await?;
        }
        let failures = sink::unit_failures(&batch.failures, failures);
        let dead_letters: Vec<Vec<u8>> = failures
            .iter()
            .map(|failure| dead_letter(&config.name, &unit, failure))
            .collect();
        context
            .queues
            .send_batch(&queues.dead, &dead_letters)
            .await?;
        let done = UnitDone {
            unit: &unit.id,
            written,
            dead: failures.len() as u64,
            fresh,
        };
        kept.done();
        context
            .state
            .ledger()
            .record_unit_and_ack(&config.name, &done, &queues.units, &delivery.message_id)
            .await?;
        tracing::debug!(written, dead = failures.len(), fresh, "unit done");
        Ok::<(), WorkerError>(())
    }
    .instrument(span)
    .await
}

/// Maps every record of `unit` for the sink; records that do not map and rejected lines
/// become failures with their reasons. A sink that never reads fields and has no
/// `[sink.map]` (`reads_fields` false) gets an empty row per record, none parsed. Public for
/// the sink benchmarks, which measure the consumer's path without a queue.
pub fn map_unit(config: &SinkConfig, unit: &DataUnit, reads_fields: bool) -> Batch {
    let mut rows = Vec::with_capacity(unit.records.len());
    let mut failures = Vec::new();
    let parse = reads_fields || !config.map.is_passthrough();
    for (index, record) in unit.records.iter().enumerate() {
        if !parse {
            rows.push((index, Row::empty()));
            continue;
        }
        match config.map.apply_raw(record) {
            Ok(row) => rows.push((index, row)),
            Err(error) => failures.push(Failure {
                index,
                reason: error.to_string(),
            }),
        }
    }
    for (offset, reject) in unit.rejects.iter().enumerate() {
        failures.push(Failure {
            index: unit.records.len() + offset,
            reason: reject.reason.clone(),
        });
    }
    Batch {
        unit_id: unit.id.clone(),
        rows,
        failures,
        fence: None,
    }
}

/// A sink and the numbers kept about its writes.
#[derive(Clone, Copy)]
pub(crate) struct Writer<'a> {
    /// Where the unit goes.
    pub(crate) sink: &'a dyn Sink,
    /// Where its write latency and fencing rejections are counted.
    pub(crate) stats: &'a SinkStats,
}

/// Writes a unit with the one retry policy ([`retry::SINK_WRITE`]): transient errors are
/// tried again, after the server's retry-after when it gave one and that is longer. Also the
/// write of `stevedore dlq replay`, so a replay writes exactly as a run does.
pub(crate) async fn write_with_retries(
    writer: Writer<'_>,
    batch: Arc<Batch>,
) -> Result<WriteOutcome, sink::SinkError> {
    let attempt = || async {
        let started = std::time::Instant::now();
        let result = writer.sink.write(batch.clone()).await;
        writer.stats.observe_write(started.elapsed());
        result
    };
    attempt
        .retry(retry::SINK_WRITE.backoff())
        .when(sink::SinkError::is_transient)
        .adjust(|error, planned| retry::honour_hint(error.retry_after(), planned))
        .notify(|error, wait| tracing::warn!(%error, ?wait, "transient write error; retrying"))
        .await
}

/// The dead-letter message for a unit that goes there whole: its envelope (which still
/// decodes as the unit, so it can be replayed) with a `dead_letter` object saying why. Bytes
/// that are not an envelope are kept as `raw` text.
pub(crate) fn whole_unit_dead_letter(
    body: &[u8],
    sink: &str,
    unit: &str,
    reason: &str,
    attempts: u64,
) -> Vec<u8> {
    let context = json!({
        "id": unit,
        "sink": sink,
        "unit": unit,
        "reason": reason,
        "attempts": attempts,
        "at_ms": now_ms(),
    });
    let context = serde_json::value::to_raw_value(&context).expect("JSON values serialize");
    let mut message = serde_json::from_slice::<BTreeMap<String, Box<RawValue>>>(body)
        .unwrap_or_else(|_| {
            let raw = Value::String(String::from_utf8_lossy(body).into_owned());
            let raw = serde_json::value::to_raw_value(&raw).expect("JSON values serialize");
            BTreeMap::from([("raw".to_string(), raw)])
        });
    message.insert("dead_letter".into(), context);
    serde_json::to_vec(&message).expect("dead letters serialize")
}

/// The dead-letter message for one failed entry of a unit: where it came from, why it failed,
/// and the record (or raw line) itself, so it can be fixed and replayed.
pub(crate) fn dead_letter(sink: &str, unit: &DataUnit, failure: &Failure) -> Vec<u8> {
    let mut context = json!({
        "id": format!("{}#{}", unit.id, failure.index),
        "sink": sink,
        "unit": unit.id,
        "source": unit.source,
        "origin": unit.origin,
        "index": failure.index,
        "reason": failure.reason,
        "at_ms": now_ms(),
    });
    let letter = match unit.records.get(failure.index) {
        Some(record) => {
            context["line"] = Value::from(unit.record_line(failure.index));
            // The record's text as the unit carries it: numbers keep their spelling.
            Letter {
                record: Some(record.as_ref()),
                raw: None,
                dead_letter: context,
            }
        }
        None => {
            let reject = &unit.rejects[failure.index - unit.records.len()];
            context["line"] = Value::from(reject.line);
            Letter {
                record: None,
                raw: Some(&reject.raw),
                dead_letter: context,
            }
        }
    };
    serde_json::to_vec(&letter).expect("dead letters serialize")
}

/// A dead-letter message: the record (or the raw input that never became one) and where it
/// came from.
#[derive(serde::Serialize)]
struct Letter<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<&'a str>,
    dead_letter: Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unit::{Reject, record};
    use serde_json::json;

    fn sinks() -> Vec<SinkConfig> {
        let text = r#"
            [job]
            name = "j"
            [redis]
            url = "redis://127.0.0.1:1"
            [[source]]
            name = "s"
            kind = "generator"
            count = 1
            [[sink]]
            name = "counted"
            kind = "blackhole"
            [[sink]]
            name = "mapped"
            kind = "blackhole"
            [sink.map]
            id = { from = "id", type = "integer", required = true }
        "#;
        crate::job::parse(text, std::path::Path::new("job.toml"), &|_| None)
            .expect("the job parses")
            .sinks
    }

    fn unit() -> DataUnit {
        DataUnit {
            id: "j/r/s/0.0".into(),
            source: "s".into(),
            origin: "generator".into(),
            first_line: 1,
            last_line: 2,
            records: vec![record(&json!({"id": 1})), record(&json!({"name": "no id"}))],
            lines: Vec::new(),
            rejects: Vec::new(),
        }
    }

    #[test]
    fn consumer_blackhole_without_a_map_parses_no_record_but_a_map_still_applies() {
        let sinks = sinks();
        // A sink that reads no fields, without a map: one empty row per record, none parsed
        // (so the record without `id` is not a failure: nothing asked for it).
        let counted = map_unit(&sinks[0], &unit(), false);
        assert_eq!(counted.rows.len(), 2);
        assert!(counted.rows.iter().all(|(_, row)| row.is_empty()));
        assert!(counted.failures.is_empty());
        // With a map, the map is the point: it is applied, and its failures stand.
        let mapped = map_unit(&sinks[1], &unit(), false);
        assert_eq!(mapped.rows.len(), 1);
        assert_eq!(mapped.failures.len(), 1);
        assert!(
            mapped.failures[0].reason.contains("id"),
            "{:?}",
            mapped.failures
        );
        // A sink that reads fields gets real rows.
        let read = map_unit(&sinks[0], &unit(), true);
        assert_eq!(read.rows[0].1.get("id"), Some(&json!(1)));
    }

    #[test]
    fn consumer_dead_letter_carries_the_record_as_the_unit_holds_it() {
        let text = r#"{"id": 123456789012345678901234567890, "v": 1e5}"#;
        let mut unit = unit();
        unit.records = vec![serde_json::value::RawValue::from_string(text.into()).unwrap()];
        unit.rejects = vec![Reject {
            line: 9,
            raw: "{broken".into(),
            reason: "invalid JSON".into(),
        }];
        let failure = |index| Failure {
            index,
            reason: "refused".into(),
        };
        let letter = String::from_utf8(dead_letter("local", &unit, &failure(0))).unwrap();
        // Not rounded through a float, not respelled.
        assert!(
            letter.starts_with(&format!(r#"{{"record":{text},"dead_letter":{{"#)),
            "{letter}"
        );
        let letter: Value =
            serde_json::from_slice(&dead_letter("local", &unit, &failure(1))).unwrap();
        assert_eq!(letter["raw"], "{broken");
        assert_eq!(letter["dead_letter"]["line"], 9);
        assert!(letter.get("record").is_none());
    }
}

//! The producer loop: claim a work item, stream it into data units on a blocking thread, send
//! the units in batches to every sink's queue, checkpoint, and mark the item done.
//!
//! A producer restarted mid-item resumes the item it held; units already sent (per the
//! checkpoint) are read past but not sent again. Any unit sent twice anyway (a crash between
//! send and checkpoint) has the same deterministic id and is absorbed by the sinks.

use std::time::Duration;

use tokio::sync::mpsc;

use super::{Finish, WorkerContext, WorkerError};
use crate::config::PlannedBy;
use crate::queue::SinkQueues;
use crate::run_state::ResumePoint;
use crate::source::{self, Entry, OpenContext, SourceError, WorkItem};
use crate::unit::{OutgoingUnit, RecordArray, Reject, unit_id};

/// Units sent to Redis in one batched call.
const SEND_BATCH: usize = 16;

/// A unit ready to send: its position in the item, its wire bytes and how many inputs it holds.
struct Cut {
    chunk: u64,
    bytes: Vec<u8>,
    inputs: u64,
}

/// What the reading thread hands the sending loop.
enum Piece {
    /// A unit.
    Unit(Cut),
    /// Every unit before `chunk` was handed over; a new reader may start at `position`
    /// (the sending loop knows how many records those units held).
    Resumable {
        /// The number of the next unit.
        chunk: u64,
        /// The source's note of where to go on from.
        position: String,
    },
}

/// Runs producer `context.id` until every work item is taken or shutdown is asked for.
pub async fn run_producer(context: WorkerContext) -> Result<Finish, WorkerError> {
    let queues: Vec<SinkQueues> = context
        .config
        .sinks
        .iter()
        .map(|sink| SinkQueues::new(&context.config.job.name, &sink.name))
        .collect();
    loop {
        if context.shutdown.is_set() {
            return Ok(Finish::Interrupted);
        }
        let Some(item) = context.state.items().claim(context.id).await? else {
            return Ok(Finish::Done);
        };
        tracing::info!(source = %item.source, origin = %item.origin, part = %item.part(), "work item claimed");
        match produce_item(&context, &queues, &item).await? {
            Finish::Done => {}
            Finish::Interrupted => return Ok(Finish::Interrupted),
        }
    }
}

/// Where the sending loop of one item is.
struct Sending<'a> {
    context: &'a WorkerContext,
    queues: &'a [SinkQueues],
    item: &'a WorkItem,
    batch: Vec<Vec<u8>>,
    batch_inputs: u64,
    next_chunk: u64,
    resume: Option<ResumePoint>,
}

async fn produce_item(
    context: &WorkerContext,
    queues: &[SinkQueues],
    item: &WorkItem,
) -> Result<Finish, WorkerError> {
    let items = context.state.items();
    let already_sent = items.checkpoint(item).await?;
    // A resume point is never past the checkpoint: both are written together, the point
    // only once its units were handed over.
    let resume = items.resume_point(item).await?;
    let (sender, mut receiver) = mpsc::channel::<Result<Piece, SourceError>>(SEND_BATCH * 2);
    let planned_by = planned_by(context).await?;
    let mut inputs = resume.as_ref().map_or(0, |point| point.read);
    let mut sending = Sending {
        context,
        queues,
        item,
        batch: Vec::with_capacity(SEND_BATCH),
        batch_inputs: 0,
        next_chunk: already_sent,
        resume: None,
    };
    let reader = match spawn_reader(context, item, planned_by, resume.as_ref(), sender) {
        Ok(reader) => reader,
        Err(WorkerError::Source(error)) if error.fails_item_only() => {
            return fail_item(&mut sending, inputs, &error).await;
        }
        Err(error) => return Err(error),
    };
    while let Some(piece) = receiver.recv().await {
        let cut = match piece {
            Ok(Piece::Unit(cut)) => cut,
            Ok(Piece::Resumable { chunk, position }) => {
                // A page ended: its units go out and the point is recorded now, not with the
                // next page's (which may take a while to come), so that a producer that dies
                // reads no finished page again. The units before it held `inputs` records.
                sending.resume = Some(ResumePoint {
                    chunk,
                    read: inputs,
                    position,
                });
                if sending.batch.is_empty() {
                    sending.save_checkpoint().await?;
                } else if !sending.flush().await? {
                    stop_reading(receiver, reader).await;
                    return Ok(Finish::Interrupted);
                }
                continue;
            }
            Err(error) if error.fails_item_only() => {
                stop_reading(receiver, reader).await;
                return fail_item(&mut sending, inputs, &error).await;
            }
            Err(SourceError::Interrupted { .. }) => {
                stop_reading(receiver, reader).await;
                return Ok(Finish::Interrupted);
            }
            Err(error) => return Err(error.into()),
        };
        inputs += cut.inputs;
        if cut.chunk < already_sent {
            continue;
        }
        sending.next_chunk = cut.chunk + 1;
        sending.batch.push(cut.bytes);
        sending.batch_inputs += cut.inputs;
        if (sending.batch.len() >= SEND_BATCH || receiver.is_empty()) && !sending.flush().await? {
            stop_reading(receiver, reader).await;
            return Ok(Finish::Interrupted);
        }
    }
    if !sending.flush().await? {
        return Ok(Finish::Interrupted);
    }
    if let Err(error) = reader.await {
        // The reader thread panicked: the item is not done, whatever was counted.
        return Err(WorkerError::Reader(error.to_string()));
    }
    items.complete(context.id, item, inputs).await?;
    tracing::info!(source = %item.source, origin = %item.origin, part = %item.part(), records = inputs, units = sending.next_chunk, "work item done");
    Ok(Finish::Done)
}

/// Stops the reading thread (it stops at its next send) and waits for it to end.
async fn stop_reading(
    receiver: mpsc::Receiver<Result<Piece, SourceError>>,
    reader: tokio::task::JoinHandle<()>,
) {
    drop(receiver);
    let _ = reader.await;
}

/// Sends what was read before `error`, then records the item failed: the job's other items
/// go on, and the run ends failed naming this one.
async fn fail_item(
    sending: &mut Sending<'_>,
    inputs: u64,
    error: &SourceError,
) -> Result<Finish, WorkerError> {
    if !sending.flush().await? {
        return Ok(Finish::Interrupted);
    }
    let item = sending.item;
    tracing::error!(source = %item.source, origin = %item.origin, part = %item.part(), %error, "work item failed; going on with the others");
    sending
        .context
        .state
        .items()
        .fail(sending.context.id, item, inputs, &error.to_string())
        .await?;
    Ok(Finish::Done)
}

impl Sending<'_> {
    /// Sends the batch to every sink queue once there is room, then checkpoints (with the
    /// latest resume point). False if shutdown came first (nothing was sent).
    async fn flush(&mut self) -> Result<bool, WorkerError> {
        if self.batch.is_empty() {
            return Ok(true);
        }
        let context = self.context;
        if !wait_for_room(context, self.queues, &mut context.shutdown.clone()).await? {
            return Ok(false);
        }
        for queue in self.queues {
            context.queues.send_batch(&queue.units, &self.batch).await?;
        }
        self.save_checkpoint().await?;
        self.batch.clear();
        Ok(true)
    }

    /// Records that units up to `next_chunk` are sent, with the latest resume point and
    /// the records they hold (live progress).
    async fn save_checkpoint(&mut self) -> Result<(), WorkerError> {
        let read = std::mem::take(&mut self.batch_inputs);
        self.context
            .state
            .items()
            .set_checkpoint(
                self.item,
                self.next_chunk,
                self.resume.take().as_ref(),
                read,
            )
            .await?;
        Ok(())
    }
}

/// Which build planned the run: units are cut as that build cut them, so that a resumed
/// run's unit ids keep meaning the same records (see [`PlannedBy`]).
async fn planned_by(context: &WorkerContext) -> Result<PlannedBy, WorkerError> {
    let basis = context.state.items().planned_basis().await?;
    // The supervisor accepted the run's basis before any producer started.
    Ok(basis
        .and_then(|basis| context.config.planned_by(&basis))
        .unwrap_or(PlannedBy::This))
}

/// Reads and encodes on a blocking thread, from `resume` if given (units numbered from
/// its chunk); stops when the receiver is dropped.
fn spawn_reader(
    context: &WorkerContext,
    item: &WorkItem,
    planned_by: PlannedBy,
    resume: Option<&ResumePoint>,
    sender: mpsc::Sender<Result<Piece, SourceError>>,
) -> Result<tokio::task::JoinHandle<()>, WorkerError> {
    let config = context.config.clone();
    let source_config = config
        .sources
        .iter()
        .find(|s| s.name == item.source)
        .cloned();
    let Some(source_config) = source_config else {
        tracing::error!(source = %item.source, "work item names a source that is not in the config; skipping it");
        return Ok(tokio::spawn(async {}));
    };
    let source = source::from_config(&source_config);
    let open = OpenContext {
        max_record_bytes: config.queue.max_record_bytes,
        job: config.job.name.clone(),
        link: Some(context.state.link().clone()),
        resume: resume.map(|point| point.position.clone()),
        stop: Some(context.shutdown.clone()),
        lines_as_values: planned_by.reads_lines_as_values(),
    };
    let unit_bytes = planned_by.unit_byte_budget(config.queue.max_record_bytes);
    let first_chunk = resume.map_or(0, |point| point.chunk);
    let entries = source.open(item, &open)?;
    let item = item.clone();
    let run = context.state.run_id().to_string();
    Ok(tokio::task::spawn_blocking(move || {
        let mut cutter = Cutter::new(
            &config.job.name,
            &run,
            &item,
            config.queue.unit_records,
            unit_bytes,
            config.queue.max_record_bytes,
        );
        cutter.chunk = first_chunk;
        let compress_above = config.queue.compress_above;
        let send = |piece: Result<Piece, SourceError>| sender.blocking_send(piece).is_ok();
        let cut = |unit: OutgoingUnit, cutter: &mut Cutter| {
            send(Ok(Piece::Unit(encode(unit, cutter, compress_above))))
        };
        for entry in entries {
            match entry {
                Ok(Entry::Resumable { position }) => {
                    // A page ends here: its unit is cut, and a new reader may start after it.
                    if let Some(unit) = cutter.finish()
                        && !cut(unit, &mut cutter)
                    {
                        return;
                    }
                    let chunk = cutter.chunk;
                    if !send(Ok(Piece::Resumable { chunk, position })) {
                        return;
                    }
                }
                Ok(entry) => {
                    if let Some(unit) = cutter.push(entry)
                        && !cut(unit, &mut cutter)
                    {
                        return;
                    }
                }
                Err(error) => {
                    // What was read before an item's failure still goes out.
                    if error.fails_item_only()
                        && let Some(unit) = cutter.finish()
                        && !cut(unit, &mut cutter)
                    {
                        return;
                    }
                    send(Err(error));
                    return;
                }
            }
        }
        if let Some(unit) = cutter.finish() {
            cut(unit, &mut cutter);
        }
    }))
}

fn encode(unit: OutgoingUnit, cutter: &mut Cutter, compress_above: usize) -> Cut {
    let inputs = unit.input_count();
    let cut = Cut {
        chunk: cutter.chunk,
        bytes: unit.encode(compress_above),
        inputs,
    };
    cutter.chunk += 1;
    cut
}

/// Waits while any sink queue is above its high watermark. False if shutdown came first.
async fn wait_for_room(
    context: &WorkerContext,
    queues: &[SinkQueues],
    shutdown: &mut super::Shutdown,
) -> Result<bool, WorkerError> {
    let high = context.config.queue.high_watermark;
    for queue in queues {
        let mut pause = Duration::from_millis(20);
        while context.queues.depth(&queue.units).await? > high {
            if shutdown.is_set() {
                return Ok(false);
            }
            shutdown.sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
    Ok(!shutdown.is_set())
}

/// The length of `text` as a JSON string: control characters take six bytes (`\u0001`),
/// quotes and backslashes two.
fn json_string_length(text: &str) -> usize {
    2 + text
        .bytes()
        .map(|byte| match byte {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// How much of a record over the cap its dead letter shows.
const PREVIEW_CHARS: usize = 256;

/// Cuts a stream of entries into units with deterministic ids: a unit is cut when it holds
/// `unit_records` entries or its records' text reaches `max_bytes` (so a unit of big records
/// stays well under what Redis can hold). Records are serialized as they arrive.
struct Cutter {
    job: String,
    run: String,
    item: WorkItem,
    size: usize,
    max_bytes: usize,
    max_record_bytes: usize,
    chunk: u64,
    records: RecordArray,
    /// The JSON size of the last unit cut, to size the next one's buffer.
    last_unit_bytes: usize,
    lines: Vec<u64>,
    rejects: Vec<Reject>,
    bytes: usize,
    first_line: Option<u64>,
    last_line: u64,
}

impl Cutter {
    fn new(
        job: &str,
        run: &str,
        item: &WorkItem,
        size: usize,
        max_bytes: usize,
        max_record_bytes: usize,
    ) -> Cutter {
        Cutter {
            job: job.to_string(),
            run: run.to_string(),
            item: item.clone(),
            size,
            max_bytes,
            max_record_bytes,
            chunk: 0,
            records: RecordArray::default(),
            last_unit_bytes: 0,
            lines: Vec::with_capacity(size),
            rejects: Vec::new(),
            bytes: 0,
            first_line: None,
            last_line: 0,
        }
    }

    fn push(&mut self, entry: Entry) -> Option<OutgoingUnit> {
        let line = entry.line();
        self.first_line.get_or_insert(line);
        self.last_line = line;
        match entry {
            Entry::Record { value, .. } => {
                let length = self.records.push(&value);
                self.keep_within_cap(line, length);
            }
            Entry::Text { record, .. } => {
                let length = self.records.push_text(&record);
                self.keep_within_cap(line, length);
            }
            Entry::Resumable { .. } => {}
            Entry::Rejected(mut reject) => {
                // Rejects travel as JSON strings, uncompressed: measured escaped.
                let mut length = json_string_length(&reject.raw);
                if length > self.max_record_bytes {
                    reject.raw = reject.raw.chars().take(PREVIEW_CHARS).collect();
                    reject.reason.push_str(&format!(
                        " (raw holds its first {PREVIEW_CHARS} characters: the whole line is \
                         {length} bytes as JSON, over queue.max_record_bytes)"
                    ));
                    length = json_string_length(&reject.raw);
                }
                self.bytes += length;
                self.rejects.push(reject);
            }
        }
        let entries = self.records.len() + self.rejects.len();
        (entries >= self.size || self.bytes >= self.max_bytes).then(|| self.cut())
    }

    /// Keeps the record just pushed, `length` bytes of JSON, or refuses it when it is over
    /// the cap: read within the cap, its JSON (escapes, CSV names) can still be over it.
    fn keep_within_cap(&mut self, line: u64, length: usize) {
        if length <= self.max_record_bytes {
            self.bytes += length;
            self.lines.push(line);
            return;
        }
        let raw: String = self
            .records
            .pop(length)
            .chars()
            .take(PREVIEW_CHARS)
            .collect();
        self.bytes += raw.len();
        self.rejects.push(Reject {
            line,
            raw,
            reason: format!(
                "record is {length} bytes as JSON, over queue.max_record_bytes ({})",
                self.max_record_bytes
            ),
        });
    }

    fn finish(&mut self) -> Option<OutgoingUnit> {
        (self.first_line.is_some()).then(|| self.cut())
    }

    fn cut(&mut self) -> OutgoingUnit {
        let first_line = self.first_line.take().unwrap_or(0);
        let mut lines = std::mem::replace(&mut self.lines, Vec::with_capacity(self.size));
        // Lines that simply count up from the first need not cross the wire.
        if lines
            .iter()
            .enumerate()
            .all(|(index, line)| *line == first_line + index as u64)
        {
            lines.clear();
        }
        self.last_unit_bytes = self.bytes;
        self.bytes = 0;
        let records = RecordArray::with_capacity(self.last_unit_bytes + self.last_unit_bytes / 8);
        OutgoingUnit {
            id: unit_id(
                &self.job,
                &self.run,
                &self.item.source,
                self.item.index,
                self.chunk,
            ),
            source: self.item.source.clone(),
            origin: self.item.origin.clone(),
            first_line,
            last_line: self.last_line,
            records: std::mem::replace(&mut self.records, records),
            lines,
            rejects: std::mem::take(&mut self.rejects),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unit::DataUnit;
    use serde_json::json;

    fn item() -> WorkItem {
        WorkItem {
            source: "s".into(),
            index: 0,
            origin: "f.csv".into(),
            range: None,
            bytes: None,
        }
    }

    fn entry(line: u64, text: &str) -> Entry {
        Entry::Record {
            line,
            value: json!({ "v": text }),
        }
    }

    #[test]
    fn producer_cutter_cuts_by_bytes_and_refuses_records_whose_json_is_over_the_cap() {
        let mut cutter = Cutter::new("j", "r", &item(), 100, 200, 100);
        // Control characters are one byte read, six as JSON: `\u0001`.
        let escaped = "\u{1}".repeat(20);
        assert!(cutter.push(entry(1, &escaped)).is_none());
        assert!(cutter.push(entry(2, "short")).is_none());
        let unit = cutter
            .push(entry(4, &"x".repeat(80)))
            .expect("the byte budget cuts");
        assert_eq!(unit.input_count(), 3);
        let unit = DataUnit::decode(&unit.encode(usize::MAX)).expect("the unit decodes");
        assert_eq!(unit.records.len(), 2);
        assert_eq!(unit.records[0].get(), r#"{"v":"short"}"#);
        assert_eq!(unit.rejects.len(), 1);
        assert_eq!(unit.rejects[0].line, 1);
        assert!(
            unit.rejects[0]
                .reason
                .starts_with("record is 128 bytes as JSON, over queue.max_record_bytes (100)"),
            "{}",
            unit.rejects[0].reason
        );
        assert_eq!((unit.record_line(0), unit.record_line(1)), (2, 4));
        assert!(cutter.finish().is_none());
    }

    #[test]
    fn producer_cutter_measures_rejects_as_json_and_cuts_one_over_the_cap() {
        let mut cutter = Cutter::new("j", "r", &item(), 100, 1000, 300);
        let reject = Reject {
            line: 7,
            raw: "\u{1}".repeat(100),
            reason: "invalid JSON".into(),
        };
        assert_eq!(json_string_length(&reject.raw), 602);
        assert!(cutter.push(Entry::Rejected(reject)).is_none());
        let unit = cutter.finish().unwrap();
        assert_eq!(unit.rejects[0].raw.chars().count(), 100.min(PREVIEW_CHARS));
        assert!(
            unit.rejects[0].reason.contains("602 bytes as JSON"),
            "{}",
            unit.rejects[0].reason
        );
        assert_eq!(json_string_length("a\"b\\c\n"), 2 + 1 + 2 + 1 + 2 + 1 + 2);
    }
}

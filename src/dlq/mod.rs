//! The dead-letter tools (`stevedore dlq ...`): read a sink's dead-letter queue page by page
//! without receiving anything ([`read`]), tell the kinds of letters apart ([`Letter`]), send
//! letters through their sink again once their cause is fixed ([`replay`]), delete them
//! ([`purge`]).
//!
//! A queue may hold one letter twice (a consumer killed between sending a unit's letters and
//! acknowledging the unit sends them again when the unit comes back), never zero times:
//! everything here deduplicates by `dead_letter.id`.

pub(crate) mod purge;
pub(crate) mod read;
pub(crate) mod replay;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::queue::LinkError;
use crate::sink::SinkError;
use crate::supervisor::LockError;
use crate::unit::{DataUnit, DecodeError};

/// Why a dead-letter tool stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DlqError {
    /// Redis stayed unreachable or refused a command.
    #[error(transparent)]
    Redis(#[from] LinkError),
    /// The job's lock is held: a run (or another replay) of the job is going on.
    #[error("cannot replay now: {0}")]
    Lock(#[from] LockError),
    /// The lock expired under the replay and another holder took it.
    #[error(
        "lost the job lock while replaying: another run of job `{job}` took over; the letters \
         not replayed yet stay in the queue"
    )]
    LockLost {
        /// The job.
        job: String,
    },
    /// The sink cannot take writes now (after the retry policy's attempts), or a newer holder
    /// of the job's lock fenced it.
    #[error("{0}; the letters not replayed yet stay in the queue")]
    Sink(#[from] SinkError),
}

impl DlqError {
    /// True when the sink's target does not fit the job (a missing table or column, no
    /// permission): a config problem, exit code 2 as for `run`.
    pub(crate) fn is_config_error(&self) -> bool {
        matches!(self, DlqError::Sink(error) if !error.is_transient() && !error.is_fenced())
    }
}

/// What a letter holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// One record that did not land (`record`).
    Record,
    /// Input that never became a record (`raw`): its text as read.
    Raw,
    /// A unit that went whole to the queue (its envelope, which still decodes).
    Unit,
    /// Bytes that went whole to the queue but are not a unit (kept as `raw`), or a message
    /// that is no dead letter stevedore wrote.
    Unreadable,
}

impl Kind {
    /// `record`, `raw`, `unit` or `unreadable`, as listed.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Record => "record",
            Kind::Raw => "raw",
            Kind::Unit => "unit",
            Kind::Unreadable => "unreadable",
        }
    }
}

/// One dead letter as read from its queue: the message and what its `dead_letter` object says.
#[derive(Debug, Clone)]
pub(crate) struct Letter {
    /// The RSMQ message id (a letter stored twice has two).
    pub(crate) message_id: String,
    /// When the message entered the queue, in ms by Redis's clock (its score).
    pub(crate) sent_ms: u64,
    /// `dead_letter.id`: `<unit id>#<index>` for a record or line, the unit id for a unit.
    pub(crate) id: String,
    /// What it holds.
    pub(crate) kind: Kind,
    /// The `dead_letter` object as written.
    pub(crate) context: Map<String, Value>,
    /// The record's JSON text (kind `Record`) or the raw text (kinds `Raw`, `Unreadable`).
    text: Option<String>,
    /// The message as stored.
    body: Vec<u8>,
}

/// The fields of a letter that tell its kind.
#[derive(Deserialize)]
struct Shape<'a> {
    #[serde(default)]
    dead_letter: Option<Map<String, Value>>,
    #[serde(borrow, default)]
    record: Option<&'a RawValue>,
    #[serde(default)]
    raw: Option<String>,
}

impl Letter {
    /// Reads message `message_id` (body `body`, sent at `sent_ms`). Never fails: a message
    /// that is not a letter stevedore wrote is listed as [`Kind::Unreadable`], named by its
    /// message id, so that it can be seen and purged.
    pub(crate) fn parse(message_id: String, sent_ms: u64, body: Vec<u8>) -> Letter {
        let shape = serde_json::from_slice::<Shape>(&body).ok();
        let (context, record, raw) = match shape {
            Some(Shape {
                dead_letter: Some(context),
                record,
                raw,
            }) => (context, record.map(|r| r.get().to_string()), raw),
            _ => (Map::new(), None, None),
        };
        let whole_unit = context.contains_key("attempts");
        let (kind, text) = match (record, raw) {
            (Some(record), _) => (Kind::Record, Some(record)),
            (None, Some(raw)) if whole_unit => (Kind::Unreadable, Some(raw)),
            (None, Some(raw)) => (Kind::Raw, Some(raw)),
            (None, None) if DataUnit::decode(&body).is_ok() => (Kind::Unit, None),
            (None, None) => (
                Kind::Unreadable,
                Some(String::from_utf8_lossy(&body).into_owned()),
            ),
        };
        let id = match context.get("id").and_then(Value::as_str) {
            Some(id) => id.to_string(),
            // A unit moved here without a reason still has its own id.
            None => DataUnit::peek_id(&body).unwrap_or_else(|| format!("message:{message_id}")),
        };
        Letter {
            message_id,
            sent_ms,
            id,
            kind,
            context,
            text,
            body,
        }
    }

    /// Why it was dead-lettered.
    pub(crate) fn reason(&self) -> &str {
        self.context
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("(no reason given)")
    }

    /// When it was dead-lettered (`dead_letter.at_ms`; the time it entered the queue if the
    /// letter does not say).
    pub(crate) fn at_ms(&self) -> u64 {
        self.context
            .get("at_ms")
            .and_then(Value::as_u64)
            .unwrap_or(self.sent_ms)
    }

    /// The record's JSON text, for kind [`Kind::Record`].
    pub(crate) fn record_text(&self) -> Option<&str> {
        (self.kind == Kind::Record)
            .then_some(self.text.as_deref())
            .flatten()
    }

    /// The unit, for kind [`Kind::Unit`] (its envelope with the `dead_letter` object beside).
    pub(crate) fn unit(&self) -> Option<Result<DataUnit, DecodeError>> {
        (self.kind == Kind::Unit).then(|| DataUnit::decode(&self.body))
    }

    /// The letter's input as read, one entry per line of `dlq export`: the record; the raw
    /// text; for a whole unit each of its records, then each of its rejected lines.
    pub(crate) fn input_lines(&self) -> Vec<String> {
        match self.unit() {
            Some(Ok(unit)) => unit
                .records
                .iter()
                .map(|record| record.get().to_string())
                .chain(unit.rejects.into_iter().map(|reject| reject.raw))
                .collect(),
            Some(Err(_)) | None => self.text.iter().cloned().collect(),
        }
    }

    /// The `dead_letter` object with the letter's kind (and a unit's record count): what
    /// `dlq list` shows of each letter.
    pub(crate) fn summary(&self) -> Value {
        let mut summary = self.context.clone();
        summary.insert("id".into(), Value::from(self.id.clone()));
        summary.insert("kind".into(), Value::from(self.kind.as_str()));
        if let Some(Ok(unit)) = self.unit() {
            summary.insert("records".into(), Value::from(unit.input_count()));
        }
        Value::Object(summary)
    }

    /// The whole letter as JSON, for `dlq show`; a unit's compressed records are shown
    /// decompressed, as `records`.
    pub(crate) fn full(&self) -> Value {
        let mut full = serde_json::from_slice::<Value>(&self.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into_owned()));
        if let (Some(Ok(unit)), Value::Object(object)) = (self.unit(), &mut full)
            && object.remove("records_zstd").is_some()
        {
            object.insert("records".into(), Value::from(unit.record_values()));
        }
        full
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn letter(body: Value) -> Letter {
        Letter::parse("m1".into(), 7, serde_json::to_vec(&body).unwrap())
    }

    #[test]
    fn dlq_letters_of_every_shape_are_told_apart() {
        let record = letter(json!({"record": {"id": 17, "total": "x"},
            "dead_letter": {"id": "j/r/s/0.1#3", "reason": "cannot cast", "at_ms": 5}}));
        assert_eq!(record.kind, Kind::Record);
        assert_eq!(record.id, "j/r/s/0.1#3");
        assert_eq!(record.record_text(), Some(r#"{"id":17,"total":"x"}"#));
        assert_eq!(record.input_lines(), [r#"{"id":17,"total":"x"}"#]);
        assert_eq!((record.reason(), record.at_ms()), ("cannot cast", 5));

        let raw = letter(json!({"raw": "{oops", "dead_letter": {"id": "j/r/s/0.1#9"}}));
        assert_eq!(
            (raw.kind, raw.input_lines()),
            (Kind::Raw, vec!["{oops".into()])
        );
        assert_eq!(raw.at_ms(), 7, "the queue's time when the letter has none");

        let envelope = json!({"v": 1, "id": "j/r/s/0.2", "source": "s", "origin": "o",
            "first_line": 1, "last_line": 3, "count": 2, "records": [{"a": 1}, {"a": 2}],
            "rejects": [{"line": 2, "raw": "nope", "reason": "invalid JSON"}],
            "dead_letter": {"id": "j/r/s/0.2", "attempts": 5, "reason": "locked"}});
        let unit = letter(envelope);
        assert_eq!(unit.kind, Kind::Unit);
        assert_eq!(unit.input_lines(), [r#"{"a":1}"#, r#"{"a":2}"#, "nope"]);
        assert_eq!(unit.summary()["records"], 3);

        let bytes =
            letter(json!({"raw": "\u{1}garbage", "dead_letter": {"id": "?", "attempts": 1}}));
        assert_eq!(bytes.kind, Kind::Unreadable);

        let stranger = Letter::parse("m9".into(), 1, b"hello".to_vec());
        assert_eq!(
            (stranger.kind, stranger.id.as_str()),
            (Kind::Unreadable, "message:m9")
        );
        assert_eq!(stranger.input_lines(), ["hello"]);
    }

    #[test]
    fn dlq_show_decompresses_a_units_records() {
        let unit = DataUnit {
            id: "j/r/s/0.0".into(),
            source: "s".into(),
            origin: "o".into(),
            first_line: 1,
            last_line: 1,
            records: vec![crate::unit::record(&json!({"a": 1}))],
            lines: Vec::new(),
            rejects: Vec::new(),
        };
        let body =
            crate::worker::whole_unit_dead_letter(&unit.encode(0), "local", &unit.id, "why", 2);
        let letter = Letter::parse("m".into(), 1, body);
        let full = letter.full();
        assert_eq!(full["records"], json!([{"a": 1}]));
        assert!(full.get("records_zstd").is_none());
        assert_eq!(full["dead_letter"]["attempts"], 2);
    }
}

//! What each unit did at each sink, written idempotently (`HSET` keyed by unit id) so that a
//! redelivered unit is never counted twice; the exact totals of a run and its live progress.

use std::collections::HashMap;
use std::sync::LazyLock;

use super::{FieldWrite, RunState};
use crate::queue::{LinkError, queue_keys};

/// Exact results of a run, summed from the idempotent hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Input records read (rejected lines included).
    pub read: u64,
    /// Per sink: records written.
    pub written: HashMap<String, u64>,
    /// Per sink: records dead-lettered.
    pub dead: HashMap<String, u64>,
}

/// Live counters for a progress display (approximate under redelivery).
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Records read so far.
    pub read: u64,
    /// Per source: records read so far.
    pub read_by_source: HashMap<String, u64>,
    /// Per sink: records written so far.
    pub written: HashMap<String, u64>,
    /// Per sink: records dead-lettered so far.
    pub dead: HashMap<String, u64>,
}

/// Counts an attempt at a unit unless it is recorded as written: KEYS = written hash, attempts
/// hash, the job's fence counter; ARGV = unit, fencing token ('' for none). Returns the
/// attempt number, 0 when the unit is recorded, or minus the job's highest token when the
/// given one is older (nothing counted).
static BEGIN_ATTEMPT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        if ARGV[2] ~= '' then
            local highest = tonumber(redis.call('GET', KEYS[3]) or '0')
            if tonumber(ARGV[2]) < highest then return -highest end
        end
        if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
        return redis.call('HINCRBY', KEYS[2], ARGV[1], 1)",
    )
});

/// Records what writing a unit did and acknowledges its message: KEYS = the job's fence
/// counter, written hash, dead hash, progress hash, the queue's sorted set and message hash
/// (RSMQ's layout, as its `deleteMessage` removes a message); ARGV = token ('' for none),
/// unit, written, dead, fresh ('1' adds to progress), sink, message id. Returns -1, or the
/// job's highest token when the given one is older (nothing written, nothing acknowledged).
static RECORD_AND_ACK: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        if ARGV[1] ~= '' then
            local highest = tonumber(redis.call('GET', KEYS[1]) or '0')
            if tonumber(ARGV[1]) < highest then return highest end
        end
        redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
        redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
        if ARGV[5] == '1' then
            redis.call('HINCRBY', KEYS[4], 'written:' .. ARGV[6], ARGV[3])
            redis.call('HINCRBY', KEYS[4], 'dead:' .. ARGV[6], ARGV[4])
        end
        redis.call('ZREM', KEYS[5], ARGV[7])
        redis.call('HDEL', KEYS[6], ARGV[7], ARGV[7] .. ':rc', ARGV[7] .. ':fr')
        return -1",
    )
});

/// What writing one unit to a sink did, as [`UnitLedger::record_unit_and_ack`] records it.
pub struct UnitDone<'a> {
    /// The unit's id.
    pub unit: &'a str,
    /// Records the sink holds from it.
    pub written: u64,
    /// Records of it sent to the dead-letter queue.
    pub dead: u64,
    /// True when this write put the records there (not an earlier, unrecorded one): only
    /// then does live progress move.
    pub fresh: bool,
}

/// The unit-ledger part of a run's state ([`RunState::ledger`]).
pub struct UnitLedger<'a> {
    pub(super) state: &'a RunState,
}

impl UnitLedger<'_> {
    /// Records, idempotently, what applying `unit` to `sink` did (`fresh` adds to live
    /// progress) and acknowledges its message in `queue`, in one script: one round trip and
    /// one AOF write per unit instead of two. Refused whole (nothing recorded, the message
    /// left to be redelivered) if this state is fenced and a newer token exists.
    pub async fn record_unit_and_ack(
        &self,
        sink: &str,
        done: &UnitDone<'_>,
        queue: &str,
        message_id: &str,
    ) -> Result<(), LinkError> {
        let (queue_set, queue_messages) = queue_keys(queue);
        let keys = [
            RunState::fence_key(&self.state.job),
            self.state.key(&format!("written:{sink}")),
            self.state.key(&format!("dead:{sink}")),
            self.state.key("progress"),
            queue_set,
            queue_messages,
        ];
        let args = [
            self.state.fence_arg(),
            done.unit.to_string(),
            done.written.to_string(),
            done.dead.to_string(),
            if done.fresh { "1" } else { "0" }.to_string(),
            sink.to_string(),
            message_id.to_string(),
        ];
        let what = "recording a written unit";
        let highest: i64 = self
            .state
            .link
            .script(what, &RECORD_AND_ACK, &keys, &args)
            .await?;
        self.state.refused_if_stale(what, highest)
    }

    /// Records columns a sink added to its target for new fields (first unit that did wins).
    pub async fn record_columns_added(
        &self,
        sink: &str,
        unit: &str,
        columns: &[String],
    ) -> Result<(), LinkError> {
        let mut pipe = redis::pipe();
        for column in columns {
            pipe.hset_nx(self.state.key(&format!("columns:{sink}")), column, unit)
                .ignore();
        }
        self.state
            .link
            .query_pipe("recording added columns", &pipe)
            .await
    }

    /// The columns `sink` added during this run, by name.
    pub async fn columns_added(&self, sink: &str) -> Result<Vec<String>, LinkError> {
        let mut columns: Vec<String> = self
            .state
            .link
            .query(
                "reading added columns",
                &redis::Cmd::hkeys(self.state.key(&format!("columns:{sink}"))),
            )
            .await?;
        columns.sort();
        Ok(columns)
    }

    /// Remembers why the latest attempt to write `unit` to `sink` failed, so that the unit's
    /// dead letter can say why if it goes there whole.
    pub async fn note_failed_attempt(
        &self,
        sink: &str,
        unit: &str,
        reason: &str,
    ) -> Result<(), LinkError> {
        let key = self.state.key(&format!("errors:{sink}"));
        self.state
            .write_fields(
                "noting a failed attempt",
                &[FieldWrite::set(key, unit, reason)],
            )
            .await
    }

    /// Why the latest failed attempt to write `unit` to `sink` failed, if one was noted.
    pub async fn last_error(&self, sink: &str, unit: &str) -> Result<Option<String>, LinkError> {
        self.state
            .link
            .query(
                "reading a unit's last error",
                &redis::Cmd::hget(self.state.key(&format!("errors:{sink}")), unit),
            )
            .await
    }

    /// Records that a whole unit of `records` inputs went to `sink`'s dead-letter queue.
    pub async fn record_dead_unit(
        &self,
        sink: &str,
        unit: &str,
        records: u64,
    ) -> Result<(), LinkError> {
        let key = self.state.key(&format!("dead:{sink}"));
        self.state
            .write_fields(
                "recording a dead unit",
                &[FieldWrite::set(key, unit, records)],
            )
            .await
    }

    /// Starts a write attempt of `unit` on `sink`, in one round trip: `None` when the unit was
    /// already fully handled (only its acknowledgement is missing), else the attempt number.
    /// A fenced state is refused here, before the sink is touched: for a sink that cannot
    /// check a fencing token itself (Cosmos DB), a stale writer gets no further than the
    /// unit in hand.
    pub async fn begin_attempt(&self, sink: &str, unit: &str) -> Result<Option<u64>, LinkError> {
        let keys = [
            self.state.key(&format!("written:{sink}")),
            self.state.key(&format!("attempts:{sink}")),
            RunState::fence_key(&self.state.job),
        ];
        let token = self.state.fence();
        let args = [unit.to_string(), self.state.fence_arg()];
        let what = "starting an attempt";
        let answer: i64 = self
            .state
            .link
            .script(what, &BEGIN_ATTEMPT, &keys, &args)
            .await?;
        match (answer, token) {
            (highest, Some(token)) if highest < 0 => Err(LinkError::Fenced {
                what: what.to_string(),
                token,
                highest: highest.unsigned_abs(),
            }),
            (0, _) => Ok(None),
            (attempt, _) => Ok(Some(attempt as u64)),
        }
    }

    /// The exact totals for `sinks`.
    pub async fn totals(&self, sinks: &[String]) -> Result<Totals, LinkError> {
        let mut totals = Totals {
            read: self.sum_hash(self.state.key("read")).await?,
            ..Totals::default()
        };
        for sink in sinks {
            totals.written.insert(
                sink.clone(),
                self.sum_hash(self.state.key(&format!("written:{sink}")))
                    .await?,
            );
            totals.dead.insert(
                sink.clone(),
                self.sum_hash(self.state.key(&format!("dead:{sink}")))
                    .await?,
            );
        }
        Ok(totals)
    }

    /// Units of `sink` recorded as written, with their counts.
    pub async fn written_units(&self, sink: &str) -> Result<HashMap<String, u64>, LinkError> {
        self.state
            .link
            .query(
                "reading written units",
                &redis::Cmd::hgetall(self.state.key(&format!("written:{sink}"))),
            )
            .await
    }

    async fn sum_hash(&self, key: String) -> Result<u64, LinkError> {
        let values: Vec<u64> = self
            .state
            .link
            .query("summing counters", &redis::Cmd::hvals(key))
            .await?;
        Ok(values.iter().sum())
    }

    /// The live counters.
    pub async fn progress(&self) -> Result<Progress, LinkError> {
        let fields: HashMap<String, u64> = self
            .state
            .link
            .query(
                "reading progress",
                &redis::Cmd::hgetall(self.state.key("progress")),
            )
            .await?;
        let mut progress = Progress::default();
        for (field, value) in fields {
            match field.split_once(':') {
                None if field == "read" => progress.read += value,
                Some(("read", source)) => {
                    progress.read += value;
                    progress.read_by_source.insert(source.to_string(), value);
                }
                Some(("written", sink)) => drop(progress.written.insert(sink.to_string(), value)),
                Some(("dead", sink)) => drop(progress.dead.insert(sink.to_string(), value)),
                _ => {}
            }
        }
        Ok(progress)
    }
}

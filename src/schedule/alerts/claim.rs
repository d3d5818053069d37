//! Alert events, decided and claimed in Redis so that a group sends each one once.
//!
//! One script ([`TICK`]) per schedule per look, run by every daemon: it reads the passes
//! recorded since its last run (the history that `FINISH` writes), counts failures in a row,
//! and adds each event it decides (`firing`, `reminder` n, `resolved`) to the schedule's
//! **outbox**, one entry per channel. In the same script the daemon **claims** every outbox
//! entry nobody holds: the claim is a deadline in a hash, so of several daemons one gets each
//! entry. The claimer sends it and removes it ([`done`]); a claimer that dies leaves its claim
//! to lapse ([`CLAIM_TTL`]), and the next daemon to look claims the entry and sends it.
//!
//! Keys, next to the schedule's (`stevedore:supervise:<group>:schedule:<name>`):
//! - `…:alerts` (hash): `seen_finish`, `seen_pass` (what was counted), `streak`, `since`,
//!   `urgent` (a pass of the streak exited 2), `fired_at` (while alerting), `reminders`.
//! - `…:alerts:outbox` (hash): `<event id>/<channel>` → the event (JSON).
//! - `…:alerts:claims` (hash): `<event id>/<channel>` → until when its claimer holds it (ms).

use std::sync::LazyLock;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::queue::{LinkError, RedisLink};
use crate::schedule::state::{RecentEntry, ScheduleKeys};

/// How long a claimed entry is its claimer's: longer than the longest send (every attempt
/// of [`crate::retry::ALERT_SEND`] timing out, and the waits), so only a claimer that died
/// or hangs loses its entry to another daemon.
pub const CLAIM_TTL: Duration = Duration::from_secs(300);

/// What happened to a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// It failed `after_failures` passes in a row (or one pass exited 2).
    Firing,
    /// It is still failing, `repeat_every` after the last alert.
    Reminder,
    /// A pass succeeded after it alerted.
    Resolved,
}

impl EventKind {
    /// The kind's name in messages and payloads.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Firing => "firing",
            EventKind::Reminder => "reminder",
            EventKind::Resolved => "resolved",
        }
    }
}

/// One event, as the script decided it.
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    /// `firing:<since>`, `reminder:<since>:<n>` or `resolved:<since>`: unique per event, so a
    /// receiver can drop the rare second delivery.
    pub id: String,
    /// What happened.
    pub kind: EventKind,
    /// The schedule.
    pub schedule: String,
    /// When the failing streak began: the end of its first failed pass (ms).
    pub since: i64,
    /// Failed passes in a row when the event was decided.
    pub streak: u32,
    /// For a reminder, its number (1, 2, ...).
    pub reminder: u32,
    /// When the event was decided (ms, Redis time).
    pub at: i64,
    /// A pass of the streak exited 2: an error in the job file, which does not heal itself.
    pub urgent: bool,
    /// The last passes, newest first (at most 5).
    #[serde(deserialize_with = "lua_list")]
    pub passes: Vec<RecentEntry>,
}

/// An outbox entry this daemon claimed: send `event` on `channel`, then call [`done`].
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The outbox field, `<event id>/<channel>`.
    pub field: String,
    /// `email` or `webhook`.
    pub channel: String,
    /// The event.
    pub event: Event,
}

/// When a schedule alerts.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Failed passes in a row.
    pub after_failures: u32,
    /// Reminders this far apart.
    pub repeat_every: Duration,
}

/// The alert keys of one schedule.
#[derive(Debug, Clone)]
pub struct AlertKeys {
    /// The schedule's progress hash (`last_finish` is read).
    pub schedule: String,
    /// The schedule's history.
    pub recent: String,
    /// What was counted, and the firing state.
    pub state: String,
    /// Events waiting to be sent.
    pub outbox: String,
    /// Who holds which entry, until when.
    pub claims: String,
}

impl AlertKeys {
    /// The alert keys beside `schedule`'s keys.
    pub fn of(schedule: &ScheduleKeys) -> AlertKeys {
        let state = format!("{}:alerts", schedule.hash);
        AlertKeys {
            schedule: schedule.hash.clone(),
            recent: schedule.recent.clone(),
            outbox: format!("{state}:outbox"),
            claims: format!("{state}:claims"),
            state,
        }
    }
}

/// Counts the passes recorded since the last run, decides events into the outbox, and claims
/// every entry nobody holds of a channel this daemon has. KEYS: schedule hash, recent, alert state, outbox, claims. ARGV:
/// schedule name, after_failures, repeat_every (ms), claim TTL (ms), channels (`a,b`).
/// Returns the claimed entries as field, event pairs.
///
/// Failed and timed-out passes extend the streak, `ok` and `dead_letters` end it (and resolve
/// an alert), `stopped` does neither. The first run on a schedule counts the history it
/// finds quietly and alerts only if the streak still going on qualifies, so enabling alerts
/// does not replay old streaks; from then on each pass is counted as it comes.
static TICK: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)
        local state = KEYS[3]
        local function num(field) return tonumber(redis.call('HGET', state, field) or '') end
        local after = tonumber(ARGV[2])
        local repeat_ms = tonumber(ARGV[3])
        local streak = num('streak') or 0
        local since = num('since') or 0
        local fired = num('fired_at')
        local reminders = num('reminders') or 0
        local urgent = redis.call('HGET', state, 'urgent') == '1'
        local function history(limit)
            local passes = {}
            for _, raw in ipairs(redis.call('LRANGE', KEYS[2], 0, 49)) do
                local entry = cjson.decode(raw)
                if type(entry.pass) == 'number' and #passes < limit then
                    passes[#passes + 1] = entry
                end
            end
            return passes
        end
        local function context(passes, from)
            local out = {}
            for i = from, math.min(#passes, from + 4) do out[#out + 1] = passes[i] end
            return out
        end
        local function emit(kind, id, passes)
            local event = cjson.encode({id = id, kind = kind, schedule = ARGV[1],
                since = since, streak = streak, reminder = reminders, at = now,
                urgent = urgent, passes = passes})
            for channel in string.gmatch(ARGV[5], '[^,]+') do
                redis.call('HSET', KEYS[4], id .. '/' .. channel, event)
            end
        end
        local finish = redis.call('HGET', KEYS[1], 'last_finish') or ''
        local first = redis.call('HEXISTS', state, 'seen_pass') == 0
        if first or finish ~= (redis.call('HGET', state, 'seen_finish') or '') then
            local seen = num('seen_pass') or 0
            local passes = history(50)
            local newest = seen
            for i = #passes, 1, -1 do
                local entry = passes[i]
                if entry.pass > seen then
                    newest = math.max(newest, entry.pass)
                    if entry.outcome == 'failed' or entry.outcome == 'timed_out' then
                        streak = streak + 1
                        if streak == 1 then
                            since = entry.finished_at
                            urgent = false
                        end
                        if entry.exit_code == 2 then urgent = true end
                        if not first and not fired and (streak >= after or urgent) then
                            fired = now
                            reminders = 0
                            emit('firing', 'firing:' .. since, context(passes, i))
                        end
                    elseif entry.outcome == 'ok' or entry.outcome == 'dead_letters' then
                        if fired then
                            emit('resolved', 'resolved:' .. since, context(passes, i))
                        end
                        fired = nil
                        streak = 0
                        since = 0
                        urgent = false
                        reminders = 0
                    end
                end
            end
            if first and not fired and streak > 0 and (streak >= after or urgent) then
                fired = now
                emit('firing', 'firing:' .. since, context(passes, 1))
            end
            redis.call('HSET', state, 'seen_finish', finish, 'seen_pass', newest,
                'streak', streak, 'since', since, 'urgent', urgent and '1' or '0',
                'reminders', reminders)
            if fired then redis.call('HSET', state, 'fired_at', fired)
            else redis.call('HDEL', state, 'fired_at') end
        end
        if fired and repeat_ms > 0 then
            local due = math.floor((now - fired) / repeat_ms)
            if due > reminders then
                reminders = due
                redis.call('HSET', state, 'reminders', reminders)
                emit('reminder', 'reminder:' .. since .. ':' .. reminders, history(5))
            end
        end
        local claimed = {}
        local mine = {}
        for channel in string.gmatch(ARGV[5], '[^,]+') do mine[channel] = true end
        local outbox = redis.call('HGETALL', KEYS[4])
        for i = 1, #outbox, 2 do
            local held = tonumber(redis.call('HGET', KEYS[5], outbox[i]) or '0')
            -- Only entries of a channel this daemon can send: another daemon's entry waits
            -- for a daemon that has the channel (the group should share one [alerts]).
            if held <= now and mine[string.match(outbox[i], '/([^/]+)$')] then
                redis.call('HSET', KEYS[5], outbox[i], now + tonumber(ARGV[4]))
                claimed[#claimed + 1] = outbox[i]
                claimed[#claimed + 1] = outbox[i + 1]
            end
        end
        return claimed",
    )
});

/// Runs [`TICK`] for schedule `name`: events due go to the outbox, and the entries this
/// daemon claimed come back, for `claim_ttl`.
pub async fn tick(
    link: &RedisLink,
    keys: &AlertKeys,
    name: &str,
    rules: Rules,
    channels: &[&str],
    claim_ttl: Duration,
) -> Result<Vec<Claimed>, LinkError> {
    let pairs: Vec<String> = link
        .script(
            "deciding and claiming alerts",
            &TICK,
            &[
                keys.schedule.clone(),
                keys.recent.clone(),
                keys.state.clone(),
                keys.outbox.clone(),
                keys.claims.clone(),
            ],
            &[
                name.to_string(),
                rules.after_failures.to_string(),
                rules.repeat_every.as_millis().to_string(),
                claim_ttl.as_millis().to_string(),
                channels.join(","),
            ],
        )
        .await?;
    let mut claimed = Vec::new();
    for pair in pairs.chunks(2) {
        let [field, json] = pair else { continue };
        let channel = field.rsplit_once('/').map(|(_, c)| c).unwrap_or_default();
        match serde_json::from_str::<Event>(json) {
            Ok(event) => claimed.push(Claimed {
                field: field.clone(),
                channel: channel.to_string(),
                event,
            }),
            Err(error) => {
                tracing::error!(%error, field, "an alert in the outbox does not read; dropping it");
                done(link, keys, field).await?;
            }
        }
    }
    Ok(claimed)
}

/// Removes a sent (or given up) entry from the outbox, with its claim.
pub async fn done(link: &RedisLink, keys: &AlertKeys, field: &str) -> Result<(), LinkError> {
    let mut pipe = redis::pipe();
    pipe.atomic()
        .hdel(&keys.outbox, field)
        .hdel(&keys.claims, field);
    link.query_pipe::<(i64, i64)>("removing a sent alert", &pipe)
        .await
        .map(drop)
}

/// Lua's cjson writes an empty list as `{}`: read that as no passes.
fn lua_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<RecentEntry>, D::Error> {
    match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|item| serde_json::from_value(item).map_err(serde::de::Error::custom))
            .collect(),
        _ => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::state::GroupKeys;

    /// Records pass `n` as `finish` would: pushed onto the history, `last_finish` moved.
    fn record(redis: &testkit::TestRedis, keys: &AlertKeys, n: u64, outcome: &str, exit: i32) {
        let entry = RecentEntry {
            pass: Some(n),
            host: Some("h".into()),
            finished_at: Some(1_000 * n as i64),
            exit_code: Some(exit),
            reason: Some(format!("reason {n}")),
            ..RecentEntry::not_run(1_000 * n as i64, outcome)
        };
        let json = serde_json::to_string(&entry).unwrap();
        redis.query::<i64>(redis::cmd("LPUSH").arg(&keys.recent).arg(json));
        redis.query::<i64>(
            redis::cmd("HSET")
                .arg(&keys.schedule)
                .arg("last_finish")
                .arg(n),
        );
    }

    struct Daemons {
        link: RedisLink,
        keys: AlertKeys,
        rules: Rules,
    }

    impl Daemons {
        fn new(redis: &testkit::TestRedis, after_failures: u32) -> Daemons {
            Daemons {
                link: RedisLink::new(&redis.url()).unwrap(),
                keys: AlertKeys::of(&GroupKeys::new("g").schedule("orders")),
                rules: Rules {
                    after_failures,
                    repeat_every: Duration::from_secs(3600),
                },
            }
        }

        /// One daemon's look: the entries it claimed (left in the outbox, as by a daemon
        /// that dies before sending them).
        fn claim(&self, ttl: Duration) -> Vec<Claimed> {
            testkit::block_on(tick(
                &self.link,
                &self.keys,
                "orders",
                self.rules,
                &["email"],
                ttl,
            ))
            .unwrap()
        }

        /// The ids of the events one look claimed.
        fn look(&self, ttl: Duration) -> Vec<String> {
            ids(&self.claim(ttl))
        }

        /// One look, and every claimed entry sent (taken out of the outbox).
        fn send(&self, ttl: Duration) -> Vec<String> {
            let claimed = self.claim(ttl);
            testkit::block_on(async {
                for c in &claimed {
                    done(&self.link, &self.keys, &c.field).await.unwrap();
                }
            });
            ids(&claimed)
        }
    }

    const LONG: Duration = Duration::from_secs(300);

    #[test]
    fn alerts_claim_each_event_once_across_daemons_and_resolve_once() {
        let redis = testkit::TestRedis::start();
        let group = Daemons::new(&redis, 2);
        let keys = group.keys.clone();
        assert!(group.send(LONG).is_empty(), "no history, no event");
        record(&redis, &keys, 1, "ok", 0);
        record(&redis, &keys, 2, "failed", 1);
        assert!(group.send(LONG).is_empty(), "one failure of two");
        record(&redis, &keys, 3, "stopped", 0);
        record(&redis, &keys, 4, "timed_out", 1);
        // Two daemons look: one claims the event, the other finds it claimed.
        assert_eq!(group.look(LONG), ["firing:2000"]);
        assert!(group.look(LONG).is_empty());
        record(&redis, &keys, 5, "failed", 1);
        record(&redis, &keys, 6, "dead_letters", 3);
        assert_eq!(group.look(LONG), ["resolved:2000"]);
        assert!(group.look(LONG).is_empty());
        record(&redis, &keys, 7, "failed", 1);
        assert!(group.look(LONG).is_empty(), "a new streak of one");
    }

    #[test]
    fn alerts_claim_of_a_daemon_that_died_lapses_to_another() {
        let redis = testkit::TestRedis::start();
        let group = Daemons::new(&redis, 1);
        let keys = group.keys.clone();
        group.send(LONG);
        record(&redis, &keys, 1, "failed", 1);
        // The claimer "dies": it never sends. Once its short claim lapses, another claims it.
        assert_eq!(group.look(Duration::from_millis(1)), ["firing:1000"]);
        let deadline = std::time::Instant::now() + testkit::PATIENCE;
        loop {
            let claimed = group.send(LONG);
            if !claimed.is_empty() {
                assert_eq!(claimed, ["firing:1000"]);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the claim never lapsed"
            );
        }
        assert!(group.send(LONG).is_empty(), "sent and cleared");
    }

    #[test]
    fn alerts_claim_exit_2_alerts_at_once_and_old_streaks_stay_quiet() {
        let redis = testkit::TestRedis::start();
        let group = Daemons::new(&redis, 3);
        let keys = group.keys.clone();
        // History from before alerts were on: a streak that healed, then one still going.
        for n in 1..=3 {
            record(&redis, &keys, n, "failed", 1);
        }
        record(&redis, &keys, 4, "ok", 0);
        record(&redis, &keys, 5, "failed", 1);
        assert!(group.send(LONG).is_empty(), "a streak of one is quiet");
        record(&redis, &keys, 6, "failed", 2);
        let claimed = testkit::block_on(tick(
            &group.link,
            &keys,
            "orders",
            group.rules,
            &["email", "webhook"],
            LONG,
        ))
        .unwrap();
        let mut fields: Vec<&str> = claimed.iter().map(|c| c.field.as_str()).collect();
        fields.sort();
        assert_eq!(fields, ["firing:5000/email", "firing:5000/webhook"]);
        let event = &claimed[0].event;
        assert!(event.urgent && event.streak == 2 && event.since == 5_000);
        let passes: Vec<Option<u64>> = event.passes.iter().map(|p| p.pass).collect();
        assert_eq!(passes, [Some(6), Some(5), Some(4), Some(3), Some(2)]);
        assert_eq!(event.passes[0].reason.as_deref(), Some("reason 6"));
    }

    fn ids(claimed: &[Claimed]) -> Vec<String> {
        claimed.iter().map(|c| c.event.id.clone()).collect()
    }
}

//! Which slots of a schedule are due, and what becomes of each: queued to run, counted as
//! missed, or skipped because a pass still runs. Pure: it takes what a daemon read from Redis
//! (with Redis `TIME` as "now") and returns a decision that one compare-and-set script applies,
//! so that of several daemons deciding at once only one decision lands.

use std::time::Duration;

use super::config::{Catchup, Overlap, ScheduleConfig, Timing};

/// Daemons look at every schedule several times a second. Slots that came while nobody looked
/// for longer than this (no daemon up, Redis down) were missed: they follow `catchup`.
pub const WATCH_GAP_MS: i64 = 5_000;

/// At most this many slots are named one by one in a decision (the rest are only counted):
/// a `* * * * * *` schedule down for a week has 604,800 missed slots.
const MAX_LISTED: usize = 50;

/// At most this many slots are enumerated to count missed ones; beyond it the count is a
/// lower bound and the decision says so.
const MAX_ENUMERATED: usize = 1_000_000;

/// What a daemon read of one schedule's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Redis `TIME`, in milliseconds.
    pub now_ms: i64,
    /// The latest slot decided (run, skipped or missed); none before the first look.
    pub last_slot: Option<i64>,
    /// When a daemon last looked (Redis time).
    pub checked_at: Option<i64>,
    /// The schedule's timing as it was when progress was last recorded.
    pub signature: Option<String>,
    /// When a cyclic schedule is due next (set when its last pass finished).
    pub next_fire: Option<i64>,
    /// A pass of the schedule runs.
    pub running: bool,
    /// Slots waiting to run.
    pub pending: usize,
}

/// One slot queued to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    /// The slot (milliseconds, UTC); for a triggered pass, the time of the trigger.
    pub slot: i64,
    /// True for `stevedore trigger`.
    pub manual: bool,
}

/// What to record for one look at a schedule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// The new latest decided slot.
    pub last_slot: Option<i64>,
    /// Slots to queue, oldest first.
    pub run: Vec<Queued>,
    /// Replace the slots already waiting (cancel_other) instead of adding to them.
    pub replace_pending: bool,
    /// Stop the running pass (cancel_other).
    pub cancel_running: bool,
    /// Missed slots: how many, and the latest few by name.
    pub missed: u64,
    /// The latest missed slots (at most [`MAX_LISTED`]).
    pub missed_slots: Vec<i64>,
    /// Slots skipped because a pass ran: how many, and the latest few.
    pub skipped: u64,
    /// The latest skipped slots.
    pub skipped_slots: Vec<i64>,
    /// Set when the schedule's timing changed: counting starts again from now.
    pub signature: Option<String>,
    /// For a cyclic schedule: the due time, now consumed.
    pub clear_next_fire: bool,
    /// For a cyclic schedule whose timing changed: its new due time.
    pub set_next_fire: Option<i64>,
}

impl Decision {
    /// True when nothing but the look itself is to be recorded.
    pub fn is_quiet(&self) -> bool {
        self.run.is_empty()
            && self.missed == 0
            && self.skipped == 0
            && !self.cancel_running
            && self.signature.is_none()
            && self.set_next_fire.is_none()
    }

    fn miss(&mut self, slots: &[i64]) {
        self.missed += slots.len() as u64;
        keep_latest(&mut self.missed_slots, slots);
    }

    fn skip(&mut self, slots: &[i64]) {
        self.skipped += slots.len() as u64;
        keep_latest(&mut self.skipped_slots, slots);
    }
}

fn keep_latest(list: &mut Vec<i64>, slots: &[i64]) {
    list.extend_from_slice(slots);
    list.sort_unstable();
    if list.len() > MAX_LISTED {
        list.drain(..list.len() - MAX_LISTED);
    }
}

/// The timing of a schedule as one string: when it changes, the schedule starts counting
/// from now (its old progress says nothing about the new slots).
pub fn signature(schedule: &ScheduleConfig) -> String {
    match &schedule.timing {
        Timing::Cron(cron) => format!("cron {} in {}", cron.pattern(), cron.zone()),
        Timing::Every(every) => format!("every {}", humantime::format_duration(*every)),
    }
}

/// Decides what the slots due since the last look become. `trigger` adds a pass now
/// (`stevedore trigger`), which goes through the overlap policy like any slot.
pub fn decide(schedule: &ScheduleConfig, seen: &Observed, trigger: bool) -> Decision {
    let now = seen.now_ms;
    let mut decision = Decision::default();
    let changed = seen.signature.as_deref() != Some(signature(schedule).as_str());
    if changed {
        decision.signature = Some(signature(schedule));
    }
    let mut due: Vec<i64> = Vec::new();
    let mut watched = seen
        .checked_at
        .is_some_and(|checked| now - checked <= WATCH_GAP_MS);
    match &schedule.timing {
        Timing::Cron(cron) => {
            // A new schedule counts from now. A changed one too, but keeps a slot that fell
            // due within the watch gap: while a deploy rolls, daemons with the old and the new
            // config take turns, and each turn must not push the other's slots away.
            let from = match seen.last_slot {
                Some(last) if !changed => last,
                Some(last) => last.max(now - WATCH_GAP_MS),
                None => now,
            };
            if changed || seen.last_slot.is_none() {
                watched = true;
            }
            let mut after = from;
            while let Some(slot) = cron.next_slot(after) {
                if slot > now || due.len() >= MAX_ENUMERATED {
                    break;
                }
                due.push(slot);
                after = slot;
            }
            decision.last_slot = Some(due.last().copied().unwrap_or(from).max(from));
        }
        Timing::Every(every) => {
            // Cyclic: at most one due time, after the last pass finished; never a catch-up.
            watched = true;
            decision.last_slot = seen.last_slot;
            if !seen.running && seen.pending == 0 {
                let next = match seen.next_fire {
                    Some(next) if !changed => next,
                    // Changed: counting starts again from now.
                    _ if changed && seen.last_slot.is_some() => {
                        let next = now + every_ms(*every);
                        decision.set_next_fire = Some(next);
                        next
                    }
                    // Never ran: the first pass is due at once.
                    _ => now,
                };
                if next <= now {
                    due.push(next);
                    decision.set_next_fire = None;
                    decision.clear_next_fire = true;
                    decision.last_slot = Some(seen.last_slot.map_or(next, |last| last.max(next)));
                }
            }
        }
    }
    let mut to_run: Vec<i64> = if watched {
        // Looked at all along: the latest due slot runs; earlier ones (a stall of the
        // daemon longer than their spacing) are missed.
        match due.split_last() {
            Some((latest, earlier)) => {
                decision.miss(earlier);
                vec![*latest]
            }
            None => Vec::new(),
        }
    } else {
        let window = schedule.catchup_window.as_millis() as i64;
        let (old, recent): (Vec<i64>, Vec<i64>) =
            due.iter().partition(|slot| **slot < now - window);
        decision.miss(&old);
        match schedule.catchup {
            Catchup::All => recent,
            Catchup::Latest => match recent.split_last() {
                Some((latest, earlier)) => {
                    decision.miss(earlier);
                    vec![*latest]
                }
                None => Vec::new(),
            },
            Catchup::Skip => {
                decision.miss(&recent);
                Vec::new()
            }
        }
    };
    let mut queued: Vec<Queued> = to_run
        .drain(..)
        .map(|slot| Queued {
            slot,
            manual: false,
        })
        .collect();
    if trigger {
        queued.push(Queued {
            slot: now,
            manual: true,
        });
    }
    decision.run = overlap(schedule.overlap, seen, queued, &mut decision);
    decision
}

/// Applies the overlap policy to `queued` when a pass runs or slots already wait.
fn overlap(
    policy: Overlap,
    seen: &Observed,
    mut queued: Vec<Queued>,
    decision: &mut Decision,
) -> Vec<Queued> {
    let busy = seen.running || seen.pending > 0;
    if !busy || queued.is_empty() {
        return queued;
    }
    let slots = |queued: &[Queued]| queued.iter().map(|q| q.slot).collect::<Vec<_>>();
    match policy {
        Overlap::Skip => {
            decision.skip(&slots(&queued));
            Vec::new()
        }
        Overlap::BufferOne => {
            if seen.pending > 0 {
                decision.skip(&slots(&queued));
                return Vec::new();
            }
            let latest = queued.pop().expect("not empty");
            decision.skip(&slots(&queued));
            vec![latest]
        }
        Overlap::CancelOther => {
            let latest = queued.pop().expect("not empty");
            decision.skip(&slots(&queued));
            decision.replace_pending = seen.pending > 0;
            decision.cancel_running = seen.running;
            vec![latest]
        }
    }
}

/// `every` in milliseconds.
pub fn every_ms(every: Duration) -> i64 {
    every.as_millis() as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::config::{Mode, ScheduleConfig};
    use crate::schedule::timing::CronTiming;

    fn schedule(cron: &str, catchup: Catchup, overlap: Overlap) -> ScheduleConfig {
        ScheduleConfig {
            name: "orders".into(),
            job: "orders.toml".into(),
            job_name: "orders".into(),
            sinks: vec!["local".into()],
            timing: Timing::Cron(Box::new(CronTiming::parse(cron, "UTC").unwrap())),
            environments: Vec::new(),
            mode: Mode::Active,
            overlap,
            catchup,
            catchup_window: Duration::from_secs(3600),
            timeout: None,
            retries: 0,
            retry_delay: Duration::from_secs(60),
        }
    }

    const MINUTE: i64 = 60_000;
    /// 2026-01-01T00:00:00Z
    const T0: i64 = 1_767_225_600_000;

    fn seen_at(schedule: &ScheduleConfig, now: i64, last_slot: i64, checked_at: i64) -> Observed {
        Observed {
            now_ms: now,
            last_slot: Some(last_slot),
            checked_at: Some(checked_at),
            signature: Some(signature(schedule)),
            ..Observed::default()
        }
    }

    fn slots(decision: &Decision) -> Vec<i64> {
        decision.run.iter().map(|q| q.slot).collect()
    }

    #[test]
    fn schedule_slots_a_watched_slot_runs_once_and_a_second_look_finds_nothing() {
        let every_minute = schedule("* * * * *", Catchup::Latest, Overlap::Skip);
        let seen = seen_at(&every_minute, T0 + MINUTE + 200, T0, T0 + MINUTE - 100);
        let decision = decide(&every_minute, &seen, false);
        assert_eq!(slots(&decision), vec![T0 + MINUTE]);
        assert_eq!(decision.last_slot, Some(T0 + MINUTE));
        assert_eq!((decision.missed, decision.skipped), (0, 0));
        let again = seen_at(
            &every_minute,
            T0 + MINUTE + 400,
            T0 + MINUTE,
            T0 + MINUTE + 200,
        );
        assert!(decide(&every_minute, &again, false).is_quiet());
    }

    #[test]
    fn schedule_slots_missed_while_down_follow_catchup_and_are_all_counted() {
        // Down from T0 + 30 s to T0 + 5 min 30 s: five slots missed.
        let now = T0 + 5 * MINUTE + 30_000;
        for (catchup, run, missed) in [
            (Catchup::Latest, vec![T0 + 5 * MINUTE], 4),
            (Catchup::All, (1..=5).map(|m| T0 + m * MINUTE).collect(), 0),
            (Catchup::Skip, vec![], 5),
        ] {
            let s = schedule("* * * * *", catchup, Overlap::Skip);
            let decision = decide(&s, &seen_at(&s, now, T0, T0 + 30_000), false);
            assert_eq!(slots(&decision), run, "{catchup:?}");
            assert_eq!(decision.missed, missed, "{catchup:?}");
            assert_eq!(decision.last_slot, Some(T0 + 5 * MINUTE));
        }
    }

    #[test]
    fn schedule_slots_older_than_the_catchup_window_are_only_counted() {
        let s = schedule("* * * * *", Catchup::All, Overlap::Skip);
        let now = T0 + 120 * MINUTE;
        let decision = decide(&s, &seen_at(&s, now, T0, T0), false);
        assert_eq!(decision.run.len(), 61, "the last hour, both ends included");
        assert_eq!(decision.missed, 59);
        assert_eq!(decision.missed_slots.len(), MAX_LISTED);
        assert_eq!(decision.missed_slots.last(), Some(&(T0 + 59 * MINUTE)));
    }

    #[test]
    fn schedule_slots_overlap_skips_buffers_one_or_cancels() {
        let now = T0 + MINUTE + 100;
        for (policy, pending, run, skipped, cancel) in [
            (Overlap::Skip, 0, vec![], 1, false),
            (Overlap::BufferOne, 0, vec![T0 + MINUTE], 0, false),
            (Overlap::BufferOne, 1, vec![], 1, false),
            (Overlap::CancelOther, 1, vec![T0 + MINUTE], 0, true),
        ] {
            let s = schedule("* * * * *", Catchup::Latest, policy);
            let mut seen = seen_at(&s, now, T0, now - 200);
            seen.running = true;
            seen.pending = pending;
            let decision = decide(&s, &seen, false);
            assert_eq!(slots(&decision), run, "{policy:?}");
            assert_eq!(decision.skipped, skipped, "{policy:?}");
            assert_eq!(decision.cancel_running, cancel, "{policy:?}");
            assert_eq!(decision.replace_pending, cancel && pending > 0);
        }
    }

    #[test]
    fn schedule_slots_a_trigger_goes_through_the_overlap_policy() {
        let s = schedule("0 0 1 1 *", Catchup::Latest, Overlap::Skip);
        let idle = seen_at(&s, T0 + 10, T0, T0);
        let decision = decide(&s, &idle, true);
        assert_eq!(
            decision.run,
            vec![Queued {
                slot: T0 + 10,
                manual: true
            }]
        );
        let mut busy = idle.clone();
        busy.running = true;
        let decision = decide(&s, &busy, true);
        assert!(decision.run.is_empty());
        assert_eq!(decision.skipped_slots, vec![T0 + 10]);
    }

    #[test]
    fn schedule_slots_a_new_or_changed_schedule_counts_from_now() {
        let s = schedule("* * * * *", Catchup::All, Overlap::Skip);
        let fresh = Observed {
            now_ms: T0 + 10 * MINUTE + 30_000,
            ..Observed::default()
        };
        let decision = decide(&s, &fresh, false);
        assert!(decision.run.is_empty() && decision.missed == 0);
        assert_eq!(decision.signature, Some(signature(&s)));
        assert_eq!(decision.last_slot, Some(fresh.now_ms));
        // Progress recorded under another pattern, long ago: no catch-up of the old slots.
        let mut changed = seen_at(&s, T0 + 10 * MINUTE + 30_000, T0, T0);
        changed.signature = Some("cron 0 * * * * in UTC".into());
        let decision = decide(&s, &changed, false);
        assert!(decision.run.is_empty() && decision.missed == 0);
    }

    #[test]
    fn schedule_slots_cyclic_runs_first_at_once_then_every_after_the_finish() {
        let mut s = schedule("* * * * *", Catchup::Latest, Overlap::Skip);
        s.timing = Timing::Every(Duration::from_secs(2));
        let fresh = Observed {
            now_ms: T0,
            ..Observed::default()
        };
        assert_eq!(slots(&decide(&s, &fresh, false)), vec![T0]);
        let mut waiting = seen_at(&s, T0 + 3_000, T0, T0 + 2_900);
        waiting.next_fire = Some(T0 + 3_500);
        assert!(decide(&s, &waiting, false).run.is_empty());
        waiting.now_ms = T0 + 3_500;
        let decision = decide(&s, &waiting, false);
        assert_eq!(slots(&decision), vec![T0 + 3_500]);
        assert!(decision.clear_next_fire);
        // While a pass runs, a cyclic schedule is never due.
        let mut running = seen_at(&s, T0 + 9_000, T0, T0 + 8_900);
        running.running = true;
        running.next_fire = None;
        assert!(decide(&s, &running, false).is_quiet());
    }
}

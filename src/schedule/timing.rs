//! Cron slots in a time zone. A slot is a whole second in UTC; the pattern is matched in the
//! schedule's zone by `croner`, which handles the DST nights for patterns with one time of
//! day: `30 2 * * *` fires once on the night 02:30 does not exist (at 03:00, when the clocks
//! have jumped) and once on the night it exists twice (the first time). For other patterns a
//! local time that repeats is still one slot: a second instant with the same wall-clock time
//! as the slot before it is not a new slot.

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A parsed `cron` pattern with its zone: the slots of a schedule.
#[derive(Debug, Clone)]
pub struct CronTiming {
    cron: Cron,
    zone: Tz,
    pattern: String,
}

impl CronTiming {
    /// Parses `pattern` (5 fields, or 6 with seconds first) to be matched in `zone` (an IANA
    /// name). The error names what is wrong in words a config problem can carry.
    pub fn parse(pattern: &str, zone: &str) -> Result<CronTiming, String> {
        let zone = parse_zone(zone)?;
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(pattern)
            .map_err(|error| {
                format!(
                    "`{pattern}` is not a cron pattern (5 fields, or 6 with seconds first): {error}"
                )
            })?;
        let timing = CronTiming {
            cron,
            zone,
            pattern: pattern.to_string(),
        };
        // A pattern that parses may still never match (`0 0 30 2 *`): say so at load.
        if timing.next_slot(0).is_none() {
            return Err(format!("`{pattern}` never matches a time"));
        }
        Ok(timing)
    }

    /// The pattern as written.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The zone the pattern is matched in.
    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The first slot strictly after `after_ms` (milliseconds since the epoch, UTC), in
    /// milliseconds; `None` if the pattern never matches again.
    pub fn next_slot(&self, after_ms: i64) -> Option<i64> {
        let after = self.local(after_ms)?;
        let mut from = after;
        loop {
            let next = self.cron.find_next_occurrence(&from, false).ok()?;
            // The same wall-clock time again (a repeated hour): one slot, already had.
            if next.naive_local() == after.naive_local() {
                from = next;
                continue;
            }
            return Some(next.timestamp_millis());
        }
    }

    /// `ms` in the schedule's zone, truncated to the second (slots are whole seconds).
    fn local(&self, ms: i64) -> Option<DateTime<Tz>> {
        let utc: DateTime<Utc> = Utc.timestamp_opt(ms.div_euclid(1000), 0).single()?;
        Some(utc.with_timezone(&self.zone))
    }
}

/// An IANA time zone by name, ignoring case (`europe/berlin` is `Europe/Berlin`).
pub fn parse_zone(name: &str) -> Result<Tz, String> {
    if let Ok(zone) = name.parse::<Tz>() {
        return Ok(zone);
    }
    chrono_tz::TZ_VARIANTS
        .iter()
        .find(|zone| zone.name().eq_ignore_ascii_case(name))
        .copied()
        .ok_or_else(|| {
            format!("unknown time zone `{name}` (write an IANA name such as Europe/Berlin or UTC)")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Milliseconds of a wall-clock time in `zone` (the earlier one when it repeats).
    fn at(zone: Tz, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
        zone.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .earliest()
            .expect("a time that exists")
            .timestamp_millis()
    }

    fn utc(ms: i64) -> String {
        Utc.timestamp_millis_opt(ms)
            .unwrap()
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    }

    /// The slots from `from_ms` on, for `days` days.
    fn slots(timing: &CronTiming, from_ms: i64, until_ms: i64) -> Vec<String> {
        let mut slots = Vec::new();
        let mut at = from_ms;
        while let Some(next) = timing.next_slot(at) {
            if next > until_ms {
                break;
            }
            slots.push(utc(next));
            at = next;
        }
        slots
    }

    #[test]
    fn schedule_daily_0230_berlin_fires_once_on_both_dst_nights() {
        let berlin = parse_zone("Europe/Berlin").unwrap();
        let timing = CronTiming::parse("30 2 * * *", "Europe/Berlin").unwrap();
        // Spring forward 2026-03-29 02:00 -> 03:00: 02:30 does not exist; it fires at 03:00.
        let spring = slots(
            &timing,
            at(berlin, 2026, 3, 27, 12, 0),
            at(berlin, 2026, 3, 30, 12, 0),
        );
        assert_eq!(
            spring,
            [
                "2026-03-28 01:30:00", // 02:30 CET
                "2026-03-29 01:00:00", // 03:00 CEST, the first time after the gap
                "2026-03-30 00:30:00", // 02:30 CEST
            ]
        );
        // Fall back 2026-10-25 03:00 -> 02:00: 02:30 happens twice; it fires the first time.
        let fall = slots(
            &timing,
            at(berlin, 2026, 10, 24, 12, 0),
            at(berlin, 2026, 10, 26, 12, 0),
        );
        assert_eq!(
            fall,
            [
                "2026-10-25 00:30:00", // 02:30 CEST, not again at 02:30 CET
                "2026-10-26 01:30:00", // 02:30 CET
            ]
        );
    }

    #[test]
    fn schedule_a_repeated_wall_clock_time_is_one_slot_for_any_pattern() {
        let berlin = parse_zone("Europe/Berlin").unwrap();
        let timing = CronTiming::parse("30 2,14 * * *", "Europe/Berlin").unwrap();
        let fall = slots(
            &timing,
            at(berlin, 2026, 10, 24, 15, 0),
            at(berlin, 2026, 10, 25, 15, 0),
        );
        assert_eq!(fall, ["2026-10-25 00:30:00", "2026-10-25 13:30:00"]);
    }

    #[test]
    fn schedule_six_fields_mean_seconds_and_slots_are_whole_seconds() {
        let timing = CronTiming::parse("*/2 * * * * *", "UTC").unwrap();
        assert_eq!(timing.next_slot(1_000_500), Some(1_002_000));
        assert_eq!(timing.next_slot(1_002_000), Some(1_004_000));
    }

    #[test]
    fn schedule_bad_patterns_and_zones_are_named_in_plain_words() {
        let error = CronTiming::parse("61 * * * *", "UTC").unwrap_err();
        assert!(
            error.starts_with("`61 * * * *` is not a cron pattern"),
            "{error}"
        );
        let error = CronTiming::parse("0 0 30 2 *", "UTC").unwrap_err();
        assert_eq!(error, "`0 0 30 2 *` never matches a time");
        let error = CronTiming::parse("* * * * *", "Mars/Olympus").unwrap_err();
        assert!(
            error.contains("unknown time zone `Mars/Olympus`"),
            "{error}"
        );
        assert_eq!(
            parse_zone("europe/berlin").unwrap(),
            chrono_tz::Europe::Berlin
        );
        assert!(
            CronTiming::parse("0 0 0 1 1 * 2027", "UTC").is_err(),
            "no year field"
        );
    }
}

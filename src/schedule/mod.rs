//! Schedules for `stevedore supervise`: when each scheduled job's passes are due. This first
//! part is the timing alone (cron slots in IANA time zones, DST-correct); the daemon, the slot
//! claims in Redis and the fencing of passes build on it.

pub mod timing;

pub use timing::{CronTiming, parse_zone};

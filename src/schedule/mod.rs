//! Schedules for `stevedore supervise`: when each scheduled job's passes are due. So far: the
//! supervise file ([`config`]) and the timing of slots ([`timing`]: cron in IANA time zones,
//! DST-correct); the daemon, the slot claims in Redis and the fencing of passes build on them.

pub mod config;
pub mod timing;

pub use config::{Catchup, Mode, Overlap, ScheduleConfig, SuperviseConfig, Timing};
pub use timing::{CronTiming, parse_zone};

//! Schedules for `stevedore supervise`: the supervise file ([`config`]), the timing of slots
//! ([`timing`]: cron in IANA time zones, DST-correct), what becomes of due slots ([`slots`]),
//! their progress in Redis shared by every daemon of a group ([`state`]), and the daemon that
//! runs each pass as a child `stevedore run` ([`daemon`]), which alerts when a schedule keeps
//! failing ([`alerts`]).

pub mod alerts;
pub mod config;
pub mod control;
pub mod daemon;
pub mod http;
pub mod pass;
pub mod slots;
pub mod state;
pub mod status;
pub mod timing;

pub use config::{Catchup, Mode, Overlap, ScheduleConfig, SuperviseConfig, Timing};
pub use timing::{CronTiming, parse_zone};

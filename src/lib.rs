//! # stevedore
//!
//! A multi-process ETL pipeline: producer processes read sources and cut records into data
//! units, a Redis queue (RSMQ) per sink carries the units, consumer processes write them into
//! sinks. Delivery through the queue is at-least-once; every sink write is idempotent per unit
//! id, so every record lands exactly once in effect.
//!
//! Modules follow the data flow: [`config`] describes a job, [`source`] reads, [`unit`]
//! encodes, [`queue`] carries, [`mapping`] shapes, [`sink`] writes; [`worker`] holds the two
//! loops that run in worker processes, [`supervisor`] starts and watches them, and
//! [`run_state`] is what they share in Redis.
//!
//! Sources and sinks are plugins: each kind is one file or folder that reads its own settings
//! (through [`settings`]) and registers in one line (`source::KINDS`, `sink::KINDS`); [`job`]
//! hands those kinds to [`config`], which never names one, and [`plan`] turns a loaded job into
//! work items and prepared sinks.

#![warn(unreachable_pub)]

pub mod cli;
pub(crate) mod clock;
pub mod config;
pub(crate) mod dlq;
pub mod dry_run;
pub mod job;
pub mod mapping;
pub mod metrics;
pub(crate) mod plan;
pub mod queue;
pub(crate) mod retry;
pub mod run_state;
pub mod schedule;
pub mod settings;
pub mod sink;
pub mod source;
pub(crate) mod supervisor;
pub mod throttle;
pub mod unit;
pub mod worker;

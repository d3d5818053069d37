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

pub mod cli;
pub mod config;
pub mod mapping;
pub mod queue;
pub mod run_state;
pub mod sink;
pub mod source;
pub mod supervisor;
pub mod throttle;
pub mod unit;
pub mod worker;

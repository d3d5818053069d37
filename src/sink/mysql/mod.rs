//! The `mysql` sink: units loaded into a MySQL 8 or MariaDB 10.6+ table with `LOAD DATA
//! LOCAL INFILE` streamed from memory (multi-row `INSERT`s when the server's `local_infile`
//! is off), each exactly once in effect, by pooled connections under a concurrency and a
//! rate limit.
//!
//! - **connection**: the URL, TLS, and each process's own pool.
//! - **schema**: the table's real columns, the check of the mapping against them, and the
//!   table a mapping creates when there is none.
//! - **encode**: rows as `LOAD DATA` text or `INSERT` tuples.
//! - **write**: one unit's transaction steps, run by the shared engine
//!   ([`crate::sink::table`]).
//! - **errors**: which server errors are retried, isolated or fatal.
//! - **sql**: every statement the sink sends.

mod config;
mod connection;
mod encode;
mod errors;
mod schema;
mod sql;
mod write;

use std::sync::Arc;

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use tokio::sync::OnceCell;

use super::table::{self, FenceCheck, UnitRows};
use super::{Batch, Fence, Sink, SinkError, SinkErrors, SinkKind, WriteOutcome, unit_failures};
use crate::config::SinkConfig;
use crate::mapping::{ColumnMap, Mapping};
use crate::throttle::RateLimit;

pub(super) use config::MysqlSinkConfig;
use errors::ErrorClass;
use schema::{TableColumn, Target, ValueClass};
use sql::TableName;
use write::Failed;

/// The `mysql` kind.
pub(super) const KIND: SinkKind = SinkKind {
    name: "mysql",
    read: config::read,
    build,
};

fn build(config: &SinkConfig) -> Arc<dyn Sink> {
    let settings: &MysqlSinkConfig = config.settings();
    Arc::new(MysqlSink::new(&config.name, settings.clone(), &config.map))
}

/// The `mysql` sink of one consumer process.
pub struct MysqlSink {
    errors: SinkErrors,
    config: MysqlSinkConfig,
    table: TableName,
    columns: Vec<ColumnMap>,
    pool: Pool,
    plan: OnceCell<Arc<write::Plan>>,
    rate: Option<RateLimit>,
}

/// What the catalog says of the sink's table.
enum Found {
    /// The table, checked against the mapping.
    Fits(Target),
    /// No such table.
    Missing,
}

impl MysqlSink {
    /// A sink named `name` writing rows shaped by `mapping` as `config` says. Connects lazily.
    pub fn new(name: &str, config: MysqlSinkConfig, mapping: &Mapping) -> MysqlSink {
        MysqlSink {
            errors: SinkErrors::new(name, config.connection.password().clone()),
            table: TableName::parse(&config.table.table, &config.connection.database),
            rate: config
                .table
                .max_units_per_second
                .and_then(RateLimit::per_second),
            columns: mapping.columns().map(<[_]>::to_vec).unwrap_or_default(),
            pool: connection::pool(&config.connection, config.table.pool_size),
            plan: OnceCell::new(),
            config,
        }
    }

    fn names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.column.clone()).collect()
    }

    /// Turns a failed step (`what`) into a sink error of the right kind.
    fn failed(&self, what: &str, failed: Failed) -> SinkError {
        let message = format!("{what}: {}", failed.text);
        match failed.class {
            ErrorClass::Transient => self.errors.transient(&message),
            ErrorClass::Data | ErrorClass::Fatal => self.errors.fatal(&message),
        }
    }

    fn server_error(&self, what: &str, error: mysql_async::Error) -> SinkError {
        self.failed(what, Failed::from(error))
    }

    fn where_to(&self) -> &str {
        &self.config.connection.description
    }

    /// A pooled connection, waiting at most the pool timeout for a free one and the connect
    /// timeout for a new one.
    async fn connection(&self) -> Result<Conn, SinkError> {
        let patience = self.config.table.pool_timeout + self.config.table.connect_timeout;
        match tokio::time::timeout(patience, self.pool.get_conn()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(error)) => {
                Err(self.server_error(&format!("cannot connect to {}", self.where_to()), error))
            }
            Err(_) => Err(self.errors.transient(&format!(
                "no connection to {} within the pool and connect timeouts",
                self.where_to()
            ))),
        }
    }

    /// Finds the table and checks the mapping against it.
    async fn read_target(&self, conn: &mut Conn) -> Result<Found, SinkError> {
        let what = format!("cannot read the catalog entry of {}", self.table);
        let place = (self.table.database.as_str(), self.table.name.as_str());
        let found: Option<(String, String)> = conn
            .exec_first(sql::FIND_TABLE, place)
            .await
            .map_err(|e| self.server_error(&what, e))?;
        let Some((database, name)) = found else {
            return Ok(Found::Missing);
        };
        let table = TableName { database, name };
        let place = (table.database.as_str(), table.name.as_str());
        let all: Vec<TableColumn> = conn
            .exec::<(String, String, String, bool, bool, bool), _, _>(sql::TABLE_COLUMNS, place)
            .await
            .map_err(|e| self.server_error(&what, e))?
            .into_iter()
            .map(
                |(name, ty, data_type, nullable, has_default, generated)| TableColumn {
                    class: ValueClass::of(&data_type, &ty),
                    name,
                    ty,
                    not_null: !nullable,
                    has_default,
                    generated,
                },
            )
            .collect();
        let mut unique: Vec<(String, Vec<String>)> = Vec::new();
        for (index, column) in conn
            .exec::<(String, String), _, _>(sql::UNIQUE_INDEXES, place)
            .await
            .map_err(|e| self.server_error(&what, e))?
        {
            match unique.last_mut() {
                Some((name, columns)) if *name == index => columns.push(column),
                _ => unique.push((index, vec![column])),
            }
        }
        let unique: Vec<Vec<String>> = unique.into_iter().map(|(_, columns)| columns).collect();
        schema::match_columns(
            &table,
            &all,
            &unique,
            &self.names(),
            self.config.table.upsert_key(),
        )
        .map(Found::Fits)
        .map_err(|problems| {
            self.errors.fatal(&format!(
                "[sink.map] does not fit table {table}: {}",
                problems.join("; ")
            ))
        })
    }

    /// The `CREATE TABLE` of a missing table, from the mapping's types.
    fn create_statement(&self) -> Result<String, SinkError> {
        let mapped: Vec<(String, Option<String>, bool)> = self
            .columns
            .iter()
            .map(|c| (c.column.clone(), c.sql_type.clone(), c.required))
            .collect();
        schema::create_table(&self.table, &mapped, self.config.table.upsert_key())
            .map_err(|why| self.errors.fatal(&why))
    }

    /// Whether the server takes `LOAD DATA LOCAL INFILE`, and its statement limit.
    async fn server_limits(&self, conn: &mut Conn) -> Result<(bool, usize), SinkError> {
        let limits: Option<(i64, u64)> = conn
            .query_first(sql::SERVER_LIMITS)
            .await
            .map_err(|e| self.server_error("cannot read the server's settings", e))?;
        let (infile, packet) = limits.unwrap_or((0, 4 << 20));
        Ok((infile != 0, packet as usize))
    }

    /// How units are written, once per process: finds the table (creating it from the
    /// mapping when missing, which the log says), checks it, and creates the ledger and fence
    /// tables if missing.
    async fn plan(&self) -> Result<Arc<write::Plan>, SinkError> {
        self.plan
            .get_or_try_init(|| async {
                let mut conn = self.connection().await?;
                let target = match self.read_target(&mut conn).await? {
                    Found::Fits(target) => target,
                    Found::Missing => {
                        let create = self.create_statement()?;
                        conn.query_drop(&create).await.map_err(|e| {
                            self.server_error(&format!("cannot create {}", self.table), e)
                        })?;
                        tracing::info!(
                            table = %self.table,
                            statement = %create,
                            "created the sink's table from [sink.map]"
                        );
                        match self.read_target(&mut conn).await? {
                            Found::Fits(target) => target,
                            Found::Missing => {
                                return Err(self.errors.fatal(&format!(
                                    "table {} was created but cannot be found",
                                    self.table
                                )));
                            }
                        }
                    }
                };
                for statement in sql::create_ledger(&target.table.ledger(), &target.table.fences())
                {
                    conn.query_drop(statement).await.map_err(|e| {
                        self.server_error("cannot create the ledger and fence tables", e)
                    })?;
                }
                let (infile, packet) = self.server_limits(&mut conn).await?;
                if !infile {
                    tracing::warn!(
                        table = %target.table,
                        "the server's local_infile is OFF: loading with multi-row INSERTs, \
                         which is slower; SET GLOBAL local_infile = ON (or start the server with \
                         --local-infile=1) for the LOAD DATA LOCAL INFILE fast path"
                    );
                }
                Ok(Arc::new(write::Plan::new(
                    target,
                    self.names(),
                    self.config.table.upsert_key(),
                    self.config.table.batch_rows,
                    infile,
                    packet,
                )))
            })
            .await
            .cloned()
    }

    /// Records `fence` as its job's highest token, in a transaction of its own.
    async fn record_fence(&self, fence: &Fence) -> Result<(), SinkError> {
        let check = FenceCheck::of(fence).map_err(|why| self.errors.fatal(&why))?;
        let plan = self.plan().await?;
        let mut conn = self.connection().await?;
        let step = |what: &'static str| move |e: mysql_async::Error| (what, e);
        let result: Result<Option<u64>, (&str, mysql_async::Error)> = async {
            conn.query_drop(sql::BEGIN).await.map_err(step("begin"))?;
            conn.query_drop(sql::raise_fence(&plan.fences, &check))
                .await
                .map_err(step("record the fencing token"))?;
            let highest: Option<i64> = conn
                .exec_first(sql::highest_fence(&plan.fences), (check.job,))
                .await
                .map_err(step("read the fence"))?;
            Ok(highest.map(|t| t.max(0) as u64))
        }
        .await;
        match result {
            Ok(Some(highest)) if highest > check.token as u64 => {
                let _ = conn.query_drop(sql::ROLLBACK).await;
                Err(self.errors.fenced(fence, highest))
            }
            Ok(_) => conn
                .query_drop(sql::COMMIT)
                .await
                .map_err(|e| self.server_error("cannot record the fencing token", e)),
            Err((what, error)) => {
                if conn.query_drop(sql::ROLLBACK).await.is_err() {
                    let _ = conn.disconnect().await;
                }
                Err(self.server_error(&format!("cannot {what}"), error))
            }
        }
    }
}

#[async_trait]
impl Sink for MysqlSink {
    async fn check(&self) -> Result<String, SinkError> {
        let mut conn = self.connection().await?;
        let target = match self.read_target(&mut conn).await? {
            Found::Fits(target) => target,
            Found::Missing => {
                let create = self.create_statement()?;
                return Ok(format!(
                    "{}: table {} does not exist; the run creates it from [sink.map]: {create}",
                    self.where_to(),
                    self.table
                ));
            }
        };
        let (infile, _) = self.server_limits(&mut conn).await?;
        Ok(format!(
            "{}: table {} takes the {} mapped column(s) ({}); loads with {}",
            self.where_to(),
            target.table,
            target.columns.len(),
            target
                .columns
                .iter()
                .map(|c| {
                    let null = if c.not_null { " NOT NULL" } else { "" };
                    format!("{} {}{null}", c.name, c.ty)
                })
                .collect::<Vec<_>>()
                .join(", "),
            if infile {
                "LOAD DATA LOCAL INFILE"
            } else {
                "multi-row INSERTs (the server's local_infile is OFF)"
            }
        ))
    }

    /// Creates the table if missing, checks it, creates the ledger and fence tables, and
    /// records `fence` as the job's highest token (refused if a higher one is recorded). A
    /// transient error while recording only warns: every unit's commit passes the fence too.
    async fn prepare(&self, fence: Option<&Fence>) -> Result<(), SinkError> {
        self.plan().await?;
        let Some(fence) = fence else {
            return Ok(());
        };
        match self.record_fence(fence).await {
            Err(error) if error.is_transient() => {
                tracing::warn!(%error, "cannot record the fencing token yet; the first write does");
                Ok(())
            }
            other => other,
        }
    }

    async fn write(&self, batch: Arc<Batch>) -> Result<WriteOutcome, SinkError> {
        let plan = self.plan().await?;
        table::ledger::check_unit_id(&batch.unit_id).map_err(|why| self.errors.fatal(&why))?;
        let fence = batch
            .fence
            .as_ref()
            .map(FenceCheck::of)
            .transpose()
            .map_err(|why| self.errors.fatal(&why))?;
        let (rows, refused) = write::Encoded::new(&plan, &batch.rows);
        if let Some(rate) = &self.rate {
            rate.ready().await;
        }
        let mut conn = self.connection().await?;
        let unit = UnitRows {
            id: &batch.unit_id,
            indexes: &rows.indexes,
            fence,
            target: &plan.ledger_target,
            batch_rows: plan.batch_rows,
        };
        let mut session = write::MySession {
            conn: &mut conn,
            plan: &plan,
            rows: &rows,
        };
        let result =
            table::write_unit(&mut session, &unit, unit_failures(&batch.failures, refused)).await;
        if result.is_err() && conn.query_drop(sql::ROLLBACK).await.is_err() {
            // Never hand a connection in an unknown state back to the pool.
            let _ = conn.disconnect().await;
        }
        result.map_err(|error| {
            error.into_sink_error(&self.errors, batch.fence.as_ref(), |what, error| {
                self.failed(what, error)
            })
        })
    }

    fn concurrency(&self) -> usize {
        self.config.table.max_concurrency
    }
}

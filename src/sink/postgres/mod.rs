//! The `postgres` sink: units loaded into a PostgreSQL 12+ table with `COPY`, each exactly
//! once in effect, by pooled connections under a concurrency and a rate limit.
//!
//! - **connection**: the URL, TLS, and each process's own `deadpool-postgres` pool.
//! - **schema**: the table's real columns, the check of the mapping against them, and the
//!   table a mapping creates when there is none.
//! - **copy**: rows as `COPY` text.
//! - **write**: one unit's transaction steps, run by the shared engine
//!   ([`crate::sink::table`]): rows and ledger row together, checked against the job's fence;
//!   a refused load is cut down to the rows at fault.
//! - **errors**: which server errors are retried, isolated or fatal.
//! - **sql**: every statement the sink sends.

mod config;
mod connection;
mod copy;
mod errors;
mod schema;
mod sql;
mod write;

use std::sync::Arc;

use async_trait::async_trait;
use deadpool::managed::{Object, PoolError};
use tokio::sync::OnceCell;

use super::table::{self, FenceCheck, UnitRows};
use super::{Batch, Fence, Sink, SinkError, SinkErrors, SinkKind, WriteOutcome, unit_failures};
use crate::config::SinkConfig;
use crate::mapping::{ColumnMap, Mapping};
use crate::throttle::RateLimit;

pub(super) use config::PostgresSinkConfig;
use connection::ConnectionPool;
use errors::{ErrorClass, classify, describe};
use schema::{TableColumn, Target, ValueClass};
use sql::TableName;

/// The `postgres` kind.
pub(super) const KIND: SinkKind = SinkKind {
    name: "postgres",
    read: config::read,
    build,
};

fn build(config: &SinkConfig) -> Arc<dyn Sink> {
    let settings: &PostgresSinkConfig = config.settings();
    Arc::new(PostgresSink::new(
        &config.name,
        settings.clone(),
        &config.map,
    ))
}

/// The `postgres` sink of one consumer process.
pub struct PostgresSink {
    errors: SinkErrors,
    config: PostgresSinkConfig,
    table: TableName,
    columns: Vec<ColumnMap>,
    pool: Result<ConnectionPool, String>,
    plan: OnceCell<Arc<write::Plan>>,
    rate: Option<RateLimit>,
}

/// A pooled connection.
type Connection = Object<deadpool_postgres::Manager>;

/// What the catalog says of the sink's table.
enum Found {
    /// The table, checked against the mapping.
    Fits(Target),
    /// No such table.
    Missing,
}

impl PostgresSink {
    /// A sink named `name` writing rows shaped by `mapping` as `config` says. Connects lazily.
    pub fn new(name: &str, config: PostgresSinkConfig, mapping: &Mapping) -> PostgresSink {
        let pool = connection::pool(
            &config.connection,
            config.table.pool_size,
            config.table.pool_timeout,
            config.table.connect_timeout,
        );
        PostgresSink {
            errors: SinkErrors::new(name, config.connection.password().clone()),
            table: TableName::parse(&config.table.table),
            rate: config
                .table
                .max_units_per_second
                .and_then(RateLimit::per_second),
            columns: mapping.columns().map(<[_]>::to_vec).unwrap_or_default(),
            pool,
            plan: OnceCell::new(),
            config,
        }
    }

    fn names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.column.clone()).collect()
    }

    /// Turns a client error met while doing `what` into a sink error of the right kind.
    fn server_error(&self, what: &str, error: &tokio_postgres::Error) -> SinkError {
        let message = format!("{what}: {}", describe(error));
        match classify(error) {
            ErrorClass::Transient => self.errors.transient(&message),
            ErrorClass::Data | ErrorClass::Fatal => self.errors.fatal(&message),
        }
    }

    fn where_to(&self) -> &str {
        &self.config.connection.description
    }

    async fn connection(&self) -> Result<Connection, SinkError> {
        let pool = self.pool.as_ref().map_err(|why| self.errors.fatal(why))?;
        pool.get().await.map_err(|error| match error {
            PoolError::Backend(error) => {
                self.server_error(&format!("cannot connect to {}", self.where_to()), &error)
            }
            PoolError::Timeout(_) => self.errors.transient(&format!(
                "no connection to {} within the pool/connect timeout",
                self.where_to()
            )),
            other => self.errors.fatal(&format!("connection pool: {other}")),
        })
    }

    /// Finds the table and checks the mapping against it.
    async fn read_target(&self, client: &tokio_postgres::Client) -> Result<Found, SinkError> {
        let catalog = |e: tokio_postgres::Error| {
            self.server_error(
                &format!("cannot read the catalog entry of {}", self.table),
                &e,
            )
        };
        let Some(found) = client
            .query_opt(
                sql::FIND_TABLE,
                &[&self.table.quoted(), &self.table.folded().quoted()],
            )
            .await
            .map_err(catalog)?
        else {
            return Ok(Found::Missing);
        };
        let table = TableName {
            schema: self
                .table
                .schema
                .as_ref()
                .map(|_| found.get::<_, String>(0)),
            name: found.get(1),
        };
        let oid: u32 = found.get(2);
        let all: Vec<TableColumn> = client
            .query(sql::TABLE_COLUMNS, &[&oid])
            .await
            .map_err(catalog)?
            .iter()
            .map(|row| TableColumn {
                name: row.get(0),
                ty: row.get(1),
                class: ValueClass::of(row.get(2)),
                not_null: row.get(3),
                has_default: row.get(4),
                generated: row.get(5),
            })
            .collect();
        let unique: Vec<Vec<String>> = client
            .query(sql::UNIQUE_INDEXES, &[&oid])
            .await
            .map_err(catalog)?
            .iter()
            .map(|row| row.get(0))
            .collect();
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

    /// How units are written, once per process: finds the table (creating it from the
    /// mapping when missing, which the log says), checks it, and creates the ledger and fence
    /// tables if missing; one process at a time, under an advisory lock.
    async fn plan(&self) -> Result<Arc<write::Plan>, SinkError> {
        self.plan
            .get_or_try_init(|| async {
                let client = self.connection().await?;
                let step = |what: &'static str| {
                    move |e: tokio_postgres::Error| self.server_error(what, &e)
                };
                client
                    .batch_execute(&sql::begin_creating())
                    .await
                    .map_err(step("cannot start creating the tables"))?;
                let prepared = self.create_and_read(&client).await;
                let ended = match &prepared {
                    Ok(_) => client.batch_execute("COMMIT").await,
                    Err(_) => client.batch_execute(sql::ROLLBACK).await,
                };
                let target = prepared?;
                ended.map_err(step("cannot create the ledger and fence tables"))?;
                Ok(Arc::new(write::Plan::new(
                    target,
                    self.names(),
                    self.config.table.upsert_key(),
                    self.config.table.batch_rows,
                )))
            })
            .await
            .cloned()
    }

    async fn create_and_read(&self, client: &tokio_postgres::Client) -> Result<Target, SinkError> {
        let target = match self.read_target(client).await? {
            Found::Fits(target) => target,
            Found::Missing => {
                let create = self.create_statement()?;
                client
                    .batch_execute(&create)
                    .await
                    .map_err(|e| self.server_error(&format!("cannot create {}", self.table), &e))?;
                tracing::info!(
                    table = %self.table.folded(),
                    statement = %create,
                    "created the sink's table from [sink.map]"
                );
                match self.read_target(client).await? {
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
        client
            .batch_execute(&sql::create_ledger(
                &target.table.ledger(),
                &target.table.fences(),
            ))
            .await
            .map_err(|e| self.server_error("cannot create the ledger and fence tables", &e))?;
        Ok(target)
    }

    /// Records `fence` as its job's highest token, in a transaction of its own.
    async fn record_fence(&self, fence: &Fence) -> Result<(), SinkError> {
        let check = FenceCheck::of(fence).map_err(|why| self.errors.fatal(&why))?;
        let plan = self.plan().await?;
        let client = self.connection().await?;
        let Err(error) = client
            .batch_execute(&sql::record_fence(&plan.fences, &check))
            .await
        else {
            return Ok(());
        };
        if client.batch_execute(sql::ROLLBACK).await.is_err() {
            // Never hand a connection in an unknown state back to the pool.
            drop(Object::take(client));
        } else if errors::is_fenced(&error) {
            let highest = write::read_highest_fence(&client, &plan.fences, &fence.job)
                .await
                .map_err(|e| self.server_error("cannot read the fence", &e))?;
            return Err(self.errors.fenced(fence, highest.unwrap_or_default()));
        }
        Err(self.server_error("cannot record the fencing token", &error))
    }
}

#[async_trait]
impl Sink for PostgresSink {
    async fn check(&self) -> Result<String, SinkError> {
        let client = self.connection().await?;
        let target = match self.read_target(&client).await? {
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
        let ledger = target.table.ledger();
        let present: bool = client
            .query_one(sql::TABLE_EXISTS, &[&ledger.quoted()])
            .await
            .map_err(|e| self.server_error("cannot look for the ledger table", &e))?
            .get(0);
        Ok(format!(
            "{}: table {} takes the {} mapped column(s) ({}); ledger {}",
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
            if present {
                format!("{ledger} present")
            } else {
                format!("{ledger} is created on the first write")
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
        let client = self.connection().await?;
        let unit = UnitRows {
            id: &batch.unit_id,
            indexes: &rows.indexes,
            fence,
            target: &plan.ledger_target,
            batch_rows: plan.batch_rows,
        };
        let mut session = write::PgSession {
            client: &client,
            plan: &plan,
            rows: &rows,
        };
        let result =
            table::write_unit(&mut session, &unit, unit_failures(&batch.failures, refused)).await;
        if result.is_err() && client.batch_execute(sql::ROLLBACK).await.is_err() {
            // Never hand a connection in an unknown state back to the pool.
            drop(Object::take(client));
        }
        result.map_err(|error| {
            error.into_sink_error(&self.errors, batch.fence.as_ref(), |what, error| {
                self.server_error(what, &error)
            })
        })
    }

    fn concurrency(&self) -> usize {
        self.config.table.max_concurrency
    }
}

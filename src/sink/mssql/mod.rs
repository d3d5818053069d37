//! The `mssql` sink: units bulk-loaded into a SQL Server or Azure SQL table, each exactly once
//! in effect, by pooled tiberius connections under a concurrency and a rate limit.
//!
//! - **connection**: the ADO.NET string and each process's own deadpool of connections.
//! - **schema**: the table's real columns, and the check of the mapping against them.
//! - **encode**: JSON values to the columns' types.
//! - **write**: one unit in one transaction: rows and a ledger entry together, checked against
//!   the job's fence; a refused load is split until the rows at fault are found.
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
use deadpool::managed::{Object, PoolError};
use tokio::sync::OnceCell;

use super::{Batch, Fence, Sink, SinkError, SinkErrors, SinkKind, WriteMode, WriteOutcome};
use crate::config::SinkConfig;
use crate::mapping::Mapping;
use crate::throttle::RateLimit;

pub(super) use config::MssqlSinkConfig;
use connection::{Connection, ConnectionPool, TdsManager};

/// The `mssql` kind.
pub(super) const KIND: SinkKind = SinkKind {
    name: "mssql",
    read: config::read,
    build,
};

fn build(config: &SinkConfig) -> Arc<dyn Sink> {
    let settings: &MssqlSinkConfig = config.settings();
    Arc::new(MssqlSink::new(
        &config.name,
        settings.clone(),
        config.map.clone(),
    ))
}
use errors::{ErrorClass, classify, describe};
use schema::Target;
use sql::TableName;
use write::run;

/// The `mssql` sink of one consumer process.
pub struct MssqlSink {
    errors: SinkErrors,
    config: MssqlSinkConfig,
    table: TableName,
    columns: Vec<String>,
    pool: ConnectionPool,
    plan: OnceCell<Arc<write::Plan>>,
    rate: Option<RateLimit>,
}

impl MssqlSink {
    /// A sink named `name` writing rows shaped by `mapping` as `config` says. Connects lazily.
    pub fn new(name: &str, config: MssqlSinkConfig, mapping: Mapping) -> MssqlSink {
        let pool = connection::pool(
            config.connection.clone(),
            config.pool_size,
            config.pool_timeout,
            config.connect_timeout,
        );
        let columns = mapping
            .columns()
            .map(|columns| columns.iter().map(|c| c.column.clone()).collect())
            .unwrap_or_default();
        MssqlSink {
            errors: SinkErrors::new(name, config.connection.password().clone()),
            table: TableName::parse(&config.table),
            rate: config.max_units_per_second.and_then(RateLimit::per_second),
            columns,
            pool,
            plan: OnceCell::new(),
            config,
        }
    }

    fn transient(&self, message: String) -> SinkError {
        self.errors.transient(&message)
    }

    fn fatal(&self, message: String) -> SinkError {
        self.errors.fatal(&message)
    }

    /// Turns a tiberius error met while doing `what` into a sink error of the right kind.
    fn server_error(&self, what: &str, error: &tiberius::error::Error) -> SinkError {
        let message = format!("{what}: {}", describe(error));
        match classify(error) {
            ErrorClass::Transient => self.transient(message),
            ErrorClass::Data | ErrorClass::Fatal => self.fatal(message),
        }
    }

    fn where_to(&self) -> String {
        self.config.connection.description.clone()
    }

    async fn connection(&self) -> Result<Object<TdsManager>, SinkError> {
        self.pool.get().await.map_err(|error| match error {
            PoolError::Backend(error) => {
                self.server_error(&format!("cannot connect to {}", self.where_to()), &error)
            }
            PoolError::Timeout(_) => self.transient(format!(
                "no connection to {} within the pool/connect timeout",
                self.where_to()
            )),
            other => self.fatal(format!("connection pool: {other}")),
        })
    }

    /// A write error as the sink reports it; `fence` is the writer's token.
    fn write_error(&self, error: write::WriteError, fence: Option<&Fence>) -> SinkError {
        match (error, fence) {
            (write::WriteError::Server { what, error }, _) => self.server_error(what, &error),
            (write::WriteError::Refused(message), _) => self.fatal(message),
            (write::WriteError::Fenced { highest }, Some(fence)) => {
                self.errors.fenced(fence, highest)
            }
            (write::WriteError::Fenced { highest }, None) => self.fatal(format!(
                "fenced by token {highest} without a token of its own"
            )),
        }
    }

    /// Records `fence` as its job's highest token, in a transaction of its own.
    async fn record_fence(&self, fence: &Fence) -> Result<(), SinkError> {
        let check = write::fence_check(fence).map_err(|e| self.write_error(e, Some(fence)))?;
        let fences = self.table.fences();
        let mut connection = self.connection().await?;
        let Err(error) = run(&mut connection, &sql::record_fence(&fences, &check)).await else {
            return Ok(());
        };
        if run(&mut connection, sql::ROLLBACK_IF_OPEN).await.is_err() {
            // Never hand a connection in an unknown state back to the pool.
            drop(Object::take(connection));
        } else if error.code() == Some(sql::FENCED) {
            let highest = write::read_highest_fence(&mut connection, &fences, &fence.job)
                .await
                .map_err(|e| self.server_error("cannot read the fence", &e))?;
            return Err(self.errors.fenced(fence, highest.unwrap_or_default()));
        }
        Err(self.server_error("cannot record the fencing token", &error))
    }

    /// Reads the table's columns and checks the mapping against them.
    async fn read_target(&self, connection: &mut Connection) -> Result<Target, SinkError> {
        let quoted = self.table.quoted();
        let all = connection
            .column_metadata(&quoted, &["*"])
            .await
            .map_err(|error| match error.code() {
                Some(208) => self.fatal(format!(
                    "table {} does not exist in {} ({})",
                    self.table,
                    self.where_to(),
                    describe(&error)
                )),
                _ => self.server_error(
                    &format!("cannot read the columns of {}", self.table),
                    &error,
                ),
            })?;
        let table_text = self.table.to_string();
        let required: Vec<String> = connection
            .query(sql::REQUIRED_COLUMNS, &[&table_text])
            .await
            .map_err(|e| self.server_error("cannot read the required columns", &e))?
            .into_first_result()
            .await
            .map_err(|e| self.server_error("cannot read the required columns", &e))?
            .iter()
            .filter_map(|row| row.get::<&str, _>(0).map(str::to_string))
            .collect();
        if self.columns.is_empty() {
            return Err(
                self.fatal("an mssql sink needs [sink.map]: the table's columns are fixed".into())
            );
        }
        schema::match_columns(&self.table, &all, &required, &self.columns).map_err(|problems| {
            self.fatal(format!(
                "[sink.map] does not fit table {}: {}",
                self.table,
                problems.join("; ")
            ))
        })
    }

    /// How units are written, once per process after the table was read and checked; creates
    /// the ledger and fence tables if missing, and gives a ledger made before fencing tokens
    /// its `fence` column.
    async fn plan(&self) -> Result<Arc<write::Plan>, SinkError> {
        self.plan
            .get_or_try_init(|| async {
                let mut connection = self.connection().await?;
                let target = self.read_target(&mut connection).await?;
                let (ledger, fences) = (self.table.ledger(), self.table.fences());
                run(&mut connection, &sql::create_ledger(&ledger, &fences))
                    .await
                    .map_err(|e| {
                        self.server_error("cannot create the ledger and fence tables", &e)
                    })?;
                run(&mut connection, &sql::add_fence_column(&ledger))
                    .await
                    .map_err(|e| {
                        self.server_error("cannot add the fence column to the ledger", &e)
                    })?;
                let key = match self.config.mode {
                    WriteMode::Append => None,
                    WriteMode::Upsert => Some(self.config.key.clone()),
                };
                Ok(Arc::new(write::Plan::new(
                    target,
                    key,
                    self.config.batch_rows,
                )))
            })
            .await
            .cloned()
    }
}

#[async_trait]
impl Sink for MssqlSink {
    async fn check(&self) -> Result<String, SinkError> {
        let mut connection = self.connection().await?;
        let target = self.read_target(&mut connection).await?;
        let ledger = self.table.ledger();
        // `SELECT TOP 0 *` answers 208 when the table is missing, without reading a row.
        let present = match connection.column_metadata(&ledger.quoted(), &["*"]).await {
            Ok(_) => true,
            Err(error) if error.code() == Some(208) => false,
            Err(error) => return Err(self.server_error("cannot look for the ledger table", &error)),
        };
        Ok(format!(
            "{}: table {} takes the {} mapped column(s) ({}); ledger {}",
            self.where_to(),
            self.table,
            target.columns.len(),
            target
                .columns
                .iter()
                .map(|c| {
                    let null = if c.nullable { "" } else { " NOT NULL" };
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

    /// Checks the table, creates the ledger and fence tables, and records `fence` as the job's
    /// highest token (refused if a higher one is recorded). A transient error while recording
    /// only warns: every unit's commit passes the fence too, so the first write records it.
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
        if let Some(rate) = &self.rate {
            rate.ready().await;
        }
        let mut connection = self.connection().await?;
        let result = write::write_unit(&mut connection, &plan, &batch).await;
        if result.is_err() && run(&mut connection, sql::ROLLBACK_IF_OPEN).await.is_err() {
            // Never hand a connection in an unknown state back to the pool.
            drop(Object::take(connection));
        }
        result.map_err(|error| self.write_error(error, batch.fence.as_ref()))
    }

    fn concurrency(&self) -> usize {
        self.config.max_concurrency
    }
}

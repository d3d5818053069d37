//! The `cosmos` sink: a unit's rows become documents with deterministic ids, upserted into an
//! Azure Cosmos DB (NoSQL API) container, so every redelivery rewrites the same documents
//! (exactly once in effect, with no ledger).
//!
//! - Documents are grouped by partition key value; a group of two or more goes as
//!   transactional batches of upserts (at most 100 operations, under 2 MB), a lone document as
//!   one upsert ([`document`]).
//! - Requests per process are bounded by `max_concurrency` and paced by an [`AdaptiveRate`]
//!   that starts at `max_requests_per_second`, halves when Cosmos DB throttles (429, seen in
//!   the SDK's own retries too) and climbs back while it does not; `max_ru_per_second` adds a
//!   budget of request units by the charge each response reports.
//! - A document Cosmos DB refuses (400, 409, 413) fails alone and is dead-lettered with the
//!   status and message; throttling (after the SDK's own retries), timeouts and unavailability
//!   (429, 408, 410, 449, 503) end the write with a transient error carrying the server's
//!   retry-after. The consumer retries the unit ([`crate::retry`]); the retry sends only the
//!   requests that did not land ([`landed`]).

mod config;
pub mod document;
mod errors;
mod landed;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::models::{ContainerProperties, PartitionKeyValue};
use azure_data_cosmos::options::{
    BinaryEncodingOptions, ConnectionPoolOptions, OperationOptions, OperationOptionsBuilder,
    ServerCertificateValidation, ThrottlingRetryOptionsBuilder,
};
use azure_data_cosmos::{
    AccountReference, CosmosClient, CosmosError, CosmosRuntime, PartitionKey, RoutingStrategy,
    TransactionalBatch,
};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{OnceCell, Semaphore};

pub use self::config::CosmosSinkConfig;
use self::document::{Document, KeyValue, Request};
use self::errors::{Class, classify, describe};
use self::landed::Landed;
use super::{Batch, Failure, Sink, SinkError, SinkErrors, SinkKind, WriteOutcome};
use crate::config::SinkConfig;
use crate::throttle::{AdaptiveRate, ChargeBudget};

/// The `cosmos` kind.
pub const KIND: SinkKind = SinkKind {
    name: "cosmos",
    read: config::read,
    build,
};

fn build(config: &SinkConfig) -> Arc<dyn Sink> {
    let settings: &CosmosSinkConfig = config.settings();
    Arc::new(CosmosSink::new(&config.name, settings.clone()))
}

/// How long one request to an emulator may take: the SDK's longest. Its default of 6 s is
/// Cosmos DB's latency; a local emulator is one process on a machine that may be busy, and a
/// request cut off there is sent again into the same queue of work.
const EMULATOR_REQUEST_TIMEOUT: Duration = Duration::from_secs(65);

/// The `cosmos` sink.
pub struct CosmosSink {
    name: String,
    errors: SinkErrors,
    config: CosmosSinkConfig,
    container: OnceCell<ContainerClient>,
    /// What failed attempts of units landed, so their retries send only the rest.
    landed: Landed,
    in_flight: Semaphore,
    /// Units being written right now.
    writing: AtomicUsize,
    rate: AdaptiveRate,
    budget: Option<ChargeBudget>,
}

impl CosmosSink {
    /// A sink for `config`, whose id template and key path were parsed with the config.
    pub fn new(name: &str, config: CosmosSinkConfig) -> CosmosSink {
        CosmosSink {
            name: name.to_string(),
            errors: SinkErrors::new(name, config.key.clone()),
            in_flight: Semaphore::new(config.max_concurrency.max(1)),
            writing: AtomicUsize::new(0),
            rate: AdaptiveRate::new(config.max_requests_per_second),
            budget: ChargeBudget::per_second(config.max_ru_per_second),
            container: OnceCell::new(),
            landed: Landed::default(),
            config,
        }
    }

    fn transient(&self, message: String) -> SinkError {
        self.errors.transient(&message)
    }

    fn fatal(&self, message: String) -> SinkError {
        self.errors.fatal(&message)
    }

    fn where_to(&self) -> String {
        format!(
            "{}/{}/{}",
            self.config.endpoint.trim_end_matches('/'),
            self.config.database,
            self.config.container
        )
    }

    /// The client's default for every request: the SDK's own retries of throttled requests.
    fn operation_options(&self) -> OperationOptions {
        let retries = ThrottlingRetryOptionsBuilder::new()
            .with_max_retry_count(self.config.throttle_retries)
            .with_max_retry_wait_time(self.config.throttle_max_wait)
            .build();
        OperationOptionsBuilder::new()
            .with_throttling_retry_options(retries)
            .build()
    }

    async fn client(&self) -> Result<CosmosClient, SinkError> {
        let endpoint =
            self.config.endpoint.parse().map_err(|error| {
                self.fatal(format!("endpoint `{}`: {error}", self.config.endpoint))
            })?;
        let account = AccountReference::with_authentication_key(
            endpoint,
            self.config.key.expose().to_string(),
        );
        let mut builder =
            CosmosClient::builder().with_default_operation_options(self.operation_options());
        if self.config.emulator {
            let pool = ConnectionPoolOptions::builder()
                .with_server_certificate_validation(
                    ServerCertificateValidation::RequiredUnlessEmulator,
                )
                .with_is_http2_allowed(false)
                .with_max_dataplane_request_timeout(EMULATOR_REQUEST_TIMEOUT)
                .build()
                .map_err(|e| self.fatal(format!("emulator settings: {e}")))?;
            let runtime = CosmosRuntime::builder()
                .with_connection_pool(pool)
                .build()
                .await
                .map_err(|e| self.fatal(format!("emulator settings: {e}")))?;
            builder = builder
                .with_runtime(runtime)
                .with_binary_encoding_options(BinaryEncodingOptions::new().with_enabled(false));
        }
        builder
            .build(account, RoutingStrategy::PreferredRegions(Vec::new()))
            .await
            .map_err(|e| self.connect_error(&e))
    }

    fn connect_error(&self, error: &CosmosError) -> SinkError {
        let message = format!("connecting to {}: {}", self.where_to(), describe(error));
        match classify(error) {
            Class::Throttled | Class::Transient => self.transient(message),
            Class::Document | Class::Fatal => self.fatal(message),
        }
    }

    /// Opens the container (creating database and container first when asked to), and checks
    /// its partition key path against the config.
    async fn open(&self, create: bool) -> Result<(ContainerClient, String), SinkError> {
        let client = self.client().await?;
        if create {
            self.create_missing(&client).await?;
        }
        let database = client.database_client(&self.config.database);
        let container = database
            .container_client(&self.config.container, None)
            .await
            .map_err(|e| self.connect_error(&e))?;
        let properties: ContainerProperties = container
            .read(None)
            .await
            .map_err(|e| self.connect_error(&e))?
            .into_model()
            .map_err(|e| self.fatal(format!("reading the container's properties: {e}")))?;
        let paths: Vec<String> = properties
            .partition_key
            .paths()
            .iter()
            .map(|p| p.to_string())
            .collect();
        if paths != [self.config.shape.key.as_str()] {
            return Err(self.fatal(format!(
                "container {} is partitioned on {}, but partition_key is `{}`",
                self.where_to(),
                paths.join(", "),
                self.config.shape.key.as_str()
            )));
        }
        Ok((container, paths.join(", ")))
    }

    async fn create_missing(&self, client: &CosmosClient) -> Result<(), SinkError> {
        if let Err(error) = client.create_database(&self.config.database, None).await
            && !error.status().is_conflict()
        {
            return Err(self.connect_error(&error));
        }
        let properties = ContainerProperties::new(
            self.config.container.clone(),
            self.config.partition_key.clone().into(),
        );
        if let Err(error) = client
            .database_client(&self.config.database)
            .create_container(properties, None)
            .await
            && !error.status().is_conflict()
        {
            return Err(self.connect_error(&error));
        }
        Ok(())
    }

    async fn container(&self) -> Result<&ContainerClient, SinkError> {
        self.container
            .get_or_try_init(|| async { Ok(self.open(false).await?.0) })
            .await
    }

    /// Sends one request until every document landed or failed alone. A request that fails
    /// transiently (after the SDK's own retries of a throttled one) fails the write at once,
    /// with the server's retry-after: the consumer owns the retries ([`crate::retry`]).
    async fn send(
        &self,
        container: &ContainerClient,
        request: Request,
    ) -> Result<Vec<Failure>, SinkError> {
        let mut failures = Vec::new();
        let mut pending = vec![request];
        while let Some(request) = pending.pop() {
            let outcome = {
                let _permit = self
                    .in_flight
                    .acquire()
                    .await
                    .map_err(|_| self.fatal("the sink is closing".into()))?;
                self.rate.ready().await;
                match &request {
                    Request::Single(document) => self.upsert(container, document).await,
                    Request::Batch(documents) => self.batch(container, documents).await,
                }
            };
            match outcome {
                Sent::Done => {}
                Sent::Refused(failure) => failures.push(failure),
                Sent::Partly { refused, again } => {
                    failures.extend(refused);
                    if !again.is_empty() {
                        pending.extend(document::split(again));
                    }
                }
                Sent::SplitUp => {
                    let Request::Batch(documents) = request else {
                        unreachable!("only batches are split up");
                    };
                    pending.extend(documents.into_iter().map(Request::Single));
                }
                Sent::Again { why, wait } => {
                    return Err(self
                        .transient(format!("writing to {}: {why}", self.where_to()))
                        .after(wait));
                }
                Sent::Stop(error) => return Err(error),
            }
        }
        Ok(failures)
    }

    async fn upsert(&self, container: &ContainerClient, document: &Document) -> Sent {
        let result = container
            .upsert_item(
                partition_key(&document.key),
                &document.id,
                &document.body,
                None,
            )
            .await;
        match result {
            Ok(response) => {
                self.observe(
                    throttled_attempts(&response.diagnostics()),
                    response.headers().request_charge().map(|c| f64::from(*c)),
                )
                .await;
                Sent::Done
            }
            Err(error) => self.failed(&error, || Failure {
                index: document.index,
                reason: format!(
                    "Cosmos DB refused document `{}`: {}",
                    document.id,
                    describe(&error)
                ),
            }),
        }
    }

    async fn batch(&self, container: &ContainerClient, documents: &[Document]) -> Sent {
        let mut batch = TransactionalBatch::new(partition_key(&documents[0].key));
        for document in documents {
            batch = match batch.upsert_item(&document.body, None) {
                Ok(batch) => batch,
                Err(error) => return Sent::Stop(self.fatal(format!("building a batch: {error}"))),
            };
        }
        let response = match container.execute_transactional_batch(batch, None).await {
            Ok(response) => response,
            // A whole batch refused for a document's sake: find it by sending them one by one.
            Err(error) if classify(&error) == Class::Document => return Sent::SplitUp,
            Err(error) => return self.failed(&error, || unreachable!("document errors split up")),
        };
        let throttled = throttled_attempts(&response.diagnostics());
        let charge = response.headers().request_charge().map(|c| f64::from(*c));
        let results = match response.into_model() {
            Ok(results) => results,
            Err(error) => {
                return Sent::Again {
                    why: format!("unreadable batch response: {error}"),
                    wait: None,
                };
            }
        };
        self.observe(throttled, charge).await;
        let (mut refused, mut again, mut wait) = (Vec::new(), Vec::new(), None);
        for (document, result) in documents.iter().zip(results.results()) {
            match result.status_code() {
                200..=299 => {}
                // Not run because another operation failed: send it again.
                424 => again.push(document.clone()),
                400 | 409 | 413 => refused.push(Failure {
                    index: document.index,
                    reason: format!(
                        "Cosmos DB refused document `{}`: status {}{}",
                        document.id,
                        result.status_code(),
                        result
                            .substatus_code()
                            .map(|s| format!("/{s}"))
                            .unwrap_or_default()
                    ),
                }),
                status => {
                    if status == 429 {
                        self.rate.throttled(result.retry_after());
                    }
                    wait = wait.or(result.retry_after());
                    again.push(document.clone());
                }
            }
        }
        if refused.is_empty() && !again.is_empty() {
            return Sent::Again {
                why: format!("a batch came back with {} operations to redo", again.len()),
                wait,
            };
        }
        if refused.is_empty() && again.is_empty() {
            return Sent::Done;
        }
        Sent::Partly { refused, again }
    }

    /// Requests one unit keeps in flight: its share of `max_concurrency` among the units the
    /// process is writing right now (all of it when it writes one), rounded down so the shares
    /// do not add up to more than the whole. More would only queue on the semaphore, and every
    /// permit handed from one unit's request to another's costs a task wake-up on another
    /// thread: on two shared cores, about a tenth of the throughput (`bench/cosmos.sh`).
    fn requests_per_unit(&self) -> usize {
        let writing = self.writing.load(Ordering::Relaxed).max(1);
        (self.config.max_concurrency / writing).max(1)
    }

    /// Tells the pacing what a response saw: 429s the SDK retried, and its charge.
    async fn observe(&self, throttled: usize, charge: Option<f64>) {
        if throttled > 0 {
            self.rate.throttled(None);
        } else {
            self.rate.succeeded();
        }
        if let (Some(budget), Some(charge)) = (&self.budget, charge) {
            budget.spend(charge).await;
        }
    }

    fn failed(&self, error: &CosmosError, refused: impl FnOnce() -> Failure) -> Sent {
        match classify(error) {
            Class::Document => Sent::Refused(refused()),
            Class::Throttled => {
                let wait = retry_after(error);
                self.rate.throttled(wait);
                Sent::Again {
                    why: describe(error),
                    wait,
                }
            }
            Class::Transient => Sent::Again {
                why: describe(error),
                wait: None,
            },
            Class::Fatal => Sent::Stop(self.fatal(format!(
                "writing to {}: {}",
                self.where_to(),
                describe(error)
            ))),
        }
    }
}

/// What sending one request came to.
enum Sent {
    /// Every document landed.
    Done,
    /// The document was refused; it fails alone.
    Refused(Failure),
    /// Some documents were refused, others must go again.
    Partly {
        refused: Vec<Failure>,
        again: Vec<Document>,
    },
    /// The whole batch was refused for a document's sake: send its documents one by one.
    SplitUp,
    /// Worth trying again, after `wait` if the server said.
    Again { why: String, wait: Option<Duration> },
    /// Nothing retrying fixes.
    Stop(SinkError),
}

/// Counts a unit as being written for as long as it lives.
struct Writing<'a>(&'a AtomicUsize);

impl<'a> Writing<'a> {
    fn enter(count: &'a AtomicUsize) -> Writing<'a> {
        count.fetch_add(1, Ordering::Relaxed);
        Writing(count)
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How many of a response's attempts the server throttled (the SDK retried them itself).
fn throttled_attempts(diagnostics: &azure_data_cosmos::diagnostics::DiagnosticsContext) -> usize {
    diagnostics
        .requests()
        .iter()
        .filter(|r| r.status().is_throttled())
        .count()
}

fn retry_after(error: &CosmosError) -> Option<Duration> {
    error
        .response()
        .and_then(|response| response.headers().retry_after_ms)
        .map(Duration::from_millis)
}

fn partition_key(value: &KeyValue) -> PartitionKey {
    match value {
        KeyValue::String(text) => PartitionKey::from(text.clone()),
        KeyValue::Integer(n) => PartitionKey::from(*n),
        // Finite: checked when the document was built.
        KeyValue::Number(f) => PartitionKey::try_from(*f)
            .unwrap_or_else(|_| PartitionKey::from(PartitionKeyValue::NULL)),
        KeyValue::Bool(b) => PartitionKey::from(*b),
    }
}

#[async_trait]
impl Sink for CosmosSink {
    async fn check(&self) -> Result<String, SinkError> {
        let (_, paths) = self.open(false).await?;
        Ok(format!(
            "container {} (partition key {paths}); documents get id `{}`",
            self.where_to(),
            self.config.id
        ))
    }

    async fn prepare(&self, _fence: Option<&crate::sink::Fence>) -> Result<(), SinkError> {
        let (container, _) = self.open(self.config.create_if_missing).await?;
        let _ = self.container.set(container);
        Ok(())
    }

    fn throttled_requests(&self) -> u64 {
        self.rate.throttles()
    }

    async fn write(&self, batch: Arc<Batch>) -> Result<WriteOutcome, SinkError> {
        let container = self.container().await?;
        let (requests, mut failures) = self.config.shape.requests(&batch);
        let rows = batch.rows.len() as u64;
        let _writing = Writing::enter(&self.writing);
        let mut landed = self.landed.take(&batch.unit_id);
        let mut requests = requests
            .into_iter()
            .enumerate()
            .filter(|(index, _)| !landed.contains_key(index))
            .collect::<Vec<_>>()
            .into_iter();
        let mut sends = FuturesUnordered::new();
        let mut failed: Option<SinkError> = None;
        loop {
            // Re-read at every completion: a unit widens when others finish. After a failure
            // no request starts; the ones in flight finish and count as landed.
            while failed.is_none() && sends.len() < self.requests_per_unit() {
                let Some((index, request)) = requests.next() else {
                    break;
                };
                sends.push(async move { (index, self.send(container, request).await) });
            }
            match sends.next().await {
                Some((index, Ok(refused))) => {
                    landed.insert(index, refused);
                }
                Some((_, Err(error))) if !error.is_transient() => return Err(error),
                Some((_, Err(error))) => {
                    failed.get_or_insert(error);
                }
                None => break,
            }
        }
        if let Some(error) = failed {
            self.landed.keep(&batch.unit_id, landed);
            return Err(error);
        }
        failures.extend(landed.into_values().flatten());
        let refused_rows = failures.len() as u64;
        Ok(WriteOutcome {
            fresh: true,
            written: rows - refused_rows,
            failures,
            columns_added: Vec::new(),
        })
    }

    fn concurrency(&self) -> usize {
        (self.config.max_concurrency / 4).max(1)
    }
}

impl std::fmt::Debug for CosmosSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CosmosSink")
            .field("name", &self.name)
            .field("container", &self.where_to())
            .finish()
    }
}

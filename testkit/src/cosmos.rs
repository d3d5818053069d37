//! Cosmos DB targets for the `cosmos` tests: a real Cosmos DB REST server on loopback always,
//! and a real Azure Cosmos DB account as well when `STEVEDORE_COSMOS_ENDPOINT` and
//! `STEVEDORE_COSMOS_KEY` name one.
//!
//! The local server is the npm package `@vercel/cosmosdb-server` (pinned in
//! `testkit/cosmos/package-lock.json`) started by our `testkit/cosmos/launcher.js`,
//! which fixes at start-up what `azure_data_cosmos` needs (http endpoints, string partition key
//! range ids, the batch partition key header, cross-partition queries, keep-alive) and adds
//! switches real Cosmos DB has and the stock server lacks: throttling (429 with
//! `x-ms-retry-after-ms`) and the 2 MiB request limit (413). It keeps everything in memory,
//! ignores auth and is single-threaded. The first test that needs it runs `npm ci` in that
//! folder, once, under a file lock, so parallel tests and test binaries do not race.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::Duration;

use azure_data_cosmos::clients::{ContainerClient, DatabaseClient};
use azure_data_cosmos::feed::FeedScope;
use azure_data_cosmos::models::ContainerProperties;
use azure_data_cosmos::options::{
    BinaryEncodingOptions, ConnectionPoolOptions, MaxItemCountHint, QueryOptions,
    ServerCertificateValidation,
};
use azure_data_cosmos::{
    AccountReference, CosmosClient, CosmosClientBuilder, CosmosRuntime, RoutingStrategy,
};
use futures::TryStreamExt;
use serde_json::Value;

use crate::{PATIENCE, block_on};

/// The well-known Cosmos DB emulator key. The local server ignores auth, but the SDK signs
/// every request with a key, so it needs one that is valid base64.
pub const EMULATOR_KEY: &str =
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw==";

/// The real account's endpoint, if the environment names one.
const REAL_ENDPOINT_ENV: &str = "STEVEDORE_COSMOS_ENDPOINT";
/// The real account's key.
const REAL_KEY_ENV: &str = "STEVEDORE_COSMOS_KEY";

/// A throwaway Cosmos DB REST server (`node launcher.js`) on a free loopback port, killed when
/// dropped.
pub struct CosmosServer {
    child: Child,
    port: u16,
}

/// What the server's throttling switch has counted since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleCounts {
    /// Document writes answered with 429.
    pub throttled: u64,
    /// Document writes passed on to the server.
    pub served: u64,
    /// Requests answered with 413 for being over the size limit.
    pub too_large: u64,
}

impl CosmosServer {
    /// Installs the server's npm package if needed, starts it on a free port and waits until
    /// it says it listens.
    pub fn start() -> CosmosServer {
        ensure_npm_installed();
        let mut child = Command::new("node")
            .arg(cosmos_dir().join("launcher.js"))
            .args(["--port", "0", "--exit-with-stdin"])
            .current_dir(cosmos_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node must be installed (scripts/ensure-deps.sh)");
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready, port) = mpsc::channel();
        std::thread::spawn(move || {
            // Reads on after the ready line so the server never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("listening ") {
                    let _ = ready.send(port.trim().parse::<u16>());
                }
            }
        });
        match port.recv_timeout(PATIENCE) {
            Ok(Ok(port)) => CosmosServer { child, port },
            outcome => {
                let _ = child.kill();
                let status = child.wait();
                panic!("the Cosmos test server did not start ({outcome:?}, exit {status:?})");
            }
        }
    }

    /// The server's process id (the benchmark pins it to a core of its own).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The account endpoint to give the SDK (`http://127.0.0.1:<port>/`; the SDK accepts
    /// plain HTTP only for loopback "emulator" hosts).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// The key to give the SDK (the server ignores it).
    pub fn key(&self) -> &'static str {
        EMULATOR_KEY
    }

    /// A client for this server, with the emulator settings (see [`emulator_client`]).
    pub async fn client(&self) -> CosmosClient {
        self.client_with(|builder| builder).await
    }

    /// A client for this server, after `configure` has had its say on the builder (fault
    /// injection rules, default operation options, ...).
    pub async fn client_with(
        &self,
        configure: impl FnOnce(CosmosClientBuilder) -> CosmosClientBuilder,
    ) -> CosmosClient {
        emulator_client(&self.endpoint(), self.key(), configure).await
    }

    /// Makes `fraction` (0..=1) of the document writes that follow (create, upsert, batch,
    /// replace, delete) answer 429 with `x-ms-retry-after-ms: retry_after_ms` and
    /// `x-ms-substatus: 3200`, as real Cosmos DB does when a container runs out of RU/s. Which
    /// writes is deterministic: evenly spread, restarting from this call. 0 turns it off.
    pub fn throttle(&self, fraction: f64, retry_after_ms: u64) {
        self.control(&serde_json::json!({
            "fraction": fraction,
            "retry_after_ms": retry_after_ms,
        }));
    }

    /// Sets the request size limit past which the server answers 413 (2 MiB, as Cosmos DB, by
    /// default; 0 turns it off).
    pub fn max_request_bytes(&self, bytes: u64) {
        self.control(&serde_json::json!({ "max_request_bytes": bytes }));
    }

    /// What the throttling switch has counted so far.
    pub fn throttle_counts(&self) -> ThrottleCounts {
        let state = self.control_request("GET", None);
        let count = |name: &str| {
            state[name]
                .as_u64()
                .unwrap_or_else(|| panic!("no {name} in {state}"))
        };
        ThrottleCounts {
            throttled: count("throttled"),
            served: count("served"),
            too_large: count("too_large"),
        }
    }

    fn control(&self, update: &Value) -> Value {
        self.control_request("POST", Some(update))
    }

    /// One HTTP/1.1 request to the launcher's control endpoint, which the SDK never uses.
    fn control_request(&self, method: &str, body: Option<&Value>) -> Value {
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("control connects");
        stream
            .set_read_timeout(Some(PATIENCE))
            .expect("read timeout");
        write!(
            stream,
            "{method} /_stevedore/throttle HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("control request is sent");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("control answers");
        let (head, reply) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("malformed control response: {response}"));
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "control request failed: {response}"
        );
        serde_json::from_str(reply).expect("control answers JSON")
    }
}

impl Drop for CosmosServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long a test's client waits for one request to the local server: the SDK's longest
/// (its default of 6 s is for Cosmos DB's latency; the local server is one single-threaded
/// process that may share a busy core with the whole suite).
pub const LOCAL_REQUEST_TIMEOUT: Duration = Duration::from_secs(65);

/// Documents a read-back asks for per page. Bounded, so that no one response has to carry a
/// whole container, whatever its size (Cosmos DB itself ends a page at 4 MB).
pub const READ_PAGE_ITEMS: u32 = 1000;

/// Query options that ask for pages of at most `items` documents.
pub fn pages_of(items: u32) -> QueryOptions {
    let items = NonZeroU32::new(items).expect("a page holds documents");
    QueryOptions::default().with_max_item_count(MaxItemCountHint::Limit(items))
}

/// Every document of `container`, by id: `SELECT * FROM c` across partitions, page by page,
/// [`READ_PAGE_ITEMS`] documents a page at most.
pub async fn read_all(container: &ContainerClient) -> BTreeMap<String, Value> {
    let documents: Vec<Value> = container
        .query_items::<Value>(
            "SELECT * FROM c",
            FeedScope::full_container(),
            Some(pages_of(READ_PAGE_ITEMS)),
        )
        .await
        .expect("the read-back query starts")
        .try_collect()
        .await
        .expect("every page of the read-back query arrives");
    let count = documents.len();
    let by_id: BTreeMap<String, Value> = documents
        .into_iter()
        .map(|d| (d["id"].as_str().expect("string ids").to_string(), d))
        .collect();
    assert_eq!(by_id.len(), count, "the read-back saw a document twice");
    by_id
}

/// A client for a local Cosmos DB emulator or test server at `endpoint`, configured through the
/// SDK's options API rather than environment variables:
/// - server certificate validation `RequiredUnlessEmulator` (a self-signed certificate is
///   accepted only on loopback; plain `http://` is accepted there anyway),
/// - HTTP/2 off (the server speaks HTTP/1.1 only; this also turns Gateway V2 off),
/// - binary encoding off (the server speaks JSON only),
/// - requests wait up to [`LOCAL_REQUEST_TIMEOUT`].
///
/// Routing takes the account's own region order (an empty preferred list).
pub async fn emulator_client(
    endpoint: &str,
    key: &str,
    configure: impl FnOnce(CosmosClientBuilder) -> CosmosClientBuilder,
) -> CosmosClient {
    let pool = ConnectionPoolOptions::builder()
        .with_server_certificate_validation(ServerCertificateValidation::RequiredUnlessEmulator)
        .with_is_http2_allowed(false)
        .with_max_dataplane_request_timeout(LOCAL_REQUEST_TIMEOUT)
        .build()
        .expect("valid connection pool options");
    let runtime = CosmosRuntime::builder()
        .with_connection_pool(pool)
        .build()
        .await
        .expect("a Cosmos runtime");
    let builder = CosmosClient::builder()
        .with_runtime(runtime)
        .with_binary_encoding_options(BinaryEncodingOptions::new().with_enabled(false));
    build_client(configure(builder), endpoint, key).await
}

/// A client for a real account at `endpoint`, with the SDK's defaults.
pub async fn account_client(
    endpoint: &str,
    key: &str,
    configure: impl FnOnce(CosmosClientBuilder) -> CosmosClientBuilder,
) -> CosmosClient {
    build_client(configure(CosmosClient::builder()), endpoint, key).await
}

async fn build_client(builder: CosmosClientBuilder, endpoint: &str, key: &str) -> CosmosClient {
    let account = AccountReference::with_authentication_key(
        endpoint
            .parse()
            .unwrap_or_else(|e| panic!("bad Cosmos endpoint {endpoint}: {e}")),
        key.to_string(),
    );
    builder
        .build(account, RoutingStrategy::PreferredRegions(Vec::new()))
        .await
        .unwrap_or_else(|e| panic!("Cosmos client for {endpoint}: {e:#}"))
}

/// Where a scenario writes: the local server, or a real account.
pub struct CosmosTarget {
    server: Option<CosmosServer>,
    endpoint: String,
    key: String,
    database: String,
}

impl CosmosTarget {
    /// The local server, then the real account if `STEVEDORE_COSMOS_ENDPOINT` and
    /// `STEVEDORE_COSMOS_KEY` are set (printing that the real part of `test` was skipped
    /// otherwise). Each target gets a database name unique to `test` and this run.
    pub fn all(test: &str) -> Vec<CosmosTarget> {
        let mut targets = vec![CosmosTarget::test_server(test)];
        targets.extend(CosmosTarget::real_account(test));
        targets
    }

    /// The real account, if `STEVEDORE_COSMOS_ENDPOINT` and `STEVEDORE_COSMOS_KEY` name one
    /// (printing that the real part of `test` was skipped otherwise).
    pub fn real_account(test: &str) -> Option<CosmosTarget> {
        let real = |name| {
            std::env::var(name)
                .ok()
                .filter(|v: &String| !v.trim().is_empty())
        };
        match (real(REAL_ENDPOINT_ENV), real(REAL_KEY_ENV)) {
            (Some(endpoint), Some(key)) => Some(CosmosTarget {
                server: None,
                endpoint,
                key,
                database: unique_database(test),
            }),
            _ => {
                println!(
                    "{test}: {REAL_ENDPOINT_ENV} and {REAL_KEY_ENV} are not both set; skipped the real Cosmos DB part (ran against the local test server only)"
                );
                None
            }
        }
    }

    /// The local server alone, for switches only it has (throttling, size limit).
    pub fn test_server(test: &str) -> CosmosTarget {
        let server = CosmosServer::start();
        CosmosTarget {
            endpoint: server.endpoint(),
            key: server.key().to_string(),
            server: Some(server),
            database: unique_database(test),
        }
    }

    /// `test server` or `real account`, for assertion messages.
    pub fn label(&self) -> &'static str {
        if self.server.is_some() {
            "test server"
        } else {
            "real account"
        }
    }

    /// The account endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The account key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The database this target's scenario uses (deleted afterwards on a real account).
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The local server; `None` on a real account.
    pub fn server(&self) -> Option<&CosmosServer> {
        self.server.as_ref()
    }

    /// A client: emulator settings for the local server, the SDK's defaults for a real account.
    pub async fn client(&self) -> CosmosClient {
        self.client_with(|builder| builder).await
    }

    /// A client, after `configure` has had its say on the builder.
    pub async fn client_with(
        &self,
        configure: impl FnOnce(CosmosClientBuilder) -> CosmosClientBuilder,
    ) -> CosmosClient {
        if self.server.is_some() {
            emulator_client(&self.endpoint, &self.key, configure).await
        } else {
            account_client(&self.endpoint, &self.key, configure).await
        }
    }

    /// Creates this target's database if it does not exist yet, and returns its client.
    pub async fn create_database(&self, client: &CosmosClient) -> DatabaseClient {
        if let Err(error) = client.create_database(&self.database, None).await
            && !error.status().is_conflict()
        {
            panic!(
                "{}: creating database {}: {error:#}",
                self.label(),
                self.database
            );
        }
        client.database_client(self.database.as_str())
    }

    /// Creates the database if needed and a container `name` partitioned on
    /// `partition_key_path` (e.g. `/customerId`) in it, and returns the container's client.
    pub async fn create_container(
        &self,
        client: &CosmosClient,
        name: &str,
        partition_key_path: &str,
    ) -> ContainerClient {
        let database = self.create_database(client).await;
        database
            .create_container(
                ContainerProperties::new(name.to_string(), partition_key_path.into()),
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("{}: creating container {name}: {e:#}", self.label()));
        database
            .container_client(name, None)
            .await
            .unwrap_or_else(|e| panic!("{}: opening container {name}: {e:#}", self.label()))
    }
}

impl Drop for CosmosTarget {
    /// Deletes the scenario's database from a real account (the local server just goes away).
    /// Runs on a thread of its own, so it works whether or not it is dropped inside a runtime.
    fn drop(&mut self) {
        if self.server.is_some() {
            return;
        }
        let (endpoint, key, database) = (
            self.endpoint.clone(),
            self.key.clone(),
            self.database.clone(),
        );
        let cleanup = std::thread::spawn(move || {
            block_on(async {
                let client = account_client(&endpoint, &key, |builder| builder).await;
                if let Err(error) = client.database_client(database.as_str()).delete(None).await
                    && !error.status().is_not_found()
                {
                    eprintln!("could not delete Cosmos database {database}: {error}");
                }
            })
        });
        let _ = cleanup.join();
    }
}

/// A database name unique to `test`, this process and this moment.
fn unique_database(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos();
    format!("{test}_{}_{}", std::process::id(), nanos % 1_000_000_007)
}

/// `testkit/cosmos`: the launcher and its npm package.
fn cosmos_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cosmos")
}

/// Installs the server's npm package once (see [`crate::npm_ci`]).
fn ensure_npm_installed() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| crate::npm_ci(&cosmos_dir(), "@vercel/cosmosdb-server"));
}

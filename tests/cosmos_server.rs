//! Smoke tests of the Cosmos DB test support: the Azure SDK (`azure_data_cosmos`) against our
//! local Cosmos REST server (`testkit/cosmos`), and against a real account as well when
//! `STEVEDORE_COSMOS_ENDPOINT` and `STEVEDORE_COSMOS_KEY` are set. They prove the server and
//! the SDK settings the sink will use work together; they do not test stevedore code.

use std::sync::Arc;

use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::fault_injection::{
    FaultInjectionConditionBuilder, FaultInjectionErrorType, FaultInjectionResultBuilder,
    FaultInjectionRuleBuilder, FaultOperationType,
};
use azure_data_cosmos::feed::FeedScope;
use azure_data_cosmos::models::PartitionKeyValue;
use azure_data_cosmos::options::{
    ItemWriteOptions, OperationOptionsBuilder, QueryOptions, ThrottlingRetryOptionsBuilder,
};
use azure_data_cosmos::{PartitionKey, Query, TransactionalBatch};
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

use testkit::block_on;
use testkit::cosmos::{CosmosTarget, READ_PAGE_ITEMS, ThrottleCounts, pages_of, read_all};

/// Partition key path of every test container.
const PARTITION_KEY_PATH: &str = "/customerId";

/// Order `n` of customer `n % 5`.
fn order(n: u32) -> Value {
    json!({
        "id": format!("order-{n}"),
        "customerId": format!("customer-{}", n % 5),
        "amount": n,
    })
}

fn customer_of(document: &Value) -> String {
    document["customerId"]
        .as_str()
        .expect("customerId is a string")
        .to_string()
}

fn id_of(document: &Value) -> &str {
    document["id"].as_str().expect("id is a string")
}

/// Every document a query returns, all pages of at most [`READ_PAGE_ITEMS`].
async fn query(
    container: &ContainerClient,
    query: impl Into<Query>,
    scope: FeedScope,
) -> Vec<Value> {
    query_pages(container, query, scope, Some(READ_PAGE_ITEMS))
        .await
        .concat()
}

/// The pages of a query, each of at most `page_items` documents (`None`: as many as the server
/// puts in a page).
async fn query_pages(
    container: &ContainerClient,
    query: impl Into<Query>,
    scope: FeedScope,
    page_items: Option<u32>,
) -> Vec<Vec<Value>> {
    let options = page_items.map_or_else(QueryOptions::default, pages_of);
    container
        .query_items::<Value>(query, scope, Some(options))
        .await
        .expect("query starts")
        .into_pages()
        .map_ok(|page| page.into_items())
        .try_collect()
        .await
        .expect("query pages")
}

/// Writes orders `0..count` (with a few `lines` each, for joins) in transactional batches.
async fn write_orders(container: &ContainerClient, count: u32) {
    for customer in 0..5 {
        let numbers: Vec<u32> = (0..count).filter(|n| n % 5 == customer).collect();
        for chunk in numbers.chunks(100) {
            let mut batch = TransactionalBatch::new(format!("customer-{customer}"));
            for &n in chunk {
                let mut document = order(n);
                document["lines"] = (0..n % 4)
                    .map(|line| json!({"sku": line, "n": n}))
                    .collect();
                batch = batch.upsert_item(document, None).expect("serialisable");
            }
            let response = container
                .execute_transactional_batch(batch, None)
                .await
                .expect("batch");
            assert_eq!(u16::from(response.status().status_code()), 200);
        }
    }
}

/// Reads a document back, or `None` when there is none.
async fn read(container: &ContainerClient, pk: impl Into<PartitionKey>, id: &str) -> Option<Value> {
    match container.read_item(pk, id, None).await {
        Ok(response) => Some(response.into_model().expect("a JSON document")),
        Err(error) if error.status().is_not_found() => None,
        Err(error) => panic!("reading {id}: {error:#}"),
    }
}

#[test]
fn cosmos_creates_database_and_container_with_partition_key() {
    for target in CosmosTarget::all("cosmos_creates_container") {
        block_on(async {
            let client = target.client().await;
            let container = target
                .create_container(&client, "orders", PARTITION_KEY_PATH)
                .await;
            let properties = container
                .read(None)
                .await
                .expect("container properties")
                .into_model()
                .expect("container properties model");
            assert_eq!(properties.id, "orders", "{}", target.label());
            assert_eq!(
                properties.partition_key.paths(),
                [PARTITION_KEY_PATH],
                "{}",
                target.label()
            );
        });
    }
}

#[test]
fn cosmos_upserts_fifty_documents_and_reads_them_back() {
    for target in CosmosTarget::all("cosmos_upserts_fifty") {
        block_on(async {
            let client = target.client().await;
            let container = target
                .create_container(&client, "orders", PARTITION_KEY_PATH)
                .await;
            for n in 0..50 {
                let document = order(n);
                let response = container
                    .upsert_item(customer_of(&document), id_of(&document), &document, None)
                    .await
                    .unwrap_or_else(|e| panic!("{}: upsert {n}: {e:#}", target.label()));
                assert_eq!(u16::from(response.status().status_code()), 201);
                let charge = response
                    .headers()
                    .request_charge()
                    .expect("a request charge");
                assert!(charge.value() > 0.0, "{}: charge {charge}", target.label());
            }
            for n in 0..50 {
                let expected = order(n);
                let found = read(&container, customer_of(&expected), id_of(&expected))
                    .await
                    .unwrap_or_else(|| panic!("{}: order {n} is missing", target.label()));
                assert_eq!(found["amount"], expected["amount"], "{}", target.label());
                assert_eq!(found["customerId"], expected["customerId"]);
            }
            let all = query(&container, "SELECT * FROM c", FeedScope::full_container()).await;
            assert_eq!(all.len(), 50, "{}", target.label());
        });
    }
}

#[test]
fn cosmos_transactional_batch_upserts_in_one_partition() {
    for target in CosmosTarget::all("cosmos_batch") {
        block_on(async {
            let client = target.client().await;
            let container = target
                .create_container(&client, "orders", PARTITION_KEY_PATH)
                .await;
            // One existing document, so the batch both creates and replaces.
            let existing = json!({"id": "b-0", "customerId": "batch-customer", "amount": -1});
            container
                .upsert_item("batch-customer", "b-0", &existing, None)
                .await
                .expect("first upsert");

            let mut batch = TransactionalBatch::new("batch-customer");
            for n in 0..10 {
                let document =
                    json!({"id": format!("b-{n}"), "customerId": "batch-customer", "amount": n});
                batch = batch.upsert_item(document, None).expect("serialisable");
            }
            let response = container
                .execute_transactional_batch(batch, None)
                .await
                .unwrap_or_else(|e| panic!("{}: batch: {e:#}", target.label()));
            assert_eq!(u16::from(response.status().status_code()), 200);
            assert!(response.headers().request_charge().is_some());
            let results = response.into_model().expect("batch results");
            let statuses: Vec<u16> = results.results().iter().map(|r| r.status_code()).collect();
            let mut expected = vec![201; 10];
            expected[0] = 200;
            assert_eq!(statuses, expected, "{}", target.label());
            assert!(results.results().iter().all(|r| r.is_success()));

            let documents = query(
                &container,
                "SELECT * FROM c",
                FeedScope::partition("batch-customer"),
            )
            .await;
            assert_eq!(documents.len(), 10, "{}", target.label());
            let mut amounts: Vec<i64> = documents
                .iter()
                .map(|d| d["amount"].as_i64().unwrap())
                .collect();
            amounts.sort();
            assert_eq!(amounts, (0..10).collect::<Vec<_>>(), "{}", target.label());

            // A batch whose second operation fails changes nothing: 207, the failure's own
            // status for it, 424 for every other operation.
            let failing = TransactionalBatch::new("batch-customer")
                .upsert_item(json!({"id": "b-20", "customerId": "batch-customer"}), None)
                .and_then(|b| b.create_item(json!({"id": "b-1", "customerId": "batch-customer"})))
                .and_then(|b| {
                    b.upsert_item(json!({"id": "b-21", "customerId": "batch-customer"}), None)
                })
                .expect("serialisable");
            let response = container
                .execute_transactional_batch(failing, None)
                .await
                .unwrap_or_else(|e| panic!("{}: failing batch: {e:#}", target.label()));
            assert_eq!(
                u16::from(response.status().status_code()),
                207,
                "{}",
                target.label()
            );
            let statuses: Vec<u16> = response
                .into_model()
                .expect("batch results")
                .results()
                .iter()
                .map(|r| r.status_code())
                .collect();
            assert_eq!(statuses, [424, 409, 424], "{}", target.label());
            assert_eq!(
                read(&container, "batch-customer", "b-20").await,
                None,
                "{}",
                target.label()
            );
            let kept = read(&container, "batch-customer", "b-1")
                .await
                .expect("b-1 stays");
            assert_eq!(kept["amount"], 1, "{}", target.label());

            // At most 100 operations.
            let mut too_many = TransactionalBatch::new("batch-customer");
            for n in 0..101 {
                too_many = too_many
                    .upsert_item(
                        json!({"id": format!("m-{n}"), "customerId": "batch-customer"}),
                        None,
                    )
                    .expect("serialisable");
            }
            let error = container
                .execute_transactional_batch(too_many, None)
                .await
                .expect_err("101 operations");
            assert_eq!(
                u16::from(error.status().status_code()),
                400,
                "{}: {error:#}",
                target.label()
            );
        });
    }
}

#[test]
fn cosmos_upserting_the_same_id_twice_leaves_one_document() {
    for target in CosmosTarget::all("cosmos_upsert_twice") {
        block_on(async {
            let client = target.client().await;
            let container = target
                .create_container(&client, "orders", PARTITION_KEY_PATH)
                .await;
            let first = json!({"id": "same", "customerId": "c", "amount": 1});
            let second = json!({"id": "same", "customerId": "c", "amount": 2});
            let created = container
                .upsert_item("c", "same", &first, None)
                .await
                .expect("upsert");
            let replaced = container
                .upsert_item("c", "same", &second, None)
                .await
                .expect("upsert");
            assert_eq!(u16::from(created.status().status_code()), 201);
            assert_eq!(u16::from(replaced.status().status_code()), 200);

            let found = query(
                &container,
                Query::from("SELECT * FROM c WHERE c.id = @id")
                    .with_parameter("@id", "same")
                    .expect("a parameter"),
                FeedScope::full_container(),
            )
            .await;
            assert_eq!(found.len(), 1, "{}: {found:?}", target.label());
            assert_eq!(found[0]["amount"], 2, "{}", target.label());
        });
    }
}

#[test]
fn cosmos_queries_within_a_partition_and_across_partitions() {
    for target in CosmosTarget::all("cosmos_query") {
        block_on(async {
            let client = target.client().await;
            let container = target
                .create_container(&client, "orders", PARTITION_KEY_PATH)
                .await;
            for n in 0..20 {
                let document = order(n);
                container
                    .upsert_item(customer_of(&document), id_of(&document), &document, None)
                    .await
                    .expect("upsert");
            }
            // The partition key header alone scopes a query, as in Cosmos DB.
            let customer_3 = query(
                &container,
                "SELECT * FROM c",
                FeedScope::partition("customer-3"),
            )
            .await;
            let mut ids: Vec<&str> = customer_3.iter().map(id_of).collect();
            ids.sort();
            assert_eq!(
                ids,
                ["order-13", "order-18", "order-3", "order-8"],
                "{}",
                target.label()
            );

            let big = query(
                &container,
                Query::from("SELECT c.id, c.amount FROM c WHERE c.amount >= @min")
                    .with_parameter("@min", 15)
                    .expect("a parameter"),
                FeedScope::full_container(),
            )
            .await;
            let mut amounts: Vec<i64> = big.iter().map(|d| d["amount"].as_i64().unwrap()).collect();
            amounts.sort();
            assert_eq!(amounts, [15, 16, 17, 18, 19], "{}", target.label());
        });
    }
}

/// Reading a query page by page gives what reading it whole gives: no document twice, none
/// left out, in the same order where the query orders. (The local server answers a
/// continuation from the query's kept result; this holds it to the stock server's answers.)
#[test]
fn cosmos_query_pages_hold_what_the_whole_result_holds() {
    for target in CosmosTarget::all("cosmos_query_pages") {
        block_on(async {
            let client = target.client().await;
            let container = target
                .create_container(&client, "orders", PARTITION_KEY_PATH)
                .await;
            write_orders(&container, 600).await;
            let ordered = "SELECT * FROM c ORDER BY c.amount DESC";
            for (sql, scope) in [
                ("SELECT * FROM c", FeedScope::full_container()),
                ("SELECT * FROM c", FeedScope::partition("customer-2")),
                (ordered, FeedScope::full_container()),
                (
                    "SELECT c.id, l.sku FROM c JOIN l IN c.lines",
                    FeedScope::full_container(),
                ),
                (
                    "SELECT VALUE c.amount FROM c WHERE c.amount >= 250",
                    FeedScope::partition("customer-0"),
                ),
            ] {
                let whole = query_pages(&container, sql, scope.clone(), None)
                    .await
                    .concat();
                let pages = query_pages(&container, sql, scope, Some(7)).await;
                let label = format!("{}: {sql}", target.label());
                assert!(whole.len() > 7, "{label}: {} rows", whole.len());
                assert!(pages.iter().all(|page| page.len() <= 7), "{label}");
                let mut paged = pages.concat();
                let mut whole = whole;
                if sql != ordered {
                    let key = |row: &Value| row.to_string();
                    paged.sort_by_key(key);
                    whole.sort_by_key(key);
                }
                assert_eq!(paged, whole, "{label}");
            }
        });
    }
}

/// A document deleted between two pages of a query is not in the later pages, and every other
/// document is read exactly once (the local server keeps no stale result past a change).
#[test]
fn cosmos_query_pages_follow_changes_between_pages() {
    for target in CosmosTarget::all("cosmos_query_changes") {
        block_on(async {
            let client = target.client().await;
            let container = target
                .create_container(&client, "orders", PARTITION_KEY_PATH)
                .await;
            write_orders(&container, 2500).await;
            let mut pages = container
                .query_items::<Value>(
                    "SELECT * FROM c",
                    FeedScope::full_container(),
                    Some(pages_of(1000)),
                )
                .await
                .expect("query starts")
                .into_pages();
            let first = pages
                .try_next()
                .await
                .expect("first page")
                .expect("a first page")
                .into_items();
            let seen: Vec<&str> = first.iter().map(id_of).collect();
            let doomed = (0..2500)
                .map(order)
                .find(|o| !seen.contains(&id_of(o)))
                .expect("an order not read yet");
            container
                .delete_item(customer_of(&doomed), id_of(&doomed), None)
                .await
                .expect("delete");
            let rest: Vec<Vec<Value>> = pages
                .map_ok(|page| page.into_items())
                .try_collect()
                .await
                .expect("the later pages");
            let mut ids: Vec<String> = first
                .iter()
                .chain(rest.iter().flatten())
                .map(|d| id_of(d).to_string())
                .collect();
            ids.sort();
            let mut expected: Vec<String> = (0..2500)
                .map(|n| format!("order-{n}"))
                .filter(|id| id != id_of(&doomed))
                .collect();
            expected.sort();
            assert_eq!(ids, expected, "{}", target.label());
        });
    }
}

/// A container of 100,000 documents reads back whole, page by page, in bounded pages.
#[test]
fn cosmos_reads_back_a_hundred_thousand_documents() {
    let target = CosmosTarget::test_server("cosmos_read_back_100k");
    block_on(async {
        let client = target.client().await;
        let container = target
            .create_container(&client, "orders", PARTITION_KEY_PATH)
            .await;
        write_orders(&container, 100_000).await;
        let all = read_all(&container).await;
        assert_eq!(all.len(), 100_000);
        for n in [0, 1, 49_999, 99_999] {
            let document = &all[&format!("order-{n}")];
            assert_eq!(document["amount"], n, "{document}");
            assert_eq!(document["customerId"], format!("customer-{}", n % 5));
        }
    });
}

#[test]
fn cosmos_partition_key_values_string_number_null_and_missing() {
    for target in CosmosTarget::all("cosmos_partition_key_kinds") {
        block_on(async {
            let client = target.client().await;
            let container = target
                .create_container(&client, "orders", PARTITION_KEY_PATH)
                .await;
            let cases: [(PartitionKey, Value); 4] = [
                ("text".into(), json!({"id": "s", "customerId": "text"})),
                (42.into(), json!({"id": "n", "customerId": 42})),
                (
                    PartitionKey::from(PartitionKeyValue::NULL),
                    json!({"id": "null", "customerId": null}),
                ),
                (
                    PartitionKey::from(PartitionKeyValue::UNDEFINED),
                    json!({"id": "missing"}),
                ),
            ];
            for (key, document) in &cases {
                container
                    .upsert_item(key.clone(), id_of(document), document, None)
                    .await
                    .unwrap_or_else(|e| panic!("{}: upsert {document}: {e:#}", target.label()));
            }
            for (key, document) in &cases {
                let found = read(&container, key.clone(), id_of(document)).await;
                assert_eq!(
                    found.as_ref().map(|d| &d["id"]),
                    Some(&document["id"]),
                    "{}: {document}",
                    target.label()
                );
            }

            // A partition key that is not the document's is refused, not stored elsewhere.
            let error = container
                .upsert_item("other", "s", json!({"id": "s", "customerId": "text"}), None)
                .await
                .expect_err("the key does not match the document");
            assert_eq!(
                (
                    u16::from(error.status().status_code()),
                    error.status().sub_status().map(|s| s.value())
                ),
                (400, Some(1001)),
                "{}: {error:#}",
                target.label()
            );
        });
    }
}

#[test]
fn cosmos_throttled_writes_are_retried_by_the_sdk_and_all_land() {
    let target = CosmosTarget::test_server("cosmos_throttled");
    let server = target.server().expect("the test server");
    block_on(async {
        let client = target.client().await;
        let container = target
            .create_container(&client, "orders", PARTITION_KEY_PATH)
            .await;
        server.throttle(0.3, 5);

        // 100 single upserts, eight at a time, then 5 batches of 10 in one partition each.
        let upserts = futures::stream::iter(0..100)
            .map(|n| {
                let container = &container;
                async move {
                    let document = order(n);
                    container
                        .upsert_item(customer_of(&document), id_of(&document), &document, None)
                        .await
                        .unwrap_or_else(|e| panic!("upsert {n}: {e:#}"))
                        .diagnostics()
                        .request_count()
                }
            })
            .buffer_unordered(8)
            .collect::<Vec<usize>>()
            .await;
        let mut attempts: usize = upserts.iter().sum();
        for b in 0..5 {
            let mut batch = TransactionalBatch::new(format!("batch-{b}"));
            for n in 0..10 {
                let document =
                    json!({"id": format!("batch-{b}-{n}"), "customerId": format!("batch-{b}")});
                batch = batch.upsert_item(document, None).expect("serialisable");
            }
            let response = container
                .execute_transactional_batch(batch, None)
                .await
                .unwrap_or_else(|e| panic!("batch {b}: {e:#}"));
            attempts += response.diagnostics().request_count();
            let results = response.into_model().expect("batch results");
            assert!(results.results().iter().all(|r| r.is_success()));
        }
        server.throttle(0.0, 0);

        let counts = server.throttle_counts();
        assert!(counts.throttled > 0, "{counts:?}");
        assert_eq!(
            counts.served, 105,
            "one served write per upsert and per batch: {counts:?}"
        );
        assert_eq!(
            attempts as u64,
            counts.served + counts.throttled,
            "the SDK's own diagnostics count every throttled attempt it retried: {counts:?}"
        );
        let all = query(&container, "SELECT * FROM c", FeedScope::full_container()).await;
        assert_eq!(all.len(), 150);
    });
}

#[test]
fn cosmos_throttling_past_the_retry_limit_surfaces_429_with_retry_after() {
    let target = CosmosTarget::test_server("cosmos_throttle_limit");
    let server = target.server().expect("the test server");
    block_on(async {
        let client = target.client().await;
        let container = target
            .create_container(&client, "orders", PARTITION_KEY_PATH)
            .await;
        server.throttle(1.0, 7);
        let retries = ThrottlingRetryOptionsBuilder::new()
            .with_max_retry_count(2)
            .build();
        let options = ItemWriteOptions::default().with_operation_options(
            OperationOptionsBuilder::new()
                .with_throttling_retry_options(retries)
                .build(),
        );
        let error = container
            .upsert_item(
                "c",
                "x",
                json!({"id": "x", "customerId": "c"}),
                Some(options),
            )
            .await
            .expect_err("every attempt is throttled");
        server.throttle(0.0, 0);

        assert!(error.status().is_throttled(), "{error:#}");
        assert_eq!(u16::from(error.status().status_code()), 429);
        assert_eq!(
            error.status().sub_status().map(|s| s.value()),
            Some(3200),
            "{error:#}"
        );
        let response = error.response().expect("the service's response");
        assert_eq!(response.headers().retry_after_ms, Some(7));
        assert_eq!(
            server.throttle_counts(),
            ThrottleCounts {
                throttled: 3,
                served: 0,
                too_large: 0
            },
            "one attempt and two retries"
        );
        assert_eq!(read(&container, "c", "x").await, None);
    });
}

#[test]
fn cosmos_rejects_requests_over_two_mib_with_413() {
    let target = CosmosTarget::test_server("cosmos_too_large");
    let server = target.server().expect("the test server");
    block_on(async {
        let client = target.client().await;
        let container = target
            .create_container(&client, "orders", PARTITION_KEY_PATH)
            .await;
        let big = json!({"id": "big", "customerId": "c", "blob": "x".repeat(2 * 1024 * 1024)});
        let error = container
            .upsert_item("c", "big", &big, None)
            .await
            .expect_err("over 2 MiB");
        assert_eq!(u16::from(error.status().status_code()), 413, "{error:#}");
        assert_eq!(server.throttle_counts().too_large, 1);
        assert_eq!(read(&container, "c", "big").await, None);
    });
}

#[test]
fn cosmos_fault_injection_429s_are_retried_by_the_sdk() {
    let target = CosmosTarget::test_server("cosmos_fault_injection");
    let server = target.server().expect("the test server");
    let throttle = FaultInjectionResultBuilder::new()
        .with_error(FaultInjectionErrorType::TooManyRequests)
        .build();
    let rule = Arc::new(
        FaultInjectionRuleBuilder::new("upserts-throttled-twice", throttle)
            .with_condition(
                FaultInjectionConditionBuilder::new()
                    .with_operation_type(FaultOperationType::UpsertItem)
                    .build(),
            )
            .with_hit_limit(2)
            .build(),
    );
    block_on(async {
        let setup = target.client().await;
        let container = target
            .create_container(&setup, "orders", PARTITION_KEY_PATH)
            .await;
        let faulty = target
            .client_with(|builder| {
                builder
                    .with_fault_injection_rules(vec![rule.clone()])
                    .expect("valid rules")
            })
            .await;
        let faulty_container = faulty
            .database_client(target.database())
            .container_client("orders", None)
            .await
            .expect("container client");

        let response = faulty_container
            .upsert_item("c", "x", json!({"id": "x", "customerId": "c"}), None)
            .await
            .expect("the upsert lands after two injected 429s");
        let diagnostics = response.diagnostics();
        let statuses: Vec<u16> = diagnostics
            .requests()
            .iter()
            .map(|r| u16::from(r.status().status_code()))
            .collect();
        assert_eq!(statuses, [429, 429, 201]);
        assert_eq!(rule.hit_count(), 2);
        assert_eq!(
            server.throttle_counts().served,
            1,
            "only the last attempt reached the server"
        );
        assert!(read(&container, "c", "x").await.is_some());
    });
}

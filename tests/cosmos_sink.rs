//! The `cosmos` sink driven directly (no queue, no worker processes) against the local Cosmos DB
//! REST server, for what the pipeline tests cannot see: how many requests a setting makes.

use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use stevedore::mapping::Row;
use stevedore::sink::{self, Batch, SinkError};
use testkit::block_on;
use testkit::cosmos::CosmosTarget;

fn sink_config(target: &CosmosTarget, settings: &str) -> stevedore::config::SinkConfig {
    let text = format!(
        r#"
        [job]
        name = "sinktest"
        [[source]]
        name = "gen"
        kind = "generator"
        count = 1
        [[sink]]
        name = "documents"
        kind = "cosmos"
        endpoint = "{}"
        key = "{}"
        database = "{}"
        container = "orders"
        partition_key = "/customerId"
        id = "{{order_id}}"
        emulator = true
        {settings}
        "#,
        target.endpoint(),
        target.key(),
        target.database(),
    );
    let config = stevedore::job::parse(&text, Path::new("job.toml"), &|_| None).expect("config");
    config.sinks[0].clone()
}

/// `throttle_retries` is handed to the SDK as the client's default: with every write throttled,
/// each of the sink's own attempts (6) makes exactly 1 + `throttle_retries` requests, and the
/// unit then fails as transient (to be released and come again), not as fatal.
#[test]
fn cosmos_sink_throttle_retries_setting_reaches_the_sdk() {
    let target = CosmosTarget::test_server("cosmos_sink_throttle_retries");
    let server = target.server().expect("the test server");
    block_on(async {
        let client = target.client().await;
        target
            .create_container(&client, "orders", "/customerId")
            .await;
    });
    server.throttle(1.0, 1);
    for retries in [0_u64, 2] {
        let sink = sink::from_config(&sink_config(
            &target,
            &format!("throttle_retries = {retries}\n        throttle_max_wait = \"5s\""),
        ));
        let batch = Batch {
            unit_id: format!("unit-{retries}"),
            rows: vec![(
                0,
                Row::from_object(
                    json!({"order_id": "o1", "customerId": "c1"})
                        .as_object()
                        .expect("an object")
                        .clone(),
                ),
            )],
            failures: Vec::new(),
            fence: None,
        };
        let before = server.throttle_counts().throttled;
        let result = block_on(async {
            sink.prepare(None).await?;
            sink.write(Arc::new(batch)).await
        });
        let requests = server.throttle_counts().throttled - before;
        // The sink does not retry by itself (the consumer owns retries): one request, sent
        // once plus the SDK's retries, and the server's retry-after handed on.
        match result {
            Err(SinkError::Transient {
                message,
                retry_after,
                ..
            }) => {
                assert!(message.contains("429"), "{message}");
                assert_eq!(retry_after, Some(std::time::Duration::from_millis(1)));
            }
            other => panic!("expected a transient failure, got {other:?}"),
        }
        assert_eq!(
            requests,
            1 + retries,
            "throttle_retries = {retries}: requests the server throttled"
        );
    }
    server.throttle(0.0, 0);
}

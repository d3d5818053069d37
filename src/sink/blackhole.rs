//! The `blackhole` sink: accepts every row and keeps nothing, to measure the pipeline itself.
//! Counting stays exact under redelivery because the consumer records counts per unit id.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Batch, Sink, SinkError, WriteOutcome};

/// The `blackhole` sink.
pub struct BlackholeSink;

#[async_trait]
impl Sink for BlackholeSink {
    async fn check(&self) -> Result<String, SinkError> {
        Ok("blackhole: accepts everything".to_string())
    }

    async fn write(&self, batch: Arc<Batch>) -> Result<WriteOutcome, SinkError> {
        Ok(WriteOutcome {
            fresh: true,
            written: batch.rows.len() as u64,
            failures: batch.failures.clone(),
        })
    }
}

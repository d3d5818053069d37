//! The `blackhole` sink: accepts every row and keeps nothing, to measure the pipeline itself.
//! Counting stays exact under redelivery because the consumer records counts per unit id.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Batch, Sink, SinkError, SinkKind, WriteOutcome};
use crate::config::SinkConfig;
use crate::mapping::Mapping;
use crate::settings::{KindSettings, Section};

/// The `blackhole` kind: no settings.
pub(super) const KIND: SinkKind = SinkKind {
    name: "blackhole",
    read,
    build,
};

/// `kind = "blackhole"` takes no settings; any key is reported as unknown.
#[derive(Debug, serde::Deserialize)]
struct BlackholeSettings {}

impl KindSettings for BlackholeSettings {}

fn read(section: &mut Section<'_>, _map: Option<&Mapping>) -> Option<Arc<dyn KindSettings>> {
    let settings: BlackholeSettings = section.read()?;
    Some(Arc::new(settings))
}

fn build(_config: &SinkConfig) -> Arc<dyn Sink> {
    Arc::new(BlackholeSink)
}

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
            failures: Vec::new(),
            columns_added: Vec::new(),
        })
    }

    fn reads_fields(&self) -> bool {
        false
    }
}

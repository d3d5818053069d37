//! Turning a job into what its workers start from: the sources' work items and sinks whose
//! targets are ready. Used by `run` before any worker starts, and by `check`.

use crate::config::JobConfig;
use crate::sink::{self, SinkError};
use crate::source::{self, SourceError, WorkItem};

/// Readies every sink's target before any worker starts: a table that does not fit the
/// mapping stops the run here, once, with the sink's own words. Sinks that check fences record
/// `fence`, so that no older holder of the job's lock writes from now on.
pub(crate) async fn prepare_sinks(
    config: &JobConfig,
    fence: Option<&sink::Fence>,
) -> Result<(), SinkError> {
    for sink in &config.sinks {
        sink::from_config(sink).prepare(fence).await?;
    }
    Ok(())
}

/// Lists every source's work items, before anything starts.
pub(crate) fn plan_sources(config: &JobConfig) -> Result<Vec<WorkItem>, SourceError> {
    let mut items = Vec::new();
    for source_config in &config.sources {
        items.extend(source::from_config(source_config).plan(config.queue.unit_records)?);
    }
    Ok(items)
}

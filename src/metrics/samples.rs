//! Metric families whose values were read at scrape time (from Redis), encoded by
//! `prometheus-client` through its [`Collector`] interface.

use std::collections::BTreeMap;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Label pairs of one series. Values are job, sink, source and schedule names (validated
/// identifiers), outcomes and roles: never a record value, never a secret.
pub type Labels = Vec<(String, String)>;

/// A histogram read back from counters: per-bucket counts (not cumulative) by upper bound, the
/// last bound `f64::MAX` (`+Inf`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramValue {
    /// Sum of the observed values.
    pub sum: f64,
    /// How many values were observed.
    pub count: u64,
    /// `(upper bound, observations in this bucket only)`.
    pub buckets: Vec<(f64, u64)>,
}

#[derive(Debug)]
enum Series {
    Gauge(Vec<(Labels, f64)>),
    Counter(Vec<(Labels, f64)>),
    Histogram(Vec<(Labels, HistogramValue)>),
}

#[derive(Debug)]
struct Family {
    help: String,
    series: Series,
}

/// Families of series collected for one scrape, by metric name.
#[derive(Debug, Default)]
pub struct Samples {
    families: BTreeMap<String, Family>,
}

impl Samples {
    /// Adds a gauge series (a value that goes up and down).
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        match &mut self.family(name, help, || Series::Gauge(Vec::new())).series {
            Series::Gauge(series) => series.push((owned(labels), value)),
            _ => debug_assert!(false, "{name} is not a gauge"),
        }
    }

    /// Adds a counter series; `name` without `_total` (the encoder adds it).
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        match &mut self
            .family(name, help, || Series::Counter(Vec::new()))
            .series
        {
            Series::Counter(series) => series.push((owned(labels), value)),
            _ => debug_assert!(false, "{name} is not a counter"),
        }
    }

    /// Adds a histogram series.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: HistogramValue,
    ) {
        match &mut self
            .family(name, help, || Series::Histogram(Vec::new()))
            .series
        {
            Series::Histogram(series) => series.push((owned(labels), value)),
            _ => debug_assert!(false, "{name} is not a histogram"),
        }
    }

    fn family(&mut self, name: &str, help: &str, empty: fn() -> Series) -> &mut Family {
        self.families
            .entry(name.to_string())
            .or_insert_with(|| Family {
                help: help.to_string(),
                series: empty(),
            })
    }

    /// These samples and the live metrics in `registry`, as OpenMetrics text.
    pub fn render(self, mut registry: Registry) -> String {
        registry.register_collector(Box::new(self));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Label pairs, escaped as the text format requires (`prometheus-client` writes values as
/// they are).
fn owned(labels: &[(&str, &str)]) -> Labels {
    labels
        .iter()
        .map(|(key, value)| {
            let value = value
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            (key.to_string(), value)
        })
        .collect()
}

impl Collector for Samples {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, family) in &self.families {
            let kind = match family.series {
                Series::Gauge(_) => MetricType::Gauge,
                Series::Counter(_) => MetricType::Counter,
                Series::Histogram(_) => MetricType::Histogram,
            };
            let mut metric = encoder.encode_descriptor(name, &family.help, None, kind)?;
            match &family.series {
                Series::Gauge(series) => {
                    for (labels, value) in series {
                        metric.encode_family(labels)?.encode_gauge(value)?;
                    }
                }
                Series::Counter(series) => {
                    for (labels, value) in series {
                        metric
                            .encode_family(labels)?
                            .encode_counter::<NoLabelSet, _, f64>(value, None)?;
                    }
                }
                Series::Histogram(series) => {
                    for (labels, value) in series {
                        metric
                            .encode_family(labels)?
                            .encode_histogram::<NoLabelSet>(
                                value.sum,
                                value.count,
                                &value.buckets,
                                None,
                            )?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_samples_encode_gauges_counters_histograms_and_escape_labels() {
        let mut samples = Samples::default();
        samples.gauge(
            "stevedore_queue_depth",
            "Units waiting.",
            &[("sink", "a\"b")],
            3.0,
        );
        samples.counter(
            "stevedore_records_written",
            "Written.",
            &[("sink", "s")],
            7.0,
        );
        samples.histogram(
            "stevedore_sink_write_seconds",
            "Latency.",
            &[("sink", "s")],
            HistogramValue {
                sum: 0.3,
                count: 3,
                buckets: vec![(0.1, 2), (1.0, 1), (f64::MAX, 0)],
            },
        );
        let text = samples.render(Registry::default());
        assert!(
            text.contains("stevedore_queue_depth{sink=\"a\\\"b\"} 3.0"),
            "{text}"
        );
        assert!(
            text.contains("stevedore_records_written_total{sink=\"s\"} 7.0"),
            "{text}"
        );
        assert!(
            text.contains("stevedore_sink_write_seconds_bucket{le=\"1.0\",sink=\"s\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("stevedore_sink_write_seconds_bucket{le=\"+Inf\",sink=\"s\"} 3"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}

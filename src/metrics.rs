//! Metric names (`peerd_<what>_<unit>`), their help text, and the Prometheus recorder.
//! Labels are low-cardinality by design: never a peer address, URL, repository or digest.

use metrics::{describe_counter, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests by `handler`, `method`, `status`, `source`.
pub const REQUESTS: &str = "peerd_requests_total";
/// Whole-request duration (until the last body byte) by `handler`, `method`.
pub const REQUEST_DURATION: &str = "peerd_request_duration_seconds";
/// Body bytes sent to clients by `source`.
pub const SERVED_BYTES: &str = "peerd_served_bytes_total";
/// Content that did not hash to its digest, by `source`.
pub const DIGEST_MISMATCHES: &str = "peerd_digest_mismatches_total";

/// Where a response's bytes came from (the `source` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Local,
    Peer,
    Upstream,
    /// Assembled by a swarm download (chunks from peers and the upstream).
    Swarm,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Local => "local",
            Source::Peer => "peer",
            Source::Upstream => "upstream",
            Source::Swarm => "swarm",
        }
    }
}

const DURATION_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Histogram buckets for one metric (a histogram not measured in seconds).
pub type Buckets = (&'static str, &'static [f64]);

/// Install the global recorder and return the handle `/metrics/prometheus` renders. Each
/// component declares its metrics next to its code and describes them in its own
/// `describe()`; the node passes them all here (see `crate::node::METRICS`).
pub fn install(buckets: &[Buckets], describers: &[fn()]) -> Result<PrometheusHandle, String> {
    let mut builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
        .map_err(|e| e.to_string())?;
    for (name, b) in buckets {
        builder = builder.set_buckets_for_metric(Matcher::Full((*name).into()), b).map_err(|e| e.to_string())?;
    }
    let handle = builder.install_recorder().map_err(|e| e.to_string())?;
    describe();
    describers.iter().for_each(|d| d());
    Ok(handle)
}

/// The metrics of the HTTP data path shared by every component.
fn describe() {
    describe_counter!(REQUESTS, "HTTP requests by handler, method, status and source");
    describe_histogram!(REQUEST_DURATION, Unit::Seconds, "HTTP request duration until the last body byte");
    describe_counter!(SERVED_BYTES, Unit::Bytes, "Body bytes served to clients by source");
    describe_counter!(DIGEST_MISMATCHES, "Content that did not match its digest (response aborted) by source");
}

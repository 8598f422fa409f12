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
/// Upstream failures by `kind`.
pub const UPSTREAM_ERRORS: &str = "peerd_upstream_errors_total";
/// Content that did not hash to its digest, by `source`.
pub const DIGEST_MISMATCHES: &str = "peerd_digest_mismatches_total";
/// Local content store failures (other than "not found"), by `kind`.
pub const LOCAL_STORE_ERRORS: &str = "peerd_local_store_errors_total";
/// Events emitted, by `reason`.
pub const EVENTS: &str = "peerd_events_total";
/// Tags answered from a local image record or a peer because the upstream was unreachable
/// (possibly an older image than the registry's), by `source`.
pub const STALE_TAGS: &str = "peerd_stale_tags_total";

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

/// Install the global recorder and return the handle `/metrics/prometheus` renders.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
        .map_err(|e| e.to_string())?
        .set_buckets_for_metric(Matcher::Full(PEERS_FOUND.into()), &[0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0])
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    describe();
    Ok(handle)
}

fn describe() {
    describe_counter!(REQUESTS, "HTTP requests by handler, method, status and source");
    describe_counter!(
        crate::http::TRANSFERS_REFUSED,
        "Content requests answered 503 because http.max_transfers bodies were already streaming"
    );
    describe_histogram!(REQUEST_DURATION, Unit::Seconds, "HTTP request duration until the last body byte");
    describe_counter!(SERVED_BYTES, Unit::Bytes, "Body bytes served to clients by source");
    describe_counter!(UPSTREAM_ERRORS, "Upstream registry failures by kind");
    describe_counter!(DIGEST_MISMATCHES, "Content that did not match its digest (response aborted) by source");
    describe_counter!(LOCAL_STORE_ERRORS, "Local content store failures by kind");
    describe_counter!(crate::store::STORE_READS, "Local blob reads by path (file: containerd's files, grpc)");
    metrics::describe_gauge!(crate::store::STORE_FAST_PATH, "1 if local blobs are read from containerd's files");
    describe_counter!(EVENTS, "Node events emitted by reason");
    describe_counter!(STALE_TAGS, "Tags served as last seen locally or by a peer while the upstream was unreachable");
    describe_counter!(
        crate::fetch::COALESCED,
        "Requests that joined another request's upstream fetch of a small blob, by outcome"
    );
    describe_histogram!(PEER_DISCOVERY_DURATION, Unit::Seconds, "Provider lookup duration");
    describe_histogram!(PEERS_FOUND, "Peers returned by a provider lookup");
    describe_counter!(PEER_FETCH_BYTES, Unit::Bytes, "Bytes fetched from peers");
    describe_counter!(PEER_FETCH_FAILURES, "Failed peer fetches by reason");
    describe_counter!(PEER_AUTH_FAILURES, "Peer requests or connections rejected for authentication, by kind");
    describe_counter!(PEER_SERVED_BYTES, Unit::Bytes, "Bytes served to peers");
    metrics::describe_gauge!(ADVERTISED_KEYS, "Keys advertised in the DHT by kind");
    describe_counter!(crate::blobs::BLOBS_BYTES, Unit::Bytes, "/blobs chunk bytes by source (local, peer, upstream)");
    describe_counter!(crate::blobs::cache::CACHE_HITS, "/blobs chunk cache hits");
    describe_counter!(crate::blobs::cache::CACHE_MISSES, "/blobs chunk cache misses");
    describe_counter!(crate::blobs::cache::CACHE_CORRUPT, "/blobs cached chunks found corrupt and dropped");
    describe_counter!(crate::blobs::cache::CACHE_EVICTIONS, "/blobs chunks evicted");
    metrics::describe_gauge!(crate::blobs::cache::CACHE_BYTES, Unit::Bytes, "/blobs chunk cache size");
    describe_counter!(crate::blobs::PREFETCH_FILES, "/blobs files queued for prefetch");
    describe_counter!(
        crate::blobs::STALE_SERVED,
        "/blobs requests served from a cluster validation while the upstream failed (stale-if-error)"
    );
    describe_counter!(crate::blobs::PREFETCH_STOPPED, "/blobs prefetches stopped early by reason (size, cache, idle)");
    describe_counter!(
        crate::blobs::UPSTREAM_TIMEOUTS,
        "/blobs upstream chunk fetches failed for lack of progress by reason (stalled, slow, queued)"
    );
    describe_counter!(crate::blobs::PREFETCH_CHUNKS, "/blobs chunks prefetched");
    crate::swarm::describe();
    crate::actors::fetch::describe();
}

/// Time from starting a provider lookup to its end (enough peers, exhausted, or abandoned).
pub const PEER_DISCOVERY_DURATION: &str = "peerd_peer_discovery_duration_seconds";
/// Peers a lookup returned.
pub const PEERS_FOUND: &str = "peerd_peers_found";
/// Bytes fetched from peers.
pub const PEER_FETCH_BYTES: &str = "peerd_peer_fetch_bytes_total";
/// Peer fetches that failed (and moved on to the next source), by `reason`.
pub const PEER_FETCH_FAILURES: &str = "peerd_peer_fetch_failures_total";
/// Requests from peers or connections rejected for authentication, by `kind` (`http`, `p2p`).
pub const PEER_AUTH_FAILURES: &str = "peerd_peer_auth_failures_total";
/// Bytes served to peers.
pub const PEER_SERVED_BYTES: &str = "peerd_peer_served_bytes_total";
/// Keys this node advertises, by `kind` (`digest`, `tag`).
pub const ADVERTISED_KEYS: &str = "peerd_advertised_keys";

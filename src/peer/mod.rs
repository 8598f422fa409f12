//! Talking to other peerd nodes over HTTP: who we are ([`identity`]), how both sides prove
//! they hold the cluster secret ([`auth`]), and the client that fetches from a peer ([`client`]).

pub mod auth;
pub mod client;
pub mod identity;

use std::net::SocketAddr;
use std::time::Duration;

/// Longest a peer holds a chunk request open waiting for the chunk (below the idle timeout);
/// then it answers 425 and the asker asks again. One value for the swarm and /blobs protocols.
pub const LONG_POLL: Duration = Duration::from_secs(2);
/// How long a peer that could not be reached is left out of a transfer's choices.
pub const DEAD_FOR: Duration = Duration::from_secs(30);

/// A node that can serve content over HTTP, as the router reports it: its id and its peer listener.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    /// libp2p peer id (base58).
    pub id: String,
    /// Its mirror listener.
    pub addr: SocketAddr,
}

/// Bytes fetched from peers.
pub const PEER_FETCH_BYTES: &str = "peerd_peer_fetch_bytes_total";
/// Peer fetches that failed (and moved on to the next source), by `reason`.
pub const PEER_FETCH_FAILURES: &str = "peerd_peer_fetch_failures_total";
/// Requests from peers or connections rejected for authentication, by `kind` (`http`, `p2p`).
pub const PEER_AUTH_FAILURES: &str = "peerd_peer_auth_failures_total";
/// Bytes served to peers.
pub const PEER_SERVED_BYTES: &str = "peerd_peer_served_bytes_total";

/// Describe this module's metrics (called once when the recorder is installed).
pub fn describe() {
    metrics::describe_counter!(PEER_FETCH_BYTES, metrics::Unit::Bytes, "Bytes fetched from peers");
    metrics::describe_counter!(PEER_FETCH_FAILURES, "Failed peer fetches by reason");
    metrics::describe_counter!(PEER_AUTH_FAILURES, "Peer requests or connections rejected for authentication, by kind");
    metrics::describe_counter!(PEER_SERVED_BYTES, metrics::Unit::Bytes, "Bytes served to peers");
}

/// Set on every peer-to-peer request (Azure/peerd's name). A node answering such a request
/// serves only what it holds locally and never asks peers or upstream (loop guard).
pub const REQUEST_FROM_PEER: &str = "x-ms-peerd-requestfrompeer";
/// The requesting node's peer id.
pub const NODE_HEADER: &str = "x-ms-peerd-node";
pub const TIMESTAMP_HEADER: &str = "x-peerd-timestamp";
pub const NONCE_HEADER: &str = "x-peerd-nonce";
pub const SIGNATURE_HEADER: &str = "x-peerd-signature";
/// On a "not yet" (425) answer for a swarm chunk: the bytes of it the peer has received so far.
pub const PROGRESS_HEADER: &str = "x-peerd-progress";
/// On a swarm chunk passed on while it arrives at the sender: the body is the chunk followed by
/// a trailer of [`CHUNK_TRAILER_LEN`] bytes, its sha256 and the tag
/// [`auth::ClusterKey::seal_chunk`] over it (zeros without a cluster secret). A body cut short
/// means the sender's own source failed (ask elsewhere), not that the sender died. The header is
/// covered by nothing but the trailer's check: forging it only softens how a failure is counted,
/// and whoever can forge it can cut the connection anyway.
pub const FORWARDED_HEADER: &str = "x-peerd-forwarded";
/// Bytes after a chunk passed on while it arrives: sha256 (32) and tag (32).
pub const CHUNK_TRAILER_LEN: u64 = 64;

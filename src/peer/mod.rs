//! Talking to other peerd nodes over HTTP: who we are ([`identity`]), how both sides prove
//! they hold the cluster secret ([`auth`]), and the client that fetches from a peer ([`client`]).

pub mod auth;
pub mod client;
pub mod identity;

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

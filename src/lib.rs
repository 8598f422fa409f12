//! # peerd
//!
//! Peer-to-peer distribution of container images and large files inside a Kubernetes cluster.
//!
//! ## Layout
//! Modules sit in one-way layers (`tests/layers.rs` checks it; docs/design.md draws it), bottom
//! to top:
//! - core: [`oci`] (digests, names, media types), [`range`], [`stream`] (bodies and their
//!   adapters), [`config`], [`metrics`] (the recorder), [`events`] (the event vocabulary),
//!   [`lifecycle`] (cancellation and shutdown).
//! - adapters: [`store`] (containerd), [`upstream`] (registries), [`routing`] (the DHT),
//!   [`peer`] (the peer protocol), [`kube`] (the Kubernetes API), [`hosts`] (containerd's
//!   hosts.toml).
//! - transfer and actors: [`transfer`] (the sans-IO planner of a chunked download), [`fetch`]
//!   (multi-source fetching), [`actors`] (decisions).
//! - services: [`error`], [`mirror`] (`/v2`), [`swarm`], [`blobs`] (`/blobs`), [`preheat`].
//! - http: [`http`] (listeners, extraction, answers).
//! - app: [`node`] (wiring a node), [`doctor`], [`sim`] (the scale simulator).

#![forbid(unsafe_code)]

pub mod actors;
pub mod blobs;
pub mod config;
pub mod doctor;
pub mod error;
pub mod events;

pub mod hosts;
pub mod http;
pub mod kube;
pub mod lifecycle;
pub mod metrics;
pub mod mirror;
pub mod node;
pub mod oci;
pub mod peer;
pub mod preheat;
pub mod range;
pub mod routing;
pub mod sendfile;
pub mod sim;
pub mod store;
pub mod stream;
pub mod swarm;
pub mod transfer;
pub mod upstream;

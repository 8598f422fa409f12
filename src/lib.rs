//! # peerd
//!
//! Peer-to-peer distribution of container images and large files inside a Kubernetes cluster.
//!
//! ## Layout
//! - [`blobs`]: `/blobs/<URL>` byte-range proxy with an on-disk chunk cache (overlaybd).
//! - [`config`]: the one config tree (defaults → file → `PEERD_*` env → flags).
//! - [`oci`]: digests, names, `ns` hosts, media types (pure parsers).
//! - [`store`]: the local content store boundary; containerd and in-memory implementations.
//! - [`upstream`]: the upstream registry boundary; HTTP (token flow) and in-memory implementations.
//! - [`routing`]: the peer routing boundary (who holds what); in-memory implementation.
//! - [`actors`]: upstream fallback policy and event emission, as actix actors.
//! - [`stream`]: data-path stream adapters (verification, accounting, slicing).
//! - [`http`]: actix-web front ends, error mapping, middleware.
//! - [`kube`]: Kubernetes events on the node's Pod (Events API, bounded worker).
//! - [`metrics`]: metric names and the Prometheus recorder.
//! - [`peer`]: peer identity, cluster-secret authentication, the peer HTTP client.
//! - [`fetch`]: multi-source blob fetching (hedged start, resume at the next byte).
//! - [`transfer`]: the sans-IO planner of chunked multi-source transfers, rendezvous owners.
//! - [`sim`]: a discrete-event simulator of many nodes driven by the transfer planner (`peerd-sim`).
//! - [`hosts`]: containerd hosts.toml install/uninstall (`peerd hosts`), containerd config reading.
//! - [`doctor`]: end-to-end node checks (`peerd doctor`).
//! - [`node`]: wiring all of the above into a running node (used by `main`).

#![forbid(unsafe_code)]

pub mod actors;
pub mod blobs;
pub mod config;
pub mod doctor;
pub mod fetch;
pub mod hosts;
pub mod http;
pub mod kube;
pub mod metrics;
pub mod node;
pub mod oci;
pub mod peer;
pub mod routing;
pub mod sim;
pub mod store;
pub mod stream;
pub mod swarm;
pub mod transfer;
pub mod upstream;

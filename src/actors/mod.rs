//! Actors own state and make decisions; they exchange small messages, never body bytes.
//!
//! - [`upstream::UpstreamActor`]: which upstream hosts may be asked and whether a failing host
//!   is given a rest (circuit breaker); hands back a response whose body streams to the client.
//! - [`events::EventsActor`]: node lifecycle events (`P2P*`), de-duplicated and rate-limited,
//!   delivered to a sink (logs and metrics; Kubernetes in a later step).

pub mod advertise;
pub mod events;
pub mod peers;
pub mod upstream;

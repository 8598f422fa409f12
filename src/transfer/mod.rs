//! The transfer core: decisions of a chunked, multi-source, verified transfer, without I/O.
//!
//! - [`plan`]: the sans-IO planner of one download (who has or fetches which chunk, whom to ask
//!   for each, when this node reads from the upstream itself, when a peer loses a chunk to a
//!   takeover). Time is passed in; events go in, actions come out. The swarm engine drives it
//!   with real I/O; the simulator (`peerd-sim`) drives it over a simulated network.
//! - [`engine`]: the one driver that performs the planner's decisions with real I/O, for a /v2
//!   swarm download and a /blobs file alike (each says where its chunks come from and go).
//! - [`owner`]: the rendezvous owner of a chunk (which node reads it from the upstream).
//! - [`Bits`]: the compact chunk bitmaps the planner keeps per peer.

pub mod bits;
pub mod engine;
pub mod plan;
pub mod sources;

pub use bits::Bits;
pub use plan::{owner, score};

//! Node lifecycle events, named as Azure/peerd names them so dashboards and alerts carry over:
//! the vocabulary every component uses to report one. The events actor
//! ([`crate::actors::events::EventsActor`]) decides which are emitted; sinks deliver them
//! (logs here, Kubernetes in [`crate::kube`]).

use actix::prelude::*;

/// Events emitted, by `reason`.
pub const EVENTS: &str = "peerd_events_total";

/// Describe this module's metrics (called once when the recorder is installed).
pub fn describe() {
    metrics::describe_counter!(EVENTS, "Node events emitted by reason");
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    P2PInitializing,
    P2PConnected,
    P2PActive,
    P2PDisconnected,
    P2PFailed,
    /// A preheat finished on this node (`P2PPreheat`, Normal).
    P2PPreheat,
    /// A preheat failed on this node (`P2PPreheat`, Warning).
    P2PPreheatFailed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::P2PInitializing => "P2PInitializing",
            Reason::P2PConnected => "P2PConnected",
            Reason::P2PActive => "P2PActive",
            Reason::P2PDisconnected => "P2PDisconnected",
            Reason::P2PFailed => "P2PFailed",
            Reason::P2PPreheat | Reason::P2PPreheatFailed => "P2PPreheat",
        }
    }
    /// Kubernetes event type.
    pub fn is_warning(self) -> bool {
        matches!(self, Reason::P2PDisconnected | Reason::P2PFailed | Reason::P2PPreheatFailed)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub reason: Reason,
    pub message: String,
}

/// Where admitted events go. `count` is how many occurrences this emission stands for.
pub trait EventSink: Send + 'static {
    fn emit(&mut self, event: &Event, count: u32);
}

/// Logs each event (warnings at WARN) and counts it.
pub struct LogSink;

impl EventSink for LogSink {
    fn emit(&mut self, e: &Event, count: u32) {
        metrics::counter!(EVENTS, "reason" => e.reason.as_str()).increment(count as u64);
        if e.reason.is_warning() {
            tracing::warn!(reason = e.reason.as_str(), count, "{}", e.message);
        } else {
            tracing::info!(reason = e.reason.as_str(), count, "{}", e.message);
        }
    }
}

/// Report an event to the events actor. Sent with `try_send`: a full mailbox drops the event
/// (counted by the sink's metric) rather than growing without bound.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Emit(pub Event);

/// Send `event` to `to` without waiting; a full or closed mailbox drops it (events are advisory).
pub fn report(to: &Recipient<Emit>, event: Event) {
    if let Err(e) = to.try_send(Emit(event)) {
        tracing::debug!(error = %e, "event dropped");
    }
}

//! The events actor: it de-duplicates (state transitions only, one-shot events once) and rate-limits
//! (a repeated reason at most once per interval, with a count of what was folded in), then hands
//! each event to an [`EventSink`]. The vocabulary (reasons, the message) is in [`crate::events`].

use crate::events::{Emit, EventSink, Reason};
use actix::prelude::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The de-duplication rules, apart from the actor so they are tested with a fake clock.
#[derive(Debug)]
pub struct Dedup {
    interval: Duration,
    connected: Option<bool>,
    once: Vec<Reason>,
    /// reason → (last emitted, occurrences suppressed since)
    last: HashMap<Reason, (Instant, u32)>,
}

impl Dedup {
    pub fn new(interval: Duration) -> Self {
        Self { interval, connected: None, once: Vec::new(), last: HashMap::new() }
    }

    /// `Some(count)` if the event is emitted now (count ≥ 1 includes suppressed repeats).
    pub fn admit(&mut self, reason: Reason, now: Instant) -> Option<u32> {
        match reason {
            Reason::P2PInitializing | Reason::P2PActive => {
                if self.once.contains(&reason) {
                    return None;
                }
                self.once.push(reason);
                Some(1)
            }
            Reason::P2PConnected | Reason::P2PDisconnected => {
                let up = reason == Reason::P2PConnected;
                // Disconnected only means something after Connected; each state once per change.
                if self.connected == Some(up) || (!up && self.connected.is_none()) {
                    return None;
                }
                self.connected = Some(up);
                Some(1)
            }
            // Each preheat ends once, and preheats are bounded per node: every end is an event.
            Reason::P2PPreheat | Reason::P2PPreheatFailed => Some(1),
            Reason::P2PFailed => match self.last.get_mut(&reason) {
                Some((at, suppressed)) if now.duration_since(*at) < self.interval => {
                    *suppressed += 1;
                    None
                }
                Some((at, suppressed)) => {
                    let n = *suppressed + 1;
                    *at = now;
                    *suppressed = 0;
                    Some(n)
                }
                None => {
                    self.last.insert(reason, (now, 0));
                    Some(1)
                }
            },
        }
    }
}

pub struct EventsActor {
    dedup: Dedup,
    sink: Box<dyn EventSink>,
}

impl EventsActor {
    pub fn new(sink: Box<dyn EventSink>, interval: Duration) -> Self {
        Self { dedup: Dedup::new(interval), sink }
    }
}

impl Actor for EventsActor {
    type Context = Context<Self>;
}

impl Handler<Emit> for EventsActor {
    type Result = ();
    fn handle(&mut self, Emit(event): Emit, _: &mut Context<Self>) {
        if let Some(count) = self.dedup.admit(event.reason, Instant::now()) {
            self.sink.emit(&event, count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;
    use std::sync::{Arc, Mutex};

    #[test]
    fn transitions_and_once() {
        let t = Instant::now();
        let mut d = Dedup::new(Duration::from_secs(60));
        assert_eq!(d.admit(Reason::P2PInitializing, t), Some(1));
        assert_eq!(d.admit(Reason::P2PInitializing, t), None);
        assert_eq!(d.admit(Reason::P2PDisconnected, t), None, "never connected");
        assert_eq!(d.admit(Reason::P2PConnected, t), Some(1));
        assert_eq!(d.admit(Reason::P2PConnected, t), None);
        assert_eq!(d.admit(Reason::P2PDisconnected, t), Some(1));
        assert_eq!(d.admit(Reason::P2PDisconnected, t), None);
        assert_eq!(d.admit(Reason::P2PConnected, t), Some(1));
        assert_eq!(d.admit(Reason::P2PActive, t), Some(1));
        assert_eq!(d.admit(Reason::P2PActive, t), None);
    }

    #[test]
    fn failures_are_rate_limited_with_counts() {
        let t = Instant::now();
        let mut d = Dedup::new(Duration::from_secs(60));
        assert_eq!(d.admit(Reason::P2PFailed, t), Some(1));
        assert_eq!(d.admit(Reason::P2PFailed, t + Duration::from_secs(1)), None);
        assert_eq!(d.admit(Reason::P2PFailed, t + Duration::from_secs(2)), None);
        assert_eq!(d.admit(Reason::P2PFailed, t + Duration::from_secs(61)), Some(3));
        assert_eq!(d.admit(Reason::P2PFailed, t + Duration::from_secs(200)), Some(1));
    }

    #[test]
    fn every_preheat_end_is_an_event() {
        let t = Instant::now();
        let mut d = Dedup::new(Duration::from_secs(60));
        for _ in 0..3 {
            assert_eq!(d.admit(Reason::P2PPreheat, t), Some(1));
            assert_eq!(d.admit(Reason::P2PPreheatFailed, t), Some(1));
        }
        assert_eq!(Reason::P2PPreheatFailed.as_str(), "P2PPreheat");
        assert!(Reason::P2PPreheatFailed.is_warning() && !Reason::P2PPreheat.is_warning());
    }

    struct Capture(Arc<Mutex<Vec<(Reason, u32)>>>);
    impl EventSink for Capture {
        fn emit(&mut self, e: &Event, count: u32) {
            self.0.lock().unwrap().push((e.reason, count));
        }
    }

    #[actix::test]
    async fn actor_delivers_admitted_events_to_sink() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let addr = EventsActor::new(Box::new(Capture(seen.clone())), Duration::from_secs(60)).start();
        for r in [
            Reason::P2PInitializing,
            Reason::P2PInitializing,
            Reason::P2PConnected,
            Reason::P2PFailed,
            Reason::P2PFailed,
        ] {
            addr.send(Emit(Event { reason: r, message: "m".into() })).await.unwrap();
        }
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(Reason::P2PInitializing, 1), (Reason::P2PConnected, 1), (Reason::P2PFailed, 1)]
        );
    }
}

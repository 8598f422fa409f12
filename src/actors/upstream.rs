//! Upstream admission: which upstream hosts may be asked now. The [`UpstreamActor`] owns the
//! decisions (mirrored registries only; a circuit breaker per host) and answers an [`Admit`]
//! with a permit or a refusal; the caller's own task does the network I/O and reports how the
//! host answered ([`Reported`]). [`Gate`] wraps that exchange for callers: /v2, swarming and
//! /blobs all go through one.

use crate::upstream::{Health, Upstream, UpstreamError, UpstreamRequest, UpstreamResponse};
use actix::prelude::*;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Upstream failures by `kind`.
pub const UPSTREAM_ERRORS: &str = "peerd_upstream_errors_total";

/// Describe this module's metrics (called once when the recorder is installed).
pub fn describe() {
    metrics::describe_counter!(UPSTREAM_ERRORS, "Upstream registry failures by kind");
}

/// May `host` be asked now? `registry`: a /v2 registry (refused unless mirrored); otherwise a
/// /blobs store (its allow-list is checked where its URLs are parsed).
#[derive(Message)]
#[rtype(result = "Result<(), UpstreamError>")]
pub struct Admit {
    pub host: String,
    pub registry: bool,
}

/// How an admitted host answered.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reported {
    pub host: String,
    pub health: Health,
}

/// Per-host failure tracking: after `threshold` consecutive host failures, the host is skipped
/// for `cooldown`; the first request after that is a probe (one more failure re-opens it).
///
/// Only answers that say the host is down count ([`Health::Unhealthy`]); a healthy answer
/// (a 2xx, or a 4xx for one bad request) closes it; anything else ([`Health::Unknown`]: a 500 a
/// client provoked on purpose, a 429) leaves it as it is — so no client can open the breaker
/// with requests of its choosing and make a node serve tags from its local image record.
///
/// Time is passed in (`now`), so tests step through cooldowns exactly, without sleeping.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    hosts: HashMap<String, (u32, Option<Instant>)>,
}

/// Most hosts tracked; beyond this the healthy ones are forgotten first.
const MAX_TRACKED_HOSTS: usize = 1024;

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self { threshold: threshold.max(1), cooldown, hosts: HashMap::new() }
    }

    /// `Err(remaining)` while the host is resting.
    pub fn check(&self, host: &str, now: Instant) -> Result<(), Duration> {
        match self.hosts.get(host) {
            Some((_, Some(until))) if *until > now => Err(*until - now),
            _ => Ok(()),
        }
    }

    pub fn record(&mut self, host: &str, health: Health, now: Instant) {
        match health {
            Health::Healthy => {
                self.hosts.remove(host);
            }
            Health::Unknown => {}
            Health::Unhealthy => {
                if self.hosts.len() >= MAX_TRACKED_HOSTS && !self.hosts.contains_key(host) {
                    self.hosts.retain(|_, (_, until)| until.is_some());
                }
                let entry = self.hosts.entry(host.to_owned()).or_insert((0, None));
                entry.0 = entry.0.saturating_add(1);
                if entry.0 >= self.threshold {
                    entry.1 = Some(now + self.cooldown);
                }
            }
        }
    }
}

pub struct UpstreamActor {
    /// `None` mirrors every registry.
    allowed: Option<HashSet<String>>,
    breaker: Breaker,
}

impl UpstreamActor {
    pub fn new(allowed_hosts: &[String], breaker: Breaker) -> Self {
        let allowed =
            (!allowed_hosts.is_empty()).then(|| allowed_hosts.iter().map(|h| h.to_ascii_lowercase()).collect());
        Self { allowed, breaker }
    }
}

/// Admissions and reports the actor holds at once (`Reported` is sent with `try_send`: past
/// this a report is dropped, and the breaker misses one sample).
const MAILBOX: usize = 4096;

impl Actor for UpstreamActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX);
    }
}

impl Handler<Admit> for UpstreamActor {
    type Result = Result<(), UpstreamError>;

    fn handle(&mut self, Admit { host, registry }: Admit, _ctx: &mut Context<Self>) -> Self::Result {
        if registry && self.allowed.as_ref().is_some_and(|a| !a.contains(&host)) {
            return Err(UpstreamError::NotMirrored(host));
        }
        self.breaker
            .check(&host, Instant::now())
            .map_err(|rest| UpstreamError::CircuitOpen { host, retry_in_ms: rest.as_millis() as u64 })
    }
}

impl Handler<Reported> for UpstreamActor {
    type Result = ();

    fn handle(&mut self, Reported { host, health }: Reported, _ctx: &mut Context<Self>) {
        self.breaker.record(&host, health, Instant::now());
    }
}

/// The way to an upstream: admission by the [`UpstreamActor`], then the request on the
/// caller's task (the body streams to the caller; no bytes cross a mailbox), then its outcome
/// reported back. Cheap to clone.
#[derive(Clone)]
pub struct Gate {
    admit: Recipient<Admit>,
    report: Recipient<Reported>,
    upstream: Arc<dyn Upstream>,
    /// Where upstream connections live (their tasks and read buffers): a dedicated arbiter, off
    /// the HTTP workers, when set. Measured: connections on the workers' threads raised the
    /// peak memory of 150 stalled clients from +138 to +155 MiB (tests/reliability.rs).
    io: Option<actix_rt::ArbiterHandle>,
}

impl Gate {
    /// Start the admission actor (on the current arbiter) for `upstream`.
    pub fn start(upstream: Arc<dyn Upstream>, allowed_hosts: &[String], breaker: Breaker) -> Gate {
        let addr = UpstreamActor::new(allowed_hosts, breaker).start();
        Gate { admit: addr.clone().recipient(), report: addr.recipient(), upstream, io: None }
    }

    /// Run upstream requests (and so their connections) on `arbiter`.
    pub fn with_io(mut self, arbiter: actix_rt::ArbiterHandle) -> Gate {
        self.io = Some(arbiter);
        self
    }

    /// Ask whether `host` may be asked now; a dead actor reads as an unreachable upstream.
    pub async fn admit(&self, host: &str, registry: bool) -> Result<(), UpstreamError> {
        let refused = match self.admit.send(Admit { host: host.to_owned(), registry }).await {
            Ok(r) => r.err(),
            Err(e) => Some(UpstreamError::Unreachable { host: "upstream admission".into(), reason: e.to_string() }),
        };
        match refused {
            Some(e) => {
                metrics::counter!(UPSTREAM_ERRORS, "kind" => e.kind()).increment(1);
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Report how an admitted host answered (dropped if the actor's mailbox is full: the
    /// breaker then misses one sample, the caller never waits for it).
    pub fn report(&self, host: &str, health: Health) {
        let _ = self.report.try_send(Reported { host: host.to_owned(), health });
    }

    /// A /v2 request to its registry, admitted and reported.
    pub async fn fetch(&self, req: UpstreamRequest) -> Result<UpstreamResponse, UpstreamError> {
        let host = req.registry.name().to_owned();
        self.admit(&host, true).await?;
        let res = match &self.io {
            Some(arbiter) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let upstream = self.upstream.clone();
                let spawned = arbiter.spawn(async move {
                    let _ = tx.send(upstream.fetch(req).await);
                });
                let gone =
                    || UpstreamError::Unreachable { host: host.clone(), reason: "upstream arbiter stopped".into() };
                if spawned {
                    rx.await.unwrap_or_else(|_| Err(gone()))
                } else {
                    Err(gone())
                }
            }
            None => self.upstream.fetch(req).await,
        };
        let health = match &res {
            Ok(_) => Health::Healthy,
            Err(e) => e.health(),
        };
        self.report(&host, health);
        if let Err(e) = &res {
            metrics::counter!(UPSTREAM_ERRORS, "kind" => e.kind()).increment(1);
            if health == Health::Unhealthy {
                tracing::warn!(host, error = %e, "upstream failure");
            }
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::parse_ns;
    use crate::upstream::memory::MemoryUpstream;
    use crate::upstream::Kind;
    use std::sync::atomic::Ordering;

    fn req(host: &str) -> UpstreamRequest {
        UpstreamRequest {
            registry: parse_ns(Some(host), "docker.io").unwrap(),
            repository: "app".into(),
            kind: Kind::Manifest,
            reference: "v1".into(),
            head: false,
            accept: None,
            authorization: None,
            range: None,
        }
    }

    #[test]
    fn breaker_opens_and_recovers() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(5));
        b.record("h", Health::Unhealthy, t0);
        assert!(b.check("h", t0).is_ok(), "one failure is not enough");
        b.record("h", Health::Unhealthy, t0);
        assert_eq!(b.check("h", t0 + Duration::from_secs(1)), Err(Duration::from_secs(4)));
        assert!(b.check("other", t0).is_ok());
        assert!(b.check("h", t0 + Duration::from_secs(5)).is_ok(), "probe after cooldown");
        b.record("h", Health::Unhealthy, t0 + Duration::from_secs(5));
        assert!(b.check("h", t0 + Duration::from_secs(6)).is_err(), "failed probe re-opens");
        b.record("h", Health::Healthy, t0 + Duration::from_secs(11));
        assert!(b.check("h", t0 + Duration::from_secs(11)).is_ok());
    }

    #[actix::test]
    async fn refuses_unmirrored_hosts_without_calling_upstream() {
        let up = Arc::new(MemoryUpstream::default());
        let addr = Gate::start(up.clone(), &["docker.io".into()], Breaker::new(3, Duration::from_secs(5)));
        let err = addr.fetch(req("evil.example")).await.unwrap_err();
        assert!(matches!(err, UpstreamError::NotMirrored(h) if h == "evil.example"));
        assert_eq!(up.calls.load(Ordering::SeqCst), 0);
        up.put("docker.io", "app", Kind::Manifest, "v1", "x", "{}");
        assert!(addr.fetch(req("docker.io")).await.is_ok());
    }

    #[actix::test]
    async fn failing_host_fails_fast_after_threshold() {
        let up = Arc::new(MemoryUpstream::default());
        up.fail(Some(UpstreamError::Unreachable { host: "h".into(), reason: "refused".into() }));
        let addr = Gate::start(up.clone(), &[], Breaker::new(2, Duration::from_secs(60)));
        for _ in 0..2 {
            let e = addr.fetch(req("docker.io")).await.unwrap_err();
            assert!(matches!(e, UpstreamError::Unreachable { .. }));
        }
        let e = addr.fetch(req("docker.io")).await.unwrap_err();
        assert!(matches!(e, UpstreamError::CircuitOpen { .. }), "{e:?}");
        assert_eq!(up.calls.load(Ordering::SeqCst), 2, "third request must not reach upstream");
        // 404s are not host failures.
        let up2 = Arc::new(MemoryUpstream::default());
        let addr2 = Gate::start(up2.clone(), &[], Breaker::new(1, Duration::from_secs(60)));
        for _ in 0..3 {
            let e = addr2.fetch(req("docker.io")).await.unwrap_err();
            assert!(matches!(e, UpstreamError::Status { status: 404, .. }));
        }
    }

    fn status(status: u16) -> UpstreamError {
        UpstreamError::Status { status, www_authenticate: None }
    }

    #[test]
    fn only_failures_that_say_the_host_is_down_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(5));
        // What any client can provoke: a 500 for a layer digest asked as a manifest, 4xx, 429,
        // a malformed answer. Never opens the breaker, however many.
        for e in [status(500), status(400), status(404), status(401), status(429), status(501)] {
            for _ in 0..10 {
                b.record("h", e.health(), t0);
            }
        }
        b.record("h", UpstreamError::Protocol("garbage".into()).health(), t0);
        assert!(b.check("h", t0).is_ok(), "client-chosen answers opened the breaker");
        // A host that is down: 502/503/504, timeouts, refused connections.
        for (i, e) in [
            status(502),
            status(503),
            status(504),
            UpstreamError::Timeout { host: "h".into() },
            UpstreamError::Unreachable { host: "h".into(), reason: "refused".into() },
        ]
        .into_iter()
        .enumerate()
        {
            let mut b = Breaker::new(2, Duration::from_secs(5));
            b.record("h", e.health(), t0);
            // A 500 between two failures neither counts nor resets the count.
            b.record("h", status(500).health(), t0);
            b.record("h", e.health(), t0);
            assert!(b.check("h", t0).is_err(), "case {i}: {e} must count");
        }
        // A 404 is a healthy answer: it closes a half-open breaker.
        let mut b = Breaker::new(1, Duration::from_secs(5));
        b.record("h", status(503).health(), t0);
        assert!(b.check("h", t0 + Duration::from_secs(1)).is_err());
        b.record("h", status(404).health(), t0 + Duration::from_secs(6));
        b.record("h", status(503).health(), t0 + Duration::from_secs(6));
        b.record("h", status(404).health(), t0 + Duration::from_secs(6));
        assert!(b.check("h", t0 + Duration::from_secs(6)).is_ok());
    }

    #[actix::test]
    async fn client_chosen_500s_never_rest_the_host() {
        let up = Arc::new(MemoryUpstream::default());
        up.fail(Some(status(500)));
        let addr = Gate::start(up.clone(), &[], Breaker::new(3, Duration::from_secs(60)));
        for _ in 0..10 {
            let e = addr.fetch(req("docker.io")).await.unwrap_err();
            assert!(matches!(e, UpstreamError::Status { status: 500, .. }), "{e:?}");
        }
        assert_eq!(up.calls.load(Ordering::SeqCst), 10, "every request reached the upstream");
        up.fail(Some(status(503)));
        for _ in 0..3 {
            addr.fetch(req("docker.io")).await.unwrap_err();
        }
        let e = addr.fetch(req("docker.io")).await.unwrap_err();
        assert!(matches!(e, UpstreamError::CircuitOpen { .. }), "a real outage still opens it: {e:?}");
        assert!(e.is_unavailable() && !status(500).is_unavailable() && status(504).is_unavailable());
    }
}

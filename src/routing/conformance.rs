//! What every [`Router`] must do, checked the same way for each implementation: the in-memory
//! network (unit tests) and libp2p's Kademlia DHT (`tests/dht.rs`). Public so that integration
//! tests can run it against real components.

use super::{collect_peers, Router};
use std::time::{Duration, Instant};

/// Poll `f` until it holds or `within` passes (a DHT converges; a memory router is immediate).
async fn eventually(what: &str, within: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "router conformance: {what} not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Peer ids `r` resolves `key` to.
async fn holders(r: &dyn Router, key: &str, max: usize) -> Vec<String> {
    match r.resolve(key.to_owned(), max).await {
        Ok(rx) => collect_peers(rx, Duration::from_millis(500)).await.into_iter().map(|p| p.id).collect(),
        Err(e) => panic!("router conformance: resolve {key}: {e}"),
    }
}

/// Panics (with what failed) unless `a` and `b`, two routers of one network whose ids are
/// `a_id` and `b_id`, behave as routers must. `settle` bounds how long a change may take to be
/// seen (provider records travelling, or expiring after a withdrawal). `tag` makes the keys
/// unique to this run.
pub async fn check(a: &dyn Router, a_id: &str, b: &dyn Router, b_id: &str, settle: Duration, tag: &str) {
    eventually("both routers ready", settle, async || a.ready().await && b.ready().await).await;
    let status = a.status().await.expect("status");
    assert_eq!(status.peer_id, a_id, "status names the node");

    let key = format!("conformance/{tag}/one");
    a.provide(vec![key.clone()]).await.expect("provide");
    eventually("a provided key resolves from the other node", settle, async || {
        holders(b, &key, 8).await.contains(&a_id.to_owned())
    })
    .await;
    assert!(!holders(a, &key, 8).await.contains(&a_id.to_owned()), "a router never returns itself");
    assert!(a.status().await.unwrap().provided_keys >= 1, "status counts provided keys");

    // Both provide: each sees the other, and `max` bounds the answer.
    b.provide_now(vec![key.clone()]).await.expect("provide_now");
    eventually("the second holder resolves", settle, async || holders(a, &key, 8).await.contains(&b_id.to_owned()))
        .await;
    assert!(holders(b, &key, 1).await.len() <= 1, "at most `max` peers");

    let unknown = format!("conformance/{tag}/nobody");
    assert!(holders(b, &unknown, 8).await.is_empty(), "a key nobody provides resolves to no one");

    a.withdraw(vec![key.clone()]).await.expect("withdraw");
    eventually("a withdrawn key stops resolving to its node", settle, async || {
        !holders(b, &key, 8).await.contains(&a_id.to_owned())
    })
    .await;
}

//! Advertisement: what this node's containerd holds is announced in the DHT, and what it no
//! longer holds is withdrawn.
//!
//! A watcher task subscribes to containerd's image events *then* walks every image (so nothing
//! falls between the walk and the subscription), and turns each image into keys: its tag
//! (`host/repo:tag`), the index, every platform manifest present locally, their configs and
//! layers. The actor owns the key state (which image needs which key, reference-counted) and
//! decides what to provide and withdraw. When the event stream ends (containerd restarted) the
//! watcher re-subscribes with back-off and re-walks; the actor reconciles the difference.
//! Re-providing before records expire is Kademlia's republication (`p2p.provider_republish`).

use crate::oci::{media, Digest};
use crate::routing::keys::tag_key;
use crate::routing::Router;
use crate::store::{read_bounded, ContentStore, Descriptor, ImageEvent};
use actix::prelude::*;
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Keys this node advertises, by `kind` (`digest`, `tag`).
pub const ADVERTISED_KEYS: &str = "peerd_advertised_keys";

/// Describe this module's metrics (called once when the recorder is installed).
pub fn describe() {
    metrics::describe_gauge!(ADVERTISED_KEYS, "Keys advertised in the DHT by kind");
}

/// Time for a subscription request to reach containerd before the walk starts.
const SUBSCRIBE_GRACE: Duration = Duration::from_millis(200);
/// Longest wait between attempts to reach containerd.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A full re-walk even without events, to heal anything missed.
const RESYNC_EVERY: Duration = Duration::from_secs(600);
/// Largest index or manifest read while walking.
const MAX_MANIFEST: u64 = 4 << 20;
/// Index → manifest is the deepest nesting followed.
const MAX_DEPTH: usize = 3;

/// The keys of one image: its tag (if it has one) and every digest present locally.
pub async fn image_keys(store: &dyn ContentStore, name: &str, target: &Descriptor) -> HashSet<String> {
    let mut keys = HashSet::new();
    if let Some(t) = tag_key(name) {
        keys.insert(t);
    }
    let mut todo = vec![(target.digest.clone(), 0usize)];
    while let Some((digest, depth)) = todo.pop() {
        if !keys.insert(digest.to_string()) || depth >= MAX_DEPTH {
            continue;
        }
        let Ok(Some(body)) = read_bounded(store, &digest, MAX_MANIFEST).await else { continue };
        let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&body) else { continue };
        let is_index =
            matches!(media::sniff_manifest(&body).as_deref(), Some(media::OCI_INDEX | media::DOCKER_MANIFEST_LIST));
        let children: Vec<&serde_json::Value> = if is_index {
            doc["manifests"].as_array().map(|m| m.iter().collect()).unwrap_or_default()
        } else {
            let mut c: Vec<&serde_json::Value> =
                doc["layers"].as_array().map(|l| l.iter().collect()).unwrap_or_default();
            c.push(&doc["config"]);
            c
        };
        for child in children {
            let Some(d) = child["digest"].as_str().and_then(|d| d.parse::<Digest>().ok()) else { continue };
            // Only what is here: an index names every platform, a node holds a few.
            if matches!(store.size(&d).await, Ok(Some(_))) {
                if is_index {
                    todo.push((d, depth + 1));
                } else {
                    keys.insert(d.to_string());
                }
            }
        }
    }
    keys
}

/// Keys of every image in the store.
pub async fn all_keys(store: &dyn ContentStore) -> Result<HashMap<String, HashSet<String>>, String> {
    let images = store.list_images().await.map_err(|e| e.to_string())?;
    let mut out = HashMap::new();
    for (name, target) in images {
        let keys = image_keys(store, &name, &target).await;
        out.insert(name, keys);
    }
    Ok(out)
}

/// The keys of image `name` are now exactly these.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ImageKeys {
    pub name: String,
    pub keys: HashSet<String>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct ImageGone(pub String);

/// The complete set of images and keys (after a walk): reconcile.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resync(pub HashMap<String, HashSet<String>>);

/// Reference-counted key state; pure, so the diffing is unit-tested without a router.
#[derive(Default, Debug)]
pub struct KeyState {
    images: HashMap<String, HashSet<String>>,
    counts: HashMap<String, usize>,
}

impl KeyState {
    /// Replace one image's keys; returns (keys to provide, keys to withdraw).
    pub fn set(&mut self, name: String, keys: HashSet<String>) -> (Vec<String>, Vec<String>) {
        let old = self.images.remove(&name).unwrap_or_default();
        let mut provide = Vec::new();
        let mut withdraw = Vec::new();
        for k in keys.difference(&old) {
            let c = self.counts.entry(k.clone()).or_insert(0);
            *c += 1;
            if *c == 1 {
                provide.push(k.clone());
            }
        }
        for k in old.difference(&keys) {
            if self.release(k) {
                withdraw.push(k.clone());
            }
        }
        if !keys.is_empty() {
            self.images.insert(name, keys);
        }
        (provide, withdraw)
    }

    fn release(&mut self, k: &str) -> bool {
        match self.counts.get_mut(k) {
            Some(c) if *c > 1 => {
                *c -= 1;
                false
            }
            Some(_) => {
                self.counts.remove(k);
                true
            }
            None => false,
        }
    }

    /// Reconcile with a full walk; returns (provide, withdraw).
    pub fn resync(&mut self, all: HashMap<String, HashSet<String>>) -> (Vec<String>, Vec<String>) {
        let mut provide = Vec::new();
        let mut withdraw = Vec::new();
        let gone: Vec<String> = self.images.keys().filter(|n| !all.contains_key(*n)).cloned().collect();
        for name in gone {
            let (_, w) = self.set(name, HashSet::new());
            withdraw.extend(w);
        }
        for (name, keys) in all {
            let (p, w) = self.set(name, keys);
            provide.extend(p);
            withdraw.extend(w);
        }
        (provide, withdraw)
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.counts.keys()
    }
}

pub struct Advertiser {
    store: Arc<dyn ContentStore>,
    router: Arc<dyn Router>,
    state: KeyState,
}

impl Advertiser {
    pub fn new(store: Arc<dyn ContentStore>, router: Arc<dyn Router>) -> Self {
        Self { store, router, state: KeyState::default() }
    }

    fn apply(&mut self, (provide, withdraw): (Vec<String>, Vec<String>), ctx: &mut Context<Self>) {
        let tags = self.state.keys().filter(|k| !k.starts_with("sha256:") && !k.starts_with("sha512:")).count();
        metrics::gauge!(ADVERTISED_KEYS, "kind" => "tag").set(tags as f64);
        metrics::gauge!(ADVERTISED_KEYS, "kind" => "digest").set((self.state.counts.len() - tags) as f64);
        if provide.is_empty() && withdraw.is_empty() {
            return;
        }
        tracing::info!(provide = provide.len(), withdraw = withdraw.len(), "advertisement changed");
        let router = self.router.clone();
        // Router calls are ordered: the actor waits for each batch before handling the next message.
        ctx.wait(
            async move {
                if !withdraw.is_empty() {
                    if let Err(e) = router.withdraw(withdraw).await {
                        tracing::warn!(error = %e, "withdraw failed");
                    }
                }
                if !provide.is_empty() {
                    if let Err(e) = router.provide(provide).await {
                        tracing::warn!(error = %e, "provide failed");
                    }
                }
            }
            .into_actor(self),
        );
    }
}

impl Actor for Advertiser {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        let me = ctx.address();
        ctx.spawn(watch(store, me).into_actor(self));
    }
}

impl Handler<ImageKeys> for Advertiser {
    type Result = ();
    fn handle(&mut self, m: ImageKeys, ctx: &mut Context<Self>) {
        let diff = self.state.set(m.name, m.keys);
        self.apply(diff, ctx);
    }
}

impl Handler<ImageGone> for Advertiser {
    type Result = ();
    fn handle(&mut self, m: ImageGone, ctx: &mut Context<Self>) {
        tracing::info!(image = m.0, "image deleted; withdrawing its keys");
        let diff = self.state.set(m.0, HashSet::new());
        self.apply(diff, ctx);
    }
}

impl Handler<Resync> for Advertiser {
    type Result = ();
    fn handle(&mut self, m: Resync, ctx: &mut Context<Self>) {
        let diff = self.state.resync(m.0);
        self.apply(diff, ctx);
    }
}

/// Subscribe, walk, follow events; on failure back off, re-subscribe and re-walk.
async fn watch(store: Arc<dyn ContentStore>, me: Addr<Advertiser>) {
    let mut backoff = Duration::from_secs(1);
    let mut warned = false;
    loop {
        // containerd answers a subscription only with its first event: send the request, give it
        // a moment to be registered, walk, then wait for the stream.
        let subscribe = store.image_events();
        tokio::pin!(subscribe);
        let early = tokio::time::timeout(SUBSCRIBE_GRACE, &mut subscribe).await;
        if let Ok(Err(e)) = &early {
            if !warned {
                tracing::warn!(error = %e, "cannot subscribe to containerd events; retrying");
                warned = true;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        match all_keys(store.as_ref()).await {
            Ok(all) => {
                tracing::info!(images = all.len(), "walked local images");
                let _ = me.send(Resync(all)).await;
                backoff = Duration::from_secs(1);
                warned = false;
            }
            Err(e) => tracing::warn!(error = %e, "walking images failed"),
        }
        let subscribed = match early {
            Ok(r) => r,
            Err(_) => subscribe.await,
        };
        match subscribed {
            Ok(mut events) => {
                let mut resync = tokio::time::interval(RESYNC_EVERY);
                resync.tick().await;
                loop {
                    tokio::select! {
                        ev = events.next() => match ev {
                            Some(Ok(ImageEvent::Changed(name))) => match store.resolve(&name).await {
                                Ok(Some(target)) => {
                                    let keys = image_keys(store.as_ref(), &name, &target).await;
                                    let _ = me.send(ImageKeys { name, keys }).await;
                                }
                                Ok(None) => {
                                    let _ = me.send(ImageGone(name)).await;
                                }
                                Err(e) => tracing::warn!(image = name, error = %e, "resolving a changed image failed"),
                            },
                            Some(Ok(ImageEvent::Deleted(name))) => {
                                let _ = me.send(ImageGone(name)).await;
                            }
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "containerd event stream failed; re-subscribing");
                                break;
                            }
                            None => {
                                tracing::warn!("containerd event stream ended; re-subscribing");
                                break;
                            }
                        },
                        _ = resync.tick() => {
                            if let Ok(all) = all_keys(store.as_ref()).await {
                                let _ = me.send(Resync(all)).await;
                            }
                        }
                    }
                }
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "cannot subscribe to containerd events; retrying");
                    warned = true;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::collect_peers;
    use crate::routing::memory::{MemoryNetwork, MemoryRouter};
    use crate::routing::Peer;
    use crate::store::memory::MemoryStore;

    fn set(keys: &[&str]) -> HashSet<String> {
        keys.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn key_state_refcounts_shared_layers() {
        let mut s = KeyState::default();
        let (mut p, w) = s.set("a".into(), set(&["t/a:1", "L", "M1"]));
        p.sort();
        assert_eq!((p, w), (vec!["L".to_string(), "M1".into(), "t/a:1".into()], vec![]));
        let (p, w) = s.set("b".into(), set(&["t/b:1", "L", "M2"]));
        assert!(!p.contains(&"L".to_string()), "shared layer already provided");
        assert!(w.is_empty());
        let (_, mut w) = s.set("a".into(), HashSet::new());
        w.sort();
        assert_eq!(w, vec!["M1".to_string(), "t/a:1".into()], "L is still needed by b");
        let (p, mut w) = s.resync([("c".to_string(), set(&["M3"]))].into());
        w.sort();
        assert_eq!((p, w), (vec!["M3".to_string()], vec!["L".to_string(), "M2".into(), "t/b:1".into()]));
    }

    fn manifest(store: &MemoryStore, config: &[u8], layers: &[&[u8]]) -> Digest {
        let c = store.put(config.to_vec());
        let ls: Vec<serde_json::Value> = layers
            .iter()
            .map(|l| serde_json::json!({"digest": store.put(l.to_vec()).to_string(), "size": l.len()}))
            .collect();
        let m = serde_json::json!({"schemaVersion": 2, "mediaType": media::OCI_MANIFEST, "config": {"digest": c.to_string()}, "layers": ls});
        store.put(serde_json::to_vec(&m).unwrap())
    }

    #[tokio::test]
    async fn walks_index_with_only_present_platforms() {
        let store = MemoryStore::default();
        let amd = manifest(&store, b"cfg-amd64", &[b"layer-1", b"layer-2"]);
        let absent = crate::oci::Digest::compute(crate::oci::Algorithm::Sha256, b"arm64 manifest not pulled");
        let idx = serde_json::json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": [
            {"digest": amd.to_string()}, {"digest": absent.to_string()}]});
        let idx_d = store.put(serde_json::to_vec(&idx).unwrap());
        store.tag("example.com/app:v1", media::OCI_INDEX, &idx_d);
        let keys =
            image_keys(&store, "example.com/app:v1", &store.resolve("example.com/app:v1").await.unwrap().unwrap())
                .await;
        assert_eq!(keys.len(), 6, "{keys:?}"); // tag, index, manifest, config, 2 layers
        assert!(
            keys.contains("example.com/app:v1") && keys.contains(&idx_d.to_string()) && keys.contains(&amd.to_string())
        );
        assert!(!keys.contains(&absent.to_string()));
    }

    async fn wait_for(what: &str, mut f: impl AsyncFnMut() -> bool) {
        for _ in 0..200 {
            if f().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out: {what}");
    }

    #[actix::test]
    async fn follows_events_and_survives_a_store_restart() {
        let store = Arc::new(MemoryStore::default());
        let net = Arc::new(MemoryNetwork::default());
        let me = Peer { id: "me".into(), addr: "127.0.0.1:1".parse().unwrap() };
        let other = MemoryRouter::new(net.clone(), Peer { id: "other".into(), addr: "127.0.0.1:2".parse().unwrap() });
        let first = manifest(&store, b"c1", &[b"l1"]);
        store.tag("example.com/a:v1", media::OCI_MANIFEST, &first);
        let _adv = Advertiser::new(store.clone(), Arc::new(MemoryRouter::new(net.clone(), me))).start();
        let resolves = async |key: String| {
            !collect_peers(other.resolve(key, 1).await.unwrap(), Duration::from_millis(5)).await.is_empty()
        };
        wait_for("initial walk", async || resolves(first.to_string()).await).await;
        assert!(resolves("example.com/a:v1".into()).await);

        let second = manifest(&store, b"c2", &[b"l2"]);
        store.tag("example.com/b:v1", media::OCI_MANIFEST, &second);
        wait_for("create event", async || resolves(second.to_string()).await).await;

        store.remove_image("example.com/a:v1");
        wait_for("delete event", async || !resolves(first.to_string()).await).await;
        assert!(!resolves("example.com/a:v1".into()).await);
        assert!(resolves(second.to_string()).await);

        // containerd restarts: the stream ends; changes made meanwhile are found by the re-walk.
        store.drop_subscriber();
        let third = manifest(&store, b"c3", &[b"l3"]);
        store.tag("example.com/c:v1", media::OCI_MANIFEST, &third);
        wait_for("re-walk after restart", async || resolves(third.to_string()).await).await;
    }
}

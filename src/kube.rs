//! Kubernetes events on peerd's own Pod (`P2PConnected`, `P2PDisconnected`, ...), posted with the
//! in-cluster service account. A plain client of the Events API (`core/v1`): one POST the first
//! time a reason occurs, then merge-PATCHes of `count` and `lastTimestamp` — the way kubelet
//! aggregates repeats. Requests run on a worker behind a bounded queue: emitting never waits
//! on the API server, and a full queue drops the event (counted), never blocks.
//!
//! A full client library (kube-rs) would add a large dependency tree for two HTTP calls; the
//! request shapes are checked against a fake API server in `tests/events.rs`.

use crate::config::KubernetesConfig;
use crate::events::{Event, EventSink, LogSink};
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// Events waiting for the API server; more are dropped.
const QUEUE: usize = 64;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const EVENTS_DROPPED: &str = "peerd_kubernetes_events_dropped_total";
pub const EVENTS_FAILED: &str = "peerd_kubernetes_event_errors_total";

/// Describe the Kubernetes worker's metrics.
pub fn describe() {
    metrics::describe_counter!(EVENTS_DROPPED, "Kubernetes events dropped because the worker's queue was full");
    metrics::describe_counter!(EVENTS_FAILED, "Kubernetes events the API server did not accept");
}

/// Logs every event and forwards it to the API server worker.
pub struct KubeSink {
    log: LogSink,
    tx: mpsc::Sender<(Event, u32)>,
}

impl EventSink for KubeSink {
    fn emit(&mut self, event: &Event, count: u32) {
        self.log.emit(event, count);
        if self.tx.try_send((event.clone(), count)).is_err() {
            metrics::counter!(EVENTS_DROPPED).increment(1);
        }
    }
}

/// A client for the API server at `api_url`, trusting the cluster CA in `ca_file` for https.
fn api_client(api_url: &str, ca_file: &std::path::Path) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder().timeout(REQUEST_TIMEOUT);
    if api_url.starts_with("https://") {
        let pem = std::fs::read(ca_file).map_err(|e| format!("{}: {e}", ca_file.display()))?;
        let ca = reqwest::Certificate::from_pem(&pem).map_err(|e| format!("{}: {e}", ca_file.display()))?;
        builder = builder.add_root_certificate(ca);
    }
    builder.build().map_err(|e| e.to_string())
}

impl KubeSink {
    /// Start the worker on the current runtime.
    pub fn start(cfg: &KubernetesConfig) -> Result<KubeSink, String> {
        let http = api_client(&cfg.api_url, &cfg.ca_file)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let worker = Worker { http, cfg: cfg.clone(), posted: HashMap::new() };
        tokio::spawn(worker.run(rx));
        Ok(KubeSink { log: LogSink, tx })
    }
}

struct Worker {
    http: reqwest::Client,
    cfg: KubernetesConfig,
    /// reason → (event name, count so far). Keyed by [`Reason`], not its name: a failed
    /// `P2PPreheat` (Warning) is its own Event, apart from the done ones (Normal).
    posted: HashMap<crate::events::Reason, (String, u32)>,
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<(Event, u32)>) {
        while let Some((event, count)) = rx.recv().await {
            if let Err(e) = self.send(&event, count).await {
                metrics::counter!(EVENTS_FAILED).increment(1);
                tracing::warn!(reason = event.reason.as_str(), error = %e, "posting a Kubernetes event failed");
            }
        }
    }

    fn token(&self) -> Option<String> {
        std::fs::read_to_string(&self.cfg.token_file).ok().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty())
    }

    fn events_url(&self) -> String {
        format!("{}/api/v1/namespaces/{}/events", self.cfg.api_url.trim_end_matches('/'), self.cfg.pod_namespace)
    }

    async fn send(&mut self, event: &Event, count: u32) -> Result<(), String> {
        let reason = event.reason.as_str();
        if let Some((name, total)) = self.posted.get(&event.reason).cloned() {
            let total = total + count;
            let patch = json!({ "count": total, "lastTimestamp": now(), "message": event.message });
            let mut req = self
                .http
                .patch(format!("{}/{name}", self.events_url()))
                .header("Content-Type", "application/merge-patch+json")
                .body(patch.to_string());
            if let Some(t) = self.token() {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.map_err(|e| e.to_string())?;
            if resp.status().is_success() {
                self.posted.insert(event.reason, (name, total));
                return Ok(());
            }
            if resp.status().as_u16() != 404 {
                return Err(format!("PATCH {name}: {}", resp.status()));
            }
            // The event expired on the server: start a new one.
        }
        let stamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let name = format!("{}.{stamp:x}", self.cfg.pod_name);
        let ts = now();
        let body = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": { "name": name, "namespace": self.cfg.pod_namespace },
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": self.cfg.pod_name,
                "namespace": self.cfg.pod_namespace,
                "uid": self.cfg.pod_uid,
            },
            "reason": reason,
            "message": event.message,
            "type": if event.reason.is_warning() { "Warning" } else { "Normal" },
            "count": count,
            "firstTimestamp": ts,
            "lastTimestamp": ts,
            "source": { "component": "peerd", "host": self.cfg.node_name },
            "reportingComponent": "peerd",
            "reportingInstance": self.cfg.node_name,
        });
        let mut req = self.http.post(self.events_url()).json(&body);
        if let Some(t) = self.token() {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("POST event: {}", resp.status()));
        }
        self.posted.insert(event.reason, (name, count));
        Ok(())
    }
}

/// `peerd kube wait-daemonset`: what the chart's uninstall Job runs (in peerd's own image, so
/// no kubectl image has to be pulled on an air-gapped cluster).
pub struct WaitDaemonSet {
    pub api_url: String,
    pub token_file: std::path::PathBuf,
    pub ca_file: std::path::PathBuf,
    pub namespace: String,
    pub name: String,
    pub timeout: Duration,
    pub poll: Duration,
}

/// Why a DaemonSet is not rolled out yet, or `None` when it is: the controller saw the current
/// spec and a Ready pod of it runs on every node it should run on (what `kubectl rollout
/// status` checks).
pub fn daemonset_pending(ds: &serde_json::Value) -> Option<String> {
    let n = |v: &serde_json::Value| v.as_i64().unwrap_or(0);
    let generation = n(&ds["metadata"]["generation"]);
    let st = &ds["status"];
    let (observed, desired) = (n(&st["observedGeneration"]), n(&st["desiredNumberScheduled"]));
    let (updated, ready) = (n(&st["updatedNumberScheduled"]), n(&st["numberReady"]));
    if observed < generation {
        return Some("the controller has not seen the current spec yet".into());
    }
    if updated < desired {
        return Some(format!("{updated} of {desired} pods updated"));
    }
    if ready < desired {
        return Some(format!("{ready} of {desired} pods ready"));
    }
    None
}

/// Poll the DaemonSet until it is rolled out (`Ok`) or the timeout passes (`Err` with the last
/// state). Each step is printed, like `kubectl rollout status`.
pub async fn wait_daemonset(w: &WaitDaemonSet) -> Result<(), String> {
    let http = api_client(&w.api_url, &w.ca_file)?;
    let token = std::fs::read_to_string(&w.token_file).ok().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
    let url =
        format!("{}/apis/apps/v1/namespaces/{}/daemonsets/{}", w.api_url.trim_end_matches('/'), w.namespace, w.name);
    let deadline = tokio::time::Instant::now() + w.timeout;
    let mut last = String::new();
    loop {
        let mut req = http.get(&url);
        if let Some(t) = &token {
            req = req.bearer_auth(t);
        }
        let state = match req.send().await {
            Ok(r) if r.status().is_success() => match r.json::<serde_json::Value>().await {
                Ok(ds) => match daemonset_pending(&ds) {
                    None => {
                        println!("daemonset {}/{} rolled out", w.namespace, w.name);
                        return Ok(());
                    }
                    Some(why) => why,
                },
                Err(e) => format!("unreadable answer: {e}"),
            },
            Ok(r) => format!("the API server answered {}", r.status()),
            Err(e) => format!("the API server cannot be reached: {e}"),
        };
        if state != last {
            println!("waiting for daemonset {}/{}: {state}", w.namespace, w.name);
            last = state;
        }
        if tokio::time::Instant::now() + w.poll > deadline {
            return Err(format!("daemonset {}/{} not rolled out after {:?}: {last}", w.namespace, w.name, w.timeout));
        }
        tokio::time::sleep(w.poll).await;
    }
}

#[cfg(test)]
mod wait_tests {
    use super::daemonset_pending;
    use serde_json::json;

    #[test]
    fn rollout_states() {
        let ds = |gen: i64, obs: i64, desired: i64, updated: i64, ready: i64| {
            json!({"metadata": {"generation": gen}, "status": {"observedGeneration": obs,
                "desiredNumberScheduled": desired, "updatedNumberScheduled": updated, "numberReady": ready}})
        };
        assert_eq!(daemonset_pending(&ds(1, 1, 3, 3, 3)), None);
        assert_eq!(daemonset_pending(&ds(1, 1, 0, 0, 0)), None, "no node to run on: nothing to wait for");
        assert!(daemonset_pending(&ds(2, 1, 3, 3, 3)).unwrap().contains("not seen"));
        assert_eq!(daemonset_pending(&ds(1, 1, 3, 2, 2)).as_deref(), Some("2 of 3 pods updated"));
        assert_eq!(daemonset_pending(&ds(1, 1, 3, 3, 1)).as_deref(), Some("1 of 3 pods ready"));
        let fresh = json!({"metadata": {"generation": 1}});
        assert!(daemonset_pending(&fresh).is_some(), "no status yet: not rolled out");
    }
}

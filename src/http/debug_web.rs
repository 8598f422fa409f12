//! `GET /debug/web`: one server-rendered HTML page that shows what this node and the p2p layer
//! do — "how do I know it works". On the metrics listener with `metrics.debug_web` only (it
//! tells who holds which digest). No external assets (works air-gapped); the only script is a
//! few lines for auto-refresh.
//!
//! - this node: peer id, addresses, version, uptime, how local blobs are read (fast path or gRPC);
//! - the DHT: connected peers, routing table, keys this node advertises;
//! - bytes served and fetched per minute over the last hour, by source, as an inline SVG chart,
//!   from a ring of per-minute samples of the node's own counters ([`Recorder::sample`]);
//! - recent transfers (a bounded ring filled by the [`super::observe`] middleware);
//! - preheats on this node;
//! - a "measure" form (`GET /debug/web/measure?image=`): resolve the image through this node's
//!   mirror, then for each layer the holders the DHT names and the time to read the layer from
//!   one of them — hashed and dropped, never stored.

use crate::oci::{media, Digest};
use crate::peer::client::PeerClient;
use crate::preheat::{ImageRef, Platform, PreheatRequest, Preheater};
use crate::routing::Router;
use crate::store::ContentStore;
use actix_web::{web, HttpResponse};
use futures_util::StreamExt;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Transfers remembered.
const MAX_TRANSFERS: usize = 50;
/// Samples kept: one an hour of minutes, plus the one before.
const MAX_SAMPLES: usize = 61;
/// How often the counters are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(60);
/// Layers measured at most.
const MEASURE_MAX_LAYERS: usize = 32;
/// Longest read of one layer while measuring.
const MEASURE_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Holders asked for per layer.
const MEASURE_MAX_HOLDERS: usize = 10;

/// The chart's series: (legend, metric, label filter, colour).
const SERIES: [(&str, &str, &str, &str); 6] = [
    ("to clients, from local store", crate::metrics::SERVED_BYTES, "source=\"local\"", "#2b8a3e"),
    ("to clients, from peers", crate::metrics::SERVED_BYTES, "source=\"peer\"", "#1c7ed6"),
    ("to clients, via swarm", crate::metrics::SERVED_BYTES, "source=\"swarm\"", "#ae3ec9"),
    ("to clients, from upstream", crate::metrics::SERVED_BYTES, "source=\"upstream\"", "#e8590c"),
    ("to peers", crate::peer::PEER_SERVED_BYTES, "", "#495057"),
    ("fetched from peers", crate::peer::PEER_FETCH_BYTES, "", "#74c0fc"),
];

/// One finished transfer.
#[derive(Clone, Debug)]
pub struct Transfer {
    pub at: SystemTime,
    /// The request path (clipped).
    pub what: String,
    /// `client` (front end) or `peer` (the peer listener).
    pub to: &'static str,
    /// Where the bytes came from (`local`, `peer`, `upstream`, `swarm`, `none`).
    pub source: &'static str,
    pub status: u16,
    pub bytes: u64,
    pub seconds: f64,
}

/// What the page shows that no other part keeps: recent transfers and per-minute samples.
#[derive(Default)]
pub struct Recorder {
    transfers: Mutex<VecDeque<Transfer>>,
    samples: Mutex<VecDeque<(SystemTime, [f64; SERIES.len()])>>,
}

impl Recorder {
    pub fn record(&self, t: Transfer) {
        let mut q = self.transfers.lock().unwrap_or_else(|p| p.into_inner());
        q.push_back(t);
        while q.len() > MAX_TRANSFERS {
            q.pop_front();
        }
    }

    /// Take a sample of the counters from the Prometheus exposition `text`.
    pub fn sample(&self, text: &str, now: SystemTime) {
        let mut q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        q.push_back((now, values(text)));
        while q.len() > MAX_SAMPLES {
            q.pop_front();
        }
    }

    pub fn transfers(&self) -> Vec<Transfer> {
        self.transfers.lock().unwrap_or_else(|p| p.into_inner()).iter().rev().cloned().collect()
    }

    fn samples(&self) -> Vec<(SystemTime, [f64; SERIES.len()])> {
        self.samples.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
}

/// The series' current values in an exposition text.
fn values(text: &str) -> [f64; SERIES.len()] {
    let mut out = [0.0; SERIES.len()];
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        for (i, (_, metric, filter, _)) in SERIES.iter().enumerate() {
            let Some(rest) = line.strip_prefix(metric) else { continue };
            if !(rest.starts_with('{') || rest.starts_with(' ')) || !rest.contains(filter) {
                continue;
            }
            if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                out[i] += v;
            }
        }
    }
    out
}

/// Everything the page reads.
pub struct DebugWeb {
    pub started: Instant,
    pub peer_id: String,
    /// (name, address) of each listener.
    pub addrs: Vec<(&'static str, String)>,
    pub store: Arc<dyn ContentStore>,
    pub router: Option<Arc<dyn Router>>,
    pub preheat: Arc<Preheater>,
    pub recorder: Arc<Recorder>,
    pub prometheus: metrics_exporter_prometheus::PrometheusHandle,
    /// The node's own front end (the measure form resolves images through it).
    pub front: String,
    pub client: Option<Arc<PeerClient>>,
    pub http: reqwest::Client,
}

/// Sample the counters every [`SAMPLE_EVERY`] (call inside the node's runtime).
pub fn spawn_sampler(recorder: Arc<Recorder>, prometheus: metrics_exporter_prometheus::PrometheusHandle) {
    actix_rt::spawn(async move {
        let mut tick = actix_rt::time::interval(SAMPLE_EVERY);
        loop {
            tick.tick().await;
            recorder.sample(&prometheus.render(), SystemTime::now());
        }
    });
}

/// Routes (metrics listener, with `metrics.debug_web`).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/debug/web", web::get().to(|d: web::Data<DebugWeb>| async move { page(&d, None).await })).route(
        "/debug/web/measure",
        web::get().to(|d: web::Data<DebugWeb>, q: web::Query<std::collections::HashMap<String, String>>| async move {
            let image = q.get("image").map(String::as_str).unwrap_or("").trim().to_owned();
            let result = measure(&d, &image).await;
            page(&d, Some((image, result))).await
        }),
    );
}

/// HTML-escape.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// `s` with every `sha256:<hex>` cut to 12 hex digits and a peer id (`12D3KooW...`) to its
/// last 8 characters, HTML-escaped, inside a `<code>` whose title is the whole of `s`.
fn abbrev(s: &str) -> String {
    let word = |w: &str| -> String {
        let mut w = w.to_owned();
        if let Some(pos) = w.find("sha256:") {
            let hex_end = pos + 7 + 64;
            if w.len() >= hex_end && w[pos + 7..hex_end].bytes().all(|b| b.is_ascii_hexdigit()) {
                w.replace_range(pos + 7 + 12..hex_end, "…");
            }
        }
        if w.starts_with("12D3Koo") && w.len() > 20 && w.is_ascii() {
            w = format!("…{}", &w[w.len() - 8..]);
        }
        w
    };
    let short: Vec<String> = s.split(' ').map(|part| part.split('/').map(word).collect::<Vec<_>>().join("/")).collect();
    format!("<code title=\"{}\">{}</code>", esc(s), esc(&short.join(" ")))
}

fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut u) = (n, 0);
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn ago(t: SystemTime, now: SystemTime) -> String {
    let s = now.duration_since(t).unwrap_or_default().as_secs();
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

fn duration(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}h {:02}m {:02}s", s / 3600, (s / 60) % 60, s % 60)
}

/// The chart: per-minute deltas of each series, over the samples and a live one.
pub fn chart(samples: &[(SystemTime, [f64; SERIES.len()])], now: SystemTime) -> String {
    const W: f64 = 640.0;
    const H: f64 = 170.0;
    const LEFT: f64 = 64.0;
    const BOTTOM: f64 = 20.0;
    // Rates in bytes per minute between consecutive samples, placed at the later sample.
    let mut points: Vec<(f64, [f64; SERIES.len()])> = Vec::new();
    for w in samples.windows(2) {
        let (t0, a) = w[0];
        let (t1, b) = w[1];
        let dt = t1.duration_since(t0).unwrap_or_default().as_secs_f64().max(1.0);
        let mins_ago = now.duration_since(t1).unwrap_or_default().as_secs_f64() / 60.0;
        let mut r = [0.0; SERIES.len()];
        for i in 0..SERIES.len() {
            r[i] = ((b[i] - a[i]).max(0.0)) * 60.0 / dt;
        }
        if mins_ago <= 60.0 {
            points.push((mins_ago, r));
        }
    }
    let max = points.iter().flat_map(|(_, r)| r.iter().copied()).fold(0.0f64, f64::max).max(1.0);
    let x = |mins_ago: f64| LEFT + (W - LEFT - 8.0) * (1.0 - mins_ago / 60.0);
    let y = |v: f64| 8.0 + (H - BOTTOM - 8.0) * (1.0 - v / max);
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="bytes per minute, last hour"><rect x="{LEFT}" y="8" width="{}" height="{}" fill="#f8f9fa" stroke="#dee2e6"/>"##,
        W - LEFT - 8.0,
        H - BOTTOM - 8.0
    );
    let _ = write!(
        svg,
        r##"<text x="{}" y="14" font-size="10" text-anchor="end">{}/min</text><text x="{}" y="{}" font-size="10" text-anchor="end">0</text>"##,
        LEFT - 4.0,
        esc(&bytes(max)),
        LEFT - 4.0,
        H - BOTTOM
    );
    for (m, label) in [(60.0, "-60 min"), (30.0, "-30 min"), (0.0, "now")] {
        let _ =
            write!(svg, r##"<text x="{}" y="{}" font-size="10" text-anchor="middle">{label}</text>"##, x(m), H - 6.0);
    }
    for (i, (_, _, _, colour)) in SERIES.iter().enumerate() {
        let pts: Vec<String> = points.iter().map(|(m, r)| format!("{:.1},{:.1}", x(*m), y(r[i]))).collect();
        if pts.len() > 1 {
            let _ = write!(
                svg,
                r##"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"##,
                pts.join(" ")
            );
        }
        for (m, r) in &points {
            let _ = write!(svg, r##"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{colour}"/>"##, x(*m), y(r[i]));
        }
    }
    svg.push_str("</svg>");
    svg
}

/// One measured layer.
#[derive(Debug)]
pub struct LayerMeasure {
    pub digest: String,
    pub size: u64,
    pub holders: Vec<String>,
    pub lookup: Duration,
    /// Read from the first holder: bytes, time, or why not.
    pub read: Result<(u64, Duration, String), String>,
}

/// The measure form's result.
#[derive(Debug)]
pub struct Measurement {
    pub image: String,
    pub manifest: String,
    pub resolve: Duration,
    pub layers: Vec<LayerMeasure>,
}

async fn get_manifest(d: &DebugWeb, image: &ImageRef, reference: &str) -> Result<(bytes::Bytes, String), String> {
    let url = format!("{}{}", d.front, image.manifest_path(reference));
    let resp = d
        .http
        .get(url)
        .header("accept", crate::oci::media::ACCEPT_MANIFESTS)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("the mirror answered {} for {reference}", resp.status()));
    }
    let digest = resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let body = resp.bytes_stream().map(|r| r.map_err(std::io::Error::other));
    let body = crate::stream::collect(Box::pin(body), 4 << 20).await.map_err(|e| e.to_string())?;
    Ok((body, digest))
}

/// Run the measure form for `image`.
pub async fn measure(d: &DebugWeb, image: &str) -> Result<Measurement, String> {
    let req = PreheatRequest { images: vec![image.to_owned()], ..Default::default() };
    let (refs, _) = d.preheat.check(&req).map_err(|e| e.to_string())?;
    let r = &refs[0];
    let started = Instant::now();
    let (mut body, mut digest) = get_manifest(d, r, &r.reference).await?;
    if matches!(media::sniff_manifest(&body).as_deref(), Some(media::OCI_INDEX | media::DOCKER_MANIFEST_LIST)) {
        let platform = Platform::host();
        let doc: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let child = doc["manifests"]
            .as_array()
            .and_then(|m| {
                m.iter().find(|m| {
                    m["platform"]["os"].as_str() == Some(&platform.os)
                        && m["platform"]["architecture"].as_str() == Some(&platform.arch)
                })
            })
            .and_then(|m| m["digest"].as_str())
            .ok_or_else(|| format!("no {platform} manifest in the index"))?
            .to_owned();
        (body, digest) = get_manifest(d, r, &child).await?;
    }
    let resolve = started.elapsed();
    let doc: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let mut layers = Vec::new();
    for l in doc["layers"].as_array().into_iter().flatten().take(MEASURE_MAX_LAYERS) {
        let (Some(ld), Some(size)) = (l["digest"].as_str().and_then(|s| s.parse::<Digest>().ok()), l["size"].as_u64())
        else {
            continue;
        };
        let t = Instant::now();
        let holders = match &d.router {
            Some(router) => match router.resolve(ld.to_string(), MEASURE_MAX_HOLDERS).await {
                Ok(rx) => crate::routing::collect_peers(rx, Duration::from_secs(2)).await,
                Err(_) => Vec::new(),
            },
            None => Vec::new(),
        };
        let lookup = t.elapsed();
        let read = match (holders.first(), &d.client) {
            (None, _) => Err("no peer holds it".to_owned()),
            (Some(_), None) => Err("p2p is off".to_owned()),
            (Some(peer), Some(client)) => {
                let t = Instant::now();
                let read = async {
                    let resp =
                        client.fetch(peer, &r.blob_path(&ld), false, None, None).await.map_err(|e| e.to_string())?;
                    let mut body = resp.body;
                    let mut hasher = crate::oci::Hasher::new(ld.algorithm());
                    let mut n = 0u64;
                    while let Some(chunk) = body.next().await {
                        let chunk = chunk.map_err(|e| e.to_string())?;
                        hasher.update(&chunk);
                        n += chunk.len() as u64;
                    }
                    if hasher.finish() != ld {
                        return Err("the bytes did not match the digest".to_owned());
                    }
                    Ok(n)
                };
                match tokio::time::timeout(MEASURE_READ_TIMEOUT, read).await {
                    Ok(Ok(n)) => Ok((n, t.elapsed(), peer.addr.to_string())),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(format!("not read within {MEASURE_READ_TIMEOUT:?}")),
                }
            }
        };
        layers.push(LayerMeasure {
            digest: ld.to_string(),
            size,
            holders: holders.iter().map(|p| format!("{} ({})", p.id, p.addr)).collect(),
            lookup,
            read,
        });
    }
    Ok(Measurement { image: r.to_string(), manifest: digest, resolve, layers })
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#212529;max-width:1400px}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #dee2e6}\
table{border-collapse:collapse}td,th{padding:2px 10px 2px 0;text-align:left;vertical-align:top;white-space:nowrap}\
th{color:#495057;font-weight:600}code{font-size:12px}.bad{color:#c92a2a}.ok{color:#2b8a3e}\
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px}\
.bar{display:inline-block;width:160px;height:10px;background:#e9ecef}.bar i{display:block;height:10px;background:#1c7ed6}";

/// Auto-refresh, off while the measure result is shown.
const SCRIPT: &str =
    "const c=document.getElementById('auto');if(c){c.checked=localStorage.getItem('peerd-auto')==='1';\
c.onchange=()=>localStorage.setItem('peerd-auto',c.checked?'1':'0');\
setInterval(()=>{if(c.checked&&!location.pathname.endsWith('/measure'))location.reload()},5000)}";

async fn page(d: &DebugWeb, measured: Option<(String, Result<Measurement, String>)>) -> HttpResponse {
    let now = SystemTime::now();
    let mut h = String::with_capacity(16 << 10);
    let _ = write!(
        h,
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>peerd {}</title><style>{STYLE}</style></head><body>",
        esc(&d.peer_id)
    );
    let _ = write!(h, "<h1>peerd debug <small>v{}</small></h1>", env!("CARGO_PKG_VERSION"));
    h.push_str("<label><input type=checkbox id=auto> refresh every 5 s</label>");

    // This node.
    h.push_str("<h2>This node</h2><table>");
    let _ = write!(h, "<tr><th>peer id</th><td><code id=peer-id>{}</code></td></tr>", esc(&d.peer_id));
    for (name, addr) in &d.addrs {
        let _ = write!(h, "<tr><th>{}</th><td><code>{}</code></td></tr>", esc(name), esc(addr));
    }
    let _ = write!(h, "<tr><th>version</th><td>{}</td></tr>", env!("CARGO_PKG_VERSION"));
    let _ = write!(h, "<tr><th>uptime</th><td>{}</td></tr>", duration(d.started.elapsed()));
    let _ = write!(h, "<tr><th>local blobs</th><td id=store>{}</td></tr></table>", esc(&d.store.describe()));

    // The DHT.
    h.push_str("<h2>Peers</h2>");
    match &d.router {
        Some(r) => match r.status().await {
            Ok(s) => {
                let _ = write!(
                    h,
                    "<table><tr><th>connected peers</th><td id=connected>{}</td></tr><tr><th>routing table</th><td>{}</td></tr>\
<tr><th>advertised keys</th><td id=keys>{}</td></tr><tr><th>ready</th><td class={}>{}</td></tr><tr><th>p2p listens on</th><td><code>{}</code></td></tr></table>",
                    s.connected_peers,
                    s.routing_table_peers,
                    s.provided_keys,
                    if s.ready { "ok" } else { "bad" },
                    s.ready,
                    esc(&s.listen_addrs.join(", "))
                );
            }
            Err(e) => {
                let _ = write!(h, "<p class=bad>router: {}</p>", esc(&e.to_string()));
            }
        },
        None => h.push_str("<p>p2p is off: a single-node mirror.</p>"),
    }

    // Traffic.
    h.push_str("<h2>Traffic, last hour (bytes per minute)</h2>");
    let mut samples = d.recorder.samples();
    samples.push((now, values(&d.prometheus.render())));
    h.push_str(&chart(&samples, now));
    h.push_str("<div class=legend>");
    for (label, _, _, colour) in SERIES {
        let _ = write!(h, "<span style=\"background:{colour}\"></span>{}", esc(label));
    }
    h.push_str("</div><table id=totals><tr>");
    let last = samples.last().map(|s| s.1).unwrap_or_default();
    for (i, (label, ..)) in SERIES.iter().enumerate() {
        let _ = write!(h, "<td><b>{}</b><br>{} total</td>", esc(label), bytes(last[i]));
    }
    h.push_str("</tr></table>");

    // Transfers.
    h.push_str("<h2>Recent transfers</h2>");
    let transfers = d.recorder.transfers();
    if transfers.is_empty() {
        h.push_str("<p>none yet</p>");
    } else {
        h.push_str("<table id=transfers><tr><th>when</th><th>what</th><th>to</th><th>from</th><th>status</th><th>size</th><th>time</th><th>throughput</th></tr>");
        for t in &transfers {
            let rate = if t.seconds > 0.0 { bytes(t.bytes as f64 / t.seconds) + "/s" } else { "-".into() };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3}s</td><td>{rate}</td></tr>",
                ago(t.at, now),
                abbrev(&t.what),
                t.to,
                t.source,
                if t.status == 0 { "aborted".to_owned() } else { t.status.to_string() },
                bytes(t.bytes as f64),
                t.seconds
            );
        }
        h.push_str("</table>");
    }

    // Preheats.
    h.push_str("<h2>Preheats on this node</h2>");
    let jobs = d.preheat.jobs();
    if jobs.is_empty() {
        h.push_str("<p>none</p>");
    } else {
        h.push_str(
            "<table id=preheats><tr><th>id</th><th>images</th><th>state</th><th>progress</th><th>time</th></tr>",
        );
        for j in jobs.iter().take(20) {
            let p = j.progress("", "");
            let pct = if p.total > 0 { (p.bytes as f64 * 100.0 / p.total as f64).min(100.0) } else { 0.0 };
            let state = match &p.error {
                Some(e) => format!("<span class=bad>failed: {}</span>", esc(e)),
                None => format!("{:?}", p.state).to_lowercase(),
            };
            let _ = write!(
                h,
                "<tr><td><code>{}</code></td><td>{}</td><td>{state}</td><td><span class=bar><i style=\"width:{pct:.0}%\"></i></span> {} / {}</td><td>{:.1}s</td></tr>",
                esc(&j.id),
                p.images.iter().map(|i| abbrev(i)).collect::<Vec<_>>().join("<br>"),
                bytes(p.bytes as f64),
                bytes(p.total as f64),
                p.seconds
            );
        }
        h.push_str("</table>");
    }

    // Measure.
    h.push_str("<h2>Measure an image</h2><form action=/debug/web/measure method=get>");
    let value = measured.as_ref().map(|(i, _)| esc(i)).unwrap_or_default();
    let _ = write!(
        h,
        "<input name=image size=70 placeholder=\"registry.example.com/app:v1\" value=\"{value}\"> <button>measure</button></form>"
    );
    h.push_str("<p>Resolves the image through this node's mirror, asks the DHT who holds each layer, and reads it from one holder (hashed, not stored).</p>");
    if let Some((_, result)) = measured {
        match result {
            Err(e) => {
                let _ = write!(h, "<p id=measure class=bad>{}</p>", esc(&e));
            }
            Ok(m) => {
                let _ = write!(
                    h,
                    "<p id=measure>{} → {}, resolved in {:.3}s</p>",
                    abbrev(&m.image),
                    abbrev(&m.manifest),
                    m.resolve.as_secs_f64()
                );
                h.push_str("<table id=layers><tr><th>layer</th><th>size</th><th>holders (DHT)</th><th>lookup</th><th>read through a peer</th></tr>");
                for l in &m.layers {
                    let read = match &l.read {
                        Ok((n, t, from)) => format!(
                            "<span class=ok>{} in {:.3}s ({}/s) from {}</span>",
                            bytes(*n as f64),
                            t.as_secs_f64(),
                            bytes(*n as f64 / t.as_secs_f64().max(1e-6)),
                            esc(from)
                        ),
                        Err(e) => format!("<span class=bad>{}</span>", esc(e)),
                    };
                    let holders = if l.holders.is_empty() {
                        "none".to_owned()
                    } else {
                        l.holders.iter().map(|x| abbrev(x)).collect::<Vec<_>>().join("<br>")
                    };
                    let _ = write!(
                        h,
                        "<tr><td>{}</td><td>{}</td><td>{holders}</td><td>{:.3}s</td><td>{read}</td></tr>",
                        abbrev(&l.digest),
                        bytes(l.size as f64),
                        l.lookup.as_secs_f64()
                    );
                }
                h.push_str("</table>");
            }
        }
    }
    let _ = write!(h, "<script>{SCRIPT}</script></body></html>");
    HttpResponse::Ok().content_type("text/html; charset=utf-8").insert_header(("cache-control", "no-store")).body(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_sum_matching_samples() {
        let text = "# HELP peerd_served_bytes_total x\npeerd_served_bytes_total{source=\"local\"} 10\n\
peerd_served_bytes_total{source=\"peer\"} 5\npeerd_served_bytes_total{source=\"local\",x=\"y\"} 2\n\
peerd_peer_served_bytes_total 7\npeerd_peer_fetch_bytes_total 3\n";
        assert_eq!(values(text), [12.0, 5.0, 0.0, 0.0, 7.0, 3.0]);
    }

    #[test]
    fn chart_plots_per_minute_rates_of_the_last_hour() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut a = [0.0; SERIES.len()];
        let mut samples = vec![(t0, a)];
        a[0] = 600.0;
        samples.push((t0 + Duration::from_secs(60), a));
        a[0] = 600.0 + 1200.0;
        samples.push((t0 + Duration::from_secs(120), a));
        let svg = chart(&samples, t0 + Duration::from_secs(120));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains(">1.2 KiB/min<"), "the scale is the highest per-minute rate: {svg}");
        assert_eq!(svg.matches("<polyline").count(), SERIES.len());
        // Samples older than an hour are not drawn.
        let svg = chart(&samples, t0 + Duration::from_secs(7200));
        assert!(!svg.contains("<circle"));
    }

    #[test]
    fn transfers_are_bounded_newest_first() {
        let r = Recorder::default();
        for i in 0..(MAX_TRANSFERS + 10) {
            r.record(Transfer {
                at: SystemTime::now(),
                what: format!("/v2/x/blobs/{i}"),
                to: "client",
                source: "local",
                status: 200,
                bytes: 1,
                seconds: 0.1,
            });
        }
        let t = r.transfers();
        assert_eq!(t.len(), MAX_TRANSFERS);
        assert_eq!(t[0].what, format!("/v2/x/blobs/{}", MAX_TRANSFERS + 9));
    }

    #[test]
    fn escapes() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn long_digests_and_peer_ids_are_shortened_with_the_whole_in_the_title() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let a = abbrev(&format!("/v2/x/blobs/{d}"));
        assert!(a.starts_with(&format!("<code title=\"/v2/x/blobs/{d}\">")), "{a}");
        assert!(a.ends_with(">/v2/x/blobs/sha256:abababababab…</code>"), "{a}");
        let p = abbrev("12D3KooWLzJJHy4hrFQzfa4WvhPZRuPqEAGsWfeYiRZpweL6NYSf (127.0.0.2:1)");
        assert!(p.contains(">…weL6NYSf (127.0.0.2:1)<"), "{p}");
        assert_eq!(abbrev("<b>"), "<code title=\"&lt;b&gt;\">&lt;b&gt;</code>");
    }
}

//! `peerd preheat IMAGE...`: the client of the node-local `POST /preheat`, with `--wait`
//! showing one progress line per chosen node until all of them are done or failed.

use super::{JobState, NodeProgress, PreheatRequest, RequestProgress};
use std::io::Write;
use std::time::Duration;

/// How often `--wait` asks for progress.
const POLL: Duration = Duration::from_millis(500);
/// Without a terminal, progress is printed this often (and on every change of state).
const LOG_EVERY: Duration = Duration::from_secs(5);
/// Width of a progress bar.
const BAR: usize = 24;

pub struct Options {
    pub addr: String,
    pub request: PreheatRequest,
    pub wait: bool,
    /// Give up waiting after this long.
    pub timeout: Duration,
}

/// What the command ends with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Refused(String),
    #[error("cannot reach peerd at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("{0} of the chosen nodes failed")]
    Failed(usize),
    #[error("gave up waiting after {0:?}")]
    Timeout(Duration),
}

fn bar(p: &NodeProgress) -> String {
    let frac = if p.total > 0 { (p.bytes as f64 / p.total as f64).min(1.0) } else { 0.0 };
    let filled = if p.state == JobState::Done { BAR } else { (frac * BAR as f64) as usize };
    format!("[{}{}]", "#".repeat(filled), ".".repeat(BAR - filled))
}

/// One line per node: `node  [#####.....]  12.0/48.0 MiB  running`.
pub fn render(p: &RequestProgress) -> String {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let mut out = String::new();
    for n in &p.nodes {
        let short: String = n.node.chars().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect();
        let state = match n.state {
            JobState::Queued => "queued".to_owned(),
            JobState::Running => "running".to_owned(),
            JobState::Done => format!("done in {:.1}s", n.seconds),
            JobState::Failed => format!("FAILED: {}", n.error.as_deref().unwrap_or("unknown error")),
        };
        out.push_str(&format!(
            "…{short} {:<21} {} {:>8.1}/{:.1} MiB  {state}\n",
            n.addr,
            bar(n),
            mib(n.bytes),
            mib(n.total)
        ));
    }
    out
}

/// Run the command; prints to stdout, returns how it ended.
pub async fn run(o: &Options) -> Result<RequestProgress, CliError> {
    let addr = o.addr.trim_end_matches('/').to_owned();
    let unreachable = |e: reqwest::Error| CliError::Unreachable { addr: addr.clone(), reason: e.to_string() };
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().map_err(unreachable)?;
    let resp = http.post(format!("{addr}/preheat")).json(&o.request).send().await.map_err(unreachable)?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(unreachable)?;
    if !status.is_success() {
        return Err(CliError::Refused(format!("preheat refused ({status}): {}", super::error_message(&body))));
    }
    let mut progress: RequestProgress =
        serde_json::from_slice(&body).map_err(|e| CliError::Refused(format!("unexpected answer: {e}")))?;
    println!("preheat {}: {} node(s)", progress.id, progress.nodes.len());
    if !o.wait {
        print!("{}", render(&progress));
        return Ok(progress);
    }
    let started = std::time::Instant::now();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut shown = 0usize;
    let (mut last_states, mut last_print) = (Vec::new(), std::time::Instant::now());
    loop {
        let text = render(&progress);
        let states: Vec<JobState> = progress.nodes.iter().map(|n| n.state).collect();
        if tty {
            // Redraw in place on a terminal.
            if shown > 0 {
                print!("\x1b[{shown}A\x1b[J");
            }
            print!("{text}");
        } else if shown == 0 || states != last_states || last_print.elapsed() >= LOG_EVERY {
            // A log gets a block when a node changes state, and every few seconds.
            print!("{text}");
            last_print = std::time::Instant::now();
        }
        last_states = states;
        let _ = std::io::stdout().flush();
        shown = text.lines().count();
        if progress.finished {
            break;
        }
        if started.elapsed() > o.timeout {
            return Err(CliError::Timeout(o.timeout));
        }
        tokio::time::sleep(POLL).await;
        let resp = http.get(format!("{addr}/preheat/{}", progress.id)).send().await.map_err(unreachable)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(unreachable)?;
        if !status.is_success() {
            return Err(CliError::Refused(format!("progress ({status}): {}", super::error_message(&body))));
        }
        progress = serde_json::from_slice(&body).map_err(|e| CliError::Refused(format!("unexpected answer: {e}")))?;
    }
    if progress.failed > 0 {
        return Err(CliError::Failed(progress.failed));
    }
    Ok(progress)
}

//! containerd mirror configuration: `<certs.d>/<host>/hosts.toml` files pointing containerd at
//! the node-local peerd, written by `peerd hosts install` (an init container) and undone by
//! `peerd hosts uninstall` (the chart's cleanup).
//!
//! - A file peerd did not write is moved aside to `hosts.toml.peerd-backup` and restored byte
//!   for byte; peerd's own files are recognised by their first line ([`MARKER`]), so installing
//!   twice is harmless and uninstall finds every one of them, whatever registries it is given.
//! - [`Mode::Prepend`] keeps the previous file's hosts (a corporate pull-through mirror, `ca`,
//!   client certificates) after peerd's own entry instead of replacing them.
//! - `_default/hosts.toml` ([`DEFAULT_DIR`]) sends every registry without its own directory
//!   through peerd; containerd adds `?ns=<registry>` so peerd knows the upstream.
//! - Azure/peerd's files (a `[host]` on `localhost:30001`/`:30000`, originals moved to
//!   `certs.d/_backup/`) are recognised and replaced; uninstall restores `_backup/` too.
//!
//! [`containerd_config`] reads containerd's own config to find the directory to write into.

pub mod containerd_config;

use crate::oci::parse_ns;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// First line of every file peerd writes.
pub const MARKER: &str = "# Managed by peerd: `peerd hosts uninstall` restores the previous file.";
pub const BACKUP: &str = "hosts.toml.peerd-backup";
/// containerd's catch-all host directory.
pub const DEFAULT_DIR: &str = "_default";
/// Where Azure/peerd moved the previous contents of the certs directory.
pub const AZURE_BACKUP_DIR: &str = "_backup";
pub const FILE: &str = "hosts.toml";
/// Mirror capabilities peerd can honour (it never accepts a push).
pub const CAPABILITIES: &[&str] = &["pull", "resolve"];
/// Azure/peerd's mirror endpoints (NodePorts on localhost).
const AZURE_MIRRORS: &[&str] =
    &["https://localhost:30001", "http://localhost:30000", "https://127.0.0.1:30001", "http://127.0.0.1:30000"];
/// Longest `dial_timeout` accepted: beyond this a dead peerd would stall every pull.
const MAX_DIAL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("invalid registry {0:?}: {1}")]
    Registry(String, String),
    #[error("invalid mirror URL {0:?}: expected http(s)://host:port")]
    Mirror(String),
    #[error("invalid dial timeout {0:?}: expected a positive Go duration of at most 60s, e.g. \"200ms\" or \"1s\"")]
    DialTimeout(String),
    #[error("invalid capability {0:?}: peerd serves \"pull\" and \"resolve\" only (it does not support push)")]
    Capability(String),
    #[error("no registry to configure: give --registry HOST or --default-host")]
    Nothing,
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HostsError + '_ {
    move |source| HostsError::Io { path: path.to_owned(), source }
}

/// What to do with a hosts.toml peerd did not write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Back it up and write peerd's own file (containerd: peerd, then the registry).
    #[default]
    Replace,
    /// Back it up and write it again with peerd's `[host]` first (peerd, then its hosts, then
    /// its `server`), keeping `ca`, client certificates and headers.
    Prepend,
}

pub struct Install<'a> {
    pub certs_dir: &'a Path,
    /// peerd's mirror, e.g. `http://127.0.0.1:5000`.
    pub mirror: &'a str,
    pub registries: &'a [String],
    /// Registries whose own endpoint is plain HTTP.
    pub plain_http: &'a [String],
    /// How long containerd (≥ 2.1) waits for peerd before moving on.
    pub dial_timeout: &'a str,
    pub capabilities: &'a [String],
    pub mode: Mode,
    /// Also write `_default/hosts.toml`.
    pub default_host: bool,
    /// Remove peerd's (and Azure/peerd's) files for registries not listed.
    pub prune: bool,
}

/// What an install or uninstall did, for the operator.
#[derive(Debug, Default)]
pub struct Report {
    pub written: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
    pub restored: Vec<PathBuf>,
    pub warnings: Vec<String>,
}

/// Who wrote a hosts.toml.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    Peerd,
    /// Azure/peerd's generated file.
    AzurePeerd,
    Other,
}

/// Who wrote the hosts.toml at `path` (`None`: no file).
pub fn owner(path: &Path) -> Option<Owner> {
    let bytes = std::fs::read(path).ok()?;
    Some(if bytes.starts_with(MARKER.as_bytes()) {
        Owner::Peerd
    } else if std::str::from_utf8(&bytes).is_ok_and(is_azure_peerd) {
        Owner::AzurePeerd
    } else {
        Owner::Other
    })
}

/// Azure/peerd writes exactly `server` and `[host."<its NodePort>"]` tables holding
/// `capabilities` and `skip_verify`; anything more is someone else's file.
fn is_azure_peerd(text: &str) -> bool {
    let Ok(t) = toml::from_str::<toml::Table>(text) else { return false };
    let Some(hosts) = t.get("host").and_then(toml::Value::as_table) else { return false };
    !hosts.is_empty()
        && t.keys().all(|k| k == "server" || k == "host")
        && hosts.iter().all(|(url, v)| {
            AZURE_MIRRORS.contains(&url.trim_end_matches('/'))
                && v.as_table().is_some_and(|h| h.keys().all(|k| k == "capabilities" || k == "skip_verify"))
        })
}

/// Parse a duration as containerd does (Go's `time.ParseDuration`: `200ms`, `1.5s`, `1m30s`).
pub fn parse_dial_timeout(s: &str) -> Result<Duration, HostsError> {
    let err = || HostsError::DialTimeout(s.into());
    let mut rest = s;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 || num.len() > 20 {
            return Err(err());
        }
        let value: f64 = num.parse().map_err(|_| err())?;
        let (unit_secs, unit_len) = [
            ("ns", 1e-9),
            ("us", 1e-6),
            ("µs", 1e-6),
            ("μs", 1e-6),
            ("ms", 1e-3),
            ("s", 1.0),
            ("m", 60.0),
            ("h", 3600.0),
        ]
        .iter()
        .find(|(u, _)| tail.starts_with(u))
        .map(|(u, f)| (*f, u.len()))
        .ok_or_else(err)?;
        total += Duration::try_from_secs_f64(value * unit_secs).map_err(|_| err())?;
        rest = &tail[unit_len..];
    }
    if total.is_zero() || total > MAX_DIAL_TIMEOUT {
        return Err(err());
    }
    Ok(total)
}

/// Capabilities peerd can honour, in the order given, without repeats.
pub fn check_capabilities(caps: &[String]) -> Result<(), HostsError> {
    match caps.iter().find(|c| !CAPABILITIES.contains(&c.as_str())) {
        Some(bad) => Err(HostsError::Capability(bad.clone())),
        None if caps.is_empty() => Err(HostsError::Capability(String::new())),
        None => Ok(()),
    }
}

fn host_table(mirror: &str, capabilities: &[String], dial_timeout: &str) -> String {
    let mut caps: Vec<String> = Vec::new();
    for c in capabilities {
        let q = format!("{c:?}");
        if !caps.contains(&q) {
            caps.push(q);
        }
    }
    format!("[host.{mirror:?}]\n  capabilities = [{}]\n  dial_timeout = {dial_timeout:?}\n", caps.join(", "))
}

/// The hosts.toml for one registry.
pub fn render(registry: &str, server: &str, mirror: &str, capabilities: &[String], dial_timeout: &str) -> String {
    format!(
        "{MARKER}\n# Registry {registry}: ask the node-local peerd first, then the registry itself.\nserver = {server:?}\n\n{}",
        host_table(mirror, capabilities, dial_timeout)
    )
}

/// `_default/hosts.toml`: every registry without its own directory asks peerd first. No
/// `server`: containerd falls back to the registry named in the image reference.
pub fn render_default(mirror: &str, capabilities: &[String], dial_timeout: &str) -> String {
    format!(
        "{MARKER}\n# Every registry without its own directory here: ask the node-local peerd first (containerd\n\
         # adds ?ns=<registry>), then the registry itself. peerd serves the registries in its\n\
         # registry.hosts (all of them with --mirror-any-host) and answers 404 for the others.\n\n{}",
        host_table(mirror, capabilities, dial_timeout)
    )
}

/// Why a previous file cannot be kept behind peerd's entry.
#[derive(Debug, thiserror::Error)]
pub enum PrependError {
    #[error("not UTF-8 TOML: {0}")]
    Toml(String),
    #[error("its hosts are not [host.\"...\"] tables (dotted keys or an inline table)")]
    Layout,
    #[error("it already lists {0}")]
    HasMirror(String),
}

/// `previous` with peerd's `[host]` table inserted before its first table, so containerd asks
/// peerd, then the previous hosts in their order, then `server`. Everything else (comments,
/// `ca`, `client`, `header`, `skip_verify`) stays as written.
pub fn prepend(
    registry: &str,
    previous: &[u8],
    mirror: &str,
    capabilities: &[String],
    dial_timeout: &str,
) -> Result<String, PrependError> {
    let text = std::str::from_utf8(previous).map_err(|e| PrependError::Toml(e.to_string()))?;
    let parsed: toml::Table = toml::from_str(text).map_err(|e| PrependError::Toml(e.message().into()))?;
    let hosts = parsed.get("host").and_then(toml::Value::as_table);
    if hosts.is_some_and(|h| h.keys().any(|k| k.trim_end_matches('/') == mirror)) {
        return Err(PrependError::HasMirror(mirror.into()));
    }
    // Top-level lines before the first table header; `host` must not be defined among them.
    let mut offset = text.len();
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with('[') {
            offset = pos;
            break;
        }
        if t.starts_with("host") && t[4..].trim_start().starts_with(['.', '=']) {
            return Err(PrependError::Layout);
        }
        pos += line.len();
    }
    let (head, tail) = text.split_at(offset);
    let sep = if head.is_empty() || head.ends_with("\n\n") {
        ""
    } else if head.ends_with('\n') {
        "\n"
    } else {
        "\n\n"
    };
    let out = format!(
        "{MARKER}\n# Registry {registry}: the node-local peerd first, then the previous file's hosts and server\n\
         # (the previous file is kept in {BACKUP}).\n{head}{sep}{}\n{tail}",
        host_table(mirror, capabilities, dial_timeout)
    );
    // The result must still be a valid hosts file listing peerd and every previous host.
    let check: toml::Table = toml::from_str(&out).map_err(|_| PrependError::Layout)?;
    let new_hosts = check.get("host").and_then(toml::Value::as_table).ok_or(PrependError::Layout)?;
    let expected = hosts.map_or(0, |h| h.len()) + 1;
    if new_hosts.len() != expected || check.get("server") != parsed.get("server") {
        return Err(PrependError::Layout);
    }
    Ok(out)
}

fn write_atomically(path: &Path, content: &str) -> Result<(), HostsError> {
    let tmp = path.with_extension("toml.peerd-tmp");
    std::fs::write(&tmp, content).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// One directory to write: a registry (with its `server`) or `_default` (none).
struct Target {
    name: String,
    server: Option<String>,
}

/// Write hosts.toml for every registry (and `_default`), then prune; returns what was done.
pub fn install(opts: &Install) -> Result<Report, HostsError> {
    let m = url::Url::parse(opts.mirror).map_err(|_| HostsError::Mirror(opts.mirror.into()))?;
    if !matches!(m.scheme(), "http" | "https") || m.host_str().is_none() || !matches!(m.path(), "" | "/") {
        return Err(HostsError::Mirror(opts.mirror.into()));
    }
    parse_dial_timeout(opts.dial_timeout)?;
    check_capabilities(opts.capabilities)?;
    let mirror = opts.mirror.trim_end_matches('/');
    // Validate everything before the first write.
    let mut targets = Vec::new();
    for r in opts.registries {
        let reg = parse_ns(Some(r), "").map_err(|e| HostsError::Registry(r.clone(), e.to_string()))?;
        let scheme = if opts.plain_http.iter().any(|p| p == reg.name()) { "http" } else { "https" };
        targets.push(Target { name: reg.name().to_owned(), server: Some(format!("{scheme}://{}", reg.api_host())) });
    }
    if opts.default_host {
        targets.push(Target { name: DEFAULT_DIR.into(), server: None });
    }
    if targets.is_empty() {
        return Err(HostsError::Nothing);
    }
    std::fs::create_dir_all(opts.certs_dir).map_err(io(opts.certs_dir))?;
    let mut report = Report::default();
    for t in &targets {
        write_one(opts, mirror, t, &mut report)?;
    }
    let wanted: BTreeSet<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    for (name, owner) in managed_entries(opts.certs_dir)? {
        if wanted.contains(name.as_str()) {
            continue;
        }
        if opts.prune {
            remove_entry(opts.certs_dir, &name, &mut report)?;
        } else if owner == Owner::AzurePeerd {
            report.warnings.push(format!(
                "{} is Azure/peerd's and points at a mirror that no longer runs; --prune (or `peerd hosts uninstall`) removes it",
                opts.certs_dir.join(&name).join(FILE).display()
            ));
        }
    }
    let azure = opts.certs_dir.join(AZURE_BACKUP_DIR);
    if let Ok(entries) = std::fs::read_dir(&azure) {
        let mut names: Vec<String> = entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
        names.sort();
        for name in names.iter().filter(|n| !wanted.contains(n.as_str())) {
            if opts.prune {
                restore_azure_backup(opts.certs_dir, name, &mut report)?;
            } else {
                report.warnings.push(format!(
                    "{} holds what Azure/peerd moved aside; --prune (or `peerd hosts uninstall`) puts it back",
                    azure.join(name).display()
                ));
            }
        }
        let _ = std::fs::remove_dir(&azure); // only when emptied
    }
    Ok(report)
}

fn write_one(opts: &Install, mirror: &str, t: &Target, report: &mut Report) -> Result<(), HostsError> {
    let dir = opts.certs_dir.join(&t.name);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let path = dir.join(FILE);
    let backup = dir.join(BACKUP);
    match owner(&path) {
        Some(Owner::Other) if backup.exists() => {
            // Someone replaced our file after an install; keep the older backup, theirs goes
            // aside too rather than being lost.
            let aside = dir.join(format!("{BACKUP}.{}", std::process::id()));
            std::fs::rename(&path, &aside).map_err(io(&aside))?;
            report.warnings.push(format!(
                "{} was changed after peerd's install; kept as {}",
                path.display(),
                aside.display()
            ));
        }
        Some(Owner::Other) => std::fs::rename(&path, &backup).map_err(io(&backup))?,
        // Azure/peerd's original is in _backup/<name>/ already; its own file is not worth keeping.
        Some(Owner::AzurePeerd) => report.warnings.push(format!("replacing Azure/peerd's {}", path.display())),
        Some(Owner::Peerd) | None => {}
    }
    if !backup.exists() && owner(&path) != Some(Owner::Other) {
        adopt_azure_backup(opts.certs_dir, &t.name, report)?;
    }
    let previous = match opts.mode {
        Mode::Replace => None,
        Mode::Prepend => std::fs::read(&backup).ok().map(|b| (backup.clone(), b)),
    };
    let fresh = || match &t.server {
        Some(server) => render(&t.name, server, mirror, opts.capabilities, opts.dial_timeout),
        None => render_default(mirror, opts.capabilities, opts.dial_timeout),
    };
    let content = match previous {
        None => fresh(),
        Some((from, bytes)) => match prepend(&t.name, &bytes, mirror, opts.capabilities, opts.dial_timeout) {
            Ok(c) => c,
            Err(e) => {
                report.warnings.push(format!(
                    "cannot keep {} behind peerd ({e}); wrote peerd's own file, the previous one stays in {}",
                    from.display(),
                    from.display()
                ));
                fresh()
            }
        },
    };
    write_atomically(&path, &content)?;
    report.written.push(path);
    Ok(())
}

/// Azure/peerd moved the previous `<name>` to `_backup/<name>`: take it back into peerd's own
/// scheme (its hosts.toml becomes `hosts.toml.peerd-backup`, certificates return beside it), so
/// prepend keeps it and uninstall restores it like any other backup.
fn adopt_azure_backup(certs_dir: &Path, name: &str, report: &mut Report) -> Result<(), HostsError> {
    let saved = certs_dir.join(AZURE_BACKUP_DIR).join(name);
    if !saved.is_dir() {
        return Ok(());
    }
    let dir = certs_dir.join(name);
    for e in std::fs::read_dir(&saved).map_err(io(&saved))?.filter_map(Result::ok) {
        let to = if e.file_name() == FILE { dir.join(BACKUP) } else { dir.join(e.file_name()) };
        if to.exists() {
            report.warnings.push(format!("{} exists; {} left in place", to.display(), e.path().display()));
            continue;
        }
        std::fs::rename(e.path(), &to).map_err(io(&to))?;
    }
    let _ = std::fs::remove_dir(&saved); // only when emptied
    let _ = std::fs::remove_dir(certs_dir.join(AZURE_BACKUP_DIR));
    report.warnings.push(format!("took over Azure/peerd's backup of {name} from {}", saved.display()));
    Ok(())
}

/// Directories of `certs_dir` whose hosts.toml is peerd's or Azure/peerd's.
fn managed_entries(certs_dir: &Path) -> Result<Vec<(String, Owner)>, HostsError> {
    let entries = match std::fs::read_dir(certs_dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(HostsError::Io { path: certs_dir.to_owned(), source: e }),
    };
    let mut out: Vec<(String, Owner)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name() != AZURE_BACKUP_DIR)
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            match owner(&e.path().join(FILE))? {
                Owner::Other => None,
                o => Some((name, o)),
            }
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Remove peerd's file in `certs_dir/name`, restoring what it replaced.
fn remove_entry(certs_dir: &Path, name: &str, report: &mut Report) -> Result<(), HostsError> {
    let dir = certs_dir.join(name);
    let path = dir.join(FILE);
    let backup = dir.join(BACKUP);
    match owner(&path) {
        Some(Owner::Other) => {
            report.warnings.push(format!("{} is not peerd's; left as it is", path.display()));
            return Ok(());
        }
        Some(_) => {
            std::fs::remove_file(&path).map_err(io(&path))?;
            report.removed.push(path.clone());
        }
        None => {}
    }
    if backup.exists() {
        std::fs::rename(&backup, &path).map_err(io(&path))?;
        report.restored.push(path);
    } else {
        restore_azure_backup(certs_dir, name, report)?;
    }
    // Remove the directory only if peerd's file was all it held.
    if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_none()) {
        std::fs::remove_dir(&dir).map_err(io(&dir))?;
    }
    Ok(())
}

/// Move `_backup/<name>` (Azure/peerd's copy of the previous entry) back into place, file by
/// file, never over an existing file.
fn restore_azure_backup(certs_dir: &Path, name: &str, report: &mut Report) -> Result<(), HostsError> {
    let saved = certs_dir.join(AZURE_BACKUP_DIR).join(name);
    let target = certs_dir.join(name);
    let Ok(meta) = std::fs::symlink_metadata(&saved) else { return Ok(()) };
    if !meta.is_dir() {
        if !target.exists() {
            std::fs::rename(&saved, &target).map_err(io(&target))?;
            report.restored.push(target);
        }
        return Ok(());
    }
    std::fs::create_dir_all(&target).map_err(io(&target))?;
    for e in std::fs::read_dir(&saved).map_err(io(&saved))?.filter_map(Result::ok) {
        let to = target.join(e.file_name());
        if to.exists() {
            report.warnings.push(format!("{} exists; {} left in place", to.display(), e.path().display()));
            continue;
        }
        std::fs::rename(e.path(), &to).map_err(io(&to))?;
        report.restored.push(to);
    }
    let _ = std::fs::remove_dir(&saved); // only when emptied
    Ok(())
}

/// Remove every peerd (and Azure/peerd) hosts.toml under each of `certs_dirs`, restoring the
/// backups (`hosts.toml.peerd-backup`, and Azure/peerd's `_backup/`).
pub fn uninstall(certs_dirs: &[PathBuf]) -> Result<Report, HostsError> {
    let mut report = Report::default();
    for certs_dir in certs_dirs {
        for (name, _) in managed_entries(certs_dir)? {
            remove_entry(certs_dir, &name, &mut report)?;
        }
        // Whatever Azure/peerd moved aside and is still there goes back.
        let azure = certs_dir.join(AZURE_BACKUP_DIR);
        if let Ok(entries) = std::fs::read_dir(&azure) {
            let mut names: Vec<String> =
                entries.filter_map(Result::ok).filter_map(|e| e.file_name().to_str().map(str::to_owned)).collect();
            names.sort();
            for name in names {
                restore_azure_backup(certs_dir, &name, &mut report)?;
            }
            let _ = std::fs::remove_dir(&azure); // only when emptied
        }
    }
    Ok(report)
}

/// Registries (directory names, `_default` included) whose hosts.toml carries peerd's marker.
pub fn marked_registries(certs_dir: &Path) -> Vec<String> {
    managed_entries(certs_dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, o)| *o == Owner::Peerd)
        .map(|(n, _)| n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> Vec<String> {
        vec!["pull".to_string(), "resolve".to_string()]
    }

    fn opts<'a>(dir: &'a Path, regs: &'a [String], caps: &'a [String]) -> Install<'a> {
        Install {
            certs_dir: dir,
            mirror: "http://127.0.0.1:5000",
            registries: regs,
            plain_http: &[],
            dial_timeout: "200ms",
            capabilities: caps,
            mode: Mode::Replace,
            default_host: false,
            prune: false,
        }
    }

    #[test]
    fn renders_a_host_table_with_dial_timeout() {
        let t = render("docker.io", "https://registry-1.docker.io", "http://127.0.0.1:5000", &caps(), "200ms");
        let v: toml::Value = toml::from_str(&t).unwrap();
        assert_eq!(v["server"].as_str(), Some("https://registry-1.docker.io"));
        let host = &v["host"]["http://127.0.0.1:5000"];
        assert_eq!(host["capabilities"].as_array().unwrap().len(), 2);
        assert_eq!(host["dial_timeout"].as_str(), Some("200ms"));
        let d: toml::Table = toml::from_str(&render_default("http://127.0.0.1:5000", &caps(), "1s")).unwrap();
        assert!(d.get("server").is_none() && d["host"].get("http://127.0.0.1:5000").is_some());
    }

    #[test]
    fn go_durations_are_parsed_as_containerd_does() {
        for (s, ms) in [("200ms", 200), ("1s", 1000), ("1.5s", 1500), ("1m", 60_000), ("500us", 0), ("1s500ms", 1500)] {
            assert_eq!(parse_dial_timeout(s).unwrap().as_millis(), ms, "{s}");
        }
        for bad in ["", "200", "soon", "200 ms", "1min", "-1s", "0s", "2m", "1.2.3s", ".s", "5d"] {
            assert!(matches!(parse_dial_timeout(bad), Err(HostsError::DialTimeout(_))), "{bad:?}");
        }
    }

    #[test]
    fn only_pull_and_resolve() {
        assert!(check_capabilities(&caps()).is_ok());
        assert!(matches!(check_capabilities(&["push".into()]), Err(HostsError::Capability(c)) if c == "push"));
        assert!(matches!(check_capabilities(&[]), Err(HostsError::Capability(_))));
    }

    #[test]
    fn backs_up_and_restores_byte_for_byte() {
        let d = tempfile::tempdir().unwrap();
        let regs = vec!["docker.io".to_string(), "ghcr.io".to_string(), "127.0.0.1:5001".to_string()];
        let original = b"server = \"https://registry-1.docker.io\"\n# operator's own\n\xff\x00 odd bytes\n";
        std::fs::create_dir_all(d.path().join("docker.io")).unwrap();
        std::fs::write(d.path().join("docker.io/hosts.toml"), original).unwrap();
        let c = caps();
        let o = Install { plain_http: &regs[2..], ..opts(d.path(), &regs, &c) };
        assert_eq!(install(&o).unwrap().written.len(), 3);
        assert_eq!(std::fs::read(d.path().join("docker.io").join(BACKUP)).unwrap(), original);
        assert_eq!(owner(&d.path().join("ghcr.io/hosts.toml")), Some(Owner::Peerd));
        let plain = std::fs::read_to_string(d.path().join("127.0.0.1:5001/hosts.toml")).unwrap();
        assert!(plain.contains("server = \"http://127.0.0.1:5001\""), "{plain}");
        // Installing again keeps the operator's backup intact.
        install(&o).unwrap();
        assert_eq!(std::fs::read(d.path().join("docker.io").join(BACKUP)).unwrap(), original);
        // Uninstall needs no registry list: it finds peerd's files.
        let r = uninstall(&[d.path().to_owned()]).unwrap();
        assert_eq!((r.restored.len(), r.removed.len()), (1, 3));
        assert_eq!(std::fs::read(d.path().join("docker.io/hosts.toml")).unwrap(), original);
        assert!(!d.path().join("docker.io").join(BACKUP).exists());
        assert!(!d.path().join("ghcr.io").exists(), "a directory peerd created is removed");
    }

    #[test]
    fn refuses_bad_input_and_leaves_foreign_files() {
        let d = tempfile::tempdir().unwrap();
        let c = caps();
        let bad = vec!["http://x".to_string()];
        assert!(matches!(install(&opts(d.path(), &bad, &c)), Err(HostsError::Registry(..))));
        let regs = vec!["docker.io".to_string()];
        for m in ["127.0.0.1:5000", "ftp://x:1", "http://x:1/path"] {
            assert!(matches!(install(&Install { mirror: m, ..opts(d.path(), &regs, &c) }), Err(HostsError::Mirror(_))));
        }
        let push = vec!["push".to_string()];
        assert!(matches!(install(&opts(d.path(), &regs, &push)), Err(HostsError::Capability(_))));
        assert!(matches!(install(&opts(d.path(), &[], &c)), Err(HostsError::Nothing)));
        assert!(std::fs::read_dir(d.path()).unwrap().next().is_none(), "nothing written on bad input");
        std::fs::create_dir_all(d.path().join("docker.io")).unwrap();
        std::fs::write(d.path().join("docker.io/hosts.toml"), "theirs").unwrap();
        assert!(uninstall(&[d.path().to_owned()]).unwrap().removed.is_empty());
        assert_eq!(std::fs::read_to_string(d.path().join("docker.io/hosts.toml")).unwrap(), "theirs");
    }

    #[test]
    fn prepend_keeps_hosts_order_and_certificates() {
        let prev = "server = \"https://registry.corp\"\nca = \"/etc/ca.pem\"\n\n[host.\"https://pull-through.corp\"]\n  capabilities = [\"pull\"]\n  client = [[\"c.pem\", \"k.pem\"]]\n  [host.\"https://pull-through.corp\".header]\n    x-token = \"a\"\n";
        let out = prepend("registry.corp", prev.as_bytes(), "http://127.0.0.1:5000", &caps(), "200ms").unwrap();
        assert!(out.starts_with(MARKER));
        let peerd = out.find("[host.\"http://127.0.0.1:5000\"]").unwrap();
        let corp = out.find("[host.\"https://pull-through.corp\"]").unwrap();
        assert!(peerd < corp, "peerd first:\n{out}");
        let v: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(v["ca"].as_str(), Some("/etc/ca.pem"));
        assert_eq!(v["server"].as_str(), Some("https://registry.corp"));
        assert_eq!(v["host"]["https://pull-through.corp"]["header"]["x-token"].as_str(), Some("a"));
        // Only top-level keys, no tables: appended after them.
        let out = prepend("r", b"server = \"https://r\"\n", "http://m:1", &caps(), "1s").unwrap();
        assert!(toml::from_str::<toml::Table>(&out).unwrap()["host"].get("http://m:1").is_some());
        for bad in ["host.\"https://x\".capabilities = [\"pull\"]\n", "host = { }\n", "server = ", "\u{0}"] {
            assert!(prepend("r", bad.as_bytes(), "http://m:1", &caps(), "1s").is_err(), "{bad:?}");
        }
        assert!(matches!(
            prepend("r", b"[host.\"http://m:1\"]\n", "http://m:1", &caps(), "1s"),
            Err(PrependError::HasMirror(_))
        ));
    }
}

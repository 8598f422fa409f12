//! containerd mirror configuration: `<certs.d>/<host>/hosts.toml` files pointing containerd at
//! the node-local peerd, written by `peerd hosts install` (an init container) and undone by
//! `peerd hosts uninstall` (the chart's cleanup). A file peerd did not write is moved aside to
//! `hosts.toml.peerd-backup` and restored byte for byte; peerd's own files are recognised by
//! their first line, so installing twice is harmless.

use crate::oci::parse_ns;
use std::path::{Path, PathBuf};

/// First line of every file peerd writes.
pub const MARKER: &str = "# Managed by peerd: `peerd hosts uninstall` restores the previous file.";
pub const BACKUP: &str = "hosts.toml.peerd-backup";
const FILE: &str = "hosts.toml";

#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("invalid registry {0:?}: {1}")]
    Registry(String, String),
    #[error("invalid mirror URL {0:?}: expected http(s)://host:port")]
    Mirror(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HostsError + '_ {
    move |source| HostsError::Io { path: path.to_owned(), source }
}

pub struct Install<'a> {
    pub certs_dir: &'a Path,
    /// peerd's mirror, e.g. `http://127.0.0.1:5000`.
    pub mirror: &'a str,
    pub registries: &'a [String],
    /// Registries whose own endpoint is plain HTTP.
    pub plain_http: &'a [String],
    /// How long containerd waits for peerd before moving on (a dead peerd must not block pulls).
    pub dial_timeout: &'a str,
    pub capabilities: &'a [String],
}

/// The hosts.toml for one registry.
pub fn render(registry: &str, server: &str, mirror: &str, capabilities: &[String], dial_timeout: &str) -> String {
    let caps: Vec<String> = capabilities.iter().map(|c| format!("{c:?}")).collect();
    format!(
        "{MARKER}\n# Registry {registry}: ask the node-local peerd first, then the registry itself.\nserver = {server:?}\n\n[host.{mirror:?}]\n  capabilities = [{}]\n  dial_timeout = {dial_timeout:?}\n",
        caps.join(", ")
    )
}

fn is_ours(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|s| s.starts_with(MARKER))
}

fn write_atomically(path: &Path, content: &str) -> Result<(), HostsError> {
    let tmp = path.with_extension("toml.peerd-tmp");
    std::fs::write(&tmp, content).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Write hosts.toml for every registry; returns the files written.
pub fn install(opts: &Install) -> Result<Vec<PathBuf>, HostsError> {
    let m = url::Url::parse(opts.mirror).map_err(|_| HostsError::Mirror(opts.mirror.into()))?;
    if !matches!(m.scheme(), "http" | "https") || m.host_str().is_none() {
        return Err(HostsError::Mirror(opts.mirror.into()));
    }
    let mirror = opts.mirror.trim_end_matches('/');
    let mut written = Vec::new();
    for r in opts.registries {
        let reg = parse_ns(Some(r), "").map_err(|e| HostsError::Registry(r.clone(), e.to_string()))?;
        let scheme = if opts.plain_http.iter().any(|p| p == reg.name()) { "http" } else { "https" };
        let server = format!("{scheme}://{}", reg.api_host());
        let dir = opts.certs_dir.join(reg.name());
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(FILE);
        let backup = dir.join(BACKUP);
        if path.exists() && !is_ours(&path) {
            if backup.exists() {
                // Someone replaced our file after an install; keep the older backup, theirs goes
                // aside too rather than being lost.
                let aside = dir.join(format!("{BACKUP}.{}", std::process::id()));
                std::fs::rename(&path, &aside).map_err(io(&aside))?;
            } else {
                std::fs::rename(&path, &backup).map_err(io(&backup))?;
            }
        }
        write_atomically(&path, &render(reg.name(), &server, mirror, opts.capabilities, opts.dial_timeout))?;
        written.push(path);
    }
    Ok(written)
}

/// Remove peerd's hosts.toml for every registry, restoring backups; returns what was restored.
pub fn uninstall(certs_dir: &Path, registries: &[String]) -> Result<Vec<PathBuf>, HostsError> {
    let mut restored = Vec::new();
    for r in registries {
        let reg = parse_ns(Some(r), "").map_err(|e| HostsError::Registry(r.clone(), e.to_string()))?;
        let dir = certs_dir.join(reg.name());
        let path = dir.join(FILE);
        let backup = dir.join(BACKUP);
        if path.exists() && !is_ours(&path) {
            // A command-line tool: tell the operator directly (no log subscriber here).
            eprintln!("peerd: {} is not peerd's; left as it is", path.display());
            continue;
        }
        if path.exists() {
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
        if backup.exists() {
            std::fs::rename(&backup, &path).map_err(io(&path))?;
            restored.push(path);
        }
        // Remove the directory only if peerd's file was all it held.
        if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_none()) {
            std::fs::remove_dir(&dir).map_err(io(&dir))?;
        }
    }
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts<'a>(dir: &'a Path, regs: &'a [String]) -> Install<'a> {
        Install {
            certs_dir: dir,
            mirror: "http://127.0.0.1:5000",
            registries: regs,
            plain_http: &[],
            dial_timeout: "200ms",
            capabilities: &[],
        }
    }

    #[test]
    fn renders_a_host_table_with_dial_timeout() {
        let caps = vec!["pull".to_string(), "resolve".to_string()];
        let t = render("docker.io", "https://registry-1.docker.io", "http://127.0.0.1:5000", &caps, "200ms");
        let v: toml::Value = toml::from_str(&t).unwrap();
        assert_eq!(v["server"].as_str(), Some("https://registry-1.docker.io"));
        let host = &v["host"]["http://127.0.0.1:5000"];
        assert_eq!(host["capabilities"].as_array().unwrap().len(), 2);
        assert_eq!(host["dial_timeout"].as_str(), Some("200ms"));
    }

    #[test]
    fn backs_up_and_restores_byte_for_byte() {
        let d = tempfile::tempdir().unwrap();
        let regs = vec!["docker.io".to_string(), "ghcr.io".to_string(), "127.0.0.1:5001".to_string()];
        let original = b"server = \"https://registry-1.docker.io\"\n# operator's own\n\xff\x00 odd bytes\n";
        std::fs::create_dir_all(d.path().join("docker.io")).unwrap();
        std::fs::write(d.path().join("docker.io/hosts.toml"), original).unwrap();
        let caps = vec!["pull".to_string(), "resolve".to_string()];
        let o = Install { capabilities: &caps, plain_http: &regs[2..], ..opts(d.path(), &regs) };
        assert_eq!(install(&o).unwrap().len(), 3);
        assert_eq!(std::fs::read(d.path().join("docker.io").join(BACKUP)).unwrap(), original);
        assert!(is_ours(&d.path().join("ghcr.io/hosts.toml")));
        let plain = std::fs::read_to_string(d.path().join("127.0.0.1:5001/hosts.toml")).unwrap();
        assert!(plain.contains("server = \"http://127.0.0.1:5001\""), "{plain}");
        // Installing again keeps the operator's backup intact.
        install(&o).unwrap();
        assert_eq!(std::fs::read(d.path().join("docker.io").join(BACKUP)).unwrap(), original);
        let restored = uninstall(d.path(), &regs).unwrap();
        assert_eq!(restored.len(), 1);
        assert_eq!(std::fs::read(d.path().join("docker.io/hosts.toml")).unwrap(), original);
        assert!(!d.path().join("docker.io").join(BACKUP).exists());
        assert!(!d.path().join("ghcr.io").exists(), "a directory peerd created is removed");
    }

    #[test]
    fn refuses_bad_input_and_leaves_foreign_files() {
        let d = tempfile::tempdir().unwrap();
        let bad = vec!["http://x".to_string()];
        assert!(matches!(install(&opts(d.path(), &bad)), Err(HostsError::Registry(..))));
        let regs = vec!["docker.io".to_string()];
        assert!(matches!(
            install(&Install { mirror: "127.0.0.1:5000", ..opts(d.path(), &regs) }),
            Err(HostsError::Mirror(_))
        ));
        std::fs::create_dir_all(d.path().join("docker.io")).unwrap();
        std::fs::write(d.path().join("docker.io/hosts.toml"), "theirs").unwrap();
        assert!(uninstall(d.path(), &regs).unwrap().is_empty());
        assert_eq!(std::fs::read_to_string(d.path().join("docker.io/hosts.toml")).unwrap(), "theirs");
    }
}

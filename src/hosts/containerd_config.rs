//! What containerd's own config says about hosts.toml files: where it reads them
//! (`config_path`), and the settings around it that silently break a mirror. Read by
//! `peerd hosts install` (where to write) and `peerd doctor` (is it set up).
//!
//! Layouts understood:
//! - version 1 (containerd 1.x, no `version` key): `[plugins.cri.registry]`;
//! - version 2 (containerd 1.6/1.7): `[plugins."io.containerd.grpc.v1.cri".registry]`;
//! - version 3 (containerd 2.x): `[plugins."io.containerd.cri.v1.images".registry]`, whose
//!   `config_path` defaults to `/etc/containerd/certs.d:/etc/docker/certs.d` when unset.
//!
//! `imports` are followed as containerd does: relative paths are relative to the importing
//! file, a `*`/`?` pattern in the file name is expanded in sorted order, and a plugin section in
//! an imported file replaces the same section of the files before it.

use std::path::{Path, PathBuf};

/// Plugin sections holding the CRI registry settings, by config version.
const CRI_V1: &str = "cri";
const CRI_V2: &str = "io.containerd.grpc.v1.cri";
const CRI_V3_IMAGES: &str = "io.containerd.cri.v1.images";
/// containerd 2.x's built-in `config_path` when its config sets none.
pub const DEFAULT_CONFIG_PATH_2X: &str = "/etc/containerd/certs.d:/etc/docker/certs.d";
/// containerd's default root; the content store lives in `<root>/io.containerd.content.v1.content`.
pub const DEFAULT_ROOT: &str = "/var/lib/containerd";
/// Bound on the files one config may pull in through `imports`.
const MAX_FILES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("containerd config {0} does not exist")]
    NotFound(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid TOML: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("{path}: unsupported import {pattern:?}: only the file name may hold a `*` or `?` pattern")]
    Pattern { path: PathBuf, pattern: String },
    #[error("{0}: more than {MAX_FILES} files through imports")]
    TooManyImports(PathBuf),
}

/// Where `config_path` came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigPathSource {
    /// Set in a config file.
    Explicit,
    /// Unset in a version 3 config: containerd 2.x's built-in default applies.
    Default2x,
    /// Unset (or empty) in a version 1/2 config: containerd 1.x ignores hosts.toml files.
    None,
}

/// The settings peerd cares about, merged over the main file and its imports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ContainerdConfig {
    /// The main file, then every imported file, in the order containerd merges them.
    pub files: Vec<PathBuf>,
    /// The main file's `version` (1 when absent).
    pub version: i64,
    /// The `config_path` string in effect (`None` when hosts.toml files are ignored).
    pub config_path: Option<String>,
    pub config_path_source: ConfigPathSource,
    /// Registries with inline `registry.mirrors` tables.
    pub inline_mirrors: Vec<String>,
    /// `use_local_image_pull` (containerd 2.1+: pull without the transfer service).
    pub use_local_image_pull: Option<bool>,
    /// `discard_unpacked_layers`: when true the node's store drops layers after unpacking.
    pub discard_unpacked_layers: Option<bool>,
    /// Top-level `root`.
    pub root: Option<PathBuf>,
}

impl ContainerdConfig {
    /// Read `path` and its imports.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut files = Vec::new();
        let mut tables = Vec::new();
        let mut pending = vec![path.to_path_buf()];
        // Depth-first in containerd's order: a file, then what it imports, each once.
        while let Some(p) = pending.pop() {
            if files.contains(&p) {
                continue;
            }
            if files.len() >= MAX_FILES {
                return Err(ConfigError::TooManyImports(path.to_owned()));
            }
            let text = std::fs::read_to_string(&p).map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound && tables.is_empty() {
                    ConfigError::NotFound(p.clone())
                } else {
                    ConfigError::Io { path: p.clone(), source }
                }
            })?;
            let table: toml::Table = toml::from_str(&text)
                .map_err(|e| ConfigError::Toml { path: p.clone(), message: e.message().into() })?;
            let imports = imports_of(&p, &table)?;
            files.push(p);
            tables.push(table);
            for i in imports.into_iter().rev() {
                pending.push(i);
            }
        }
        Ok(Self::merge(files, &tables))
    }

    fn merge(files: Vec<PathBuf>, tables: &[toml::Table]) -> Self {
        let version = tables[0].get("version").and_then(toml::Value::as_integer).unwrap_or(1);
        // A plugin section in a later file replaces the whole section of earlier ones.
        let section = |name: &str| -> Option<&toml::Table> {
            tables.iter().rev().find_map(|t| t.get("plugins")?.get(name)?.as_table())
        };
        let root =
            tables.iter().rev().find_map(|t| t.get("root")?.as_str()).filter(|r| !r.is_empty()).map(PathBuf::from);
        let (v1, v2, v3) = (section(CRI_V1), section(CRI_V2), section(CRI_V3_IMAGES));
        // The section this version reads first; the others as containerd's migration would.
        let order: [Option<&toml::Table>; 3] = match version {
            3.. => [v3, v2, v1],
            2 => [v2, v3, v1],
            _ => [v1, v2, v3],
        };
        let registry = |t: &toml::Table| t.get("registry").and_then(toml::Value::as_table).cloned();
        let registries: Vec<toml::Table> = order.iter().flatten().filter_map(|t| registry(t)).collect();
        let explicit = registries
            .iter()
            .find_map(|r| r.get("config_path")?.as_str().map(str::to_owned))
            .filter(|p| !p.trim().is_empty());
        let (config_path, config_path_source) = match (explicit, version) {
            (Some(p), _) => (Some(p), ConfigPathSource::Explicit),
            (None, 3..) => (Some(DEFAULT_CONFIG_PATH_2X.to_owned()), ConfigPathSource::Default2x),
            (None, _) => (None, ConfigPathSource::None),
        };
        let mut inline_mirrors: Vec<String> =
            registries.iter().filter_map(|r| r.get("mirrors")?.as_table()).flat_map(|m| m.keys().cloned()).collect();
        inline_mirrors.sort();
        inline_mirrors.dedup();
        let flag = |key: &str| -> Option<bool> {
            // v3: on the images plugin; v2: under the CRI plugin's `containerd` table.
            order
                .iter()
                .flatten()
                .find_map(|t| t.get(key).or_else(|| t.get("containerd")?.get(key)).and_then(toml::Value::as_bool))
        };
        ContainerdConfig {
            files,
            version,
            config_path,
            config_path_source,
            inline_mirrors,
            use_local_image_pull: flag("use_local_image_pull"),
            discard_unpacked_layers: flag("discard_unpacked_layers"),
            root,
        }
    }

    /// The directories containerd reads hosts.toml files from, in order.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.config_path
            .as_deref()
            .map(|p| p.split(':').map(str::trim).filter(|d| !d.is_empty()).map(PathBuf::from).collect())
            .unwrap_or_default()
    }

    /// containerd's content store directory (the fast path peerd reads blobs from).
    pub fn content_dir(&self) -> PathBuf {
        self.root.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT)).join("io.containerd.content.v1.content")
    }
}

/// The files `table`'s `imports` name, resolved against `file`'s directory and expanded.
fn imports_of(file: &Path, table: &toml::Table) -> Result<Vec<PathBuf>, ConfigError> {
    let Some(list) = table.get("imports").and_then(toml::Value::as_array) else {
        return Ok(Vec::new());
    };
    let base = file.parent().unwrap_or(Path::new("/"));
    let mut out = Vec::new();
    for pattern in list.iter().filter_map(toml::Value::as_str) {
        let full = base.join(pattern);
        let name = full.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let dir = full.parent().unwrap_or(Path::new("/"));
        let wild = |s: &str| s.contains(['*', '?', '[']);
        if wild(&dir.to_string_lossy()) || name.contains('[') {
            return Err(ConfigError::Pattern { path: file.to_owned(), pattern: pattern.to_owned() });
        }
        if !wild(&name) {
            out.push(full);
            continue;
        }
        // Like filepath.Glob: no match (or no directory) is not an error.
        let mut matched: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| glob_match(name.as_bytes(), e.file_name().to_string_lossy().as_bytes()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        matched.sort();
        out.extend(matched);
    }
    Ok(out)
}

/// `*` (any run) and `?` (one byte) matching of a whole file name.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob_match(&pattern[1..], name) || (!name.is_empty() && glob_match(pattern, &name[1..])),
        (Some(b'?'), Some(_)) => glob_match(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => glob_match(&pattern[1..], &name[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_filepath_glob_in_a_file_name() {
        assert!(glob_match(b"*.toml", b"10-registry.toml"));
        assert!(!glob_match(b"*.toml", b"10-registry.toml.bak"));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(!glob_match(b"a?c", b"ac"));
        assert!(glob_match(b"*", b""));
    }

    #[test]
    fn v1_layout_and_empty_config_path() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("config.toml");
        std::fs::write(&p, "[plugins.cri.registry]\n  config_path = \"/etc/containerd/certs.d\"\n").unwrap();
        let c = ContainerdConfig::load(&p).unwrap();
        assert_eq!((c.version, c.dirs()), (1, vec![PathBuf::from("/etc/containerd/certs.d")]));
        std::fs::write(&p, "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"\"\n")
            .unwrap();
        let c = ContainerdConfig::load(&p).unwrap();
        assert_eq!((c.config_path_source, c.dirs().len()), (ConfigPathSource::None, 0));
    }

    #[test]
    fn import_cycles_end_and_bad_patterns_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.toml");
        std::fs::write(&a, "version = 2\nimports = [\"b.toml\"]\n").unwrap();
        std::fs::write(
            d.path().join("b.toml"),
            "imports = [\"a.toml\"]\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/x\"\n",
        )
        .unwrap();
        let c = ContainerdConfig::load(&a).unwrap();
        assert_eq!(c.files.len(), 2);
        assert_eq!(c.dirs(), vec![PathBuf::from("/x")]);
        std::fs::write(&a, "imports = [\"*/x.toml\"]\n").unwrap();
        assert!(matches!(ContainerdConfig::load(&a), Err(ConfigError::Pattern { .. })));
        std::fs::write(&a, "imports = [\"missing.toml\"]\n").unwrap();
        assert!(matches!(ContainerdConfig::load(&a), Err(ConfigError::Io { .. })));
        assert!(matches!(ContainerdConfig::load(&d.path().join("none.toml")), Err(ConfigError::NotFound(_))));
        std::fs::write(&a, "version = [").unwrap();
        assert!(matches!(ContainerdConfig::load(&a), Err(ConfigError::Toml { .. })));
    }
}

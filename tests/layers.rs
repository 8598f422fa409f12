//! The crate's modules depend one way: each top-level module belongs to a layer, and may use
//! modules of its own layer or below, never above; and the graph of top-level modules has no
//! cycle. Read from the source (every `crate::` path outside comments and test code), so a new
//! upward import fails `make test` with the file and line that added it.
//!
//! Layers, bottom to top (docs/design.md draws them):
//! 0. core — pure types and adapters every layer uses;
//! 1. adapters — the boundaries to the outside (content store, upstream, routing, peers,
//!    Kubernetes, containerd's configuration);
//! 2. transfer and actors — moving bytes from several sources, and the decisions about sources;
//! 3. services — what the front ends serve and from where (/v2, /blobs, swarming);
//! 4. http — extraction, answers, middleware;
//! 5. the application — wiring a node, the command-line tools.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const LAYERS: &[(&str, &[&str])] = &[
    ("core", &["oci", "range", "stream", "sendfile", "config", "metrics", "events", "lifecycle"]),
    ("adapters", &["store", "upstream", "routing", "peer", "kube", "hosts"]),
    ("transfer", &["transfer", "actors"]),
    ("service", &["error", "mirror", "swarm", "blobs", "preheat"]),
    ("http", &["http"]),
    ("app", &["node", "doctor", "sim"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&module))
}

struct Reference {
    file: PathBuf,
    line: usize,
    from: String,
    to: String,
}

/// `src/a/b.rs` → `["a", "b"]`; `src/a/mod.rs` → `["a"]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Modules declared `#[cfg(test)] mod name;` in `code`: test-only files.
fn test_only_children(code: &str) -> Vec<String> {
    let lines: Vec<&str> = code.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter(|w| w[0] == "#[cfg(test)]")
        .filter_map(|w| w[1].strip_prefix("mod ").and_then(|r| r.strip_suffix(';')).map(str::to_owned))
        .collect()
}

/// The code of a file without its inline `#[cfg(test)] mod tests { ... }` (by convention the
/// end of the file) and without comments.
fn production_lines(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut lines = code.lines().enumerate().peekable();
    while let Some((n, line)) = lines.next() {
        let t = line.trim();
        if t == "#[cfg(test)]" && lines.peek().is_some_and(|(_, l)| l.trim().starts_with("mod ") && l.contains('{')) {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        let code = match line.find(" // ") {
            Some(i) => &line[..i],
            None => line,
        };
        out.push((n + 1, code.to_owned()));
    }
    out
}

/// The top-level modules a line names through `crate::` (including `use crate::{a, b::c}`),
/// and through `super::` when that leaves the file's top-level module.
fn targets(line: &str, module: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    found.push(name);
                }
            }
        } else {
            let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                found.push(name);
            }
        }
        rest = &rest[i + 1..];
    }
    // `super::` from a direct child of the crate root reaches the root: `super::x` is `crate::x`.
    if module.len() == 1 {
        let mut rest = line;
        while let Some(i) = rest.find("super::") {
            let after = &rest[i + "super::".len()..];
            let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                found.push(name);
            }
            rest = &rest[i + 1..];
        }
    }
    found
}

fn references() -> (Vec<Reference>, BTreeSet<String>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    // `lib.rs` and the binaries (`main.rs`, `src/bin/`) are roots, not modules of the library.
    let root = |m: &str| m == "lib" || m == "main" || m == "bin";
    let modules: BTreeSet<String> =
        files.iter().filter_map(|f| module_path(&src, f).first().cloned()).filter(|m| !root(m)).collect();
    // Files that only exist for tests.
    let mut test_files = BTreeSet::new();
    for f in &files {
        let code = std::fs::read_to_string(f).unwrap();
        let dir = if f.file_name().is_some_and(|n| n == "mod.rs" || n == "lib.rs") {
            f.parent().unwrap().to_path_buf()
        } else {
            f.with_extension("")
        };
        for child in test_only_children(&code) {
            test_files.insert(dir.join(format!("{child}.rs")));
            test_files.insert(dir.join(&child).join("mod.rs"));
        }
    }
    let mut refs = Vec::new();
    for f in &files {
        let module = module_path(&src, f);
        let from = module[0].clone();
        if root(&from) || test_files.contains(f) {
            continue;
        }
        let code = std::fs::read_to_string(f).unwrap();
        for (line, text) in production_lines(&code) {
            for to in targets(&text, &module) {
                if to != from && modules.contains(&to) {
                    refs.push(Reference { file: f.clone(), line, from: from.clone(), to });
                }
            }
        }
    }
    (refs, modules)
}

#[test]
fn every_module_has_a_layer() {
    let (_, modules) = references();
    let missing: Vec<&String> = modules.iter().filter(|m| layer_of(m).is_none()).collect();
    assert!(missing.is_empty(), "modules without a layer (add them to LAYERS in tests/layers.rs): {missing:?}");
}

#[test]
fn no_module_imports_from_a_layer_above() {
    let (refs, _) = references();
    let upward: Vec<String> = refs
        .iter()
        .filter(|r| matches!((layer_of(&r.from), layer_of(&r.to)), (Some(a), Some(b)) if b > a))
        .map(|r| {
            let (a, b) = (layer_of(&r.from).unwrap(), layer_of(&r.to).unwrap());
            format!("{}:{}: {} ({}) uses {} ({})", r.file.display(), r.line, r.from, LAYERS[a].0, r.to, LAYERS[b].0)
        })
        .collect();
    assert!(upward.is_empty(), "imports that run up a layer:\n{}", upward.join("\n"));
}

#[test]
fn no_import_cycle_between_modules() {
    let (refs, modules) = references();
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for r in &refs {
        edges.entry(r.from.as_str()).or_default().insert(r.to.as_str());
    }
    // Depth-first search for a back edge; report the cycle it closes, with one line per edge.
    fn visit<'a>(
        m: &'a str,
        edges: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<&'a str>> {
        state.insert(m, 1);
        stack.push(m);
        for &n in edges.get(m).into_iter().flatten() {
            match state.get(n) {
                Some(1) => {
                    let at = stack.iter().position(|x| *x == n).unwrap();
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(n);
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(n, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(m, 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in &modules {
        if state.contains_key(m.as_str()) {
            continue;
        }
        if let Some(cycle) = visit(m, &edges, &mut state, &mut Vec::new()) {
            let why: Vec<String> = cycle
                .windows(2)
                .map(|w| {
                    let r = refs.iter().find(|r| r.from == w[0] && r.to == w[1]).unwrap();
                    format!("  {} -> {} ({}:{})", w[0], w[1], r.file.display(), r.line)
                })
                .collect();
            panic!("import cycle {}:\n{}", cycle.join(" -> "), why.join("\n"));
        }
    }
}

/// The check itself must see what it claims to: a known import is found, a comment is not.
#[test]
fn the_reader_finds_imports_and_skips_comments() {
    let m = vec!["blobs".to_owned()];
    assert_eq!(targets("use crate::{config::X, oci};", &m), vec!["config", "oci"]);
    assert_eq!(targets("let x = crate::stream::collect(b, 1);", &m), vec!["stream"]);
    let lines = production_lines(
        "//! see crate::http\nuse crate::oci; // crate::node\n#[cfg(test)]\nmod tests {\nuse crate::http;\n}",
    );
    let found: Vec<String> = lines.iter().flat_map(|(_, l)| targets(l, &m)).collect();
    assert_eq!(found, vec!["oci"]);
    let (refs, _) = references();
    assert!(refs.iter().any(|r| r.from == "http" && r.to == "mirror"), "http uses the services");
}

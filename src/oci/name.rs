//! Repository names, tags and registry hosts, checked against the distribution-spec grammar.
//! Hand-written rather than regex-based: the grammar is small and this keeps path traversal and
//! percent-encoding out by construction (only `[a-z0-9._/-]` can ever pass).

use std::fmt;

/// Longest repository name accepted (distribution's limit).
const MAX_NAME_LEN: usize = 255;
/// Longest tag accepted (`[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`).
const MAX_TAG_LEN: usize = 128;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("invalid repository name {0:?}")]
    Repository(String),
    #[error("invalid tag {0:?}")]
    Tag(String),
    #[error("invalid registry host in ns {0:?}: expected host[:port]")]
    Host(String),
}

/// `path-component ::= [a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*`, components joined by `/`.
pub fn validate_repository(name: &str) -> Result<(), NameError> {
    let err = || NameError::Repository(name.into());
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(err());
    }
    for component in name.split('/') {
        let b = component.as_bytes();
        if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
            return Err(err());
        }
        let mut i = 0;
        while i < b.len() {
            if is_alnum(b[i]) {
                i += 1;
                continue;
            }
            // a separator run: ".", "_", "__" or "-+"
            let start = i;
            while i < b.len() && !is_alnum(b[i]) {
                i += 1;
            }
            let sep = &component[start..i];
            let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
            if !ok {
                return Err(err());
            }
        }
    }
    Ok(())
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `tag ::= [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
pub fn validate_tag(tag: &str) -> Result<(), NameError> {
    let b = tag.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    if b.is_empty() || b.len() > MAX_TAG_LEN || !word(b[0]) || !b.iter().all(|&c| word(c) || c == b'.' || c == b'-') {
        return Err(NameError::Tag(tag.into()));
    }
    Ok(())
}

/// The registry an `ns` query parameter names: `host[:port]` as containerd sends it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Registry(String);

impl Registry {
    /// The name as the client used it (`docker.io`, `127.0.0.1:5000`); used in image names and keys.
    pub fn name(&self) -> &str {
        &self.0
    }
    /// The host to contact: Docker Hub's API lives at `registry-1.docker.io`.
    pub fn api_host(&self) -> &str {
        match self.0.as_str() {
            "docker.io" | "index.docker.io" => "registry-1.docker.io",
            other => other,
        }
    }
}

impl fmt::Display for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parse an already URL-decoded `ns` value (`None` → `default`). Accepts DNS names, IPv4 and
/// bracketed IPv6 hosts with an optional port; lowercases the host.
pub fn parse_ns(ns: Option<&str>, default: &str) -> Result<Registry, NameError> {
    let raw = ns.unwrap_or(default).trim();
    let err = || NameError::Host(raw.into());
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(err)?;
        h.parse::<std::net::Ipv6Addr>().map_err(|_| err())?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(err)?),
        };
        (format!("[{h}]"), port)
    } else {
        match raw.rsplit_once(':') {
            Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
            None => (raw.to_ascii_lowercase(), None),
        }
    };
    if !host.starts_with('[') {
        let labels_ok = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !labels_ok {
            return Err(err());
        }
    }
    let name = match port {
        Some(p) => {
            let n: u16 = p.parse().map_err(|_| err())?;
            if n == 0 || p.starts_with('0') {
                return Err(err());
            }
            format!("{host}:{n}")
        }
        None => host,
    };
    Ok(Registry(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories() {
        for ok in ["a", "library/alpine", "a/b/c", "foo.bar", "foo_bar", "foo__bar", "foo---bar", "x9/y-1.z"] {
            validate_repository(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "..", "a/../b", "a/./b", "-a", "a-", "a..b", "a___b", "a.-b", "a%2fb", "a b",
            "a\\b", "ä",
        ] {
            assert!(validate_repository(bad).is_err(), "{bad:?}");
        }
        assert!(validate_repository(&"a".repeat(256)).is_err());
        assert!(validate_repository(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn tags() {
        for ok in ["v1", "latest", "_x", "1.2.3-rc.1", &"a".repeat(128)] {
            validate_tag(ok).unwrap();
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", "a%b", &"a".repeat(129)] {
            assert!(validate_tag(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ns_values() {
        assert_eq!(parse_ns(None, "docker.io").unwrap().name(), "docker.io");
        assert_eq!(parse_ns(None, "docker.io").unwrap().api_host(), "registry-1.docker.io");
        assert_eq!(parse_ns(Some("127.0.0.2:5000"), "docker.io").unwrap().name(), "127.0.0.2:5000");
        assert_eq!(parse_ns(Some("GHCR.io"), "x").unwrap().name(), "ghcr.io");
        assert_eq!(parse_ns(Some("[::1]:5000"), "x").unwrap().name(), "[::1]:5000");
        for bad in [
            "",
            "a:b",
            "host:0",
            "host:65536",
            "host:01",
            "a..b",
            "-a.com",
            "a_b.com",
            "http://x",
            "x/y",
            "[::1",
            "[zz]:1",
            "a:1:2",
            "host:",
        ] {
            assert!(parse_ns(Some(bad), "docker.io").is_err(), "{bad:?}");
        }
    }
}

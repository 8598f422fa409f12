//! OCI distribution vocabulary: digests, repository names, tags, registry hosts (`ns`) and media
//! types. Pure parsers with no I/O, so every rule is unit-tested here and nowhere else.

mod digest;
mod name;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use name::{parse_ns, validate_repository, validate_tag, NameError, Registry};

/// Media types peerd recognises when it sniffs a manifest it reads from the local store.
pub mod media {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const OCTET_STREAM: &str = "application/octet-stream";
    /// An `Accept` naming every manifest and index type.
    pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

    /// The media type of a manifest body: its `mediaType` field, else OCI index/manifest by shape
    /// (the field is optional in OCI). `None` when the body is not a JSON object.
    pub fn sniff_manifest(body: &[u8]) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let obj = v.as_object()?;
        if let Some(mt) = obj.get("mediaType").and_then(|m| m.as_str()) {
            return Some(mt.to_owned());
        }
        Some(if obj.contains_key("manifests") { OCI_INDEX } else { OCI_MANIFEST }.to_owned())
    }

    /// Whether `ct` names a manifest or index (OCI, Docker v2 and schema 1, any `+json`
    /// artifact manifest a registry may serve under a manifest URL).
    pub fn is_manifest_type(ct: &str) -> bool {
        let ct = ct.to_ascii_lowercase();
        [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST].contains(&ct.as_str())
            || (ct.starts_with("application/vnd.") && ct.ends_with("+json"))
            || ct.starts_with("application/vnd.docker.distribution.manifest.v1")
            || ct == "application/json"
    }

    /// Whether a client's `Accept` header admits `media_type`. No header (or an empty one) accepts
    /// everything, as registries do.
    pub fn accepts(accept: Option<&str>, media_type: &str) -> bool {
        let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
            return true;
        };
        accept.split(',').any(|item| {
            let mt = item.split(';').next().unwrap_or("").trim();
            mt == "*/*" || mt.eq_ignore_ascii_case(media_type)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::media::*;

    #[test]
    fn sniffs_manifest_types() {
        assert_eq!(
            sniff_manifest(br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#).as_deref(),
            Some(DOCKER_MANIFEST)
        );
        assert_eq!(sniff_manifest(br#"{"manifests":[]}"#).as_deref(), Some(OCI_INDEX));
        assert_eq!(sniff_manifest(br#"{"layers":[]}"#).as_deref(), Some(OCI_MANIFEST));
        assert_eq!(sniff_manifest(b"not json"), None);
        assert_eq!(sniff_manifest(b"[1,2]"), None);
    }

    #[test]
    fn manifest_types() {
        for ct in [
            OCI_MANIFEST,
            OCI_INDEX,
            DOCKER_MANIFEST,
            DOCKER_MANIFEST_LIST,
            "application/json",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            "application/vnd.example.thing+json",
        ] {
            assert!(is_manifest_type(ct), "{ct}");
        }
        for ct in ["text/plain", "text/html", OCTET_STREAM, "application/xml"] {
            assert!(!is_manifest_type(ct), "{ct}");
        }
    }

    #[test]
    fn accept_header_matching() {
        assert!(accepts(None, OCI_INDEX));
        assert!(accepts(Some(""), OCI_INDEX));
        assert!(accepts(Some("*/*"), OCI_INDEX));
        assert!(accepts(Some(&format!("{DOCKER_MANIFEST}, {OCI_INDEX};q=0.5")), OCI_INDEX));
        assert!(!accepts(Some(DOCKER_MANIFEST), OCI_INDEX));
    }
}

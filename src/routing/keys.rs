//! DHT keys: CIDv1 with the raw codec over the sha2-256 multihash of the key string — the
//! encoding Azure/peerd uses — so a key is 36 bytes whatever the length of the name.

use sha2::{Digest, Sha256};

/// CID version 1, multicodec `raw` (0x55), multihash sha2-256 (0x12) of 32 bytes (0x20).
const CID_PREFIX: [u8; 4] = [0x01, 0x55, 0x12, 0x20];

pub fn dht_key(key: &str) -> Vec<u8> {
    let mut out = CID_PREFIX.to_vec();
    out.extend_from_slice(&Sha256::digest(key.as_bytes()));
    out
}

/// The key under which the nodes fetching a file (a digest, a /blobs file id) at once announce
/// themselves, so that they find each other and share its chunks.
pub fn swarm_key(id: &str) -> String {
    format!("swarm/{id}")
}

/// The shard of `id` at `level` of a 4-ary tree over sha256(id): its top `2 * level` bits
/// (level 0 is the root, one shard; level `l` has 4^l). Preheat's membership keys and the
/// swarm's group keys use it.
pub fn tree_shard(id: &str, level: u32) -> u64 {
    let h = Sha256::digest(id.as_bytes());
    let top = u64::from_be_bytes(h[..8].try_into().expect("8 bytes"));
    top.checked_shr(64 - 2 * level).unwrap_or(0)
}

/// Levels of a swarm's group tree below its key ([`swarm_key`] is level 0): level `l` has 4^l
/// groups, the deepest 4,096. A node downloading announces itself in its group at every level
/// and, when a lookup comes back full (the DHT keeps 20 providers per key), looks up its group
/// one level deeper, down to one that is not full: its view is then nodes of its own small group,
/// which differ from node to node, so chunks spread through every node's uplink, not only
/// through the 20 everyone finds under the swarm's key.
pub const SWARM_GROUP_LEVELS: u32 = 6;

/// The key under which the nodes of `node_id`'s group at `level` downloading `id` announce
/// themselves.
pub fn swarm_group_key(id: &str, level: u32, node_id: &str) -> String {
    format!("swarm/{id}/{level}/{}", tree_shard(node_id, level))
}

/// The key under which nodes that validated a URL without its query (its hash) announce it,
/// for stale-if-error during an upstream outage.
pub fn validated_url_key(stable_hash: &str) -> String {
    format!("blobs-url/{stable_hash}")
}

/// The tag key of an image name, if it names a tag: `host/repo:tag` (not `repo@sha256:…`,
/// not containerd's bare `sha256:…` config records).
pub fn tag_key(image_name: &str) -> Option<String> {
    if image_name.contains('@') || image_name.starts_with("sha256:") {
        return None;
    }
    let (path, tag) = image_name.rsplit_once(':')?;
    (!tag.contains('/') && path.contains('/')).then(|| image_name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cid_layout() {
        let k = dht_key("sha256:abc");
        assert_eq!(k.len(), 36);
        assert_eq!(&k[..4], &CID_PREFIX);
        assert_ne!(dht_key("a"), dht_key("b"));
    }

    #[test]
    fn tag_keys() {
        assert_eq!(tag_key("docker.io/library/alpine:3").as_deref(), Some("docker.io/library/alpine:3"));
        assert_eq!(tag_key("127.0.0.1:5000/test/app:v1").as_deref(), Some("127.0.0.1:5000/test/app:v1"));
        assert_eq!(tag_key("127.0.0.1:5000/test/app"), None);
        assert_eq!(tag_key("docker.io/library/alpine@sha256:abc"), None);
        assert_eq!(tag_key("sha256:abc"), None);
    }
}

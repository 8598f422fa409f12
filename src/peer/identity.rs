//! The node's libp2p identity, persisted in the data directory so its peer id survives restarts
//! (provider records keep pointing at it).

use libp2p::identity::Keypair;
use std::io::Write;
use std::path::{Path, PathBuf};

const KEY_FILE: &str = "identity.key";

/// Why the identity could not be loaded or created. A damaged key file is never replaced on
/// its own: a new key means a new peer id, so the operator decides (by deleting the file).
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "{} is empty: the node's identity key was lost (an interrupted write or a full disk?). \
         Delete the file to generate a new identity (the node gets a new peer id), or restore it",
        path.display()
    )]
    Empty { path: PathBuf },
    #[error(
        "{} is not a libp2p identity key ({reason}). Delete the file to generate a new identity \
         (the node gets a new peer id), or restore it",
        path.display()
    )]
    Invalid { path: PathBuf, reason: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("encoding the new identity key: {0}")]
    Encode(String),
}

/// Largest key file read (an ed25519 key is 68 bytes; RSA keys of other tools a few KiB).
const MAX_KEY_BYTES: u64 = 16 << 10;

/// Load `data_dir/identity.key`, or create it (ed25519, mode 0600, written atomically).
pub fn load_or_create(data_dir: &Path) -> Result<Keypair, IdentityError> {
    let path = data_dir.join(KEY_FILE);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| IdentityError::Io { path, source }
    };
    match std::fs::File::open(&path) {
        Ok(f) => {
            use std::io::Read;
            let mut bytes = Vec::new();
            f.take(MAX_KEY_BYTES + 1).read_to_end(&mut bytes).map_err(io(&path))?;
            if bytes.is_empty() {
                return Err(IdentityError::Empty { path });
            }
            if bytes.len() as u64 > MAX_KEY_BYTES {
                return Err(IdentityError::Invalid { path, reason: format!("over {MAX_KEY_BYTES} bytes") });
            }
            // (libp2p's own error for bytes that are no key talks of an "rsa feature": not
            // what an operator needs to hear.)
            return Keypair::from_protobuf_encoding(&bytes).map_err(|_| IdentityError::Invalid {
                path,
                reason: format!("{} bytes that do not decode as one", bytes.len()),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&path)(e)),
    }
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let key = Keypair::generate_ed25519();
    let bytes = key.to_protobuf_encoding().map_err(|e| IdentityError::Encode(e.to_string()))?;
    let tmp = data_dir.join(format!("{KEY_FILE}.tmp"));
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        if let Err(e) = f.write_all(&bytes).and_then(|_| f.sync_all()) {
            // A full disk: no partial key is left to be mistaken for one.
            drop(f);
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&tmp)(e));
        }
    }
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        let path = dir.path().join(KEY_FILE);
        std::fs::write(&path, b"garbage").unwrap();
        let e = load_or_create(dir.path()).unwrap_err();
        assert!(matches!(e, IdentityError::Invalid { .. }), "{e:?}");
        assert!(e.to_string().contains("Delete the file") && !e.to_string().contains("rsa"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"garbage", "never replaced on its own");
    }

    /// An empty key file (a crash or full disk mid-write) said "rsa feature" and crash-looped.
    #[test]
    fn an_empty_key_file_says_what_is_wrong_and_how_to_fix_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        std::fs::write(&path, b"").unwrap();
        let e = load_or_create(dir.path()).unwrap_err();
        assert!(matches!(e, IdentityError::Empty { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(path.to_str().unwrap()) && msg.contains("is empty") && msg.contains("Delete"), "{msg}");
        assert!(!msg.contains("rsa"), "{msg}");
        assert!(path.exists() && std::fs::read(&path).unwrap().is_empty(), "not regenerated unasked");
        // Deleting it is how an operator asks for a new identity.
        std::fs::remove_file(&path).unwrap();
        load_or_create(dir.path()).unwrap();
        assert!(!std::fs::read(&path).unwrap().is_empty());
    }
}

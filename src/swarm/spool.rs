//! A download's bytes on disk: one sparse file, written chunk by chunk at its offset as parts
//! arrive (in any order), read back by the readers and by peers. The file is removed when the
//! last handle goes.

use bytes::Bytes;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

pub struct Spool {
    file: std::fs::File,
    path: PathBuf,
}

impl Spool {
    /// A new sparse file of `size` bytes at `path` (replacing a leftover one).
    pub fn create(path: PathBuf, size: u64) -> std::io::Result<Arc<Spool>> {
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
        file.set_len(size)?;
        Ok(Arc::new(Spool { file, path }))
    }

    pub async fn write(self: &Arc<Self>, offset: u64, data: Bytes) -> std::io::Result<()> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.file.write_all_at(&data, offset))
            .await
            .map_err(std::io::Error::other)?
    }

    pub async fn read(self: &Arc<Self>, offset: u64, len: usize) -> std::io::Result<Bytes> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            this.file.read_exact_at(&mut buf, offset)?;
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

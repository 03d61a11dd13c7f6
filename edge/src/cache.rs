//! The edge's cache directory: files written atomically, and entries kept by hash
//! (`front/<hash>/`, `model/<hash>/`) with a `LATEST` file naming the one fetched last.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use mistnet::codec::FrontHash;

/// One kind of hash-keyed entry: `CACHE/<kind>/<hash>/<file>` and `CACHE/<kind>/LATEST`.
pub struct Entries {
    root: PathBuf,
    file: &'static str,
}

impl Entries {
    pub fn new(cache: &Path, kind: &str, file: &'static str) -> Self {
        Self { root: cache.join(kind), file }
    }

    /// The directory of the entry `hash`. A hash is 64 hex digits, so no server can make the edge
    /// write or remove anything outside the cache.
    pub fn dir(&self, hash: &FrontHash) -> PathBuf {
        self.root.join(hash.to_string())
    }

    /// The entry's main file.
    pub fn file(&self, hash: &FrontHash) -> PathBuf {
        self.dir(hash).join(self.file)
    }

    /// The entry fetched last, if its file is there.
    pub fn latest(&self) -> Option<FrontHash> {
        let hash: FrontHash = std::fs::read_to_string(self.root.join("LATEST")).ok()?.trim().parse().ok()?;
        self.file(&hash).exists().then_some(hash)
    }

    pub fn set_latest(&self, hash: &FrontHash) -> Result<()> {
        write_atomic(&self.root.join("LATEST"), hash.to_string().as_bytes())
    }
}

/// Writes through a temporary file, fsync and a rename (then fsyncs the directory), so a crash or a
/// power loss leaves the old file or the whole new one, never an empty or torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, bytes)?;
        file.sync_all()
    };
    write().with_context(|| format!("cannot write {}", tmp.display()))?;
    rename_durably(&tmp, path)
}

/// Renames `from` to `to` and fsyncs the directory, so the rename survives a power loss.
pub fn rename_durably(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).with_context(|| format!("cannot write {}", to.display()))?;
    if let Some(dir) = to.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("cannot sync {}", dir.display()))?;
    }
    Ok(())
}

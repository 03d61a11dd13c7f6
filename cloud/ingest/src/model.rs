//! The deployable model `GetModel` serves: a safetensors file with the `mistnet` metadata that
//! makes it deployable, pinned by the hash of its tensors ([`crate::manifest::tensors_hash`]).
//!
//! The file is read again when its size or modification time changes, so a model exported into
//! the served directory after training reaches the edges without restarting `serve` (`export`
//! replaces the file by a rename, never in place). A file that cannot be read or is not a
//! deployable model keeps the last good one served, with a warning. A file that does not exist
//! yet (`serve --serve-model` naming where training will export) serves nothing until it does.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{Context, Result, ensure};
use mistnet_proto::pb;

use crate::manifest::tensors_hash;

/// The safetensors metadata key of a deployable model (`mistnet::model::deploy::META_KEY`).
pub const DEPLOY_META_KEY: &str = "mistnet";

/// Bytes of model file per `ModelChunk`.
pub const CHUNK_BYTES: usize = 1 << 20;

/// One version of the served file.
#[derive(Debug)]
pub struct ModelFile {
    /// SHA-256 of its tensors, hex.
    pub sha256: String,
    pub tensors: usize,
    pub bytes: Vec<u8>,
    /// Size and modification time when it was read.
    stamp: (u64, Option<SystemTime>),
}

impl ModelFile {
    /// Reads and checks `path`: a safetensors file of f32 tensors with deployable metadata.
    pub fn read(path: &Path) -> Result<Self> {
        let stamp = stamp(path)?;
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let what = format!("model {}", path.display());
        let (sha256, tensors) = tensors_hash(&bytes, &what, |_| Ok(()))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).with_context(|| format!("{what} is not a safetensors file"))?;
        ensure!(
            meta.metadata().as_ref().is_some_and(|m| m.contains_key(DEPLOY_META_KEY)),
            "{what} has no `{DEPLOY_META_KEY}` metadata: it is not a deployable model (give the model.safetensors of `mistnet-cloud export`, `train` or `pretrain`)"
        );
        Ok(Self { sha256, tensors, bytes, stamp })
    }

    /// The `GetModel` reply for an edge that has `cached_hash`: the header chunk, then the data
    /// in chunks of [`CHUNK_BYTES`] unless the edge has this very file.
    pub fn chunks(&self, cached_hash: &str) -> Vec<pb::ModelChunk> {
        let total_bytes = self.bytes.len() as u64;
        let header = pb::ModelChunk { model_sha256: self.sha256.clone(), total_bytes, offset: 0, data: Vec::new() };
        if cached_hash == self.sha256 {
            return vec![header];
        }
        let mut out = vec![header];
        for (i, data) in self.bytes.chunks(CHUNK_BYTES).enumerate() {
            out.push(pb::ModelChunk { model_sha256: String::new(), total_bytes: 0, offset: (i * CHUNK_BYTES) as u64, data: data.to_vec() });
        }
        out
    }
}

fn stamp(path: &Path) -> Result<(u64, Option<SystemTime>)> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok((meta.len(), meta.modified().ok()))
}

/// The served model file, re-read when it changes.
#[derive(Debug)]
pub struct ServedModel {
    path: PathBuf,
    /// The last good version; none while the file has never existed.
    current: Mutex<Option<Arc<ModelFile>>>,
}

impl ServedModel {
    /// Reads `path` now: a server never starts with a model it cannot serve. With `may_be_absent`,
    /// a file that does not exist yet is served once it does.
    pub fn open(path: &Path, may_be_absent: bool) -> Result<Self> {
        let file = match std::fs::exists(path) {
            Ok(false) if may_be_absent => None,
            _ => Some(Arc::new(ModelFile::read(path)?)),
        };
        Ok(Self { path: path.to_path_buf(), current: Mutex::new(file) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file as it is now: re-read if its size or modification time changed since the last
    /// read; the last good version if it cannot be read or checked (logged); none if it never existed.
    pub fn current(&self) -> Option<Arc<ModelFile>> {
        let last = self.current.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let stamp = stamp(&self.path);
        match (&last, &stamp) {
            (Some(last), Ok(s)) if *s == last.stamp => return Some(Arc::clone(last)),
            (None, Err(_)) => return None,
            _ => {}
        }
        match ModelFile::read(&self.path) {
            Ok(file) => {
                let previous = last.as_ref().map(|f| f.sha256.clone()).unwrap_or_default();
                tracing::info!(model = %self.path.display(), sha256 = %file.sha256, bytes = file.bytes.len(), %previous, "the served model changed");
                let file = Arc::new(file);
                *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&file));
                Some(file)
            }
            Err(e) => {
                let serving = last.as_ref().map(|f| f.sha256.clone()).unwrap_or_else(|| "none".into());
                tracing::warn!(model = %self.path.display(), error = %format!("{e:#}"), %serving, "the model file changed but cannot be served; serving the last good one");
                last
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn model_bytes(values: &[f32], meta: bool) -> Vec<u8> {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![values.len()], &data).unwrap();
        let metadata = meta.then(|| HashMap::from([(DEPLOY_META_KEY.to_string(), "{}".to_string())]));
        safetensors::serialize([("model.0.conv.weight", view)], metadata).unwrap()
    }

    #[test]
    fn chunks_cover_the_file_in_order_and_a_cached_model_is_not_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let values: Vec<f32> = (0..(CHUNK_BYTES / 4 * 2 + 1000)).map(|i| i as f32).collect();
        std::fs::write(&path, model_bytes(&values, true)).unwrap();
        let file = ModelFile::read(&path).unwrap();
        let chunks = file.chunks("");
        assert_eq!(chunks.len(), 1 + 3, "a header and three data chunks");
        assert_eq!((chunks[0].model_sha256.as_str(), chunks[0].total_bytes), (file.sha256.as_str(), file.bytes.len() as u64));
        let mut joined = Vec::new();
        for c in &chunks[1..] {
            assert_eq!(c.offset, joined.len() as u64);
            assert!(c.data.len() <= CHUNK_BYTES);
            joined.extend_from_slice(&c.data);
        }
        assert_eq!(joined, file.bytes);
        let cached = file.chunks(&file.sha256);
        assert_eq!(cached.len(), 1);
        assert!(cached[0].data.is_empty());
    }

    #[test]
    fn a_file_without_deploy_metadata_or_with_other_dtypes_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, model_bytes(&[1.0, 2.0], false)).unwrap();
        let e = format!("{:#}", ModelFile::read(&path).unwrap_err());
        assert!(e.contains("not a deployable model"), "{e}");
        let data = [0u8; 16];
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![2], &data).unwrap();
        let bytes = safetensors::serialize([("model.1.bn.num_batches_tracked", view)], Some(HashMap::from([(DEPLOY_META_KEY.to_string(), "{}".to_string())]))).unwrap();
        std::fs::write(&path, bytes).unwrap();
        let e = format!("{:#}", ModelFile::read(&path).unwrap_err());
        assert!(e.contains("I64") && e.contains("only f32"), "{e}");
        std::fs::write(&path, b"not a model").unwrap();
        assert!(ModelFile::read(&path).is_err());
    }

    #[test]
    fn a_file_is_served_once_it_exists_a_replaced_one_from_the_next_call_and_a_broken_one_keeps_the_last_good_model() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        assert!(ServedModel::open(&path, false).is_err(), "a missing file is refused unless it may be absent");
        let served = ServedModel::open(&path, true).unwrap();
        assert!(served.current().is_none(), "nothing is served before the file exists");
        std::fs::write(&path, model_bytes(&[1.0, 2.0], true)).unwrap();
        let first = served.current().unwrap().sha256.clone();
        assert!(Arc::ptr_eq(&served.current().unwrap(), &served.current().unwrap()), "an unchanged file is not read again");
        // Replaced as export replaces it: a new file renamed over the old one.
        let tmp = dir.path().join("model.tmp");
        std::fs::write(&tmp, model_bytes(&[1.0, 2.0, 3.0], true)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let second = served.current().unwrap().sha256.clone();
        assert_ne!(first, second);
        std::fs::write(&path, b"torn").unwrap();
        assert_eq!(served.current().unwrap().sha256, second, "a broken file keeps the last good model served");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(served.current().unwrap().sha256, second, "so does a removed one");
    }
}

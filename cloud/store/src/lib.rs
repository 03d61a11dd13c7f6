//! The durable feature store: what edges uploaded, on local disk, exactly once per (edge, sample id).
//!
//! Append-only segment files of checksummed, length-prefixed records ([`record`], [`segment`]); one
//! writer thread appends and fsyncs batches of records before anything is acknowledged (group commit,
//! [`writer`]); on open, the torn tail a crash may leave is cut off and the index and ε [`ledger`]
//! are rebuilt from the records. The design and its guarantees are in `docs/feature-store.md`.
//!
//! [`FeatureStore`] is the read side the trainer uses; [`StoreWriter`] the ingest side.

pub mod ledger;
pub mod record;
pub mod segment;
pub mod writer;

use std::path::{Path, PathBuf};

use mistnet_data::Label;

pub use ledger::{EdgeLedger, Index};
pub use writer::{Outcome, Refusal, StoreLimits, StoreWriter, Upload};

use record::RecordKind;

/// Everything that can go wrong opening, reading or writing the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: byte {offset}: {reason} (only the last segment may have a damaged tail)", file.display())]
    Corrupt { file: PathBuf, offset: u64, reason: String },
    #[error("{} is in use by another writer (its LOCK file is held)", dir.display())]
    Locked { dir: PathBuf },
    #[error("the store stopped accepting writes after an I/O error: {0}")]
    Poisoned(String),
    #[error("the store writer has shut down")]
    Closed,
}

impl StoreError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

/// One stored sample, as the trainer reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSample {
    pub edge: String,
    pub sample_id: String,
    /// The codec wire message (`mistnet::codec::decode` reads it).
    pub features: Vec<u8>,
    pub labels: Vec<Label>,
    /// Original image width and height in pixels.
    pub image_size: (u32, u32),
}

/// Read-only view of a store directory. Never modifies it: a torn tail (a crash, or a writer
/// appending right now) is skipped, not truncated.
#[derive(Debug)]
pub struct FeatureStore {
    segments: Vec<PathBuf>,
    samples: usize,
}

impl FeatureStore {
    /// Opens `dir` and counts its samples. Damage anywhere but at the end of the last segment is
    /// an error.
    pub fn open(dir: impl AsRef<Path>) -> Result<FeatureStore, StoreError> {
        let dir = dir.as_ref();
        let segments: Vec<PathBuf> = segment::list(dir)?.into_iter().map(|(_, p)| p).collect();
        let mut samples = 0;
        scan_all(&segments, |rec| samples += usize::from(rec.kind == RecordKind::Sample))?;
        Ok(FeatureStore { segments, samples })
    }

    /// Number of stored samples.
    pub fn len(&self) -> usize {
        self.samples
    }

    pub fn is_empty(&self) -> bool {
        self.samples == 0
    }

    /// Every stored sample, in the order it was stored.
    pub fn samples(&self) -> Result<Vec<StoredSample>, StoreError> {
        let mut out = Vec::with_capacity(self.samples);
        scan_all(&self.segments, |rec| {
            if rec.kind == RecordKind::Sample {
                out.push(StoredSample {
                    edge: rec.edge,
                    sample_id: rec.sample_id,
                    features: rec.features,
                    labels: rec.labels,
                    image_size: rec.image_size,
                });
            }
        })?;
        out.truncate(self.samples);
        Ok(out)
    }
}

/// Scans `segments` in order; a damaged record is an error unless it is in the last one.
fn scan_all(segments: &[PathBuf], mut visit: impl FnMut(record::Record)) -> Result<(), StoreError> {
    for (i, path) in segments.iter().enumerate() {
        let end = segment::scan(path, |rec, _| visit(rec))?;
        if let Some(reason) = end.damage
            && i + 1 < segments.len()
        {
            return Err(StoreError::Corrupt { file: path.clone(), offset: end.valid_len, reason });
        }
    }
    Ok(())
}

//! The durable feature store: what edges uploaded, on local disk, exactly once per (edge, sample id).
//!
//! Append-only segment files of checksummed, length-prefixed records ([`record`], [`segment`]); one
//! writer thread appends and fsyncs batches of records before anything is acknowledged (group commit,
//! [`writer`]); on open every record is replayed ([`replay`]): the torn tail a crash may leave is
//! cut off, corruption at rest is refused (or set aside, keeping every valid record), a missing
//! segment or a duplicated record is an error, and the index and ε [`ledger`] are rebuilt. The
//! design and its guarantees are in `docs/feature-store.md`.
//!
//! [`FeatureStore`] is the read side the trainer uses; [`StoreFollower`] reads a store that a writer
//! is appending to, a poll at a time ([`follow`]); [`StoreWriter`] is the ingest side.
//!
//! A store can also live in a bucket of an S3-protocol object store that several ingest replicas
//! share ([`bucket`]); [`StoreUrl`] names either kind, and [`FeatureStore`], [`StoreFollower`] and
//! [`IngestStore`] read or write both.

pub mod backend;
pub mod bucket;
pub mod follow;
pub mod ledger;
pub mod record;
pub mod replay;
pub mod segment;
pub mod url;
pub mod writer;

use std::path::{Path, PathBuf};

use mistnet_data::Label;

pub use backend::{IngestStore, StoreFollower};
pub use ledger::{EdgeLedger, EdgeTotals, Index};
pub use url::StoreUrl;
pub use replay::OnCorruption;
pub use writer::{Outcome, Refusal, StoreLimits, StoreWriter, Upload};

use record::RecordKind;

/// Everything that can go wrong opening, reading or writing the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: byte {offset}: {reason}", file.display())]
    Corrupt { file: PathBuf, offset: u64, reason: String },
    #[error("{} is in use by another writer (its LOCK file is held)", dir.display())]
    Locked { dir: PathBuf },
    #[error("the store stopped accepting writes after an I/O error: {0}")]
    Poisoned(String),
    #[error("the store could not write this batch (rolled back; a later upload tries again): {0}")]
    WriteFailed(String),
    #[error("the store writer has shut down")]
    Closed,
    #[error("{url}: {source}")]
    Remote { url: String, source: Box<object_store::Error> },
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

/// Read-only view of a store. Never modifies it: in a directory, a torn tail (a crash, or a writer
/// appending right now) is skipped, not truncated; corruption is refused, or skipped with a warning
/// under [`OnCorruption::Quarantine`] (the writer is what moves damaged bytes aside).
#[derive(Debug)]
pub struct FeatureStore {
    source: Source,
    on_corruption: OnCorruption,
    samples: usize,
}

#[derive(Debug)]
enum Source {
    Dir(PathBuf),
    /// The sample objects listed on open.
    Bucket { reader: bucket::BucketReader, keys: Vec<object_store::path::Path> },
}

impl FeatureStore {
    /// Opens the store in `dir` and counts its samples, refusing corruption ([`OnCorruption::Refuse`]).
    pub fn open(dir: impl AsRef<Path>) -> Result<FeatureStore, StoreError> {
        Self::open_with(dir, OnCorruption::Refuse)
    }

    /// Opens the store in `dir` and counts its samples; corruption is handled as `on_corruption` says.
    pub fn open_with(dir: impl AsRef<Path>, on_corruption: OnCorruption) -> Result<FeatureStore, StoreError> {
        Self::open_url(&StoreUrl::from(dir.as_ref()), on_corruption)
    }

    /// Opens the store at `url` (a directory or a bucket) and counts its samples.
    pub fn open_url(url: &StoreUrl, on_corruption: OnCorruption) -> Result<FeatureStore, StoreError> {
        let dir = match url {
            StoreUrl::Dir(dir) => dir.clone(),
            StoreUrl::Bucket(url) => {
                let reader = bucket::BucketReader::connect(url)?;
                let keys = reader.sample_keys()?;
                return Ok(FeatureStore { samples: keys.len(), source: Source::Bucket { reader, keys }, on_corruption });
            }
        };
        let mut samples = 0;
        let states = replay::replay(&dir, on_corruption, |rec| samples += usize::from(rec.kind == RecordKind::Sample))?;
        for seg in &states {
            for d in &seg.corrupt {
                tracing::warn!(segment = %seg.path.display(), at = d.start, bytes = d.end - d.start, reason = %d.reason, "skipping corrupt bytes; the valid records after them are read");
            }
        }
        Ok(FeatureStore { source: Source::Dir(dir), on_corruption, samples })
    }

    /// Number of stored samples.
    pub fn len(&self) -> usize {
        self.samples
    }

    pub fn is_empty(&self) -> bool {
        self.samples == 0
    }

    /// Every stored sample, in the order it was stored in a directory, in (edge, sample id) order
    /// in a bucket (those a writer added since [`open`](Self::open_url) left out).
    pub fn samples(&self) -> Result<Vec<StoredSample>, StoreError> {
        let dir = match &self.source {
            Source::Dir(dir) => dir,
            Source::Bucket { reader, keys } => return reader.read_samples(keys, self.on_corruption),
        };
        let mut out = Vec::with_capacity(self.samples);
        replay::replay(dir, self.on_corruption, |rec| {
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

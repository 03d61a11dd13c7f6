//! One API over the two kinds of store a [`StoreUrl`] names: the ingest side ([`IngestStore`]) and
//! the follower that `train --follow` reads with ([`StoreFollower`]). A directory has one writer,
//! which holds the whole index in memory; a bucket has any number, which ask the bucket.

use std::collections::{BTreeMap, Bound};

use tokio::sync::watch;

use super::bucket::{BucketFollower, BucketWriter};
use super::follow::DirFollower;
use super::ledger::EdgeTotals;
use super::replay::OnCorruption;
use super::writer::{Outcome, StoreLimits, StoreWriter, Upload};
use super::{StoreError, StoreUrl, StoredSample};

/// What `serve` stores uploads in. See the module docs.
pub enum IngestStore {
    Dir(StoreWriter),
    Bucket(BucketWriter),
}

impl IngestStore {
    /// Opens (or creates) the store at `url`: a directory is replayed and locked
    /// ([`StoreWriter::open`]); a bucket is checked for conditional writes ([`BucketWriter::open`]).
    pub async fn open(url: &StoreUrl, limits: StoreLimits) -> Result<Self, StoreError> {
        match url {
            StoreUrl::Dir(dir) => Ok(Self::Dir(StoreWriter::open(dir, limits)?)),
            StoreUrl::Bucket(url) => Ok(Self::Bucket(BucketWriter::open(url, limits).await?)),
        }
    }

    /// Stores `upload`; resolves once the decision is durable.
    pub async fn submit(&self, upload: Upload) -> Result<Outcome, StoreError> {
        match self {
            Self::Dir(w) => w.submit(upload).await,
            Self::Bucket(w) => w.submit(upload).await,
        }
    }

    /// Uploads waiting for the directory's writer thread, or being written to the bucket.
    pub fn queue_depth(&self) -> usize {
        match self {
            Self::Dir(w) => w.queue_depth(),
            Self::Bucket(w) => w.in_flight(),
        }
    }

    /// Whether the last write was durable (see [`StoreWriter::writable`], [`BucketWriter::writable`]).
    pub fn writable(&self) -> watch::Receiver<bool> {
        match self {
            Self::Dir(w) => w.writable(),
            Self::Bucket(w) => w.writable(),
        }
    }

    /// Each edge's totals and the store's bytes, read without waiting: exact for a directory; for a
    /// bucket, as this replica last saw them, and the feature bytes they hold (for metrics).
    pub fn seen(&self) -> (BTreeMap<String, EdgeTotals>, u64) {
        match self {
            Self::Dir(w) => {
                let index = w.index();
                (index.edges.iter().map(|(e, l)| (e.clone(), l.totals())).collect(), index.store_bytes)
            }
            Self::Bucket(w) => {
                let seen = w.seen();
                let bytes = seen.values().map(|t| t.feature_bytes).sum();
                (seen, bytes)
            }
        }
    }

    /// Every edge's totals, or `only`'s (absent when it has nothing stored), as the store holds them now.
    pub async fn edges(&self, only: Option<&str>) -> Result<BTreeMap<String, EdgeTotals>, StoreError> {
        match self {
            Self::Dir(w) => {
                let index = w.index();
                Ok(match only {
                    Some(edge) => index.edges.get(edge).map(|l| (edge.to_string(), l.totals())).into_iter().collect(),
                    None => index.edges.iter().map(|(e, l)| (e.clone(), l.totals())).collect(),
                })
            }
            Self::Bucket(w) => w.bucket().edges(only).await,
        }
    }

    /// Up to `n` of `edge`'s stored sample ids after `after` (byte order), each with the ε of its
    /// accepted uploads, and whether more follow.
    pub async fn sample_page(&self, edge: &str, after: &str, n: usize) -> Result<(Vec<(String, Vec<f64>)>, bool), StoreError> {
        match self {
            Self::Dir(w) => {
                let index = w.index();
                let Some(ledger) = index.edges.get(edge) else { return Ok((Vec::new(), false)) };
                let mut range = ledger.per_sample.range::<str, _>((Bound::Excluded(after), Bound::Unbounded));
                let page = range.by_ref().take(n).map(|(id, eps)| (id.clone(), eps.clone())).collect();
                Ok((page, range.next().is_some()))
            }
            Self::Bucket(w) => w.bucket().sample_page(edge, after, n).await,
        }
    }

    /// Stops accepting uploads and finishes the queued ones.
    pub fn close(self) {
        match self {
            Self::Dir(w) => w.close(),
            Self::Bucket(_) => {}
        }
    }
}

/// Reads a store that writers are adding to, a poll at a time ([`DirFollower`], [`BucketFollower`]).
#[derive(Debug)]
pub enum StoreFollower {
    Dir(DirFollower),
    Bucket(BucketFollower),
}

impl StoreFollower {
    /// A follower of the store at `url`, before its first sample. A directory must exist (a
    /// writer creates it); it may hold no segment yet.
    pub fn new(url: impl Into<StoreUrl>, on_corruption: OnCorruption) -> Result<Self, StoreError> {
        match url.into() {
            StoreUrl::Dir(dir) => Ok(Self::Dir(DirFollower::new(dir, on_corruption)?)),
            StoreUrl::Bucket(url) => Ok(Self::Bucket(BucketFollower::new(&url, on_corruption)?)),
        }
    }

    /// Samples returned by every poll so far.
    pub fn returned(&self) -> usize {
        match self {
            Self::Dir(f) => f.returned(),
            Self::Bucket(f) => f.returned(),
        }
    }

    /// The samples stored since the last poll.
    pub fn poll(&mut self) -> Result<Vec<StoredSample>, StoreError> {
        match self {
            Self::Dir(f) => f.poll(),
            Self::Bucket(f) => f.poll(),
        }
    }
}

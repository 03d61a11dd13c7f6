//! The ingest side of the store: one writer thread appends records and fsyncs them in batches
//! (group commit) before any of them is acknowledged; it alone decides duplicates, quotas and
//! the ε budget, so those decisions are serial and exact.
//!
//! A batch whose write or fsync fails (a full disk) is rolled back: the segment is truncated to
//! its last durable length and fsync'd, the batch is refused, and the next batch tries again;
//! [`StoreWriter::writable`] reports false from the failure until a batch is durable again. Only
//! when the rollback itself fails does the writer refuse everything until restarted.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use mistnet_data::Label;
use tokio::sync::{mpsc, oneshot, watch};

use super::ledger::Index;
use super::record::{Record, RecordKind};
use super::replay::{OnCorruption, SegmentState, replay};
use super::segment::{SEGMENT_MAGIC, segment_name};
use super::StoreError;

/// The batch buffer is kept between batches up to this capacity, and released above it.
const KEEP_BATCH_BUFFER: usize = 8 << 20;

/// Policy and tuning of a writer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoreLimits {
    /// Refuse an upload that would take an edge's ε (basic composition) past this.
    pub epsilon_budget: Option<f64>,
    /// Refuse new samples of an edge past this many.
    pub max_samples_per_edge: Option<u64>,
    /// Refuse new samples of an edge once its stored feature bytes would pass this.
    pub max_bytes_per_edge: Option<u64>,
    /// Start a new segment file once the current one reaches this size.
    pub segment_bytes: u64,
    /// Most records per fsync.
    pub max_batch: usize,
    /// Uploads waiting for the writer; senders wait when it is full (backpressure).
    pub queue: usize,
    /// What opening does with corruption at rest (damage followed by valid records).
    pub on_corruption: OnCorruption,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self { epsilon_budget: None, max_samples_per_edge: None, max_bytes_per_edge: None, segment_bytes: 256 << 20, max_batch: 256, queue: 256, on_corruption: OnCorruption::Refuse }
    }
}

/// A validated sample to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Upload {
    pub edge: String,
    pub sample_id: String,
    /// ε of the message's mechanism; `+inf` for mechanism none.
    pub epsilon: f64,
    pub labels: Vec<Label>,
    pub image_size: (u32, u32),
    pub features: Vec<u8>,
}

/// What became of an upload. `Stored` and `Duplicate` are durable when returned.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Stored,
    /// Already stored by an earlier upload; only the ε it spent was recorded.
    Duplicate,
    Refused(Refusal),
}

/// Why the store refused an upload.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("edge {edge}: ε budget exhausted: {spent} spent, this upload's ε = {epsilon} would pass the budget of {budget}")]
    EpsilonBudget { edge: String, spent: f64, epsilon: f64, budget: f64 },
    #[error("edge {edge}: quota of {max} stored samples reached")]
    Quota { edge: String, max: u64 },
    #[error("edge {edge}: quota of {max} stored feature bytes reached ({stored} stored, this sample has {bytes})")]
    ByteQuota { edge: String, max: u64, stored: u64, bytes: u64 },
}

struct Job {
    upload: Upload,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

/// The single writer of a store directory (a `LOCK` file keeps out a second one).
pub struct StoreWriter {
    tx: Option<mpsc::Sender<Job>>,
    index: Arc<Mutex<Index>>,
    writable: watch::Receiver<bool>,
    thread: Option<JoinHandle<()>>,
    _lock: File,
}

impl StoreWriter {
    /// Opens (or creates) the store in `dir`: takes the lock, replays every record ([`replay`]),
    /// sets corruption aside ([`OnCorruption::Quarantine`]) or refuses it, cuts off a torn tail of
    /// the last segment, rebuilds the index and starts the writer thread.
    pub fn open(dir: &Path, limits: StoreLimits) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(|e| StoreError::io(&lock_path, e))?;
        lock.try_lock().map_err(|_| StoreError::Locked { dir: dir.to_path_buf() })?;

        let mut index = Index::default();
        let segments = replay(dir, limits.on_corruption, |rec| index.apply(&rec))?;
        for seg in &segments {
            if !seg.corrupt.is_empty() {
                quarantine(dir, seg)?;
            }
            if let Some(torn) = &seg.torn_tail {
                tracing::warn!(segment = %seg.path.display(), at = torn.start, reason = %torn.reason, "cutting off the torn tail of the last segment");
                truncate(&seg.path, seg.valid_len - damaged_bytes(seg))?;
            }
            index.store_bytes += (seg.valid_len - damaged_bytes(seg)).max(SEGMENT_MAGIC.len() as u64);
        }
        let segments: Vec<(u64, PathBuf)> = segments.into_iter().map(|s| (s.number, s.path)).collect();
        let (number, path) = match segments.last() {
            Some((n, p)) => (*n, p.clone()),
            None => (1, dir.join(segment_name(1))),
        };
        let active = Segment::open(dir, number, &path)?;
        if segments.is_empty() {
            index.store_bytes += SEGMENT_MAGIC.len() as u64;
        }
        let index = Arc::new(Mutex::new(index));
        let (tx, rx) = mpsc::channel(limits.queue.max(1));
        let thread_index = Arc::clone(&index);
        let (writable_tx, writable) = watch::channel(true);
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_loop(rx, active, thread_index, writable_tx, limits))
            .map_err(|e| StoreError::io(dir, e))?;
        Ok(Self { tx: Some(tx), index, writable, thread: Some(thread), _lock: lock })
    }

    /// Stores `upload`; resolves once the decision is durable. Waits while the queue is full.
    pub async fn submit(&self, upload: Upload) -> Result<Outcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        let tx = self.tx.as_ref().ok_or(StoreError::Closed)?;
        tx.send(Job { upload, reply }).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Uploads queued for the writer thread, not yet taken into a batch.
    pub fn queue_depth(&self) -> usize {
        self.tx.as_ref().map_or(0, |tx| tx.max_capacity() - tx.capacity())
    }

    /// Whether the last batch was durable: false from a failed write or fsync until a batch is
    /// durable again (or for good, when the failed write could not be rolled back).
    pub fn writable(&self) -> watch::Receiver<bool> {
        self.writable.clone()
    }

    /// The index as of the last fsync'd batch.
    pub fn index(&self) -> MutexGuard<'_, Index> {
        lock(&self.index)
    }

    /// Stops accepting uploads, finishes the queued ones and joins the writer thread.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock(index: &Mutex<Index>) -> MutexGuard<'_, Index> {
    index.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Bytes of `seg`'s corrupt spans (all before `valid_len`).
fn damaged_bytes(seg: &SegmentState) -> u64 {
    seg.corrupt.iter().map(|d| d.end - d.start).sum()
}

/// Sets the corrupt spans of `seg` aside: each is written to `quarantine/seg-N-at-OFFSET.bin`
/// (fsync'd) before the segment is rewritten, through a temporary file and a rename, with its
/// valid records alone.
fn quarantine(dir: &Path, seg: &SegmentState) -> Result<(), StoreError> {
    let bytes = std::fs::read(&seg.path).map_err(|e| StoreError::io(&seg.path, e))?;
    let qdir = dir.join("quarantine");
    std::fs::create_dir_all(&qdir).map_err(|e| StoreError::io(&qdir, e))?;
    let mut kept = Vec::with_capacity(bytes.len());
    let mut from = 0usize;
    for d in &seg.corrupt {
        let (start, end) = (d.start as usize, d.end as usize);
        let out = qdir.join(format!("seg-{:08}-at-{start}.bin", seg.number));
        let mut f = File::create(&out).map_err(|e| StoreError::io(&out, e))?;
        f.write_all(&bytes[start..end]).and_then(|()| f.sync_all()).map_err(|e| StoreError::io(&out, e))?;
        tracing::warn!(segment = %seg.path.display(), at = start, bytes = end - start, reason = %d.reason, quarantined = %out.display(), "corrupt bytes set aside; the valid records after them are kept");
        kept.extend_from_slice(&bytes[from..start]);
        from = end;
    }
    kept.extend_from_slice(&bytes[from..]);
    sync_dir(&qdir)?;
    let tmp = seg.path.with_extension("rewrite");
    let mut f = File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
    f.write_all(&kept).and_then(|()| f.sync_all()).map_err(|e| StoreError::io(&tmp, e))?;
    std::fs::rename(&tmp, &seg.path).map_err(|e| StoreError::io(&seg.path, e))?;
    sync_dir(dir)
}

fn truncate(path: &Path, len: u64) -> Result<(), StoreError> {
    let file = OpenOptions::new().write(true).open(path).map_err(|e| StoreError::io(path, e))?;
    file.set_len(len).map_err(|e| StoreError::io(path, e))?;
    file.sync_all().map_err(|e| StoreError::io(path, e))
}

/// The segment being appended to.
struct Segment {
    dir: PathBuf,
    number: u64,
    path: PathBuf,
    file: File,
    len: u64,
}

impl Segment {
    /// Opens segment `number` at `path` for appending, writing its magic if it has none yet.
    fn open(dir: &Path, number: u64, path: &Path) -> Result<Self, StoreError> {
        let io = |e| StoreError::io(path, e);
        let mut file = OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
        let mut len = file.metadata().map_err(io)?.len();
        if len < SEGMENT_MAGIC.len() as u64 {
            // New, or an earlier roll that failed while writing the magic.
            file.set_len(0).map_err(io)?;
            file.write_all(SEGMENT_MAGIC).map_err(io)?;
            file.sync_all().map_err(io)?;
            sync_dir(dir)?;
            len = SEGMENT_MAGIC.len() as u64;
        }
        Ok(Self { dir: dir.to_path_buf(), number, path: path.to_path_buf(), file, len })
    }

    /// Appends `bytes` and fsyncs them.
    fn append(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let io = |e| StoreError::io(&self.path, e);
        self.file.write_all(bytes).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Cuts off whatever a failed [`append`](Self::append) may have left after the last durable
    /// byte, and makes the cut durable.
    fn roll_back(&mut self) -> Result<(), StoreError> {
        let io = |e| StoreError::io(&self.path, e);
        self.file.set_len(self.len).map_err(io)?;
        self.file.sync_all().map_err(io)
    }

    /// The next segment.
    fn roll(&self) -> Result<Self, StoreError> {
        let number = self.number + 1;
        Self::open(&self.dir, number, &self.dir.join(segment_name(number)))
    }
}

/// Makes a new file's directory entry durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StoreError::io(dir, e))
}

fn write_loop(mut rx: mpsc::Receiver<Job>, mut active: Segment, index: Arc<Mutex<Index>>, writable: watch::Sender<bool>, limits: StoreLimits) {
    let mut poisoned: Option<String> = None;
    // One buffer for every batch's frames: each record's features are copied once, into it.
    let mut bytes = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < limits.max_batch.max(1) {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        if let Some(reason) = &poisoned {
            for job in jobs {
                let _ = job.reply.send(Err(StoreError::Poisoned(reason.clone())));
            }
            continue;
        }
        let decisions = decide(&lock(&index), &jobs, &limits);
        let mut replies = Vec::with_capacity(jobs.len());
        let mut records = Vec::with_capacity(jobs.len());
        bytes.clear();
        for (job, outcome) in jobs.into_iter().zip(decisions) {
            let kind = match outcome {
                Outcome::Stored => Some(RecordKind::Sample),
                Outcome::Duplicate => Some(RecordKind::Spend),
                Outcome::Refused(_) => None,
            };
            if let Some(kind) = kind {
                let record = Record::of(kind, job.upload);
                record.write_frame(&mut bytes);
                records.push(record);
            }
            replies.push((job.reply, outcome));
        }
        let started = Instant::now();
        let written = if bytes.is_empty() {
            Ok(())
        } else if active.len > SEGMENT_MAGIC.len() as u64 && active.len + bytes.len() as u64 > limits.segment_bytes {
            active.roll().and_then(|next| {
                active = next;
                lock(&index).store_bytes += SEGMENT_MAGIC.len() as u64;
                active.append(&bytes)
            })
        } else {
            active.append(&bytes)
        };
        match written {
            Ok(()) => {
                tracing::debug!(records = records.len(), answered = replies.len(), bytes = bytes.len(), write_fsync_us = started.elapsed().as_micros() as u64, "batch durable");
                let mut idx = lock(&index);
                idx.store_bytes += bytes.len() as u64;
                for rec in &records {
                    idx.apply(rec);
                }
                drop(idx);
                // Writable again before anyone hears of the write, so health never lags an ack.
                if !*writable.borrow() {
                    tracing::info!(segment = %active.path.display(), "store writable again");
                    writable.send_replace(true);
                }
                for (reply, outcome) in replies {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                let reason = e.to_string();
                writable.send_if_modified(|ok| std::mem::replace(ok, false));
                // What the failed write left after the last durable byte is cut off; everything
                // before it was fsync'd by earlier batches. If even that fails, the file's state is
                // unknown: refuse everything until a restart replays what is on disk.
                let refusal = match active.roll_back() {
                    Ok(()) => {
                        tracing::error!(%reason, segment = %active.path.display(), len = active.len, "store write failed and was rolled back; the next batch tries again");
                        StoreError::WriteFailed
                    }
                    Err(cut) => {
                        tracing::error!(%reason, rollback = %cut, "store write failed and could not be rolled back; refusing all further uploads");
                        poisoned = Some(format!("{reason}; rolling it back failed: {cut}"));
                        StoreError::Poisoned
                    }
                };
                for (reply, _) in replies {
                    let _ = reply.send(Err(refusal(reason.clone())));
                }
            }
        }
        // One batch of large samples must not keep its buffer for the life of the server.
        if bytes.capacity() > KEEP_BATCH_BUFFER {
            bytes = Vec::new();
        }
    }
}

/// Decides each job of a batch in order, against the index plus the batch's earlier decisions.
fn decide(index: &Index, jobs: &[Job], limits: &StoreLimits) -> Vec<Outcome> {
    let mut new_keys: HashSet<(&str, &str)> = HashSet::new();
    // Per edge: samples, ε and feature bytes that earlier jobs of this batch add.
    let mut added: HashMap<&str, (u64, f64, u64)> = HashMap::new();
    jobs.iter()
        .map(|job| {
            let u = &job.upload;
            let ledger = index.edges.get(&u.edge);
            let (new_samples, new_eps, new_bytes) = added.get(u.edge.as_str()).copied().unwrap_or((0, 0.0, 0));
            let spent = ledger.map_or(0.0, |l| l.epsilon_spent()) + new_eps;
            let stored = ledger.is_some_and(|l| l.contains(&u.sample_id)) || new_keys.contains(&(u.edge.as_str(), u.sample_id.as_str()));
            let samples = ledger.map_or(0, |l| l.samples) + new_samples;
            let feature_bytes = ledger.map_or(0, |l| l.feature_bytes) + new_bytes;
            if let Some(why) = refusal(limits, u, spent, stored, samples, feature_bytes) {
                return Outcome::Refused(why);
            }
            let entry = added.entry(u.edge.as_str()).or_default();
            entry.1 += u.epsilon;
            if stored {
                Outcome::Duplicate
            } else {
                entry.0 += 1;
                entry.2 += u.features.len() as u64;
                new_keys.insert((u.edge.as_str(), u.sample_id.as_str()));
                Outcome::Stored
            }
        })
        .collect()
}

/// Why `limits` refuse upload `u` of an edge that has spent `spent` ε and stored `samples` samples
/// of `feature_bytes` bytes; `stored`: the sample is stored already (a re-upload, which only the ε
/// budget can refuse). The one rule both backends apply.
pub(crate) fn refusal(limits: &StoreLimits, u: &Upload, spent: f64, stored: bool, samples: u64, feature_bytes: u64) -> Option<Refusal> {
    if let Some(budget) = limits.epsilon_budget
        && spent + u.epsilon > budget
    {
        return Some(Refusal::EpsilonBudget { edge: u.edge.clone(), spent, epsilon: u.epsilon, budget });
    }
    if stored {
        return None;
    }
    if let Some(max) = limits.max_samples_per_edge
        && samples >= max
    {
        return Some(Refusal::Quota { edge: u.edge.clone(), max });
    }
    let bytes = u.features.len() as u64;
    if let Some(max) = limits.max_bytes_per_edge
        && feature_bytes + bytes > max
    {
        return Some(Refusal::ByteQuota { edge: u.edge.clone(), max, stored: feature_bytes, bytes });
    }
    None
}

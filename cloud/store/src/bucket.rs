//! The feature store in a bucket of an S3-protocol object store (`--store s3://bucket/prefix`), which
//! several `serve` replicas share: exactly once per (edge, sample id) and an exact ε budget hold
//! across them because the object store, not a replica, decides every race.
//!
//! Objects under the prefix (edge names and sample ids as lowercase hex of their UTF-8, which keeps
//! their byte order and any character out of the keys):
//!
//! - `samples/EDGE/SAMPLE`: one framed, checksummed [`Record`] of kind Sample, written
//!   **create-if-absent** (`If-None-Match: *`): of two replicas storing one sample, one writes it
//!   and the other finds it there (a duplicate).
//! - `ledger/EDGE`: the edge's [`EdgeTotals`] (JSON), replaced **compare-and-swap** (`If-Match`
//!   its ETag, create-if-absent for the first): an upload's ε is added there, against the budget,
//!   before its sample is written, so no interleaving of replicas spends past the budget.
//! - `spends/EDGE/SAMPLE/NNNNNNNNNNNNNNNNNNNN-BITS`: an empty object per accepted upload, its upload
//!   number and ε (`f64` bits) in the name: the per-sample ledger, listed without a read per upload.
//!
//! A replica killed between its ledger update and its sample write leaves an upload counted that
//! stored nothing (its edge, never acknowledged, sends it again and it is counted again): the ledger
//! can count too much ε, samples and bytes, never too little. The server must support conditional
//! writes (S3 does since 2024; MinIO, R2 and others do): [`BucketWriter::open`] checks it and refuses
//! a server that overwrites.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use tokio::sync::watch;
use url::Url;

use super::ledger::EdgeTotals;
use super::record::{Record, RecordKind};
use super::replay::OnCorruption;
use super::segment::frame_at;
use super::writer::{Outcome, StoreLimits, Upload, refusal};
use super::{StoreError, StoredSample};

/// Compare-and-swap attempts on an edge's ledger before an upload gives up (each loses only to
/// another replica's write of the same edge's ledger).
const MAX_LEDGER_ATTEMPTS: u32 = 64;
/// Objects requested at once when many are read (samples, or every edge's ledger): an object store
/// answers each in milliseconds to tens of them, so one after another a large store would take minutes.
const READS_AT_ONCE: usize = 16;

/// A bucket and key prefix, connected (no request is made until one is needed).
#[derive(Debug, Clone)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: Key,
    url: String,
    /// `s3://BUCKET`, which an object's key completes into its name in errors and logs.
    origin: String,
}

impl Bucket {
    /// The bucket `url` names (`s3://BUCKET/PREFIX`), configured from the `AWS_*` environment
    /// (`AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint).
    pub fn connect(url: &Url) -> Result<Self, StoreError> {
        // reqwest's rustls takes the process's crypto provider: ring, as tonic's TLS.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = AmazonS3Builder::from_env().with_url(url.as_str()).build().map_err(|e| remote(url.as_str(), e))?;
        let prefix = Key::from(url.path().trim_matches('/'));
        let origin = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
        Ok(Self { store: Arc::new(store), prefix, url: url.to_string(), origin })
    }

    /// The full name of the object at `key`, for errors.
    fn name(&self, key: &Key) -> PathBuf {
        PathBuf::from(format!("{}/{key}", self.origin))
    }

    fn key(&self, parts: &[&str]) -> Key {
        parts.iter().fold(self.prefix.clone(), |k, p| k.join(*p))
    }

    fn sample_key(&self, edge: &str, sample_id: &str) -> Key {
        self.key(&["samples", &hex::encode(edge), &hex::encode(sample_id)])
    }

    fn ledger_key(&self, edge: &str) -> Key {
        self.key(&["ledger", &hex::encode(edge)])
    }

    fn err(&self, e: object_store::Error) -> StoreError {
        remote(&self.url, e)
    }

    /// The key of every stored sample, in key order (edge, then sample id, by bytes).
    pub async fn sample_keys(&self) -> Result<Vec<Key>, StoreError> {
        self.store.list(Some(&self.key(&["samples"]))).map_ok(|m| m.location).try_collect().await.map_err(|e| self.err(e))
    }

    /// The sample stored at `key`, checked: its frame whole and its checksum right, its edge and
    /// sample id those its key names. `Err` says what is wrong with it.
    pub async fn read_sample(&self, key: &Key) -> Result<StoredSample, StoreError> {
        let bytes = self.store.get(key).await.map_err(|e| self.err(e))?.bytes().await.map_err(|e| self.err(e))?;
        let corrupt = |reason: String| StoreError::Corrupt { file: self.name(key), offset: 0, reason };
        let (rec, len) = frame_at(&bytes, 0).map_err(|why| corrupt(format!("the record {why}")))?;
        if len != bytes.len() {
            return Err(corrupt(format!("{} bytes after the record", bytes.len() - len)));
        }
        if rec.kind != RecordKind::Sample || self.sample_key(&rec.edge, &rec.sample_id) != *key {
            return Err(corrupt(format!("holds sample {:?} of edge {:?}, not the one its name says", rec.sample_id, rec.edge)));
        }
        Ok(StoredSample { edge: rec.edge, sample_id: rec.sample_id, features: rec.features, labels: rec.labels, image_size: rec.image_size })
    }

    /// Reads the samples at `keys`, in their order, [`READS_AT_ONCE`] requests at a time; a damaged
    /// one stops the read ([`OnCorruption::Refuse`]) or is skipped with a warning
    /// ([`OnCorruption::Quarantine`]: left in place, never deleted).
    pub async fn read_samples(&self, keys: &[Key], on_corruption: OnCorruption) -> Result<Vec<StoredSample>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        let mut reads = futures::stream::iter(keys.iter().cloned()).map(|key| async move { self.read_sample(&key).await }).buffered(READS_AT_ONCE);
        while let Some(read) = reads.next().await {
            match read {
                Ok(s) => out.push(s),
                Err(StoreError::Corrupt { file, reason, .. }) if on_corruption == OnCorruption::Quarantine => {
                    tracing::warn!(object = %file.display(), %reason, "skipping a damaged sample; the others are read");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The edge's totals and the version to replace them at (`None`: no ledger yet).
    async fn ledger(&self, edge: &str) -> Result<(EdgeTotals, Option<UpdateVersion>), StoreError> {
        let key = self.ledger_key(edge);
        let got = match self.store.get(&key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok((EdgeTotals::default(), None)),
            Err(e) => return Err(self.err(e)),
        };
        let version = UpdateVersion { e_tag: got.meta.e_tag.clone(), version: got.meta.version.clone() };
        let bytes = got.bytes().await.map_err(|e| self.err(e))?;
        let totals = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt { file: self.name(&key), offset: 0, reason: format!("the ledger does not parse: {e}") })?;
        Ok((totals, Some(version)))
    }

    /// Every edge's totals, or `only`'s.
    pub async fn edges(&self, only: Option<&str>) -> Result<BTreeMap<String, EdgeTotals>, StoreError> {
        let names: Vec<String> = match only {
            Some(edge) => vec![edge.to_string()],
            None => {
                let keys: Vec<Key> = self.store.list(Some(&self.key(&["ledger"]))).map_ok(|m| m.location).try_collect().await.map_err(|e| self.err(e))?;
                keys.iter().filter_map(|k| k.filename().and_then(unhex)).collect()
            }
        };
        let mut out = BTreeMap::new();
        let mut reads = futures::stream::iter(names).map(|edge| async move { (self.ledger(&edge).await, edge) }).buffer_unordered(READS_AT_ONCE);
        while let Some((read, edge)) = reads.next().await {
            let (totals, version) = read?;
            if version.is_some() {
                out.insert(edge, totals);
            }
        }
        Ok(out)
    }

    /// Up to `n` of `edge`'s stored sample ids after `after` (in byte order) with the ε of each
    /// of their accepted uploads, and whether more follow.
    pub async fn sample_page(&self, edge: &str, after: &str, n: usize) -> Result<(Vec<(String, Vec<f64>)>, bool), StoreError> {
        let prefix = self.key(&["spends", &hex::encode(edge)]);
        // 'z' sorts after every hex digit and '-', so the offset passes all of `after`'s spends.
        let offset = if after.is_empty() { prefix.clone() } else { Key::from(format!("{prefix}/{}/z", hex::encode(after))) };
        let mut listing = self.store.list_with_offset(Some(&prefix), &offset);
        let mut page: Vec<(String, Vec<f64>)> = Vec::new();
        while let Some(meta) = listing.try_next().await.map_err(|e| self.err(e))? {
            let parts: Vec<_> = meta.location.parts().collect();
            let [.., sample, spend] = parts.as_slice() else { continue };
            let (Some(sample), Some(epsilon)) = (unhex(sample.as_ref()), spend_epsilon(spend.as_ref())) else {
                tracing::warn!(object = %meta.location, "an object that is no spend record under spends/: ignored");
                continue;
            };
            if let Some((id, eps)) = page.last_mut()
                && *id == sample
            {
                eps.push(epsilon);
            } else if page.len() == n {
                return Ok((page, true));
            } else {
                page.push((sample, vec![epsilon]));
            }
        }
        Ok((page, false))
    }

    /// Adds `u` to its edge's ledger unless `limits` refuse it; `stored`: the sample is stored
    /// already. The totals written (`uploads` is this upload's number among the edge's accepted
    /// ones), or the refusal.
    async fn spend(&self, u: &Upload, stored: bool, limits: &StoreLimits) -> Result<Result<EdgeTotals, Outcome>, StoreError> {
        self.update_ledger(&u.edge, |totals| {
            if let Some(why) = refusal(limits, u, totals.epsilon_spent(), stored, totals.samples, totals.feature_bytes) {
                return Err(Outcome::Refused(why));
            }
            add(totals, u, stored);
            Ok(())
        })
        .await
    }

    /// Takes a sample's count and bytes back out of its edge's ledger (the sample turned out to be
    /// stored already, by another replica, after [`Bucket::spend`] counted it as new).
    async fn unstore(&self, u: &Upload) -> Result<(), StoreError> {
        let bytes = u.features.len() as u64;
        let corrected = self.update_ledger(&u.edge, |totals| {
            totals.samples = totals.samples.saturating_sub(1);
            totals.feature_bytes = totals.feature_bytes.saturating_sub(bytes);
            Ok(())
        });
        corrected.await.map(|_| ())
    }

    /// Applies `change` to `edge`'s ledger, compare-and-swap: read it with its ETag, change it,
    /// write it back `If-Match` that ETag (`If-None-Match: *` for an edge's first), and on 412
    /// (another replica wrote first) read it again. `change` may refuse, and then nothing is written.
    async fn update_ledger(&self, edge: &str, mut change: impl FnMut(&mut EdgeTotals) -> Result<(), Outcome>) -> Result<Result<EdgeTotals, Outcome>, StoreError> {
        for attempt in 0..MAX_LEDGER_ATTEMPTS {
            let (mut totals, version) = self.ledger(edge).await?;
            if let Err(refused) = change(&mut totals) {
                return Ok(Err(refused));
            }
            let mode = version.map_or(PutMode::Create, PutMode::Update);
            let body = PutPayload::from(serde_json::to_vec(&totals).expect("totals serialize"));
            match self.store.put_opts(&self.ledger_key(edge), body, PutOptions::from(mode)).await {
                Ok(_) => return Ok(Ok(totals)),
                Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => {
                    tokio::time::sleep(Duration::from_millis(u64::from(attempt.min(6)) * 5)).await;
                }
                Err(e) => return Err(self.err(e)),
            }
        }
        Err(StoreError::WriteFailed(format!("edge {edge}: its ledger kept changing under {MAX_LEDGER_ATTEMPTS} attempts to update it")))
    }

    /// Writes `body` at `key` only if nothing is there; whether it was written.
    async fn create(&self, key: &Key, body: Vec<u8>) -> Result<bool, StoreError> {
        match self.store.put_opts(key, PutPayload::from(body), PutOptions::from(PutMode::Create)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }
}

fn remote(url: &str, source: object_store::Error) -> StoreError {
    StoreError::Remote { url: url.to_string(), source: Box::new(source) }
}

fn unhex(s: &str) -> Option<String> {
    hex::decode(s).ok().and_then(|b| String::from_utf8(b).ok())
}

fn spend_name(upload: u64, epsilon: f64) -> String {
    format!("{upload:020}-{:016x}", epsilon.to_bits())
}

fn spend_epsilon(name: &str) -> Option<f64> {
    let (_, bits) = name.split_once('-')?;
    u64::from_str_radix(bits, 16).ok().map(f64::from_bits)
}

/// Counts upload `u` in `totals` as the local store's index does.
fn add(totals: &mut EdgeTotals, u: &Upload, stored: bool) {
    totals.uploads += 1;
    if u.epsilon.is_finite() {
        totals.epsilon_total += u.epsilon;
    } else {
        totals.uploads_without_privacy += 1;
    }
    if !stored {
        totals.samples += 1;
        totals.feature_bytes += u.features.len() as u64;
    }
}

/// The ingest side of a bucket store: any number of them, in any number of processes, may write
/// one bucket at once. See the module docs.
pub struct BucketWriter {
    bucket: Bucket,
    limits: StoreLimits,
    in_flight: AtomicUsize,
    writable: watch::Sender<bool>,
    /// The totals of each edge as this writer last read or wrote them (for metrics).
    seen: Mutex<BTreeMap<String, EdgeTotals>>,
}

impl BucketWriter {
    /// A writer of the bucket `url` names, after checking that the server refuses to overwrite an
    /// object written create-if-absent (without that, exactly once cannot hold).
    pub async fn open(url: &Url, limits: StoreLimits) -> Result<Self, StoreError> {
        let bucket = Bucket::connect(url)?;
        let probe = bucket.key(&["probe", &format!("{:016x}", rand::random::<u64>())]);
        let first = bucket.create(&probe, b"1".to_vec()).await?;
        let second = bucket.create(&probe, b"2".to_vec()).await?;
        if let Err(e) = bucket.store.delete(&probe).await {
            tracing::warn!(object = %probe, error = %e, "could not delete the probe object");
        }
        if !first || second {
            return Err(StoreError::WriteFailed(format!(
                "{url}: the object store does not refuse to overwrite an object written with If-None-Match: * (conditional writes unsupported): exactly once cannot hold on it"
            )));
        }
        let seen = Mutex::new(bucket.edges(None).await?);
        Ok(Self { bucket, limits, in_flight: AtomicUsize::new(0), writable: watch::channel(true).0, seen })
    }

    /// Stores `upload`; resolves once the decision is durable in the bucket.
    pub async fn submit(&self, upload: Upload) -> Result<Outcome, StoreError> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let outcome = self.store(upload).await;
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.writable.send_replace(!matches!(outcome, Err(StoreError::Remote { .. })));
        outcome
    }

    async fn store(&self, u: Upload) -> Result<Outcome, StoreError> {
        let key = self.bucket.sample_key(&u.edge, &u.sample_id);
        let stored = match self.bucket.store.head(&key).await {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => return Err(self.bucket.err(e)),
        };
        let mut totals = match self.bucket.spend(&u, stored, &self.limits).await? {
            Ok(totals) => totals,
            Err(refused) => return Ok(refused),
        };
        let spend = self.bucket.key(&["spends", &hex::encode(&u.edge), &hex::encode(&u.sample_id), &spend_name(totals.uploads, u.epsilon)]);
        self.bucket.create(&spend, Vec::new()).await?;
        let outcome = if stored {
            Outcome::Duplicate
        } else if self.bucket.create(&key, Record::of(RecordKind::Sample, u.clone()).to_frame()).await? {
            Outcome::Stored
        } else {
            self.bucket.unstore(&u).await?;
            totals.samples -= 1;
            totals.feature_bytes -= u.features.len() as u64;
            Outcome::Duplicate
        };
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).insert(u.edge, totals);
        Ok(outcome)
    }

    pub fn bucket(&self) -> &Bucket {
        &self.bucket
    }

    /// Uploads being written now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// False from a failed request to the object store until one succeeds again.
    pub fn writable(&self) -> watch::Receiver<bool> {
        self.writable.subscribe()
    }

    /// Each edge's totals as this writer last saw them (other replicas' uploads since not included).
    pub fn seen(&self) -> BTreeMap<String, EdgeTotals> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A bucket read from synchronous code (the trainer): requests run on a runtime of its own, from a
/// thread of their own, so any caller, inside an async runtime or not, may block on them.
pub struct BucketReader {
    bucket: Bucket,
    runtime: tokio::runtime::Runtime,
}

impl BucketReader {
    pub fn connect(url: &Url) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bucket-reader")
            .enable_all()
            .build()
            .map_err(|e| StoreError::io(url.as_str(), e))?;
        Ok(Self { bucket: Bucket::connect(url)?, runtime })
    }

    fn run<T: Send>(&self, f: impl Future<Output = T> + Send) -> T {
        std::thread::scope(|s| s.spawn(|| self.runtime.block_on(f)).join().expect("a bucket request panicked"))
    }

    pub fn sample_keys(&self) -> Result<Vec<Key>, StoreError> {
        self.run(self.bucket.sample_keys())
    }

    pub fn read_samples(&self, keys: &[Key], on_corruption: OnCorruption) -> Result<Vec<StoredSample>, StoreError> {
        self.run(self.bucket.read_samples(keys, on_corruption))
    }
}

impl std::fmt::Debug for BucketReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketReader").field("url", &self.bucket.url).finish()
    }
}

/// Reads a bucket that writers are adding to (`train --follow`): each poll lists the samples and
/// reads those not read before. A sample object appears whole or not at all.
#[derive(Debug)]
pub struct BucketFollower {
    reader: BucketReader,
    on_corruption: OnCorruption,
    /// Every sample object listed so far (a damaged one too: it is not read again).
    listed: HashSet<Key>,
    returned: usize,
}

impl BucketFollower {
    pub fn new(url: &Url, on_corruption: OnCorruption) -> Result<Self, StoreError> {
        Ok(Self { reader: BucketReader::connect(url)?, on_corruption, listed: HashSet::new(), returned: 0 })
    }

    /// Samples returned by every poll so far.
    pub fn returned(&self) -> usize {
        self.returned
    }

    /// The samples stored since the last poll (a damaged one under [`OnCorruption::Quarantine`]
    /// is skipped once, with a warning, and not read again).
    pub fn poll(&mut self) -> Result<Vec<StoredSample>, StoreError> {
        let new: Vec<Key> = self.reader.sample_keys()?.into_iter().filter(|k| !self.listed.contains(k)).collect();
        let samples = self.reader.read_samples(&new, self.on_corruption)?;
        self.listed.extend(new);
        self.returned += samples.len();
        Ok(samples)
    }
}

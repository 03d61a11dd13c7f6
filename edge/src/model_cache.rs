//! The trained detector from the cloud (`GetModel`), cached on disk by the hash of its tensors
//! (`CACHE/model/<hash>/model.safetensors`) and verified before every use.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use candle_core::{Device, Tensor};
use mistnet::codec::FrontHash;
use mistnet::model::weights::hash_tensors;
use mistnet_proto::client::Client as Cloud;
use mistnet_proto::pb::{self, model_distribution_client::ModelDistributionClient};
use tonic::Code;

use crate::cache::{Entries, rename_durably};

/// Largest model accepted from a cloud (yolov5x in f32 is about 350 MB).
pub const MAX_MODEL_BYTES: u64 = 2 << 30;

/// Where the model came from.
pub enum Source {
    /// Downloaded now, this many bytes.
    Fetched(u64),
    /// The cached copy is the one the cloud serves.
    Cached,
    /// The cloud could not be reached; the copy fetched last is used.
    Offline(String),
}

/// A verified model file in the cache.
pub struct CachedModel {
    pub path: PathBuf,
    pub sha256: FrontHash,
    pub source: Source,
}

/// The model the cloud serves, fetched into `cache` unless the cache has it already. When the
/// cloud cannot be reached (UNAVAILABLE, a timeout), the model fetched last is used; a refusal
/// (a bad token, no model served) is an error.
pub async fn fetch(cloud: &Cloud, cache: &Path) -> Result<CachedModel> {
    let entries = Entries::new(cache, "model", "model.safetensors");
    // A cached copy that no longer verifies (a flipped bit at rest) is dropped and fetched again.
    let cached = entries.latest().filter(|hash| verified(&entries, hash));
    let reached = async {
        let channel = cloud.connect().await.map_err(|e| tonic::Status::unavailable(format!("{e:#}")))?;
        download(cloud, channel, &entries, cached.as_ref()).await
    };
    match reached.await {
        Ok(model) => Ok(model),
        Err(status) if matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) => match cached {
            Some(sha256) => {
                let why = status.message().to_string();
                Ok(CachedModel { path: entries.file(&sha256), sha256, source: Source::Offline(why) })
            }
            None => bail!("cannot fetch the model: {}: {} (and none is cached in {})", status.code(), status.message(), cache.display()),
        },
        Err(status) => bail!("GetModel refused: {}: {}", status.code(), status.message()),
    }
}

/// One `GetModel` call: the header, then (unless `cached` is the served model) the file, written
/// to a `.part` file, checked against the header's size and hash, and renamed into place.
async fn download(cloud: &Cloud, channel: tonic::transport::Channel, entries: &Entries, cached: Option<&FrontHash>) -> Result<CachedModel, tonic::Status> {
    let invalid = |why: String| tonic::Status::data_loss(why);
    let local = |e: anyhow::Error| tonic::Status::internal(format!("{e:#}"));
    let mut client = ModelDistributionClient::new(channel);
    let request = pb::GetModelRequest { cached_hash: cached.map(|h| h.to_string()).unwrap_or_default() };
    let mut stream = client.get_model(cloud.request(request)).await?.into_inner();
    let header = stream.message().await?.ok_or_else(|| invalid("GetModel ended before its first chunk".into()))?;
    let sha256: FrontHash = header.model_sha256.parse().map_err(|_| invalid(format!("the cloud sent a malformed model hash {:?}", header.model_sha256)))?;
    if !header.data.is_empty() {
        return Err(invalid("GetModel's first chunk carries data".into()));
    }
    if cached == Some(&sha256) {
        if stream.message().await?.is_some() {
            return Err(invalid("GetModel sent data for the model the edge has cached".into()));
        }
        return Ok(CachedModel { path: entries.file(&sha256), sha256, source: Source::Cached });
    }
    let total = header.total_bytes;
    if total == 0 || total > MAX_MODEL_BYTES {
        return Err(invalid(format!("the cloud announced a model of {total} bytes (accepted: 1 to {MAX_MODEL_BYTES})")));
    }
    let dir = entries.dir(&sha256);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display())).map_err(local)?;
    let path = entries.file(&sha256);
    let part = path.with_extension("safetensors.part");
    let mut file = std::fs::File::create(&part).with_context(|| format!("cannot write {}", part.display())).map_err(local)?;
    let mut written = 0u64;
    while let Some(chunk) = stream.message().await? {
        if chunk.offset != written {
            return Err(invalid(format!("GetModel chunk at byte {} where byte {written} was expected", chunk.offset)));
        }
        written += chunk.data.len() as u64;
        if written > total {
            return Err(invalid(format!("GetModel sent more than the {total} bytes it announced")));
        }
        file.write_all(&chunk.data).with_context(|| format!("cannot write {}", part.display())).map_err(local)?;
    }
    if written != total {
        return Err(invalid(format!("GetModel ended after {written} of {total} bytes")));
    }
    file.sync_all().with_context(|| format!("cannot write {}", part.display())).map_err(local)?;
    drop(file);
    let got = model_hash(&part).map_err(local)?;
    if got != sha256 {
        let _ = std::fs::remove_file(&part);
        return Err(invalid(format!("the model sent hashes to {got}, the cloud says {sha256}; not kept")));
    }
    rename_durably(&part, &path).map_err(local)?;
    entries.set_latest(&sha256).map_err(local)?;
    Ok(CachedModel { path, sha256, source: Source::Fetched(total) })
}

/// Whether the cached entry `hash` still hashes to its name; removes it when it does not.
fn verified(entries: &Entries, hash: &FrontHash) -> bool {
    match model_hash(&entries.file(hash)) {
        Ok(got) if got == *hash => true,
        outcome => {
            let why = match outcome {
                Ok(got) => format!("it hashes to {got}"),
                Err(e) => format!("{e:#}"),
            };
            tracing::warn!(entry = %entries.dir(hash).display(), %why, "the cached model is damaged; removing it and fetching it again");
            let _ = std::fs::remove_dir_all(entries.dir(hash));
            false
        }
    }
}

/// The hash `export` pins a model by: its tensors by name ([`hash_tensors`]).
fn model_hash(path: &Path) -> Result<FrontHash> {
    let tensors: BTreeMap<String, Tensor> =
        candle_core::safetensors::load(path, &Device::Cpu).with_context(|| format!("{} is not a safetensors file", path.display()))?.into_iter().collect();
    ensure!(!tensors.is_empty(), "{} holds no tensors", path.display());
    Ok(hash_tensors(tensors.iter())?)
}

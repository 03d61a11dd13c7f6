//! Fetching the Front from the cloud, cached on disk by its hash and verified on load.

use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::Device;
use mistnet::codec::FrontHash;
use mistnet::model::{Front, ModelConfig, ParamStore};
use mistnet_proto::MAX_MESSAGE_BYTES;
use mistnet_proto::pb::{self, front_distribution_client::FrontDistributionClient};
use tonic::transport::Channel;

use mistnet_proto::client::Client as Cloud;

/// The Front to run and the geometry the cloud expects.
pub struct ServedFront {
    pub front: Front,
    pub imgsz: u32,
    /// The served model's class names (empty from a server that does not send them).
    pub names: Vec<String>,
}

/// Asks the cloud which Front it serves; downloads it unless `cache/front/<hash>/` has it.
pub async fn fetch(cloud: &Cloud, channel: Channel, cache: &Path) -> Result<ServedFront> {
    let mut client = FrontDistributionClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let cached = latest_cached(cache);
    let reply = client
        .get_front(cloud.request(pb::GetFrontRequest { cached_hash: cached.clone().unwrap_or_default() }))
        .await
        .map_err(|s| anyhow::anyhow!("GetFront refused: {}: {}", s.code(), s.message()))?
        .into_inner();
    // The hash names a cache directory: only 64 hex digits are accepted, so no server can make the
    // edge write or remove anything outside the cache.
    let served_hash: FrontHash = reply.front_hash.parse().with_context(|| format!("the cloud sent a malformed Front hash {:?}", reply.front_hash))?;
    let dir = cache.join("front").join(served_hash.to_string());
    if !reply.weights.is_empty() {
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        write_atomic(&dir.join("model.yaml"), reply.model_yaml.as_bytes())?;
        write_atomic(&dir.join("front.safetensors"), &reply.weights)?;
        write_atomic(&cache.join("front").join("LATEST"), served_hash.to_string().as_bytes())?;
    }
    let yaml = std::fs::read_to_string(dir.join("model.yaml")).with_context(|| format!("Front cache {} is incomplete", dir.display()))?;
    let specs = ModelConfig::from_yaml(&yaml)?.layers()?;
    let store = ParamStore::open(&[dir.join("front.safetensors")])?;
    let front = Front::load(&specs, reply.cut as usize, &store, &Device::Cpu)?;
    if front.hash() != served_hash {
        let _ = std::fs::remove_dir_all(&dir);
        bail!("the Front in {} hashes to {}, the cloud says {served_hash}; removed the cache entry, run again", dir.display(), front.hash());
    }
    Ok(ServedFront { front, imgsz: reply.imgsz, names: reply.names })
}

fn latest_cached(cache: &Path) -> Option<String> {
    let hash: FrontHash = std::fs::read_to_string(cache.join("front").join("LATEST")).ok()?.trim().parse().ok()?;
    cache.join("front").join(hash.to_string()).join("front.safetensors").exists().then(|| hash.to_string())
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
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("cannot sync {}", dir.display()))?;
    }
    Ok(())
}

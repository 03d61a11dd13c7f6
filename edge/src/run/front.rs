//! Fetching the Front from the cloud, cached on disk by its hash and verified on load.

use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::Device;
use mistnet::model::{Front, ModelConfig, ParamStore};
use mistnet_proto::MAX_MESSAGE_BYTES;
use mistnet_proto::pb::{self, front_distribution_client::FrontDistributionClient};
use tonic::transport::Channel;

use super::connect::Cloud;

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
    let dir = cache.join("front").join(&reply.front_hash);
    if !reply.weights.is_empty() {
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        write_atomic(&dir.join("model.yaml"), reply.model_yaml.as_bytes())?;
        write_atomic(&dir.join("front.safetensors"), &reply.weights)?;
        write_atomic(&cache.join("front").join("LATEST"), reply.front_hash.as_bytes())?;
    }
    let yaml = std::fs::read_to_string(dir.join("model.yaml")).with_context(|| format!("Front cache {} is incomplete", dir.display()))?;
    let specs = ModelConfig::from_yaml(&yaml)?.layers()?;
    let store = ParamStore::open(&[dir.join("front.safetensors")])?;
    let front = Front::load(&specs, reply.cut as usize, &store, &Device::Cpu)?;
    if front.hash() != reply.front_hash {
        let _ = std::fs::remove_dir_all(&dir);
        bail!("the Front in {} hashes to {}, the cloud says {}; removed the cache entry, run again", dir.display(), front.hash(), reply.front_hash);
    }
    Ok(ServedFront { front, imgsz: reply.imgsz, names: reply.names })
}

fn latest_cached(cache: &Path) -> Option<String> {
    let hash = std::fs::read_to_string(cache.join("front").join("LATEST")).ok()?;
    cache.join("front").join(hash.trim()).join("front.safetensors").exists().then(|| hash.trim().to_string())
}

/// Writes through a temporary file and a rename, so a crash leaves the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

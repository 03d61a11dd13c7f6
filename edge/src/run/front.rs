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

use crate::cache::{Entries, write_atomic};

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
    let entries = Entries::new(cache, "front", "front.safetensors");
    let cached = entries.latest().map(|h| h.to_string());
    let reply = client
        .get_front(cloud.request(pb::GetFrontRequest { cached_hash: cached.clone().unwrap_or_default() }))
        .await
        .map_err(|s| anyhow::anyhow!("GetFront refused: {}: {}", s.code(), s.message()))?
        .into_inner();
    // The hash names a cache directory: only 64 hex digits are accepted.
    let served_hash: FrontHash = reply.front_hash.parse().with_context(|| format!("the cloud sent a malformed Front hash {:?}", reply.front_hash))?;
    let dir = entries.dir(&served_hash);
    if !reply.weights.is_empty() {
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        write_atomic(&dir.join("model.yaml"), reply.model_yaml.as_bytes())?;
        write_atomic(&entries.file(&served_hash), &reply.weights)?;
        entries.set_latest(&served_hash)?;
    }
    let yaml = std::fs::read_to_string(dir.join("model.yaml")).with_context(|| format!("Front cache {} is incomplete", dir.display()))?;
    let specs = ModelConfig::from_yaml(&yaml)?.layers()?;
    let store = ParamStore::open(&[entries.file(&served_hash)])?;
    let front = Front::load(&specs, reply.cut as usize, &store, &Device::Cpu)?;
    if front.hash() != served_hash {
        let _ = std::fs::remove_dir_all(&dir);
        bail!("the Front in {} hashes to {}, the cloud says {served_hash}; removed the cache entry, run again", dir.display(), front.hash());
    }
    Ok(ServedFront { front, imgsz: reply.imgsz, names: reply.names })
}

//! `mistnet-edge run`: fetch the Front, extract and encode the local dataset once, stream it to the
//! cloud until every sample is acknowledged. Inference only.

mod front;
mod spool;
mod upload;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use mistnet::data::{BadDataPolicy, Dataset, Sample, Split};
use mistnet::encoder::EdgeEncoder;
use mistnet_proto::client::Client as Cloud;
use mistnet_proto::pb::{self, feature_upload_client::FeatureUploadClient};

use upload::Retry;

/// The flags of `mistnet-edge run`, defined in `mistnet-cli` so the job renders them from the same type.
pub type Args = mistnet_cli::edge::RunArgs;

pub fn run(args: Args) -> Result<()> {
    args.privacy.privacy()?; // refuse bad privacy flags before connecting
    let cloud: Cloud = args.client.client(Some(&args.edge))?;
    let samples = load_samples(&args.data, if args.skip_bad { BadDataPolicy::Skip } else { BadDataPolicy::Fail })?;
    let total = samples.len();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;

    let (served, stored) = runtime.block_on(async {
        let channel = cloud.connect().await?;
        let served = front::fetch(&cloud, channel.clone(), &args.cache).await?;
        let stored = list_stored(&cloud, channel).await?;
        anyhow::Ok((served, stored))
    })?;
    let nc = served.names.len();
    if let Some((id, class)) = samples.iter().find_map(|(id, s)| s.labels.iter().find(|l| nc > 0 && l.class >= nc).map(|l| (id, l.class))) {
        bail!("sample {id} has class {class}, but the cloud's model has {nc} classes {:?}: the dataset does not match the served model", served.names);
    }
    let mut front = served.front;
    args.precision.apply(&mut front)?;
    let encoder = EdgeEncoder::new(front, served.imgsz, args.privacy.wire(args.encoding)?)?;
    let spool_dir = spool::dir(&args.cache, &encoder);
    tracing::info!(samples = total, already_stored = stored.len(), front = %encoder.front().hash(), "starting");
    let spooled = spool::prepare(samples, &stored, &encoder, &mut args.privacy.rng()?, &spool_dir, args.skip_bad)?;

    let bar = ProgressBar::new(total as u64).with_style(
        ProgressStyle::with_template("{spinner} upload [{bar:30}] {pos}/{len} {per_sec} eta {eta}").expect("valid template").progress_chars("=> "),
    );
    bar.set_position((total - spooled.len()) as u64);
    let pending: BTreeMap<String, spool::Spooled> = spooled.into_iter().map(|s| (s.sample_id.clone(), s)).collect();
    let retry = Retry { max_attempts: args.max_attempts.max(1), base: Duration::from_millis(200), cap: Duration::from_secs(10) };
    if let Some(rate) = args.max_rate
        && !(rate.is_finite() && rate > 0.0)
    {
        bail!("--max-rate must be a positive number of samples per second, got {rate}");
    }
    let pace = args.max_rate.map(|rate| Duration::from_secs_f64(1.0 / rate));
    let uploaded = runtime.block_on(upload::upload_all(&cloud, pending, retry, pace, &bar))?;
    bar.finish_and_clear();
    let refused = &uploaded.refused;
    if !refused.is_empty() {
        for (id, why) in refused.iter().take(10) {
            eprintln!("refused {id}: {why}");
        }
        bail!("{} of {total} samples were refused by the cloud (first reasons above)", refused.len());
    }
    // Everything is acknowledged: the spool is no longer needed.
    let _ = std::fs::remove_dir_all(&spool_dir);
    let secs = uploaded.elapsed.as_secs_f64();
    println!(
        "uploaded: all {total} samples acknowledged; goodput {:.1} kB/s ({} feature bytes stored in {secs:.1} s; {} bytes sent in {} connection{})",
        uploaded.acked_bytes as f64 / secs.max(1e-9) / 1e3,
        uploaded.acked_bytes,
        uploaded.sent_bytes,
        uploaded.rounds,
        if uploaded.rounds == 1 { "" } else { "s" }
    );
    Ok(())
}

/// The train split of `data`, each sample with its edge-unique id (its image path relative to the dataset).
fn load_samples(data: &Path, policy: BadDataPolicy) -> Result<Vec<(String, Sample)>> {
    let dataset = Dataset::open(data)?;
    let loaded = dataset.load(Split::Train, policy)?;
    if !loaded.summary.skipped.is_empty() {
        eprintln!("skipped {} samples of the dataset that cannot be loaded (--skip-bad)", loaded.summary.skipped.len());
    }
    if loaded.samples.is_empty() {
        bail!("{}: the train split has no samples", data.display());
    }
    let root = dataset.source().parent().map(Path::to_path_buf).unwrap_or_default();
    let mut ids = HashSet::new();
    let mut out = Vec::with_capacity(loaded.samples.len());
    let mut bad_ids = 0usize;
    for s in loaded.samples {
        let id = s.image_path.strip_prefix(&root).unwrap_or(&s.image_path).to_string_lossy().into_owned();
        // Checked here as the cloud checks it: an id it refuses would leave an upload that never finishes.
        if let Err(why) = mistnet_proto::check_sample_id(&id) {
            match policy {
                BadDataPolicy::Skip => {
                    tracing::warn!(image = %s.image_path.display(), %why, "skipping a sample whose id the cloud would refuse (--skip-bad)");
                    bad_ids += 1;
                    continue;
                }
                BadDataPolicy::Fail => bail!("{}: {why} (the id is the image path relative to the dataset; rename it, or --skip-bad)", s.image_path.display()),
            }
        }
        if !ids.insert(id.clone()) {
            bail!("two samples share the id {id}");
        }
        out.push((id, s));
    }
    if bad_ids > 0 {
        eprintln!("skipped {bad_ids} samples whose ids the cloud would refuse (--skip-bad)");
    }
    if out.is_empty() {
        bail!("{}: no sample of the train split can be uploaded", data.display());
    }
    Ok(out)
}

async fn list_stored(cloud: &Cloud, channel: tonic::transport::Channel) -> Result<HashSet<String>> {
    let mut client = FeatureUploadClient::new(channel);
    let mut stream = client
        .list_stored(cloud.request(pb::ListStoredRequest::default()))
        .await
        .map_err(|s| anyhow::anyhow!("ListStored refused: {}: {}", s.code(), s.message()))?
        .into_inner();
    let mut ids = HashSet::new();
    while let Some(batch) = stream.message().await.map_err(|s| anyhow::anyhow!("ListStored: {}: {}", s.code(), s.message()))? {
        ids.extend(batch.sample_ids);
    }
    Ok(ids)
}

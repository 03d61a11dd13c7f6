//! Extract once: each image goes through the Front and the codec a single time, and the message is
//! kept in a spool on disk until the cloud acknowledges it. A retry or a restart re-sends the same
//! bytes instead of drawing fresh noise, which would spend ε again.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use mistnet::codec::CodecRng;
use mistnet::data::Sample;
use mistnet::encoder::EdgeEncoder;
use sha2::{Digest, Sha256};

use super::front::write_atomic;

/// A sample ready to send: its id, spooled message and labels.
#[derive(Debug, Clone)]
pub struct Spooled {
    pub sample_id: String,
    pub message: PathBuf,
    pub sample: Sample,
}

/// The spool directory of one Front and wire setting.
pub fn dir(cache: &Path, encoder: &EdgeEncoder) -> PathBuf {
    let params = encoder.params();
    let eps = params.privacy.epsilon().map_or("none".to_string(), |e| e.to_string());
    cache.join("spool").join(params.front_hash.to_string()).join(format!("{}-{eps}-{}", params.privacy.mechanism(), params.encoding))
}

/// Extracts and encodes every sample not spooled yet (skipping `done`, already stored in the cloud).
pub fn prepare(
    samples: Vec<(String, Sample)>,
    done: &std::collections::HashSet<String>,
    encoder: &EdgeEncoder,
    rng: &mut CodecRng,
    spool: &Path,
) -> Result<Vec<Spooled>> {
    std::fs::create_dir_all(spool).with_context(|| format!("cannot create {}", spool.display()))?;
    let todo: Vec<_> = samples.into_iter().filter(|(id, _)| !done.contains(id)).collect();
    let bar = ProgressBar::new(todo.len() as u64).with_style(
        ProgressStyle::with_template("{spinner} extract [{bar:30}] {pos}/{len} {per_sec} eta {eta}").expect("valid template").progress_chars("=> "),
    );
    let mut out = Vec::with_capacity(todo.len());
    for (sample_id, sample) in todo {
        let message = spool.join(format!("{}.mnf", hex::encode(Sha256::digest(sample_id.as_bytes()))));
        if !message.exists() {
            let encoded = encoder
                .encode_sample(&sample, rng)
                .with_context(|| format!("cannot encode the features of {}", sample.image_path.display()))?;
            write_atomic(&message, &encoded.message)?;
        }
        out.push(Spooled { sample_id, message, sample });
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}

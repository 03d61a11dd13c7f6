//! Extract once: each image goes through the Front and the codec a single time, and the message is
//! kept in a spool on disk until the cloud acknowledges it. A retry or a restart re-sends the same
//! bytes instead of drawing fresh noise, which would spend ε again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use mistnet::codec::{CodecRng, DecodeLimits, decode};
use mistnet::data::Sample;
use mistnet::encoder::{EdgeEncoder, EncoderError, Letterboxed};
use sha2::{Digest, Sha256};

use crate::cache::write_atomic;
use crate::prefetch::pipelined;

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
/// A spooled message that no longer decodes as this encoder's (a damaged file, a torn write) is
/// extracted again. With `skip_bad`, a sample whose image cannot be read is left out and counted.
pub fn prepare(
    samples: Vec<(String, Sample)>,
    done: &std::collections::HashSet<String>,
    encoder: &EdgeEncoder,
    rng: &mut CodecRng,
    spool: &Path,
    skip_bad: bool,
) -> Result<Vec<Spooled>> {
    std::fs::create_dir_all(spool).with_context(|| format!("cannot create {}", spool.display()))?;
    let todo: Vec<_> = samples.into_iter().filter(|(id, _)| !done.contains(id)).collect();
    let bar = ProgressBar::new(todo.len() as u64).with_style(
        ProgressStyle::with_template("{spinner} extract [{bar:30}] {pos}/{len} {per_sec} eta {eta}").expect("valid template").progress_chars("=> "),
    );
    let mut out = Vec::with_capacity(todo.len());
    let mut to_encode = Vec::new();
    for (sample_id, sample) in todo {
        let message = spool.join(format!("{}.mnf", hex::encode(Sha256::digest(sample_id.as_bytes()))));
        match spooled_damage(&message, encoder) {
            None => {
                bar.inc(1);
                out.push(Spooled { sample_id, message, sample });
            }
            Some(why) => {
                if message.exists() {
                    tracing::warn!(file = %message.display(), sample = %sample_id, %why, "damaged spool file: extracting the sample again");
                }
                to_encode.push(Spooled { sample_id, message, sample });
            }
        }
    }
    let skipped = AtomicUsize::new(0);
    let skip = |s: &Spooled, e: EncoderError| {
        if !skip_bad {
            let path = s.sample.image_path.display();
            return Err(anyhow::Error::new(e).context(format!("cannot encode the features of {path} (--skip-bad leaves such samples out)")));
        }
        tracing::warn!(sample = %s.sample_id, error = %e, "skipping a sample that cannot be encoded (--skip-bad)");
        skipped.fetch_add(1, Ordering::Relaxed);
        Ok(None)
    };
    let (started, mut encoded_now) = (std::time::Instant::now(), 0usize);
    // Read and letterbox ahead, the Front here, noise, encoding and the spool write behind.
    let front = |s: &Spooled, boxed: Result<Letterboxed, EncoderError>| match boxed.and_then(|boxed| encoder.features_of(&boxed)) {
        Ok(features) => Ok(Some(features.tensor)),
        Err(e) => skip(s, e),
    };
    pipelined(to_encode, |s| encoder.read_sample(&s.sample), front, |s, features| {
        bar.inc(1);
        let Some(features) = features else { return Ok(()) };
        let message = match encoder.encode_features(&features, rng) {
            Ok(message) => message,
            Err(e) => return skip(&s, e).map(|_| ()),
        };
        write_atomic(&s.message, &message)?;
        encoded_now += 1;
        out.push(s);
        Ok(())
    })?;
    let skipped = skipped.into_inner();
    bar.finish_and_clear();
    if skipped > 0 {
        eprintln!("skipped {skipped} samples whose images could not be encoded (--skip-bad)");
    }
    if encoded_now > 0 {
        // Decode, letterbox, Front, binarize, noise, pack, compress and the spool write, per image.
        println!(
            "{}{}",
            crate::extract::summary(encoded_now, started.elapsed()),
            match out.len() - encoded_now {
                0 => String::new(),
                n => format!("; {n} were already spooled"),
            }
        );
    }
    Ok(out)
}

/// Why the spooled `message` cannot be sent as it is (`None`: it is whole and this encoder's).
fn spooled_damage(message: &Path, encoder: &EdgeEncoder) -> Option<String> {
    let bytes = match std::fs::read(message) {
        Ok(bytes) => bytes,
        Err(e) => return Some(e.to_string()),
    };
    let header = match decode(&bytes, &DecodeLimits::default()) {
        Ok(decoded) => decoded.header,
        Err(e) => return Some(e.to_string()),
    };
    let p = encoder.params();
    let same = header.front_hash == p.front_hash && header.cut == p.cut && header.privacy == p.privacy && header.encoding == p.encoding;
    (!same).then(|| "made with other settings".to_string())
}

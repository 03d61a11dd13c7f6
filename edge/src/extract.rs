//! `mistnet-edge extract`: letterbox images, run the Front, write the features.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use mistnet::codec::{ENCODING_HELP, Encoding, Privacy};
use mistnet::data::letterbox::{is_image, read_rgb};
use mistnet::encoder::{EdgeEncoder, WireSettings};
use mistnet_cli::{DeviceArgs, FrontArgs, ImageSizeArgs, PrecisionArgs};

use mistnet_cli::PrivacyArgs;

use crate::cache::write_atomic;
use crate::prefetch::pipelined;

#[derive(clap::Args)]
#[command(after_help = "Prints on stdout how fast it went (`extracted: N images in S s (R images/s, T ms each)`: decode, \
letterbox, Front, encoding and the write, from the first image to the last). With more than one thread \
(RAYON_NUM_THREADS, default the cores) the next image is decoded while the Front runs.\n\n\
Without --encoding, writes DIR/<image stem>.safetensors holding `features` [1, C, H, W] (f32, \
the Front's raw output) with the cut, Front hash and letterbox geometry in the file's metadata. With --encoding, writes \
DIR/<image stem>.mnf: the binarized, randomized and encoded features in the wire format (docs/wire-format.md), exactly \
what `mistnet-edge run` would send.\n\n\
Examples:\n  mistnet-edge extract --model models/yolov5s.yaml --weights yolov5s.safetensors --cut 4 --imgsz 640 photos/ --out features/\n  \
mistnet-edge extract --weights yolov5s.safetensors --encoding packed --mechanism sue --epsilon 2 photos/ --out wire/")]
pub struct Args {
    #[command(flatten)]
    front: FrontArgs,
    #[command(flatten)]
    imgsz: ImageSizeArgs,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    precision: PrecisionArgs,
    /// An image file, or a directory whose images (jpg, jpeg, png, bmp, webp) are all processed.
    input: PathBuf,
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Write wire-format messages (.mnf) in this encoding: packed (1 bit per element), f16 or f32 (baselines).
    #[arg(long, long_help = ENCODING_HELP)]
    encoding: Option<Encoding>,
    #[command(flatten)]
    privacy: PrivacyArgs,
}

pub fn run(args: Args) -> Result<()> {
    let images = list_images(&args.input)?;
    // Bad privacy flags are refused before anything loads; without --encoding nothing is encoded.
    let wire = match args.encoding {
        Some(encoding) => args.privacy.wire(encoding)?,
        None => WireSettings::packed(Privacy::none()),
    };
    let device = args.device.open()?;
    let imgsz = args.imgsz.px;
    let mut front = args.front.load(&device)?;
    args.precision.apply(&mut front)?;
    tracing::info!(model = %args.front.model.name, cut = front.cut(), hash = %front.hash(), images = images.len(), "front loaded");
    let encoder = EdgeEncoder::new(front, imgsz, wire)?.on_device(device);
    let mut rng = args.privacy.rng()?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;

    let bar = ProgressBar::new(images.len() as u64).with_style(
        ProgressStyle::with_template("{spinner} extract [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let started = std::time::Instant::now();
    let count = images.len();
    let load = |path: &PathBuf| read_rgb(path).map(|img| encoder.letterbox(&img));
    let front = |path: &PathBuf, boxed: Result<_, String>| {
        let stem = path.file_stem().and_then(|s| s.to_str()).context("image name is not valid UTF-8")?;
        bar.set_message(stem.to_string());
        Ok((stem.to_string(), encoder.features_of(&boxed.map_err(anyhow::Error::msg)?)?))
    };
    pipelined(images, load, front, |path, (stem, features)| {
        let out = if args.encoding.is_some() {
            let out = args.out.join(format!("{stem}.mnf"));
            write_atomic(&out, &encoder.encode_features(&features.tensor, &mut rng)?)?;
            out
        } else {
            let (front, lb) = (encoder.front(), features.letterbox);
            let metadata = HashMap::from([
                ("cut".to_string(), front.cut().to_string()),
                ("front_hash".to_string(), front.hash().to_string()),
                ("imgsz".to_string(), imgsz.to_string()),
                ("source".to_string(), path.display().to_string()),
                ("letterbox_ratio".to_string(), lb.ratio.to_string()),
                ("letterbox_pad".to_string(), format!("{},{}", lb.pad.0, lb.pad.1)),
                ("original_size".to_string(), format!("{},{}", lb.original.0, lb.original.1)),
            ]);
            let out = args.out.join(format!("{stem}.safetensors"));
            let bytes = safetensors::serialize([("features", &features.tensor)], Some(metadata))?;
            write_atomic(&out, &bytes)?;
            out
        };
        tracing::debug!(image = %path.display(), shape = ?features.tensor.dims(), out = %out.display(), "extracted");
        bar.inc(1);
        Ok(())
    })?;
    bar.finish_and_clear();
    println!("{}", summary(count, started.elapsed()));
    tracing::info!(images = count, out = %args.out.display(), "done");
    Ok(())
}

/// `extracted: N images in S s (R images/s, T ms each)`: how fast images went from file to
/// written output (decode, letterbox, Front, encoding, the write), as `extract` and `run` print it.
pub fn summary(images: usize, elapsed: std::time::Duration) -> String {
    let secs = elapsed.as_secs_f64();
    format!(
        "extracted: {images} images in {secs:.1} s ({:.2} images/s, {:.1} ms each)",
        images as f64 / secs.max(1e-9),
        secs * 1e3 / images.max(1) as f64
    )
}

/// The images to process: the file itself, or a directory's image files in name order.
pub fn list_images(input: &Path) -> Result<Vec<PathBuf>> {
    if input.is_file() {
        return Ok(vec![input.to_path_buf()]);
    }
    let entries = std::fs::read_dir(input).with_context(|| format!("cannot read {}", input.display()))?;
    let mut images = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.is_file() && is_image(&path) {
            images.push(path);
        }
    }
    images.sort();
    if images.is_empty() {
        bail!("no images (jpg, jpeg, png, bmp, webp) in {}", input.display());
    }
    Ok(images)
}

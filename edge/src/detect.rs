//! `mistnet-edge detect`: runs a deployable detector on local images and writes the boxes (JSON)
//! and annotated PNGs. Inference only; the model file says whether it binarizes after the Front.
//! The model is a local file (`--weights`) or the one the cloud serves (`--server`: `GetModel`,
//! cached by hash in [`crate::model_cache`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use image::{Rgb, RgbImage};
use mistnet::data::letterbox::{letterbox, read_rgb};
use mistnet::model::image_to_tensor;
use mistnet::metrics::{NmsConfig, non_max_suppression};
use mistnet::model::deploy::Detector;
use mistnet_cli::edge::DEFAULT_CACHE;
use mistnet_cli::image::{check_imgsz, parse_imgsz};
use mistnet_cli::{ClientArgs, DeviceArgs};
use serde::Serialize;

use crate::model_cache::{self, Source};

#[derive(clap::Args)]
#[command(mut_arg("token_file", |a| a.required(false)), mut_arg("server", |a| a.requires("token_file")))]
#[command(after_help = "Writes, per image, DIR/<stem>.json ({image, width, height, detections: [{class, name, score, \
bbox: [x1, y1, x2, y2] in original pixels}]}) and DIR/<stem>.png (the image with one coloured rectangle per detection, \
colour by class).\nA MistNet model (trained on binarized features) runs Front, binarization, Back; no randomized response.\n\n\
The model is --weights FILE, or the one the cloud serves (--server/--token-file/--edge, as for `run`): fetched with \
GetModel into --cache (CACHE/model/<sha256>/model.safetensors, the SHA-256 of its tensors, as in export's manifest), \
checked against that hash before every use, and fetched again only when the cloud serves another one. When the \
cloud cannot be reached, the model fetched last is used (said on stderr); a refusal (a bad token, no model served) \
is an error.\n\n\
Examples:\n  mistnet-edge detect --weights deploy/model.safetensors photos/ --out detections/\n  \
mistnet-edge detect --server https://cloud:50051 --ca-cert ca.pem --edge edge-1 --token-file edge-1.token photos/ --out det/")]
pub struct Args {
    /// A deployable model (model.safetensors from `mistnet-cloud train`, `pretrain` or `export`).
    #[arg(long, required_unless_present_any = ["server", "token_file"], conflicts_with_all = ["server", "token_file", "edge"])]
    weights: Option<PathBuf>,
    // Instead of --weights: the cloud serving the model (`mistnet-cloud serve`) and this edge's token.
    #[command(flatten)]
    client: Option<ClientArgs>,
    /// This edge's id, as in the cloud's tokens file (with --server).
    #[arg(long)]
    edge: Option<String>,
    /// Cache directory for the model fetched from --server (shared with `run`'s Front cache).
    #[arg(long, default_value = DEFAULT_CACHE)]
    cache: PathBuf,
    /// An image file, or a directory whose images (jpg, jpeg, png, bmp, webp) are all processed.
    input: PathBuf,
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Letterbox size in pixels (square; a positive multiple of 32). Default: the size the model was trained at.
    #[arg(long, value_name = "PX", value_parser = parse_imgsz)]
    imgsz: Option<u32>,
    /// Confidence threshold (YOLOv5 detect.py: 0.25).
    #[arg(long, default_value_t = NmsConfig::detect().conf_thres)]
    conf: f32,
    /// NMS IoU threshold (YOLOv5 detect.py: 0.45).
    #[arg(long, default_value_t = NmsConfig::detect().iou_thres)]
    iou: f64,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Serialize)]
struct ImageDetections {
    image: String,
    width: u32,
    height: u32,
    detections: Vec<Found>,
}

#[derive(Serialize)]
struct Found {
    class: usize,
    name: String,
    score: f32,
    /// `[x1, y1, x2, y2]` in original-image pixels.
    bbox: [f32; 4],
}

const COLOURS: [[u8; 3]; 8] = [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230]];

pub fn run(args: Args) -> Result<()> {
    let device = args.device.open()?;
    let weights = match (&args.weights, &args.client) {
        (Some(file), _) => file.clone(),
        (None, Some(client)) => fetch_model(client, args.edge.as_deref(), &args.cache)?,
        (None, None) => bail!("give --weights FILE, or --server with --token-file and --edge"),
    };
    let detector = Detector::load(&weights, &device)?;
    let meta = detector.meta().clone();
    let imgsz = check_imgsz(args.imgsz.unwrap_or(meta.imgsz)).map_err(anyhow::Error::msg)?;
    let nms = NmsConfig { conf_thres: args.conf, iou_thres: args.iou, ..NmsConfig::detect() };
    let images = crate::extract::list_images(&args.input)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    for path in &images {
        let img = read_rgb(path).map_err(anyhow::Error::msg)?;
        let (boxed, lb) = letterbox(&img, imgsz);
        let preds = detector.predict(&image_to_tensor(&boxed, &device)?)?;
        let rows = preds.get(0)?.flatten_all()?.to_vec1::<f32>()?;
        let detections: Vec<Found> = non_max_suppression(&rows, meta.names.len(), &nms)?
            .into_iter()
            .map(|d| Found { class: d.class, name: meta.names[d.class].clone(), score: d.score, bbox: lb.to_original(d.bbox) })
            .collect();
        let stem = path.file_stem().and_then(|s| s.to_str()).context("image name is not valid UTF-8")?;
        let mut annotated = img.clone();
        for d in &detections {
            draw_rect(&mut annotated, d.bbox, Rgb(COLOURS[d.class % COLOURS.len()]));
        }
        let png = args.out.join(format!("{stem}.png"));
        annotated.save(&png).with_context(|| format!("cannot write {}", png.display()))?;
        let record = ImageDetections { image: path.display().to_string(), width: img.width(), height: img.height(), detections };
        write_json(&args.out.join(format!("{stem}.json")), &record)?;
        println!("{}: {} detections", path.display(), record.detections.len());
    }
    Ok(())
}

/// The cloud's model, through the cache; says on stderr where it came from.
fn fetch_model(client: &ClientArgs, edge: Option<&str>, cache: &Path) -> Result<PathBuf> {
    let edge = edge.context("--edge is required with --server: the edge id of --token-file's token")?;
    let cloud = client.client(Some(edge))?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let model = runtime.block_on(model_cache::fetch(&cloud, cache))?;
    match &model.source {
        Source::Fetched(bytes) => eprintln!("model {} fetched from {} ({bytes} bytes)", model.sha256, client.server),
        Source::Cached => eprintln!("model {} (cached; the one {} serves)", model.sha256, client.server),
        Source::Offline(why) => eprintln!("model {} (cached; {} cannot be reached: {why})", model.sha256, client.server),
    }
    Ok(model.path)
}

fn write_json(path: &Path, record: &ImageDetections) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(record)? + "\n").with_context(|| format!("cannot write {}", path.display()))
}

/// A 2-pixel rectangle outline, clipped to the image.
fn draw_rect(img: &mut RgbImage, b: [f32; 4], colour: Rgb<u8>) {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return;
    }
    let clamp = |v: f32, max: u32| (v.round().max(0.0) as u32).min(max - 1);
    let (x1, y1, x2, y2) = (clamp(b[0], w), clamp(b[1], h), clamp(b[2], w), clamp(b[3], h));
    for t in 0..2 {
        for x in x1..=x2 {
            img.put_pixel(x, (y1 + t).min(h - 1), colour);
            img.put_pixel(x, y2.saturating_sub(t), colour);
        }
        for y in y1..=y2 {
            img.put_pixel((x1 + t).min(w - 1), y, colour);
            img.put_pixel(x2.saturating_sub(t), y, colour);
        }
    }
}

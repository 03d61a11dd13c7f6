//! `mistnet-cloud val`: evaluates a deployable model on a labelled dataset as YOLOv5 `val.py`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use mistnet::data::{BadDataPolicy, Split};
use mistnet::model::deploy::Detector;
use mistnet_cloud::fit::{EvalSet, parse_device};

#[derive(clap::Args)]
#[command(after_help = "A MistNet model (from `train`) runs as the edge would at test time: the Front, binarization \
without randomized response, then the Back. A whole model (from `pretrain`) runs on the images directly.\n\
NMS as YOLOv5 val.py: conf 0.001, IoU 0.6, class-aware, multi-label, at most 300 detections per image.\n\
Prints COCO mAP@[.5:.95] and mAP@.5 (pycocotools semantics) and YOLOv5 val.py's mAP (101-point interpolation).\n\
COCO ids: with a COCO JSON dataset, the file's own image_id and category_id (so pycocotools scores the detections \
against that file); otherwise image k of the split (in load order, from 0) is image_id k+1 and class c is category_id c+1.\n\n\
Example:\n  mistnet-cloud val --weights runs/mistnet/model.safetensors --data data/synth/private-val.yaml --json")]
pub struct Args {
    /// A deployable model (model.safetensors of `train`/`pretrain`, or `export`'s).
    #[arg(long)]
    weights: PathBuf,
    /// Labelled dataset: an Ultralytics dataset YAML, a COCO JSON or a YOLO directory.
    #[arg(long, value_name = "DATA.yaml")]
    data: PathBuf,
    /// Split to evaluate: val or train (a COCO JSON has only train).
    #[arg(long, default_value = "val", value_parser = ["val", "train"])]
    split: String,
    /// Letterbox size (default: the size the model was trained at).
    #[arg(long)]
    imgsz: Option<u32>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// cpu, or cuda:N (needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Leave out bad samples with a count instead of failing.
    #[arg(long)]
    skip_bad: bool,
    /// Write the detections in COCO results format (image_id, category_id, bbox [x,y,w,h] in original pixels, score).
    #[arg(long, value_name = "PATH")]
    save_json: Option<PathBuf>,
    /// Print the metrics as one JSON object: map50_95, map50, yolov5_map50_95, yolov5_map50.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let device = parse_device(&args.device)?;
    let detector = Detector::load(&args.weights, &device)?;
    let imgsz = args.imgsz.unwrap_or(detector.meta().imgsz);
    if imgsz == 0 || !imgsz.is_multiple_of(32) {
        anyhow::bail!("--imgsz must be a positive multiple of 32, got {imgsz}");
    }
    let split = if args.split == "train" { Split::Train } else { Split::Val };
    let policy = if args.skip_bad { BadDataPolicy::Skip } else { BadDataPolicy::Fail };
    let set = EvalSet::open(&args.data, split, policy, &detector, imgsz)?;
    let eval = set.evaluate(&detector, args.batch, &device)?;
    if let Some(path) = &args.save_json {
        let json = serde_json::to_string(&eval.detections)?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let m = eval.metrics();
    if args.json {
        println!("{}", serde_json::to_string(&m)?);
    } else {
        for line in eval.coco.summary_lines() {
            println!("{line}");
        }
        println!("COCO   mAP@[.5:.95] {:.4}  mAP@.5 {:.4}", m.map50_95, m.map50);
        println!("YOLOv5 mAP@[.5:.95] {:.4}  mAP@.5 {:.4}", m.yolov5_map50_95, m.yolov5_map50);
        println!("{} images, {} detections", set.images.len(), eval.detections.len());
    }
    Ok(())
}

//! `mistnet-cloud val`: evaluates a deployable model on a labelled dataset as YOLOv5 `val.py`.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result};
use mistnet::data::{BadDataPolicy, Split};
use mistnet::model::deploy::Detector;
use mistnet_cli::image::{check_imgsz, parse_imgsz};
use mistnet_cli::{Argv, DeviceArgs, ToArgs};
use mistnet_train::fit::EvalSet;

#[derive(clap::Args, Debug, Clone, PartialEq)]
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
    pub weights: PathBuf,
    /// Labelled dataset: an Ultralytics dataset YAML, a COCO JSON or a YOLO directory.
    #[arg(long, value_name = "DATA.yaml")]
    pub data: PathBuf,
    /// Split to evaluate: val or train (a COCO JSON has only train).
    #[arg(long, default_value = "val", value_parser = ["val", "train"])]
    pub split: String,
    /// Letterbox size in pixels (square; a positive multiple of 32). Default: the size the model was trained at.
    #[arg(long, value_name = "PX", value_parser = parse_imgsz)]
    pub imgsz: Option<u32>,
    /// Images per forward pass.
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    pub batch: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Leave out bad samples with a count instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
    /// Write the detections in COCO results format (image_id, category_id, bbox [x,y,w,h] in original pixels, score).
    #[arg(long, value_name = "PATH")]
    pub save_json: Option<PathBuf>,
    /// Print the metrics as one JSON object: map50_95, map50, yolov5_map50_95, yolov5_map50.
    #[arg(long)]
    pub json: bool,
    /// Also write that JSON object to PATH (what `job` reads).
    #[arg(long, value_name = "PATH")]
    pub save_metrics: Option<PathBuf>,
}

/// Images per forward pass by default.
pub const DEFAULT_BATCH: usize = 16;

impl ToArgs for Args {
    fn to_args(&self) -> Vec<OsString> {
        Argv::new()
            .arg("--weights", &self.weights)
            .arg("--data", &self.data)
            .arg("--split", &self.split)
            .opt("--imgsz", self.imgsz.map(|px| px.to_string()))
            .arg("--batch", self.batch.to_string())
            .group(&self.device)
            .switch("--skip-bad", self.skip_bad)
            .opt("--save-json", self.save_json.as_ref())
            .switch("--json", self.json)
            .opt("--save-metrics", self.save_metrics.as_ref())
            .build()
    }
}

pub fn run(args: Args) -> Result<()> {
    let device = args.device.open()?;
    let detector = Detector::load(&args.weights, &device)?;
    let imgsz = check_imgsz(args.imgsz.unwrap_or(detector.meta().imgsz)).map_err(anyhow::Error::msg)?;
    let split = if args.split == "train" { Split::Train } else { Split::Val };
    let policy = if args.skip_bad { BadDataPolicy::Skip } else { BadDataPolicy::Fail };
    let set = EvalSet::open(&args.data, split, policy, &detector, imgsz)?;
    let eval = set.evaluate(&detector, args.batch, &device)?;
    if let Some(path) = &args.save_json {
        let json = serde_json::to_string(&eval.detections)?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let m = eval.metrics();
    if let Some(path) = &args.save_metrics {
        std::fs::write(path, serde_json::to_string(&m)? + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use mistnet_cli::device::DeviceSpec;

    #[test]
    fn val_flags_parse_back() {
        let plain = Args {
            weights: "m.safetensors".into(),
            data: "d.yaml".into(),
            split: "val".into(),
            imgsz: None,
            batch: DEFAULT_BATCH,
            device: DeviceArgs::default(),
            skip_bad: false,
            save_json: None,
            json: false,
            save_metrics: None,
        };
        assert_eq!(mistnet_cli::argv::reparse(&plain).unwrap(), plain);
        let every = Args {
            split: "train".into(),
            imgsz: Some(96),
            batch: 3,
            device: DeviceArgs { spec: DeviceSpec::Cuda(0) },
            skip_bad: true,
            save_json: Some("dets.json".into()),
            json: true,
            save_metrics: Some("metrics.json".into()),
            ..plain
        };
        assert_eq!(mistnet_cli::argv::reparse(&every).unwrap(), every);
    }
}

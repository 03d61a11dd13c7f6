//! Evaluation as YOLOv5 `val.py`: letterboxed images through a [`Detector`], NMS with the val
//! settings (conf 0.001, IoU 0.6, multi-label, 300 per image), boxes mapped back to
//! original-image pixels, then COCO mAP (pycocotools semantics) and YOLOv5's mAP.
//!
//! COCO ids: a COCO JSON dataset's own `image_id` and `category_id`; otherwise image `k` of the
//! split (0-based) has `image_id` k + 1 and class `c` has `category_id` c + 1.

use std::path::Path;

use candle_core::{Device, Tensor};
use mistnet::data::letterbox::{Letterbox, letterbox, read_rgb};
use mistnet::model::image_to_tensor;
use mistnet::data::{BadDataPolicy, Dataset, Label, Sample, Split};
use mistnet::metrics::map::{CocoAnnotation, CocoCategory, CocoDetection, CocoDetections, CocoGroundTruth, CocoImage, CocoStats, YoloMap, coco_eval, yolo_map};
use mistnet::metrics::{NmsConfig, non_max_suppression};
use mistnet::model::deploy::Detector;
use serde::{Deserialize, Serialize};

use super::FitError;

/// One labelled evaluation image, letterboxed.
#[derive(Debug, Clone)]
pub struct EvalImage {
    /// `[3, S, S]` in 0..1.
    pub image: Tensor,
    pub letterbox: Letterbox,
    /// Labels normalized to the original image.
    pub labels: Vec<Label>,
    /// The COCO `image_id` of this image.
    pub image_id: i64,
}

/// A labelled evaluation split.
#[derive(Debug, Clone)]
pub struct EvalSet {
    pub images: Vec<EvalImage>,
    pub names: Vec<String>,
    /// The COCO `category_id` of each class.
    pub category_ids: Vec<i64>,
}

/// The four numbers `mistnet-cloud val --json` prints.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// COCO AP@[.5:.95] (area all, maxDets 100).
    pub map50_95: f64,
    /// COCO AP@.5.
    pub map50: f64,
    /// YOLOv5 `val.py` mAP@.5:.95 (101-point interpolation).
    pub yolov5_map50_95: f64,
    /// YOLOv5 `val.py` mAP@.5.
    pub yolov5_map50: f64,
}

/// Everything an evaluation produces.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub coco: CocoStats,
    pub yolo: YoloMap,
    /// In COCO results format, bbox in original-image pixels.
    pub detections: Vec<CocoDetection>,
}

impl Evaluation {
    pub fn metrics(&self) -> Metrics {
        Metrics { map50_95: self.coco.map50_95(), map50: self.coco.map50(), yolov5_map50_95: self.yolo.map50_95, yolov5_map50: self.yolo.map50 }
    }
}

impl EvalSet {
    /// Reads and letterboxes every sample to `imgsz`. Image ids are the samples' own
    /// ([`Sample::image_id`]) or k + 1; category ids c + 1.
    pub fn load(samples: &[Sample], names: &[String], imgsz: u32) -> Result<Self, FitError> {
        let images = samples
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let img = read_rgb(&s.image_path).map_err(FitError::Sample)?;
                let (boxed, lb) = letterbox(&img, imgsz);
                let image_id = s.image_id.map_or(Ok(k as i64 + 1), i64::try_from).map_err(|_| FitError::Sample(format!("{}: image id too large", s.image_path.display())))?;
                Ok(EvalImage { image: image_to_tensor(&boxed, &Device::Cpu)?.squeeze(0)?, letterbox: lb, labels: s.labels.clone(), image_id })
            })
            .collect::<Result<_, FitError>>()?;
        Ok(Self { images, names: names.to_vec(), category_ids: (1..=names.len() as i64).collect() })
    }

    /// The `split` of the labelled dataset at `data` (an Ultralytics YAML, COCO JSON or YOLO
    /// directory), letterboxed to `imgsz`, for `detector`: the classes must be the model's.
    pub fn open(data: &Path, split: Split, policy: BadDataPolicy, detector: &Detector, imgsz: u32) -> Result<Self, FitError> {
        let dataset = Dataset::open(data)?;
        let loaded = dataset.load(split, policy)?;
        tracing::info!(summary = %loaded.summary, "dataset loaded");
        if dataset.names() != detector.meta().names.as_slice() {
            return Err(FitError::Config(format!(
                "the model's classes {:?} are not the dataset's {:?}",
                detector.meta().names,
                dataset.names()
            )));
        }
        let mut set = Self::load(&loaded.samples, dataset.names(), imgsz)?;
        if let Dataset::Coco(coco) = &dataset {
            set.category_ids = coco.category_ids().iter().map(|&id| i64::try_from(id)).collect::<Result<_, _>>().map_err(|_| FitError::Config("a category id is too large".into()))?;
        }
        Ok(set)
    }

    /// The ground truth in COCO form.
    pub fn ground_truth(&self) -> Result<CocoGroundTruth, FitError> {
        let mut annotations = Vec::new();
        let images = self
            .images
            .iter()
            .map(|e| {
                for l in &e.labels {
                    let [x1, y1, x2, y2] = l.to_pixels(e.letterbox.original).map(f64::from);
                    annotations.push(CocoAnnotation {
                        id: annotations.len() as i64 + 1,
                        image_id: e.image_id,
                        category_id: self.category_ids[l.class],
                        bbox: [x1, y1, x2 - x1, y2 - y1],
                        area: (x2 - x1) * (y2 - y1),
                        iscrowd: 0,
                    });
                }
                CocoImage { id: e.image_id, file_name: None, width: Some(e.letterbox.original.0), height: Some(e.letterbox.original.1) }
            })
            .collect();
        let categories =
            self.names.iter().zip(&self.category_ids).map(|(name, &id)| CocoCategory { id, name: name.clone(), supercategory: None }).collect();
        Ok(CocoGroundTruth::new("evaluation split", images, annotations, categories)?)
    }

    /// Runs `detector` over the split in batches of `batch` on `device` and scores it.
    pub fn evaluate(&self, detector: &Detector, batch: usize, device: &Device) -> Result<Evaluation, FitError> {
        self.evaluate_with(detector, batch, |images| {
            Ok(detector.predict(&images.to_device(device)?)?.to_device(&Device::Cpu)?)
        })
    }

    /// Scores `predict` over the split in batches of `batch`: it maps letterboxed images
    /// `[bs, 3, S, S]` (CPU) to `detector`'s decoded predictions (on the CPU). How the
    /// predictions are made is up to the caller (the privacy evaluation adds randomized response
    /// between the Front and the Back); `detector` gives the classes.
    pub fn evaluate_with<E: From<FitError>>(
        &self,
        detector: &Detector,
        batch: usize,
        mut predict: impl FnMut(&Tensor) -> Result<Tensor, E>,
    ) -> Result<Evaluation, E> {
        let nc = self.names.len();
        if detector.meta().names.len() != nc {
            return Err(FitError::Config(format!(
                "the model has {} classes, the evaluation data {}",
                detector.meta().names.len(),
                nc
            ))
            .into());
        }
        let nms = NmsConfig::default();
        let mut detections = Vec::new();
        for chunk in self.images.chunks(batch.max(1)) {
            let inputs: Vec<&Tensor> = chunk.iter().map(|e| &e.image).collect();
            let preds = predict(&Tensor::stack(&inputs, 0).map_err(FitError::from)?)?;
            for (i, e) in chunk.iter().enumerate() {
                let rows = preds.get(i).and_then(|p| p.flatten_all()?.to_vec1::<f32>()).map_err(FitError::from)?;
                for d in non_max_suppression(&rows, nc, &nms).map_err(FitError::from)? {
                    let [x1, y1, x2, y2] = e.letterbox.to_original(d.bbox).map(f64::from);
                    detections.push(CocoDetection {
                        image_id: e.image_id,
                        category_id: self.category_ids[d.class],
                        bbox: [x1, y1, x2 - x1, y2 - y1],
                        score: f64::from(d.score),
                    });
                }
            }
        }
        Ok(self.score(detections)?)
    }

    fn score(&self, detections: Vec<CocoDetection>) -> Result<Evaluation, FitError> {
        let gt = self.ground_truth()?;
        let dets = CocoDetections::new("predictions", detections.clone())?;
        Ok(Evaluation { coco: coco_eval(&gt, &dets)?, yolo: yolo_map(&gt, &dets)?, detections })
    }
}

//! Detection mAP, two ways, from the same COCO-format ground truth and detections:
//!
//! - [`coco_eval`]: pycocotools 2.0.11 `COCOeval(iouType="bbox")` with default parameters — the
//!   12 numbers of `summarize()` ([`CocoStats::stats`], names in [`STAT_NAMES`]) and the
//!   per-category AP; IoU thresholds .50:.05:.95, 101 recall points, maxDets 1/10/100, area
//!   ranges all/small/medium/large (by the annotation's `area` field), crowd regions ignored.
//! - [`yolo_map`]: YOLOv5 7.0 `val.py` (`process_batch` + `utils.metrics.ap_per_class`): greedy
//!   matching per IoU threshold, no area ranges, no cap on detections per image, crowd ground
//!   truth dropped, AP as the trapezoid integral of the 101-point interpolated precision envelope
//!   — a perfect detector scores 0.995, not 1.
//!
//! ```no_run
//! use mistnet_metrics::map::{CocoDetections, CocoGroundTruth, coco_eval, yolo_map};
//! let gt = CocoGroundTruth::from_file("instances_val.json")?;
//! let dets = CocoDetections::from_file("predictions.json")?;
//! let coco = coco_eval(&gt, &dets)?;
//! let yolo = yolo_map(&gt, &dets)?;
//! println!("mAP@[.5:.95] {:.4} mAP@.5 {:.4} (YOLOv5: {:.4} {:.4})", coco.map50_95(), coco.map50(), yolo.map50_95, yolo.map50);
//! # Ok::<(), mistnet_metrics::map::CocoError>(())
//! ```
//!
//! Both are reproduced operation for operation (NumPy's pairwise sums, `np.interp`, thresholds
//! from `np.linspace` / float32 `torch.linspace`), so they agree with the references to ~1e-16.
//! Ties in score are broken by input order (pycocotools sorts stably; YOLOv5's unstable sort
//! leaves such ties unspecified). Unlike pycocotools, an empty detection list is accepted
//! (every AP is 0), and detections of a category absent from the ground truth are an error
//! rather than silently dropped.

mod coco_json;
mod cocoeval;
mod yolo;

use std::path::PathBuf;

pub use coco_json::{CocoAnnotation, CocoCategory, CocoDetection, CocoDetections, CocoGroundTruth, CocoImage};
pub use cocoeval::{CategoryAp, CocoStats, STAT_NAMES, coco_eval};
pub use yolo::{YoloMap, yolo_map};

/// Errors from reading or checking COCO ground truth and detections.
#[derive(Debug, thiserror::Error)]
pub enum CocoError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{origin}: {source}")]
    Json { origin: String, source: serde_json::Error },
    #[error("{origin}: {what}")]
    Invalid { origin: String, what: String },
    #[error("{origin}: {what}: image_id {image_id} is not in the ground truth")]
    UnknownImage { origin: String, what: String, image_id: i64 },
    #[error("{origin}: {what}: category_id {category_id} is not in the ground truth's categories")]
    UnknownCategory { origin: String, what: String, category_id: i64 },
}

//! Evaluation metrics, plain numbers only (no model, no tensors), each reproducing a public
//! reference implementation:
//!
//! - [`ssim`] and [`psnr`]: image similarity for the privacy evaluation, as scikit-image 0.26
//!   (`structural_similarity`, `mean_squared_error`, `peak_signal_noise_ratio`), on [`ImageF32`].
//!   `ssim(&a, &b, &SsimConfig::default())` is the Gaussian-window SSIM.
//! - [`nms`]: YOLOv5 7.0 `non_max_suppression` on one image's decoded predictions
//!   (`non_max_suppression(&rows, nc, &NmsConfig::default())` uses val.py's settings).
//! - [`map`]: COCO mAP as pycocotools `COCOeval` ([`map::coco_eval`]) and as YOLOv5 `val.py`
//!   ([`map::yolo_map`]) from COCO-format ground truth and detections.

pub mod image;
pub mod map;
pub mod nms;
mod numpy_compat;
pub mod psnr;
pub mod ssim;

pub use image::{ImageF32, ImageQualityError};
pub use nms::{Detection, NmsConfig, NmsError, non_max_suppression};
pub use psnr::{mse, psnr};
pub use ssim::{SsimConfig, SsimWindow, ssim};

//! `mistnet_cloud`: the library half of the MistNet cloud service.
//!
//! - [`train`]: the numerical core of training the YOLOv5 Back as Ultralytics YOLOv5 7.0 does:
//!   the loss (`ComputeLoss`), SGD with Nesterov momentum in three parameter groups, warmup and
//!   learning-rate schedules, gradient accumulation and the model EMA.
//! - [`fit`]: the training loop of `train` and `pretrain`, checkpoints, evaluation (mAP) and run reports.
//! - [`plot`]: PNG line plots with an embedded font.
//! - [`store`]: the durable feature store edges upload into, and its read API for the trainer.
//! - [`privacy`]: model-inversion attacks on the features, SSIM/PSNR against ε, the privacy report.
//!
//! The edge binary never links this crate: training code lives only in the cloud.
pub mod fit;
pub mod plot;
pub mod store;
pub mod privacy;
pub mod train;

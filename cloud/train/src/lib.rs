//! `mistnet-train`: training and evaluating YOLOv5 as Ultralytics YOLOv5 7.0 does.
//!
//! - [`train`]: the numerical core — the loss (`ComputeLoss`), SGD with Nesterov momentum in three
//!   parameter groups, warmup and learning-rate schedules, gradient accumulation and the model EMA.
//! - [`fit`]: the training loop of `train` (the Back on features an edge sent) and `pretrain`
//!   (the whole model on images), its sources, checkpoints, evaluation (mAP) and run reports.
//! - [`federated`]: FedAvg and the running average over the edges' raw images, with the
//!   accounting of bytes and compute (the baseline MistNet is measured against).
//! - [`plot`]: PNG line plots with an embedded font.
//!
//! The edge binary never links this crate.
pub mod federated;
pub mod fit;
pub mod plot;
pub mod train;

//! YOLOv5 (v6.0/v7.0 architecture) in candle, and the MistNet edge/cloud split.
//!
//! Parameter names follow Ultralytics state dicts (`model.{i}.conv.weight`,
//! `model.{i}.m.{j}.cv1.bn.running_var`, `model.24.anchors`, ...) so converted Ultralytics
//! checkpoints load unchanged.

pub mod batch_norm;
#[cfg(feature = "train")]
pub mod bn_silu;
pub mod c3;
pub mod config;
pub mod conv;
pub mod deploy;
pub mod detect;
pub mod direct;
pub mod flops;
pub mod gemm_conv;
pub mod input;
pub mod kernels;
pub mod planes;
pub mod split;
pub mod sppf;
pub mod upsample;
pub mod weights;
pub mod yolo;

pub use config::{LayerKind, LayerSpec, ModelConfig};
pub use input::image_to_tensor;
pub use split::{DEFAULT_CUT, Front, check_cut, load_back, valid_cuts};
#[cfg(feature = "train")]
pub use split::UnfoldedFront;
pub use weights::ParamStore;
pub use yolo::{Yolo, YoloOutput};

/// Errors from building or loading a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model config: {0}")]
    Config(String),
    #[error("weights: {0}")]
    Weights(String),
    #[error("cut {cut} is not valid for this model: exactly one tensor must cross the split; valid cuts are {valid:?}")]
    Cut { cut: usize, valid: Vec<usize> },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

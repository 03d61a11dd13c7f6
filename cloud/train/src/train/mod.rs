//! Training the YOLOv5 Back, numerically as Ultralytics YOLOv5 7.0 (`utils/loss.py`, `train.py`,
//! `utils/torch_utils.py`) does it.
//!
//! A training loop calls, per batch `i` of epoch `epoch`:
//! ```text
//! let out = back.forward_t(&features, true)?;                // BatchNorm in train mode
//! let loss = yolo_loss.compute(&out.raw, &targets)?;         // ComputeLoss
//! if optimizer.backward_step(&loss.total, epoch, i)? {       // warmup, accumulate, clip, SGD
//!     ema.update(&store.tensors())?;                         // ModelEMA
//! }
//! ```
//! The learning-rate schedule is a function of `(epoch, i)`, so nothing happens between epochs.
//! [`Optimizer`] and [`ModelEma`] hand their state to checkpoints as named tensors
//! (`state_tensors` / `load_state`); the EMA's tensors are the weights to evaluate and export.

pub mod bce;
pub mod ciou;
pub mod ema;
pub mod hyp;
pub mod loss;
pub mod optimizer;
pub mod schedule;
pub mod sgd;
pub mod state;
pub mod targets;

pub use ema::ModelEma;
pub use hyp::{Hyp, LossConfig};
pub use loss::{LossOutput, YoloLoss};
pub use optimizer::{Optimizer, OptimizerConfig};
pub use schedule::{LrDecay, Schedule};
pub use sgd::{GroupKind, ParamGroup, Sgd};
pub use targets::Target;

/// Errors from the loss, the optimizer and their checkpointed state.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A target row that cannot be used (class out of range, box outside the image, ...).
    #[error("target {index}: {reason}")]
    Target { index: usize, reason: String },
    /// Predictions whose shape does not fit the Detect head the loss was built for.
    #[error("predictions: {0}")]
    Predictions(String),
    /// A hyper-parameter value this implementation does not support or that makes no sense.
    #[error("hyper-parameter {name}: {reason}")]
    Hyp { name: &'static str, reason: String },
    /// Optimizer or EMA state from a checkpoint that does not fit the model.
    #[error("checkpoint state: {0}")]
    State(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

//! One client's part of a round: the global state in, `epochs` of the image training loop over
//! the client's own raw images (the same loop, loss, optimizer and augmentation as `pretrain`
//! and the centralized baseline, [`Session`]), the trained state out.
//!
//! A client keeps nothing between rounds (no momentum, no EMA): it starts every round from the
//! global state with a fresh optimizer, as FedAvg's clients do. The learning-rate schedule is the
//! whole run's (`config.epochs` = rounds × local epochs), at the round's place in it, so warmup
//! happens in the first rounds only and the rate decays over the run as in centralized training.
//! The client returns its trained weights (not its EMA), BatchNorm running statistics included.

use std::ops::Range;

use candle_core::Device;
use mistnet::model::batch_norm::BatchNormConfig;
use mistnet::model::deploy::DeployMeta;
use mistnet::model::{LayerSpec, ParamStore, Yolo};

use super::State;
use crate::fit::images::ImageSet;
use crate::fit::{EpochLosses, FitConfig, FitError, Session, Trainee};

/// Trains the model `specs` from `global` on `images` for the schedule's epochs `epochs`
/// (`config.seed` draws the client's shuffling and augmentation); returns the trained state (on
/// the CPU) and each epoch's losses. `label` prefixes the progress bar.
pub fn train_locally(
    global: &State,
    specs: &[LayerSpec],
    meta: &DeployMeta,
    images: &ImageSet,
    config: &FitConfig,
    epochs: Range<usize>,
    label: &str,
) -> Result<(State, Vec<EpochLosses>), FitError> {
    let store = ParamStore::from_tensors(global, &config.device)?;
    let model = Yolo::load(store.var_builder(&config.device), specs, 0, BatchNormConfig::default())?;
    let trainee = Trainee { model, store, fixed: Default::default(), meta: meta.clone(), binarization: None };
    let mut session = Session::new(&trainee, images, config)?;
    let mut losses = Vec::with_capacity(epochs.len());
    let n = epochs.len();
    for (k, epoch) in epochs.enumerate() {
        losses.push(session.train_epoch(&trainee, images, config, epoch, &format!("{label} epoch {}/{n}", k + 1))?);
    }
    let trained = trainee.store.tensors();
    if let Some(name) = global.keys().find(|k| !trained.contains_key(*k)) {
        return Err(FitError::Config(format!("the global model's {name} is not a tensor of the model config")));
    }
    let state = trained.into_iter().map(|(k, v)| Ok((k, v.to_device(&Device::Cpu)?.copy()?))).collect::<Result<State, FitError>>()?;
    Ok((state, losses))
}

//! The run checkpoint: one safetensors file holding the model's state under its state-dict
//! names, the optimizer's (`optimizer.*`) and the EMA's (`ema.*`, `ema_updates`) state, the next
//! epoch (`fit.next_epoch`) and the seed (`fit.seed`), written atomically.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use mistnet::model::ParamStore;
use mistnet::model::weights::save_tensors;

use super::FitError;
use crate::train::state::{counter, read_counter};
use crate::train::{ModelEma, Optimizer};

const NEXT_EPOCH_KEY: &str = "fit.next_epoch";
const SEED_KEY: &str = "fit.seed";

/// Writes the checkpoint after an epoch; `next_epoch` is the epoch a resumed run starts with.
pub fn save(path: &Path, store: &ParamStore, optimizer: &Optimizer, ema: &ModelEma, next_epoch: usize, seed: u64) -> Result<(), FitError> {
    let mut all: BTreeMap<String, Tensor> = store.tensors();
    all.extend(optimizer.state_tensors()?);
    all.extend(ema.state_tensors()?);
    all.insert(NEXT_EPOCH_KEY.into(), counter(next_epoch as i64)?);
    all.insert(SEED_KEY.into(), counter(seed as i64)?);
    save_tensors(&all, path)?;
    Ok(())
}

/// Restores the optimizer and the EMA; returns the next epoch. The model itself resumes by
/// loading its weights from the checkpoint file (`ParamStore::open`), which holds them under
/// their state-dict names. The checkpoint's seed must be `seed`, so the resumed run draws the
/// same numbers.
pub fn load(path: &Path, optimizer: &mut Optimizer, ema: &mut ModelEma, seed: u64) -> Result<usize, FitError> {
    let bad = |reason: String| FitError::Checkpoint { path: path.to_path_buf(), reason };
    let state: HashMap<String, Tensor> = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| bad(format!("cannot read: {e}")))?;
    let saved_seed = read_counter(&state, SEED_KEY).map_err(|e| bad(e.to_string()))?;
    if saved_seed != seed as i64 {
        return Err(bad(format!("it was written with --seed {saved_seed}, this run has --seed {seed}")));
    }
    optimizer.load_state(&state).map_err(|e| bad(e.to_string()))?;
    ema.load_state(&state).map_err(|e| bad(e.to_string()))?;
    let next = read_counter(&state, NEXT_EPOCH_KEY).map_err(|e| bad(e.to_string()))?;
    usize::try_from(next).map_err(|_| bad(format!("{NEXT_EPOCH_KEY} is negative ({next})")))
}

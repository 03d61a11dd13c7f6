//! Exponential moving average of the model, as YOLOv5's `ModelEMA`: after each optimizer step
//! `updates += 1`, `d = decay · (1 − exp(−updates / tau))` and every floating-point entry of the
//! state dict (parameters, BatchNorm running statistics, anchors) becomes `d·ema + (1 − d)·model`.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Tensor};

use super::TrainError;
use super::state::{counter, read_counter, read_tensor};

const PREFIX: &str = "ema.";
const UPDATES_KEY: &str = "ema_updates";

/// The EMA copy of a model's state.
#[derive(Debug, Clone)]
pub struct ModelEma {
    tensors: BTreeMap<String, Tensor>,
    updates: u64,
    decay: f64,
    tau: f64,
}

impl ModelEma {
    /// YOLOv5's defaults.
    pub const DECAY: f64 = 0.9999;
    pub const TAU: f64 = 2000.0;

    /// Starts from a copy of `model` (e.g. `ParamStore::tensors()`).
    pub fn new(model: &BTreeMap<String, Tensor>) -> Result<Self, TrainError> {
        let tensors = model.iter().map(|(k, v)| Ok((k.clone(), v.detach().copy()?))).collect::<Result<_, TrainError>>()?;
        Ok(Self { tensors, updates: 0, decay: Self::DECAY, tau: Self::TAU })
    }

    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The averaged state, by state-dict name.
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.tensors
    }

    /// Moves the average towards `model`, which must hold the same names.
    pub fn update(&mut self, model: &BTreeMap<String, Tensor>) -> Result<(), TrainError> {
        self.updates += 1;
        let d = self.decay * (1.0 - (-(self.updates as f64) / self.tau).exp());
        for (name, ema) in self.tensors.iter_mut() {
            if !ema.dtype().is_float() {
                continue;
            }
            let m = model.get(name).ok_or_else(|| TrainError::State(format!("the model has no {name} to average")))?;
            *ema = ((&*ema * d)? + (m.detach().to_dtype(ema.dtype())? * (1.0 - d))?)?;
        }
        Ok(())
    }

    /// `ema.<name>` for every tensor and the update count, for a checkpoint.
    pub fn state_tensors(&self) -> Result<BTreeMap<String, Tensor>, TrainError> {
        let mut out: BTreeMap<String, Tensor> = self.tensors.iter().map(|(k, v)| (format!("{PREFIX}{k}"), v.clone())).collect();
        out.insert(UPDATES_KEY.into(), counter(self.updates as i64)?);
        Ok(out)
    }

    /// Restores what [`ModelEma::state_tensors`] wrote; every tensor must be present with its shape.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<(), TrainError> {
        let mut tensors = BTreeMap::new();
        for (name, t) in &self.tensors {
            let loaded = read_tensor(state, &format!("{PREFIX}{name}"), t.dims(), t.device())?;
            tensors.insert(name.clone(), if t.dtype() == DType::F32 { loaded } else { loaded.to_dtype(t.dtype())? });
        }
        let updates = read_counter(state, UPDATES_KEY)?;
        self.updates = u64::try_from(updates).map_err(|_| TrainError::State(format!("{UPDATES_KEY} is negative ({updates})")))?;
        self.tensors = tensors;
        Ok(())
    }
}

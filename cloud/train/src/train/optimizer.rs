//! The optimisation step of YOLOv5's `train.py`: SGD with Nesterov momentum over the three
//! parameter groups, the per-iteration [`Schedule`], gradients summed over `accumulate`
//! batches, clipped to a total norm of 10, then one SGD step.
//!
//! Weight decay is `weight_decay · batch_size · accumulate / nbs` on convolution weights only.
//! The schedule is a function of the iteration alone, so only the momentum buffers, the last
//! step's iteration and the pending gradients are state.

use std::collections::{BTreeMap, HashMap};

use candle_core::{Tensor, Var};

use super::schedule::{LrDecay, Schedule, StepSettings};
use super::sgd::{GroupKind, ParamGroup, Sgd};
use super::state::{counter, read_counter, read_tensor};
use super::{Hyp, TrainError};

/// `train.py`'s gradient clipping: `clip_grad_norm_(model.parameters(), max_norm=10.0)`.
pub const MAX_GRAD_NORM: f64 = 10.0;
/// YOLOv5's nominal batch size.
pub const NOMINAL_BATCH: usize = 64;

const LAST_STEP_KEY: &str = "optimizer.last_opt_step";
const PENDING_PREFIX: &str = "optimizer.pending_grad.";

/// What the optimizer needs to know about the run.
#[derive(Debug, Clone)]
pub struct OptimizerConfig {
    pub hyp: Hyp,
    pub batch_size: usize,
    /// Nominal batch size (`nbs`), [`NOMINAL_BATCH`] in YOLOv5.
    pub nominal_batch: usize,
    pub epochs: usize,
    pub batches_per_epoch: usize,
    pub decay: LrDecay,
}

/// SGD with YOLOv5's groups, warmup, schedule, accumulation and clipping.
#[derive(Debug, Clone)]
pub struct Optimizer {
    sgd: Sgd,
    schedule: Schedule,
    batches_per_epoch: usize,
    /// Gradients summed since the last step, by parameter name.
    pending: HashMap<String, Tensor>,
    /// Global iteration of the last step; −1 before the first, as in `train.py`.
    last_opt_step: i64,
    settings: StepSettings,
}

impl Optimizer {
    /// An optimizer over `params` (e.g. `ParamStore::trainable()`), grouped by name.
    pub fn new(params: Vec<(String, Var)>, config: &OptimizerConfig) -> Result<Self, TrainError> {
        let hyp = &config.hyp;
        let schedule = Schedule::new(hyp, config.epochs, config.batches_per_epoch, config.batch_size, config.nominal_batch, config.decay)?;
        let decay = hyp.weight_decay * (config.batch_size * schedule.nominal_accumulate()) as f64 / config.nominal_batch as f64;
        let mut groups: Vec<ParamGroup> = GroupKind::ALL
            .iter()
            .map(|&kind| ParamGroup {
                kind,
                params: Vec::new(),
                lr: hyp.lr0,
                momentum: hyp.momentum,
                weight_decay: if kind == GroupKind::Weight { decay } else { 0.0 },
            })
            .collect();
        for (name, var) in params {
            groups[GroupKind::of(&name).index()].params.push((name, var));
        }
        let settings = schedule.at(0, 0);
        Ok(Self {
            sgd: Sgd::new(groups, true),
            schedule,
            batches_per_epoch: config.batches_per_epoch,
            pending: HashMap::new(),
            last_opt_step: -1,
            settings,
        })
    }

    /// The settings of the last iteration seen (learning rates for logging).
    pub fn settings(&self) -> StepSettings {
        self.settings
    }

    /// Backpropagates the loss of batch `i` of `epoch`, adds its gradients to the pending sum
    /// and, when `accumulate` batches have been summed, clips and steps. Returns whether the
    /// parameters changed (the moment `train.py` updates the EMA).
    pub fn backward_step(&mut self, loss: &Tensor, epoch: usize, i: usize) -> Result<bool, TrainError> {
        self.backward_step_at(loss, epoch, i + self.batches_per_epoch * epoch)
    }

    /// [`backward_step`](Self::backward_step) at the global iteration `ni` (batches before this one
    /// in the whole run), for runs whose epochs do not all have the configured number of batches
    /// (`train --follow`: the set grows between epochs). `ni` must grow by one per call.
    pub fn backward_step_at(&mut self, loss: &Tensor, epoch: usize, ni: usize) -> Result<bool, TrainError> {
        let grads = loss.backward()?;
        self.settings = self.schedule.at(ni, epoch);
        for group in self.sgd.groups_mut() {
            group.lr = self.settings.lr[group.kind.index()];
            group.momentum = self.settings.momentum;
        }
        for group in self.sgd.groups() {
            for (name, var) in &group.params {
                if let Some(g) = grads.get(var.as_tensor()) {
                    let g = g.detach();
                    let sum = match self.pending.remove(name) {
                        Some(prev) => (prev + g)?,
                        None => g,
                    };
                    self.pending.insert(name.clone(), sum);
                }
            }
        }
        if (ni as i64 - self.last_opt_step) < self.settings.accumulate as i64 {
            return Ok(false);
        }
        clip_grad_norm(&mut self.pending, MAX_GRAD_NORM)?;
        self.sgd.step(&self.pending)?;
        self.pending.clear();
        self.last_opt_step = ni as i64;
        Ok(true)
    }

    /// Momentum buffers, pending gradients and the last step's iteration, for a checkpoint.
    pub fn state_tensors(&self) -> Result<BTreeMap<String, Tensor>, TrainError> {
        let mut out = self.sgd.state_tensors()?;
        out.extend(self.pending.iter().map(|(k, v)| (format!("{PENDING_PREFIX}{k}"), v.clone())));
        out.insert(LAST_STEP_KEY.into(), counter(self.last_opt_step)?);
        Ok(out)
    }

    /// Restores what [`Optimizer::state_tensors`] wrote.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<(), TrainError> {
        self.sgd.load_state(state)?;
        let params: HashMap<&str, &Var> = self.sgd.groups().iter().flat_map(|g| g.params.iter().map(|(n, v)| (n.as_str(), v))).collect();
        let mut pending = HashMap::new();
        for key in state.keys().filter(|k| k.starts_with(PENDING_PREFIX)) {
            let name = &key[PENDING_PREFIX.len()..];
            let var = params.get(name).ok_or_else(|| TrainError::State(format!("{key} belongs to no parameter of this model")))?;
            pending.insert(name.to_string(), read_tensor(state, key, var.dims(), var.device())?);
        }
        self.pending = pending;
        self.last_opt_step = read_counter(state, LAST_STEP_KEY)?;
        Ok(())
    }
}

/// `torch.nn.utils.clip_grad_norm_`: scales all gradients by `min(1, max_norm / (‖g‖ + 1e-6))`,
/// where ‖g‖ is the 2-norm of all gradients together.
pub fn clip_grad_norm(grads: &mut HashMap<String, Tensor>, max_norm: f64) -> Result<f64, TrainError> {
    let mut sq = 0.0f64;
    for g in grads.values() {
        sq += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    }
    let norm = sq.sqrt();
    let coef = (max_norm / (norm + 1e-6)).min(1.0);
    for g in grads.values_mut() {
        *g = (&*g * coef)?;
    }
    Ok(norm)
}

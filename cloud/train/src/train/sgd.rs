//! Stochastic gradient descent with momentum, exactly as `torch.optim.SGD` (dampening 0):
//! `d = g + wd·p`; `buf = d` on the first step, else `buf = μ·buf + d`;
//! `d = d + μ·buf` (Nesterov) or `d = buf`; `p = p − lr·d`.
//!
//! Parameters are grouped as YOLOv5's `smart_optimizer` groups them, each group with its own
//! learning rate, momentum and weight decay.

use std::collections::{BTreeMap, HashMap};

use candle_core::{Tensor, Var};

use super::TrainError;
use super::state::{counter, read_counter, read_tensor};

/// YOLOv5's parameter groups, in its order (group 0 is the one warmup starts at `warmup_bias_lr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupKind {
    /// Every `bias` (convolutions and BatchNorm): no weight decay.
    Bias,
    /// Convolution weights: weight decay.
    Weight,
    /// BatchNorm weights: no weight decay.
    BatchNormWeight,
}

impl GroupKind {
    pub const ALL: [GroupKind; 3] = [GroupKind::Bias, GroupKind::Weight, GroupKind::BatchNormWeight];

    /// The group of a parameter by its state-dict name.
    pub fn of(name: &str) -> Self {
        if name.ends_with(".bias") {
            Self::Bias
        } else if name.ends_with(".bn.weight") {
            Self::BatchNormWeight
        } else {
            Self::Weight
        }
    }

    /// Position in YOLOv5's `optimizer.param_groups`.
    pub fn index(self) -> usize {
        match self {
            Self::Bias => 0,
            Self::Weight => 1,
            Self::BatchNormWeight => 2,
        }
    }
}

/// Parameters sharing a learning rate, momentum and weight decay.
#[derive(Debug, Clone)]
pub struct ParamGroup {
    pub kind: GroupKind,
    pub params: Vec<(String, Var)>,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
}

/// SGD over parameter groups, with one momentum buffer per parameter.
#[derive(Debug, Clone)]
pub struct Sgd {
    groups: Vec<ParamGroup>,
    nesterov: bool,
    momentum_buffers: BTreeMap<String, Tensor>,
}

const BUFFER_PREFIX: &str = "sgd.momentum_buffer.";
const NESTEROV_KEY: &str = "sgd.nesterov";

impl Sgd {
    pub fn new(groups: Vec<ParamGroup>, nesterov: bool) -> Self {
        Self { groups, nesterov, momentum_buffers: BTreeMap::new() }
    }

    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    pub fn groups_mut(&mut self) -> &mut [ParamGroup] {
        &mut self.groups
    }

    /// One update with `grads` by parameter name; parameters without a gradient are left alone
    /// (as PyTorch skips `p.grad is None`).
    pub fn step(&mut self, grads: &HashMap<String, Tensor>) -> Result<(), TrainError> {
        for group in &self.groups {
            for (name, var) in &group.params {
                let Some(grad) = grads.get(name) else { continue };
                let param = var.as_tensor().detach();
                let mut d = grad.detach();
                if group.weight_decay != 0.0 {
                    d = (d + (&param * group.weight_decay)?)?;
                }
                if group.momentum != 0.0 {
                    let buf = match self.momentum_buffers.get(name) {
                        Some(buf) => ((buf * group.momentum)? + &d)?,
                        None => d.copy()?,
                    };
                    d = if self.nesterov { (d + (&buf * group.momentum)?)? } else { buf.clone() };
                    self.momentum_buffers.insert(name.clone(), buf);
                }
                var.set(&(param - (d * group.lr)?)?)?;
            }
        }
        Ok(())
    }

    /// Momentum buffers by `sgd.momentum_buffer.<param>`, and the Nesterov flag.
    pub fn state_tensors(&self) -> Result<BTreeMap<String, Tensor>, TrainError> {
        let mut out: BTreeMap<String, Tensor> =
            self.momentum_buffers.iter().map(|(k, v)| (format!("{BUFFER_PREFIX}{k}"), v.clone())).collect();
        out.insert(NESTEROV_KEY.into(), counter(self.nesterov as i64)?);
        Ok(out)
    }

    /// Restores what [`Sgd::state_tensors`] wrote, checking every buffer against its parameter.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<(), TrainError> {
        let nesterov = read_counter(state, NESTEROV_KEY)? != 0;
        if nesterov != self.nesterov {
            return Err(TrainError::State(format!("the checkpoint's SGD has nesterov={nesterov}, this one {}", self.nesterov)));
        }
        let params: HashMap<&str, &Var> = self.groups.iter().flat_map(|g| g.params.iter().map(|(n, v)| (n.as_str(), v))).collect();
        let mut buffers = BTreeMap::new();
        for key in state.keys().filter(|k| k.starts_with(BUFFER_PREFIX)) {
            let name = &key[BUFFER_PREFIX.len()..];
            let var = params.get(name).ok_or_else(|| TrainError::State(format!("{key} belongs to no parameter of this model")))?;
            buffers.insert(name.to_string(), read_tensor(state, key, var.dims(), var.device())?);
        }
        self.momentum_buffers = buffers;
        Ok(())
    }
}

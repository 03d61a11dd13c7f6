//! Federated averaging over the same edges MistNet trains from: the systems MistNet is measured
//! against (a Flask server averaging posted client weights, TensorFlow Federated's and MindSpore
//! Federated's FedAvg), in the same code as the rest of training.
//!
//! In the Flower style, one file per aggregation rule behind one trait:
//!
//! - [`Strategy`]: turns the round's global state and the clients' returned states into the next
//!   global state;
//! - [`fedavg::FedAvg`]: McMahan et al.'s sample-weighted mean of the returned states;
//! - [`running::Running`]: the seed Flask server's running weighted average
//!   `(a·server + b·client)/(a + b)`, `a` the samples averaged in so far;
//! - [`client`]: one client's local training, the image training loop of `pretrain`
//!   ([`crate::fit::Session`]) from the global state;
//! - [`server`]: the rounds, the evaluation after each, the accounting of bytes and compute;
//! - [`wire`]: a state serialized as it would cross the network (safetensors, f32 or f16).
//!
//! What is averaged is the whole state dict: convolution weights and biases, BatchNorm weights
//! and biases **and BatchNorm running statistics** (mean and variance, each averaged by sample
//! count like the weights), and the Detect anchors (identical everywhere: clients never train
//! them). Every floating-point tensor is averaged in f64 and stored back in its own dtype. A
//! tensor that is not floating point (PyTorch's `num_batches_tracked`, if a state held one: this
//! model never reads it and never loads it) is not averaged: the global model's value is kept.

pub mod client;
pub mod fedavg;
pub mod running;
pub mod server;
pub mod wire;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Tensor};

use crate::fit::FitError;

/// A model's state dict, by Ultralytics name.
pub type State = BTreeMap<String, Tensor>;

/// What one client returns after its local training: its state and how many samples it trained on.
#[derive(Debug, Clone)]
pub struct ClientUpdate {
    pub client: String,
    /// The client's training samples (its shard), the weight of its state in the average.
    pub samples: usize,
    pub state: State,
}

/// An aggregation rule: the next global state from the round's global state and the clients'
/// updates, in the order the clients returned them.
pub trait Strategy {
    /// The rule's name (`--aggregation`).
    fn name(&self) -> &'static str;
    /// Aggregates one round. Every update must hold exactly the global state's tensors with their
    /// shapes and dtypes, and at least one sample.
    fn aggregate(&mut self, global: &State, updates: &[ClientUpdate]) -> Result<State, FitError>;
}

/// The aggregation rules, as `--aggregation` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    /// McMahan et al.'s FedAvg: the round's updates averaged by sample count.
    FedAvg,
    /// The seed server's running weighted average over every update it has received.
    Running,
}

impl Aggregation {
    pub const ALL: [Aggregation; 2] = [Aggregation::FedAvg, Aggregation::Running];

    pub fn name(self) -> &'static str {
        match self {
            Aggregation::FedAvg => "fedavg",
            Aggregation::Running => "running",
        }
    }

    /// A fresh strategy of this rule.
    pub fn strategy(self) -> Box<dyn Strategy> {
        match self {
            Aggregation::FedAvg => Box::new(fedavg::FedAvg),
            Aggregation::Running => Box::new(running::Running::default()),
        }
    }
}

impl fmt::Display for Aggregation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Aggregation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| format!("unknown aggregation {s:?}: fedavg or running"))
    }
}

/// Checks that `update` holds exactly `global`'s tensors, with their shapes and dtypes.
fn check_update(global: &State, update: &ClientUpdate) -> Result<(), FitError> {
    let bad = |reason: String| FitError::Config(format!("the update of {}: {reason}", update.client));
    if update.samples == 0 {
        return Err(bad("it trained on no samples".into()));
    }
    if let Some(extra) = update.state.keys().find(|k| !global.contains_key(*k)) {
        return Err(bad(format!("{extra} is not in the global model")));
    }
    for (name, g) in global {
        let t = update.state.get(name).ok_or_else(|| bad(format!("it lacks {name}")))?;
        if t.dims() != g.dims() || t.dtype() != g.dtype() {
            return Err(bad(format!("{name} is {:?} {:?}, the global model's {:?} {:?}", t.dtype(), t.dims(), g.dtype(), g.dims())));
        }
    }
    Ok(())
}

/// `Σ wᵢ·stateᵢ / Σ wᵢ` of every floating-point tensor of `like` (computed in f64, stored in the
/// tensor's dtype); `like`'s own value for every other tensor. The weights must not all be 0.
fn weighted_mean(like: &State, parts: &[(&State, f64)]) -> Result<State, FitError> {
    let total: f64 = parts.iter().map(|(_, w)| w).sum();
    if total <= 0.0 || parts.iter().any(|(_, w)| *w < 0.0) {
        return Err(FitError::Config(format!("aggregation weights {:?} must be non-negative with a positive sum", parts.iter().map(|p| p.1).collect::<Vec<_>>())));
    }
    let mut out = State::new();
    for (name, g) in like {
        if !g.dtype().is_float() {
            out.insert(name.clone(), g.copy()?);
            continue;
        }
        let mut sum: Option<Tensor> = None;
        for (state, w) in parts {
            let t = (state[name].to_dtype(DType::F64)? * (*w / total))?;
            sum = Some(match sum {
                Some(s) => (s + t)?,
                None => t,
            });
        }
        let mean = sum.expect("at least one part").to_dtype(g.dtype())?.to_device(g.device())?;
        out.insert(name.clone(), mean);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use candle_core::Device;

    use super::*;

    /// A tiny state: a conv weight `w`, BatchNorm running statistics and an integer counter.
    pub fn state(w: [f32; 2], mean: [f32; 2], var: [f32; 2], tracked: i64) -> State {
        let dev = Device::Cpu;
        State::from([
            ("model.0.conv.weight".to_string(), Tensor::new(&w, &dev).unwrap()),
            ("model.0.bn.running_mean".to_string(), Tensor::new(&mean, &dev).unwrap()),
            ("model.0.bn.running_var".to_string(), Tensor::new(&var, &dev).unwrap()),
            ("model.0.bn.num_batches_tracked".to_string(), Tensor::new(&[tracked], &dev).unwrap()),
        ])
    }

    pub fn update(client: &str, samples: usize, state: State) -> ClientUpdate {
        ClientUpdate { client: client.into(), samples, state }
    }

    pub fn values(state: &State, name: &str) -> Vec<f64> {
        state[name].to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()
    }

    pub fn assert_close(state: &State, name: &str, expected: &[f64]) {
        let got = values(state, name);
        assert_eq!(got.len(), expected.len(), "{name}");
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-6, "{name}: {got:?}, by hand {expected:?}");
        }
    }

    #[test]
    fn aggregation_names_parse_back() {
        for a in Aggregation::ALL {
            assert_eq!(a.name().parse::<Aggregation>().unwrap(), a);
            assert_eq!(a.strategy().name(), a.name());
        }
        assert!("mean".parse::<Aggregation>().unwrap_err().contains("fedavg or running"));
    }

    #[test]
    fn updates_that_do_not_fit_the_global_model_are_refused() {
        let global = state([0.0; 2], [0.0; 2], [1.0; 2], 0);
        let mut missing = global.clone();
        missing.remove("model.0.bn.running_var");
        let mut extra = global.clone();
        extra.insert("model.9.x".into(), Tensor::new(&[1f32], &Device::Cpu).unwrap());
        let mut shape = global.clone();
        shape.insert("model.0.conv.weight".into(), Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap());
        for a in Aggregation::ALL {
            for (bad, reason) in [(update("e", 0, global.clone()), "no samples"), (update("e", 1, missing.clone()), "lacks model.0.bn.running_var"), (update("e", 1, extra.clone()), "model.9.x is not in"), (update("e", 1, shape.clone()), "[3]")] {
                let err = a.strategy().aggregate(&global, &[update("ok", 2, global.clone()), bad]).unwrap_err().to_string();
                assert!(err.contains("the update of e") && err.contains(reason), "{a}: {err}");
            }
            assert!(a.strategy().aggregate(&global, &[]).is_err(), "{a}: no updates");
        }
    }
}

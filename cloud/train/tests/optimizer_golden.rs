//! The optimizer and the EMA against PyTorch running YOLOv5 7.0 train.py's optimisation loop
//! (`tests/fixtures/train/make_optimizer_golden.py`): SGD with Nesterov momentum in three groups,
//! warmup, linear and cosine decay, accumulation, clipping and ModelEMA, on a toy model whose
//! gradients are given per iteration.
//!
//! On `MISTNET_TEST_DEVICE` (cpu or cuda:N, default cpu), with the golden file found under
//! `CARGO_MANIFEST_DIR` as the test process sees it (deploy/gpu/run.sh runs it elsewhere).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor, Var};
use mistnet_train::train::{Hyp, LrDecay, ModelEma, Optimizer, OptimizerConfig};

const PARAMS: [&str; 4] = ["model.5.conv.weight", "model.5.bn.weight", "model.5.bn.bias", "model.24.m.0.bias"];
const BUFFER: &str = "model.5.bn.running_mean";

fn golden() -> HashMap<String, Tensor> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from);
    candle_core::safetensors::load(dir.join("tests/fixtures/train/optimizer_golden.safetensors"), &device()).unwrap()
}

/// One device for the whole test process: candle keeps tensors of two `Device::new_cuda` apart.
fn device() -> Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE.get_or_init(|| mistnet::runtime::device_from_env("MISTNET_TEST_DEVICE").unwrap()).clone()
}

struct Scenario {
    name: &'static str,
    batch_size: usize,
    epochs: usize,
    nb: usize,
    decay: LrDecay,
}

const LINEAR: Scenario = Scenario { name: "linear", batch_size: 16, epochs: 3, nb: 50, decay: LrDecay::Linear };
const COSINE: Scenario = Scenario { name: "cosine", batch_size: 24, epochs: 4, nb: 40, decay: LrDecay::Cosine };

struct Run {
    params: Vec<(String, Var)>,
    buffer: Var,
    optimizer: Optimizer,
    ema: ModelEma,
}

impl Run {
    fn new(s: &Scenario, g: &HashMap<String, Tensor>) -> Self {
        let params: Vec<(String, Var)> =
            PARAMS.iter().map(|k| (k.to_string(), Var::from_tensor(&g[&format!("{}.init.{k}", s.name)]).unwrap())).collect();
        let buffer = Var::from_tensor(&g[&format!("{}.init.{BUFFER}", s.name)]).unwrap();
        let optimizer = Optimizer::new(params.clone(), &optimizer_config(s)).unwrap();
        let mut run = Self { ema: ModelEma::new(&BTreeMap::new()).unwrap(), params, buffer, optimizer };
        run.ema = ModelEma::new(&run.state()).unwrap();
        run
    }

    fn state(&self) -> BTreeMap<String, Tensor> {
        let mut m: BTreeMap<String, Tensor> = self.params.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
        m.insert(BUFFER.into(), self.buffer.as_tensor().clone());
        m
    }

    /// Runs iterations `from..to`, checking the schedule on the way.
    fn iterate(&mut self, s: &Scenario, g: &HashMap<String, Tensor>, from: usize, to: usize) {
        let lrs = g[&format!("{}.lr", s.name)].to_vec2::<f64>().unwrap();
        let moms = g[&format!("{}.momentum", s.name)].to_vec1::<f64>().unwrap();
        let stepped = g[&format!("{}.stepped", s.name)].to_vec1::<f32>().unwrap();
        for ni in from..to {
            let (epoch, i) = (ni / s.nb, ni % s.nb);
            self.buffer.set(&g[&format!("{}.buffers", s.name)].get(ni).unwrap()).unwrap();
            let mut loss = Tensor::zeros((), DType::F32, &device()).unwrap();
            for (k, v) in &self.params {
                let grad = g[&format!("{}.grads.{k}", s.name)].get(ni).unwrap();
                loss = (loss + (v.as_tensor() * grad).unwrap().sum_all().unwrap()).unwrap();
            }
            let did_step = self.optimizer.backward_step(&loss, epoch, i).unwrap();
            let settings = self.optimizer.settings();
            for (j, want) in lrs[ni].iter().enumerate() {
                assert!((settings.lr[j] - want).abs() <= 1e-15, "{} iteration {ni} group {j}: lr {} vs {want}", s.name, settings.lr[j]);
            }
            assert!((settings.momentum - moms[ni]).abs() <= 1e-15, "{} iteration {ni}: momentum", s.name);
            assert_eq!(did_step, stepped[ni] == 1.0, "{} iteration {ni}: step or not", s.name);
            if did_step {
                self.ema.update(&self.state()).unwrap();
            }
        }
    }

    fn check_final(&self, s: &Scenario, g: &HashMap<String, Tensor>) {
        let close = |got: &Tensor, key: String| {
            let want = &g[&key];
            let d = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let m = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d <= 1e-5 * m.max(1.0), "{key}: max abs diff {d} (scale {m})");
        };
        let state = self.optimizer.state_tensors().unwrap();
        for (k, v) in &self.params {
            close(v.as_tensor(), format!("{}.final.{k}", s.name));
            close(&state[&format!("sgd.momentum_buffer.{k}")], format!("{}.momentum_buffer.{k}", s.name));
        }
        for (k, v) in self.ema.tensors() {
            close(v, format!("{}.ema.{k}", s.name));
        }
        let updates = g[&format!("{}.ema_updates", s.name)].to_dtype(DType::I64).unwrap().to_vec1::<i64>().unwrap()[0];
        assert_eq!(self.ema.updates() as i64, updates);
    }
}

#[test]
fn linear_decay_run_matches_pytorch() {
    let g = golden();
    let mut run = Run::new(&LINEAR, &g);
    run.iterate(&LINEAR, &g, 0, LINEAR.epochs * LINEAR.nb);
    run.check_final(&LINEAR, &g);
}

#[test]
fn cosine_run_resumed_from_a_checkpoint_matches_pytorch() {
    let g = golden();
    let total = COSINE.epochs * COSINE.nb;
    let mut first = Run::new(&COSINE, &g);
    // Stop mid-warmup with gradients pending (accumulate > 1), as a crash between steps would.
    let stop = 97;
    first.iterate(&COSINE, &g, 0, stop);
    let mut state = first.optimizer.state_tensors().unwrap();
    state.extend(first.ema.state_tensors().unwrap());
    assert!(state.keys().any(|k| k.starts_with("optimizer.pending_grad.")), "the stop point should have pending gradients");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.safetensors");
    mistnet::model::weights::save_tensors(&state, &path).unwrap();
    let loaded = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();

    // A fresh optimizer and EMA over the same (checkpointed) parameters.
    let mut resumed = Run::new(&COSINE, &g);
    resumed.params = first.params.clone();
    resumed.buffer = first.buffer.clone();
    resumed.optimizer = Optimizer::new(resumed.params.clone(), &optimizer_config(&COSINE)).unwrap();
    resumed.optimizer.load_state(&loaded).unwrap();
    resumed.ema.load_state(&loaded).unwrap();
    resumed.iterate(&COSINE, &g, stop, total);
    resumed.check_final(&COSINE, &g);
}

fn optimizer_config(s: &Scenario) -> OptimizerConfig {
    OptimizerConfig {
        hyp: Hyp { warmup_epochs: 1.0, ..Hyp::default() },
        batch_size: s.batch_size,
        nominal_batch: 64,
        epochs: s.epochs,
        batches_per_epoch: s.nb,
        decay: s.decay,
    }
}

#[test]
fn state_for_another_model_is_refused_by_name() {
    let g = golden();
    let run = Run::new(&LINEAR, &g);
    let mut other = Run::new(&LINEAR, &g);
    let mut state: HashMap<String, Tensor> = run.optimizer.state_tensors().unwrap().into_iter().collect();
    state.insert("sgd.momentum_buffer.model.99.conv.weight".into(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap());
    let err = other.optimizer.load_state(&state).unwrap_err().to_string();
    assert!(err.contains("model.99.conv.weight"), "{err}");
    let ema_state: HashMap<String, Tensor> = HashMap::new();
    let err = other.ema.load_state(&ema_state).unwrap_err().to_string();
    assert!(err.contains("missing ema."), "{err}");
}

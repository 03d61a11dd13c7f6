//! Parity of the YOLOv5 loss and its gradients with PyTorch YOLOv5 7.0.
//!
//! `yolov5n_cloudtrain_128.safetensors` (made by `shared/tests/fixtures/yolov5/make_yolov5_oracle.py`)
//! is one cloud training step with the split after layer 4 (cut 5): the features `[2, 64, 16, 16]`
//! through layers 5..24 in train mode, then `ComputeLoss(model)(raw, targets)` and `backward()`.
//!
//! On `MISTNET_TEST_DEVICE` (cpu or cuda:N, default cpu), with the fixtures found under
//! `CARGO_MANIFEST_DIR` as the test process sees it (deploy/gpu/run.sh runs it elsewhere).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{Device, Tensor, Var};
use mistnet::model::{ModelConfig, ParamStore, load_back};
use mistnet_train::train::{Hyp, LossConfig, Target, YoloLoss};

fn fixture(name: &str) -> PathBuf {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from);
    dir.join("../../shared/tests/fixtures/yolov5").join(name)
}

/// One device for the whole test process: candle keeps tensors of two `Device::new_cuda` apart.
fn device() -> Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE.get_or_init(|| mistnet::runtime::device_from_env("MISTNET_TEST_DEVICE").unwrap()).clone()
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let d = (a - b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    let n = b.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    d.sqrt() / n.sqrt().max(1e-30)
}

struct Step {
    reference: HashMap<String, Tensor>,
    store: ParamStore,
    features: Var,
    loss: mistnet_train::train::LossOutput,
    raw: Vec<Tensor>,
    grads: candle_core::backprop::GradStore,
}

fn run_step() -> Step {
    let path = fixture("yolov5n_cloudtrain_128.safetensors");
    let reference = candle_core::safetensors::load(&path, &device()).unwrap();
    let specs = ModelConfig::load("yolov5n").unwrap().layers().unwrap();
    let store = ParamStore::open(&[fixture("yolov5n_weights.safetensors")]).unwrap();
    let back = load_back(&specs, 5, &store, &device()).unwrap();

    // The gains must be what train.py makes of hyp.scratch-low for 80 classes at 128 px, as
    // recorded in the fixture's metadata.
    let config = LossConfig::from_hyp(&Hyp::default(), 3, 80, 128).unwrap();
    let meta = safetensors_metadata(&path);
    let hyp: serde_json::Value = serde_json::from_str(&meta["hyp"]).unwrap();
    for (key, ours) in [("box", config.box_gain), ("obj", config.obj_gain), ("cls", config.cls_gain), ("anchor_t", config.anchor_t)] {
        let theirs = hyp[key].as_f64().unwrap();
        assert!((ours - theirs).abs() < 1e-12 * theirs.abs(), "{key}: {ours} vs {theirs}");
    }

    let features = Var::from_tensor(&reference["features"]).unwrap();
    let out = back.forward_t(features.as_tensor(), true).unwrap();
    let loss_fn = YoloLoss::new(back.detect(), config).unwrap();
    let targets = Target::from_rows(&reference["targets"]).unwrap();
    let loss = loss_fn.compute(&out.raw, &targets).unwrap();
    let grads = loss.total.backward().unwrap();
    Step { reference, store, features, loss, raw: out.raw, grads }
}

fn safetensors_metadata(path: &PathBuf) -> HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().clone().unwrap_or_default()
}

#[test]
fn loss_gradients_and_batchnorm_statistics_match_pytorch() {
    let s = run_step();
    let r = &s.reference;

    for (k, raw) in s.raw.iter().enumerate() {
        let e = rel_err(raw, &r[&format!("head.raw.{k}")]);
        assert!(e < 1e-4, "head.raw.{k}: relative error {e}");
    }
    let want = r["loss"].to_vec1::<f32>().unwrap()[0] as f64;
    let got = s.loss.total.to_scalar::<f32>().unwrap() as f64;
    assert!((got - want).abs() <= 1e-5 * want, "loss {got} vs {want}");
    assert!((want - 0.45408130).abs() < 1e-7);
    let items = r["loss_items"].to_vec1::<f32>().unwrap();
    for (name, ours, theirs) in [("lbox", s.loss.lbox, items[0]), ("lobj", s.loss.lobj, items[1]), ("lcls", s.loss.lcls, items[2])] {
        assert!(((ours - theirs) / theirs).abs() < 1e-5, "{name}: {ours} vs {theirs}");
    }

    // Gradients of every cloud parameter and of the features.
    let params = s.store.trainable();
    let cloud: Vec<_> = params.iter().filter(|(k, _)| r.contains_key(&format!("grad.{k}"))).collect();
    assert_eq!(cloud.len(), 132, "the fixture's 132 cloud parameters are the Back's");
    assert_eq!(params.len(), 132, "the Back has exactly the fixture's parameters");
    let mut worst = (0.0, String::new());
    for (name, var) in cloud {
        let g = s.grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        let e = rel_err(g, &r[&format!("grad.{name}")]);
        if e > worst.0 {
            worst = (e, name.clone());
        }
    }
    assert!(worst.0 < 1e-3, "worst parameter gradient: {} relative error {}", worst.1, worst.0);
    let e = rel_err(s.grads.get(s.features.as_tensor()).unwrap(), &r["grad.features"]);
    assert!(e < 1e-3, "grad.features: relative error {e}");

    // BatchNorm running statistics after the train-mode forward.
    let tensors = s.store.tensors();
    let mut n = 0;
    for (key, want) in r.iter().filter(|(k, _)| k.starts_with("after.")) {
        let got = &tensors[&key["after.".len()..]];
        let e = rel_err(got, want);
        assert!(e < 1e-5, "{key}: relative error {e}");
        n += 1;
    }
    assert_eq!(n, 84, "the Back has 42 BatchNorm layers");
}

#[test]
fn loss_on_the_reference_head_outputs_has_pytorchs_gradients() {
    // The loss alone, on PyTorch's own head outputs: isolates ComputeLoss from the network.
    let r = candle_core::safetensors::load(fixture("yolov5n_cloudtrain_128.safetensors"), &device()).unwrap();
    let specs = ModelConfig::load("yolov5n").unwrap().layers().unwrap();
    let store = ParamStore::open(&[fixture("yolov5n_weights.safetensors")]).unwrap();
    let back = load_back(&specs, 5, &store, &device()).unwrap();
    let loss_fn = YoloLoss::new(back.detect(), LossConfig::from_hyp(&Hyp::default(), 3, 80, 128).unwrap()).unwrap();
    let raw: Vec<Var> = (0..3).map(|k| Var::from_tensor(&r[&format!("head.raw.{k}")]).unwrap()).collect();
    let raw_t: Vec<Tensor> = raw.iter().map(|v| v.as_tensor().clone()).collect();
    let loss = loss_fn.compute(&raw_t, &Target::from_rows(&r["targets"]).unwrap()).unwrap();
    let want = r["loss"].to_vec1::<f32>().unwrap()[0];
    let got = loss.total.to_scalar::<f32>().unwrap();
    assert!(((got - want) / want).abs() < 1e-6, "loss {got} vs {want}");
    let grads = loss.total.backward().unwrap();
    for (k, v) in raw.iter().enumerate() {
        let e = rel_err(grads.get(v.as_tensor()).unwrap(), &r[&format!("grad.head.raw.{k}")]);
        assert!(e < 1e-5, "grad.head.raw.{k}: relative error {e}");
    }
}

#[test]
fn targets_outside_the_batch_are_a_typed_error() {
    let r = candle_core::safetensors::load(fixture("yolov5n_cloudtrain_128.safetensors"), &device()).unwrap();
    let specs = ModelConfig::load("yolov5n").unwrap().layers().unwrap();
    let store = ParamStore::open(&[fixture("yolov5n_weights.safetensors")]).unwrap();
    let back = load_back(&specs, 5, &store, &device()).unwrap();
    let loss_fn = YoloLoss::new(back.detect(), LossConfig::from_hyp(&Hyp::default(), 3, 80, 128).unwrap()).unwrap();
    let raw: Vec<Tensor> = (0..3).map(|k| r[&format!("head.raw.{k}")].clone()).collect();
    let mut targets = Target::from_rows(&r["targets"]).unwrap();
    targets[4].image = 2;
    let err = loss_fn.compute(&raw, &targets).unwrap_err().to_string();
    assert!(err.contains("target 4") && err.contains("batch of 2"), "{err}");
    let err = loss_fn.compute(&raw[..2], &targets[..1]).unwrap_err().to_string();
    assert!(err.contains("2 levels"), "{err}");
}

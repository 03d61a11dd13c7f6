//! Parity with PyTorch YOLOv5 7.0 on golden data (see `tests/fixtures/yolov5/README.md`).
//!
//! The reference numbers come from, per layer (`make_yolov5_oracle.py`):
//! ```python
//! m = Model("yolov5n.yaml", ch=3, nc=80).eval()   # weights: yolov5n_weights.safetensors
//! y = []
//! for mod in m.model:                             # BaseModel._forward_once
//!     x = y[mod.f] if isinstance(mod.f, int) else [x if j == -1 else y[j] for j in mod.f]
//!     x = mod(x); y.append(x)                     # saved as layer.{i}
//! ```
//!
//! The model runs on `MISTNET_TEST_DEVICE` (cpu or cuda:N, default cpu); the fixtures are found
//! under `CARGO_MANIFEST_DIR` as the test process sees it, so that a test executable carried to
//! another machine runs from there (deploy/gpu/run.sh).

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use mistnet::model::{
    Front, ModelConfig, ParamStore, Yolo, batch_norm::BatchNormConfig, load_back, valid_cuts,
};

fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from)
}

fn fixture(name: &str) -> PathBuf {
    manifest_dir().join("tests/fixtures/yolov5").join(name)
}

/// One device for the whole test process: candle keeps tensors of two `Device::new_cuda` apart.
fn device() -> Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE.get_or_init(|| mistnet::runtime::device_from_env("MISTNET_TEST_DEVICE").unwrap()).clone()
}

fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let d = (a - b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    let n = b.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    d / n.max(1e-12)
}

fn yolov5n() -> Vec<mistnet::model::LayerSpec> {
    ModelConfig::load(manifest_dir().join("../models/yolov5n.yaml").to_str().unwrap()).unwrap().layers().unwrap()
}

fn reference(size: usize) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(&format!("yolov5n_io_{size}.safetensors")), &device()).unwrap()
}

fn full_model() -> (Yolo, ParamStore) {
    let store = ParamStore::open(&[fixture("yolov5n_weights.safetensors")]).unwrap();
    let model = Yolo::load(store.var_builder(&device()), &yolov5n(), 0, BatchNormConfig::default()).unwrap();
    store.ensure_all_used().unwrap();
    (model, store)
}

#[test]
fn every_layer_and_head_match_pytorch() {
    let (model, _) = full_model();
    for size in [64, 128] {
        let r = reference(size);
        let out = model.forward_all(&r["input"], false).unwrap();
        for (i, t) in out.layers.iter().enumerate() {
            let e = rel_err(t.as_ref().unwrap(), &r[&format!("layer.{i}")]);
            assert!(e < 1e-4, "size {size} layer {i}: relative error {e}");
        }
        for (k, raw) in out.raw.iter().enumerate() {
            let e = rel_err(raw, &r[&format!("head.raw.{k}")]);
            assert!(e < 1e-4, "size {size} head.raw.{k}: relative error {e}");
        }
        let decoded = model.detect().decode(&out.raw).unwrap();
        let e = rel_err(&decoded, &r["head.decoded"]);
        assert!(e < 1e-4, "size {size} head.decoded: relative error {e}");
    }
}

#[test]
fn yolov5_cuts_are_one_to_five() {
    assert_eq!(valid_cuts(&yolov5n()), vec![1, 2, 3, 4, 5]);
}

#[test]
fn folded_front_equals_unfolded_layers_and_front_plus_back_equals_whole() {
    let specs = yolov5n();
    let (model, _) = full_model();
    let r = reference(128);
    let whole = model.forward_all(&r["input"], false).unwrap();
    for cut in valid_cuts(&specs) {
        let store = ParamStore::open(&[fixture("yolov5n_weights.safetensors")]).unwrap();
        let front = Front::load(&specs, cut, &store, &device()).unwrap();
        let sent = front.forward(&r["input"]).unwrap();
        let unfolded = whole.layers[cut - 1].as_ref().unwrap();
        let e = rel_err(&sent, unfolded);
        assert!(e < 1e-5, "cut {cut}: folded front differs from the unfolded layers by {e}");

        // The Back on the exact boundary tensor reproduces the whole model bit for bit; on the
        // folded Front's output it stays within the PyTorch parity tolerance.
        let back = load_back(&specs, cut, &store, &device()).unwrap();
        let exact = back.forward_t(unfolded, false).unwrap();
        let split = back.forward_t(&sent, false).unwrap();
        for k in 0..whole.raw.len() {
            assert_eq!(rel_err(&exact.raw[k], &whole.raw[k]), 0.0, "cut {cut} head {k}: back differs from the whole model");
            let e = rel_err(&split.raw[k], &whole.raw[k]);
            assert!(e < 1e-4, "cut {cut} head {k}: front+back differs from the whole model by {e}");
        }
    }
}

#[test]
fn front_loads_from_a_file_with_only_its_tensors_and_hash_ignores_layout() {
    let specs = yolov5n();
    let cut = 4;
    let all = candle_core::safetensors::load(fixture("yolov5n_weights.safetensors"), &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Split the Front's tensors over two shards and leave the rest out.
    let (a, b): (Vec<_>, Vec<_>) = all
        .iter()
        .filter(|(k, _)| (0..cut).any(|i| k.starts_with(&format!("model.{i}."))))
        .partition(|(k, _)| k.starts_with("model.0.") || k.starts_with("model.1."));
    let save = |part: Vec<(&String, &Tensor)>, name: &str| {
        let p = dir.path().join(name);
        let m: std::collections::HashMap<_, _> = part.into_iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        candle_core::safetensors::save(&m, &p).unwrap();
        p
    };
    let shards = [save(a, "front-1.safetensors"), save(b, "front-2.safetensors")];
    let front = Front::load(&specs, cut, &ParamStore::open(&shards).unwrap(), &device()).unwrap();
    let full = Front::load(&specs, cut, &ParamStore::open(&[fixture("yolov5n_weights.safetensors")]).unwrap(), &device()).unwrap();
    assert_eq!(front.hash(), full.hash());
    let x = reference(64)["input"].clone();
    assert_eq!(rel_err(&front.forward(&x).unwrap(), &full.forward(&x).unwrap()), 0.0);

    // A Front at another cut has another hash; missing tensors are a clear error.
    let other = Front::load(&specs, 3, &ParamStore::open(&shards).unwrap(), &Device::Cpu).unwrap();
    assert_ne!(other.hash(), front.hash());
    let err = Front::load(&specs, 5, &ParamStore::open(&shards).unwrap(), &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("model.4."), "{err}");
}

#[test]
fn invalid_cut_names_the_valid_ones() {
    let store = ParamStore::open(&[fixture("yolov5n_weights.safetensors")]).unwrap();
    let err = Front::load(&yolov5n(), 6, &store, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("[1, 2, 3, 4, 5]"), "{err}");
    assert!(Front::load(&yolov5n(), 0, &store, &Device::Cpu).is_err());
}

#[test]
fn weights_for_another_config_are_refused() {
    // yolov5s weights shapes differ from yolov5n: a fresh yolov5s store saved, then loaded as yolov5n.
    let specs_s = ModelConfig::load("yolov5s").unwrap().layers().unwrap();
    let fresh = ParamStore::fresh(0);
    Yolo::load(fresh.var_builder(&Device::Cpu), &specs_s, 0, BatchNormConfig::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.safetensors");
    fresh.save(&p).unwrap();
    let store = ParamStore::open(&[p]).unwrap();
    let err = Yolo::load(store.var_builder(&Device::Cpu), &yolov5n(), 0, BatchNormConfig::default()).unwrap_err();
    assert!(err.to_string().contains("shape"), "{err}");
}

#[test]
fn save_and_reload_round_trips_every_tensor() {
    let (_, store) = full_model();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("copy.safetensors");
    store.save(&p).unwrap();
    let again = ParamStore::open(&[&p]).unwrap();
    let model = Yolo::load(again.var_builder(&device()), &yolov5n(), 0, BatchNormConfig::default()).unwrap();
    again.ensure_all_used().unwrap();
    let x = reference(64)["input"].clone();
    let (orig, _) = full_model();
    let a = orig.forward_t(&x, false).unwrap().raw;
    let b = model.forward_t(&x, false).unwrap().raw;
    for (a, b) in a.iter().zip(&b) {
        assert_eq!(rel_err(a, b), 0.0);
    }
    assert_eq!(store.tensors().len(), again.tensors().len());
}

#[test]
fn fused_cpu_front_equals_candle_ops_for_every_cut_and_batch() {
    let specs = yolov5n();
    let r = reference(64);
    let x = Tensor::cat(&[&r["input"], &r["input"].flip(&[3]).unwrap()], 0).unwrap();
    for cut in valid_cuts(&specs) {
        let store = ParamStore::open(&[fixture("yolov5n_weights.safetensors")]).unwrap();
        let front = Front::load(&specs, cut, &store, &Device::Cpu).unwrap();
        let fused = front.forward(&x).unwrap();
        let candle = front.forward_candle(&x).unwrap();
        let e = rel_err(&fused, &candle);
        assert!(e < 1e-5, "cut {cut}: fused path differs from candle's ops by {e}");
    }
}

//! `pretrain`, `train`, `val`, `export` and `mistnet-edge detect` through the real binaries, at
//! tiny sizes (yolov5n, 64 px, a few dozen synthetic images).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use candle_core::{Device, Tensor};

const IMGSZ: &str = "64";

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin).args(args).env("RUST_LOG", "warn").output().unwrap()
}

fn ok(bin: &str, args: &[&str]) -> String {
    let out = run(bin, args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn cloud(args: &[&str]) -> String {
    ok(env!("CARGO_BIN_EXE_mistnet-cloud"), args)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A synthetic dataset and a 2-epoch pretraining run, shared by the tests.
struct World {
    _dir: tempfile::TempDir,
    data: PathBuf,
    pretrained: PathBuf,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("synth");
        cloud(&["synth", "--out", s(&data), "--images", "80", "--imgsz", IMGSZ, "--seed", "5", "--edges", "1"]);
        let run = dir.path().join("pretrain");
        pretrain(&data, &run, &["--epochs", "2"]);
        World { pretrained: run.join("model.safetensors"), data, _dir: dir }
    })
}

/// Runs `pretrain` on the public split with the tiny settings and `extra` flags.
fn pretrain(data: &Path, out: &Path, extra: &[&str]) {
    let yaml = data.join("public.yaml");
    let mut args = vec!["pretrain", "--data", s(&yaml), "--model", "yolov5n", "--imgsz", IMGSZ, "--batch", "8", "--nbs", "8", "--out", s(out)];
    args.extend_from_slice(extra);
    cloud(&args);
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn val_json(weights: &Path, data: &Path) -> serde_json::Value {
    let out = cloud(&["val", "--weights", s(weights), "--data", s(data), "--json"]);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("val --json printed {out:?}: {e}"))
}

#[test]
fn resume_continues_exactly_where_the_run_stopped() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let (whole, sliced) = (dir.path().join("whole"), dir.path().join("sliced"));
    // Both start from the same weights (a fresh initialisation is not seeded).
    let from = s(&w.pretrained);
    pretrain(&w.data, &whole, &["--epochs", "2", "--weights", from]);
    pretrain(&w.data, &sliced, &["--epochs", "2", "--weights", from, "--stop-after", "1"]);
    let csv = std::fs::read_to_string(sliced.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 2, "one epoch done: {csv}");
    pretrain(&w.data, &sliced, &["--epochs", "2", "--weights", from, "--resume"]);
    for file in ["model.safetensors", "checkpoint.safetensors"] {
        let (a, b) = (tensors(&whole.join(file)), tensors(&sliced.join(file)));
        assert_eq!(a.len(), b.len(), "{file}");
        for (name, t) in &a {
            let d = (t.to_dtype(candle_core::DType::F64).unwrap() - b[name].to_dtype(candle_core::DType::F64).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
            assert_eq!(d, 0.0, "{file}: {name} differs after resuming");
        }
    }
    // The other columns agree too (all but the wall times: the epoch's, a step's, samples a second).
    let strip = |p: &Path| {
        let text = std::fs::read_to_string(p).unwrap();
        let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
        let timed: Vec<usize> = ["time_s", "step_s", "samples_per_s"].iter().map(|c| header.iter().position(|h| h == c).unwrap()).collect();
        text.lines().map(|l| l.split(',').enumerate().filter(|(i, _)| !timed.contains(i)).map(|(_, v)| v).collect::<Vec<_>>().join(",")).collect::<Vec<_>>()
    };
    assert_eq!(strip(&whole.join("results.csv")), strip(&sliced.join("results.csv")));
    for png in ["loss.png", "map.png"] {
        assert!(image::open(sliced.join(png)).is_ok(), "{png} is a readable image");
    }
    let prom = std::fs::read_to_string(sliced.join("metrics.prom")).unwrap();
    assert!(prom.lines().any(|l| l == "mistnet_train_epochs_done 2.0"), "metrics.prom is the last epoch's: {prom}");
}

#[test]
fn val_json_export_and_detect() {
    let w = world();
    let metrics = val_json(&w.pretrained, &w.data.join("public.yaml"));
    for key in ["map50_95", "map50", "yolov5_map50_95", "yolov5_map50"] {
        let v = metrics[key].as_f64().unwrap_or_else(|| panic!("{key} missing in {metrics}"));
        assert!((-1.0..=1.0).contains(&v), "{key} = {v}");
    }
    let dir = tempfile::tempdir().unwrap();
    let dets = dir.path().join("dets.json");
    cloud(&["val", "--weights", s(&w.pretrained), "--data", s(&w.data.join("public.yaml")), "--save-json", s(&dets)]);
    let dets: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&dets).unwrap()).unwrap();
    for d in &dets {
        let b: Vec<f64> = d["bbox"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert!(b[0] >= 0.0 && b[1] >= 0.0 && b[0] + b[2] <= 64.0 + 1e-3 && b[1] + b[3] <= 64.0 + 1e-3, "bbox in original pixels: {d}");
        assert!(d["image_id"].as_i64().unwrap() >= 1 && d["category_id"].as_i64().unwrap() >= 1 && d["score"].as_f64().is_some());
    }

    let export = dir.path().join("export");
    cloud(&["export", "--weights", s(&w.pretrained), "--cut", "4", "--out", s(&export)]);
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(export.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["cut"], 4);
    assert_eq!(manifest["names"].as_array().unwrap().len(), 5);
    assert!(manifest["model_yaml"].as_str().unwrap().contains("backbone"));
    assert_eq!(manifest["front"]["sha256"].as_str().unwrap().len(), 64);
    let front = tensors(&export.join("front.safetensors"));
    assert!(!front.is_empty() && front.keys().all(|k| ["model.0.", "model.1.", "model.2.", "model.3."].iter().any(|p| k.starts_with(p))));
    // The exported model evaluates as the original.
    assert_eq!(val_json(&export.join("model.safetensors"), &w.data.join("public.yaml")), metrics);

    let out = dir.path().join("detect");
    let images = w.data.join("private/val/images");
    ok(env!("CARGO_BIN_EXE_mistnet-cloud").replace("mistnet-cloud", "mistnet-edge").as_str(), &["detect", "--weights", s(&export.join("model.safetensors")), s(&images), "--out", s(&out), "--conf", "0.01"]);
    let first = std::fs::read_dir(&images).unwrap().map(|e| e.unwrap().path()).min().unwrap();
    let stem = first.file_stem().unwrap().to_str().unwrap();
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join(format!("{stem}.json"))).unwrap()).unwrap();
    assert_eq!(record["width"], 64);
    assert!(record["detections"].is_array());
    assert_eq!(image::open(out.join(format!("{stem}.png"))).unwrap().width(), 64);
}

//! Edge Front throughput and memory: yolov5s at cut 4 on a 640×640 letterboxed photo, batch 1.
//!
//! `cargo bench -p mistnet --bench front [-- --threads 2 --iters 30]`
//!
//! The parent process writes a Front-only weights file (random-init yolov5s, as no trained weights
//! can be downloaded) and re-runs itself as a child that only loads that file and runs the Front,
//! so the child's peak RSS is what an edge device pays. Compare with `tools/bench_front_torch.py`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use candle_core::Device;
use mistnet::data::letterbox::{letterbox, read_rgb};
use mistnet::model::image_to_tensor;
use mistnet::model::split::front_prefixes;
use mistnet::model::weights::save_tensors;
use mistnet::model::{Front, ModelConfig, ParamStore, Yolo, batch_norm::BatchNormConfig};

const CHILD_ENV: &str = "MISTNET_FRONT_BENCH_WEIGHTS";

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("numeric flag"))
        .unwrap_or(default)
}

fn image_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/astronaut.png")
}

fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn child(weights: PathBuf) {
    let iters = arg("--iters", 30);
    let specs = ModelConfig::load("yolov5s").unwrap().layers().unwrap();
    let front = Front::load(&specs, 4, &ParamStore::open(&[weights]).unwrap(), &Device::Cpu).unwrap();
    let (img, _) = letterbox(&read_rgb(&image_path()).unwrap(), 640);
    let x = image_to_tensor(&img, &Device::Cpu).unwrap();
    for _ in 0..3 {
        front.forward(&x).unwrap();
    }
    let mut times: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            let y = front.forward(&x).unwrap();
            assert_eq!(y.dims(), &[1, 128, 80, 80]);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "rust/candle front yolov5s cut4 640 bs1: median {median:.2} ms, min {:.2} ms, {:.1} images/s, peak RSS {:.1} MB",
        times[0],
        1e3 / median,
        peak_rss_mb().unwrap_or(f64::NAN)
    );
}

fn main() {
    if let Ok(weights) = std::env::var(CHILD_ENV) {
        return child(PathBuf::from(weights));
    }
    let threads = arg("--threads", 2);
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("yolov5s-front.safetensors");
    let specs = ModelConfig::load("yolov5s").unwrap().layers().unwrap();
    let store = ParamStore::fresh(0);
    Yolo::load(store.var_builder(&Device::Cpu), &specs, 0, BatchNormConfig::default()).unwrap();
    let front: std::collections::BTreeMap<_, _> =
        store.tensors().into_iter().filter(|(k, _)| front_prefixes(4).iter().any(|p| k.starts_with(p))).collect();
    save_tensors(&front, &weights).unwrap();
    let status = Command::new(std::env::current_exe().unwrap())
        .args(std::env::args().skip(1))
        .env(CHILD_ENV, &weights)
        .env("RAYON_NUM_THREADS", threads.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

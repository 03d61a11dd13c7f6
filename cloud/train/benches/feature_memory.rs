//! Trainer memory benchmark: the peak RSS of loading a feature store the way `train --store` does
//! (`FeatureStore::samples` → `FeatureSet::from_store`) and building a few augmented batches.
//!
//! The store holds SAMPLES (default 2,000) yolov5s cut-4 samples at 640 px, written through the
//! store writer: real wire messages of `[1, 128, 80, 80]` as the job's edges send them (SUE ε = 4,
//! packed, zstd 3) of structured features — in each channel a few rectangles of ones on zeros, a
//! quarter ones before the noise — since random values would not compress as real features do;
//! 1–8 labels each, original image sizes of several aspect ratios. The Front is a random-init yolov5s Front (its hash is what is checked).
//! The load runs in a child process (this binary again, `--child STORE`), so its peak RSS (VmHWM)
//! is the trainer's alone.
//!
//! Run: `cargo bench -p mistnet-train --bench feature_memory [-- SAMPLES]`.

use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use mistnet::codec::{EncodeParams, Encoding, Mechanism, Privacy, encode, seeded_rng};
use mistnet::data::{BadDataPolicy, Label};
use mistnet::model::{Front, ModelConfig, ParamStore};
use mistnet_train::fit::{Augment, FeatureSet, LabelledSource, StoreExpect, make_batch};
use mistnet_store::{FeatureStore, Outcome, StoreLimits, StoreWriter, Upload};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const CUT: usize = 4;
const IMGSZ: u32 = 640;
const NC: usize = 80;
/// The job's default privacy: SUE at ε = 4.
const EPSILON: f64 = 4.0;
const BATCH: usize = 16;
const BATCHES: usize = 4;
/// Original image sizes the samples cycle through.
const SIZES: [(u32, u32); 5] = [(640, 480), (480, 640), (640, 360), (1280, 720), (500, 300)];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        return child(std::path::Path::new(&args[i + 1]));
    }
    let samples: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(2000);
    let front = yolov5s_front();
    let side = IMGSZ as usize / front.out_stride();
    let shape = [1, front.out_channels(), side, side];
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");

    let t0 = Instant::now();
    let (bytes, ones) = write_store(&dir, &front, shape, samples);
    let elements = (shape.iter().product::<usize>() * samples) as f64;
    println!(
        "store: {samples} samples of {shape:?} (yolov5s cut {CUT}, {IMGSZ} px, SUE ε = {EPSILON}), {:.1} KB per message, {:.1}% ones before the noise, {:.1} MB in all; written in {:.1} s",
        bytes as f64 / samples as f64 / 1e3,
        100.0 * ones as f64 / elements,
        bytes as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    let out = std::process::Command::new(std::env::current_exe().unwrap()).arg("--child").arg(&dir).output().expect("run the child");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the child failed: {}", out.status);
}

/// A random-init yolov5s Front at cut 4: what matters here is its hash and output shape.
fn yolov5s_front() -> Front {
    let specs = ModelConfig::load("yolov5s").unwrap().layers().unwrap();
    Front::load(&specs, CUT, &ParamStore::fresh(0), &Device::Cpu).unwrap()
}

/// Writes `n` samples through the store writer; returns the message bytes and ones in all.
fn write_store(dir: &std::path::Path, front: &Front, shape: [usize; 4], n: usize) -> (usize, usize) {
    let params = EncodeParams {
        privacy: Privacy::new(Mechanism::Sue, Some(EPSILON)).unwrap(),
        encoding: Encoding::Packed,
        zstd_level: Some(3),
        cut: CUT as u16,
        front_hash: front.hash(),
    };
    let writer = Arc::new(StoreWriter::open(dir, StoreLimits::default()).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (mut bytes, mut ones) = (0, 0);
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        let uploads: Vec<Upload> = chunk
            .iter()
            .map(|&i| {
                let values = blocky(shape, &mut rng);
                ones += values.iter().filter(|&&v| v > 0.0).count();
                let features = encode(&values, &shape, &params, &mut seeded_rng(i as u64)).unwrap();
                bytes += features.len();
                let labels = (0..rng.random_range(1..=8))
                    .map(|_| {
                        let (w, h) = (rng.random_range(0.02f32..0.5), rng.random_range(0.02f32..0.5));
                        Label { class: rng.random_range(0..NC), cx: rng.random_range(w / 2.0..1.0 - w / 2.0), cy: rng.random_range(h / 2.0..1.0 - h / 2.0), w, h }
                    })
                    .collect();
                Upload { edge: format!("edge-{}", i % 4), sample_id: format!("images/{i:05}.jpg"), epsilon: EPSILON, labels, image_size: SIZES[i % SIZES.len()], features }
            })
            .collect();
        rt.block_on(async {
            let tasks: Vec<_> = uploads
                .into_iter()
                .map(|u| {
                    let w = Arc::clone(&writer);
                    tokio::spawn(async move { w.submit(u).await })
                })
                .collect();
            for t in tasks {
                assert_eq!(t.await.unwrap().unwrap(), Outcome::Stored);
            }
        });
    }
    Arc::into_inner(writer).expect("no task holds the writer").close();
    (bytes, ones)
}

/// Feature values of `shape`: in every channel 2–6 rectangles of ones (sides 4–40) on zeros.
fn blocky(shape: [usize; 4], rng: &mut ChaCha8Rng) -> Vec<f32> {
    let [_, c, h, w] = shape;
    let mut values = vec![-1f32; c * h * w];
    for plane in values.chunks_mut(h * w) {
        for _ in 0..rng.random_range(2..=6) {
            let (bh, bw) = (rng.random_range(4..=40), rng.random_range(4..=40));
            let (y0, x0) = (rng.random_range(0..=h - bh), rng.random_range(0..=w - bw));
            for y in y0..y0 + bh {
                plane[y * w + x0..y * w + x0 + bw].fill(1.0);
            }
        }
    }
    values
}

/// The trainer's side, alone in this process: load the store as `train --store` does, build
/// augmented batches as `fit` does, report peak RSS.
fn child(dir: &std::path::Path) {
    mistnet::runtime::init();
    println!("child: before loading       VmRSS {:>6.0} MB  VmHWM {:>6.0} MB", status_mb("VmRSS"), status_mb("VmHWM"));
    let expect = StoreExpect::new(&yolov5s_front(), IMGSZ, NC).unwrap();
    let t0 = Instant::now();
    let store = FeatureStore::open(dir).unwrap();
    let (set, skipped) = FeatureSet::from_store(store.samples().unwrap(), &expect, BadDataPolicy::Fail).unwrap();
    assert_eq!((set.len(), skipped), (store.len(), 0));
    let load = t0.elapsed().as_secs_f64();
    println!("child: loaded {} samples      VmRSS {:>6.0} MB  VmHWM {:>6.0} MB  ({load:.1} s)", set.len(), status_mb("VmRSS"), status_mb("VmHWM"));
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let t0 = Instant::now();
    for b in 0..BATCHES {
        let indices: Vec<usize> = (b * BATCH..(b + 1) * BATCH).collect();
        let (inputs, targets) = make_batch(&set, &indices, Some(&mut Augment { rng: &mut rng, mosaic: 1.0 })).unwrap();
        assert_eq!(inputs.dims()[0], BATCH);
        std::hint::black_box((inputs, targets));
    }
    let per_batch = t0.elapsed().as_secs_f64() / BATCHES as f64 * 1e3;
    println!(
        "child: {BATCHES} batches of {BATCH}        VmRSS {:>6.0} MB  VmHWM {:>6.0} MB  ({per_batch:.0} ms per batch, augmented)",
        status_mb("VmRSS"),
        status_mb("VmHWM")
    );
}

/// A `/proc/self/status` field (kB) in MB.
fn status_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status (Linux)");
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    line.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()).expect("a number of kB") / 1e3
}

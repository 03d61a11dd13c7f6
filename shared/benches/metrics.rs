//! Speed of the metrics on realistic sizes: SSIM of a 256×256 RGB pair (the privacy evaluation),
//! NMS of one 640-px YOLOv5 output (25200 × 85, val.py settings), and COCOeval + YOLOv5 mAP on
//! the 30-image random fixture case.
//!
//! `cargo bench -p mistnet --bench metrics`

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use mistnet::metrics::map::{CocoDetections, CocoGroundTruth, coco_eval, yolo_map};
use mistnet::metrics::{ImageF32, NmsConfig, SsimConfig, non_max_suppression, ssim};

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path)
}

/// A deterministic pseudo-random sequence in 0..1 (no RNG crate needed for a benchmark input).
fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

fn bench_ssim(c: &mut Criterion) {
    let a = ImageF32::from_rgb(&image::open(fixture("ssim/images/c02_astro256_gnoise10_a.png")).unwrap().to_rgb8());
    let b = ImageF32::from_rgb(&image::open(fixture("ssim/images/c02_astro256_gnoise10_b.png")).unwrap().to_rgb8());
    c.bench_function("ssim_gaussian_256x256_rgb", |bench| {
        bench.iter(|| ssim(black_box(&a), black_box(&b), &SsimConfig::default()).unwrap())
    });
}

fn bench_nms(c: &mut Criterion) {
    // 25200 rows as YOLOv5s at 640 px: boxes anywhere, sigmoid-like scores skewed low.
    let (rows, nc) = (25200, 80);
    let r = uniform(rows * (5 + nc), 1);
    let preds: Vec<f32> = r
        .chunks_exact(5 + nc)
        .flat_map(|row| {
            let mut out = vec![row[0] * 640.0, row[1] * 640.0, 8.0 + row[2] * 200.0, 8.0 + row[3] * 200.0];
            out.push(row[4].powi(4));
            out.extend(row[5..].iter().map(|v| v.powi(8)));
            out
        })
        .collect();
    c.bench_function("nms_25200x85_val_settings", |bench| {
        bench.iter(|| non_max_suppression(black_box(&preds), nc, &NmsConfig::default()).unwrap())
    });
}

fn bench_map(c: &mut Criterion) {
    let gt = CocoGroundTruth::from_file(fixture("map/cases/case06_random_gt.json")).unwrap();
    let dt = CocoDetections::from_file(fixture("map/cases/case06_random_dt.json")).unwrap();
    c.bench_function("coco_eval_30_images", |bench| bench.iter(|| coco_eval(black_box(&gt), black_box(&dt)).unwrap()));
    c.bench_function("yolo_map_30_images", |bench| bench.iter(|| yolo_map(black_box(&gt), black_box(&dt)).unwrap()));
}

criterion_group!(benches, bench_ssim, bench_nms, bench_map);
criterion_main!(benches);

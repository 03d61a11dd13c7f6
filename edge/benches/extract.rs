//! The edge's whole per-image job on a directory of non-square JPEG photos, against the PyTorch
//! pipeline in the same run: decode, letterbox to 640 px, the yolov5s Front at cut 4, binarize,
//! randomized response (`sue`, ε = 4), pack, compress and the durable write, per image
//! (`mistnet-edge extract --encoding packed --mechanism sue --epsilon 4`).
//!
//! `cargo bench -p mistnet-edge --bench extract [-- --threads 1,2 --rounds 3 --images 24 --precision f32,bf16 --torch PYTHON]`
//!
//! The photos are cut from the two fixture photos (`astronaut.png`, `coffee.png`) at five sizes
//! and both orientations (640×480 … 1024×768) and written as JPEG. Both sides load a random-init
//! Front (no trained weights can be downloaded; the time does not depend on the values). Each
//! round runs every configuration once, ours and `tools/bench_edge_torch.py` alternately, each a
//! fresh process, with the load average read just before it; the figure is the time from the first
//! image to the last as the program prints it (model loading excluded on both sides).

use std::path::{Path, PathBuf};
use std::process::Command;

use image::imageops::FilterType;
use mistnet::model::ModelConfig;
use mistnet::model::split::save_fresh_front;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_string())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

/// `n` JPEG photos of five sizes, landscape and portrait, cut from the fixture photos.
fn write_photos(dir: &Path, n: usize) {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/tests/fixtures/images");
    let sources: Vec<image::RgbImage> = ["astronaut.png", "coffee.png"].iter().map(|f| image::open(fixtures.join(f)).unwrap().to_rgb8()).collect();
    let sizes = [(640, 480), (800, 600), (1024, 768), (720, 540), (960, 720)];
    for i in 0..n {
        let src = &sources[i % sources.len()];
        let (mut w, mut h) = sizes[i % sizes.len()];
        if (i / sizes.len()) % 2 == 1 {
            std::mem::swap(&mut w, &mut h);
        }
        // A centred crop of the source with the photo's aspect ratio, resized to the photo's size.
        let (sw, sh) = src.dimensions();
        let scale = (sw as f64 / w as f64).min(sh as f64 / h as f64);
        let (cw, ch) = ((w as f64 * scale) as u32, (h as f64 * scale) as u32);
        let crop = image::imageops::crop_imm(src, (sw - cw) / 2, (sh - ch) / 2, cw, ch).to_image();
        image::imageops::resize(&crop, w, h, FilterType::Triangle).save(dir.join(format!("photo-{i:03}.jpg"))).unwrap();
    }
}

/// Runs `cmd` and prints the `extracted: ...` line it printed after the round, the thread count,
/// what ran and the load average read just before.
fn report(cmd: &mut Command, round: usize, threads: &str, what: &str) {
    let load = load_average();
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout.lines().find(|l| l.starts_with("extracted:")).unwrap_or_else(|| panic!("{what} printed no summary: {stdout}"));
    println!("round {round}, {threads} thread(s), load {load}: {what}: {summary}");
}

fn main() {
    let (threads, precisions) = (arg("--threads", "1,2"), arg("--precision", "f32,bf16"));
    let rounds: usize = arg("--rounds", "3").parse().expect("--rounds N");
    let images: usize = arg("--images", "24").parse().expect("--images N");
    let torch = std::env::args().any(|a| a == "--torch").then(|| arg("--torch", "python3"));
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    write_photos(&photos, images);
    let weights = dir.path().join("yolov5s-front.safetensors");
    save_fresh_front(&ModelConfig::load("yolov5s").unwrap().layers().unwrap(), 4, 0, &weights).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tools/bench_edge_torch.py");
    println!("{images} JPEG photos (640×480 to 1024×768, both orientations), yolov5s cut 4, 640 px, sue ε = 4");
    for round in 1..=rounds {
        for t in threads.split(',') {
            for precision in precisions.split(',') {
                let mut ours = Command::new(env!("CARGO_BIN_EXE_mistnet-edge"));
                ours.args(["extract", "--model", "yolov5s", "--cut", "4", "--imgsz", "640", "--encoding", "packed"])
                    .args(["--mechanism", "sue", "--epsilon", "4", "--seed", "1", "--precision", precision, "--weights"])
                    .arg(&weights)
                    .arg(&photos)
                    .arg("--out")
                    .arg(dir.path().join(format!("out-{round}-{t}-{precision}")))
                    .env("RAYON_NUM_THREADS", t);
                report(&mut ours, round, t, &format!("mistnet-edge {precision}"));
            }
            if let Some(python) = &torch {
                let mut theirs = Command::new(python);
                theirs.arg(&script).arg(&photos).arg(dir.path().join(format!("out-{round}-{t}-torch"))).args(["--threads", t]);
                report(&mut theirs, round, t, "pytorch");
            }
        }
    }
}

//! Edge Front throughput and memory: yolov5s at cut 4 on a 640×640 letterboxed photo, batch 1,
//! against PyTorch's in the same run.
//!
//! `cargo bench -p mistnet --bench front [-- --threads 1,2 --iters 30 --rounds 3 --precision f32,bf16 --torch PYTHON]`
//!
//! The parent process writes a Front-only weights file (random-init yolov5s, as no trained weights
//! can be downloaded) and re-runs itself as a child that only loads that file and runs the Front,
//! so the child's peak RSS is what an edge device pays. With `--torch PYTHON` (an interpreter with
//! torch) each round also runs `tools/bench_front_torch.py`, alternately with ours, and every line
//! carries the load average read just before it ran. For a precision other than f32 the child also
//! says what fraction of the sent bits (the output's signs) differ from the f32 Front's.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use candle_core::Device;
use mistnet::data::letterbox::{letterbox, read_rgb};
use mistnet::model::direct::Precision;
use mistnet::model::image_to_tensor;
use mistnet::model::split::save_fresh_front;
use mistnet::model::{Front, ModelConfig, ParamStore};

const CHILD_ENV: &str = "MISTNET_FRONT_BENCH_WEIGHTS";

fn arg_str(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn arg(name: &str, default: usize) -> usize {
    arg_str(name).map(|v| v.parse().expect("numeric flag")).unwrap_or(default)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
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
    mistnet::runtime::init();
    let iters = arg("--iters", 30);
    let specs = ModelConfig::load("yolov5s").unwrap().layers().unwrap();
    let mut front = Front::load(&specs, 4, &ParamStore::open(&[weights]).unwrap(), &Device::Cpu).unwrap();
    let precision: Precision = arg_str("--precision").unwrap_or_else(|| "f32".into()).parse().unwrap();
    front.set_precision(precision).unwrap();
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
    let rss = peak_rss_mb().unwrap_or(f64::NAN);
    // The sent bits are the signs: how many this precision changes, on this image.
    let differ = if precision == Precision::F32 {
        String::new()
    } else {
        let y = front.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        front.set_precision(Precision::F32).unwrap();
        let reference = front.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let n = y.iter().zip(&reference).filter(|(a, b)| (**a > 0.0) != (**b > 0.0)).count();
        format!(", {:.3}% of bits differ from f32", 100.0 * n as f64 / y.len() as f64)
    };
    println!(
        "mistnet {precision} front yolov5s cut4 640 bs1: median {median:.2} ms, min {:.2} ms, {:.1} images/s, peak RSS {rss:.1} MB{differ}",
        times[0],
        1e3 / median,
    );
}

/// Runs `cmd`, and prints its stdout after the round, the thread count and the load average.
fn report(cmd: &mut Command, round: usize, threads: &str) {
    let load = load_average();
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    print!("round {round}, {threads} thread(s), load {load}: {}", String::from_utf8_lossy(&out.stdout));
}

fn main() {
    if let Ok(weights) = std::env::var(CHILD_ENV) {
        return child(PathBuf::from(weights));
    }
    let threads = arg_str("--threads").unwrap_or_else(|| "2".into());
    let precisions = arg_str("--precision").unwrap_or_else(|| "f32".into());
    let (iters, rounds) = (arg("--iters", 30), arg("--rounds", 1));
    let torch = arg_str("--torch");
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("yolov5s-front.safetensors");
    save_fresh_front(&ModelConfig::load("yolov5s").unwrap().layers().unwrap(), 4, 0, &weights).unwrap();
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has = |flag: &str| cpu.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|w| w == flag));
    let flags: Vec<&str> = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni"].into_iter().filter(|f| has(f)).collect();
    println!("cpu: {}; {}", cpu.lines().find(|l| l.starts_with("model name")).unwrap_or("?"), flags.join(" "));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tools/bench_front_torch.py");
    for round in 1..=rounds {
        for threads in threads.split(',') {
            for precision in precisions.split(',') {
                let mut ours = Command::new(std::env::current_exe().unwrap());
                ours.args(["--iters", &iters.to_string(), "--precision", precision]).env(CHILD_ENV, &weights).env("RAYON_NUM_THREADS", threads);
                report(&mut ours, round, threads);
            }
            if let Some(python) = &torch {
                let mut theirs = Command::new(python);
                theirs.arg(&script).args(["--threads", threads, "--iters", &iters.to_string()]).arg("--image").arg(image_path());
                report(&mut theirs, round, threads);
            }
        }
    }
}

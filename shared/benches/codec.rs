//! Codec benchmarks on a realistic feature map: `tests/fixtures/images/astronaut.png` letterboxed to
//! 640 px through a yolov5s Front (cut 4: 128×80×80 = 819,200 elements) with fresh random-init
//! weights, as issue 3 measures.
//!
//! Prints bytes per sample for every mechanism and ε next to the f16 + zstd-1 and f32 baselines,
//! then times (criterion, elements/s) encode, decode, their stages, and the Front itself.
//!
//! `cargo bench -p mistnet --bench codec -- --quick`

use std::hint::black_box;

use candle_core::Device;
use criterion::{BenchmarkId, Criterion, Throughput};
use mistnet::codec::{
    DecodeLimits, EncodeParams, Encoding, FrontHash, Mechanism, Privacy, Stats, binarize, decode, encode, seeded_rng,
};
use mistnet::data::letterbox::{letterbox, read_rgb};
use mistnet::model::image_to_tensor;
use mistnet::model::{Front, ModelConfig, ParamStore};

const EPSILONS: [f64; 5] = [0.5, 1.0, 2.0, 4.0, 8.0];
const CUT: usize = 4;

struct Input {
    front: Front,
    image: candle_core::Tensor,
    values: Vec<f32>,
    dims: Vec<usize>,
}

fn load() -> Input {
    let root = env!("CARGO_MANIFEST_DIR");
    let specs = ModelConfig::load(&format!("{root}/../models/yolov5s.yaml")).unwrap().layers().unwrap();
    let front = Front::load(&specs, CUT, &ParamStore::fresh(0), &Device::Cpu).unwrap();
    let img = read_rgb(format!("{root}/tests/fixtures/images/astronaut.png").as_ref()).unwrap();
    let image = image_to_tensor(&letterbox(&img, 640).0, &Device::Cpu).unwrap();
    let features = front.forward(&image).unwrap();
    let dims = features.dims().to_vec();
    let values = features.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    Input { front, image, values, dims }
}

fn params(privacy: Privacy, encoding: Encoding, zstd_level: Option<i32>) -> EncodeParams {
    EncodeParams { privacy, encoding, zstd_level, cut: CUT as u16, front_hash: FrontHash([0; 32]) }
}

fn settings() -> Vec<Privacy> {
    let mut v = vec![Privacy::none()];
    for m in [Mechanism::Sue, Mechanism::Rr, Mechanism::Oue] {
        v.extend(EPSILONS.map(|e| Privacy::new(m, Some(e)).unwrap()));
    }
    v
}

fn bytes(input: &Input, p: &EncodeParams) -> (usize, f64) {
    let msg = encode(&input.values, &input.dims, p, &mut seeded_rng(1)).unwrap();
    let stats = Stats::of(&decode(&msg, &DecodeLimits::default()).unwrap(), msg.len());
    (msg.len(), stats.fraction_ones())
}

fn print_sizes(input: &Input) {
    let n = input.values.len();
    let floor = n.div_ceil(8);
    println!("bytes per sample, shape {:?} ({n} elements; 1-bit floor {floor} B; messages include the 80 B header)", input.dims);
    println!("{:<6} {:>5} {:>8} {:>12} {:>10} {:>12} {:>14} {:>10}", "mech", "ε", "ones", "packed+zstd3", "vs floor", "packed+zstd1", "f16+zstd1", "f32");
    for privacy in settings() {
        let (packed3, ones) = bytes(input, &params(privacy, Encoding::Packed, Some(3)));
        let (packed1, _) = bytes(input, &params(privacy, Encoding::Packed, Some(1)));
        let (f16, _) = bytes(input, &params(privacy, Encoding::F16, Some(1)));
        let (f32, _) = bytes(input, &params(privacy, Encoding::F32, None));
        let eps = privacy.epsilon().map_or("-".into(), |e| e.to_string());
        let over = 100.0 * (packed3 as f64 / floor as f64 - 1.0);
        println!(
            "{:<6} {eps:>5} {ones:>8.4} {packed3:>12} {over:>9.2}% {packed1:>12} {f16:>14} {f32:>10}",
            privacy.mechanism().name()
        );
    }
}

fn benches(c: &mut Criterion, input: &Input) {
    let n = input.values.len() as u64;
    let sue2 = Privacy::new(Mechanism::Sue, Some(2.0)).unwrap();
    let oue2 = Privacy::new(Mechanism::Oue, Some(2.0)).unwrap();
    let rr8 = Privacy::new(Mechanism::Rr, Some(8.0)).unwrap();

    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(n));
    for (name, p) in [
        ("none/packed+zstd3", params(Privacy::none(), Encoding::Packed, Some(3))),
        ("sue2/packed+zstd3", params(sue2, Encoding::Packed, Some(3))),
        ("oue2/packed+zstd3", params(oue2, Encoding::Packed, Some(3))),
        ("rr8/packed+zstd3", params(rr8, Encoding::Packed, Some(3))),
        ("sue2/f16+zstd1", params(sue2, Encoding::F16, Some(1))),
    ] {
        let mut rng = seeded_rng(2);
        g.bench_function(name, |b| b.iter(|| encode(black_box(&input.values), &input.dims, &p, &mut rng).unwrap()));
    }
    g.finish();

    let mut g = c.benchmark_group("encode-stages");
    g.throughput(Throughput::Elements(n));
    g.bench_function("binarize", |b| b.iter(|| binarize(black_box(&input.values)).unwrap()));
    let bits = binarize(&input.values).unwrap();
    for (name, p) in [("sue2", sue2), ("oue2", oue2), ("rr8", rr8)] {
        let mut rng = seeded_rng(3);
        g.bench_function(BenchmarkId::new("randomize", name), |b| {
            b.iter(|| {
                let mut x = bits.clone();
                p.randomize(&mut x, &mut rng);
                x
            })
        });
    }
    g.bench_function("pack", |b| b.iter(|| black_box(&bits).to_packed()));
    g.finish();

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(n));
    for (name, p) in [
        ("none/packed+zstd3", params(Privacy::none(), Encoding::Packed, Some(3))),
        ("sue2/packed+zstd3", params(sue2, Encoding::Packed, Some(3))),
        ("sue2/f16+zstd1", params(sue2, Encoding::F16, Some(1))),
    ] {
        let msg = encode(&input.values, &input.dims, &p, &mut seeded_rng(4)).unwrap();
        g.bench_function(name, |b| b.iter(|| decode(black_box(&msg), &DecodeLimits::default()).unwrap()));
    }
    g.finish();

    let mut g = c.benchmark_group("front");
    g.sample_size(10);
    g.bench_function("yolov5s-cut4-640", |b| b.iter(|| input.front.forward(black_box(&input.image)).unwrap()));
    g.finish();
}

fn main() {
    let input = load();
    print_sizes(&input);
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c, &input);
    c.final_summary();
}

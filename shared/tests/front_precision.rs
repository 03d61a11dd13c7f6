//! The bf16 Front against the f32 one on real photos: how many of the sent bits (the signs of the
//! Front's output) it changes. The Front is the shipped pretrained yolov5n
//! (`tests/fixtures/yolov5n-synth128-pretrained.safetensors`); the photos are the aerial tiles of
//! `tests/fixtures/deepforest-yell-128/` and the two skimage photos, letterboxed to 320 px.

use std::path::PathBuf;

use candle_core::Device;
use mistnet::data::letterbox::{letterbox, read_rgb};
use mistnet::model::direct::Precision;
use mistnet::model::{Front, ModelConfig, ParamStore, image_to_tensor};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn photos() -> Vec<PathBuf> {
    let mut photos: Vec<PathBuf> =
        walkdir::WalkDir::new(repo().join("tests/fixtures/deepforest-yell-128"))
            .into_iter()
            .map(|e| e.unwrap().into_path())
            .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
            .collect();
    photos.sort();
    photos.extend(
        ["astronaut.png", "coffee.png"]
            .map(|f| repo().join("shared/tests/fixtures/images").join(f)),
    );
    photos
}

#[test]
fn bf16_changes_few_of_the_sent_bits_on_real_photos() {
    if !Precision::Bf16.available() {
        eprintln!("skipped: this CPU has no AVX512-BF16, so the bf16 Front cannot run");
        return;
    }
    let specs = ModelConfig::load("yolov5n").unwrap().layers().unwrap();
    let store =
        ParamStore::open(&[repo().join("tests/fixtures/yolov5n-synth128-pretrained.safetensors")])
            .unwrap();
    let mut front = Front::load(&specs, 4, &store, &Device::Cpu).unwrap();
    let (mut differ, mut total) = (0usize, 0usize);
    for photo in photos() {
        let (img, _) = letterbox(&read_rgb(&photo).unwrap(), 320);
        let x = image_to_tensor(&img, &Device::Cpu).unwrap();
        let [f32_bits, bf16_bits] = [Precision::F32, Precision::Bf16].map(|p| {
            front.set_precision(p).unwrap();
            let y = front
                .forward(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            y.into_iter().map(|v| v > 0.0).collect::<Vec<bool>>()
        });
        differ += f32_bits
            .iter()
            .zip(&bf16_bits)
            .filter(|(a, b)| a != b)
            .count();
        total += f32_bits.len();
    }
    let fraction = differ as f64 / total as f64;
    println!(
        "bf16 against f32: {differ} of {total} sent bits differ ({:.4}%) over {} photos",
        100.0 * fraction,
        photos().len()
    );
    // Randomized response (`sue`, the default mechanism) flips 1.8% of the bits at ε = 8.
    assert!(
        fraction < 0.005,
        "bf16 changes {:.3}% of the sent bits",
        100.0 * fraction
    );
    assert!(differ > 0, "bf16 changed no bit at all: is it running?");
}

//! The synthetic dataset: byte-for-byte determinism, valid and tight labels, the promised splits,
//! and a real domain shift between public and private images.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use image::Rgb;
use mistnet::data::synth::{CLASSES, Canvas, Domain, SynthConfig, generate, render};
use mistnet::data::{BadDataPolicy, Dataset, Split};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const SMALL: SynthConfig = SynthConfig { images: 40, imgsz: 64, seed: 11, edges: 2, private_size: None };

/// Every file under `root`, by relative path, with the root's path replaced in text files.
fn files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let root_text = fs::canonicalize(root).unwrap().display().to_string();
    walkdir::WalkDir::new(root)
        .into_iter()
        .map(Result::unwrap)
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let bytes = fs::read(e.path()).unwrap();
            let bytes = match String::from_utf8(bytes) {
                Ok(text) => text.replace(&root_text, "ROOT").into_bytes(),
                Err(e) => e.into_bytes(),
            };
            (e.path().strip_prefix(root).unwrap().to_path_buf(), bytes)
        })
        .collect()
}

#[test]
fn same_seed_same_bytes_other_seed_other_images() {
    let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    generate(&SMALL, a.path()).unwrap();
    generate(&SMALL, b.path()).unwrap();
    generate(&SynthConfig { seed: 12, ..SMALL }, c.path()).unwrap();
    let (fa, fb, fc) = (files(a.path()), files(b.path()), files(c.path()));
    assert_eq!(fa.len(), 2 * SMALL.images + 7, "images + labels + 5 YAMLs + manifest + README");
    assert!(fa == fb, "same seed must give identical files");
    let png = Path::new("public/train/images/000000.png");
    assert_ne!(fa[png], fc[png], "another seed must give other images");
}

#[test]
fn every_split_loads_cleanly_with_the_promised_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SynthConfig { images: 50, edges: 3, ..SMALL };
    let manifest = generate(&cfg, dir.path()).unwrap();
    let count = |yaml: &str, split| {
        let ds = Dataset::open(&dir.path().join(yaml)).unwrap();
        assert_eq!(ds.names(), CLASSES);
        let loaded = ds.load(split, BadDataPolicy::Fail).unwrap();
        for s in &loaded.samples {
            assert_eq!(s.size, (64, 64));
            assert!((1..=4).contains(&s.labels.len()), "{:?}", s.image_path);
            for l in &s.labels {
                let side = l.w.max(l.h);
                assert!((0.05..=0.62).contains(&side), "object side {side} of {:?}", s.image_path);
            }
        }
        loaded.samples.len()
    };
    assert_eq!(count("public.yaml", Split::Train), 20);
    assert_eq!(count("public.yaml", Split::Val), 5);
    assert_eq!(count("private-val.yaml", Split::Val), 5);
    assert_eq!([0, 1, 2].map(|k| count(&format!("private/edge-{k}.yaml"), Split::Train)), [7, 7, 6]);
    assert_eq!(count("private/edge-2.yaml", Split::Val), 5);
    assert_eq!(count("private.yaml", Split::Train), 20);
    let images: Vec<usize> = manifest.splits.iter().map(|s| s.images).collect();
    assert_eq!(images, [20, 5, 5, 7, 7, 6]);
    assert!(dir.path().join("README.md").is_file() && dir.path().join("manifest.json").is_file());
    assert!(generate(&cfg, dir.path()).unwrap_err().to_string().contains("not empty"));
    let few = generate(&SynthConfig { images: 9, ..SMALL }, &dir.path().join("few")).unwrap_err();
    assert!(few.to_string().contains("--images 9 is too few"), "{few}");
}

/// Each label is exactly the box of the pixels its object changes when drawn alone on black.
#[test]
fn labels_are_tight_boxes_around_each_object() {
    let size = 96;
    let mut objects = 0;
    for seed in 0..20 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let domain = if seed % 2 == 0 { Domain::Public } else { Domain::Private };
        let img = render(domain, &[1.0; 5], size, &mut rng).unwrap();
        assert_eq!(img.labels.len(), img.objects.len());
        for (label, object) in img.labels.iter().zip(&img.objects) {
            assert_eq!(label.class, object.shape.class());
            let mut canvas = Canvas::filled(size, [0.0; 3]);
            object.draw(&mut canvas, &object.coverage(size));
            let drawn = canvas.to_image();
            let (mut x1, mut y1, mut x2, mut y2) = (u32::MAX, u32::MAX, 0, 0);
            for (x, y, p) in drawn.enumerate_pixels() {
                if *p != Rgb([0, 0, 0]) {
                    (x1, y1, x2, y2) = (x1.min(x), y1.min(y), x2.max(x + 1), y2.max(y + 1));
                }
            }
            let want = [x1, y1, x2, y2].map(|v| v as f32);
            let got = label.to_pixels((size, size));
            assert!(got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-3), "seed {seed}: label {got:?}, pixels {want:?}");
            objects += 1;
        }
    }
    assert!(objects >= 40, "only {objects} objects drawn");
    let err = render(Domain::Public, &[0.0; 5], size, &mut ChaCha8Rng::seed_from_u64(0)).unwrap_err();
    assert!(err.to_string().starts_with("synth: class mix [0.0, 0.0, 0.0, 0.0, 0.0]"), "{err}");
}

#[test]
fn private_images_are_darker_than_public_ones() {
    let brightness = |domain| {
        let mut mean = 0.0;
        for seed in 0..30 {
            let img = render(domain, &[1.0; 5], 64, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap().image;
            mean += img.pixels().flat_map(|p| p.0).map(f64::from).sum::<f64>() / (3 * 64 * 64 * 30) as f64;
        }
        mean
    };
    let (public, private) = (brightness(Domain::Public), brightness(Domain::Private));
    assert!(private < public * 0.85, "mean brightness: public {public:.1}, private {private:.1}");
}

#[test]
fn private_size_gives_non_square_private_images_with_the_square_labels() {
    let (square, wide) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    generate(&SMALL, square.path()).unwrap();
    let manifest = generate(&SynthConfig { private_size: Some((96, 40)), ..SMALL }, wide.path()).unwrap();
    assert_eq!(manifest.private_size, Some((96, 40)));
    for (yaml, size) in [("private/edge-0.yaml", (96, 40)), ("private-val.yaml", (96, 40)), ("public.yaml", (64, 64))] {
        let load = |root: &Path| Dataset::open(&root.join(yaml)).unwrap().load(Split::Train, BadDataPolicy::Fail).unwrap().samples;
        let (a, b) = (load(square.path()), load(wide.path()));
        assert_eq!(a.len(), b.len());
        for (a, b) in a.iter().zip(&b) {
            assert_eq!(b.size, size, "{yaml}");
            assert_eq!(image::image_dimensions(&b.image_path).unwrap(), size);
            assert_eq!(a.labels, b.labels, "{yaml}: normalized labels survive the resize");
        }
    }
    let bad = generate(&SynthConfig { private_size: Some((4, 40)), ..SMALL }, &wide.path().join("bad")).unwrap_err();
    assert!(bad.to_string().contains("--private-size"), "{bad}");
}

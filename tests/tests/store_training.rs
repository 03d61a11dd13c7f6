//! `train --store` against `train --data`: a store filled by `mistnet-cloud serve` and
//! `mistnet-edge run` (real processes on loopback) gives the trainer exactly the inputs the
//! simulation path makes of the same non-square images; unusable stored samples (another Front,
//! another letterbox size) fail the run, naming them, or are skipped and counted with `--skip-bad`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use candle_core::Device;
use mistnet::codec::{EncodeParams, Encoding, FrontHash, Privacy, encode, seeded_rng};
use mistnet::encoder::{EdgeEncoder, WireSettings};
use mistnet::data::{BadDataPolicy, Dataset, Label, Split};
use mistnet::model::{Front, ModelConfig, ParamStore};
use mistnet_train::fit::{Augment, FeatureSet, LabelledSource, StoreExpect};
use mistnet_store::{FeatureStore, Outcome, StoreLimits, StoreWriter, Upload};
use mistnet_e2e::{binary, start_cloud, start_edge};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const LIMIT: Duration = Duration::from_secs(180);
const IMGSZ: u32 = 128;
const TOKEN: &str = "token-of-edge-0-0123456789";
/// Images (name, width, height): wide, tall and square.
const IMAGES: [(&str, u32, u32); 3] = [("wide", 640, 360), ("tall", 300, 500), ("square", 160, 160)];

struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    yaml: PathBuf,
    weights: PathBuf,
    store: PathBuf,
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A YOLO dataset of [`IMAGES`] (train and val alike), with two boxes each.
fn dataset(root: &Path) -> PathBuf {
    for dir in ["images/train", "labels/train"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    for (k, (name, w, h)) in IMAGES.into_iter().enumerate() {
        // Grey background with two coloured rectangles, where the labels say.
        let boxes = [(0, 0.3f32, 0.4f32, 0.3f32, 0.5f32), (1, 0.7, 0.6, 0.2, 0.3)];
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let (u, v) = (x as f32 / w as f32, y as f32 / h as f32);
            let inside = |&(_, cx, cy, bw, bh): &(usize, f32, f32, f32, f32)| (u - cx).abs() < bw / 2.0 && (v - cy).abs() < bh / 2.0;
            match boxes.iter().position(inside) {
                Some(0) => image::Rgb([220, 40 + 30 * k as u8, 30]),
                Some(_) => image::Rgb([20, 60, 230 - 40 * k as u8]),
                None => image::Rgb([90 + (x % 16) as u8, 100, 110 + (y % 8) as u8]),
            }
        });
        img.save(root.join(format!("images/train/{name}.png"))).unwrap();
        let lines: String = boxes.iter().map(|(c, cx, cy, bw, bh)| format!("{c} {cx} {cy} {bw} {bh}\n")).collect();
        std::fs::write(root.join(format!("labels/train/{name}.txt")), lines).unwrap();
    }
    let yaml = root.join("data.yaml");
    std::fs::write(&yaml, format!("path: {}\ntrain: images/train\nval: images/train\nnc: 2\nnames: [red, blue]\n", root.display())).unwrap();
    yaml
}

/// The dataset uploaded by one edge (mechanism none: the bits are the Front's, no noise) to a
/// `serve` at [`IMGSZ`] with the yolov5n fixture weights; the server is stopped after.
fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let yaml = dataset(&root.join("data"));
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tests/fixtures/yolov5/yolov5n_weights.safetensors");
    std::fs::write(root.join("tokens.txt"), format!("edge-0 {TOKEN}\n")).unwrap();
    std::fs::write(root.join("edge-0.token"), TOKEN).unwrap();
    let store = root.join("store");
    let imgsz = IMGSZ.to_string();
    let (_cloud, addr) = start_cloud(&[
        "--listen", "127.0.0.1:0", "--store", s(&store), "--model", "yolov5n", "--weights", s(&weights), "--cut", "4", "--imgsz", &imgsz, "--tokens",
        s(&root.join("tokens.txt")),
    ]);
    let server = format!("http://{addr}");
    let mut edge = start_edge(&[
        "--server", &server, "--edge", "edge-0", "--token-file", s(&root.join("edge-0.token")), "--data", s(&yaml), "--mechanism", "none", "--cache",
        s(&root.join("cache")),
    ]);
    assert!(edge.wait_for(LIMIT).success(), "the edge failed");
    World { _tmp: tmp, root, yaml, weights, store }
}

fn front(weights: &Path) -> Front {
    let specs = ModelConfig::load("yolov5n").unwrap().layers().unwrap();
    Front::load(&specs, 4, &ParamStore::open(&[weights]).unwrap(), &Device::Cpu).unwrap()
}

fn flat(t: &candle_core::Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn the_store_gives_the_trainer_what_the_simulation_makes_of_the_same_images() {
    let w = world();
    let front = front(&w.weights);
    let stored = FeatureStore::open(&w.store).unwrap().samples().unwrap();
    let ids: Vec<String> = stored.iter().map(|s| s.sample_id.clone()).collect();
    let sizes: Vec<(u32, u32)> = stored.iter().map(|s| s.image_size).collect();
    let (from_store, skipped) = FeatureSet::from_store(stored, &StoreExpect::new(&front, IMGSZ, 2).unwrap(), BadDataPolicy::Fail).unwrap();
    assert_eq!((from_store.len(), skipped), (IMAGES.len(), 0));

    let dataset = Dataset::open(&w.yaml).unwrap();
    let train = dataset.load(Split::Train, BadDataPolicy::Fail).unwrap().samples;
    let encoder = EdgeEncoder::new(front.clone(), IMGSZ, WireSettings::packed(Privacy::none())).unwrap();
    let simulated = FeatureSet::extract(&train, &encoder, 0, || {}).unwrap();
    assert_eq!(simulated.shape(), Some([64, 16, 16]));
    assert_eq!(from_store.shape(), simulated.shape());

    for (i, sample) in train.iter().enumerate() {
        // The edge names a sample by its image path relative to the dataset YAML's directory.
        let id = sample.image_path.strip_prefix(w.root.join("data")).unwrap().to_str().unwrap();
        let j = ids.iter().position(|s| s == id).unwrap_or_else(|| panic!("{id} is not in the store: {ids:?}"));
        assert_eq!(sizes[j], sample.size, "{id}");
        let (a, b) = (from_store.get(j, None).unwrap(), simulated.get(i, None).unwrap());
        let bits = flat(&a.input);
        assert_eq!(bits, flat(&b.input), "{id}: feature bits");
        assert!(bits.contains(&1.0) && bits.contains(&0.0), "{id}: a map of both bits");
        assert_eq!(a.labels, b.labels, "{id}: letterboxed labels");
        if sample.size.0 != sample.size.1 {
            assert_ne!(a.labels, sample.labels, "{id}: a non-square image's boxes move in the letterbox");
        }
        for seed in 0..6 {
            let a = from_store.get(j, Some(&mut Augment { rng: &mut ChaCha8Rng::seed_from_u64(seed), mosaic: 0.0 })).unwrap();
            let b = simulated.get(i, Some(&mut Augment { rng: &mut ChaCha8Rng::seed_from_u64(seed), mosaic: 0.0 })).unwrap();
            assert_eq!((flat(&a.input), a.labels), (flat(&b.input), b.labels), "{id}, augmentation seed {seed}");
        }
    }
}

/// `train --store` for 1 epoch at `imgsz` with `extra` flags.
fn train(w: &World, imgsz: u32, extra: &[&str]) -> Output {
    let out = w.root.join(format!("run-{imgsz}-{}", extra.len()));
    let imgsz = imgsz.to_string();
    let mut args = vec![
        "train", "--store", s(&w.store), "--data", s(&w.yaml), "--weights", s(&w.weights), "--model", "yolov5n", "--fresh-back", "--cut", "4", "--imgsz",
        &imgsz, "--epochs", "1", "--batch", "2", "--nbs", "2", "--warmup-min-iters", "0", "--out", s(&out),
    ];
    args.extend_from_slice(extra);
    Command::new(binary("mistnet-cloud")).args(&args).env("RUST_LOG", "warn").output().unwrap()
}

#[test]
fn train_store_fails_naming_an_unusable_sample_and_skip_bad_counts_it() {
    let w = world();
    // A sample made by another Front, added to the store as a server of another model would have.
    let params = EncodeParams { privacy: Privacy::none(), encoding: Encoding::Packed, zstd_level: Some(3), cut: 4, front_hash: FrontHash([9; 32]) };
    let features = encode(&vec![1.0; 64 * 16 * 16], &[1, 64, 16, 16], &params, &mut seeded_rng(0)).unwrap();
    let label = Label { class: 0, cx: 0.5, cy: 0.5, w: 0.2, h: 0.2 };
    let upload = Upload { edge: "edge-9".into(), sample_id: "images/other.png".into(), epsilon: f64::INFINITY, labels: vec![label], image_size: (64, 64), features };
    let writer = StoreWriter::open(&w.store, StoreLimits::default()).unwrap();
    let outcome = tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(writer.submit(upload)).unwrap();
    assert_eq!(outcome, Outcome::Stored);
    writer.close();

    // Features of 128 px letterboxes are not what a 64 px run needs.
    let wrong_size = train(&w, 64, &[]);
    let stderr = String::from_utf8_lossy(&wrong_size.stderr);
    assert!(!wrong_size.status.success(), "train --store --imgsz 64 took 128 px features");
    assert!(stderr.contains("feature map is 16×16, --imgsz 64 needs 8×8 (stride 8): the edge letterboxed to 128×128 px"), "{stderr}");

    let failed = train(&w, IMGSZ, &[]);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "train --store took a sample of another Front");
    assert!(stderr.contains("edge-9/images/other.png") && stderr.contains("another Front"), "{stderr}");

    let skipped = train(&w, IMGSZ, &["--skip-bad"]);
    let stdout = String::from_utf8_lossy(&skipped.stdout);
    assert!(skipped.status.success(), "train --store --skip-bad failed: {}", String::from_utf8_lossy(&skipped.stderr));
    assert!(stdout.contains(&format!("skipped 1 of {} stored samples", IMAGES.len() + 1)), "{stdout}");
    let warnings = String::from_utf8_lossy(&skipped.stderr);
    assert!(warnings.contains("edge=edge-9 sample=images/other.png") && warnings.contains("another Front"), "{warnings}");
}

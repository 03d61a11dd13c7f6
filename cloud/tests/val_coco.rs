//! `mistnet-cloud val --save-json` on a COCO JSON dataset writes the dataset's own image and
//! category ids, so the detections score against the user's ground truth file (image id 0 and
//! non-contiguous category ids included).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use mistnet::data::synth::{SynthConfig, generate};
use mistnet::data::{BadDataPolicy, Dataset, Split};
use mistnet::metrics::map::{CocoDetections, CocoGroundTruth, coco_eval};
use serde_json::json;

/// yolov5n pretrained on the synthetic data at 128 px (classes disc, square, triangle, ring, cross).
const PRETRAINED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/yolov5n-synth128-pretrained.safetensors");
/// COCO ids of the five classes, in class order: ascending, with gaps.
const CATEGORY_IDS: [u64; 5] = [1, 3, 7, 42, 90];

fn val(data: &Path, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_mistnet-cloud"))
        .args(["val", "--weights", PRETRAINED, "--data", data.to_str().unwrap(), "--json"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "val failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn save_json_writes_the_coco_files_own_image_and_category_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    generate(&SynthConfig { images: 60, imgsz: 128, seed: 5, edges: 1, private_size: None }, root).unwrap();
    let yaml = root.join("public.yaml");
    let dataset = Dataset::open(&yaml).unwrap();
    let samples = dataset.load(Split::Val, BadDataPolicy::Fail).unwrap().samples;
    assert!(samples.len() >= 3, "{} validation images", samples.len());

    // The same images and boxes as a COCO file: image ids 0, 5, 10, … (in an order other than the ids'),
    // the model's class names under non-contiguous category ids.
    let image_ids: Vec<u64> = (0..samples.len() as u64).map(|k| k * 5).collect();
    let mut images = Vec::new();
    let mut annotations = Vec::new();
    for (s, &id) in samples.iter().zip(&image_ids).rev() {
        let file_name = s.image_path.strip_prefix(root).unwrap().to_str().unwrap();
        images.push(json!({"id": id, "file_name": file_name, "width": s.size.0, "height": s.size.1}));
        for l in &s.labels {
            let [x1, y1, x2, y2] = l.to_pixels(s.size).map(f64::from);
            let bbox = [x1, y1, x2 - x1, y2 - y1];
            annotations.push(json!({"id": annotations.len() + 1, "image_id": id, "category_id": CATEGORY_IDS[l.class], "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0}));
        }
    }
    let categories: Vec<_> = dataset.names().iter().zip(CATEGORY_IDS).map(|(name, id)| json!({"id": id, "name": name})).collect();
    let coco = root.join("instances.json");
    std::fs::write(&coco, json!({"images": images, "annotations": annotations, "categories": categories}).to_string()).unwrap();

    let dets_path = root.join("detections.json");
    let metrics = val(&coco, &["--split", "train", "--save-json", dets_path.to_str().unwrap()]);
    let dets: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&dets_path).unwrap()).unwrap();
    let seen_images: BTreeSet<u64> = dets.iter().map(|d| d["image_id"].as_u64().unwrap()).collect();
    let seen_categories: BTreeSet<u64> = dets.iter().map(|d| d["category_id"].as_u64().unwrap()).collect();
    assert_eq!(seen_images, image_ids.iter().copied().collect(), "detections on every image, under the file's ids (0 included)");
    assert!(seen_categories.is_subset(&CATEGORY_IDS.into_iter().collect()), "{seen_categories:?}");
    assert!(seen_categories.len() > 1, "{seen_categories:?}");

    // Scored against the user's own file, the written detections give the metrics val printed, and the
    // same as the YOLO-format copy of the same images: the ids name the right images and classes.
    let gt = CocoGroundTruth::from_file(&coco).unwrap();
    let stats = coco_eval(&gt, &CocoDetections::from_file(&dets_path).unwrap()).unwrap();
    assert!(metrics["map50"].as_f64().unwrap() > 0.05, "{metrics}");
    assert!((stats.map50() - metrics["map50"].as_f64().unwrap()).abs() < 1e-9, "{} vs {metrics}", stats.map50());
    assert!((stats.map50_95() - metrics["map50_95"].as_f64().unwrap()).abs() < 1e-9, "{} vs {metrics}", stats.map50_95());
    let yolo = val(&yaml, &[]);
    for key in ["map50_95", "map50", "yolov5_map50_95", "yolov5_map50"] {
        // The YOLO label files round to 6 digits: boxes agree to ~1e-6 px, not bit for bit.
        assert!((yolo[key].as_f64().unwrap() - metrics[key].as_f64().unwrap()).abs() < 1e-3, "{key}: COCO {metrics} vs YOLO {yolo}");
    }
}

#[test]
fn a_coco_file_with_an_image_id_twice_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let coco = tmp.path().join("instances.json");
    let image = |id: u64, file: &str| json!({"id": id, "file_name": file, "width": 8, "height": 8});
    let categories: Vec<_> = ["disc", "square", "triangle", "ring", "cross"].iter().zip(CATEGORY_IDS).map(|(n, id)| json!({"id": id, "name": n})).collect();
    std::fs::write(&coco, json!({"images": [image(0, "a.png"), image(5, "b.png"), image(5, "c.png")], "annotations": [], "categories": categories}).to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mistnet-cloud")).args(["val", "--weights", PRETRAINED, "--data", coco.to_str().unwrap(), "--split", "train"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("image id 5 appears twice"), "{err}");
}

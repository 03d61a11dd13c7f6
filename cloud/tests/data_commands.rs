//! `mistnet-cloud synth` and `mistnet-cloud partition` through the real binary.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mistnet::data::synth::{SynthConfig, generate};
use mistnet::data::{BadDataPolicy, Dataset, Label, Split};

fn cloud(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mistnet-cloud")).args(args).env("RUST_LOG", "warn").output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = cloud(args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Image bytes → labels, for every sample of a split (the images are all distinct).
fn by_content(yaml: &Path) -> BTreeMap<Vec<u8>, Vec<Label>> {
    let loaded = Dataset::open(yaml).unwrap().load(Split::Train, BadDataPolicy::Fail).unwrap();
    loaded.samples.into_iter().map(|s| (fs::read(&s.image_path).unwrap(), s.labels)).collect()
}

fn shard_lists(out: &Path, edges: usize) -> Vec<String> {
    (0..edges).map(|k| fs::read_to_string(out.join(format!("edge-{k}/train.txt"))).unwrap()).collect()
}

#[test]
fn synth_writes_a_loadable_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("synth");
    let stdout = ok(&["synth", "--out", s(&out), "--images", "20", "--imgsz", "64", "--seed", "3", "--edges", "2"]);
    assert!(stdout.contains("public/train") && stdout.contains("private/edge-1"), "{stdout}");
    let ds = Dataset::open(&out.join("private/edge-1.yaml")).unwrap();
    assert_eq!(ds.load(Split::Train, BadDataPolicy::Fail).unwrap().samples.len(), 4);
    let help = ok(&["synth", "--help"]);
    for flag in ["--out", "--images", "--imgsz", "--seed", "--edges", "public.yaml", "private-val.yaml"] {
        assert!(help.contains(flag), "synth --help lacks {flag}");
    }
}

#[test]
fn partition_covers_every_image_once_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    generate(&SynthConfig { images: 60, imgsz: 32, seed: 1, edges: 2, private_size: None }, &data).unwrap();
    // private.yaml's train split spans two directories with the same file names.
    let source = data.join("private.yaml");
    let out = dir.path().join("iid");
    let stdout = ok(&["partition", s(&source), "--edges", "3", "--seed", "5", "--out", s(&out)]);
    assert!(stdout.contains("24 images loaded, 0 skipped"), "{stdout}");
    assert!(stdout.contains("disc square triangle  ring cross"), "{stdout}");
    for k in 0..3 {
        let row: Vec<&str> = stdout.lines().find(|l| l.starts_with(&format!("edge-{k} "))).unwrap().split_whitespace().collect();
        assert_eq!(row.len(), 8, "edge, images, 5 classes, yaml: {row:?}");
        assert_eq!(row[1], "8");
    }

    let mut union = BTreeMap::new();
    for k in 0..3 {
        let yaml = out.join(format!("edge-{k}.yaml"));
        let shard = by_content(&yaml);
        assert_eq!(shard.len(), 8);
        for (bytes, labels) in shard {
            assert!(union.insert(bytes, labels).is_none(), "an image is in two shards");
        }
        let val = Dataset::open(&yaml).unwrap().load(Split::Val, BadDataPolicy::Fail).unwrap();
        assert_eq!(val.samples.len(), 6, "val is the source's private val split");
    }
    let all = by_content(&source);
    assert_eq!(union.len(), all.len());
    for (bytes, labels) in &all {
        let shard_labels = &union[bytes];
        assert_eq!(shard_labels.len(), labels.len());
        for (a, b) in shard_labels.iter().zip(labels) {
            assert!(a.class == b.class && (a.cx - b.cx).abs() < 1e-5 && (a.w - b.w).abs() < 1e-5);
        }
    }

    let again = dir.path().join("again");
    ok(&["partition", s(&source), "--edges", "3", "--seed", "5", "--out", s(&again)]);
    assert_eq!(shard_lists(&out, 3), shard_lists(&again, 3));
    let other = dir.path().join("other");
    ok(&["partition", s(&source), "--edges", "3", "--seed", "6", "--out", s(&other)]);
    assert_ne!(shard_lists(&out, 3), shard_lists(&other, 3));
    let skewed = dir.path().join("skewed");
    ok(&["partition", s(&source), "--edges", "3", "--dirichlet", "0.1", "--seed", "5", "--out", s(&skewed)]);
    assert_ne!(shard_lists(&out, 3), shard_lists(&skewed, 3));

    let refused = cloud(&["partition", s(&source), "--edges", "3", "--out", s(&out)]);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("not empty"));
}

#[test]
fn partition_fails_on_bad_data_unless_told_to_skip() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    generate(&SynthConfig { images: 20, imgsz: 32, seed: 2, edges: 1, private_size: None }, &data).unwrap();
    let label = data.join("public/train/labels/000003.txt");
    fs::write(&label, "0 0.5 0.5 0.1\n").unwrap();
    let source = data.join("public.yaml");

    let failed = cloud(&["partition", s(&source), "--edges", "2", "--out", s(&dir.path().join("a"))]);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success());
    assert!(stderr.contains(&format!("{}, line 1: malformed label", label.display())), "{stderr}");

    let stdout = ok(&["partition", s(&source), "--edges", "2", "--skip-bad", "--out", s(&dir.path().join("b"))]);
    assert!(stdout.contains("7 images loaded, 1 skipped (1 malformed label)"), "{stdout}");
}

#[test]
fn partition_reads_coco() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    generate(&SynthConfig { images: 20, imgsz: 32, seed: 4, edges: 1, private_size: None }, &data).unwrap();
    let images: Vec<PathBuf> = (0..4).map(|i| data.join(format!("public/train/images/{i:06}.png"))).collect();
    let entries: Vec<String> = (0..4).map(|i| format!(r#"{{"id": {i}, "file_name": "{i:06}.png", "width": 32, "height": 32}}"#)).collect();
    let json = dir.path().join("coco.json");
    fs::write(
        &json,
        format!(
            r#"{{"images": [{}], "annotations": [{{"id": 1, "image_id": 2, "category_id": 9, "bbox": [0, 8, 16, 8]}}],
               "categories": [{{"id": 9, "name": "thing"}}]}}"#,
            entries.join(",")
        ),
    )
    .unwrap();
    let out = dir.path().join("shards");
    let images_dir = images[0].parent().unwrap();
    let stdout = ok(&["partition", s(&json), "--coco-images", s(images_dir), "--edges", "2", "--out", s(&out)]);
    assert!(stdout.contains("4 images loaded"), "{stdout}");
    let mut labels = Vec::new();
    for k in 0..2 {
        let ds = Dataset::open(&out.join(format!("edge-{k}.yaml"))).unwrap();
        assert_eq!(ds.names(), ["thing"]);
        let train = ds.load(Split::Train, BadDataPolicy::Fail).unwrap();
        assert_eq!(train.samples.len(), 2);
        assert_eq!(ds.load(Split::Val, BadDataPolicy::Fail).unwrap().samples.len(), 2, "val is the shard itself");
        labels.extend(train.samples.into_iter().flat_map(|s| s.labels));
    }
    assert_eq!(labels, [Label { class: 0, cx: 0.25, cy: 0.375, w: 0.5, h: 0.25 }]);
}

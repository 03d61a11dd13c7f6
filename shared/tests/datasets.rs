//! The YOLO and COCO loaders on tiny datasets written to a temporary directory: what they load,
//! and the message for every kind of bad data under both policies.

use std::fs;
use std::path::{Path, PathBuf};

use image::RgbImage;
use mistnet::data::coco::CocoDataset;
use mistnet::data::{BadDataPolicy, BadKind, DataError, Dataset, Label, Split};

fn png(path: &Path, w: u32, h: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    RgbImage::new(w, h).save(path).unwrap();
}

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn close(a: &Label, b: &Label) -> bool {
    a.class == b.class && [(a.cx, b.cx), (a.cy, b.cy), (a.w, b.w), (a.h, b.h)].iter().all(|(x, y)| (x - y).abs() < 1e-5)
}

fn lab(class: usize, cx: f32, cy: f32, w: f32, h: f32) -> Label {
    Label { class, cx, cy, w, h }
}

/// A good YOLO dataset: train is a directory (with a nested one), val an image list, test a list of both.
fn good_yolo(root: &Path) -> PathBuf {
    png(&root.join("images/train/a.png"), 20, 10);
    png(&root.join("images/train/sub/b.jpg"), 8, 8);
    png(&root.join("images/val/c.png"), 4, 6);
    write(&root.join("labels/train/a.txt"), "0 0.5 0.5 0.2 0.4\n\n1 0.25 0.75 0.5 0.5\n");
    // b.jpg has no label file: an image without objects.
    write(&root.join("labels/val/c.txt"), "1.0 0.1 0.2 0.3 0.4\n0 0.1 0.1 0.5 0.1 0.3 0.5\n");
    write(&root.join("val.txt"), "./images/val/c.png\n\n");
    let yaml = root.join("data.yaml");
    write(&yaml, "path: .\ntrain: images/train\nval: val.txt\ntest: [images/val, val.txt]\nnames:\n  0: cat\n  1: dog\n");
    yaml
}

#[test]
fn yolo_yaml_loads_directories_lists_and_label_files() {
    let dir = tempfile::tempdir().unwrap();
    let ds = Dataset::open(&good_yolo(dir.path())).unwrap();
    assert_eq!(ds.names(), ["cat", "dog"]);
    assert!(ds.has_split(Split::Test));

    let train = ds.load(Split::Train, BadDataPolicy::Fail).unwrap();
    assert_eq!(train.summary.loaded, 2);
    assert!(train.summary.skipped.is_empty());
    let [a, b] = &train.samples[..] else { panic!("{:?}", train.samples) };
    assert!(a.image_path.ends_with("images/train/a.png") && a.size == (20, 10));
    assert!(close(&a.labels[0], &lab(0, 0.5, 0.5, 0.2, 0.4)) && close(&a.labels[1], &lab(1, 0.25, 0.75, 0.5, 0.5)));
    assert!(b.image_path.ends_with("images/train/sub/b.jpg") && b.size == (8, 8) && b.labels.is_empty());

    let val = ds.load(Split::Val, BadDataPolicy::Fail).unwrap();
    let c = &val.samples[0];
    assert_eq!(c.size, (4, 6));
    // A float class and a segment line (its bounding box).
    assert!(close(&c.labels[0], &lab(1, 0.1, 0.2, 0.3, 0.4)));
    assert!(close(&c.labels[1], &lab(0, 0.3, 0.3, 0.4, 0.4)), "{:?}", c.labels[1]);
    assert_eq!(ds.load(Split::Test, BadDataPolicy::Fail).unwrap().samples.len(), 2);
}

#[test]
fn yaml_names_list_nc_only_and_missing_test_split() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    png(&root.join("images/x.png"), 4, 4);
    write(&root.join("list.yaml"), &format!("path: {}\ntrain: images\nval: images\nnames: [a, b, c]\n", root.display()));
    let ds = Dataset::open(&root.join("list.yaml")).unwrap();
    assert_eq!(ds.names(), ["a", "b", "c"]);
    assert!(!ds.has_split(Split::Test));
    assert!(matches!(ds.load(Split::Test, BadDataPolicy::Fail), Err(DataError::NoSplit { split: "test", .. })));

    write(&root.join("nc.yaml"), "train: images\nval: images\ntest:\nnc: 2\n");
    assert_eq!(Dataset::open(&root.join("nc.yaml")).unwrap().names(), ["class0", "class1"]);
}

#[test]
fn bad_dataset_yamls_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("train: a\nval: a\nnames: [x]\nnc: 2\n", "`nc` is 2 but `names` has 1 entries"),
        ("train: a\nval: a\nnames: {0: x, 2: y}\n", "`names` ids must be 0..2 without gaps; id 1 is missing"),
        ("train: a\nnames: [x]\n", "`val` is missing"),
        ("train: a\nval: a\n", "neither `names` nor `nc` is given"),
        ("train: [a\n", "dataset YAML"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let yaml = dir.path().join(format!("{i}.yaml"));
        write(&yaml, text);
        let err = Dataset::open(&yaml).unwrap_err().to_string();
        assert!(err.contains(want) && err.contains(&format!("{i}.yaml")), "{err}");
    }
    let err = Dataset::open(&dir.path().join("absent.yaml")).unwrap_err().to_string();
    assert!(err.contains("absent.yaml"), "{err}");
}

/// A dataset with one bad sample of each kind, plus one good one.
fn bad_yolo(root: &Path) -> PathBuf {
    png(&root.join("images/good.png"), 10, 10);
    png(&root.join("images/malformed.png"), 10, 10);
    png(&root.join("images/notanumber.png"), 10, 10);
    png(&root.join("images/outside.png"), 10, 10);
    png(&root.join("images/unknown.png"), 10, 10);
    write(&root.join("images/corrupt.png"), "this is not a PNG");
    write(&root.join("labels/good.txt"), "0 0.5 0.5 1 1\n");
    write(&root.join("labels/malformed.txt"), "0 0.5 0.5 1 1\n0 0.5 0.5 1\n");
    write(&root.join("labels/notanumber.txt"), "1 0.5 abc 0.1 0.1\n");
    write(&root.join("labels/outside.txt"), "0 1.5 0.5 0.1 0.1\n");
    write(&root.join("labels/unknown.txt"), "\n7 0.5 0.5 0.1 0.1\n");
    write(&root.join("train.txt"), "images/good.png\nimages/missing.png\nimages/malformed.png\nimages/notanumber.png\nimages/outside.png\nimages/unknown.png\nimages/corrupt.png\n");
    let yaml = root.join("bad.yaml");
    write(&yaml, "train: train.txt\nval: train.txt\nnames: [a, b]\n");
    yaml
}

#[test]
fn every_kind_of_bad_data_is_skipped_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ds = Dataset::open(&bad_yolo(dir.path())).unwrap();
    let loaded = ds.load(Split::Train, BadDataPolicy::Skip).unwrap();
    assert_eq!(loaded.samples.len(), 1);
    assert!(loaded.samples[0].image_path.ends_with("good.png"));
    let messages: Vec<String> = loaded.summary.skipped.iter().map(ToString::to_string).collect();
    let expect = [
        ("train.txt, line 2: image ", "images/missing.png does not exist"),
        ("labels/malformed.txt, line 2: malformed label: ", "expected `class cx cy w h` (5 fields) or a segment, got 4 fields"),
        ("labels/notanumber.txt, line 1: malformed label: ", "`abc` is not a number"),
        ("labels/outside.txt, line 1: ", "cx = 1.5 is outside [0, 1]"),
        ("labels/unknown.txt, line 2: ", "unknown class 7 (the dataset has 2 classes, 0..2)"),
        ("unreadable image ", "images/corrupt.png: "),
    ];
    assert_eq!(messages.len(), expect.len(), "{messages:#?}");
    for (m, (head, tail)) in messages.iter().zip(expect) {
        assert!(m.contains(head) && m.contains(tail), "{m:?} should contain {head:?} and {tail:?}");
    }
    let counts = loaded.summary.counts();
    assert_eq!(counts[&BadKind::MalformedLabel], 2);
    for kind in [BadKind::MissingImage, BadKind::UnreadableImage, BadKind::OutOfRange, BadKind::UnknownClass] {
        assert_eq!(counts[&kind], 1, "{kind:?}");
    }
    assert_eq!(
        loaded.summary.to_string(),
        "1 images loaded, 6 skipped (1 missing image, 1 unreadable image, 2 malformed label, 1 coordinate out of range, 1 unknown class)"
    );
}

#[test]
fn fail_policy_stops_at_the_first_bad_sample() {
    let dir = tempfile::tempdir().unwrap();
    let ds = Dataset::open(&bad_yolo(dir.path())).unwrap();
    let err = ds.load(Split::Train, BadDataPolicy::Fail).unwrap_err();
    assert!(matches!(&err, DataError::Bad(b) if b.kind() == BadKind::MissingImage), "{err}");
    assert!(err.to_string().contains("train.txt, line 2"), "{err}");
}

#[test]
fn a_yolo_directory_takes_names_from_classes_txt() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    png(&root.join("images/p.png"), 6, 3);
    write(&root.join("labels/p.txt"), "1 0.5 0.5 0.5 0.5\n");
    assert!(matches!(Dataset::open(root), Err(DataError::UnknownFormat { .. })));
    write(&root.join("classes.txt"), "person\ncar\n");
    let ds = Dataset::open(root).unwrap();
    assert_eq!(ds.names(), ["person", "car"]);
    let s = ds.load(Split::Train, BadDataPolicy::Fail).unwrap().samples;
    assert_eq!(s.len(), 1);
    assert!(close(&s[0].labels[0], &lab(1, 0.5, 0.5, 0.5, 0.5)));
}

const COCO_GOOD: &str = r#"{
  "images": [
    {"id": 1, "file_name": "a.png", "width": 40, "height": 20},
    {"id": 2, "file_name": "sub/b.png", "width": 10, "height": 10}
  ],
  "annotations": [
    {"id": 10, "image_id": 1, "category_id": 7, "bbox": [0, 0, 20, 10], "iscrowd": 0},
    {"id": 11, "image_id": 1, "category_id": 3, "bbox": [30, 5, 10, 15]},
    {"id": 12, "image_id": 1, "category_id": 3, "bbox": [0, 0, 40, 20], "iscrowd": 1}
  ],
  "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]
}"#;

#[test]
fn coco_loads_into_yolo_labels_with_contiguous_classes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    png(&root.join("a.png"), 40, 20);
    png(&root.join("sub/b.png"), 10, 10);
    write(&root.join("instances.json"), COCO_GOOD);
    let ds = Dataset::open(&root.join("instances.json")).unwrap();
    assert_eq!(ds.names(), ["cat", "dog"]);
    assert!(!ds.has_split(Split::Val));
    let loaded = ds.load(Split::Train, BadDataPolicy::Fail).unwrap();
    assert_eq!(loaded.summary.crowd_ignored, 1);
    assert_eq!(loaded.summary.to_string(), "2 images loaded, 0 skipped, 1 crowd annotations ignored");
    let [a, b] = &loaded.samples[..] else { panic!() };
    assert_eq!(a.size, (40, 20));
    assert!(close(&a.labels[0], &lab(1, 0.25, 0.25, 0.5, 0.5)));
    assert!(close(&a.labels[1], &lab(0, 0.875, 0.625, 0.25, 0.75)));
    assert!(b.labels.is_empty() && b.image_path.ends_with("sub/b.png"));
}

#[test]
fn coco_bad_data_names_the_image_or_annotation() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for name in ["ok.png", "unknown.png", "outside.png", "short.png", "size.png"] {
        png(&root.join("imgs").join(name), 10, 10);
    }
    write(&root.join("imgs/corrupt.png"), "garbage");
    let json = root.join("bad.json");
    write(
        &json,
        r#"{"images": [
            {"id": 1, "file_name": "ok.png", "width": 10, "height": 10},
            {"id": 2, "file_name": "missing.png", "width": 10, "height": 10},
            {"id": 3, "file_name": "corrupt.png", "width": 10, "height": 10},
            {"id": 4, "file_name": "unknown.png", "width": 10, "height": 10},
            {"id": 5, "file_name": "outside.png", "width": 10, "height": 10},
            {"id": 6, "file_name": "short.png", "width": 10, "height": 10},
            {"id": 7, "file_name": "size.png", "width": 12, "height": 10}],
          "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]},
            {"id": 2, "image_id": 4, "category_id": 5, "bbox": [1, 1, 2, 2]},
            {"id": 3, "image_id": 5, "category_id": 1, "bbox": [8, 1, 12, 2]},
            {"id": 4, "image_id": 6, "category_id": 1, "bbox": [1, 1, 2]},
            {"id": 5, "image_id": 99, "category_id": 1, "bbox": [1, 1, 2, 2]}],
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}"#,
    );
    let ds = CocoDataset::open(&json, &root.join("imgs")).unwrap();
    let loaded = ds.load(BadDataPolicy::Skip).unwrap();
    assert_eq!(loaded.samples.len(), 1);
    let messages: Vec<String> = loaded.summary.skipped.iter().map(ToString::to_string).collect();
    let expect = [
        ("bad.json, image id 2: image ", "imgs/missing.png does not exist"),
        ("unreadable image ", "imgs/corrupt.png"),
        ("bad.json, annotation id 2: ", "unknown class 5 (category ids are [1, 2])"),
        ("bad.json, annotation id 3: ", "cx = 1.4 is outside [0, 1]"),
        ("bad.json, annotation id 4: ", "malformed label: `bbox` has 3 numbers, expected [x, y, w, h]"),
        ("bad.json, image id 7: ", "`width`x`height` is 12x10 but"),
        ("bad.json, annotation id 5: ", "malformed label: image_id 99 is not in `images`"),
    ];
    assert_eq!(messages.len(), expect.len(), "{messages:#?}");
    for (m, (head, tail)) in messages.iter().zip(expect) {
        assert!(m.contains(head) && m.contains(tail), "{m:?} should contain {head:?} and {tail:?}");
    }
    let err = ds.load(BadDataPolicy::Fail).unwrap_err().to_string();
    assert!(err.contains("image id 2") && err.contains("missing.png"), "{err}");

    write(&root.join("broken.json"), "{\"images\": [}");
    let err = Dataset::open(&root.join("broken.json")).unwrap_err().to_string();
    assert!(err.starts_with("COCO JSON ") && err.contains("broken.json") && err.contains("line 1"), "{err}");
}

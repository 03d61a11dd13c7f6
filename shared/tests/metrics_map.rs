//! COCO mAP against pycocotools 2.0.11 `COCOeval` and YOLOv5 7.0 val.py-style mAP
//! (`tests/fixtures/map/map_cases_expected.json`, made with `map_oracle_lib.py` on `cases/`),
//! and COCOeval on edge cases (`map_cases_extra_expected.json`, made by `make_extra_map_cases.py`).

use std::path::PathBuf;

use mistnet::metrics::map::{CocoDetections, CocoGroundTruth, coco_eval, yolo_map};
use serde_json::Value;

const TOLERANCE: f64 = 1e-9;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/map").join(name)
}

fn expected(file: &str) -> serde_json::Map<String, Value> {
    let text = std::fs::read_to_string(fixture(file)).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    json["cases"].as_object().unwrap().clone()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn assert_all_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= TOLERANCE, "{what}[{i}]: got {g}, want {w} (diff {:e})", (g - w).abs());
    }
}

fn load_case(case: &Value) -> (CocoGroundTruth, CocoDetections) {
    let gt = CocoGroundTruth::from_file(fixture(case["gt"].as_str().unwrap())).unwrap();
    let dt = CocoDetections::from_file(fixture(case["dt"].as_str().unwrap())).unwrap();
    (gt, dt)
}

fn check_coco(name: &str, case: &Value) {
    let (gt, dt) = load_case(case);
    let stats = coco_eval(&gt, &dt).unwrap();
    assert_all_close(&stats.stats, &floats(&case["stats"]), &format!("{name} stats"));
    let want = case["per_category"].as_array().unwrap();
    assert_eq!(stats.per_category.len(), want.len(), "{name}");
    for (got, want) in stats.per_category.iter().zip(want) {
        assert_eq!(got.category_id, want["category_id"].as_i64().unwrap());
        assert_eq!(got.name, want["name"].as_str().unwrap());
        assert_all_close(
            &[got.ap, got.ap50],
            &[want["ap"].as_f64().unwrap(), want["ap50"].as_f64().unwrap()],
            &format!("{name} category {}", got.category_id),
        );
    }
    if let Some(lines) = case.get("summarize_text") {
        let want: Vec<&str> = lines.as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
        assert_eq!(stats.summary_lines(), want, "{name} summarize text");
    }
}

#[test]
fn coco_eval_matches_pycocotools() {
    let cases = expected("map_cases_expected.json");
    assert_eq!(cases.len(), 3);
    for (name, case) in &cases {
        check_coco(name, case);
    }
}

#[test]
fn coco_eval_matches_pycocotools_on_edge_cases() {
    let cases = expected("map_cases_extra_expected.json");
    assert_eq!(cases.len(), 3);
    for (name, case) in &cases {
        check_coco(name, case);
    }
}

#[test]
fn yolo_map_matches_yolov5_val() {
    for (name, case) in &expected("map_cases_expected.json") {
        let (gt, dt) = load_case(case);
        let got = yolo_map(&gt, &dt).unwrap();
        let want = &case["yolov5_val_style"];
        assert_all_close(
            &[got.map50, got.map50_95],
            &[want["map50"].as_f64().unwrap(), want["map"].as_f64().unwrap()],
            &format!("{name} mAP"),
        );
        let classes: Vec<i64> = want["classes"].as_array().unwrap().iter().map(|c| c.as_i64().unwrap()).collect();
        assert_eq!(got.classes, classes, "{name} classes");
        assert_all_close(&got.ap50_per_class, &floats(&want["ap50_per_class"]), &format!("{name} ap50"));
        assert_all_close(&got.ap_per_class, &floats(&want["ap_per_class"]), &format!("{name} ap"));
    }
}

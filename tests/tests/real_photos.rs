//! `mistnet-cloud job` on real photos, from scratch: NEON aerial tree crowns from the deepforest
//! wheel (`tests/fixtures/deepforest-yell-128/`, made by `tools/make_deepforest.py`). Every step
//! of the user's path runs on them: JPEG tiles and their labels loaded, pretraining on the public
//! site, the Front exported, two edge processes extracting the other site's tiles into the store,
//! the Back trained on what was stored, the centralized baseline, evaluation. One epoch each:
//! what MistNet learns on real photos is a benchmark (BENCHMARKS.md), not this test.

use std::process::Command;

use mistnet_e2e::binary;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/deepforest-yell-128");

#[test]
fn the_whole_job_runs_on_real_aerial_photos() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("job");
    let status = Command::new(binary("mistnet-cloud"))
        .args(["job", "--out"])
        .arg(&out)
        .args(["--data", DATA, "--imgsz", "128", "--edges", "2", "--pretrain-epochs", "1", "--epochs", "1", "--batch", "8"])
        .args(["--warmup-min-iters", "1", "--skip-privacy", "--skip-fedavg", "--threads", "1"])
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert!(status.success(), "the job failed; logs in {}", out.join("logs").display());
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    // Both shards' tiles (18 + 17, the fixture's README) stored exactly once.
    assert_eq!((summary["samples_expected"].as_u64(), summary["samples_stored"].as_u64()), (Some(35), Some(35)), "{summary}");
    let map = summary["map"].as_array().unwrap();
    for model in ["public-only", "mistnet", "centralized"] {
        let m = map.iter().find(|m| m["model"] == model).unwrap_or_else(|| panic!("no {model} in {map:?}"));
        let v = m["map50"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{model}: {v}");
    }
    // The exported model knows the dataset's one class.
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("export/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["names"], serde_json::json!(["Tree"]), "{manifest}");
}

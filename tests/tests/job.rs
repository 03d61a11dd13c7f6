//! `mistnet-cloud job` end to end at tiny sizes, through the real binaries: every phase runs as
//! its own process (synth, pretrain, export, serve, edge agents, train, centralized baseline, val,
//! privacy), and the outcome is checked from the files it writes.

use std::path::Path;
use std::process::Command;

use mistnet_e2e::binary;

/// A yolov5n pretrained on the synthetic public split at 128 px (see fixtures/README.md).
const PRETRAINED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/yolov5n-synth128-pretrained.safetensors");

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn val_map50(weights: &Path, data: &Path) -> f64 {
    let out = Command::new(binary("mistnet-cloud")).args(["val", "--weights"]).arg(weights).arg("--data").arg(data).arg("--json").env("RUST_LOG", "warn").output().unwrap();
    assert!(out.status.success(), "val failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["map50"].as_f64().unwrap()
}

#[test]
fn the_job_stores_every_sample_once_learns_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("job");
    let status = Command::new(binary("mistnet-cloud"))
        .args(["job", "--out"])
        .arg(&out)
        .args(["--weights", PRETRAINED])
        .args(["--images", "300", "--imgsz", "128", "--edges", "2", "--epochs", "6", "--batch", "8", "--warmup-min-iters", "20"])
        .args(["--epsilon", "4", "--privacy-epsilons", "1", "--decoder-steps", "2", "--decoder-finetune-steps", "1", "--opt-steps", "2"])
        .args(["--threads", "1"])
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert!(status.success(), "the job failed; logs in {}", out.join("logs").display());

    let summary = json(&out.join("summary.json"));
    // Every sample of both shards stored exactly once (the job itself fails on duplicates).
    let expected = summary["samples_expected"].as_u64().unwrap();
    assert_eq!(summary["samples_stored"].as_u64().unwrap(), expected);
    let shard = |k: usize| std::fs::read_dir(out.join(format!("data/private/edge-{k}/images"))).unwrap().count() as u64;
    assert_eq!(expected, shard(0) + shard(1));
    // MistNet trained while the edges uploaded (train --follow): from the minimum on (half of the samples,
    // at least a batch), every epoch's count in the summary as in results.csv, never more than was stored.
    assert_eq!(summary["train_min_samples"].as_u64(), Some(expected.div_ceil(2).max(8)), "the job trains with --follow");
    let per_epoch: Vec<u64> = summary["epoch_samples"].as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).collect();
    let results = mistnet_train::fit::report::read_results(&out.join("train/results.csv"), usize::MAX).unwrap();
    assert_eq!(per_epoch, results.iter().map(|r| r.samples.unwrap() as u64).collect::<Vec<_>>());
    assert_eq!(per_epoch.len(), 6, "{per_epoch:?}");
    assert!(per_epoch[0] >= expected.div_ceil(2) && per_epoch.windows(2).all(|p| p[0] <= p[1]) && per_epoch[5] <= expected, "{per_epoch:?}");
    // Packed bits beat float payloads by far.
    let bytes = &summary["bytes_per_sample"];
    assert!(bytes["wire"].as_f64().unwrap() * 4.0 < bytes["f16"].as_f64().unwrap(), "{bytes}");
    assert_eq!(bytes["f32"].as_u64().unwrap(), 2 * bytes["f16"].as_u64().unwrap());

    // The Back trained on the edges' features beats an untrained Back on the held-out split.
    let map = summary["map"].as_array().unwrap();
    let score = |name: &str| map.iter().find(|m| m["model"] == name).unwrap_or_else(|| panic!("no {name} in {map:?}"))["map50"].as_f64().unwrap();
    let heldout = out.join("data/private-val.yaml");
    let untrained = dir.path().join("untrained.safetensors");
    mistnet_train::fit::save_untrained_back(Path::new(PRETRAINED), 4, &untrained).unwrap();
    let before = val_map50(&untrained, &heldout);
    assert!(score("mistnet") > before + 0.1, "MistNet mAP@.5 {} against untrained {before}", score("mistnet"));
    assert!((score("mistnet") - val_map50(&out.join("train/model.safetensors"), &heldout)).abs() < 1e-9);
    let ratio = summary["mistnet_over_centralized"].as_f64().unwrap();
    assert!((ratio - score("mistnet") / score("centralized")).abs() < 1e-12, "{ratio}");

    // The privacy rows: float, 1-bit, the chosen ε and the swept one, for both default attacks, SSIM in range.
    let rows = summary["privacy"].as_array().unwrap();
    let settings: std::collections::BTreeSet<&str> = rows.iter().map(|r| r["setting"].as_str().unwrap()).collect();
    assert_eq!(settings, ["1bit", "float", "sue-eps1", "sue-eps4"].into(), "{settings:?}");
    assert_eq!(rows.len(), 8);
    for r in rows {
        let ssim = r["ssim"].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&ssim), "{r}");
    }
    // The privacy–utility curve: a verdict per setting, and the MistNet model's mAP under each bits
    // setting; without noise it is the val phase's figure.
    let curve = summary["privacy_utility"].as_array().unwrap();
    assert_eq!(curve.len(), 4);
    let point = |s: &str| curve.iter().find(|p| p["setting"] == s).unwrap().clone();
    assert!(point("float")["map50"].is_null());
    assert!((point("1bit")["map50"].as_f64().unwrap() - score("mistnet")).abs() < 1e-9, "{curve:?}");
    for p in curve {
        assert!(p["explained"].as_str().unwrap().starts_with(p["verdict"].as_str().unwrap()), "{p}");
    }
    // Every phase but pretraining (skipped: --weights) is timed.
    assert_eq!(summary["phases"].as_array().unwrap().len(), 9);

    // FedAvg on the same shards, 6 rounds × 1 local epoch (the job's 6 epochs), side by side with
    // MistNet and centralized: its mAP is the val phase's, its bytes those of its accounting.
    let c = &summary["comparison"];
    assert_eq!((c["epochs"].as_u64(), c["fedavg_rounds"].as_u64(), c["fedavg_local_epochs"].as_u64()), (Some(6), Some(6), Some(1)), "{c}");
    let row = |name: &str| c["methods"].as_array().unwrap().iter().find(|m| m["method"] == name).unwrap_or_else(|| panic!("no {name} in {c}")).clone();
    let (mistnet, fedavg, centralized) = (row("mistnet"), row("fedavg"), row("centralized"));
    assert_eq!(fedavg["map50"].as_f64(), Some(score("fedavg")));
    assert_eq!(mistnet["map50"].as_f64(), Some(score("mistnet")));
    let accounting = json(&out.join("fedavg/accounting.json"));
    assert_eq!(fedavg["bytes_per_edge"].as_f64(), accounting["bytes_per_edge"]["f32"].as_f64());
    // Each edge got and sent the whole model each of the 6 rounds.
    assert_eq!(accounting["bytes_per_edge"]["f32"].as_u64().unwrap(), 12 * accounting["payload_bytes"]["f32"].as_u64().unwrap());
    // MistNet sends its features once and downloads the Front once: far fewer bytes and far less edge compute.
    let (mb, fb) = (mistnet["bytes_per_edge"].as_f64().unwrap(), fedavg["bytes_per_edge"].as_f64().unwrap());
    let front = std::fs::metadata(out.join("export/front.safetensors")).unwrap().len() as f64;
    assert!(mb > front + (expected as f64 / 2.0) * 100.0 && mb * 10.0 < fb, "MistNet {mb} B, FedAvg {fb} B per edge");
    assert!(mistnet["edge_gflops"].as_f64().unwrap() * 10.0 < fedavg["edge_gflops"].as_f64().unwrap(), "{c}");
    assert_eq!(centralized["edge_gflops"].as_f64(), Some(0.0));
    // Peak memory, each measured in a child process: the Front pipeline well under a training step of the whole model.
    let rss = |m: &serde_json::Value| m["edge_peak_rss_bytes"].as_u64().unwrap_or_else(|| panic!("no peak RSS in {m}"));
    assert!(rss(&mistnet) * 2 < rss(&fedavg), "{c}");
    assert!(centralized["edge_peak_rss_bytes"].is_null());
    // FedAvg's per-round results: round 0 (the start) and 6 rounds.
    assert_eq!(std::fs::read_to_string(out.join("fedavg/results.csv")).unwrap().lines().count(), 1 + 7);

    for png in ["map.png", "fedavg.png", "train/map.png", "centralized/loss.png", "fedavg/map.png", "privacy/privacy_utility.png"] {
        let img = image::open(out.join(png)).unwrap_or_else(|e| panic!("{png}: {e}"));
        assert!(img.width() > 100, "{png}");
    }
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(md.contains("| mistnet |") && md.contains("| centralized |") && md.contains("| fedavg |"), "{md}");
    assert!(md.contains("MistNet training (while the edges uploaded, from ") && md.contains(&format!("; {expected} stored in the end")), "{md}");
    assert!(md.contains("| FedAvg (6 rounds × 1 local epochs"), "{md}");
    assert!(md.contains("| privacy–utility: setting | strongest attack |") && md.contains("| sue-eps1 | "), "{md}");
    assert!(md.contains(&format!("MistNet mAP@.5: {:.4} before (public-only) → {:.4} after, {:.1}% of centralized.", score("public-only"), score("mistnet"), 100.0 * ratio)), "{md}");
}

#[test]
fn the_job_repeats_over_seeds_and_reports_the_spread() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seeds");
    let status = Command::new(binary("mistnet-cloud"))
        .args(["job", "--out"])
        .arg(&out)
        .args(["--seeds", "2", "--seed", "5", "--weights", PRETRAINED, "--images", "60", "--imgsz", "128", "--epochs", "1"])
        .args(["--batch", "4", "--warmup-min-iters", "1", "--skip-privacy", "--skip-fedavg", "--threads", "1"])
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert!(status.success(), "the job over seeds failed; logs in {}", out.display());
    let seeds = json(&out.join("seeds.json"));
    assert_eq!(seeds["seeds"], serde_json::json!([5, 6]));
    for model in seeds["models"].as_array().unwrap() {
        let name = model["model"].as_str().unwrap();
        let values: Vec<f64> = model["map50"]["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        // Each value is that seed's own summary.
        for (seed, v) in [5, 6].iter().zip(&values) {
            let summary = json(&out.join(format!("seed-{seed}/summary.json")));
            let own = summary["map"].as_array().unwrap().iter().find(|m| m["model"] == name).unwrap()["map50"].as_f64().unwrap();
            assert_eq!(own, *v, "{name} at seed {seed}");
        }
        let mean = (values[0] + values[1]) / 2.0;
        assert!((model["map50"]["mean"].as_f64().unwrap() - mean).abs() < 1e-12, "{model}");
    }
    assert!(std::fs::read_to_string(out.join("seeds.md")).unwrap().contains("Over 2 seeds (5, 6)"));
}

//! The privacy evaluation end to end at tiny sizes: through the library (attack strength,
//! re-identification, verdicts, determinism) and through the real binary (report files and
//! their keys).

use std::process::Command;

use candle_core::Device;
use indicatif::ProgressBar;
use mistnet::codec::Mechanism;
use mistnet_privacy::decoder::DecoderConfig;
use mistnet_privacy::observe::Weights;
use mistnet_privacy::optimize::OptimizeConfig;
use mistnet_privacy::report::{CSV_COLUMNS, PLOT_PNG, write_outputs};
use mistnet_privacy::verdict::{self, Criteria};
use mistnet_privacy::{Attack, EvalConfig, evaluate};

fn tiny(attacks: Vec<Attack>) -> EvalConfig {
    EvalConfig {
        model: "yolov5n".into(),
        weights: Weights::RandomInit(7),
        cuts: vec![1],
        mechanism: Mechanism::Sue,
        epsilons: vec![0.5],
        attacks,
        imgsz: 32,
        images: None,
        synthetic: 1,
        aux_images: 12,
        aux_photos: None,
        decoder: DecoderConfig { steps: 30, batch: 6, width: 16, blocks: 1, ..DecoderConfig::default() },
        optimize: OptimizeConfig { steps: 40, ..OptimizeConfig::default() },
        opt_images: 8,
        utility: None,
        criteria: Criteria::default(),
        seed: 3,
    }
}

#[test]
fn attacks_on_float_features_beat_attacks_at_epsilon_half_and_re_identify() {
    let cfg = tiny(Attack::ALL.to_vec());
    let a = evaluate(&cfg, &Device::Cpu, &ProgressBar::hidden()).unwrap();
    // 1 cut × (float, 1bit, sue-eps0.5) × 3 attacks.
    assert_eq!(a.report.rows.len(), 9);
    let float_opt = a.report.rows.iter().find(|r| r.setting == "float" && r.attack == "optimization").unwrap();
    // The optimization attacks reconstruct 8 of the 34 held-out images, each ranked among all 34.
    assert_eq!((float_opt.reid.trials, float_opt.reid.images), (8, 34));
    assert!(float_opt.reid.p_top1 < 0.05, "float features at cut 1 are re-identified: {:?}", float_opt.reid);
    assert_eq!(a.report.calibration.len(), 1);
    assert_eq!(a.report.verdicts.len(), 3, "one verdict per setting");
    let labels = [verdict::RECOGNISABLE, verdict::REIDENTIFIABLE, verdict::ABOVE_BLIND_GUESS, verdict::TOO_WEAK, verdict::UNRECOGNISABLE];
    for v in &a.report.verdicts {
        assert!(labels.contains(&v.verdict.as_str()), "{v:?}");
        assert!(v.explained.starts_with(&v.verdict));
    }
    for attack in ["decoder", "optimization", "combined"] {
        let ssim = |setting: &str| a.report.rows.iter().find(|r| r.setting == setting && r.attack == attack).unwrap().ssim;
        assert!(
            ssim("float") > ssim("sue-eps0.5") + 0.05,
            "{attack}: float SSIM {} should clearly beat ε=0.5 SSIM {}",
            ssim("float"),
            ssim("sue-eps0.5")
        );
    }
}

#[test]
fn a_seed_determines_the_report() {
    let cfg = tiny(vec![Attack::Decoder, Attack::Optimization]);
    let cfg = EvalConfig {
        decoder: DecoderConfig { steps: 3, ..cfg.decoder },
        optimize: OptimizeConfig { steps: 3, ..cfg.optimize },
        ..cfg
    };
    let a = evaluate(&cfg, &Device::Cpu, &ProgressBar::hidden()).unwrap();
    let b = evaluate(&cfg, &Device::Cpu, &ProgressBar::hidden()).unwrap();
    assert_eq!(a.report, b.report, "same seed, same report");
    let c = evaluate(&EvalConfig { seed: 4, ..cfg }, &Device::Cpu, &ProgressBar::hidden()).unwrap();
    assert_ne!(a.report.rows, c.report.rows, "another seed draws other noise, weights and images");
}

#[test]
fn the_binary_writes_the_report_files_with_the_documented_keys() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let status = Command::new(env!("CARGO_BIN_EXE_mistnet-cloud"))
        .args(["privacy", "--random-init", "--model", "yolov5n", "--cuts", "1,2", "--epsilons", "2,0.5", "--imgsz", "32", "--synthetic", "1"])
        .args(["--aux-images", "4", "--decoder-steps", "2", "--decoder-width", "16", "--opt-steps", "2", "--save-reconstructions"])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "stderr: {}", String::from_utf8_lossy(&status.stderr));
    assert!(stdout.contains("RANDOMLY INITIALISED"), "the table warns about the random Front:\n{stdout}");

    let csv = std::fs::read_to_string(out.join("report.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next().unwrap(), CSV_COLUMNS.join(","));
    // 2 cuts × (float, 1bit, sue-eps2, sue-eps0.5) × the 2 default attacks (decoder, combined).
    assert_eq!(lines.count(), 16);

    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["random_init"], true);
    assert_eq!(json["heldout"].as_array().unwrap().len(), 34, "33 embedded photos + 1 synthetic");
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 16);
    for row in rows {
        for key in CSV_COLUMNS.iter().filter(|k| !k.starts_with("reid_")) {
            assert!(row.get(key).is_some(), "row lacks {key}: {row}");
        }
        let ssim = row["ssim"].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&ssim));
        assert!(row["psnr"].as_f64().unwrap() > 0.0);
        let trials = if row["attack"] == "decoder" { 34 } else { 8 };
        assert_eq!((row["reid"]["trials"].as_u64(), row["reid"]["images"].as_u64()), (Some(trials), Some(34)), "{row}");
        if ssim >= 0.3 {
            assert_eq!(row["verdict"], "recognisable", "{row}");
        }
    }
    assert_eq!(json["verdicts"].as_array().unwrap().len(), 8, "one per (cut, setting)");
    assert_eq!(json["calibration"].as_array().unwrap().len(), 2, "one per cut");
    assert_eq!(json["criteria"]["ssim"], 0.3);
    let eps: Vec<_> = rows.iter().filter(|r| r["cut"] == 1 && r["attack"] == "decoder").map(|r| r["epsilon"].clone()).collect();
    assert_eq!(eps, [serde_json::Value::Null, serde_json::Value::Null, 2.0.into(), 0.5.into()]);

    assert!(out.join(PLOT_PNG).is_file());
    for cut in [1, 2] {
        for setting in ["float", "1bit", "sue-eps2", "sue-eps0.5"] {
            let grid = image::open(out.join(format!("grids/cut{cut}-{setting}.png"))).unwrap();
            // The 8 images every attack reconstructed, 32 px with 2 px gaps; originals + 2 attacks.
            assert_eq!((grid.width(), grid.height()), (8 * 34 - 2, 3 * 34 - 2));
        }
    }
    let pair = out.join("pairs/cut2-sue-eps0.5-combined");
    assert!(pair.join("astronaut_orig.png").is_file() && pair.join("astronaut_recon.png").is_file());
}

#[test]
fn write_outputs_reports_an_unwritable_directory() {
    let cfg = tiny(vec![Attack::Optimization]);
    let cfg = EvalConfig { optimize: OptimizeConfig { steps: 1, ..cfg.optimize }, ..cfg };
    let eval = evaluate(&cfg, &Device::Cpu, &ProgressBar::hidden()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let err = write_outputs(&eval, &blocker.join("out"), false).unwrap_err().to_string();
    assert!(err.contains("cannot write") && err.contains("file"), "{err}");
}

fn cloud(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mistnet-cloud")).args(args).env("RUST_LOG", "warn").output().unwrap()
}

fn cloud_ok(args: &[&str]) -> String {
    let out = cloud(args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A tiny synthetic dataset, a 1-epoch whole model (`pretrain`) and a 1-epoch MistNet model
/// trained behind its Front at cut 1 (`train`), shared by the utility tests.
struct UtilityWorld {
    dir: tempfile::TempDir,
    data: std::path::PathBuf,
    pretrained: std::path::PathBuf,
    trained: std::path::PathBuf,
}

fn utility_world() -> &'static UtilityWorld {
    static WORLD: std::sync::OnceLock<UtilityWorld> = std::sync::OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        cloud_ok(&["synth", "--out", &p("synth"), "--images", "40", "--imgsz", "64", "--seed", "1", "--edges", "1"]);
        let data = dir.path().join("synth/public.yaml");
        let common = ["--data", data.to_str().unwrap(), "--imgsz", "64", "--epochs", "1", "--batch", "4", "--nbs", "4"];
        cloud_ok(&[&["pretrain", "--model", "yolov5n", "--out", &p("pretrain")], &common[..]].concat());
        let pretrained = dir.path().join("pretrain/model.safetensors");
        let train = ["train", "--weights", pretrained.to_str().unwrap(), "--cut", "1", "--mechanism", "none", "--out", &p("train")];
        cloud_ok(&[&train[..], &common[..]].concat());
        let trained = dir.path().join("train/model.safetensors");
        UtilityWorld { data, pretrained, trained, dir }
    })
}

/// The cheapest sweep: one ε, the optimization attack for 2 steps, 32 px.
const TINY_SWEEP: [&str; 12] =
    ["privacy", "--cuts", "1", "--epsilons", "0.5", "--attacks", "optimization", "--opt-steps", "2", "--imgsz", "32", "--synthetic"];

#[test]
fn val_and_back_add_the_map_of_each_setting_and_noiseless_bits_score_as_val_does() {
    let w = utility_world();
    let out = w.dir.path().join("report-utility");
    let (data, trained) = (w.data.to_str().unwrap(), w.trained.to_str().unwrap());
    let stdout = cloud_ok(&[&TINY_SWEEP[..], &["0", "--val", data, "--back", trained, "--out", out.to_str().unwrap()]].concat());
    assert!(!stdout.contains("RANDOMLY INITIALISED"), "--weights defaults to --back:\n{stdout}");
    assert!(stdout.contains("mAP@.5"), "the table has the utility columns:\n{stdout}");

    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["back"], trained);
    let row = |setting: &str| json["rows"].as_array().unwrap().iter().find(|r| r["setting"] == setting).unwrap().clone();
    assert!(row("float")["map50"].is_null(), "the Back takes bits: no mAP for float features");
    let val: serde_json::Value = serde_json::from_str(cloud_ok(&["val", "--weights", trained, "--data", data, "--json"]).trim()).unwrap();
    for key in ["map50", "map50_95"] {
        let (noiseless, noisy) = (row("1bit")[key].as_f64().unwrap(), row("sue-eps0.5")[key].as_f64().unwrap());
        assert!((noiseless - val[key].as_f64().unwrap()).abs() < 1e-9, "{key}: 1bit {noiseless} vs val {}", val[key]);
        assert!((0.0..=1.0).contains(&noisy), "{key} at ε 0.5: {noisy}");
    }
    let csv = std::fs::read_to_string(out.join("report.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    assert_eq!(&header[header.len() - 2..], ["map50", "map50_95"]);
    let col = header.iter().position(|c| *c == "map50").unwrap();
    let float_line = csv.lines().find(|l| l.contains(",float,")).unwrap();
    assert_eq!(float_line.split(',').nth(col), Some(""), "empty mAP for float: {float_line}");
}

#[test]
fn val_and_back_refuse_a_whole_model_and_a_cut_that_is_not_swept() {
    let w = utility_world();
    let (data, out) = (w.data.to_str().unwrap(), w.dir.path().join("refused"));
    let whole = cloud(&[&TINY_SWEEP[..], &["0", "--val", data, "--back", w.pretrained.to_str().unwrap(), "--out", out.to_str().unwrap()]].concat());
    let err = String::from_utf8_lossy(&whole.stderr);
    assert!(!whole.status.success() && err.contains("whole model"), "{err}");
    let mut args = TINY_SWEEP.to_vec();
    args[2] = "2";
    let other_cut = cloud(&[&args[..], &["0", "--val", data, "--back", w.trained.to_str().unwrap(), "--out", out.to_str().unwrap()]].concat());
    let err = String::from_utf8_lossy(&other_cut.stderr);
    assert!(!other_cut.status.success() && err.contains("add 1 to --cuts"), "{err}");
    let alone = cloud(&["privacy", "--val", data, "--out", out.to_str().unwrap()]);
    assert!(!alone.status.success(), "--val needs --back");
}

#[test]
fn without_weights_the_front_to_attack_must_be_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = cloud(&["privacy", "--out", dir.path().join("r").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("give --weights FRONT") && err.contains("--random-init"), "{err}");
}

#[test]
fn zero_threads_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = cloud(&["privacy", "--threads", "0", "--out", dir.path().join("r").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--threads must be at least 1"), "{err}");
}

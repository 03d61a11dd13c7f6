//! `mistnet-cloud fedavg` through the real binary at tiny size: one round on one of two synthetic
//! edges, from the shipped pretrained yolov5n, checked from the files it writes. The byte counts
//! must equal the sizes of the states written as safetensors files by another writer (candle's),
//! and the compute must follow from the sample counts.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use mistnet_e2e::binary;

const PRETRAINED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/yolov5n-synth128-pretrained.safetensors");

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn cloud(args: &[&str], extra: &[&Path]) -> std::process::Output {
    let mut cmd = Command::new(binary("mistnet-cloud"));
    cmd.args(args).env("RUST_LOG", "warn").env("RAYON_NUM_THREADS", "1");
    let out = cmd.args(extra).output().unwrap();
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The size of `tensors` written as a safetensors file by candle, every float tensor as `dtype`.
fn file_size(tensors: &BTreeMap<String, Tensor>, dtype: DType, dir: &Path) -> u64 {
    let cast: std::collections::HashMap<String, Tensor> = tensors.iter().map(|(k, v)| (k.clone(), v.to_dtype(dtype).unwrap())).collect();
    let path = dir.join(format!("state-{dtype:?}.safetensors"));
    candle_core::safetensors::save(&cast, &path).unwrap();
    std::fs::metadata(&path).unwrap().len()
}

#[test]
fn one_fedavg_round_counts_the_bytes_it_would_send() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    cloud(&["synth", "--images", "300", "--imgsz", "128", "--edges", "2", "--seed", "0", "--out"], &[&data]);
    let out = dir.path().join("fedavg");
    // Two edges, --fraction 0.5: one edge trains in the round. Any mAP reaches 0: the run stops after round 1 of 3.
    cloud(
        &["fedavg", "--weights", PRETRAINED, "--rounds", "3", "--until-map50", "0", "--local-epochs", "1", "--fraction", "0.5", "--batch", "8", "--nbs", "8", "--warmup-min-iters", "5", "--data"],
        &[&data.join("private"), Path::new("--val"), &data.join("private-val.yaml"), Path::new("--out"), &out],
    );

    let acc = json(&out.join("accounting.json"));
    assert_eq!((acc["aggregation"].as_str(), acc["rounds"].as_u64(), acc["local_epochs"].as_u64()), (Some("fedavg"), Some(3), Some(1)));
    assert_eq!((acc["until_map50"].as_f64(), acc["reached"]["round"].as_u64()), (Some(0.0), Some(1)), "{}", acc["reached"]);
    assert_eq!(acc["reached"]["bytes_per_edge"], acc["bytes_per_edge"]);
    let rounds = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(rounds.lines().count(), 3, "the header, round 0 and round 1: {rounds}");
    // What was sent each way is the model's whole state: the sizes of that state as files.
    let model = out.join("model.safetensors");
    let state: BTreeMap<String, Tensor> = candle_core::safetensors::load(&model, &Device::Cpu).unwrap().into_iter().collect();
    let (f32_size, f16_size) = (file_size(&state, DType::F32, dir.path()), file_size(&state, DType::F16, dir.path()));
    assert_eq!(acc["payload_bytes"]["f32"].as_u64(), Some(f32_size), "{}", acc["payload_bytes"]);
    assert_eq!(acc["payload_bytes"]["f16"].as_u64(), Some(f16_size), "{}", acc["payload_bytes"]);
    assert_eq!(acc["tensors"].as_u64(), Some(state.len() as u64));
    let edges = acc["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 2);
    let trained: Vec<&serde_json::Value> = edges.iter().filter(|e| !e["rounds"].as_array().unwrap().is_empty()).collect();
    assert_eq!(trained.len(), 1, "--fraction 0.5 of 2 edges is one edge a round: {edges:?}");
    let e = trained[0];
    let round = &e["rounds"][0];
    for way in ["bytes_down", "bytes_up"] {
        assert_eq!((round[way]["f32"].as_u64(), round[way]["f16"].as_u64()), (Some(f32_size), Some(f16_size)), "{way}: {round}");
    }
    assert_eq!(e["bytes"]["f32"].as_u64(), Some(2 * f32_size));
    // The other edge sent and received nothing; the mean over the two edges is half of one's.
    let idle = edges.iter().find(|x| x["edge"] != e["edge"]).unwrap();
    assert_eq!(idle["bytes"]["f32"].as_u64(), Some(0));
    assert_eq!(acc["bytes_per_edge"]["f32"].as_u64(), Some(f32_size));

    // Compute: its shard once (one local epoch), 3 forwards a sample; a yolov5n forward at 128 px is
    // Ultralytics' 4.5 GFLOPs at 640 px scaled by (128/640)², a little less with 5 classes instead of 80.
    let samples = e["samples"].as_u64().unwrap();
    let shard = std::fs::read_dir(data.join(format!("private/{}/images", e["edge"].as_str().unwrap()))).unwrap().count() as u64;
    assert_eq!((samples, e["samples_trained"].as_u64()), (shard, Some(shard)));
    let forward = acc["forward_gflops_per_image"].as_f64().unwrap();
    assert!((0.15..0.18).contains(&forward), "{forward}");
    assert!((acc["train_gflops_per_sample"].as_f64().unwrap() - 3.0 * forward).abs() < 1e-9);
    assert!((e["gflops"].as_f64().unwrap() - 3.0 * forward * shard as f64).abs() < 1e-6);

    // results.csv: the starting model (round 0, no bytes) and round 1 with the cumulative mean per edge;
    // its mAP is the deployable model's.
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 2, "{csv}");
    assert_eq!((rows[0][0], rows[0][6], rows[1][0], rows[1][1]), ("0", "0", "1", "1"));
    assert_eq!(rows[1][6].parse::<u64>().unwrap(), f32_size);
    assert_eq!(rows[1][7].parse::<u64>().unwrap(), f16_size);
    let val = cloud(&["val", "--json", "--weights"], &[&model, Path::new("--data"), &data.join("private-val.yaml")]);
    let map50 = serde_json::from_slice::<serde_json::Value>(&val.stdout).unwrap()["map50"].as_f64().unwrap();
    assert!((map50 - rows[1][2].parse::<f64>().unwrap()).abs() < 1e-5, "val {map50} against results.csv {}", rows[1][2]);
    // The edge's peak memory, one training step measured in a child process: at least the model's
    // weights, gradients and momentum (3 × f32 state) and below a gigabyte at this size.
    let rss = acc["edge_peak_rss_bytes"].as_u64().unwrap();
    assert!(rss > 3 * f32_size && rss < 1 << 30, "{rss}");
    let img = image::open(out.join("map.png")).unwrap();
    assert!(img.width() > 100);

    // The seed server's running average through the binary: one round of both edges from the same start is
    // FedAvg's round (the start counts 0 samples), so the two global models agree.
    let both = |aggregation: &str| {
        let run = dir.path().join(aggregation);
        cloud(
            &["fedavg", "--weights", PRETRAINED, "--rounds", "1", "--batch", "8", "--nbs", "8", "--warmup-min-iters", "5", "--aggregation", aggregation, "--data"],
            &[&data.join("private/edge-0.yaml"), Path::new("--data"), &data.join("private/edge-1.yaml"), Path::new("--val"), &data.join("private-val.yaml"), Path::new("--out"), &run],
        );
        assert_eq!(json(&run.join("accounting.json"))["aggregation"].as_str(), Some(aggregation));
        candle_core::safetensors::load(run.join("model.safetensors"), &Device::Cpu).unwrap()
    };
    let (fedavg, running) = (both("fedavg"), both("running"));
    let w = "model.0.conv.weight";
    let diff = (&fedavg[w] - &running[w]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let start = candle_core::safetensors::load(PRETRAINED, &Device::Cpu).unwrap();
    let moved = (&fedavg[w] - &start[w]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-5 && moved > 1e-4, "running and fedavg differ by {diff}; the round moved the weights by {moved}");
}

//! Ingest against the served model, end to end: `mistnet-cloud export`, then `serve --front DIR`
//! (and `serve --weights`) as real processes on loopback, and a tonic client sending crafted samples.

use std::path::{Path, PathBuf};
use std::process::Command;

use mistnet::codec::{EncodeParams, Encoding, FrontHash, Mechanism, Privacy, encode, seeded_rng};
use mistnet_store::FeatureStore;
use mistnet::data::synth::{SynthConfig, generate};
use mistnet_e2e::{Proc, binary, start_cloud};
use mistnet_proto::pb::{self, feature_upload_client::FeatureUploadClient, front_distribution_client::FrontDistributionClient, ingest_status_client::IngestStatusClient};
use mistnet_proto::{AUTHORIZATION, EDGE_HEADER};
use tonic::Code;

/// yolov5n pretrained on the synthetic data at 128 px: a deployable model with 5 named classes.
const PRETRAINED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/yolov5n-synth128-pretrained.safetensors");
/// Its Front's output at cut 4 and 128 px: 64 channels, stride 8.
const SHAPE: [usize; 4] = [1, 64, 16, 16];
const NAMES: [&str; 5] = ["disc", "square", "triangle", "ring", "cross"];
const EDGE: &str = "edge-0";
const TOKEN: &str = "token-of-edge-0-0123456789";

struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    /// `export`'s output directory.
    export: PathBuf,
    tokens: String,
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let export = root.join("export");
    let out = Command::new(binary("mistnet-cloud")).args(["export", "--weights", PRETRAINED, "--cut", "4", "--out", s(&export)]).output().unwrap();
    assert!(out.status.success(), "export failed: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(root.join("tokens.txt"), format!("{EDGE} {TOKEN}\n")).unwrap();
    std::fs::write(root.join("edge.token"), TOKEN).unwrap();
    let tokens = root.join("tokens.txt").display().to_string();
    World { _tmp: tmp, root, export, tokens }
}

impl World {
    /// `serve` on a free loopback port with its own store `store`, and `args`.
    fn serve(&self, store: &str, args: &[&str]) -> (Proc, String) {
        let store = self.root.join(store).display().to_string();
        let mut all = vec!["--listen", "127.0.0.1:0", "--store", &store, "--tokens", &self.tokens];
        all.extend_from_slice(args);
        start_cloud(&all)
    }

    /// `serve` with `args` that must fail before listening; returns its stderr.
    fn serve_fails(&self, args: &[&str]) -> String {
        let store = self.root.join("refused-store").display().to_string();
        let out = Command::new(binary("mistnet-cloud"))
            .args(["serve", "--listen", "127.0.0.1:0", "--store", &store, "--tokens", &self.tokens])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "serve {args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn manifest(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.export.join("manifest.json")).unwrap()).unwrap()
    }
}

fn authed<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert(AUTHORIZATION, format!("Bearer {TOKEN}").parse().unwrap());
    req.metadata_mut().insert(EDGE_HEADER, EDGE.parse().unwrap());
    req
}

async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

async fn get_front(addr: &str, cached_hash: &str) -> pb::GetFrontResponse {
    let mut client = FrontDistributionClient::new(channel(addr).await).max_decoding_message_size(64 << 20);
    client.get_front(authed(pb::GetFrontRequest { cached_hash: cached_hash.into() })).await.unwrap().into_inner()
}

/// A codec message of a fixed pattern of `shape`, as an edge of Front `hash` at `cut` makes it.
fn features(shape: &[usize], hash: FrontHash, cut: u16, privacy: Privacy) -> Vec<u8> {
    let values: Vec<f32> = (0..shape.iter().product()).map(|i| if i % 3 == 0 { 1.0 } else { -1.0 }).collect();
    let params = EncodeParams { privacy, encoding: Encoding::Packed, zstd_level: Some(3), cut, front_hash: hash };
    encode(&values, shape, &params, &mut seeded_rng(1)).unwrap()
}

fn sue() -> Privacy {
    Privacy::new(Mechanism::Sue, Some(2.0)).unwrap()
}

/// Uploads `samples` on one stream; the acks by sample id.
async fn upload(addr: &str, samples: Vec<pb::Sample>) -> std::collections::BTreeMap<String, pb::Ack> {
    let n = samples.len();
    let mut acks = FeatureUploadClient::new(channel(addr).await).upload(authed(tokio_stream::iter(samples))).await.unwrap().into_inner();
    let mut out = std::collections::BTreeMap::new();
    while let Some(ack) = acks.message().await.unwrap() {
        out.insert(ack.sample_id.clone(), ack);
    }
    assert_eq!(out.len(), n, "one ack per sample");
    out
}

#[test]
fn serve_front_serves_the_export_as_serve_weights_computes_it() {
    let w = world();
    let m = w.manifest();
    assert_eq!(m["names"], serde_json::json!(NAMES));
    assert_eq!((m["nc"].as_u64(), m["imgsz"].as_u64(), m["cut"].as_u64(), m["stride"].as_u64()), (Some(5), Some(128), Some(4), Some(8)));
    assert_eq!(m["feature_shape"], serde_json::json!(SHAPE));
    assert_eq!(m["front"]["file"], "front.safetensors");
    assert!(m["model"]["sha256"].as_str().unwrap().len() == 64 && m["binarized_cut"].is_null());

    let (_from_export, addr) = w.serve("store-a", &["--front", s(&w.export)]);
    let (_from_weights, addr_weights) = w.serve("store-b", &["--weights", PRETRAINED, "--cut", "4", "--imgsz", "128"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (front, same, cached) = rt.block_on(async { (get_front(&addr, "").await, get_front(&addr_weights, "").await, get_front(&addr, "").await) });
    assert_eq!(front.names, NAMES);
    assert_eq!(front.front_hash, m["front"]["sha256"].as_str().unwrap());
    assert_eq!((front.cut, front.imgsz), (4, 128));
    assert_eq!(front.model_yaml, m["model_yaml"].as_str().unwrap());
    assert_eq!(front.weights, std::fs::read(w.export.join("front.safetensors")).unwrap(), "GetFront hands out the exported file byte for byte");
    // The same manifest and bytes, computed from the weights by export's function.
    assert_eq!(same, front);
    assert_eq!(cached, front);
    let cached = rt.block_on(get_front(&addr, &front.front_hash));
    assert!(cached.weights.is_empty() && cached.model_yaml.is_empty());
    assert_eq!((cached.names, cached.front_hash), (front.names, front.front_hash));
}

#[test]
fn serve_front_refuses_an_export_that_does_not_hold_together() {
    let w = world();
    let err = w.serve_fails(&["--front", s(&w.root.join("nowhere"))]);
    assert!(err.contains("manifest.json") && err.contains("export"), "{err}");

    // A Front file that is not the manifest's: one weight changed.
    let copy = |name: &str| {
        let dir = w.root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["manifest.json", "front.safetensors"] {
            std::fs::copy(w.export.join(f), dir.join(f)).unwrap();
        }
        dir
    };
    let tampered = copy("tampered");
    let mut bytes = std::fs::read(tampered.join("front.safetensors")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(tampered.join("front.safetensors"), bytes).unwrap();
    let err = w.serve_fails(&["--front", s(&tampered)]);
    assert!(err.contains("the file does not belong to this manifest"), "{err}");

    // A manifest whose fields disagree.
    let inconsistent = copy("inconsistent");
    let mut m = w.manifest();
    m["nc"] = 80.into();
    std::fs::write(inconsistent.join("manifest.json"), m.to_string()).unwrap();
    let err = w.serve_fails(&["--front", s(&inconsistent)]);
    assert!(err.contains("nc = 80 but 5 class names"), "{err}");
    m["nc"] = 5.into();
    m["feature_shape"] = serde_json::json!([1, 64, 8, 8]);
    std::fs::write(inconsistent.join("manifest.json"), m.to_string()).unwrap();
    let err = w.serve_fails(&["--front", s(&inconsistent)]);
    assert!(err.contains("feature shape [1, 64, 8, 8] is not [1, C, 16, 16]"), "{err}");

    // --front takes its cut from the manifest; weights without class names or a Detect head cannot be served.
    let err = w.serve_fails(&["--front", s(&w.export), "--cut", "3"]);
    assert!(err.contains("cannot be used with"), "{err}");
    let front_only = w.export.join("front.safetensors");
    let err = w.serve_fails(&["--weights", s(&front_only), "--model", "yolov5n", "--cut", "4", "--imgsz", "128"]);
    assert!(err.contains("neither class names") && err.contains("--front"), "{err}");
}

#[test]
fn samples_the_trainer_cannot_use_are_refused_one_by_one() {
    let w = world();
    let (_cloud, addr) = w.serve("store", &["--front", s(&w.export)]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let acks = rt.block_on(async {
        let hash: FrontHash = get_front(&addr, "").await.front_hash.parse().unwrap();
        let valid = features(&SHAPE, hash, 4, sue());
        let good = pb::Box { class: 4, cx: 0.5, cy: 0.5, w: 0.2, h: 0.2 };
        let sample = |id: &str, features: &[u8], label: pb::Box| pb::Sample {
            sample_id: id.into(),
            features: features.to_vec(),
            labels: vec![label],
            image_width: 200,
            image_height: 100,
        };
        let samples = vec![
            sample("class-nc", &valid, pb::Box { class: 5, ..good }),
            sample("ok-class-4", &valid, good),
            sample("zero-w", &valid, pb::Box { w: 0.0, ..good }),
            sample("cx-over-1", &valid, pb::Box { cx: 1.5, ..good }),
            sample("h-inf", &valid, pb::Box { h: f32::INFINITY, ..good }),
            sample("cy-nan", &valid, pb::Box { cy: f32::NAN, ..good }),
            sample("negative-cy", &valid, pb::Box { cy: -0.1, ..good }),
            pb::Sample { image_width: 0, ..sample("zero-width-image", &valid, good) },
            pb::Sample { image_height: 0, ..sample("zero-height-image", &valid, good) },
            sample("other-imgsz", &features(&[1, 64, 8, 8], hash, 4, sue()), good),
            sample("other-cut", &features(&SHAPE, hash, 3, sue()), good),
            sample("other-front", &features(&SHAPE, FrontHash([9; 32]), 4, sue()), good),
            sample("undecodable", b"not a feature message at all, just bytes", good),
            sample("", &valid, good),
            sample("ok-class-0", &valid, pb::Box { class: 0, cx: 0.0, cy: 1.0, w: 1.0, h: 1.0 }),
        ];
        upload(&addr, samples).await
    });
    let refused = [
        ("class-nc", "class 5 is not below nc = 5"),
        ("zero-w", "w = 0 is not in (0, 1]"),
        ("cx-over-1", "cx = 1.5 is not in [0, 1]"),
        ("h-inf", "h = inf"),
        ("cy-nan", "cy = NaN"),
        ("negative-cy", "cy = -0.1"),
        ("zero-width-image", "image size 0x100"),
        ("zero-height-image", "image size 200x0"),
        ("other-imgsz", "feature shape [1, 64, 8, 8], expected [1, 64, 16, 16]"),
        ("other-cut", "cut 3"),
        ("other-front", "fetch the Front again"),
        ("undecodable", "not a MistNet feature message"),
        ("", "sample id"),
    ];
    for (id, why) in refused {
        let ack = &acks[id];
        assert_eq!(ack.code, Code::InvalidArgument as i32, "{id:?}: {}", ack.message);
        assert!(ack.message.contains(why), "{id:?}: {:?} does not say {why:?}", ack.message);
    }
    for id in ["ok-class-4", "ok-class-0"] {
        assert_eq!((acks[id].code, acks[id].duplicate), (0, false), "{id}: {}", acks[id].message);
    }
    let stored = FeatureStore::open(w.root.join("store")).unwrap().samples().unwrap();
    let mut ids: Vec<&str> = stored.iter().map(|s| s.sample_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["ok-class-0", "ok-class-4"]);
    // What is stored is what the trainer reads: one shape, classes of the model, sizes to letterbox with.
    for s in &stored {
        let decoded = mistnet::codec::decode(&s.features, &Default::default()).unwrap();
        assert_eq!(decoded.header.shape.dims(), SHAPE);
        assert!(s.labels.iter().all(|l| l.class < NAMES.len()));
        assert_eq!(s.image_size, (200, 100));
    }
}

#[test]
fn epsilon_total_is_infinite_once_an_upload_without_noise_is_accepted() {
    let w = world();
    let (_cloud, addr) = w.serve("store", &["--front", s(&w.export)]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = |addr: &str| {
        let out = Command::new(binary("mistnet-cloud"))
            .args(["status", "--json", "--server", &format!("http://{addr}"), "--edge", EDGE, "--token-file", s(&w.root.join("edge.token"))])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let (noisy, plain) = rt.block_on(async {
        let hash: FrontHash = get_front(&addr, "").await.front_hash.parse().unwrap();
        let sample = |id: &str, privacy| pb::Sample {
            sample_id: id.into(),
            features: features(&SHAPE, hash, 4, privacy),
            labels: vec![pb::Box { class: 1, cx: 0.5, cy: 0.5, w: 0.2, h: 0.2 }],
            image_width: 128,
            image_height: 128,
        };
        let noisy = sample("noisy", sue());
        let plain = sample("plain", Privacy::new(Mechanism::None, None).unwrap());
        (noisy, plain)
    });
    let acks = rt.block_on(upload(&addr, vec![noisy]));
    assert_eq!(acks["noisy"].code, 0, "{}", acks["noisy"].message);
    assert_eq!(status(&addr)["edges"][0]["epsilon_total"], 2.0);

    let acks = rt.block_on(upload(&addr, vec![plain]));
    assert_eq!(acks["plain"].code, 0, "{}", acks["plain"].message);
    let edge = rt.block_on(async {
        let mut client = IngestStatusClient::new(channel(&addr).await);
        client.get_status(authed(pb::StatusRequest::default())).await.unwrap().into_inner().edges.remove(0)
    });
    assert_eq!(edge.epsilon_total, f64::INFINITY);
    assert_eq!((edge.uploads, edge.uploads_without_privacy), (2, 1));
    let json = status(&addr);
    let edge = &json["edges"][0];
    assert_eq!(edge["epsilon_total"], "inf");
    let ledger: Vec<(&str, &serde_json::Value)> = edge["ledger"].as_array().unwrap().iter().map(|l| (l["sample_id"].as_str().unwrap(), &l["epsilon_total"])).collect();
    assert_eq!(ledger, [("noisy", &serde_json::json!(2.0)), ("plain", &serde_json::json!("inf"))]);
}

#[test]
fn an_edge_whose_labels_are_not_the_served_models_classes_stops_before_uploading() {
    let w = world();
    let (_cloud, addr) = w.serve("store", &["--front", s(&w.export)]);
    // The edge's dataset has 8 classes; one image has an object of class 7, which the served model (5) lacks.
    let data = w.root.join("data");
    generate(&SynthConfig { images: 20, imgsz: 128, seed: 7, edges: 1, private_size: None }, &data).unwrap();
    let yaml = data.join("private/edge-0.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap().replace("nc: 5", "nc: 8") + "- extra-5\n- extra-6\n- extra-7\n";
    std::fs::write(&yaml, text).unwrap();
    let labels = data.join("private/edge-0/labels");
    let first = std::fs::read_dir(&labels).unwrap().map(|e| e.unwrap().path()).filter(|p| std::fs::read_to_string(p).unwrap().contains(' ')).min().unwrap();
    let text = std::fs::read_to_string(&first).unwrap();
    std::fs::write(&first, format!("7{}", &text[text.find(' ').unwrap()..])).unwrap();

    let out = Command::new(binary("mistnet-edge"))
        .args(["run", "--server", &format!("http://{addr}"), "--edge", EDGE, "--token-file", s(&w.root.join("edge.token")), "--data", s(&yaml)])
        .args(["--mechanism", "sue", "--epsilon", "2", "--cache", s(&w.root.join("cache"))])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the edge uploaded a dataset the model cannot learn");
    assert!(err.contains("has class 7, but the cloud's model has 5 classes"), "{err}");
    assert_eq!(FeatureStore::open(w.root.join("store")).map(|s| s.len()).unwrap_or(0), 0);
}

#[test]
fn weights_without_class_names_serve_as_many_classes_as_their_detect_head_outputs() {
    let w = world();
    // Converted from Ultralytics: no `mistnet` metadata, an 80-class Detect head (255 = 3 × (80 + 5) rows).
    let raw = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/tests/fixtures/yolov5/yolov5n_weights.safetensors");
    let (_cloud, addr) = w.serve("store", &["--model", "yolov5n", "--weights", raw, "--cut", "4", "--imgsz", "64"]);
    let front = tokio::runtime::Runtime::new().unwrap().block_on(get_front(&addr, ""));
    assert_eq!(front.names, (0..80).map(|c| c.to_string()).collect::<Vec<_>>());
    // A config whose Detect head does not match the weights' is refused, not served with the config's nc.
    let err = w.serve_fails(&["--model", "yolov5s", "--weights", raw, "--cut", "4", "--imgsz", "64"]);
    assert!(err.contains("shape"), "{err}");
}

#[test]
fn concurrent_streams_under_a_tiny_in_flight_budget_wait_their_turn_and_every_sample_is_stored() {
    let w = world();
    let err = w.serve_fails(&["--front", s(&w.export), "--max-message-bytes", "4096", "--max-in-flight-bytes", "4095"]);
    assert!(err.contains("--max-in-flight-bytes (4095) must be at least --max-message-bytes (4096)"), "{err}");
    // A budget of a few samples for three streams of 40: most reads wait for another stream's acks.
    let (_cloud, addr) = w.serve("store", &["--front", s(&w.export), "--max-message-bytes", "8192", "--max-in-flight-bytes", "8192"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let acks = rt.block_on(async {
        let hash: FrontHash = get_front(&addr, "").await.front_hash.parse().unwrap();
        let valid = features(&SHAPE, hash, 4, sue());
        assert!(valid.len() * 3 < 8192 && valid.len() * 8 > 8192, "a few samples fit the budget: {} bytes each", valid.len());
        let streams = (0..3).map(|k| {
            let samples: Vec<pb::Sample> = (0..40)
                .map(|i| pb::Sample {
                    sample_id: format!("s{k}-{i}"),
                    features: valid.clone(),
                    labels: vec![pb::Box { class: 1, cx: 0.5, cy: 0.5, w: 0.2, h: 0.2 }],
                    image_width: 128,
                    image_height: 128,
                })
                .collect();
            let addr = addr.clone();
            tokio::spawn(async move { upload(&addr, samples).await })
        });
        let mut all = Vec::new();
        for stream in streams.collect::<Vec<_>>() {
            all.extend(stream.await.unwrap().into_values());
        }
        all
    });
    assert_eq!(acks.len(), 120);
    assert!(acks.iter().all(|a| a.code == Code::Ok as i32 && !a.duplicate), "{:?}", acks.iter().find(|a| a.code != 0));
    assert_eq!(FeatureStore::open(w.root.join("store")).unwrap().len(), 120);
}

//! The trained detector back to the edge, through real processes: `mistnet-cloud export`, `serve
//! --front DIR` on loopback, and `mistnet-edge detect --server`, which fetches the model with
//! GetModel, caches it by hash, and must find exactly what `detect --weights` finds with the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use mistnet::data::synth::{SynthConfig, generate};
use mistnet::model::deploy::{DeployMeta, save_deployable};
use mistnet_e2e::{binary, start_cloud};

/// yolov5n pretrained on the synthetic data at 128 px: a deployable model with 5 named classes.
const PRETRAINED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/yolov5n-synth128-pretrained.safetensors");
const EDGE: &str = "edge-0";
const TOKEN: &str = "token-of-edge-0-0123456789";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    export: PathBuf,
    /// A few non-square synthetic photos.
    images: PathBuf,
}

fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let export = root.join("export");
    export_model(Path::new(PRETRAINED), &export);
    std::fs::write(root.join("tokens.txt"), format!("{EDGE} {TOKEN}\n")).unwrap();
    std::fs::write(root.join("edge.token"), TOKEN).unwrap();
    std::fs::write(root.join("wrong.token"), "not-the-token-of-edge-0").unwrap();
    let data = root.join("data");
    generate(&SynthConfig { images: 16, imgsz: 128, seed: 11, edges: 1, private_size: Some((160, 96)) }, &data).unwrap();
    let images = data.join("private/edge-0/images");
    assert!(std::fs::read_dir(&images).unwrap().count() >= 3, "the synthetic edge split has images");
    World { _tmp: tmp, root, export, images }
}

fn export_model(weights: &Path, out: &Path) {
    let done = Command::new(binary("mistnet-cloud")).args(["export", "--weights", s(weights), "--cut", "4", "--out", s(out)]).output().unwrap();
    assert!(done.status.success(), "export failed: {}", String::from_utf8_lossy(&done.stderr));
}

impl World {
    /// `serve` on a free loopback port with its own store `store`, and `args`.
    fn serve(&self, store: &str, args: &[&str]) -> (mistnet_e2e::Proc, String) {
        let (store, tokens) = (self.root.join(store), self.root.join("tokens.txt"));
        let mut all = vec!["--listen", "127.0.0.1:0", "--store", s(&store), "--tokens", s(&tokens)];
        all.extend_from_slice(args);
        start_cloud(&all)
    }

    /// `mistnet-edge detect` on the photos into `out`, with `source` (the model flags).
    fn detect(&self, source: &[&str], out: &str) -> Output {
        Command::new(binary("mistnet-edge"))
            .arg("detect")
            .args(source)
            .args([s(&self.images), "--out", s(&self.root.join(out)), "--conf", "0.05"])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    }

    fn from_server(&self, addr: &str, token: &str) -> Vec<String> {
        let token = self.root.join(token);
        ["--server", &format!("http://{addr}"), "--edge", EDGE, "--token-file", s(&token), "--cache", s(&self.root.join("cache"))].map(String::from).to_vec()
    }

    /// Every `<stem>.json` that detect wrote into `out`, the image path left out.
    fn detections(&self, out: &str) -> BTreeMap<String, serde_json::Value> {
        let mut all = BTreeMap::new();
        for entry in std::fs::read_dir(self.root.join(out)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                all.insert(path.file_name().unwrap().to_string_lossy().into_owned(), v["detections"].clone());
            }
        }
        all
    }

    fn manifest_model_sha(&self) -> String {
        let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(self.export.join("manifest.json")).unwrap()).unwrap();
        m["model"]["sha256"].as_str().unwrap().to_string()
    }
}

fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "detect failed: {err}");
    err
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn detect_fetches_the_served_model_caches_it_by_hash_and_finds_what_the_file_finds() {
    let w = world();
    let reference = w.detect(&["--weights", s(&w.export.join("model.safetensors"))], "by-file");
    ok(&reference);
    let expected = w.detections("by-file");
    assert!(expected.len() >= 3 && expected.values().any(|d| !d.as_array().unwrap().is_empty()), "the reference finds objects: {expected:?}");

    let (mut cloud, addr) = w.serve("store", &["--front", s(&w.export)]);
    let sha = w.manifest_model_sha();
    let server = w.from_server(&addr, "edge.token");

    // First use: fetched, byte for byte the exported file, under its hash.
    let err = ok(&w.detect(&args(&server), "fetched"));
    assert!(err.contains(&format!("model {sha} fetched from")), "{err}");
    let cached = w.root.join("cache/model").join(&sha).join("model.safetensors");
    assert_eq!(std::fs::read(&cached).unwrap(), std::fs::read(w.export.join("model.safetensors")).unwrap());
    assert_eq!(w.detections("fetched"), expected, "the fetched model finds exactly what the file finds");

    // Second use: the cache is the served model; nothing is sent again.
    let err = ok(&w.detect(&args(&server), "cached"));
    assert!(err.contains(&format!("model {sha} (cached; the one")), "{err}");
    assert_eq!(w.detections("cached"), expected);

    // A bit flipped at rest in the cached file: detected, dropped, fetched again.
    let mut bytes = std::fs::read(&cached).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x10;
    std::fs::write(&cached, &bytes).unwrap();
    let err = ok(&w.detect(&args(&server), "refetched"));
    assert!(err.contains("fetched from"), "a damaged cache entry is fetched again: {err}");
    assert_eq!(std::fs::read(&cached).unwrap(), std::fs::read(w.export.join("model.safetensors")).unwrap());
    assert_eq!(w.detections("refetched"), expected);

    // A wrong token is refused, and nothing is run.
    let out = w.detect(&args(&w.from_server(&addr, "wrong.token")), "refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("GetModel refused") && err.contains("the token is not its token"), "{err}");

    // A model exported into the served directory after training reaches the edge without a restart.
    let retrained = w.root.join("retrained.safetensors");
    perturb(Path::new(PRETRAINED), &retrained);
    export_model(&retrained, &w.export);
    let new_sha = w.manifest_model_sha();
    assert_ne!(new_sha, sha);
    let err = ok(&w.detect(&args(&server), "retrained"));
    assert!(err.contains(&format!("model {new_sha} fetched from")), "the new model is served: {err}");

    // The cloud gone: the model fetched last is used, and said so.
    let _ = cloud.0.kill();
    let _ = cloud.0.wait();
    let err = ok(&w.detect(&args(&server), "offline"));
    assert!(err.contains(&format!("model {new_sha} (cached;")) && err.contains("cannot be reached"), "{err}");
    assert_eq!(w.detections("offline"), w.detections("retrained"));
}

#[test]
fn a_server_without_a_model_answers_not_found_and_serves_one_once_it_is_exported() {
    let w = world();
    let (_cloud, addr) = w.serve("store", &["--weights", PRETRAINED, "--cut", "4", "--imgsz", "128"]);
    let out = w.detect(&args(&w.from_server(&addr, "edge.token")), "none");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not found") && err.contains("serves no model"), "{err}");
    assert!(!w.root.join("cache/model/LATEST").exists());

    // --serve-model may name where training will export: nothing is served until the file is there.
    let later = w.root.join("later");
    std::fs::create_dir_all(&later).unwrap();
    let model = later.join("model.safetensors");
    let (_other, addr) = w.serve("other-store", &["--weights", PRETRAINED, "--cut", "4", "--imgsz", "128", "--serve-model", s(&model)]);
    let out = w.detect(&args(&w.from_server(&addr, "edge.token")), "not-yet");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no model yet"), "{err}");
    std::fs::copy(PRETRAINED, later.join("model.tmp")).unwrap();
    std::fs::rename(later.join("model.tmp"), &model).unwrap();
    ok(&w.detect(&args(&w.from_server(&addr, "edge.token")), "served"));
    // A file that is not a deployable model is refused at start.
    let front_only = w.export.join("front.safetensors");
    let out = Command::new(binary("mistnet-cloud"))
        .args(["serve", "--listen", "127.0.0.1:0", "--store", s(&w.root.join("store2")), "--tokens", s(&w.root.join("tokens.txt"))])
        .args(["--front", s(&w.export), "--serve-model", s(&front_only)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not a deployable model"), "{err}");
}

/// A copy of the deployable model at `from` with one weight changed: what training would write.
fn perturb(from: &Path, to: &Path) {
    let meta = DeployMeta::read(from).unwrap();
    let mut tensors: BTreeMap<String, Tensor> = candle_core::safetensors::load(from, &Device::Cpu).unwrap().into_iter().collect();
    let name = "model.24.m.0.bias";
    let bias = tensors[name].affine(1.0, 0.01).unwrap();
    tensors.insert(name.into(), bias);
    save_deployable(&tensors, &meta, to).unwrap();
}

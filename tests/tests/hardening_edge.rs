//! The edge's own data, through real processes on 127.0.0.1: a damaged spool file (truncated,
//! bit-flipped, empty) is extracted again on the next run and the upload completes; `--skip-bad`
//! leaves out undecodable images and ids the cloud would refuse, counting them, and without it
//! each stops the edge with a message naming the file before anything is uploaded.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use mistnet::data::synth::{SynthConfig, generate};
use mistnet_e2e::{Proc, binary, start_cloud, wait_until};
use mistnet_store::FeatureStore;

const LIMIT: Duration = Duration::from_secs(120);
const TOKEN: &str = "token-of-edge-0-0123456789";

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
}

fn setup(images: usize) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    generate(&SynthConfig { images, imgsz: 64, seed: 3, edges: 1, private_size: None }, &root.join("data")).unwrap();
    std::fs::write(root.join("tokens.txt"), format!("edge-0 {TOKEN}\n")).unwrap();
    std::fs::write(root.join("edge-0.token"), TOKEN).unwrap();
    let data = root.join("data/private/edge-0.yaml");
    assert!(data.is_file());
    Setup { root, data, _tmp: tmp }
}

impl Setup {
    fn cloud(&self) -> (Proc, String) {
        let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tests/fixtures/yolov5/yolov5n_weights.safetensors");
        let (store, tokens) = (self.root.join("store"), self.root.join("tokens.txt"));
        let (store, tokens, weights) = (store.to_str().unwrap(), tokens.to_str().unwrap(), weights.to_str().unwrap());
        start_cloud(&["--listen", "127.0.0.1:0", "--store", store, "--model", "yolov5n", "--weights", weights, "--cut", "4", "--imgsz", "64", "--tokens", tokens])
    }

    fn edge(&self, addr: &str, extra: &[&str]) -> Command {
        let mut cmd = Command::new(binary("mistnet-edge"));
        cmd.args(["run", "--server", &format!("http://{addr}"), "--edge", "edge-0", "--mechanism", "sue", "--epsilon", "2", "--max-attempts", "5"])
            .arg("--token-file")
            .arg(self.root.join("edge-0.token"))
            .arg("--data")
            .arg(&self.data)
            .arg("--cache")
            .arg(self.root.join("cache"))
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        cmd
    }

    /// The edge run to its end; panics past [`LIMIT`].
    fn run_edge(&self, addr: &str, extra: &[&str]) -> Output {
        let child = self.edge(addr, extra).stderr(Stdio::piped()).spawn().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
        rx.recv_timeout(LIMIT).expect("the edge did not exit in time")
    }

    fn images(&self) -> PathBuf {
        self.root.join("data/private/edge-0/images")
    }

    fn stored_ids(&self) -> Vec<String> {
        let samples = FeatureStore::open(self.root.join("store")).map(|s| s.samples().unwrap()).unwrap_or_default();
        for s in &samples {
            mistnet::codec::decode(&s.features, &Default::default()).expect("a stored sample decodes");
        }
        let mut ids: Vec<String> = samples.into_iter().map(|s| s.sample_id).collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "a sample is stored twice");
        ids
    }
}

fn train_images(data: &Path) -> usize {
    mistnet::data::Dataset::open(data).unwrap().load(mistnet::data::Split::Train, Default::default()).unwrap().samples.len()
}

/// Every `.mnf` file under `dir`.
fn spool_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(spool_files(&p));
        } else if p.extension().is_some_and(|x| x == "mnf") {
            out.push(p);
        }
    }
    out
}

#[test]
fn damaged_spool_files_are_extracted_again_and_the_upload_completes() {
    let setup = setup(40);
    let expected = train_images(&setup.data);
    let (_cloud, addr) = setup.cloud();
    // Slowly (2 samples/s), so the edge is killed with its spool full and most samples unsent.
    let mut edge = Proc(setup.edge(&addr, &["--max-rate", "2"]).stderr(Stdio::null()).spawn().unwrap());
    let spool = setup.root.join("cache/spool");
    assert!(wait_until(LIMIT, || spool_files(&spool).len() == expected), "the spool never filled");
    edge.0.kill().unwrap();
    edge.0.wait().unwrap();
    let at_kill = setup.stored_ids().len();
    assert!(at_kill + 3 <= expected, "the edge was killed too late ({at_kill} of {expected} stored)");

    // Damage every spooled message: truncated, one bit flipped, emptied (a write lost to power loss).
    let files = spool_files(&spool);
    for (i, f) in files.iter().enumerate() {
        let mut bytes = std::fs::read(f).unwrap();
        match i % 3 {
            0 => bytes.truncate(bytes.len() / 2),
            1 => {
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x10;
            }
            _ => bytes.clear(),
        }
        std::fs::write(f, bytes).unwrap();
    }

    let out = setup.run_edge(&addr, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the rerun failed: {stderr}");
    assert!(stderr.contains("damaged spool file: extracting the sample again"), "{stderr}");
    assert_eq!(setup.stored_ids().len(), expected, "every sample once, each decodable");
    assert!(spool_files(&spool).is_empty(), "the spool is removed once everything is acknowledged");
}

#[test]
fn skip_bad_leaves_out_undecodable_images_and_refusable_ids_and_without_it_nothing_is_uploaded() {
    let setup = setup(20);
    let good = train_images(&setup.data);
    let images = setup.images();
    let valid: PathBuf = std::fs::read_dir(&images).unwrap().flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "png")).unwrap();
    let png = std::fs::read(&valid).unwrap();
    let garbage = images.join("garbage.png");
    // A real PNG with its pixel data overwritten: its size reads, its pixels do not decode.
    let mut damaged = png.clone();
    let mid = damaged.len() / 2;
    damaged[mid..mid + 16].fill(0xff);
    let truncated = images.join("truncated.png");
    let newline = images.join("new\nline.png");
    let long = images.join(format!("{}.png", "a".repeat(250)));
    let bad: [(&Path, Vec<u8>, &str); 4] = [
        (&garbage, b"this is not a png at all, just bytes".repeat(20), "unreadable image"),
        (&truncated, damaged, "cannot encode the features of"),
        (&newline, png.clone(), "without control characters"),
        (&long, png.clone(), "must be 1 to 256 bytes"),
    ];

    let (_cloud, addr) = setup.cloud();
    for (path, bytes, why) in &bad {
        std::fs::write(path, bytes).unwrap();
        let out = setup.run_edge(&addr, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} did not stop the edge", path.display());
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(stderr.contains(why) && stderr.contains(format!("{name:?}").trim_matches('"')), "{}: {stderr}", path.display());
        assert_eq!(setup.stored_ids().len(), 0, "{}: nothing is uploaded", path.display());
        std::fs::remove_file(path).unwrap();
    }

    for (path, bytes, _) in &bad {
        std::fs::write(path, bytes).unwrap();
    }
    let out = setup.run_edge(&addr, &["--skip-bad"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("skipped 1 samples of the dataset that cannot be loaded (--skip-bad)"), "{stderr}");
    assert!(stderr.contains("skipped 1 samples whose images could not be encoded (--skip-bad)"), "{stderr}");
    assert!(stderr.contains("skipped 2 samples whose ids the cloud would refuse (--skip-bad)"), "{stderr}");
    let ids = setup.stored_ids();
    assert_eq!(ids.len(), good, "every good sample, and only those: {ids:?}");
    assert!(ids.iter().all(|id| !id.contains("garbage") && !id.contains("truncated") && !id.contains('\n') && id.len() <= 256), "{ids:?}");
}

//! `train --store --follow` while the edges upload, through real processes on 127.0.0.1: a live
//! `serve`, `train --follow` started before anything is stored (it waits, saying so), one edge
//! that uploads a first shard (training starts at `--min-samples`), a second edge that uploads
//! later (later epochs see its samples), and a third, slow edge killed mid-upload (a vanished edge:
//! training goes on with what it stored and finishes). Every count is read from `results.csv`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mistnet::data::synth::{SynthConfig, generate};
use mistnet_e2e::{Proc, binary, edge_sample_ids, start_cloud, wait_until};
use mistnet_store::FeatureStore;
use mistnet_train::fit::report::read_results;

const LIMIT: Duration = Duration::from_secs(300);
const EDGES: usize = 3;
/// Enough epochs that training is still running when the third edge is killed (asserted).
const EPOCHS: usize = 24;

fn token(k: usize) -> String {
    format!("token-of-edge-{k}-0123456789")
}

struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    addr: String,
    _cloud: Proc,
}

impl World {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        generate(&SynthConfig { images: 120, imgsz: 64, seed: 5, edges: EDGES, private_size: None }, &root.join("data")).unwrap();
        let tokens: String = (0..EDGES).map(|k| format!("edge-{k} {}\n", token(k))).collect();
        std::fs::write(root.join("tokens.txt"), tokens).unwrap();
        for k in 0..EDGES {
            std::fs::write(root.join(format!("edge-{k}.token")), token(k)).unwrap();
        }
        let (store, tokens, weights) = (root.join("store"), root.join("tokens.txt"), weights());
        let (_cloud, addr) = start_cloud(&[
            "--listen", "127.0.0.1:0", "--store", s(&store), "--model", "yolov5n", "--weights", s(&weights), "--cut", "4", "--imgsz", "64", "--tokens", s(&tokens),
        ]);
        World { _tmp: tmp, root, addr, _cloud }
    }

    fn shard(&self, k: usize) -> PathBuf {
        self.root.join(format!("data/private/edge-{k}.yaml"))
    }

    fn edge(&self, k: usize, extra: &[&str]) -> Proc {
        let mut cmd = Command::new(binary("mistnet-edge"));
        cmd.args(["run", "--server", &format!("http://{}", self.addr), "--edge", &format!("edge-{k}"), "--mechanism", "sue", "--epsilon", "4"])
            .arg("--token-file")
            .arg(self.root.join(format!("edge-{k}.token")))
            .arg("--data")
            .arg(self.shard(k))
            .arg("--cache")
            .arg(self.root.join(format!("cache-{k}")))
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Proc(cmd.spawn().unwrap())
    }

    /// Samples in the store now (read-only, as the trainer reads it).
    fn stored(&self) -> usize {
        FeatureStore::open(self.root.join("store")).unwrap().len()
    }

    /// `train --store --follow` with `extra` flags, into `out`; its stdout and stderr go to
    /// `out.stdout` and `out.stderr` (files: a pipe nobody reads would block it).
    fn train(&self, out: &Path, extra: &[&str]) -> Proc {
        let (store, data, weights) = (self.root.join("store"), self.root.join("data/private-val.yaml"), weights());
        let mut cmd = Command::new(binary("mistnet-cloud"));
        cmd.args(["train", "--store", s(&store), "--follow", "--data", s(&data), "--weights", s(&weights), "--model", "yolov5n", "--fresh-back", "--cut", "4", "--imgsz", "64"])
            .args(["--batch", "2", "--nbs", "2", "--warmup-min-iters", "0", "--out", s(out)])
            .args(extra)
            .env("RUST_LOG", "info")
            .env("RUST_LIB_BACKTRACE", "0")
            .env("RAYON_NUM_THREADS", "1")
            .stdout(std::fs::File::create(out.with_extension("stdout")).unwrap())
            .stderr(std::fs::File::create(out.with_extension("stderr")).unwrap());
        Proc(cmd.spawn().unwrap())
    }
}

fn weights() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tests/fixtures/yolov5/yolov5n_weights.safetensors")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Samples per epoch so far, from `results.csv` (empty before the first epoch ends).
fn epoch_samples(out: &Path) -> Vec<usize> {
    read_results(&out.join("results.csv"), usize::MAX).unwrap_or_default().iter().map(|r| r.samples.expect("a samples column")).collect()
}

/// What `train` into `out` wrote to stdout and stderr.
fn output(out: &Path) -> (String, String) {
    let read = |ext| std::fs::read_to_string(out.with_extension(ext)).unwrap();
    (read("stdout"), read("stderr"))
}

#[test]
fn train_follow_starts_at_the_minimum_takes_in_later_samples_and_outlives_a_vanished_edge() {
    let w = World::new();
    let shards: Vec<usize> = (0..EDGES).map(|k| edge_sample_ids(&w.shard(k)).len()).collect();
    assert!(shards.iter().all(|&n| n >= 6), "shards too small for the test: {shards:?}");
    let out = w.root.join("run");
    let min = shards[0].to_string();
    let started = Instant::now();
    let mut train = w.train(&out, &["--min-samples", &min, "--epochs", &EPOCHS.to_string(), "--wait-timeout", "120"]);

    // Nothing stored: it waits, and no epoch runs.
    std::thread::sleep(Duration::from_secs(2));
    assert!(train.0.try_wait().unwrap().is_none(), "train --follow exited with nothing stored: {:?}", output(&out));
    assert!(epoch_samples(&out).is_empty(), "an epoch ran before --min-samples were stored");

    // The first edge uploads its whole shard: exactly --min-samples, and nothing else is stored yet.
    assert!(w.edge(0, &[]).wait_for(LIMIT).success(), "edge-0 failed");
    assert_eq!(w.stored(), shards[0]);
    assert!(wait_until(LIMIT, || !epoch_samples(&out).is_empty()), "training did not start at --min-samples");
    assert_eq!(epoch_samples(&out)[0], shards[0], "the first epoch trains on what was stored when it started");

    // Later, a second edge uploads; then a third, slowly, and vanishes (SIGKILL) partway.
    assert!(w.edge(1, &[]).wait_for(LIMIT).success(), "edge-1 failed");
    let mut slow = w.edge(2, &["--max-rate", "2"]);
    let before = shards[0] + shards[1];
    assert!(wait_until(LIMIT, || w.stored() >= before + 2), "edge-2 stored nothing");
    slow.0.kill().unwrap();
    slow.0.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let stored = w.stored();
    assert!(stored < before + shards[2], "edge-2 finished its shard before it was killed ({stored} stored)");
    assert!(train.0.try_wait().unwrap().is_none(), "training finished before edge-2 vanished: raise EPOCHS");

    // Training never waits for edge-2's missing samples: it finishes with what is stored.
    let status = train.wait_for(LIMIT);
    let (stdout, stderr) = output(&out);
    assert!(status.success(), "train --follow failed:\n{stdout}\n{stderr}");
    let per_epoch = epoch_samples(&out);
    assert_eq!(per_epoch.len(), EPOCHS, "{per_epoch:?}");
    assert!(per_epoch.windows(2).all(|p| p[0] <= p[1]), "samples per epoch shrank: {per_epoch:?}");
    assert!(per_epoch.contains(&before) || per_epoch.iter().any(|&n| n > before), "no epoch saw edge-1's samples: {per_epoch:?}");
    assert_eq!(*per_epoch.last().unwrap(), stored, "the last epoch trains on everything stored: {per_epoch:?}");
    assert!(stdout.contains(&format!("waiting for {min} samples")), "{stdout}");
    assert!(stdout.contains(&format!("{} samples stored", shards[0])) && stdout.contains("training starts"), "{stdout}");
    assert!(stdout.contains("samples per epoch: "), "{stdout}");
    // Each epoch's log line says how many samples it saw.
    let logged: Vec<&str> = stderr.lines().filter(|l| l.contains("epoch done")).collect();
    assert_eq!(logged.len(), EPOCHS, "{stderr}");
    assert!(logged.last().unwrap().contains(&format!("samples={stored}")), "{}", logged.last().unwrap());
    eprintln!("samples per epoch {per_epoch:?}, shards {shards:?}, {:.1} s", started.elapsed().as_secs_f64());

    // Too few samples within --wait-timeout: a clear error, and nothing trained.
    let short = w.root.join("short");
    let mut waiting = w.train(&short, &["--min-samples", "1000", "--epochs", "1", "--wait-timeout", "1"]);
    let status = waiting.wait_for(LIMIT);
    let (_, stderr) = output(&short);
    assert!(!status.success(), "train --follow did not time out");
    assert!(stderr.contains(&format!("{stored} usable samples stored")) && stderr.contains("fewer than --min-samples 1000 (--wait-timeout 1 s)"), "{stderr}");
    assert!(!short.join("results.csv").exists());
}

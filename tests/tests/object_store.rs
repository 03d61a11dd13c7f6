//! The feature store in a bucket (issue 18), against a real S3-protocol server started here on
//! loopback (`tests/s3/s3_server.py`: moto's server in its own process, installed by
//! `tools/test.sh` into `target/s3-venv`), through real `serve`, `mistnet-edge run` and `train`
//! processes:
//!
//! - eight writers race on one edge's samples under an ε budget: the ledger is exact;
//! - two `serve` replicas share one bucket; one edge uploads its shard through both at once (every
//!   sample raced by two uploaders) under an ε budget that cannot pay for every upload: each sample
//!   is stored once, the ledger's ε is exactly the accepted uploads' and never past the budget;
//! - a replica is killed (SIGKILL) mid-upload: behind one address (haproxy in TCP mode, where
//!   installed) the same edge run goes on through the other replica, else the edge resumes through
//!   the other's address; every sample of its shard is stored exactly once;
//! - `train --store s3://...` trains on what the bucket holds;
//! - a flipped bit in a stored object is refused, naming it, or skipped under quarantine.
//!
//! Skipped with a message where the server is not installed, unless `MISTNET_REQUIRE_S3=1`
//! (`tools/test.sh` sets it once the install succeeded).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mistnet::data::synth::{SynthConfig, generate};
use mistnet_e2e::{Proc, binary, edge_sample_ids, start_cloud, wait_until};
use std::sync::Arc;

use mistnet_store::bucket::{Bucket, BucketWriter};
use mistnet_store::{FeatureStore, OnCorruption, Outcome, Refusal, StoreLimits, StoreUrl, Upload};
use object_store::ObjectStoreExt;

const LIMIT: Duration = Duration::from_secs(240);
const BUCKET: &str = "mistnet-features";
const EPSILON: f64 = 2.0;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn weights() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tests/fixtures/yolov5/yolov5n_weights.safetensors")
}

/// The Python that has moto's server, if installed.
fn s3_python() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/s3-venv/bin/python");
    let python = std::env::var_os("MISTNET_S3_PYTHON").map(PathBuf::from).unwrap_or(venv);
    let ok = Command::new(&python).args(["-c", "import moto.server"]).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    ok.then_some(python)
}

/// The S3 server on 127.0.0.1, with the test bucket created; its endpoint.
fn start_s3(python: &Path) -> (Proc, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("s3/s3_server.py");
    let mut child = Command::new(python).arg(script).args(["0", BUCKET]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("start the S3 server");
    let stdout = child.stdout.take().unwrap();
    let proc = Proc(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let port = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("S3 server said {line:?}")).to_string();
    (proc, format!("http://127.0.0.1:{port}"))
}

fn token(edge: &str) -> String {
    format!("token-of-{edge}-0123456789")
}

struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl World {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        generate(&SynthConfig { images: 60, imgsz: 64, seed: 3, edges: 2, private_size: None }, &root.join("data")).unwrap();
        let tokens: String = ["edge-0", "edge-1"].iter().map(|e| format!("{e} {}\n", token(e))).collect();
        std::fs::write(root.join("tokens.txt"), tokens).unwrap();
        std::fs::write(root.join("operator.token"), "operator-token-0123456789").unwrap();
        for e in ["edge-0", "edge-1"] {
            std::fs::write(root.join(format!("{e}.token")), token(e)).unwrap();
        }
        World { _tmp: tmp, root }
    }

    fn shard(&self, k: usize) -> PathBuf {
        self.root.join(format!("data/private/edge-{k}.yaml"))
    }

    /// A `serve` replica on `store`.
    fn replica(&self, store: &str, extra: &[&str]) -> (Proc, String) {
        let (tokens, weights) = (self.root.join("tokens.txt"), weights());
        let mut args = vec!["--listen", "127.0.0.1:0", "--store", store, "--model", "yolov5n", "--weights", s(&weights), "--cut", "4", "--imgsz", "64", "--tokens", s(&tokens)];
        args.extend_from_slice(extra);
        start_cloud(&args)
    }

    /// `mistnet-edge run` of edge-`k`'s shard to `addr`, with its own spool `cache`.
    fn edge(&self, k: usize, addr: &str, cache: &str, extra: &[&str]) -> Proc {
        let edge = format!("edge-{k}");
        let mut cmd = Command::new(binary("mistnet-edge"));
        cmd.args(["run", "--server", &format!("http://{addr}"), "--edge", &edge, "--mechanism", "sue", "--epsilon", &EPSILON.to_string()])
            .arg("--token-file")
            .arg(self.root.join(format!("{edge}.token")))
            .arg("--data")
            .arg(self.shard(k))
            .arg("--cache")
            .arg(self.root.join(cache))
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Proc(cmd.spawn().unwrap())
    }
}

/// haproxy, if installed (`tools/test.sh` does not install it; `.ci/run` does where apt can).
fn haproxy() -> Option<PathBuf> {
    let found = Command::new("haproxy").arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    found.then(|| PathBuf::from("haproxy"))
}

/// haproxy in TCP mode on a free port of 127.0.0.1 in front of the replicas at `first` and `second`:
/// every connection goes to the first while its health check passes, to the second once it fails
/// (`balance first`; a connection that cannot reach a server is sent to the other). Its address.
fn start_balancer(haproxy: &Path, root: &Path, first: &str, second: &str) -> (Proc, String) {
    let address = format!("127.0.0.1:{}", mistnet_e2e::free_port());
    let config = format!(
        "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 300s\n  timeout server 300s\n  retries 2\n  option redispatch\n\
         frontend edges\n  bind {address}\n  default_backend replicas\n\
         backend replicas\n  balance first\n  server a {first} check inter 200ms fall 1 rise 2\n  server b {second} check inter 200ms fall 1 rise 2\n"
    );
    let path = root.join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let proc = Proc(Command::new(haproxy).arg("-db").arg("-f").arg(&path).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start haproxy"));
    assert!(wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(&address).is_ok()), "haproxy is not listening on {address}");
    (proc, address)
}

/// The (edge, sample id) of every sample the bucket store at `url` holds, each once.
fn stored(url: &StoreUrl) -> Vec<(String, String)> {
    FeatureStore::open_url(url, OnCorruption::Refuse).unwrap().samples().unwrap().into_iter().map(|s| (s.edge, s.sample_id)).collect()
}

fn bucket_url(store: &StoreUrl) -> &url::Url {
    match store {
        StoreUrl::Bucket(u) => u,
        StoreUrl::Dir(dir) => panic!("{} is no bucket", dir.display()),
    }
}

/// Eight writers, as eight replicas would be, each sending every one of an edge's ten samples at
/// once, under a budget that pays for 50 of the 80 uploads: 50 accepted, each sample stored by
/// exactly one writer, the ledger exact, whatever the interleaving.
fn contention(rt: &tokio::runtime::Runtime) {
    let store: StoreUrl = format!("s3://{BUCKET}/contention").parse().unwrap();
    let limits = StoreLimits { epsilon_budget: Some(EPSILON * 50.0), ..StoreLimits::default() };
    let upload = |i: usize| Upload { edge: "edge-x".into(), sample_id: format!("img-{i}.jpg"), epsilon: EPSILON, labels: Vec::new(), image_size: (64, 48), features: vec![i as u8; 300] };
    let outcomes = rt.block_on(async {
        let mut writers = Vec::new();
        for _ in 0..8 {
            writers.push(Arc::new(BucketWriter::open(bucket_url(&store), limits).await.unwrap()));
        }
        let mut tasks = tokio::task::JoinSet::new();
        for writer in &writers {
            for i in 0..10 {
                let (writer, upload) = (Arc::clone(writer), upload(i));
                tasks.spawn(async move { writer.submit(upload).await.unwrap() });
            }
        }
        tasks.join_all().await
    });
    let count = |f: fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    let (stored, duplicate, refused) = (count(|o| *o == Outcome::Stored), count(|o| *o == Outcome::Duplicate), count(|o| matches!(o, Outcome::Refused(Refusal::EpsilonBudget { .. }))));
    eprintln!("8 writers × 10 samples, budget for 50 uploads: {stored} stored, {duplicate} duplicates, {refused} refused");
    assert_eq!((stored, duplicate + stored, refused), (10, 50, 30));
    let t = rt.block_on(Bucket::connect(bucket_url(&store)).unwrap().edges(Some("edge-x"))).unwrap()["edge-x"];
    assert_eq!((t.samples, t.feature_bytes, t.uploads, t.epsilon_total), (10, 3000, 50, EPSILON * 50.0));
    let samples = FeatureStore::open_url(&store, OnCorruption::Refuse).unwrap().samples().unwrap();
    assert_eq!(samples.len(), 10);
    assert!(samples.iter().all(|s| s.features.len() == 300 && s.image_size == (64, 48)));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn a_bucket_shared_by_replicas_stores_each_sample_once_within_one_epsilon_budget() {
    let Some(python) = s3_python() else {
        assert!(std::env::var_os("MISTNET_REQUIRE_S3").is_none(), "MISTNET_REQUIRE_S3 is set but moto's S3 server is not installed (target/s3-venv)");
        eprintln!("SKIPPED: no S3-protocol server here (tools/test.sh installs moto[server] into target/s3-venv; or set MISTNET_S3_PYTHON)");
        return;
    };
    let (_s3, endpoint) = start_s3(&python);
    // SAFETY: the only test in this binary, so no other thread reads the environment while it is set.
    unsafe {
        std::env::set_var("AWS_ENDPOINT", &endpoint);
        std::env::set_var("AWS_ALLOW_HTTP", "true");
        std::env::set_var("AWS_ACCESS_KEY_ID", "mistnet-test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "mistnet-test-secret");
        std::env::set_var("AWS_REGION", "us-east-1");
    }
    let rt = runtime();
    contention(&rt);

    let w = World::new();
    let shard0 = edge_sample_ids(&w.shard(0));
    let shard1 = edge_sample_ids(&w.shard(1));
    assert!(shard0.len() >= 10 && shard1.len() >= 10, "shards too small: {} and {}", shard0.len(), shard1.len());

    // 1. One edge through two replicas at once, every sample raced, under a budget that pays for
    //    its shard and a half, not for both uploaders' full runs.
    let url = format!("s3://{BUCKET}/race");
    let store: StoreUrl = url.parse().unwrap();
    let budget = EPSILON * (shard0.len() + shard0.len() / 2) as f64;
    let budget_flag = budget.to_string();
    let (_a, addr_a) = w.replica(&url, &["--epsilon-budget", &budget_flag]);
    let (_b, addr_b) = w.replica(&url, &["--epsilon-budget", &budget_flag]);
    // Slowed, so that the two uploads overlap sample by sample.
    let mut via_a = w.edge(0, &addr_a, "race-a", &["--max-rate", "8"]);
    let mut via_b = w.edge(0, &addr_b, "race-b", &["--max-rate", "8"]);
    let refused = [via_a.wait_for(LIMIT), via_b.wait_for(LIMIT)].iter().filter(|s| !s.success()).count();
    let samples = stored(&store);
    let ids: BTreeSet<String> = samples.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(ids.len(), samples.len(), "a sample stored twice");
    assert!(ids.is_subset(&shard0), "stored ids that are not edge-0's");
    let bucket = Bucket::connect(bucket_url(&store)).unwrap();
    let totals = rt.block_on(bucket.edges(None)).unwrap();
    let t = totals["edge-0"];
    eprintln!("two uploaders of {} samples through two replicas, budget {budget}: {} stored, {refused} uploader(s) refused, ledger {t:?}", shard0.len(), samples.len());
    assert_eq!(totals.len(), 1);
    assert_eq!(t.samples as usize, samples.len(), "the ledger counts every stored sample once: {t:?}");
    assert!(t.epsilon_total <= budget + 1e-9, "the ledger spent {} past the budget {budget}", t.epsilon_total);
    assert!((t.epsilon_total - EPSILON * t.uploads as f64).abs() < 1e-9, "ε is the accepted uploads': {t:?}");
    // An upload is refused only once the next would pass the budget: then the ledger holds exactly
    // as many uploads as the budget pays for, however the replicas interleaved.
    assert!(refused > 0, "neither uploader was refused: the budget was not reached ({t:?})");
    assert_eq!(t.uploads, (budget / EPSILON).floor() as u64, "{t:?}");
    // The per-sample ledger lists every accepted upload, over pages.
    let (mut after, mut spends) = (String::new(), 0usize);
    loop {
        let (page, more) = rt.block_on(bucket.sample_page("edge-0", &after, 7)).unwrap();
        spends += page.iter().map(|(_, eps)| eps.len()).sum::<usize>();
        assert!(page.iter().all(|(_, eps)| eps.iter().all(|&e| e == EPSILON)));
        match page.last() {
            Some((id, _)) if more => after = id.clone(),
            _ => break,
        }
    }
    assert_eq!(spends as u64, t.uploads, "one spend record per accepted upload");

    // 2. A replica killed mid-upload. Behind one address (haproxy, where installed), the same edge run
    //    carries on through the other replica; without it, the edge resumes through the other's address.
    let url = format!("s3://{BUCKET}/failover");
    let store: StoreUrl = url.parse().unwrap();
    let (mut a, addr_a) = w.replica(&url, &[]);
    let (_b, addr_b) = w.replica(&url, &[]);
    match haproxy() {
        Some(haproxy) => {
            let (_balancer, address) = start_balancer(&haproxy, &w.root, &addr_a, &addr_b);
            let mut edge = w.edge(1, &address, "failover", &["--max-rate", "4"]);
            assert!(wait_until(LIMIT, || stored(&store).len() >= 3), "nothing stored through the balancer");
            a.0.kill().unwrap();
            a.0.wait().unwrap();
            let at_kill = stored(&store).len();
            assert!(at_kill < shard1.len(), "edge-1 finished before its replica was killed ({at_kill} stored)");
            let status = edge.wait_for(LIMIT);
            assert!(status.success(), "edge-1 through the balancer, its replica killed: {status}");
        }
        None => {
            eprintln!("haproxy is not installed: no balancer in front of the replicas; the edge resumes through replica B's own address");
            let mut slow = w.edge(1, &addr_a, "failover", &["--max-rate", "4"]);
            assert!(wait_until(LIMIT, || stored(&store).len() >= 3), "nothing stored through replica A");
            a.0.kill().unwrap();
            a.0.wait().unwrap();
            slow.wait_for(LIMIT);
            let before = stored(&store).len();
            assert!(before < shard1.len(), "edge-1 finished before its replica was killed ({before} stored)");
            let status = w.edge(1, &addr_b, "failover", &[]).wait_for(LIMIT);
            assert!(status.success(), "edge-1 resuming through replica B: {status}");
        }
    }
    let samples = stored(&store);
    let ids: BTreeSet<String> = samples.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(samples.len(), shard1.len(), "every sample stored exactly once");
    assert_eq!(ids, shard1);
    let failover = Bucket::connect(bucket_url(&store)).unwrap();
    let t = rt.block_on(failover.edges(Some("edge-1"))).unwrap()["edge-1"];
    // A killed replica may have counted one upload it never stored: never fewer, at most one more.
    assert!((t.samples as usize) >= shard1.len() && (t.samples as usize) <= shard1.len() + 1, "{t:?}");
    assert!(t.epsilon_total >= EPSILON * shard1.len() as f64 - 1e-9, "{t:?}");

    // 3. train --store s3://... reads the bucket: whole, and followed.
    let data = w.root.join("data/private-val.yaml");
    for (run, extra) in [("train", &[][..]), ("follow", &["--follow", "--min-samples", "4", "--wait-timeout", "60"][..])] {
        let out = w.root.join(run);
        let status = Command::new(binary("mistnet-cloud"))
            .args(["train", "--store", &url, "--data", s(&data), "--weights", s(&weights()), "--model", "yolov5n", "--fresh-back", "--cut", "4", "--imgsz", "64"])
            .args(["--epochs", "1", "--batch", "4", "--nbs", "4", "--warmup-min-iters", "0", "--out", s(&out)])
            .args(extra)
            .env("RUST_LOG", "warn")
            .env("RAYON_NUM_THREADS", "1")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "train --store {url} {extra:?}: {status}");
        let results = std::fs::read_to_string(out.join("results.csv")).unwrap();
        assert_eq!(results.lines().count(), 2, "one epoch: {results}");
    }
    let followed = mistnet_train::fit::report::read_results(&w.root.join("follow/results.csv"), usize::MAX).unwrap();
    assert_eq!(followed[0].samples, Some(shard1.len()), "the followed epoch trained on every stored sample");

    // 4. A flipped bit at rest: refused, naming the object; skipped under quarantine.
    let keys = rt.block_on(failover.sample_keys()).unwrap();
    let victim = &keys[keys.len() / 2];
    let raw = object_store::aws::AmazonS3Builder::from_env().with_url(&url).build().unwrap();
    rt.block_on(async {
        let mut bytes = raw.get(victim).await.unwrap().bytes().await.unwrap().to_vec();
        bytes[100] ^= 0x10;
        raw.put(victim, bytes.into()).await.unwrap();
    });
    let err = FeatureStore::open_url(&store, OnCorruption::Refuse).unwrap().samples().unwrap_err().to_string();
    assert!(err.contains(victim.as_ref()) && err.contains("checksum"), "{err}");
    let kept = FeatureStore::open_url(&store, OnCorruption::Quarantine).unwrap().samples().unwrap();
    assert_eq!(kept.len(), shard1.len() - 1);
}

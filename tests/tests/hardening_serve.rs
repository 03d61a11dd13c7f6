//! `mistnet-cloud serve` under hostile load and bad luck, as a real process on 127.0.0.1: a flood of
//! tokenless Health.Watch streams is capped per connection and in all, silent sockets under a small
//! open-file limit are cut and do not lock an edge out, and a failed write (RLIMIT_FSIZE, as a full
//! disk would) turns health NOT_SERVING until a write succeeds again, without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mistnet::data::synth::{SynthConfig, generate};
use mistnet_e2e::{Proc, channel, start_cloud, start_cloud_after, start_edge, wait_until};
use mistnet_proto::client::Credentials;
use mistnet_proto::pb::{self, feature_upload_client::FeatureUploadClient};
use mistnet_store::FeatureStore;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const LIMIT: Duration = Duration::from_secs(120);
const EDGE: &str = "edge-0";
const TOKEN: &str = "token-of-edge-0-0123456789";

struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    store_arg: String,
    weights: String,
    tokens: String,
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A synthetic dataset of `images` for one edge, and its token.
fn world(images: usize) -> World {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let manifest = generate(&SynthConfig { images, imgsz: 64, seed: 7, edges: 1, private_size: None }, &root.join("data")).unwrap();
    let data = manifest.yamls.iter().find(|p| p.to_string_lossy().contains("edge")).map(|p| root.join("data").join(p)).expect("an edge YAML");
    std::fs::write(root.join("tokens.txt"), format!("{EDGE} {TOKEN}\n")).unwrap();
    std::fs::write(root.join("edge.token"), TOKEN).unwrap();
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tests/fixtures/yolov5/yolov5n_weights.safetensors").display().to_string();
    let (store_arg, tokens) = (root.join("store").display().to_string(), root.join("tokens.txt").display().to_string());
    World { _tmp: tmp, root, data, store_arg, weights, tokens }
}

impl World {
    fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    /// `serve` arguments for this world, then `extra`.
    fn serve_args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["--listen", "127.0.0.1:0", "--store", &self.store_arg, "--model", "yolov5n", "--weights", &self.weights, "--cut", "4"];
        args.extend_from_slice(&["--imgsz", "64", "--tokens", &self.tokens]);
        args.extend_from_slice(extra);
        args
    }

    fn edge(&self, addr: &str) -> Proc {
        let server = format!("http://{addr}");
        start_edge(&[
            "--server", &server, "--edge", EDGE, "--token-file", s(&self.root.join("edge.token")), "--data", s(&self.data), "--mechanism", "sue", "--epsilon",
            "2", "--cache", s(&self.root.join("cache")), "--max-attempts", "30",
        ])
    }
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The overall health status (service "").
async fn health(addr: &str) -> ServingStatus {
    let reply = HealthClient::new(channel(addr).await).check(HealthCheckRequest { service: String::new() }).await.unwrap();
    reply.into_inner().status()
}

/// The health status once it is `want`, or the last one seen after 5 s: the server updates it from the
/// store's state asynchronously, so a check right after an ack may still see the old one.
async fn health_becomes(addr: &str, want: ServingStatus) -> ServingStatus {
    let start = std::time::Instant::now();
    loop {
        let now = health(addr).await;
        if now == want || start.elapsed() > Duration::from_secs(5) {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_flood_of_health_watch_streams_is_capped_and_an_edge_still_uploads() {
    let w = world(40);
    let (cloud, addr) = start_cloud(&w.serve_args(&[]));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rss_before = rss_kb(cloud.0.id());
    let (answered, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // Tokenless Watch streams, each held open once answered: `per` on each of `connections`.
    let flood = |connections: usize, per: usize| {
        let (answered, refused, addr) = (Arc::clone(&answered), Arc::clone(&refused), addr.clone());
        rt.spawn(async move {
            for _ in 0..connections {
                let ch = channel(&addr).await;
                for _ in 0..per {
                    let (mut client, answered, refused) = (HealthClient::new(ch.clone()), Arc::clone(&answered), Arc::clone(&refused));
                    tokio::spawn(async move {
                        match client.watch(HealthCheckRequest { service: String::new() }).await {
                            Ok(reply) => {
                                let mut stream = reply.into_inner();
                                match stream.message().await {
                                    Ok(Some(_)) => {
                                        answered.fetch_add(1, Ordering::SeqCst);
                                        while let Ok(Some(_)) = stream.message().await {}
                                    }
                                    Ok(None) => {}
                                    Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
                                }
                            }
                            Err(status) if status.code() == Code::ResourceExhausted => {
                                refused.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(status) => panic!("Watch failed: {status:?}"),
                        }
                    });
                }
            }
        })
    };
    // 2,000 streams on one connection: no more than the per-connection cap (100) are served at once.
    rt.block_on(flood(1, 2000)).unwrap();
    assert!(wait_until(Duration::from_secs(20), || answered.load(Ordering::SeqCst) >= 100), "only {} watches answered", answered.load(Ordering::SeqCst));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(answered.load(Ordering::SeqCst), 100, "one connection got more concurrent streams than --max-streams-per-connection");
    // Five more connections of 100: Watch streams in all stop at 256, the rest are refused.
    rt.block_on(flood(5, 100)).unwrap();
    assert!(wait_until(Duration::from_secs(30), || refused.load(Ordering::SeqCst) >= 500 - 156), "refused {}", refused.load(Ordering::SeqCst));
    assert_eq!(answered.load(Ordering::SeqCst), 256, "Watch streams in all");

    // A legitimate edge uploads meanwhile.
    let mut edge = w.edge(&addr);
    assert!(edge.wait_for(LIMIT).success(), "the edge failed during the flood");
    assert!(!FeatureStore::open(w.store()).unwrap().is_empty());
    let rss_after = rss_kb(cloud.0.id());
    println!("server RSS: {rss_before} kB before the flood, {rss_after} kB with 2,500 Watch calls pending or refused and the edge's upload done");
    assert!(rss_after < rss_before + 64 * 1024, "the flood grew the server from {rss_before} to {rss_after} kB");
}

#[test]
fn silent_sockets_under_a_small_open_file_limit_are_cut_and_an_edge_gets_in() {
    let w = world(20);
    // Soft and hard limit 256: nothing to raise; at most 256 - 64 connections are served at once.
    let (_cloud, addr) = start_cloud_after("ulimit -n 256", &w.serve_args(&["--handshake-timeout", "2"]));
    let silent: Vec<std::net::TcpStream> = (0..300).map(|_| std::net::TcpStream::connect(&addr).unwrap()).collect();
    // The first silent socket is closed by the server (after its SETTINGS frame) once its handshake deadline passes.
    let mut first = &silent[0];
    first.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let read = std::io::Read::read_to_end(&mut first, &mut Vec::new());
    assert!(read.is_ok() || read.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset), "a silent socket was not closed: {read:?}");
    let mut edge = w.edge(&addr);
    assert!(edge.wait_for(LIMIT).success(), "the edge failed while 300 silent sockets were open");
    assert!(!FeatureStore::open(w.store()).unwrap().is_empty());
    drop(silent);
}

/// A valid sample of the Front served at `addr`.
async fn sample(addr: &str, sample_id: &str) -> pb::Sample {
    mistnet_e2e::sample_for_served_front(addr, &Credentials::edge(EDGE, TOKEN).unwrap(), sample_id, 0).await
}

/// Uploads one sample on its own stream; its ack.
async fn upload(addr: &str, sample: pb::Sample) -> pb::Ack {
    let credentials = Credentials::edge(EDGE, TOKEN).unwrap();
    let mut client = FeatureUploadClient::new(channel(addr).await);
    let mut acks = client.upload(credentials.request(tokio_stream::iter(vec![sample]))).await.unwrap().into_inner();
    acks.message().await.unwrap().expect("an ack")
}

/// Sets the soft RLIMIT_FSIZE of process `pid` (the hard limit stays unlimited).
fn set_file_size_limit(pid: u32, bytes: libc::rlim_t) {
    let limit = libc::rlimit { rlim_cur: bytes, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: prlimit reads `limit` and writes nothing (old limit pointer null).
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_FSIZE, &limit, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// The server's log shares the full disk: it is a file already past the size limit, so every log
/// line fails to write as well (that once killed the store's writer thread, which reported the
/// failure with `eprintln!`, on the failed write's error line).
#[test]
fn a_failed_write_is_not_serving_until_a_write_succeeds_and_nothing_is_lost() {
    let w = world(12);
    let log = w.root.join("serve.log");
    std::fs::write(&log, "padding\n".repeat(8192)).unwrap();
    // SIGXFSZ ignored: a write past RLIMIT_FSIZE fails with EFBIG, as a write to a full disk fails with ENOSPC.
    let (cloud, addr) = start_cloud_after(&format!("trap '' XFSZ\nexec 2>>'{}'", s(&log)), &w.serve_args(&[]));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let segment = w.store().join("seg-00000001.log");
    rt.block_on(async {
        let first = upload(&addr, sample(&addr, "a").await).await;
        assert_eq!(first.code, Code::Ok as i32, "{first:?}");
        let durable = std::fs::metadata(&segment).unwrap().len();
        // Room for part of the next record only: the write fails midway.
        set_file_size_limit(cloud.0.id(), durable + 40);
        let failed = upload(&addr, sample(&addr, "b").await).await;
        assert_eq!(failed.code, Code::Unavailable as i32, "{failed:?}");
        assert!(failed.message.contains("rolled back"), "{}", failed.message);
        assert_eq!(std::fs::metadata(&segment).unwrap().len(), durable, "the partial record was not cut off");
        assert_eq!(health_becomes(&addr, ServingStatus::NotServing).await, ServingStatus::NotServing, "healthy while the store cannot write");
        let again = upload(&addr, sample(&addr, "b").await).await;
        assert_eq!(again.code, Code::Unavailable as i32, "{again:?}");
        assert_eq!(health(&addr).await, ServingStatus::NotServing);

        // Space is back: the next upload is stored and the server is healthy again, without a restart.
        set_file_size_limit(cloud.0.id(), libc::RLIM_INFINITY);
        let stored = upload(&addr, sample(&addr, "b").await).await;
        assert_eq!(stored.code, Code::Ok as i32, "{stored:?}");
        assert_eq!(health_becomes(&addr, ServingStatus::Serving).await, ServingStatus::Serving);
    });
    drop(cloud);
    let samples = FeatureStore::open(w.store()).unwrap().samples().unwrap();
    let ids: Vec<&str> = samples.iter().map(|s| s.sample_id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
}

/// (offset, frame length) of each record of a segment file's bytes.
fn records(segment: &[u8]) -> Vec<(usize, usize)> {
    let (mut out, mut at) = (Vec::new(), mistnet_store::segment::SEGMENT_MAGIC.len());
    while at + 8 <= segment.len() {
        let len = 8 + u32::from_le_bytes(segment[at..at + 4].try_into().unwrap()) as usize;
        out.push((at, len));
        at += len;
    }
    out
}

/// Runs `mistnet-cloud ARGS` to its exit (at most [`LIMIT`]); its exit status and stderr.
fn cloud_run(args: &[&str], stderr: &Path) -> (std::process::ExitStatus, String) {
    let child = std::process::Command::new(mistnet_e2e::binary("mistnet-cloud"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap();
    let status = Proc(child).wait_for(LIMIT);
    (status, std::fs::read_to_string(stderr).unwrap())
}

#[test]
fn a_flipped_bit_in_a_middle_record_is_refused_by_name_or_quarantined_keeping_every_valid_record() {
    let w = world(12);
    let ids: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
    {
        let (_cloud, addr) = start_cloud(&w.serve_args(&[]));
        let rt = tokio::runtime::Runtime::new().unwrap();
        for id in &ids {
            let ack = rt.block_on(async { upload(&addr, sample(&addr, id).await).await });
            assert_eq!(ack.code, Code::Ok as i32, "{ack:?}");
        }
    }
    let segment = w.store().join("seg-00000001.log");
    let mut bytes = std::fs::read(&segment).unwrap();
    let frames = records(&bytes);
    assert_eq!(frames.len(), ids.len());
    let (at, len) = frames[3];
    bytes[at + len / 2] ^= 0x10;
    std::fs::write(&segment, &bytes).unwrap();
    let copy = w.root.join("store-copy");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(&segment, copy.join("seg-00000001.log")).unwrap();

    // serve refuses to start, naming the file and byte, and changes nothing.
    let mut serve = vec!["serve"];
    serve.extend(w.serve_args(&[]));
    let (status, stderr) = cloud_run(&serve, &w.root.join("serve.err"));
    assert!(!status.success(), "serve started on a corrupt store");
    assert!(stderr.contains(s(&segment)) && stderr.contains(&format!("byte {at}")), "{stderr}");
    assert_eq!(std::fs::read(&segment).unwrap(), bytes, "a refused store was modified");

    // train --store refuses the same way; with --on-corruption quarantine it trains on the valid records.
    let out = w.root.join("run");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train", "--store", s(&copy), "--data", s(&w.data), "--weights", &w.weights, "--model", "yolov5n", "--fresh-back", "--cut", "4", "--imgsz", "64",
            "--epochs", "1", "--batch", "2", "--nbs", "2", "--warmup-min-iters", "0", "--out", s(&out),
        ];
        args.extend_from_slice(extra);
        cloud_run(&args, &w.root.join("train.err"))
    };
    let (status, stderr) = train(&[]);
    assert!(!status.success(), "train --store took a corrupt store");
    assert!(stderr.contains("seg-00000001.log") && stderr.contains(&format!("byte {at}")), "{stderr}");
    let (status, stderr) = train(&["--on-corruption", "quarantine"]);
    assert!(status.success(), "train --on-corruption quarantine failed: {stderr}");

    // serve --on-corruption quarantine starts, sets the damaged record aside and keeps the 9 others.
    let (cloud, _) = start_cloud(&w.serve_args(&["--on-corruption", "quarantine"]));
    drop(cloud);
    let kept: Vec<String> = FeatureStore::open(w.store()).unwrap().samples().unwrap().into_iter().map(|s| s.sample_id).collect();
    let expected: Vec<String> = ids.iter().filter(|id| *id != "s3").cloned().collect();
    assert_eq!(kept, expected);
    let quarantined = std::fs::read(w.store().join(format!("quarantine/seg-00000001-at-{at}.bin"))).unwrap();
    assert_eq!(quarantined, bytes[at..at + len], "the quarantined bytes are not the damaged record");
}

//! Ingest benchmark: throughput (samples/s, MB/s) and ack latency (p50/p99) of `mistnet-cloud serve`
//! with 1, 16 and 64 concurrent edges on loopback, durable writes (fsync before ack) on.
//!
//! Payloads: ~100 KB packed codec messages of random bits, the size of yolov5s cut-4 features at
//! 640 px (819,200 elements). The server needs a Front it serves: the yolov5n fixture at
//! `--imgsz 896` gives [1, 64, 112, 112] = 802,816 elements, 100.4 KB packed.
//!
//! Run: `cargo bench -p mistnet-cloud --bench ingest` (optionally `-- SAMPLES` per configuration).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mistnet::codec::{EncodeParams, Encoding, FrontHash, Mechanism, Privacy, encode, seeded_rng};
use mistnet_proto::pb::{self, feature_upload_client::FeatureUploadClient, front_distribution_client::FrontDistributionClient};
use mistnet_proto::{AUTHORIZATION, EDGE_HEADER};
use rand::Rng;

const EDGES: [usize; 3] = [1, 16, 64];
const DISTINCT_MESSAGES: usize = 32;

fn token(edge: usize) -> String {
    format!("bench-token-of-edge-{edge:03}")
}

fn authed<T>(message: T, edge: usize) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert(AUTHORIZATION, format!("Bearer {}", token(edge)).parse().unwrap());
    req.metadata_mut().insert(EDGE_HEADER, format!("edge-{edge:03}").parse().unwrap());
    req
}

fn main() {
    let samples_per_config: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(3000);
    let tmp = tempfile::tempdir().unwrap();
    let tokens: String = (0..64).map(|e| format!("edge-{e:03} {}\n", token(e))).collect();
    std::fs::write(tmp.path().join("tokens.txt"), tokens).unwrap();
    let weights = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/tests/fixtures/yolov5/yolov5n_weights.safetensors");
    let mut server = Command::new(env!("CARGO_BIN_EXE_mistnet-cloud"))
        .args(["serve", "--listen", "127.0.0.1:0", "--model", "yolov5n", "--cut", "4", "--imgsz", "896", "--weights", weights])
        .arg("--tokens")
        .arg(tmp.path().join("tokens.txt"))
        .arg("--store")
        .arg(tmp.path().join("store"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start mistnet-cloud serve");
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = format!("http://{}", line.trim().strip_prefix("listening on ").expect("listening line"));

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect().await.unwrap();
        let front = FrontDistributionClient::new(channel).max_decoding_message_size(64 << 20).get_front(authed(pb::GetFrontRequest::default(), 0)).await.unwrap().into_inner();
        let params = EncodeParams {
            privacy: Privacy::new(Mechanism::Sue, Some(2.0)).unwrap(),
            encoding: Encoding::Packed,
            zstd_level: Some(3),
            cut: 4,
            front_hash: front.front_hash.parse::<FrontHash>().unwrap(),
        };
        let shape = [1usize, 64, 112, 112];
        let mut rng = rand::rng();
        let messages: Vec<Vec<u8>> = (0..DISTINCT_MESSAGES)
            .map(|i| {
                let values: Vec<f32> = (0..shape.iter().product()).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                encode(&values, &shape, &params, &mut seeded_rng(i as u64)).unwrap()
            })
            .collect();
        let bytes = messages[0].len();
        println!("payload {bytes} bytes per sample; {samples_per_config} samples per configuration; fsync before every ack");
        println!("{:>6} {:>10} {:>8} {:>10} {:>10}", "edges", "samples/s", "MB/s", "p50 ms", "p99 ms");
        for edges in EDGES {
            let per_edge = samples_per_config / edges;
            let start = Instant::now();
            let tasks: Vec<_> = (0..edges)
                .map(|e| {
                    let (url, messages) = (url.clone(), messages.clone());
                    tokio::spawn(async move { run_edge(&url, e, edges, per_edge, &messages).await })
                })
                .collect();
            let mut latencies = Vec::new();
            for t in tasks {
                latencies.extend(t.await.unwrap());
            }
            let secs = start.elapsed().as_secs_f64();
            latencies.sort();
            let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
            let n = latencies.len() as f64;
            println!("{edges:>6} {:>10.0} {:>8.1} {:>10.2} {:>10.2}", n / secs, n * bytes as f64 / secs / 1e6, pct(0.5), pct(0.99));
        }
    });
    let _ = server.kill();
    let _ = server.wait();
}

/// One edge: streams `count` samples and returns the ack latency of each.
async fn run_edge(url: &str, edge: usize, run: usize, count: usize, messages: &[Vec<u8>]) -> Vec<Duration> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string()).unwrap().connect().await.unwrap();
    let mut client = FeatureUploadClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let sent = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
    let sent_by_sender = std::sync::Arc::clone(&sent);
    let messages = messages.to_vec();
    tokio::spawn(async move {
        for i in 0..count {
            let sample = pb::Sample {
                sample_id: format!("run{run}-{i}"),
                features: messages[i % messages.len()].clone(),
                labels: vec![pb::Box { class: 1, cx: 0.5, cy: 0.5, w: 0.2, h: 0.3 }],
                image_width: 640,
                image_height: 480,
            };
            sent_by_sender.lock().unwrap().insert(sample.sample_id.clone(), Instant::now());
            if tx.send(sample).await.is_err() {
                break;
            }
        }
    });
    let mut acks = client.upload(authed(tokio_stream::wrappers::ReceiverStream::new(rx), edge)).await.unwrap().into_inner();
    let mut latencies = Vec::with_capacity(count);
    while latencies.len() < count {
        let ack = acks.message().await.unwrap().expect("stream ended early");
        assert_eq!(ack.code, 0, "{}", ack.message);
        let at = sent.lock().unwrap().remove(&ack.sample_id).expect("ack for a sent sample");
        latencies.push(at.elapsed());
    }
    latencies
}

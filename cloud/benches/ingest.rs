//! Ingest benchmark: throughput (samples/s, MB/s) and ack latency (p50/p99) of `mistnet-cloud serve`
//! with 1, 16 and 64 concurrent edges on loopback, durable writes (fsync before ack) on.
//!
//! The server serves a yolov5s Front at cut 4 and 640 px (random-init weights written to a temporary
//! file), so payloads are yolov5s cut-4 640 px features: [1, 128, 80, 80] = 819,200 elements, packed,
//! SUE ε = 2 over random values (incompressible: 102,480 bytes with the header).
//!
//! Run: `cargo bench -p mistnet-cloud --bench ingest [-- SAMPLES [EDGES...]]` (default 3000 samples
//! per configuration, edges 1 16 64). `RUST_LOG` is passed to the server (default `warn`;
//! `mistnet_store=debug` logs every group commit). Besides throughput and latency it prints the CPU
//! time the server and this client process spent per sample (from /proc, Linux only).
//! `MISTNET_CLOUD_BIN=PATH` benchmarks another `mistnet-cloud` binary with the same client.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::Device;
use mistnet::codec::{EncodeParams, Encoding, FrontHash, Mechanism, Privacy, encode, seeded_rng};
use mistnet::model::batch_norm::BatchNormConfig;
use mistnet::model::{Front, ModelConfig, ParamStore, Yolo};
use mistnet_proto::client::{Connection, Credentials, TlsFiles};
use mistnet_proto::pb::{self, feature_upload_client::FeatureUploadClient, front_distribution_client::FrontDistributionClient};
use rand::Rng;

const EDGES: [usize; 3] = [1, 16, 64];
const DISTINCT_MESSAGES: usize = 32;
const CUT: usize = 4;
const IMGSZ: usize = 640;

fn token(edge: usize) -> String {
    format!("bench-token-of-edge-{edge:03}")
}

fn authed<T>(message: T, edge: usize) -> tonic::Request<T> {
    Credentials::edge(&format!("edge-{edge:03}"), &token(edge)).unwrap().request(message)
}

/// A channel to the server at `url` (plaintext loopback).
async fn channel(url: &str) -> tonic::transport::Channel {
    Connection::new(url, &TlsFiles::default(), false).unwrap().connect().await.unwrap()
}

fn main() {
    let numbers: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let samples_per_config = numbers.first().copied().unwrap_or(3000);
    let edge_counts = if numbers.len() > 1 { numbers[1..].to_vec() } else { EDGES.to_vec() };
    let tmp = tempfile::tempdir().unwrap();
    let tokens: String = (0..edge_counts.iter().copied().max().unwrap_or(1)).map(|e| format!("edge-{e:03} {}\n", token(e))).collect();
    std::fs::write(tmp.path().join("tokens.txt"), tokens).unwrap();
    // A random-init yolov5s: the server needs the Front to serve and the Detect head to know the classes;
    // the values do not matter here.
    let weights = tmp.path().join("yolov5s.safetensors");
    let specs = ModelConfig::load("yolov5s").unwrap().layers().unwrap();
    let params = ParamStore::fresh(0);
    let front = Front::load(&specs, CUT, &params, &Device::Cpu).unwrap();
    Yolo::load(params.var_builder(&Device::Cpu), &specs, 0, BatchNormConfig::default()).unwrap();
    params.save(&weights).unwrap();
    let shape = [1usize, front.out_channels(), IMGSZ / front.out_stride(), IMGSZ / front.out_stride()];
    // MISTNET_CLOUD_BIN runs another build of the server against this client (before/after comparisons).
    let server_bin = std::env::var_os("MISTNET_CLOUD_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_mistnet-cloud").into());
    let mut server = Command::new(server_bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--model", "yolov5s", "--cut", &CUT.to_string(), "--imgsz", &IMGSZ.to_string()])
        .arg("--weights")
        .arg(&weights)
        .arg("--tokens")
        .arg(tmp.path().join("tokens.txt"))
        .arg("--store")
        .arg(tmp.path().join("store"))
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start mistnet-cloud serve");
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = format!("http://{}", line.trim().strip_prefix("listening on ").expect("listening line"));

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let channel = channel(&url).await;
        let front = FrontDistributionClient::new(channel).max_decoding_message_size(64 << 20).get_front(authed(pb::GetFrontRequest::default(), 0)).await.unwrap().into_inner();
        let params = EncodeParams {
            privacy: Privacy::new(Mechanism::Sue, Some(2.0)).unwrap(),
            encoding: Encoding::Packed,
            zstd_level: Some(3),
            cut: CUT as u16,
            front_hash: front.front_hash.parse::<FrontHash>().unwrap(),
        };
        let mut rng = rand::rng();
        let messages: Vec<Vec<u8>> = (0..DISTINCT_MESSAGES)
            .map(|i| {
                let values: Vec<f32> = (0..shape.iter().product()).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                encode(&values, &shape, &params, &mut seeded_rng(i as u64)).unwrap()
            })
            .collect();
        let bytes = messages[0].len();
        println!("yolov5s cut {CUT} at {IMGSZ} px: {shape:?}, {bytes} bytes per sample; {samples_per_config} samples per configuration; fsync before every ack");
        println!("{:>6} {:>10} {:>8} {:>10} {:>10} {:>16} {:>16}", "edges", "samples/s", "MB/s", "p50 ms", "p99 ms", "server CPU ms/s.", "client CPU ms/s.");
        println!("(CPU ms/s.: CPU time per sample; server peak RSS is printed after each configuration)");
        for edges in edge_counts {
            let per_edge = samples_per_config / edges;
            let cpu_before = (cpu_seconds(server.id()), cpu_seconds(std::process::id()));
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
            let per_sample = |before: Option<f64>, pid: u32| match (before, cpu_seconds(pid)) {
                (Some(b), Some(a)) => format!("{:.3}", (a - b) * 1e3 / n),
                _ => "-".into(),
            };
            let (server_cpu, client_cpu) = (per_sample(cpu_before.0, server.id()), per_sample(cpu_before.1, std::process::id()));
            println!(
                "{edges:>6} {:>10.0} {:>8.1} {:>10.2} {:>10.2} {server_cpu:>16} {client_cpu:>16}",
                n / secs,
                n * bytes as f64 / secs / 1e6,
                pct(0.5),
                pct(0.99)
            );
            if let Some(kb) = peak_rss_kb(server.id()) {
                println!("       server peak RSS so far: {:.0} MB", kb as f64 / 1e3);
            }
        }
    });
    let _ = server.kill();
    let _ = server.wait();
}

/// User + system CPU seconds of process `pid` so far (Linux `/proc`; `None` elsewhere).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th fields.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ, 100 on Linux
}

/// Peak resident set size of process `pid` in kB (Linux `/proc`; `None` elsewhere).
fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.split_whitespace().next()?.parse().ok()
}

/// One edge: streams `count` samples and returns the ack latency of each.
async fn run_edge(url: &str, edge: usize, run: usize, count: usize, messages: &[Vec<u8>]) -> Vec<Duration> {
    let channel = channel(url).await;
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

//! What the serve benchmarks share: a `mistnet-cloud serve` process on 127.0.0.1 serving a
//! random-init Front (weights written to a temporary directory, which also holds the store and the
//! tokens), the edges' credentials, a loopback channel, and feature messages of the served shape.
//! `MISTNET_CLOUD_BIN=PATH` runs another build of the server against the same client.

// Each bench uses a part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use candle_core::Device;
use mistnet::codec::{EncodeParams, Encoding, FrontHash, Mechanism, Privacy, encode, seeded_rng};
use mistnet::model::batch_norm::BatchNormConfig;
use mistnet::model::{Front, ModelConfig, ParamStore, Yolo};
use mistnet_proto::client::{Connection, Credentials, TlsFiles};
use mistnet_proto::pb::{self, front_distribution_client::FrontDistributionClient};
use rand::Rng;

pub const CUT: usize = 4;

/// A running `mistnet-cloud serve`, killed on drop.
pub struct Server {
    child: Child,
    pub url: String,
    pub model: &'static str,
    pub imgsz: usize,
    /// The served Front's output shape at `imgsz`.
    pub shape: [usize; 4],
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts a server for `edges` edges (`edge-000`, …) serving a random-init `model` at cut
    /// [`CUT`] and `imgsz` px, with an empty store. `RUST_LOG` is passed on (default `warn`).
    pub fn start(model: &'static str, imgsz: usize, edges: usize) -> Self {
        Self::start_with(model, imgsz, edges, &[])
    }

    /// [`Server::start`] with more `serve` flags.
    pub fn start_with(model: &'static str, imgsz: usize, edges: usize, flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tokens: String = (0..edges).map(|e| format!("{} {}\n", edge_id(e), token(e))).collect();
        std::fs::write(dir.path().join("tokens.txt"), tokens).unwrap();
        // The server needs the Front to serve and the Detect head to know the classes; the values do not matter.
        let weights = dir.path().join(format!("{model}.safetensors"));
        let specs = ModelConfig::load(model).unwrap().layers().unwrap();
        let params = ParamStore::fresh(0);
        let front = Front::load(&specs, CUT, &params, &Device::Cpu).unwrap();
        Yolo::load(params.var_builder(&Device::Cpu), &specs, 0, BatchNormConfig::default()).unwrap();
        params.save(&weights).unwrap();
        let shape = [1usize, front.out_channels(), imgsz / front.out_stride(), imgsz / front.out_stride()];
        let bin = std::env::var_os("MISTNET_CLOUD_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_mistnet-cloud").into());
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--model", model, "--cut", &CUT.to_string(), "--imgsz", &imgsz.to_string()])
            .arg("--weights")
            .arg(&weights)
            .arg("--tokens")
            .arg(dir.path().join("tokens.txt"))
            .arg("--store")
            .arg(dir.path().join("store"))
            .args(flags)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .spawn()
            .expect("start mistnet-cloud serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = format!("http://{}", line.trim().strip_prefix("listening on ").expect("listening line"));
        Self { child, url, model, imgsz, shape, _dir: dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `n` distinct packed SUE ε = 2 messages of random values (incompressible) for the served Front.
    pub async fn messages(&self, n: usize) -> Vec<Vec<u8>> {
        let front = FrontDistributionClient::new(channel(&self.url).await)
            .max_decoding_message_size(64 << 20)
            .get_front(authed(pb::GetFrontRequest::default(), 0))
            .await
            .unwrap()
            .into_inner();
        let params = EncodeParams {
            privacy: Privacy::new(Mechanism::Sue, Some(2.0)).unwrap(),
            encoding: Encoding::Packed,
            zstd_level: Some(3),
            cut: CUT as u16,
            front_hash: front.front_hash.parse::<FrontHash>().unwrap(),
        };
        let mut rng = rand::rng();
        (0..n)
            .map(|i| {
                let values: Vec<f32> = (0..self.shape.iter().product()).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                encode(&values, &self.shape, &params, &mut seeded_rng(i as u64)).unwrap()
            })
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn edge_id(edge: usize) -> String {
    format!("edge-{edge:03}")
}

pub fn token(edge: usize) -> String {
    format!("bench-token-of-edge-{edge:03}")
}

/// `message` with edge `edge`'s credentials.
pub fn authed<T>(message: T, edge: usize) -> tonic::Request<T> {
    Credentials::edge(&edge_id(edge), &token(edge)).unwrap().request(message)
}

/// A channel to the server at `url` (plaintext loopback).
pub async fn channel(url: &str) -> tonic::transport::Channel {
    Connection::new(url, &TlsFiles::default(), false).unwrap().connect().await.unwrap()
}

/// A sample carrying `features`, one box, a 640×480 image.
pub fn sample(sample_id: String, features: Vec<u8>) -> pb::Sample {
    pb::Sample { sample_id, features, labels: vec![pb::Box { class: 1, cx: 0.5, cy: 0.5, w: 0.2, h: 0.3 }], image_width: 640, image_height: 480 }
}

/// The one-minute load average (Linux `/proc/loadavg`).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").ok().and_then(|l| l.split_whitespace().next().map(str::to_string)).unwrap_or_else(|| "-".into())
}

/// User + system CPU seconds of process `pid` so far (Linux `/proc`; `None` elsewhere).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th fields.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ, 100 on Linux
}

/// Peak resident set size of process `pid` in kB (Linux `/proc`; `None` elsewhere).
pub fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.split_whitespace().next()?.parse().ok()
}

//! Helpers for the end-to-end tests: locating the `mistnet-cloud` and `mistnet-edge` binaries,
//! starting them as child processes on 127.0.0.1 and killing them when a test ends, and channels to
//! them through the one client of `mistnet_proto::client`.
//!
//! The binaries are found next to the test executable (`target/<profile>/`). `cargo test
//! --workspace` builds every member's binaries before running tests; when running only this
//! package, build them first: `cargo build -p mistnet-cloud -p mistnet-edge`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mistnet_codec::{EncodeParams, Encoding, FrontHash, Mechanism, Privacy, encode, seeded_rng};
use mistnet_data::{BadDataPolicy, Dataset, Split};
use mistnet_proto::client::{Connection, Credentials, TlsFiles};
use mistnet_proto::pb::{self, front_distribution_client::FrontDistributionClient};

/// Path of a workspace binary in the target directory of the running test.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.exists(), "{} is missing: run `cargo build -p mistnet-cloud -p mistnet-edge` (or `cargo test --workspace`) first", path.display());
    path
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Waits up to `limit` for the process to exit; kills it and panics on timeout.
    pub fn wait_for(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return status;
            }
            if start.elapsed() > limit {
                let _ = self.0.kill();
                panic!("process did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Starts `mistnet-cloud serve` with `args` and waits for its `listening on ADDR` line.
pub fn start_cloud(args: &[&str]) -> (Proc, String) {
    let mut cmd = Command::new(binary("mistnet-cloud"));
    cmd.arg("serve").args(args);
    spawn_cloud(cmd)
}

/// As [`start_cloud`], with the server started by `sh -c` after the shell commands `prelude`
/// (resource limits: `ulimit -n 256`; signal dispositions: `trap '' XFSZ`), then `exec`'d, so
/// the returned process is the server itself.
pub fn start_cloud_after(prelude: &str, args: &[&str]) -> (Proc, String) {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!("{prelude}\nexec \"$0\" serve \"$@\"")).arg(binary("mistnet-cloud")).args(args);
    spawn_cloud(cmd)
}

fn spawn_cloud(mut cmd: Command) -> (Proc, String) {
    let mut child = cmd.env("RUST_LOG", "warn").stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("start mistnet-cloud");
    let stdout = child.stdout.take().expect("stdout");
    let proc = Proc(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read stdout");
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}")).to_string();
    (proc, addr)
}

/// Starts `mistnet-edge run` with `args`.
pub fn start_edge(args: &[&str]) -> Proc {
    Proc(
        Command::new(binary("mistnet-edge"))
            .arg("run")
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start mistnet-edge"),
    )
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Polls `cond` every 50 ms for up to `limit`.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A plaintext channel to the server at `addr` (loopback).
pub async fn channel(addr: &str) -> tonic::transport::Channel {
    Connection::new(&format!("http://{addr}"), &TlsFiles::default(), false).expect("a loopback URL").connect().await.expect("connect")
}

/// The sample ids an edge uploads from the dataset at `yaml`: its train images, relative to the
/// YAML's folder (as `mistnet-edge run` names them).
pub fn edge_sample_ids(yaml: &Path) -> std::collections::BTreeSet<String> {
    let dataset = Dataset::open(yaml).unwrap();
    let root = dataset.source().parent().unwrap().to_path_buf();
    let samples = dataset.load(Split::Train, BadDataPolicy::Fail).unwrap().samples;
    samples.iter().map(|s| s.image_path.strip_prefix(&root).unwrap().to_string_lossy().into_owned()).collect()
}

/// The Front the tests serve: yolov5n cut 4 at 64 px, whose output is `[1, 64, 8, 8]`.
pub const SERVED_SHAPE: [usize; 4] = [1, 64, 8, 8];

/// A valid sample for the Front served at `addr` (its hash fetched with `credentials`): fixed values
/// of [`SERVED_SHAPE`], SUE ε = 2, one box of `class`, a 64×64 image.
pub async fn sample_for_served_front(addr: &str, credentials: &Credentials, sample_id: &str, class: u32) -> pb::Sample {
    let mut front = FrontDistributionClient::new(channel(addr).await).max_decoding_message_size(64 << 20);
    let hash: FrontHash = front.get_front(credentials.request(pb::GetFrontRequest::default())).await.unwrap().into_inner().front_hash.parse().unwrap();
    let values: Vec<f32> = (0..SERVED_SHAPE.iter().product()).map(|i| if i % 3 == 0 { 1.0 } else { -1.0 }).collect();
    let params = EncodeParams { privacy: Privacy::new(Mechanism::Sue, Some(2.0)).unwrap(), encoding: Encoding::Packed, zstd_level: Some(3), cut: 4, front_hash: hash };
    pb::Sample {
        sample_id: sample_id.into(),
        features: encode(&values, &SERVED_SHAPE, &params, &mut seeded_rng(1)).unwrap(),
        labels: vec![pb::Box { class, cx: 0.5, cy: 0.5, w: 0.2, h: 0.2 }],
        image_width: 64,
        image_height: 64,
    }
}

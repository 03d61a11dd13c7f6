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

use mistnet_data::{BadDataPolicy, Dataset, Split};
use mistnet_proto::client::{Connection, TlsFiles};

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

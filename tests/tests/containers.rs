//! The deployment in containers (deploy/docker/): the `mistnet-cloud` and `mistnet-edge` images
//! are built FROM scratch from the binaries of this build (deploy/docker/build.sh, nothing pulled),
//! a cloud ingest container and three edge containers, each on its own address of a private
//! network, run a small MistNet job; mid-upload the cloud container is killed (SIGKILL) and started
//! again, and one edge is cut off the network for a while. Every edge must still exit 0, every
//! sample of every edge must be stored exactly once, and a trainer container must train on the
//! store. Without a usable Docker engine the test prints why it is skipped and passes.
//!
//! Everything it creates (images, network, containers) carries a per-run name and is removed at
//! the end, also when the test fails (the containers' logs are printed then).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use mistnet_e2e::{binary, edge_sample_ids};
use mistnet_store::FeatureStore;

/// A yolov5n pretrained on the synthetic public split at 128 px (see fixtures/README.md).
const PRETRAINED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/yolov5n-synth128-pretrained.safetensors");
const EDGES: usize = 3;
/// Synthetic images in all: 40% of them private, split over the edges (32 each).
const IMAGES: usize = 240;
/// Samples per second each edge sends, so the upload lasts long enough to be interrupted.
const RATE: &str = "4";
/// The unprivileged user the images run as.
const IMAGE_USER: u32 = 65532;
const PORT: u16 = 50051;

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("run docker")
}

/// `docker ARGS`, which must succeed; its stdout, trimmed.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(out.status.success(), "docker {} failed: {}{}", args.join(" "), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Why the test cannot run here, if it cannot: no docker client, no engine, no permission.
fn no_docker() -> Option<String> {
    match Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output() {
        Err(e) => Some(format!("cannot run `docker`: {e}")),
        Ok(out) if !out.status.success() => Some(format!("`docker info` failed: {}", String::from_utf8_lossy(&out.stderr).trim())),
        Ok(_) => None,
    }
}

/// What the run created, removed when dropped (the containers' logs printed first on failure).
#[derive(Default)]
struct Cleanup {
    containers: Vec<String>,
    network: Option<String>,
    images: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for c in &self.containers {
                let out = docker(&["logs", "--tail", "40", c]);
                eprintln!("---- docker logs {c} ----\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            }
        }
        for c in &self.containers {
            let _ = docker(&["rm", "--force", "--volumes", c]);
        }
        if let Some(net) = &self.network {
            let _ = docker(&["network", "rm", net]);
        }
        for image in &self.images {
            let _ = docker(&["rmi", "--force", image]);
        }
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// `docker inspect` of one field of a container.
fn inspect(container: &str, format: &str) -> String {
    docker_ok(&["inspect", "--format", format, container])
}

fn running(container: &str) -> bool {
    inspect(container, "{{.State.Running}}") == "true"
}

/// Waits for the container's health check to report healthy (it must stay running meanwhile).
fn wait_healthy(container: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let state = inspect(container, "{{.State.Status}} {{.State.Health.Status}}");
        if state == "running healthy" {
            return;
        }
        assert!(state.starts_with("running"), "{container} is {state} instead of becoming healthy");
        assert!(start.elapsed() < limit, "{container} not healthy after {limit:?}: {state}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Samples the running cloud has stored, as its operator sees them (`mistnet-cloud status` run
/// inside the cloud container); `None` while it cannot answer.
fn stored(cloud: &str) -> Option<u64> {
    status(cloud).and_then(|s| s["samples"].as_u64())
}

/// Samples the running cloud has stored of `edge`.
fn stored_of(cloud: &str, edge: &str) -> Option<u64> {
    status(cloud)?["edges"].as_array()?.iter().find(|e| e["edge"] == edge).map_or(Some(0), |e| e["samples"].as_u64())
}

fn status(cloud: &str) -> Option<serde_json::Value> {
    let out = docker(&[
        "exec", cloud, "/usr/local/bin/mistnet-cloud", "status", "--server", &format!("http://127.0.0.1:{PORT}"), "--token-file", "/etc/mistnet/operator.token",
        "--json",
    ]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice::<serde_json::Value>(&out.stdout).ok()
}

/// Waits for every container of `names` to exit; their exit codes.
fn wait_exited(names: &[String], limit: Duration) -> Vec<i64> {
    let start = Instant::now();
    while names.iter().any(|n| running(n)) {
        assert!(start.elapsed() < limit, "still running after {limit:?}: {:?}", names.iter().filter(|n| running(n)).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(250));
    }
    names.iter().map(|n| inspect(n, "{{.State.ExitCode}}").parse().expect("an exit code")).collect()
}

/// A private network with a /24 of its own: tries a few random 10.x.y.0/24 until one is free.
fn create_network(name: &str, seed: u64) -> String {
    for attempt in 0..8 {
        let v = seed.wrapping_mul(6364136223846793005).wrapping_add(attempt * 1442695040888963407) >> 33;
        let prefix = format!("10.{}.{}", 100 + v % 150, (v >> 8) % 256);
        let out = docker(&["network", "create", "--driver", "bridge", "--subnet", &format!("{prefix}.0/24"), name]);
        if out.status.success() {
            return prefix;
        }
        eprintln!("network {prefix}.0/24: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    panic!("no free 10.x.y.0/24 subnet for the test network");
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_job_across_containers_survives_a_cloud_restart_and_a_cut_edge() {
    if let Some(why) = no_docker() {
        // Written past the test harness's capture, so that `cargo test` shows why it passed.
        let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("containers: skipped: no Docker engine ({why})\n").as_bytes());
        return;
    }
    let started = Instant::now();
    let cloud_bin = binary("mistnet-cloud");
    let bin_dir = cloud_bin.parent().unwrap().to_path_buf();
    binary("mistnet-edge");
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let run = format!("mistnet-test-{}-{}", std::process::id(), nanos % 1_000_000);
    let mut cleanup = Cleanup::default();

    // The images, from this build's binaries.
    let tag = run.clone();
    cleanup.images = vec![format!("mistnet-cloud:{tag}"), format!("mistnet-edge:{tag}")];
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/docker/build.sh");
    let out = Command::new("bash").arg(&script).arg(&bin_dir).arg(&tag).output().unwrap();
    assert!(out.status.success(), "build.sh failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
    let (cloud_image, edge_image) = (cleanup.images[0].clone(), cleanup.images[1].clone());
    for image in &cleanup.images {
        assert_eq!(docker_ok(&["image", "inspect", "--format", "{{.Config.User}}", image]), format!("{IMAGE_USER}:{IMAGE_USER}"), "{image} runs as root");
    }
    let size: u64 = docker_ok(&["image", "inspect", "--format", "{{.Size}}", &cloud_image]).parse().unwrap();
    assert!(size < 200_000_000, "the cloud image is {size} bytes");
    let health = docker_ok(&["image", "inspect", "--format", "{{json .Config.Healthcheck.Test}}", &cloud_image]);
    assert!(health.contains("\"health\""), "the cloud image's HEALTHCHECK is not `mistnet-cloud health`: {health}");

    // Host side: data, tokens, the store and the trainer's output, readable (and where needed
    // writable) by the containers' user. As root the files go to the images' user; otherwise the
    // containers run as the caller (`--user`), so that the caller can read and remove everything.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    mode(&root, 0o755);
    let as_root = unsafe { libc::geteuid() } == 0;
    let owner = if as_root { IMAGE_USER } else { unsafe { libc::geteuid() } };
    let user: Vec<String> = if as_root { vec![] } else { vec!["--user".into(), format!("{owner}:{}", unsafe { libc::getegid() })] };
    let data = root.join("data");
    let synth = Command::new(&cloud_bin)
        .args(["synth", "--out", s(&data), "--images", &IMAGES.to_string(), "--imgsz", "128", "--edges", &EDGES.to_string(), "--seed", "3"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(synth.status.success(), "synth failed: {}", String::from_utf8_lossy(&synth.stderr));
    let secrets = root.join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    mode(&secrets, 0o755);
    let token = |name: &str| format!("{name}-token-{nanos:016x}");
    let edges: Vec<String> = (0..EDGES).map(|k| format!("edge-{k}")).collect();
    let mut secret_files = vec![("tokens.txt".to_string(), edges.iter().map(|e| format!("{e} {}\n", token(e))).collect::<String>())];
    secret_files.push(("operator.token".into(), token("operator")));
    secret_files.extend(edges.iter().map(|e| (format!("{e}.token"), token(e))));
    for (name, text) in &secret_files {
        let path = secrets.join(name);
        std::fs::write(&path, text).unwrap();
        mode(&path, 0o600);
        chown(&path, owner);
    }
    let (store, trained) = (root.join("store"), root.join("train"));
    for dir in [&store, &trained] {
        std::fs::create_dir(dir).unwrap();
        chown(dir, owner);
    }

    // The network and the cloud ingest container, its store on the host.
    let net = run.clone();
    let prefix = create_network(&net, nanos);
    cleanup.network = Some(net.clone());
    let cloud_ip = format!("{prefix}.10");
    let cloud = format!("{run}-cloud");
    cleanup.containers.push(cloud.clone());
    let mount = |host: &Path, inside: &str, ro: bool| format!("{}:{inside}{}", s(host), if ro { ":ro" } else { "" });
    let mut args: Vec<String> = ["run", "--detach", "--name", &cloud, "--network", &net, "--ip", &cloud_ip].map(String::from).to_vec();
    args.extend(user.iter().cloned());
    args.extend(["--health-interval", "1s", "--health-timeout", "4s", "--health-retries", "3", "--health-start-period", "60s"].map(String::from));
    for (host, inside, ro) in [
        (store.clone(), "/var/lib/mistnet/store", false),
        (secrets.join("tokens.txt"), "/etc/mistnet/tokens.txt", true),
        (secrets.join("operator.token"), "/etc/mistnet/operator.token", true),
        (PathBuf::from(PRETRAINED), "/etc/mistnet/model.safetensors", true),
    ] {
        args.extend(["--volume".to_string(), mount(&host, inside, ro)]);
    }
    args.push(cloud_image.clone());
    args.extend(
        [
            "serve", "--listen", &format!("0.0.0.0:{PORT}"), "--insecure-plaintext", "--store", "/var/lib/mistnet/store", "--weights", "/etc/mistnet/model.safetensors",
            "--model", "yolov5n", "--cut", "4", "--imgsz", "128", "--tokens", "/etc/mistnet/tokens.txt", "--operator-token-file", "/etc/mistnet/operator.token",
        ]
        .map(String::from),
    );
    docker_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    wait_healthy(&cloud, Duration::from_secs(60));

    // Three edges, each with its own address, dataset and token.
    let server = format!("http://{cloud_ip}:{PORT}");
    let mut edge_containers = Vec::new();
    let mut edge_ips = Vec::new();
    for (k, edge) in edges.iter().enumerate() {
        let name = format!("{run}-{edge}");
        let ip = format!("{prefix}.{}", 20 + k);
        cleanup.containers.push(name.clone());
        let mut args: Vec<String> = ["run", "--detach", "--name", &name, "--network", &net, "--ip", &ip].map(String::from).to_vec();
        args.extend(user.iter().cloned());
        args.extend(["--volume".to_string(), mount(&data, s(&data), true)]);
        args.extend(["--volume".to_string(), mount(&secrets.join(format!("{edge}.token")), "/etc/mistnet/edge.token", true)]);
        args.push(edge_image.clone());
        let yaml = data.join(format!("private/{edge}.yaml"));
        args.extend(
            [
                "run", "--server", &server, "--insecure-plaintext", "--edge", edge, "--token-file", "/etc/mistnet/edge.token", "--data", s(&yaml), "--mechanism", "sue",
                "--epsilon", "4", "--max-rate", RATE, "--max-attempts", "60",
            ]
            .map(String::from),
        );
        if !as_root {
            args.extend(["--cache", "/tmp/mistnet-edge"].map(String::from)); // the image's state directory belongs to its own user
        }
        docker_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        edge_containers.push(name);
        edge_ips.push(ip);
    }
    let expected: BTreeMap<String, BTreeSet<String>> = edges.iter().map(|e| (e.clone(), edge_sample_ids(&data.join(format!("private/{e}.yaml"))))).collect();
    let total: usize = expected.values().map(BTreeSet::len).sum();
    assert!(expected.values().all(|ids| ids.len() >= 20), "each edge needs enough samples to be interrupted: {:?}", expected.values().map(BTreeSet::len).collect::<Vec<_>>());

    // Mid-upload: kill the cloud (a crash: SIGKILL), leave it down a few seconds, start it again.
    let upload = Instant::now();
    let mut before_kill = 0;
    while before_kill < 12 {
        assert!(upload.elapsed() < Duration::from_secs(120), "the edges stored only {before_kill} samples in 120 s");
        before_kill = stored(&cloud).unwrap_or(0);
        std::thread::sleep(Duration::from_millis(200));
    }
    docker_ok(&["kill", &cloud]);
    assert!((before_kill as usize) < total, "the upload ended before the cloud was stopped");
    eprintln!("killed the cloud with {before_kill} of {total} samples stored");
    std::thread::sleep(Duration::from_secs(3));
    for e in &edge_containers {
        assert!(running(e), "{e} gave up while the cloud was down (exit {})", inspect(e, "{{.State.ExitCode}}"));
    }
    docker_ok(&["start", &cloud]);
    wait_healthy(&cloud, Duration::from_secs(60));
    let after_restart = stored(&cloud).expect("the restarted cloud answers status");
    assert!(after_restart >= before_kill, "the restarted cloud has {after_restart} samples, {before_kill} were stored before the kill");

    // Cut the last edge off its network for a while, mid-upload, then reconnect it at its address.
    let (cut, cut_ip) = (edge_containers[EDGES - 1].clone(), edge_ips[EDGES - 1].clone());
    assert!(running(&cut), "{cut} finished before it could be cut off");
    docker_ok(&["network", "disconnect", &net, &cut]);
    std::thread::sleep(Duration::from_secs(1));
    let cut_edge = &edges[EDGES - 1];
    let at_cut = stored_of(&cloud, cut_edge).expect("status");
    std::thread::sleep(Duration::from_secs(5));
    assert!(running(&cut), "{cut} gave up while cut off (exit {})", inspect(&cut, "{{.State.ExitCode}}"));
    let before_reconnect = stored_of(&cloud, cut_edge).expect("status");
    assert_eq!(before_reconnect, at_cut, "{cut_edge} kept uploading while cut off its network");
    assert!((before_reconnect as usize) < expected[cut_edge].len(), "{cut_edge} had nothing left to upload when it was cut off");
    eprintln!("cut {cut_edge} off for 6 s with {before_reconnect} of {} of its samples stored", expected[cut_edge].len());
    docker_ok(&["network", "connect", "--ip", &cut_ip, &net, &cut]);

    let codes = wait_exited(&edge_containers, Duration::from_secs(150));
    assert_eq!(codes, vec![0; EDGES], "every edge must exit 0 (every sample acknowledged)");
    for e in &edge_containers {
        let logs = docker(&["logs", e]);
        let text = String::from_utf8_lossy(&logs.stdout);
        assert!(text.contains("all") && text.contains("acknowledged"), "{e} did not report its upload done: {text}");
        let err = String::from_utf8_lossy(&logs.stderr);
        let retries = err.lines().filter(|l| l.contains("connection lost")).count();
        eprintln!("{e}: {} after {retries} retries", text.trim());
        assert!(retries > 0, "{e} never lost its connection, so the test interrupted nothing: {err}");
    }
    assert_eq!(stored(&cloud), Some(total as u64), "the cloud's status after the upload");
    eprintln!("upload with interruptions: {:.1?}", upload.elapsed());

    // A graceful stop (SIGTERM: serve exits 0), then the store read from the host: every sample of
    // every edge exactly once.
    docker_ok(&["stop", "--time", "20", &cloud]);
    assert_eq!(inspect(&cloud, "{{.State.ExitCode}}"), "0", "serve did not stop cleanly on SIGTERM");
    let samples = FeatureStore::open(&store).unwrap().samples().unwrap();
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for sample in &samples {
        assert!(seen.entry(sample.edge.clone()).or_default().insert(sample.sample_id.clone()), "{}/{} stored twice", sample.edge, sample.sample_id);
    }
    assert_eq!(samples.len(), total);
    assert_eq!(seen, expected, "the stored ids per edge are not the edges' datasets");

    // The trainer: `train --store` in a container of the cloud image, off any network, on the store.
    let trainer = format!("{run}-train");
    cleanup.containers.push(trainer.clone());
    let mut args: Vec<String> = ["run", "--name", &trainer, "--network", "none", "--no-healthcheck"].map(String::from).to_vec();
    args.extend(user.iter().cloned());
    for (host, inside, ro) in [
        (store.clone(), "/var/lib/mistnet/store".to_string(), true),
        (trained.clone(), "/var/lib/mistnet/train".to_string(), false),
        (data.clone(), s(&data).to_string(), true),
        (PathBuf::from(PRETRAINED), "/etc/mistnet/model.safetensors".to_string(), true),
    ] {
        args.extend(["--volume".to_string(), mount(&host, &inside, ro)]);
    }
    args.extend(["--env".to_string(), "RUST_LOG=warn".to_string(), cloud_image.clone()]);
    args.extend(
        [
            "train", "--store", "/var/lib/mistnet/store", "--data", s(&data.join("private-val.yaml")), "--weights", "/etc/mistnet/model.safetensors", "--model",
            "yolov5n", "--cut", "4", "--imgsz", "128", "--epochs", "2", "--batch", "16", "--nbs", "16", "--warmup-min-iters", "0", "--out", "/var/lib/mistnet/train",
        ]
        .map(String::from),
    );
    let train_start = Instant::now();
    let out = docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "the trainer failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("trainer: {:.1?}", train_start.elapsed());
    let csv = std::fs::read_to_string(trained.join("results.csv")).expect("the trainer wrote results.csv");
    let rows: Vec<Vec<f64>> = csv.lines().skip(1).map(|l| l.split(',').map(|v| v.trim().parse().unwrap()).collect()).collect();
    assert_eq!(rows.len(), 2, "{csv}");
    for row in &rows {
        assert!(row[1..5].iter().all(|v| v.is_finite() && *v >= 0.0) && row[4] > 0.0, "losses: {csv}");
    }
    for file in ["model.safetensors", "checkpoint.safetensors"] {
        assert!(std::fs::metadata(trained.join(file)).map(|m| m.len() > 100_000).unwrap_or(false), "the trainer did not write {file}");
    }
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("containers: images, job, cloud restart, cut edge, trainer: {:.1?}\n", started.elapsed()).as_bytes());
    drop(cleanup);
}

//! Edges on lossy links, as real processes (issue 18): each edge runs in its own network namespace
//! behind a veth pair to the cloud's, one on a 2 Mbit/s link losing 5 % of its packets each way (and
//! 200 ms of delay where the kernel has `netem`), one whose link goes down for 10 s mid-upload. Every
//! sample ends up stored exactly once, both edges report their goodput, and the edge whose link went
//! down waited between attempts instead of hammering the server.
//!
//! Needs root and network namespaces (`ip netns`), `tc` and `nft`: skipped with a message elsewhere.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mistnet::data::synth::{SynthConfig, generate};
use mistnet_e2e::{Proc, binary, edge_sample_ids, free_port, start_cloud, wait_until};
use mistnet_store::FeatureStore;

const LIMIT: Duration = Duration::from_secs(240);
const OUTAGE: Duration = Duration::from_secs(10);

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs a command to its end; its success and combined output.
fn sh(args: &[&str]) -> (bool, String) {
    match Command::new(args[0]).args(&args[1..]).output() {
        Ok(out) => (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)),
        Err(e) => (false, e.to_string()),
    }
}

fn must(args: &[&str]) {
    let (ok, out) = sh(args);
    assert!(ok, "{}: {out}", args.join(" "));
}

/// A network namespace with one end of a veth pair, the other end in the test's namespace with
/// `host_ip`/24; removed (with its veth pair) on drop.
struct Netns {
    name: String,
    host_if: String,
    edge_if: String,
    host_ip: String,
}

impl Netns {
    fn new(name: String, host_if: String, subnet: &str) -> Result<Self, String> {
        let (ok, out) = sh(&["ip", "netns", "add", &name]);
        if !ok {
            return Err(format!("ip netns add: {}", out.trim()));
        }
        let ns = Self { edge_if: format!("{host_if}e"), host_if, host_ip: format!("{subnet}.1"), name };
        let edge_ip = format!("{subnet}.2/24");
        for cmd in [
            vec!["ip", "link", "add", &ns.host_if, "type", "veth", "peer", "name", &ns.edge_if],
            vec!["ip", "link", "set", &ns.edge_if, "netns", &ns.name],
            vec!["ip", "addr", "add", &format!("{}/24", ns.host_ip), "dev", &ns.host_if],
            vec!["ip", "link", "set", &ns.host_if, "up"],
            vec!["ip", "netns", "exec", &ns.name, "ip", "addr", "add", &edge_ip, "dev", &ns.edge_if],
            vec!["ip", "netns", "exec", &ns.name, "ip", "link", "set", &ns.edge_if, "up"],
            vec!["ip", "netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"],
        ] {
            let (ok, out) = sh(&cmd);
            if !ok {
                return Err(format!("{}: {}", cmd.join(" "), out.trim()));
            }
        }
        Ok(ns)
    }

    /// Runs `args` inside the namespace.
    fn exec<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut cmd = vec!["ip", "netns", "exec", self.name.as_str()];
        cmd.extend_from_slice(args);
        cmd
    }

    /// Impairs both directions of the link: `netem` (delay, loss, rate) where the kernel has it,
    /// else a token-bucket rate limit (`tbf`) and random drops (`nft`). Returns what was applied.
    fn impair(&self) -> String {
        let netem = ["netem", "delay", "200ms", "loss", "5%", "rate", "2mbit"];
        let host = [&["tc", "qdisc", "add", "dev", self.host_if.as_str(), "root"][..], &netem].concat();
        if sh(&host).0 {
            must(&self.exec(&[&["tc", "qdisc", "add", "dev", self.edge_if.as_str(), "root"][..], &netem].concat()));
            return "netem: 200 ms delay, 5 % loss, 2 Mbit/s each way".into();
        }
        let tbf = ["tbf", "rate", "2mbit", "burst", "32kbit", "latency", "400ms"];
        must(&[&["tc", "qdisc", "add", "dev", self.host_if.as_str(), "root"][..], &tbf].concat());
        must(&self.exec(&[&["tc", "qdisc", "add", "dev", self.edge_if.as_str(), "root"][..], &tbf].concat()));
        let table = "mistnet_loss";
        must(&self.exec(&["nft", "add", "table", "inet", table]));
        for (chain, hook) in [("in", "input"), ("out", "output")] {
            must(&self.exec(&["nft", "add", "chain", "inet", table, chain, &format!("{{ type filter hook {hook} priority 0 ; }}")]));
            must(&self.exec(&["nft", "add", "rule", "inet", table, chain, "numgen", "random", "mod", "100", "<", "5", "drop"]));
        }
        "tbf 2 Mbit/s each way, nft drops 5 % of packets each way (no netem in this kernel: no added delay)".into()
    }

    fn link(&self, up: bool) {
        must(&self.exec(&["ip", "link", "set", &self.edge_if, if up { "up" } else { "down" }]));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "link", "del", &self.host_if]);
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
}

/// Why this machine cannot run the test, if it cannot.
fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["ip", "tc", "nft"] {
        if !sh(&[tool, "-V"]).0 && !sh(&[tool, "--version"]).0 {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

#[test]
fn edges_on_lossy_and_dropped_links_store_every_sample_exactly_once() {
    if let Some(why) = unsupported() {
        eprintln!("skipped: lossy-link test needs root, ip, tc and nft ({why})");
        return;
    }
    let tag = std::process::id() % 10_000;
    let subnet = |i: u32| format!("10.{}.{i}", 20 + std::process::id() % 200);
    let namespaces: Result<Vec<Netns>, String> = (0..2).map(|i| Netns::new(format!("mistnet-{tag}-e{i}"), format!("mn{tag}v{i}"), &subnet(i))).collect();
    let namespaces = match namespaces {
        Ok(n) => n,
        Err(why) => {
            eprintln!("skipped: lossy-link test cannot make network namespaces here ({why})");
            return;
        }
    };

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let manifest = generate(&SynthConfig { images: 200, imgsz: 64, seed: 11, edges: 2, private_size: None }, &root.join("data")).unwrap();
    let edge_yamls: Vec<PathBuf> = manifest.yamls.iter().filter(|p| p.to_string_lossy().contains("edge")).map(|p| root.join("data").join(p)).collect();
    assert_eq!(edge_yamls.len(), 2, "{:?}", manifest.yamls);
    let tokens: String = (0..2).map(|i| format!("edge-{i} lossy-link-token-of-edge-{i}\n")).collect();
    std::fs::write(root.join("tokens.txt"), tokens).unwrap();
    for i in 0..2 {
        std::fs::write(root.join(format!("edge-{i}.token")), format!("lossy-link-token-of-edge-{i}")).unwrap();
    }
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tests/fixtures/yolov5/yolov5n_weights.safetensors");
    let port = free_port().to_string();
    let listen = format!("0.0.0.0:{port}");
    let (store, tokens) = (root.join("store"), root.join("tokens.txt"));
    let serve = [
        "--listen", &listen, "--insecure-plaintext", "--store", s(&store), "--model", "yolov5n", "--weights", s(&weights), "--cut", "4", "--imgsz", "320", "--tokens",
        s(&tokens),
    ];
    let (cloud, _) = start_cloud(&serve);

    let impaired = namespaces[0].impair();
    eprintln!("edge-0's link: {impaired}; edge-1's link: down for {} s mid-upload", OUTAGE.as_secs());
    let edges: Vec<(Proc, PathBuf)> = (0..2)
        .map(|i| {
            let ns = &namespaces[i];
            let server = format!("http://{}:{port}", ns.host_ip);
            let (edge, token, cache, log) = (format!("edge-{i}"), root.join(format!("edge-{i}.token")), root.join(format!("cache-{i}")), root.join(format!("edge-{i}.log")));
            // edge-1 is paced, so its upload is still running when its link goes down.
            let rate = if i == 1 { "8" } else { "1000" };
            let edge_bin = binary("mistnet-edge");
            let args = ns.exec(&[
                s(&edge_bin), "run", "--server", &server, "--insecure-plaintext", "--edge", &edge, "--token-file", s(&token), "--data", s(&edge_yamls[i]),
                "--mechanism", "sue", "--epsilon", "2", "--cache", s(&cache), "--max-attempts", "50", "--max-rate", rate,
            ]);
            let child = Command::new(args[0])
                .args(&args[1..])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::from(std::fs::File::create(log.with_extension("out")).unwrap()))
                .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
                .spawn()
                .unwrap();
            (Proc(child), log)
        })
        .collect();

    // edge-1's spool is written before its upload starts; a second into the upload its link goes down.
    let spool = root.join("cache-1").join("spool");
    let spooled = wait_until(LIMIT, || walk(&spool).len() >= edge_sample_ids(&edge_yamls[1]).len());
    assert!(spooled, "edge-1 never spooled its samples");
    std::thread::sleep(Duration::from_secs(1));
    namespaces[1].link(false);
    let down = Instant::now();
    std::thread::sleep(OUTAGE);
    namespaces[1].link(true);
    eprintln!("edge-1's link was down for {:.1} s", down.elapsed().as_secs_f64());

    for (i, (mut edge, log)) in edges.into_iter().enumerate() {
        let status = edge.wait_for(LIMIT);
        let stderr = std::fs::read_to_string(&log).unwrap();
        let stdout = std::fs::read_to_string(log.with_extension("out")).unwrap();
        assert!(status.success(), "edge-{i} failed: {status:?}\n{stderr}\n{stdout}");
        assert!(stdout.contains("all") && stdout.contains("goodput"), "edge-{i} reported no goodput:\n{stdout}");
        eprintln!("edge-{i}: {}", stdout.trim());
        let goodput: f64 = stdout.split("goodput ").nth(1).and_then(|r| r.split(' ').next()).and_then(|v| v.parse().ok()).expect("a goodput figure");
        if i == 0 {
            // 2 Mbit/s is 250 kB/s: more would mean the link was not impaired.
            assert!(goodput > 0.0 && goodput < 262.5, "edge-0's goodput {goodput} kB/s on a 2 Mbit/s link");
        }
        // Backoff: 200 ms doubling to 10 s, full jitter. A retry loop without it would make hundreds.
        let retries = stderr.matches("retrying").count();
        assert!(retries <= 12, "edge-{i} retried {retries} times:\n{stderr}");
    }
    drop(cloud);

    let mut stored: HashMap<String, Vec<String>> = HashMap::new();
    for sample in FeatureStore::open(&store).unwrap().samples().unwrap() {
        stored.entry(sample.edge.clone()).or_default().push(sample.sample_id.clone());
    }
    for (i, yaml) in edge_yamls.iter().enumerate() {
        let ids = stored.remove(&format!("edge-{i}")).unwrap_or_default();
        let distinct: BTreeSet<String> = ids.iter().cloned().collect();
        assert_eq!(ids.len(), distinct.len(), "edge-{i}: a sample stored twice");
        assert_eq!(distinct, edge_sample_ids(yaml), "edge-{i}: stored ids are not its dataset");
    }
    assert!(stored.is_empty(), "samples of unknown edges: {:?}", stored.keys());
}

/// Every file under `dir` (none if it does not exist).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().flat_map(|e| if e.path().is_dir() { walk(&e.path()) } else { vec![e.path()] }).collect()
}

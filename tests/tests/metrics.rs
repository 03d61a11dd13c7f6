//! `mistnet-cloud serve --metrics-listen` as a real process on 127.0.0.1: samples stored, a
//! duplicate, refusals (a bad label, the ε budget, a wrong token) are counted by edge and reason,
//! every ack is in the latency histogram, and the store's gauges match the store on disk, as a plain
//! HTTP/1.1 scrape of `GET /metrics` parses them; the Grafana dashboard (`deploy/grafana/`) queries
//! exactly the names scraped.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

use mistnet_e2e::{channel, free_port, start_cloud};
use mistnet_proto::client::Credentials;
use mistnet_proto::pb::{self, feature_upload_client::FeatureUploadClient};
use tonic::Code;

const EDGE: &str = "edge-0";
const TOKEN: &str = "token-of-edge-0-0123456789";

/// A sample of the Front served at `addr` (ε = 2), with one box of `class`.
async fn sample(addr: &str, sample_id: &str, class: u32) -> pb::Sample {
    mistnet_e2e::sample_for_served_front(addr, &Credentials::edge(EDGE, TOKEN).unwrap(), sample_id, class).await
}

/// Uploads one sample on its own stream with `token`: its ack, or the call's refusal.
async fn upload(addr: &str, token: &str, sample: pb::Sample) -> Result<pb::Ack, tonic::Status> {
    let credentials = Credentials::edge(EDGE, token).unwrap();
    let mut client = FeatureUploadClient::new(channel(addr).await);
    let mut acks = client.upload(credentials.request(tokio_stream::iter(vec![sample]))).await?.into_inner();
    Ok(acks.message().await?.expect("an ack"))
}

/// `GET path` over plain HTTP/1.1: the status line, the headers and the body.
fn get(addr: &str, path: &str) -> (String, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    let length: usize = headers.lines().find_map(|l| l.strip_prefix("Content-Length: ")).expect("Content-Length").parse().unwrap();
    assert_eq!(length, body.len(), "Content-Length");
    (status.to_string(), headers.to_string(), body.to_string())
}

/// The samples of a text-format exposition, keyed `name{k="v",...}` (labels sorted), checking the
/// syntax of every line and that each sample's family was declared by a `# TYPE` line.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let name_ok = |n: &str| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') && !n.starts_with(|c: char| c.is_ascii_digit());
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("bad TYPE line {line:?}"));
            assert!(name_ok(name) && ["counter", "gauge", "histogram"].contains(&kind), "bad TYPE line {line:?}");
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels in {line:?}"))),
            None => (series, ""),
        };
        assert!(name_ok(name), "bad metric name in {line:?}");
        let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s).filter(|f| types.get(*f).is_some_and(|t| t == "histogram")));
        assert!(types.contains_key(family.unwrap_or(name)), "{name} has no TYPE line");
        let mut pairs: Vec<String> = Vec::new();
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("bad label {pair:?} in {line:?}"));
            assert!(name_ok(k) && v.len() >= 2 && v.starts_with('"') && v.ends_with('"'), "bad label {pair:?} in {line:?}");
            pairs.push(pair.to_string());
        }
        pairs.sort();
        let key = if pairs.is_empty() { name.to_string() } else { format!("{name}{{{}}}", pairs.join(",")) };
        assert!(samples.insert(key, value).is_none(), "{line:?} appears twice");
    }
    samples
}

#[test]
fn a_scrape_counts_what_the_server_did() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::write(root.join("tokens.txt"), format!("{EDGE} {TOKEN}\n")).unwrap();
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tests/fixtures/yolov5/yolov5n_weights.safetensors").display().to_string();
    let (store, tokens) = (root.join("store").display().to_string(), root.join("tokens.txt").display().to_string());
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let (cloud, addr) = start_cloud(&[
        "--listen", "127.0.0.1:0", "--store", &store, "--model", "yolov5n", "--weights", &weights, "--cut", "4", "--imgsz", "64", "--tokens", &tokens,
        "--epsilon-budget", "5", "--metrics-listen", &metrics_addr,
    ]);

    let (status, headers, body) = get(&metrics_addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(headers.contains("Content-Type: text/plain; version=0.0.4"), "{headers}");
    let before = parse(&body);
    assert_eq!(before.get("mistnet_ack_latency_seconds_count"), Some(&0.0), "{body}");
    assert_eq!(before.get("mistnet_store_writable"), Some(&1.0), "{body}");
    assert!(!before.keys().any(|k| k.contains("edge=")), "an edge series before any upload:\n{body}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let feature_bytes = rt.block_on(async {
        let a = sample(&addr, "a", 0).await;
        let bytes = a.features.len();
        let stored = upload(&addr, TOKEN, a.clone()).await.unwrap();
        assert!(stored.code == Code::Ok as i32 && !stored.duplicate, "{stored:?}");
        let again = upload(&addr, TOKEN, a).await.unwrap();
        assert!(again.code == Code::Ok as i32 && again.duplicate, "{again:?}");
        let bad_label = upload(&addr, TOKEN, sample(&addr, "x", 99).await).await.unwrap();
        assert_eq!(bad_label.code, Code::InvalidArgument as i32, "{bad_label:?}");
        // ε 2 + 2 spent; 2 more would pass the budget of 5.
        let over_budget = upload(&addr, TOKEN, sample(&addr, "b", 0).await).await.unwrap();
        assert_eq!(over_budget.code, Code::ResourceExhausted as i32, "{over_budget:?}");
        let wrong_token = upload(&addr, "not-the-token-of-edge-0", sample(&addr, "c", 0).await).await.unwrap_err();
        assert_eq!(wrong_token.code(), Code::PermissionDenied, "{wrong_token:?}");
        bytes
    });

    let (status, _, body) = get(&metrics_addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let m = parse(&body);
    let value = |key: &str| *m.get(key).unwrap_or_else(|| panic!("no {key} in\n{body}"));
    assert_eq!(value(r#"mistnet_samples_stored_total{edge="edge-0"}"#), 1.0);
    assert_eq!(value(r#"mistnet_feature_bytes_stored_total{edge="edge-0"}"#), feature_bytes as f64);
    assert_eq!(value(r#"mistnet_duplicates_total{edge="edge-0"}"#), 1.0);
    assert_eq!(value(r#"mistnet_epsilon_spent{edge="edge-0"}"#), 4.0);
    for (reason, n) in [("invalid", 1.0), ("epsilon_budget", 1.0), ("auth", 1.0), ("sample_quota", 0.0), ("byte_quota", 0.0), ("rate_limit", 0.0), ("store_unavailable", 0.0)] {
        assert_eq!(value(&format!(r#"mistnet_refusals_total{{reason="{reason}"}}"#)), n, "refusals for {reason}");
    }
    // Every ack (the wrong token's call got none) is in the histogram, and in its +Inf bucket.
    assert_eq!(value("mistnet_ack_latency_seconds_count"), 4.0);
    assert_eq!(value(r#"mistnet_ack_latency_seconds_bucket{le="+Inf"}"#), 4.0);
    assert!(value("mistnet_ack_latency_seconds_sum") > 0.0);
    let on_disk = std::fs::metadata(root.join("store/seg-00000001.log")).unwrap().len();
    assert_eq!(value("mistnet_store_bytes"), on_disk as f64);
    assert_eq!(value("mistnet_store_queue_depth"), 0.0);
    assert_eq!(value("mistnet_in_flight_bytes"), 0.0, "every answered sample gave its bytes back");
    assert_eq!(value("mistnet_store_writable"), 1.0);

    // The Grafana dashboard queries exactly the names exported, every one of them (the trainer's
    // `mistnet_train_*` are checked by mistnet-train's own test).
    let exported: BTreeSet<&str> = m.keys().map(|k| k.split('{').next().unwrap()).collect();
    let dashboard = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/mistnet.json")).unwrap();
    let queried: BTreeSet<&str> = dashboard
        .match_indices("mistnet_")
        .map(|(at, _)| dashboard[at..].split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).next().unwrap())
        .filter(|name| !name.starts_with("mistnet_train_"))
        .collect();
    assert_eq!(queried, exported, "deploy/grafana/mistnet.json");

    let (status, _, _) = get(&metrics_addr, "/other");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    drop(cloud);
}

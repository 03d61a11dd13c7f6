//! End to end: `mistnet-cloud serve` and `mistnet-edge run` as real processes on 127.0.0.1.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mistnet::codec::{EncodeParams, Encoding, FrontHash, HEADER_LEN, Mechanism, Privacy, encode, seeded_rng};
use mistnet::data::synth::{SynthConfig, generate};
use mistnet_e2e::{Proc, channel, free_port, start_cloud, start_edge, wait_until};
use mistnet_proto::client::{Connection, Credentials, TlsFiles};
use mistnet_store::{FeatureStore, segment};
use mistnet_proto::pb::{
    self, feature_upload_client::FeatureUploadClient, front_distribution_client::FrontDistributionClient, ingest_status_client::IngestStatusClient,
};
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(120);

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    weights: String,
    tokens: String,
    /// Dataset YAML per edge.
    data: Vec<PathBuf>,
}

fn token(edge: &str) -> String {
    format!("token-of-{edge}-0123456789")
}

fn setup(edges: usize, images: usize) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let manifest = generate(&SynthConfig { images, imgsz: 64, seed: 7, edges, private_size: None }, &root.join("data")).unwrap();
    let mut data: Vec<PathBuf> = manifest.yamls.iter().filter(|p| p.to_string_lossy().contains("edge")).map(|p| root.join("data").join(p)).collect();
    data.sort();
    assert_eq!(data.len(), edges, "one YAML per edge in {:?}", manifest.yamls);
    let mut lines = String::new();
    for i in 0..edges {
        let edge = format!("edge-{i}");
        lines += &format!("{edge} {}\n", token(&edge));
        std::fs::write(root.join(format!("{edge}.token")), token(&edge)).unwrap();
    }
    std::fs::write(root.join("tokens.txt"), lines).unwrap();
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tests/fixtures/yolov5/yolov5n_weights.safetensors");
    Setup { root: root.clone(), weights: weights.display().to_string(), tokens: root.join("tokens.txt").display().to_string(), data, _tmp: tmp }
}

impl Setup {
    fn cloud(&self, listen: &str, extra: &[&str]) -> (Proc, String) {
        let store = self.root.join("store").display().to_string();
        let mut args = vec!["--listen", listen, "--store", &store, "--model", "yolov5n", "--weights", &self.weights, "--cut", "4", "--imgsz", "64", "--tokens", &self.tokens];
        args.extend_from_slice(extra);
        start_cloud(&args)
    }

    fn edge(&self, i: usize, addr: &str) -> Proc {
        let edge = format!("edge-{i}");
        let token_file = self.root.join(format!("{edge}.token")).display().to_string();
        let cache = self.root.join(format!("cache-{edge}")).display().to_string();
        let data = self.data[i].display().to_string();
        let server = format!("http://{addr}");
        start_edge(&[
            "--server", &server, "--edge", &edge, "--token-file", &token_file, "--data", &data, "--mechanism", "sue", "--epsilon", "2",
            "--cache", &cache, "--max-attempts", "30", "--max-rate", "40",
        ])
    }

    fn stored(&self) -> usize {
        FeatureStore::open(self.root.join("store")).map(|s| s.len()).unwrap_or(0)
    }

    fn train_images(&self, i: usize) -> usize {
        let ds = mistnet::data::Dataset::open(&self.data[i]).unwrap();
        ds.load(mistnet::data::Split::Train, Default::default()).unwrap().samples.len()
    }
}

/// The stored (edge, sample id) keys; panics if one is stored twice.
fn stored_once(setup: &Setup) -> HashSet<(String, String)> {
    let samples = FeatureStore::open(setup.root.join("store")).unwrap().samples().unwrap();
    let keys: HashSet<_> = samples.iter().map(|s| (s.edge.clone(), s.sample_id.clone())).collect();
    assert_eq!(keys.len(), samples.len(), "a sample is stored twice");
    keys
}

/// Every (edge, sample id) once, every message decodable.
fn assert_exactly_once(setup: &Setup, expected: usize) {
    assert_eq!(stored_once(setup).len(), expected);
    let samples = FeatureStore::open(setup.root.join("store")).unwrap().samples().unwrap();
    for s in &samples {
        mistnet::codec::decode(&s.features, &Default::default()).unwrap();
        assert!(s.image_size.0 > 0);
    }
}

#[test]
fn edges_upload_at_once_and_survive_a_cloud_sigkill() {
    let setup = setup(3, 240);
    let expected: usize = (0..3).map(|i| setup.train_images(i)).sum();
    let listen = format!("127.0.0.1:{}", free_port());
    let (mut cloud, addr) = setup.cloud(&listen, &[]);
    let mut edges: Vec<Proc> = (0..3).map(|i| setup.edge(i, &addr)).collect();
    assert!(wait_until(LIMIT, || setup.stored() >= 3), "nothing stored");
    cloud.0.kill().unwrap();
    cloud.0.wait().unwrap();
    let at_kill = setup.stored();
    assert!(at_kill < expected, "the cloud was killed after the upload ended ({at_kill} of {expected} stored)");
    let (_cloud, _) = setup.cloud(&listen, &[]);
    for edge in &mut edges {
        assert!(edge.wait_for(LIMIT).success(), "an edge failed");
    }
    assert_exactly_once(&setup, expected);
}

#[test]
fn an_edge_killed_mid_upload_resumes_without_duplicates() {
    let setup = setup(1, 120);
    let expected = setup.train_images(0);
    let (_cloud, addr) = setup.cloud("127.0.0.1:0", &[]);
    let mut edge = setup.edge(0, &addr);
    assert!(wait_until(LIMIT, || setup.stored() >= 3), "nothing stored");
    edge.0.kill().unwrap();
    edge.0.wait().unwrap();
    let at_kill = setup.stored();
    assert!(at_kill < expected, "the edge was killed after the upload ended ({at_kill} of {expected} stored)");
    let mut edge = setup.edge(0, &addr);
    assert!(edge.wait_for(LIMIT).success(), "the restarted edge failed");
    assert_exactly_once(&setup, expected);
}

/// `mistnet-cloud status --json` against `addr` with the token in `token_file`, as `edge`, or as
/// the operator when `edge` is `None`; `Err` is its stderr.
fn status(addr: &str, edge: Option<&str>, token_file: &Path) -> Result<serde_json::Value, String> {
    status_at(&format!("http://{addr}"), edge, token_file, &[])
}

/// `mistnet-cloud status --json --server SERVER` with `extra` flags (TLS files).
fn status_at(server: &str, edge: Option<&str>, token_file: &Path, extra: &[&str]) -> Result<serde_json::Value, String> {
    let mut cmd = std::process::Command::new(mistnet_e2e::binary("mistnet-cloud"));
    cmd.args(["status", "--json", "--server", server, "--token-file"]).arg(token_file).args(extra);
    if let Some(edge) = edge {
        cmd.args(["--edge", edge]);
    }
    let out = cmd.output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}

fn authed<T>(message: T, edge: &str, token: &str) -> tonic::Request<T> {
    Credentials::edge(edge, token).unwrap().request(message)
}

/// The Front's output shape in these tests: yolov5n cut 4 at 64 px (64 channels, stride 8).
const SHAPE: [usize; 4] = [1, 64, 8, 8];

/// Feature values of [`SHAPE`], a fixed pattern.
fn feature_values() -> Vec<f32> {
    (0..SHAPE.iter().product()).map(|i| if i % 3 == 0 { 1.0 } else { -1.0 }).collect()
}

/// A codec message of `values` (SUE ε = 2, packed, zstd) as an edge of Front `front_hash` makes it.
fn features(values: &[f32], shape: &[usize], front_hash: FrontHash) -> Vec<u8> {
    let params = EncodeParams { privacy: Privacy::new(Mechanism::Sue, Some(2.0)).unwrap(), encoding: Encoding::Packed, zstd_level: Some(3), cut: 4, front_hash };
    encode(values, shape, &params, &mut seeded_rng(1)).unwrap()
}

/// A valid sample for the Front the server at `channel` serves, fetched with `edge`'s token.
async fn valid_sample(channel: tonic::transport::Channel, edge: &str, sample_id: &str) -> pb::Sample {
    let mut front_client = FrontDistributionClient::new(channel).max_decoding_message_size(64 << 20);
    let front = front_client.get_front(authed(pb::GetFrontRequest::default(), edge, &token(edge))).await.unwrap().into_inner();
    pb::Sample {
        sample_id: sample_id.into(),
        features: features(&feature_values(), &SHAPE, front.front_hash.parse().unwrap()),
        labels: vec![pb::Box { class: 1, cx: 0.5, cy: 0.5, w: 0.2, h: 0.2 }],
        image_width: 64,
        image_height: 64,
    }
}

/// Rewrites a message's payload (and `payload_len`, CRC) as a hostile sender could.
fn with_payload(valid: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut msg = valid[..HEADER_LEN - 4].to_vec();
    msg[68..76].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&msg), payload);
    msg.extend_from_slice(&crc.to_le_bytes());
    msg.extend_from_slice(payload);
    msg
}

#[test]
fn bad_samples_are_refused_and_nothing_is_stored() {
    let setup = setup(1, 20);
    let (_cloud, addr) = setup.cloud("127.0.0.1:0", &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let channel = channel(&addr).await;
        let (edge, tok) = ("edge-0", token("edge-0"));

        // Unauthenticated calls are refused.
        let mut front_client = FrontDistributionClient::new(channel.clone()).max_decoding_message_size(64 << 20);
        let err = front_client.get_front(tonic::Request::new(pb::GetFrontRequest::default())).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        let err = front_client.get_front(authed(pb::GetFrontRequest::default(), edge, "wrong-token-0123456789")).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        let err = front_client.get_front(authed(pb::GetFrontRequest::default(), "edge-9", &tok)).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);

        let front = front_client.get_front(authed(pb::GetFrontRequest::default(), edge, &tok)).await.unwrap().into_inner();
        let hash: FrontHash = front.front_hash.parse().unwrap();
        let values = feature_values();
        let n = values.len();
        let valid = features(&values, &SHAPE, hash);
        let good_box = pb::Box { class: 1, cx: 0.5, cy: 0.5, w: 0.2, h: 0.2 };
        let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 19).unwrap();
        let wrong_shape = features(&values[..n / 2], &[1, 32, 8, 8], hash);
        let wrong_hash = features(&values, &SHAPE, FrontHash([7; 32]));
        let mut bomb_header = valid.clone();
        bomb_header[10] = 1; // byte 10: compression = zstd
        let cases: Vec<(&str, Vec<u8>, pb::Box, &str)> = vec![
            ("truncated", valid[..valid.len() / 2].to_vec(), good_box, "truncated"),
            ("wrong-shape", wrong_shape, good_box, "shape"),
            ("zstd-bomb", with_payload(&bomb_header, &bomb), good_box, "decompresses to more"),
            ("wrong-hash", wrong_hash, good_box, "Front"),
            ("nan-box", valid.clone(), pb::Box { cx: f32::NAN, ..good_box }, "cx = NaN"),
            ("out-of-range-box", valid.clone(), pb::Box { w: 1.5, ..good_box }, "w = 1.5"),
            ("bad-class", valid.clone(), pb::Box { class: 80, ..good_box }, "class 80"),
        ];
        let expected: Vec<(String, &str)> = cases.iter().map(|(id, _, _, why)| (id.to_string(), *why)).collect();
        let samples: Vec<pb::Sample> = cases
            .into_iter()
            .map(|(id, features, label, _)| pb::Sample { sample_id: id.into(), features, labels: vec![label], image_width: 64, image_height: 64 })
            .collect();
        let mut upload = FeatureUploadClient::new(channel.clone());
        let mut acks = upload.upload(authed(tokio_stream::iter(samples), edge, &tok)).await.unwrap().into_inner();
        let mut seen = 0;
        while let Some(ack) = acks.message().await.unwrap() {
            let why = expected.iter().find(|(id, _)| *id == ack.sample_id).unwrap().1;
            assert_eq!(ack.code, Code::InvalidArgument as i32, "{}: {}", ack.sample_id, ack.message);
            assert!(ack.message.contains(why), "{}: {:?} does not mention {why:?}", ack.sample_id, ack.message);
            seen += 1;
        }
        assert_eq!(seen, expected.len());

        // The stream goes on after refusals, and a valid sample is stored.
        let ok = pb::Sample { sample_id: "ok".into(), features: valid, labels: vec![good_box], image_width: 64, image_height: 64 };
        let mut acks = upload.upload(authed(tokio_stream::iter(vec![ok.clone(), ok]), edge, &tok)).await.unwrap().into_inner();
        let first = acks.message().await.unwrap().unwrap();
        let second = acks.message().await.unwrap().unwrap();
        assert_eq!((first.code, second.code), (0, 0));
        assert!(first.duplicate != second.duplicate, "exactly one of the two copies is new");
    });
    let samples = FeatureStore::open(setup.root.join("store")).unwrap().samples().unwrap();
    assert_eq!(samples.iter().map(|s| s.sample_id.as_str()).collect::<Vec<_>>(), ["ok"]);
}

#[test]
fn mutual_tls_uploads_and_refuses_a_client_without_certificate() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let setup = setup(1, 20);
    let expected = setup.train_images(0);
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let write_pair = |name: &str, san: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![san.to_string()]).unwrap().signed_by(&key, &ca).unwrap();
        let (c, k) = (setup.root.join(format!("{name}.pem")), setup.root.join(format!("{name}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c.display().to_string(), k.display().to_string())
    };
    let ca_pem = setup.root.join("ca.pem");
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    let ca_pem = ca_pem.display().to_string();
    let (server_cert, server_key) = write_pair("server", "localhost");
    let (client_cert, client_key) = write_pair("client", "edge-0");
    let (_cloud, addr) = setup.cloud("127.0.0.1:0", &["--tls-cert", &server_cert, "--tls-key", &server_key, "--client-ca", &ca_pem]);
    let port = addr.rsplit(':').next().unwrap();
    let server = format!("https://localhost:{port}");

    // Without a client certificate the TLS handshake is refused.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let refused = rt.block_on(async {
        let tls = TlsFiles { ca_cert: Some(ca_pem.clone().into()), ..TlsFiles::default() };
        let channel = Connection::new(&server, &tls, false).unwrap().connect().await;
        match channel {
            Err(_) => true,
            Ok(ch) => FrontDistributionClient::new(ch).get_front(authed(pb::GetFrontRequest::default(), "edge-0", &token("edge-0"))).await.is_err(),
        }
    });
    assert!(refused, "a client without certificate got through");

    let token_file = setup.root.join("edge-0.token").display().to_string();
    let cache = setup.root.join("cache-tls").display().to_string();
    let data = setup.data[0].display().to_string();
    let mut edge = start_edge(&[
        "--server", &server, "--ca-cert", &ca_pem, "--client-cert", &client_cert, "--client-key", &client_key, "--edge", "edge-0",
        "--token-file", &token_file, "--data", &data, "--mechanism", "rr", "--epsilon", "1", "--cache", &cache,
    ]);
    assert!(edge.wait_for(LIMIT).success(), "the edge failed over mTLS");
    assert_exactly_once(&setup, expected);

    // `status` reaches the same mTLS server with a client certificate, and is refused without one.
    let token_file = setup.root.join("edge-0.token");
    let mtls = ["--ca-cert", &ca_pem, "--client-cert", &client_cert, "--client-key", &client_key];
    let report = status_at(&server, Some("edge-0"), &token_file, &mtls).unwrap();
    assert_eq!(report["samples"], expected as u64);
    assert_eq!(report["edges"][0]["edge"], "edge-0");
    let err = status_at(&server, Some("edge-0"), &token_file, &["--ca-cert", &ca_pem]).unwrap_err();
    assert!(err.contains("status call refused") || err.contains("cannot connect"), "{err}");
}

#[test]
fn status_refuses_plaintext_to_a_remote_server() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("operator.token");
    std::fs::write(&token_file, format!("{OPERATOR_TOKEN}\n")).unwrap();
    // 192.0.2.1 is TEST-NET-1: nothing answers there, and nothing is sent.
    let err = status_at("http://192.0.2.1:50051", None, &token_file, &[]).unwrap_err();
    assert!(err.contains("refusing plaintext"), "{err}");
}

#[test]
fn the_epsilon_ledger_counts_re_uploads_and_enforces_the_budget() {
    let setup = setup(1, 20);
    let n = setup.train_images(0);
    // Each upload spends ε = 2: the budget admits exactly n uploads plus one re-upload.
    let budget = (2 * n + 2).to_string();
    let (_cloud, addr) = setup.cloud("127.0.0.1:0", &["--epsilon-budget", &budget]);
    let mut edge = setup.edge(0, &addr);
    assert!(edge.wait_for(LIMIT).success());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (stored_id, acks) = rt.block_on(async {
        let channel = channel(&addr).await;
        let tok = token("edge-0");
        let mut upload = FeatureUploadClient::new(channel);
        let mut ids = upload.list_stored(authed(pb::ListStoredRequest::default(), "edge-0", &tok)).await.unwrap().into_inner();
        let id = ids.message().await.unwrap().unwrap().sample_ids[0].clone();
        let sample = FeatureStore::open(setup.root.join("store")).unwrap().samples().unwrap().into_iter().find(|s| s.sample_id == id).unwrap();
        let resend = pb::Sample {
            sample_id: id.clone(),
            features: sample.features,
            labels: sample.labels.iter().map(|l| pb::Box { class: l.class as u32, cx: l.cx, cy: l.cy, w: l.w, h: l.h }).collect(),
            image_width: sample.image_size.0,
            image_height: sample.image_size.1,
        };
        // The first re-upload fits the budget and is a duplicate; the second passes it.
        let mut out = Vec::new();
        for _ in 0..2 {
            let mut acks = upload.upload(authed(tokio_stream::iter(vec![resend.clone()]), "edge-0", &tok)).await.unwrap().into_inner();
            out.push(acks.message().await.unwrap().unwrap());
        }
        (id, out)
    });
    assert_eq!((acks[0].code, acks[0].duplicate), (0, true));
    assert_eq!(acks[1].code, Code::ResourceExhausted as i32);
    assert!(acks[1].message.contains("ε budget"), "{}", acks[1].message);

    let report = status(&addr, Some("edge-0"), &setup.root.join("edge-0.token")).unwrap();
    assert_eq!(report["all_edges"], false);
    assert_eq!(report["edges"].as_array().unwrap().len(), 1);
    let edge = &report["edges"][0];
    assert_eq!(edge["samples"], n as u64);
    assert_eq!(edge["uploads"], n as u64 + 1);
    assert_eq!(edge["epsilon_total"], (2 * n + 2) as f64);
    let ledger = edge["ledger"].as_array().unwrap().iter().find(|l| l["sample_id"] == stored_id.as_str()).unwrap();
    assert_eq!(ledger["epsilon"], serde_json::json!([2.0, 2.0]));
    assert_eq!(ledger["epsilon_total"], 4.0);

    // This server has no operator token: a status call without an edge id is refused.
    let err = status(&addr, None, &setup.root.join("edge-0.token")).unwrap_err();
    assert!(err.contains("no operator token"), "{err}");
}

const OPERATOR_TOKEN: &str = "operator-token-0123456789";

#[test]
fn status_shows_every_edge_only_to_the_operator() {
    let setup = setup(2, 20);
    let operator_token = setup.root.join("operator.token");
    std::fs::write(&operator_token, format!("{OPERATOR_TOKEN}\n")).unwrap();
    let (_cloud, addr) = setup.cloud("127.0.0.1:0", &["--operator-token-file", &operator_token.display().to_string()]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let channel = channel(&addr).await;
        for (edge, ids) in [("edge-0", vec!["a"]), ("edge-1", vec!["b", "c"])] {
            let mut samples = Vec::new();
            for id in ids {
                samples.push(valid_sample(channel.clone(), edge, id).await);
            }
            let n = samples.len();
            let mut acks = FeatureUploadClient::new(channel.clone()).upload(authed(tokio_stream::iter(samples), edge, &token(edge))).await.unwrap().into_inner();
            for _ in 0..n {
                let ack = acks.message().await.unwrap().unwrap();
                assert_eq!(ack.code, 0, "{}", ack.message);
            }
        }
        // The operator token serves GetStatus without an edge id, and nothing else.
        fn as_operator<T>(message: T) -> tonic::Request<T> {
            Credentials::operator(OPERATOR_TOKEN).unwrap().request(message)
        }
        let err = FrontDistributionClient::new(channel.clone()).get_front(as_operator(pb::GetFrontRequest::default())).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        let err = FeatureUploadClient::new(channel.clone()).list_stored(as_operator(pb::ListStoredRequest::default())).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        let mut status_client = IngestStatusClient::new(channel);
        let err = status_client.get_status(authed(pb::StatusRequest::default(), "edge-0", OPERATOR_TOKEN)).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "the operator token is no edge's token: {err:?}");
        assert!(status_client.get_status(as_operator(pb::StatusRequest::default())).await.unwrap().into_inner().all_edges);
    });

    let all = status(&addr, None, &operator_token).unwrap();
    assert_eq!(all["all_edges"], true);
    let edges: Vec<(&str, u64)> = all["edges"].as_array().unwrap().iter().map(|e| (e["edge"].as_str().unwrap(), e["samples"].as_u64().unwrap())).collect();
    assert_eq!(edges, [("edge-0", 1), ("edge-1", 2)]);
    assert_eq!(all["samples"], 3);
    assert!(all["store_bytes"].as_u64().unwrap() > 0);

    let own = status(&addr, Some("edge-1"), &setup.root.join("edge-1.token")).unwrap();
    assert_eq!(own["all_edges"], false);
    let edges: Vec<&str> = own["edges"].as_array().unwrap().iter().map(|e| e["edge"].as_str().unwrap()).collect();
    assert_eq!(edges, ["edge-1"], "an edge sees only itself");
    assert_eq!(own["samples"], 2);
    assert_eq!(own["store_bytes"], serde_json::Value::Null);
    let ids: Vec<&str> = own["edges"][0]["ledger"].as_array().unwrap().iter().map(|l| l["sample_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["b", "c"]);

    let err = status(&addr, None, &setup.root.join("edge-0.token")).unwrap_err();
    assert!(err.contains("not the operator token"), "an edge's token passed as the operator's: {err}");
}

#[test]
fn sigterm_acknowledges_what_is_in_flight_and_exits_0() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let setup = setup(2, 160);
    let expected = setup.train_images(0);
    let listen = format!("127.0.0.1:{}", free_port());
    let (mut cloud, addr) = setup.cloud(&listen, &[]);
    let mut edge = setup.edge(0, &addr);

    // A client as edge-1 streams paced samples and records every ack until the server ends the stream.
    let acked_count = std::sync::Arc::new(AtomicUsize::new(0));
    let client = std::thread::spawn({
        let (addr, acked_count) = (addr.clone(), std::sync::Arc::clone(&acked_count));
        move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async move {
                let channel = channel(&addr).await;
                let template = valid_sample(channel.clone(), "edge-1", "template").await;
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                tokio::spawn(async move {
                    for i in 0.. {
                        let sample = pb::Sample { sample_id: format!("client-{i:05}"), ..template.clone() };
                        if tx.send(sample).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                });
                let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
                let mut acks = FeatureUploadClient::new(channel).upload(authed(stream, "edge-1", &token("edge-1"))).await.unwrap().into_inner();
                let mut acked = Vec::new();
                loop {
                    match acks.message().await {
                        Ok(Some(ack)) => {
                            assert_eq!(ack.code, 0, "{}: {}", ack.sample_id, ack.message);
                            acked.push(ack.sample_id);
                            acked_count.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(None) => return (acked, None),
                        Err(status) => return (acked, Some(status)),
                    }
                }
            })
        }
    });
    let edge_stored = |setup: &Setup| stored_once(setup).iter().filter(|(e, _)| e == "edge-0").count();
    assert!(wait_until(LIMIT, || edge_stored(&setup) >= 3 && acked_count.load(Ordering::SeqCst) >= 5), "nothing stored");

    let signalled = std::time::Instant::now();
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(cloud.0.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let exit = cloud.wait_for(LIMIT);
    let took = signalled.elapsed();
    assert!(exit.success(), "serve did not exit 0 on SIGTERM: {exit:?}");
    assert!(took < Duration::from_secs(10), "serve took {took:?} to stop: the upload streams were cut by the grace period, not drained");

    let (acked, end) = client.join().unwrap();
    let end = end.expect("the server ends the upload stream with a status");
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    assert!(end.message().contains("shutting down"), "{end:?}");

    // Everything acknowledged is stored, once, and the clean stop left no torn tail.
    let durable = |setup: &Setup| {
        let keys = stored_once(setup);
        let missing: Vec<_> = acked.iter().filter(|id| !keys.contains(&("edge-1".to_string(), id.to_string()))).collect();
        assert!(missing.is_empty(), "acknowledged but not stored: {missing:?}");
    };
    durable(&setup);
    for (_, segment) in segment::list(&setup.root.join("store")).unwrap() {
        let end = segment::scan(&segment, |_, _| {}).unwrap();
        assert!(end.torn_tail.is_none() && end.corrupt.is_empty(), "{} is damaged: {end:?}", segment.display());
    }
    let at_term = edge_stored(&setup);
    assert!(at_term < expected, "the server stopped after the edge finished ({at_term} of {expected} stored)");

    // Restarted, the server still has everything; the edge resumes and nothing is stored twice.
    let (_cloud, _) = setup.cloud(&listen, &[]);
    assert!(edge.wait_for(LIMIT).success(), "the edge failed after the restart");
    durable(&setup);
    assert_eq!(edge_stored(&setup), expected);
}

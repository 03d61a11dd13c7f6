//! Hardening of the ingest handlers (#14 items 5 and 8), through a real `mistnet-cloud serve` on
//! loopback: an upload stream whose next message cannot be read ends with the real status (and the
//! server logs it, and the edge reports it); ListStored and GetStatus page; a flood of status calls
//! is rate-limited while another edge's uploads are acknowledged.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use mistnet::codec::{EncodeParams, Encoding, FrontHash, Mechanism, Privacy, encode, seeded_rng};
use mistnet::data::synth::{SynthConfig, generate};
use mistnet_e2e::{Proc, binary, channel};
use mistnet_proto::client::Credentials;
use mistnet_proto::pb::{self, feature_upload_client::FeatureUploadClient, front_distribution_client::FrontDistributionClient, ingest_status_client::IngestStatusClient};
use tonic::Code;

const OPERATOR_TOKEN: &str = "operator-token-0123456789";

fn token(edge: &str) -> String {
    format!("token-of-{edge}-0123456789")
}

fn authed<T>(message: T, edge: &str) -> tonic::Request<T> {
    Credentials::edge(edge, &token(edge)).unwrap().request(message)
}

/// A server (yolov5n, cut 4, 64 px) for edge-0 and edge-1 and the operator, its address and the
/// file its stderr (RUST_LOG=warn) goes to.
struct Server {
    _proc: Proc,
    addr: String,
    log: PathBuf,
    root: PathBuf,
    _tmp: tempfile::TempDir,
}

fn serve(extra: &[&str]) -> Server {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    std::fs::write(root.join("tokens.txt"), format!("edge-0 {}\nedge-1 {}\n", token("edge-0"), token("edge-1"))).unwrap();
    std::fs::write(root.join("operator.token"), OPERATOR_TOKEN).unwrap();
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tests/fixtures/yolov5/yolov5n_weights.safetensors");
    let log = root.join("serve.log");
    let mut child = Command::new(binary("mistnet-cloud"))
        .args(["serve", "--listen", "127.0.0.1:0", "--model", "yolov5n", "--cut", "4", "--imgsz", "64"])
        .arg("--weights").arg(&weights)
        .arg("--tokens").arg(root.join("tokens.txt"))
        .arg("--operator-token-file").arg(root.join("operator.token"))
        .arg("--store").arg(root.join("store"))
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start mistnet-cloud serve");
    let stdout = child.stdout.take().unwrap();
    let proc = Proc(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}")).to_string();
    Server { _proc: proc, addr, log, root, _tmp: tmp }
}

/// `count` valid samples (ids `{prefix}{i:05}`) for the Front the server serves.
async fn samples(addr: &str, prefix: &str, count: usize) -> Vec<pb::Sample> {
    let mut front = FrontDistributionClient::new(channel(addr).await).max_decoding_message_size(64 << 20);
    let hash: FrontHash = front.get_front(authed(pb::GetFrontRequest::default(), "edge-0")).await.unwrap().into_inner().front_hash.parse().unwrap();
    let params = EncodeParams { privacy: Privacy::new(Mechanism::Sue, Some(2.0)).unwrap(), encoding: Encoding::Packed, zstd_level: Some(3), cut: 4, front_hash: hash };
    let values: Vec<f32> = (0..64 * 8 * 8).map(|i| if i % 3 == 0 { 1.0 } else { -1.0 }).collect();
    let features = encode(&values, &[1, 64, 8, 8], &params, &mut seeded_rng(1)).unwrap();
    (0..count)
        .map(|i| pb::Sample {
            sample_id: format!("{prefix}{i:05}"),
            features: features.clone(),
            labels: vec![pb::Box { class: 1, cx: 0.5, cy: 0.5, w: 0.2, h: 0.2 }],
            image_width: 64,
            image_height: 64,
        })
        .collect()
}

/// Uploads `samples` as `edge` on one stream; the acks (code, sample id) and how the stream ended.
async fn upload(addr: &str, edge: &str, samples: Vec<pb::Sample>) -> (Vec<(i32, String)>, Result<(), tonic::Status>) {
    let mut client = FeatureUploadClient::new(channel(addr).await).max_encoding_message_size(usize::MAX);
    let mut acks = client.upload(authed(tokio_stream::iter(samples), edge)).await.unwrap().into_inner();
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(60), acks.message()).await.expect("the upload stream hung") {
            Ok(Some(ack)) => got.push((ack.code, ack.sample_id)),
            Ok(None) => return (got, Ok(())),
            Err(status) => return (got, Err(status)),
        }
    }
}

fn log_of(server: &Server) -> String {
    std::fs::read_to_string(&server.log).unwrap()
}

#[test]
fn an_oversize_message_ends_the_upload_with_resource_exhausted_after_acking_the_rest() {
    let server = serve(&["--max-message-bytes", "4096"]);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut sent = samples(&server.addr, "s", 4).await;
        sent[3].features = vec![7; 8192];
        sent.push(samples(&server.addr, "after", 1).await.remove(0));
        let (acks, end) = upload(&server.addr, "edge-0", sent).await;
        let status = end.expect_err("the stream must not end with OK");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("too large") && status.message().contains("4096"), "{}", status.message());
        let ok: HashSet<String> = acks.iter().filter(|(code, _)| *code == 0).map(|(_, id)| id.clone()).collect();
        assert_eq!(ok, ["s00000", "s00001", "s00002"].map(String::from).into(), "the samples before the oversize one are acknowledged");
    });
    let log = log_of(&server);
    assert!(log.contains("a message could not be read") && log.contains("edge-0") && log.contains("too large"), "serve log:\n{log}");
}

/// The gRPC status (code, message) of a raw HTTP/2 response: from its headers (trailers-only) or
/// its trailers.
async fn grpc_status(response: h2::client::ResponseFuture) -> (String, String) {
    let response = tokio::time::timeout(Duration::from_secs(30), response).await.expect("no response").unwrap();
    assert_eq!(response.status(), 200);
    let field = |h: &http::HeaderMap, k: &str| h.get(k).map(|v| v.to_str().unwrap().to_string());
    if let Some(code) = field(response.headers(), "grpc-status") {
        return (code, field(response.headers(), "grpc-message").unwrap_or_default());
    }
    let mut body = response.into_body();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), body.data()).await.expect("body hung") {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    (field(&trailers, "grpc-status").expect("grpc-status"), field(&trailers, "grpc-message").unwrap_or_default())
}

/// Opens an Upload call over raw HTTP/2 as edge-0 and sends `frame` as its body.
async fn raw_upload(addr: &str, frame: Vec<u8>, end_stream: bool) -> (String, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/mistnet.v1.FeatureUpload/Upload"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header(mistnet_proto::AUTHORIZATION, format!("Bearer {}", token("edge-0")))
        .header(mistnet_proto::EDGE_HEADER, "edge-0")
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    body.send_data(Bytes::from(frame), end_stream).unwrap();
    let status = grpc_status(response).await;
    drop(body);
    status
}

#[test]
fn a_bogus_length_prefix_ends_the_upload_with_the_real_status() {
    let server = serve(&[]);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        // A 4 GB declared length (u32::MAX), with a few bytes after it and the stream left open.
        let mut frame = vec![0u8, 0xff, 0xff, 0xff, 0xff];
        frame.extend([0u8; 64]);
        let (code, message) = raw_upload(&server.addr, frame, false).await;
        assert_eq!(code, (Code::ResourceExhausted as i32).to_string(), "{message}");
        assert!(message.contains("4294967295"), "{message}");
        // A length of 1000 with 10 bytes behind it and the stream ended: truncated.
        let mut frame = vec![0u8, 0, 0, 0x03, 0xe8];
        frame.extend([0u8; 10]);
        let (code, message) = raw_upload(&server.addr, frame, true).await;
        assert_eq!(code, (Code::InvalidArgument as i32).to_string(), "{message}");
        assert!(message.contains("EOF"), "{message}");
    });
    let log = log_of(&server);
    assert!(log.contains("4294967295") && log.contains("edge-0"), "serve log:\n{log}");
}

#[test]
fn the_edge_reports_the_servers_refusal_of_a_message() {
    let server = serve(&["--max-message-bytes", "200"]);
    let data = server.root.join("data");
    let manifest = generate(&SynthConfig { images: 10, imgsz: 64, seed: 7, edges: 1, private_size: None }, &data).unwrap();
    let yaml = manifest.yamls.iter().find(|p| p.to_string_lossy().contains("edge")).map(|p| data.join(p)).unwrap();
    std::fs::write(server.root.join("edge-0.token"), token("edge-0")).unwrap();
    let out = Command::new(binary("mistnet-edge"))
        .args(["run", "--server", &format!("http://{}", server.addr), "--edge", "edge-0", "--mechanism", "sue", "--epsilon", "2"])
        .arg("--token-file").arg(server.root.join("edge-0.token"))
        .arg("--data").arg(&yaml)
        .arg("--cache").arg(server.root.join("cache"))
        .args(["--max-attempts", "3"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the edge succeeded:\n{stderr}");
    assert!(stderr.contains("too large") && stderr.contains("200 bytes"), "the edge must report the real status:\n{stderr}");
    assert!(!stderr.contains("unacknowledged"), "{stderr}");
}

/// Every id of edge-0 through ListStored pages of `max_ids`, and the number of calls.
async fn list_pages(addr: &str, max_ids: u32) -> (Vec<String>, usize) {
    let mut client = FeatureUploadClient::new(channel(addr).await);
    let (mut ids, mut calls, mut page_token) = (Vec::new(), 0, String::new());
    loop {
        calls += 1;
        let mut stream = client.list_stored(authed(pb::ListStoredRequest { page_token, max_ids }, "edge-0")).await.unwrap().into_inner();
        let mut next = String::new();
        let mut in_page = 0;
        while let Some(batch) = stream.message().await.unwrap() {
            in_page += batch.sample_ids.len();
            ids.extend(batch.sample_ids);
            next = batch.next_page_token;
        }
        assert!(max_ids == 0 || in_page <= max_ids as usize, "a page of {in_page} ids for max_ids {max_ids}");
        if next.is_empty() {
            return (ids, calls);
        }
        page_token = next;
    }
}

#[test]
fn list_stored_and_the_status_ledger_page_through_every_id_once() {
    let server = serve(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let expected: Vec<String> = rt.block_on(async {
        let sent = samples(&server.addr, "id-", 1100).await;
        let expected: Vec<String> = sent.iter().map(|s| s.sample_id.clone()).collect();
        let (acks, end) = upload(&server.addr, "edge-0", sent).await;
        end.unwrap();
        assert!(acks.len() == 1100 && acks.iter().all(|(code, _)| *code == 0));

        let (all, calls) = list_pages(&server.addr, 0).await;
        assert_eq!((all, calls), (expected.clone(), 1), "no page fields: every id in one call");
        let (paged, calls) = list_pages(&server.addr, 300).await;
        assert_eq!((paged, calls), (expected.clone(), 4), "pages of 300");

        let mut status = IngestStatusClient::new(channel(&server.addr).await);
        let mut get = async |req: pb::StatusRequest| status.get_status(authed(req, "edge-0")).await.map(|r| r.into_inner());
        let first = get(pb::StatusRequest::default()).await.unwrap();
        assert_eq!((first.samples, first.edges[0].ledger.len()), (1100, 1000), "no page fields: the first 1000 ledger entries");
        let counts = get(pb::StatusRequest { max_ledger: Some(0), ..Default::default() }).await.unwrap();
        assert!(counts.edges[0].ledger.is_empty() && counts.edges[0].samples == 1100 && counts.edges[0].ledger_next_page_token.is_empty());
        let (mut ledger, mut next) = (Vec::new(), first.edges[0].ledger_next_page_token.clone());
        ledger.extend(first.edges[0].ledger.iter().map(|l| l.sample_id.clone()));
        while !next.is_empty() {
            let page = get(pb::StatusRequest { max_ledger: Some(70), edge: "edge-0".into(), ledger_page_token: next }).await.unwrap();
            assert!(page.edges[0].ledger.len() <= 70);
            ledger.extend(page.edges[0].ledger.iter().map(|l| l.sample_id.clone()));
            next = page.edges[0].ledger_next_page_token.clone();
        }
        assert_eq!(ledger, expected, "the ledger pages hold every id once");
        let err = get(pb::StatusRequest { edge: "edge-1".into(), ..Default::default() }).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        let err = get(pb::StatusRequest { ledger_page_token: "id-00001".into(), ..Default::default() }).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        expected
    });
    // `mistnet-cloud status` follows the pages: the whole ledger, as the operator.
    let out = Command::new(binary("mistnet-cloud"))
        .args(["status", "--json", "--server", &format!("http://{}", server.addr)])
        .arg("--token-file").arg(server.root.join("operator.token"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = json["edges"][0]["ledger"].as_array().unwrap().iter().map(|l| l["sample_id"].as_str().unwrap()).collect();
    assert_eq!(ids, expected, "status --json shows the whole ledger, each id once");
}

#[test]
fn a_status_flood_is_rate_limited_while_another_edge_uploads() {
    let server = serve(&[]);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let to_upload = samples(&server.addr, "b-", 200).await;
        let status_channel = channel(&server.addr).await;
        let flood = (0..120).map(|_| {
            let mut client = IngestStatusClient::new(status_channel.clone());
            tokio::spawn(async move { client.get_status(authed(pb::StatusRequest::default(), "edge-0")).await })
        });
        let flood: Vec<_> = flood.collect();
        let (acks, end) = upload(&server.addr, "edge-1", to_upload).await;
        let mut refused = Vec::new();
        for call in flood {
            if let Err(status) = call.await.unwrap() {
                refused.push(status);
            }
        }
        end.unwrap();
        assert!(acks.len() == 200 && acks.iter().all(|(code, _)| *code == 0), "edge-1's uploads are acknowledged");
        assert!(refused.len() >= 50, "only {} of 120 calls refused", refused.len());
        let advice: Vec<Duration> = refused.iter().map(|s| {
            assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
            mistnet_proto::retry_after(s).expect("retry advice")
        }).collect();
        // edge-1's calls and the operator's have their own buckets.
        let mut client = IngestStatusClient::new(status_channel.clone());
        let own = client.get_status(authed(pb::StatusRequest::default(), "edge-1")).await.unwrap().into_inner();
        assert_eq!(own.samples, 200);
        let operator = Credentials::operator(OPERATOR_TOKEN).unwrap();
        assert!(client.get_status(operator.request(pb::StatusRequest::default())).await.unwrap().into_inner().all_edges);
        // Once the advised wait has passed, edge-0 is served again.
        tokio::time::sleep(*advice.iter().max().unwrap()).await;
        client.get_status(authed(pb::StatusRequest::default(), "edge-0")).await.unwrap();
        tokio::time::sleep(*advice.iter().max().unwrap()).await;
        let mut list = FeatureUploadClient::new(status_channel);
        list.list_stored(authed(pb::ListStoredRequest::default(), "edge-0")).await.unwrap();
    });
    assert!(log_of(&server).contains("rate-limited"));
}

/// Room in the in-flight budget is reserved before a message is read; a stream that holds it and
/// receives nothing gives it back once another stream waits. The budget here fits one message's
/// room: an edge that opens its upload and sends nothing must not keep another edge waiting.
#[test]
fn an_idle_stream_holding_the_budget_does_not_starve_a_busy_one() {
    let server = serve(&["--max-message-bytes", "3000", "--max-in-flight-bytes", "3000"]);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let (idle_tx, idle_rx) = tokio::sync::mpsc::channel::<pb::Sample>(1);
        let mut idle_client = FeatureUploadClient::new(channel(&server.addr).await);
        let mut idle_acks = idle_client.upload(authed(tokio_stream::wrappers::ReceiverStream::new(idle_rx), "edge-0")).await.unwrap().into_inner();
        // The idle stream has taken the room by now.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let busy = samples(&server.addr, "busy-", 3).await;
        let (acks, end) = tokio::time::timeout(Duration::from_secs(20), upload(&server.addr, "edge-1", busy)).await.expect("the busy edge waited on the idle stream's room");
        assert!(end.is_ok(), "{end:?}");
        assert_eq!(acks.iter().filter(|(code, _)| *code == Code::Ok as i32).count(), 3, "{acks:?}");
        // The idle edge, sending at last, gets room again.
        let late = samples(&server.addr, "late-", 1).await.remove(0);
        idle_tx.send(late).await.unwrap();
        let ack = tokio::time::timeout(Duration::from_secs(20), idle_acks.message()).await.expect("the idle edge never got room back").unwrap().unwrap();
        assert_eq!((ack.code, ack.sample_id.as_str()), (Code::Ok as i32, "late-00000"));
    });
}

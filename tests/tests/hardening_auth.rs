//! Who may call, through a real `mistnet-cloud serve` on 127.0.0.1: a tokens file with two edges
//! sharing a token or an edge id that can never authenticate is refused at start (naming the
//! line); token files readable by others are warned about, or refused with
//! --strict-token-permissions; with --bind-cert-san an edge's calls must come with a client
//! certificate whose SAN (DNS name or URI) is that edge id.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mistnet_e2e::{Proc, binary, start_cloud, start_edge};
use mistnet_proto::client::{Connection, TlsFiles};
use mistnet_proto::pb::{self, front_distribution_client::FrontDistributionClient};
use mistnet_proto::{AUTHORIZATION, EDGE_HEADER};
use mistnet_store::FeatureStore;
use tonic::Code;

fn token(edge: &str) -> String {
    format!("token-of-{edge}-0123456789")
}

fn weights() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tests/fixtures/yolov5/yolov5n_weights.safetensors").display().to_string()
}

/// `serve` flags for a store under `root`, then `extra`.
fn serve_args(root: &Path, tokens: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["--listen", "127.0.0.1:0", "--model", "yolov5n", "--cut", "4", "--imgsz", "64", "--store"].map(String::from).to_vec();
    args.push(root.join("store").display().to_string());
    args.extend(["--weights".to_string(), weights(), "--tokens".to_string(), tokens.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Writes a tokens file (mode 0600) and returns its path.
fn tokens_file(root: &Path, text: &str) -> PathBuf {
    let path = root.join("tokens.txt");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// `serve` that must refuse to start: its stderr.
fn refused(args: &[String]) -> String {
    let out = Command::new(binary("mistnet-cloud")).arg("serve").args(args).env("RUST_LOG", "warn").stdout(Stdio::null()).output().unwrap();
    assert!(!out.status.success(), "serve started with {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn tokens_files_that_blur_who_is_who_are_refused_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let shared = tokens_file(dir.path(), &format!("edge-0 {}\n\n# the same again\nedge-1 {}\n", token("edge-0"), token("edge-0")));
    let err = refused(&serve_args(dir.path(), &shared, &[]));
    assert!(err.contains("tokens.txt:4: edge edge-1 has the token of edge edge-0 (line 1)"), "{err}");

    for (line, shown) in [("edge\u{7}bell", "\"edge\\u{7}bell\""), ("édge", "\"édge\"")] {
        let bad = tokens_file(dir.path(), &format!("edge-0 {}\n{line} {}\n", token("edge-0"), token("x")));
        let err = refused(&serve_args(dir.path(), &bad, &[]));
        assert!(err.contains(&format!("tokens.txt:2: edge id {shown} can never authenticate")), "{err}");
    }
    assert!(!dir.path().join("store").exists(), "nothing is created before the tokens are checked");
}

#[test]
fn token_files_readable_by_others_are_warned_about_or_refused_when_strict() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path(), &format!("edge-0 {}\n", token("edge-0")));
    let operator = dir.path().join("operator.token");
    std::fs::write(&operator, "operator-token-0123456789\n").unwrap();
    std::fs::set_permissions(&operator, std::fs::Permissions::from_mode(0o644)).unwrap();
    let with_operator = ["--operator-token-file", operator.to_str().unwrap()];

    let err = refused(&serve_args(dir.path(), &tokens, &[&with_operator[..], &["--strict-token-permissions"]].concat()));
    assert!(err.contains("operator.token is readable or writable by group or others (mode 644)"), "{err}");

    // Without --strict-token-permissions it starts, with a warning naming the file.
    let log = dir.path().join("serve.log");
    let mut child = Command::new(binary("mistnet-cloud"))
        .arg("serve")
        .args(serve_args(dir.path(), &tokens, &with_operator))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _serve = Proc(child);
    assert!(line.starts_with("listening on "), "{line:?}");
    let warned = std::fs::read_to_string(&log).unwrap();
    assert!(warned.contains("operator.token is readable or writable by group or others (mode 644); run `chmod 600"), "{warned}");
    assert!(!warned.contains("tokens.txt is readable"), "tokens.txt is 0600: {warned}");
}

#[test]
fn bind_cert_san_ties_each_edge_to_its_client_certificate() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let uri_edge = "urn:mistnet:edge-2";
    let tokens = tokens_file(root, &format!("edge-0 {}\nedge-1 {}\n{uri_edge} {}\n", token("edge-0"), token("edge-1"), token(uri_edge)));
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let write_pair = |name: &str, san: SanType| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![san];
        let cert = params.signed_by(&key, &ca).unwrap();
        let (c, k) = (root.join(format!("{name}.pem")), root.join(format!("{name}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    };
    let dns = |s: &str| SanType::DnsName(s.try_into().unwrap());
    let ca_pem = root.join("ca.pem");
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    let (server_cert, server_key) = write_pair("server", dns("localhost"));
    let edge0 = write_pair("edge-0", dns("edge-0"));
    let uri = write_pair("uri", SanType::URI(uri_edge.try_into().unwrap()));
    let (s_cert, s_key, ca) = (server_cert.to_str().unwrap(), server_key.to_str().unwrap(), ca_pem.to_str().unwrap());
    let tls = ["--tls-cert", s_cert, "--tls-key", s_key, "--client-ca", ca];
    let args = serve_args(root, &tokens, &[&tls[..], &["--bind-cert-san"]].concat());
    let (_cloud, addr) = start_cloud(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let server = format!("https://localhost:{}", addr.rsplit(':').next().unwrap());

    // GetFront as `edge` with `token`, over mTLS with the certificate `pair`.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let get_front = |pair: &(PathBuf, PathBuf), edge: &str| -> Result<(), (Code, String)> {
        rt.block_on(async {
            let files = TlsFiles { ca_cert: Some(ca_pem.clone()), client_cert: Some(pair.0.clone()), client_key: Some(pair.1.clone()) };
            let channel = Connection::new(&server, &files, false).unwrap().connect().await.unwrap();
            let mut req = tonic::Request::new(pb::GetFrontRequest::default());
            req.metadata_mut().insert(AUTHORIZATION, format!("Bearer {}", token(edge)).parse().unwrap());
            req.metadata_mut().insert(EDGE_HEADER, edge.parse().unwrap());
            FrontDistributionClient::new(channel).get_front(req).await.map(|_| ()).map_err(|s| (s.code(), s.message().to_string()))
        })
    };
    assert_eq!(get_front(&edge0, "edge-0"), Ok(()));
    assert_eq!(get_front(&uri, uri_edge), Ok(()), "a URI SAN binds too");
    let (code, why) = get_front(&edge0, "edge-1").unwrap_err();
    assert_eq!(code, Code::PermissionDenied, "edge-1's token with edge-0's certificate: {why}");
    assert!(why.contains("not edge \"edge-1\"'s") && why.contains("edge-0"), "{why}");
    assert_eq!(get_front(&uri, "edge-0").unwrap_err().0, Code::PermissionDenied);

    // A real edge: edge-0 with its own certificate uploads; edge-1 with edge-0's is refused and stores nothing.
    let data = root.join("data");
    mistnet::data::synth::generate(&mistnet::data::synth::SynthConfig { images: 20, imgsz: 64, seed: 5, edges: 1, private_size: None }, &data).unwrap();
    let run = |edge: &str, pair: &(PathBuf, PathBuf)| {
        let token_file = root.join(format!("{edge}.token"));
        std::fs::write(&token_file, token(edge)).unwrap();
        let (cache, yaml) = (root.join(format!("cache-{edge}")), data.join("private/edge-0.yaml"));
        let mut proc = start_edge(&[
            "--server", &server, "--ca-cert", ca, "--client-cert", pair.0.to_str().unwrap(), "--client-key", pair.1.to_str().unwrap(),
            "--edge", edge, "--token-file", token_file.to_str().unwrap(), "--data", yaml.to_str().unwrap(), "--mechanism", "rr",
            "--epsilon", "1", "--cache", cache.to_str().unwrap(), "--max-attempts", "2",
        ]);
        proc.wait_for(Duration::from_secs(120)).success()
    };
    assert!(run("edge-0", &edge0), "edge-0 with its own certificate failed");
    assert!(!run("edge-1", &edge0), "edge-1 got through with edge-0's certificate");
    let samples = FeatureStore::open(root.join("store")).unwrap().samples().unwrap();
    assert!(!samples.is_empty());
    assert!(samples.iter().all(|s| s.edge == "edge-0"), "only edge-0 stored samples");
}

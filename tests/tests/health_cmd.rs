//! `mistnet-cloud health`, the container images' HEALTHCHECK: exit 0 while `serve` reports SERVING,
//! 1 with a reason for an unknown service and for a server that is gone.

use std::path::Path;
use std::process::{Command, Output};

use mistnet_e2e::{binary, start_cloud};

fn health(args: &[&str]) -> Output {
    Command::new(binary("mistnet-cloud")).arg("health").args(args).env("RUST_LOG", "warn").output().unwrap()
}

#[test]
fn health_exits_0_while_serving_and_1_otherwise() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tests/fixtures/yolov5/yolov5n_weights.safetensors");
    let tokens = tmp.path().join("tokens.txt");
    std::fs::write(&tokens, "edge-0 token-of-edge-0-0123456789\n").unwrap();
    let store = tmp.path().join("store");
    let (cloud, addr) = start_cloud(&[
        "--listen", "127.0.0.1:0", "--store", store.to_str().unwrap(), "--model", "yolov5n", "--weights", weights.to_str().unwrap(), "--cut", "4", "--imgsz",
        "64", "--tokens", tokens.to_str().unwrap(),
    ]);
    let server = format!("http://{addr}");
    for service in ["", "mistnet.v1.FeatureUpload", "mistnet.v1.FrontDistribution", "mistnet.v1.ModelDistribution", "mistnet.v1.IngestStatus"] {
        let out = health(&["--server", &server, "--service", service]);
        assert!(out.status.success(), "{service:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("SERVING"));
    }
    let out = health(&["--server", &server, "--service", "no.such.Service"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown service"), "{}", String::from_utf8_lossy(&out.stderr));

    drop(cloud);
    let out = health(&["--server", &server, "--timeout", "2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unhealthy"), "{}", String::from_utf8_lossy(&out.stderr));
    // Plaintext off loopback is refused as every client refuses it (exit 1 too, with the reason).
    let out = health(&["--server", "http://10.255.255.1:50051"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("plaintext"), "{}", String::from_utf8_lossy(&out.stderr));
}

//! The edge trusts no server: a hostile (or intercepted) cloud on loopback answers GetFront with
//! a Front hash that is a path (`../../victim`, an absolute path). A real `mistnet-edge run` must
//! refuse it before it touches the file system, and nothing outside its cache is written or removed.

use std::process::{Command, Stdio};

use mistnet_e2e::binary;
use mistnet_proto::pb::{self, front_distribution_server::{FrontDistribution, FrontDistributionServer}};
use tonic::{Request, Response, Status};

/// A cloud that serves a Front under whatever "hash" it is given.
struct Hostile {
    front_hash: String,
}

#[tonic::async_trait]
impl FrontDistribution for Hostile {
    async fn get_front(&self, _req: Request<pb::GetFrontRequest>) -> Result<Response<pb::GetFrontResponse>, Status> {
        Ok(Response::new(pb::GetFrontResponse {
            model_yaml: "nc: 1\n".into(),
            cut: 4,
            weights: b"not a safetensors file".to_vec(),
            front_hash: self.front_hash.clone(),
            imgsz: 64,
            ..Default::default()
        }))
    }
}

#[test]
fn a_front_hash_that_is_a_path_is_refused_and_nothing_outside_the_cache_changes() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("precious.txt"), "keep me").unwrap();
    std::fs::write(dir.path().join("token"), "edge-token-0123456789abcdef\n").unwrap();
    let data = dir.path().join("data");
    mistnet::data::synth::generate(&mistnet::data::synth::SynthConfig { images: 20, imgsz: 64, seed: 1, edges: 1, private_size: None }, &data).unwrap();
    let cache = dir.path().join("cache").join("edge");

    for hash in ["../../victim".to_string(), victim.display().to_string(), format!("{}/../../victim", "ab".repeat(32))] {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let server = tonic::transport::Server::builder().add_service(FrontDistributionServer::new(Hostile { front_hash: hash.clone() }));
        rt.spawn(server.serve_with_incoming(incoming));

        let out = Command::new(binary("mistnet-edge"))
            .args(["run", "--server", &format!("http://{addr}"), "--edge", "edge-0", "--max-attempts", "1", "--token-file"])
            .arg(dir.path().join("token"))
            .arg("--data")
            .arg(data.join("private/edge-0.yaml"))
            .args(["--mechanism", "none", "--cache"])
            .arg(&cache)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{hash}: the edge must refuse");
        assert!(stderr.contains("malformed Front hash"), "{hash}: {stderr}");
        assert_eq!(std::fs::read_to_string(victim.join("precious.txt")).unwrap(), "keep me", "{hash}");
        assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 1, "{hash}: nothing written beside it");
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let name = entry.unwrap().file_name();
            assert!(["victim", "token", "data", "cache"].contains(&name.to_str().unwrap()), "{hash}: {name:?} appeared outside the cache");
        }
        drop(rt);
    }
}

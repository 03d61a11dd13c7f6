//! `mistnet-edge extract` through the real binary.

use std::path::PathBuf;
use std::process::Command;

fn repo(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
}

fn edge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mistnet-edge"))
}

const WEIGHTS: &str = "shared/tests/fixtures/yolov5/yolov5n_weights.safetensors";

#[test]
fn extract_writes_front_features_per_image() {
    let out = tempfile::tempdir().unwrap();
    let images = tempfile::tempdir().unwrap();
    for name in ["astronaut.png", "coffee.png"] {
        std::fs::copy(repo(&format!("shared/tests/fixtures/images/{name}")), images.path().join(name)).unwrap();
    }
    std::fs::write(images.path().join("notes.txt"), "not an image").unwrap();
    let status = edge()
        .args(["extract", "--model"])
        .arg(repo("models/yolov5n.yaml"))
        .arg("--weights")
        .arg(repo(WEIGHTS))
        .args(["--cut", "4", "--imgsz", "128"])
        .arg(images.path())
        .arg("--out")
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success());
    for stem in ["astronaut", "coffee"] {
        let bytes = std::fs::read(out.path().join(format!("{stem}.safetensors"))).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let f = st.tensor("features").unwrap();
        assert_eq!(f.shape(), &[1, 64, 16, 16]); // yolov5n layer 3 at 128 px
        assert_eq!(f.dtype(), safetensors::Dtype::F32);
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().as_ref().unwrap();
        assert_eq!(meta["cut"], "4");
        assert_eq!(meta["front_hash"].len(), 64);
    }
    let coffee = std::fs::read(out.path().join("coffee.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&coffee).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["original_size"], "300,200");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 2, "only the two images are written, no temp files");
}

#[test]
fn extract_refuses_bad_settings_with_clear_messages() {
    let out = tempfile::tempdir().unwrap();
    let image = repo("shared/tests/fixtures/images/astronaut.png");
    let run = |model: &str, extra: &[&str]| {
        let o = edge()
            .args(["extract", "--model", model, "--weights"])
            .arg(repo(WEIGHTS))
            .args(extra)
            .arg(&image)
            .arg("--out")
            .arg(out.path())
            .output()
            .unwrap();
        assert!(!o.status.success());
        String::from_utf8(o.stderr).unwrap()
    };
    let err = run("yolov5n", &["--cut", "7"]);
    assert!(err.contains("valid cuts are [1, 2, 3, 4, 5]"), "{err}");
    let err = run("yolov5n", &["--imgsz", "100"]);
    assert!(err.contains("multiple of 32"), "{err}");
    let err = run("yolov5s", &[]);
    assert!(err.contains("shape"), "{err}");
}

#[test]
fn extract_with_encoding_writes_wire_messages_the_codec_decodes() {
    use mistnet::codec::{DecodeLimits, Encoding, Mechanism, decode};
    let out = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        edge()
            .args(["extract", "--model", "yolov5n", "--weights"])
            .arg(repo(WEIGHTS))
            .args(["--imgsz", "64", "--cut", "2"])
            .args(extra)
            .arg(repo("shared/tests/fixtures/images/astronaut.png"))
            .arg("--out")
            .arg(out.path())
            .output()
            .unwrap()
    };
    let o = run(&["--encoding", "packed", "--mechanism", "sue", "--epsilon", "2", "--seed", "7"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(out.path().join("astronaut.mnf")).unwrap();
    let msg = decode(&bytes, &DecodeLimits::default()).unwrap();
    assert_eq!(msg.header.shape.dims(), [1, 32, 16, 16]); // yolov5n layer 1 at 64 px
    assert_eq!((msg.header.cut, msg.header.encoding), (2, Encoding::Packed));
    assert_eq!((msg.header.privacy.mechanism(), msg.header.privacy.epsilon()), (Mechanism::Sue, Some(2.0)));
    assert!(bytes.len() < 32 * 16 * 16 / 8 + 200);

    // A mechanism with noise needs an explicit ε; bad values are refused before any work.
    let o = run(&["--encoding", "packed"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("needs --epsilon"));
    let o = run(&["--encoding", "f16", "--mechanism", "rr", "--epsilon", "-1"]);
    assert!(!o.status.success());
    let o = run(&["--encoding", "bogus", "--mechanism", "none"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("bogus"));
}

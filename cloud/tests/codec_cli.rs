//! `mistnet-cloud inspect` and `mistnet-cloud decode` through the real binary, on messages
//! encoded here with the library.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mistnet::codec::{DecodeLimits, EncodeParams, Encoding, FrontHash, Mechanism, Privacy, decode, encode, seeded_rng};

const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn cloud(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mistnet-cloud")).args(args).output().expect("run mistnet-cloud")
}

/// A [1, 3, 5, 7] message (105 elements: not a multiple of 8) written to `dir/name`.
fn write_message(dir: &Path, name: &str, privacy: Privacy, encoding: Encoding) -> (PathBuf, Vec<u8>) {
    let values: Vec<f32> = (0..105).map(|i| if i % 3 == 0 { 1.0 } else { -1.0 }).collect();
    let params = EncodeParams { privacy, encoding, zstd_level: Some(3), cut: 4, front_hash: HASH.parse::<FrontHash>().unwrap() };
    let msg = encode(&values, &[1, 3, 5, 7], &params, &mut seeded_rng(11)).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, &msg).unwrap();
    (path, msg)
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn inspect_prints_header_and_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let (path, msg) = write_message(dir.path(), "a.mnf", Privacy::new(Mechanism::Sue, Some(2.0)).unwrap(), Encoding::Packed);
    let ones = decode(&msg, &DecodeLimits::default()).unwrap().bits.count_ones();

    let text = stdout(&cloud(&["inspect", path.to_str().unwrap()]));
    let bytes_line = format!("bytes              {}", msg.len());
    let ones_line = format!("ones               {ones} ");
    for want in ["[1, 3, 5, 7] (105 elements)", "mechanism          sue", "epsilon            2", HASH, &bytes_line, &ones_line] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }

    let json: serde_json::Value = serde_json::from_str(&stdout(&cloud(&["inspect", path.to_str().unwrap(), "--json"]))).unwrap();
    assert_eq!(json["shape"], serde_json::json!([1, 3, 5, 7]));
    assert_eq!(json["mechanism"], "sue");
    assert_eq!(json["epsilon"], 2.0);
    assert_eq!(json["encoding"], "packed");
    assert_eq!(json["cut"], 4);
    assert_eq!(json["front_hash"], HASH);
    assert_eq!(json["bytes"], msg.len());
    assert_eq!(json["ones"], ones);
    assert!((json["fraction_ones"].as_f64().unwrap() - ones as f64 / 105.0).abs() < 1e-12);
    assert!((json["compression_ratio"].as_f64().unwrap() - 420.0 / msg.len() as f64).abs() < 1e-12);

    let (none, _) = write_message(dir.path(), "b.mnf", Privacy::none(), Encoding::F16);
    let json: serde_json::Value = serde_json::from_str(&stdout(&cloud(&["inspect", none.to_str().unwrap(), "--json"]))).unwrap();
    assert_eq!(json["mechanism"], "none");
    assert_eq!(json["epsilon"], serde_json::Value::Null);
    assert_eq!(json["encoding"], "f16");
    assert_eq!(json["ones"], 35);
}

#[test]
fn decode_writes_the_bits_as_u8_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    for (i, encoding) in Encoding::ALL.into_iter().enumerate() {
        let privacy = Privacy::new(Mechanism::Oue, Some(1.0)).unwrap();
        let (path, msg) = write_message(dir.path(), &format!("m{i}.mnf"), privacy, encoding);
        let out = dir.path().join(format!("m{i}.safetensors"));
        stdout(&cloud(&["decode", path.to_str().unwrap(), "--out", out.to_str().unwrap()]));
        let bytes = std::fs::read(&out).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let bits = st.tensor("bits").unwrap();
        assert_eq!(bits.dtype(), safetensors::Dtype::U8);
        assert_eq!(bits.shape(), [1, 3, 5, 7]);
        assert_eq!(bits.data(), decode(&msg, &DecodeLimits::default()).unwrap().bits.to_elements().as_slice());
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().as_ref().unwrap();
        assert_eq!(meta["mechanism"], "oue");
        assert_eq!(meta["epsilon"], "1");
        assert_eq!(meta["front_hash"], HASH);
        assert_eq!(meta["cut"], "4");
    }
}

#[test]
fn malformed_or_missing_files_fail_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut msg) = write_message(dir.path(), "c.mnf", Privacy::none(), Encoding::Packed);
    let last = msg.len() - 1;
    msg[last] ^= 1;
    std::fs::write(&path, &msg).unwrap();
    let out = dir.path().join("c.safetensors");
    for args in [vec!["inspect", path.to_str().unwrap()], vec!["decode", path.to_str().unwrap(), "--out", out.to_str().unwrap()]] {
        let o = cloud(&args);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("c.mnf is not a valid MistNet feature message") && err.contains("checksum mismatch"), "{err}");
    }
    assert!(!out.exists());
    let o = cloud(&["inspect", dir.path().join("nope.mnf").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot read"));
}

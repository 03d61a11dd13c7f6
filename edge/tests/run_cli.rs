//! `mistnet-edge run` flags and its refusals before any network traffic. (Its uploads are tested
//! end to end with the cloud in the workspace's `tests/` crate, which also relies on this test
//! target making cargo build the `mistnet-edge` binary.)

use std::process::Command;

fn edge(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mistnet-edge")).args(args).output().expect("run mistnet-edge")
}

#[test]
fn help_lists_every_flag() {
    let out = edge(&["run", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in ["--server", "--edge", "--token-file", "--ca-cert", "--client-cert", "--client-key", "--insecure-plaintext", "--data", "--mechanism", "--epsilon", "--encoding", "--cache", "--max-attempts", "--max-rate"] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn plaintext_to_a_remote_server_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("t");
    std::fs::write(&token, "0123456789abcdef").unwrap();
    let out = edge(&["run", "--server", "http://192.0.2.1:50051", "--edge", "e", "--token-file", token.to_str().unwrap(), "--data", "x", "--epsilon", "2"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("refusing plaintext"), "{err}");
}

//! The Kubernetes manifests (deploy/k8s/): `deploy/k8s/validate.sh` renders every overlay with
//! `kubectl kustomize`, validates it offline against the Kubernetes schemas (kubernetes-validate
//! --strict, installed from PyPI into target/k8s-venv the first time) and checks with check.py
//! that each overlay holds what the deployment needs. This test runs it and asserts that it passes
//! naming every overlay, then runs it on two broken copies of deploy/k8s (a misspelt field; the
//! trainer's GPU request removed) and asserts that each fails, naming what is wrong, so the
//! validation is known to be able to fail. Without `kubectl` it prints why it is skipped and passes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Every overlay validate.sh must render and check.py must pass.
const OVERLAYS: [&str; 7] = ["dev", "dev/prepare", "dev/train", "dev/files", "production", "production/train", "production/files"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the repository root").to_path_buf()
}

/// The venv validate.sh installs kubernetes-validate into, shared by the broken copies.
fn venv() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target")).join("k8s-venv")
}

/// Why the test cannot run here, if it cannot.
fn no_kubectl() -> Option<String> {
    match Command::new("kubectl").args(["version", "--client"]).output() {
        Err(e) => Some(format!("cannot run `kubectl`: {e}")),
        Ok(out) if !out.status.success() => Some(format!("`kubectl version --client` failed: {}", String::from_utf8_lossy(&out.stderr).trim())),
        Ok(_) => None,
    }
}

/// `bash DIR/validate.sh` of the deploy/k8s copy at `dir`, with the shared venv.
fn validate(dir: &Path) -> (Output, String) {
    let out = Command::new("bash").arg(dir.join("validate.sh")).env("MISTNET_K8S_VENV", venv()).output().expect("run bash");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out, text)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A copy of deploy/k8s with `file`'s `from` replaced by `to` (which must occur in it).
fn broken_copy(tmp: &Path, file: &str, from: &str, to: &str) -> PathBuf {
    let dir = tmp.join(file.replace('/', "_"));
    copy_dir(&root().join("deploy/k8s"), &dir);
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} no longer holds {from:?}: update this test");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    dir
}

#[test]
fn every_overlay_renders_validates_and_holds_the_deployment() {
    if let Some(why) = no_kubectl() {
        let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("k8s_manifests: skipped: no kubectl ({why})\n").as_bytes());
        return;
    }
    let started = std::time::Instant::now();
    let (out, text) = validate(&root().join("deploy/k8s"));
    assert!(out.status.success(), "deploy/k8s/validate.sh failed:\n{text}");
    for overlay in OVERLAYS {
        let line = |tail: &str| text.lines().any(|l| l.starts_with(&format!("ok   {overlay}: ")) && l.contains(tail));
        assert!(line("valid against Kubernetes"), "{overlay} not validated against the schemas:\n{text}");
        assert!(line("have what the deployment needs"), "{overlay} not checked by check.py:\n{text}");
    }
    eprintln!("k8s_manifests: {} overlays valid in {:.1} s", OVERLAYS.len(), started.elapsed().as_secs_f64());

    let tmp = tempfile::tempdir().unwrap();
    // A misspelt field: the strict schema validation must refuse it, naming the field.
    let typo = broken_copy(tmp.path(), "base/ingest.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesytem: true");
    let (out, text) = validate(&typo);
    assert!(!out.status.success(), "a misspelt field passed validation:\n{text}");
    assert!(text.contains("'readOnlyRootFilesytem' was unexpected") && text.contains("FAIL production: not valid"), "{text}");
    // Schema-valid but without the GPU: check.py must refuse it.
    let no_gpu = broken_copy(tmp.path(), "overlays/production/train/kustomization.yaml", "    nvidia.com/gpu: 1", "    cpu: \"1\"");
    let (out, text) = validate(&no_gpu);
    assert!(!out.status.success(), "a trainer without a GPU passed the production checks:\n{text}");
    assert!(text.contains("FAIL production/train: nvidia.com/gpu: 1 on the train step alone"), "{text}");
    eprintln!("k8s_manifests: done in {:.1} s (the two broken copies refused)", started.elapsed().as_secs_f64());
}

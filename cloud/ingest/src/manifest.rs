//! What the ingest service serves and checks samples against: the [`FrontManifest`] that `export`
//! writes to `manifest.json`, and the Front file beside it. Plain data, serde and SHA-256: no
//! model code and no candle, so the ingest path never builds a network.
//!
//! `serve --front DIR` reads both with [`ServedFront::read`], which recomputes the Front hash from
//! the file's bytes; `serve --weights` gets the same manifest from the function `export` uses.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use mistnet_codec::{FrontHash, FrontHasher, Shape};
use mistnet_proto::pb;
use serde::{Deserialize, Serialize};

use crate::validate::Expected;

/// The manifest's file name in `export`'s output directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Everything ingest needs to know about the served model; the fields of `manifest.json` that
/// `export` writes besides `binarized_cut` and `model`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrontManifest {
    /// The Ultralytics model YAML (the whole model; edges build modules `0..cut-1`).
    pub model_yaml: String,
    /// The model's class names, index = class.
    pub names: Vec<String>,
    /// Number of classes: `names.len()`. A box's class must be below it.
    pub nc: usize,
    /// Square letterbox size in pixels that edges must use.
    pub imgsz: u32,
    /// Split point (Plato's convention: edges run modules `0..cut-1`).
    pub cut: usize,
    /// Stride of the tensor that crosses, relative to the letterboxed image.
    pub stride: usize,
    /// Shape of every feature message: `[1, C, imgsz/stride, imgsz/stride]`.
    pub feature_shape: [usize; 4],
    /// The Front's weights: layers `0..cut-1`, f32, exactly the tensors the Front hash covers.
    pub front: FileEntry,
}

/// What `export` writes to `manifest.json`: the [`FrontManifest`] ingest serves, whether the Back
/// expects binarized features, and the deployable model `GetModel` serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportManifest {
    #[serde(flatten)]
    pub ingest: FrontManifest,
    /// The cut whose binarized Front features the Back was trained on (a MistNet model), or none
    /// (trained on images).
    pub binarized_cut: Option<usize>,
    /// The deployable model (every layer; `mistnet-edge detect`).
    pub model: FileEntry,
}

impl ExportManifest {
    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {} (give the output directory of `mistnet-cloud export`)", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not an export manifest", path.display()))
    }

    /// The deployable model's path: its file name must name a file in `dir` itself.
    pub fn model_path(&self, dir: &Path) -> Result<PathBuf> {
        file_in(dir, &self.model.file).context("model.file")
    }
}

/// `dir/name`, where `name` must be a plain file name (no directory, no `..`).
fn file_in(dir: &Path, name: &str) -> Result<PathBuf> {
    let file = Path::new(name);
    ensure!(
        file.components().count() == 1 && matches!(file.components().next(), Some(std::path::Component::Normal(_))),
        "{name:?} must be a file name in the same directory as {MANIFEST_FILE}"
    );
    Ok(dir.join(file))
}

/// A safetensors file of the export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name, relative to the manifest's directory.
    pub file: String,
    /// SHA-256 of the file's tensors (names, shapes, f32 values), hex; for the Front, the Front
    /// hash (docs/wire-format.md, "The Front hash").
    pub sha256: String,
    pub tensors: usize,
}

impl FrontManifest {
    /// Checks that the fields agree with one another.
    pub fn check(&self) -> Result<()> {
        ensure!(self.nc >= 1 && self.nc == self.names.len(), "nc = {} but {} class names", self.nc, self.names.len());
        ensure!(self.cut >= 1 && u16::try_from(self.cut).is_ok(), "cut {} is not a valid cut", self.cut);
        ensure!(self.stride >= 1 && self.imgsz > 0 && (self.imgsz as usize).is_multiple_of(self.stride), "imgsz {} is not a positive multiple of the stride {}", self.imgsz, self.stride);
        let side = self.imgsz as usize / self.stride;
        ensure!(
            self.feature_shape[0] == 1 && self.feature_shape[1] >= 1 && self.feature_shape[2..] == [side, side],
            "feature shape {:?} is not [1, C, {side}, {side}] (imgsz {} / stride {})",
            self.feature_shape,
            self.imgsz,
            self.stride
        );
        self.front.sha256.parse::<FrontHash>().map_err(|e| anyhow::anyhow!("front.sha256: {e}"))?;
        Ok(())
    }
}

/// A manifest and the Front file's bytes, checked against each other.
#[derive(Debug, Clone)]
pub struct ServedFront {
    pub manifest: FrontManifest,
    /// The Front's safetensors file, byte for byte what `GetFront` hands out.
    pub weights: Vec<u8>,
}

impl ServedFront {
    /// Pairs a manifest with the Front's bytes after checking that they hash to its Front hash.
    pub fn new(manifest: FrontManifest, weights: Vec<u8>) -> Result<Self> {
        manifest.check()?;
        let (hash, tensors) = front_hash(&weights, manifest.cut)?;
        ensure!(
            hash == manifest.front.sha256,
            "the Front's tensors hash to {hash}, the manifest says {}: the file does not belong to this manifest",
            manifest.front.sha256
        );
        ensure!(tensors == manifest.front.tensors, "the Front file holds {tensors} tensors, the manifest says {}", manifest.front.tensors);
        Ok(Self { manifest, weights })
    }

    /// Reads `dir/manifest.json` (as `export` writes it) and the Front file it names.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {} (give the output directory of `mistnet-cloud export`)", path.display()))?;
        let manifest: FrontManifest = serde_json::from_str(&text).with_context(|| format!("{} is not an export manifest", path.display()))?;
        let front = file_in(dir, &manifest.front.file).with_context(|| format!("{}: front.file", path.display()))?;
        let weights = std::fs::read(&front).with_context(|| format!("cannot read {}", front.display()))?;
        Self::new(manifest, weights).with_context(|| format!("{} and {}", path.display(), front.display()))
    }

    /// What every sample must match.
    pub fn expected(&self) -> Result<Expected> {
        let m = &self.manifest;
        Ok(Expected {
            front_hash: m.front.sha256.parse::<FrontHash>()?,
            cut: u16::try_from(m.cut).context("the cut is too large")?,
            shape: Shape::from_dims(&m.feature_shape)?,
            nc: m.nc,
        })
    }

    /// The `GetFront` answer.
    pub fn response(&self) -> pb::GetFrontResponse {
        let m = &self.manifest;
        pb::GetFrontResponse {
            model_yaml: m.model_yaml.clone(),
            cut: m.cut as u32,
            weights: self.weights.clone(),
            front_hash: m.front.sha256.clone(),
            imgsz: m.imgsz,
            names: m.names.clone(),
        }
    }
}

/// The Front hash of a safetensors file holding only the Front's tensors at `cut`, and how many
/// tensors it holds: [`tensors_hash`] where every tensor must be named `model.{i}.…` with `i < cut`.
pub fn front_hash(safetensors_bytes: &[u8], cut: usize) -> Result<(String, usize)> {
    tensors_hash(safetensors_bytes, "the Front file", |name| {
        let layer = name.strip_prefix("model.").and_then(|rest| rest.split('.').next()).and_then(|i| i.parse::<usize>().ok());
        ensure!(layer.is_some_and(|i| i < cut), "tensor {name} is not a Front tensor at cut {cut} (model.{{i}}. with i < {cut})");
        Ok(())
    })
}

/// SHA-256 over the f32 tensors of a safetensors file in byte order of their names, each as
/// `u64 LE name length, name, u64 LE rank, u64 LE dims, f32 LE values` (docs/wire-format.md, "The
/// Front hash"; `mistnet::model::weights::hash_tensors` computes the same from tensors), and how
/// many tensors it holds. Every tensor must be f32 and pass `check`; `what` names the file in errors.
pub fn tensors_hash(safetensors_bytes: &[u8], what: &str, check: impl Fn(&str) -> Result<()>) -> Result<(String, usize)> {
    let file = safetensors::SafeTensors::deserialize(safetensors_bytes).with_context(|| format!("{what} is not a safetensors file"))?;
    let mut tensors = file.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, view) in &tensors {
        check(name)?;
        if view.dtype() != safetensors::Dtype::F32 {
            bail!("tensor {name} of {what} is {:?}; only f32 tensors are hashed", view.dtype());
        }
    }
    // safetensors stores little-endian: the data are the f32 LE bytes the hash covers.
    let mut h = FrontHasher::default();
    for (name, view) in &tensors {
        h.add(name, view.shape(), view.data());
    }
    Ok((h.finish().to_string(), tensors.len()))
}

//! The deployable detector: one safetensors file holding every layer's weights, with a
//! [`DeployMeta`] JSON under the metadata key [`META_KEY`] that says how to run it.
//!
//! A model trained without a split (`mistnet-cloud pretrain`) runs as a whole on letterboxed
//! images. A MistNet model (`mistnet-cloud train`) is "Front + Back" where the Back learned on
//! the **binarized** output of layer `cut − 1`; its metadata says `binarized_cut: cut`, and the
//! [`Detector`] then runs the Front, binarizes (`x > 0 → 1`, no randomized response: MistNet's
//! test path) and runs the Back. `mistnet-edge detect` and `mistnet-cloud val` both use it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::batch_norm::BatchNormConfig;
use super::split::{Front, load_back};
use super::weights::ParamStore;
use super::{LayerSpec, ModelConfig, ModelError, Yolo};

/// The safetensors metadata key holding the [`DeployMeta`] JSON.
pub const META_KEY: &str = "mistnet";

/// How to run a deployable model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployMeta {
    /// The Ultralytics model YAML the weights belong to (its `nc` is replaced by `names.len()`).
    pub model_yaml: String,
    /// Class names, index = class.
    pub names: Vec<String>,
    /// The square letterbox size the model was trained at.
    pub imgsz: u32,
    /// `Some(cut)`: the Back was trained on the binarized output of layer `cut − 1` and the
    /// runner binarizes there. `None`: a whole model trained on images.
    pub binarized_cut: Option<usize>,
}

impl DeployMeta {
    /// The resolved layers of the model, with `nc` set to the number of class names.
    pub fn specs(&self) -> Result<Vec<LayerSpec>, ModelError> {
        specs_for(&self.model_yaml, self.names.len())
    }

    /// Reads the metadata of a deployable file.
    pub fn read(path: &Path) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::Weights(format!("cannot read {}: {e}", path.display())))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| ModelError::Weights(format!("{} is not a safetensors file: {e}", path.display())))?;
        let json = header.metadata().as_ref().and_then(|m| m.get(META_KEY)).ok_or_else(|| {
            ModelError::Weights(format!(
                "{} has no `{META_KEY}` metadata: not a deployable model (write one with `mistnet-cloud pretrain`, `train` or `export`)",
                path.display()
            ))
        })?;
        serde_json::from_str(json).map_err(|e| ModelError::Weights(format!("{}: metadata `{META_KEY}` is malformed: {e}", path.display())))
    }
}

/// The layers of `model_yaml` with `nc` classes.
pub fn specs_for(model_yaml: &str, nc: usize) -> Result<Vec<LayerSpec>, ModelError> {
    let mut config = ModelConfig::from_yaml(model_yaml)?;
    if nc == 0 {
        return Err(ModelError::Config("a model needs at least one class".into()));
    }
    config.nc = nc;
    config.layers()
}

/// Writes `tensors` with `meta` as a deployable safetensors file, atomically (temporary file,
/// fsync, rename).
pub fn save_deployable(tensors: &BTreeMap<String, Tensor>, meta: &DeployMeta, path: &Path) -> Result<(), ModelError> {
    let json = serde_json::to_string(meta).map_err(|e| ModelError::Weights(format!("cannot serialize the metadata: {e}")))?;
    super::weights::save_tensors_with_metadata(tensors, Some(HashMap::from([(META_KEY.to_string(), json)])), path)
}

/// A deployable model, ready to predict.
#[derive(Debug, Clone)]
pub struct Detector {
    meta: DeployMeta,
    front: Option<Front>,
    /// The whole model (`front` is `None`) or the Back.
    back: Yolo,
    path: PathBuf,
}

impl Detector {
    /// Loads a deployable file; every tensor in it must belong to the model.
    pub fn load(path: &Path, device: &Device) -> Result<Self, ModelError> {
        let meta = DeployMeta::read(path)?;
        let specs = meta.specs()?;
        let store = ParamStore::open(&[path])?;
        let (front, back) = match meta.binarized_cut {
            Some(cut) => (Some(Front::load(&specs, cut, &store, device)?), load_back(&specs, cut, &store, device)?),
            None => (None, Yolo::load(store.var_builder(device), &specs, 0, BatchNormConfig::default())?),
        };
        store.ensure_all_used().map_err(|e| ModelError::Weights(format!("{}: {e}", path.display())))?;
        Ok(Self { meta, front, back, path: path.to_path_buf() })
    }

    pub fn meta(&self) -> &DeployMeta {
        &self.meta
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Decoded predictions `[bs, N, nc + 5]` (xywh in input pixels, objectness, class scores) for
    /// letterboxed images `[bs, 3, H, W]` with values in 0..1.
    pub fn predict(&self, images: &Tensor) -> Result<Tensor, ModelError> {
        match &self.front {
            Some(front) => self.predict_back(&binarize(&front.forward(images)?)?),
            None => self.predict_back(images),
        }
    }

    /// The Front of a MistNet model; `None` for a whole model.
    pub fn front(&self) -> Option<&Front> {
        self.front.as_ref()
    }

    /// Decoded predictions as [`Detector::predict`]'s, from what the Back takes: the 0/1
    /// features of a MistNet model (as the cloud receives them, possibly with randomized
    /// response), or the images of a whole model.
    pub fn predict_back(&self, input: &Tensor) -> Result<Tensor, ModelError> {
        let out = self.back.forward_t(input, false)?;
        Ok(self.back.detect().decode(&out.raw)?)
    }
}

/// MistNet's binarization as f32 0/1: `x > 0 → 1`.
pub fn binarize(features: &Tensor) -> candle_core::Result<Tensor> {
    features.gt(0f32)?.to_dtype(DType::F32)
}

/// The YAML text of a model config file, or of an embedded config (`yolov5n` … `yolov5x`).
pub fn model_yaml(path_or_name: &str) -> Result<String, ModelError> {
    let path = Path::new(path_or_name);
    if path.exists() {
        return std::fs::read_to_string(path).map_err(|e| ModelError::Config(format!("cannot read {}: {e}", path.display())));
    }
    // Checks the name the same way ModelConfig::load does.
    ModelConfig::load(path_or_name)?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or(path_or_name);
    super::config::EMBEDDED_CONFIGS
        .iter()
        .find(|(name, _)| *name == stem)
        .map(|(_, text)| text.to_string())
        .ok_or_else(|| ModelError::Config(format!("model config {path_or_name} not found")))
}

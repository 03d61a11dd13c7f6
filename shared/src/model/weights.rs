//! Weights I/O: a parameter store over safetensors files (one or several shards) that hands
//! tensors to the layers by their Ultralytics state-dict names, and writes them back.
//!
//! Every tensor a model asks for becomes a candle [`Var`], so a loaded model can be trained and
//! its BatchNorm running statistics updated in place; the store then saves exactly what the
//! model holds. Files are memory-mapped and read lazily: building the edge Front from a full
//! checkpoint reads only the Front's tensors. `*.num_batches_tracked` (PyTorch bookkeeping that
//! YOLOv5 never reads) is ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use crate::codec::{FrontHash, FrontHasher};

use super::ModelError;

/// Suffixes of tensors that are state but not trainable parameters.
pub const BUFFER_SUFFIXES: [&str; 3] = [".running_mean", ".running_var", ".anchors"];
const IGNORED_SUFFIX: &str = ".num_batches_tracked";

#[derive(Default)]
struct Inner {
    /// Every tensor handed out so far, by name.
    vars: BTreeMap<String, Var>,
    /// Names that were created by initialisation rather than read from a file.
    initialised: BTreeSet<String>,
    /// Draws the initial values of a fresh store, in the order the model asks for its tensors.
    rng: Option<ChaCha8Rng>,
}

/// Named tensors, read lazily from safetensors shards and created on demand.
#[derive(Clone)]
pub struct ParamStore {
    files: Option<Arc<MmapedSafetensors>>,
    file_names: BTreeSet<String>,
    /// Whether a tensor the files lack may be initialised (a fresh model) or is an error.
    allow_init: bool,
    inner: Arc<Mutex<Inner>>,
}

impl ParamStore {
    /// A store with no files: every tensor is initialised as PyTorch/Ultralytics would, from
    /// `seed`, so that the same model built from the same seed starts from the same weights.
    pub fn fresh(seed: u64) -> Self {
        let inner = Inner { rng: Some(ChaCha8Rng::seed_from_u64(seed)), ..Inner::default() };
        Self { files: None, file_names: BTreeSet::new(), allow_init: true, inner: Arc::new(Mutex::new(inner)) }
    }

    /// A store over one or several safetensors files; a tensor no file holds is an error.
    pub fn open<P: AsRef<Path>>(paths: &[P]) -> Result<Self, ModelError> {
        if paths.is_empty() {
            return Err(ModelError::Weights("no weights file given".into()));
        }
        let mut file_names = BTreeSet::new();
        for p in paths {
            let p = p.as_ref();
            // SAFETY: the files are only read; the project replaces weight files atomically (rename), never in place.
            let file = unsafe { MmapedSafetensors::new(p) }
                .map_err(|e| ModelError::Weights(format!("{} is not a readable safetensors file: {e}", p.display())))?;
            for (name, _) in file.tensors() {
                if !file_names.insert(name.clone()) {
                    return Err(ModelError::Weights(format!("tensor {name} appears in more than one file (again in {})", p.display())));
                }
            }
        }
        // SAFETY: as above.
        let files = unsafe { MmapedSafetensors::multi(paths) }.map_err(|e| ModelError::Weights(e.to_string()))?;
        Ok(Self { files: Some(Arc::new(files)), file_names, allow_init: false, inner: Arc::default() })
    }

    /// A store over tensors held in memory (a federated round's global model), each copied into
    /// its own variable so that training the model leaves `tensors` as they were; a tensor the
    /// model asks for that `tensors` lacks is an error. The variables live on `device`.
    pub fn from_tensors(tensors: &BTreeMap<String, Tensor>, device: &Device) -> Result<Self, ModelError> {
        let vars = tensors.iter().map(|(k, v)| Ok((k.clone(), Var::from_tensor(&v.to_device(device)?.copy()?)?))).collect::<Result<_, ModelError>>()?;
        let inner = Inner { vars, ..Inner::default() };
        Ok(Self { files: None, file_names: BTreeSet::new(), allow_init: false, inner: Arc::new(Mutex::new(inner)) })
    }

    /// A `VarBuilder` rooted at the state-dict root (the caller adds `model`).
    pub fn var_builder(&self, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), DType::F32, device.clone())
    }

    /// Every tensor handed out, by name.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        let inner = self.inner.lock().expect("param store lock");
        inner.vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect()
    }

    /// Trainable parameters (everything but BatchNorm statistics and anchors), by name.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        let inner = self.inner.lock().expect("param store lock");
        inner
            .vars
            .iter()
            .filter(|(k, _)| !BUFFER_SUFFIXES.iter().any(|s| k.ends_with(s)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Tensors in the files that no layer asked for.
    pub fn unused(&self) -> Vec<String> {
        let inner = self.inner.lock().expect("param store lock");
        self.file_names
            .iter()
            .filter(|k| !k.ends_with(IGNORED_SUFFIX) && !inner.vars.contains_key(*k))
            .cloned()
            .collect()
    }

    /// Fails if the files hold tensors the model does not have (a config/weights mismatch).
    pub fn ensure_all_used(&self) -> Result<(), ModelError> {
        let unused = self.unused();
        if unused.is_empty() {
            return Ok(());
        }
        let shown: Vec<_> = unused.iter().take(8).cloned().collect();
        Err(ModelError::Weights(format!(
            "{} tensors in the weights do not belong to this model config: {}{}",
            unused.len(),
            shown.join(", "),
            if unused.len() > shown.len() { ", ..." } else { "" }
        )))
    }

    /// SHA-256 over the handed-out tensors whose names start with one of `prefixes`
    /// (name, shape and little-endian f32 bytes, in name order), as lowercase hex.
    pub fn hash(&self, prefixes: &[String]) -> Result<FrontHash, ModelError> {
        hash_tensors(self.tensors().iter().filter(|(k, _)| prefixes.iter().any(|p| k.starts_with(p.as_str()))))
    }

    /// Writes every handed-out tensor to one safetensors file, atomically.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        save_tensors(&self.tensors(), path)
    }
}

/// SHA-256 of named tensors (name, dims, f32 LE bytes), in the iteration order given: the Front
/// hash for the Front's tensors.
pub fn hash_tensors<'a>(tensors: impl Iterator<Item = (&'a String, &'a Tensor)>) -> Result<FrontHash, ModelError> {
    let mut h = FrontHasher::default();
    for (name, t) in tensors {
        let values = t.to_dtype(DType::F32).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f32>())?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        h.add(name, t.dims(), &bytes);
    }
    Ok(h.finish())
}

/// Writes named tensors to `path` through a temporary file, fsync and rename.
pub fn save_tensors(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<(), ModelError> {
    save_tensors_with_metadata(tensors, None, path)
}

/// [`save_tensors`] with safetensors header metadata.
pub fn save_tensors_with_metadata(
    tensors: &BTreeMap<String, Tensor>,
    metadata: Option<std::collections::HashMap<String, String>>,
    path: &Path,
) -> Result<(), ModelError> {
    let tmp: PathBuf = path.with_extension("safetensors.tmp");
    let io = |e: std::io::Error| ModelError::Weights(format!("cannot write {}: {e}", path.display()));
    safetensors::serialize_to_file(tensors.iter(), metadata, &tmp).map_err(|e| ModelError::Weights(format!("cannot write {}: {e}", tmp.display())))?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

/// Values for a tensor of shape `s` as `init` asks, drawn from `rng` (candle's own CPU generator
/// cannot be seeded). Only the kinds the models use are drawn here; others are an error.
fn initial_values(init: Init, s: &Shape, rng: &mut ChaCha8Rng, dev: &Device) -> candle_core::Result<Tensor> {
    let n = s.elem_count();
    let values: Vec<f32> = match init {
        Init::Const(v) => vec![v as f32; n],
        Init::Uniform { lo, up } => (0..n).map(|_| (lo + (up - lo) * rng.random::<f64>()) as f32).collect(),
        Init::Randn { mean, stdev } => {
            let normal = Normal::new(mean, stdev).map_err(|e| candle_core::Error::Msg(format!("initialisation {init:?}: {e}")))?;
            (0..n).map(|_| normal.sample(rng) as f32).collect()
        }
        other => candle_core::bail!("initialisation {other:?} is not supported by the parameter store"),
    };
    Tensor::from_vec(values, s.clone(), dev)
}

impl SimpleBackend for ParamStore {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let mut inner = self.inner.lock().expect("param store lock");
        if let Some(v) = inner.vars.get(name) {
            if v.shape() != &s {
                candle_core::bail!("tensor {name} has shape {:?}, the model expects {:?}", v.shape(), s);
            }
            return Ok(v.as_tensor().clone());
        }
        let var = if self.file_names.contains(name) {
            let files = self.files.as_ref().expect("file names come from files");
            let t = files.load(name, dev)?;
            if t.shape() != &s {
                candle_core::bail!("tensor {name} in the weights has shape {:?}, the model config expects {:?}", t.shape(), s);
            }
            Var::from_tensor(&t.to_dtype(dtype)?)?
        } else if self.allow_init {
            inner.initialised.insert(name.to_string());
            let rng = inner.rng.as_mut().expect("a store that initialises has an rng");
            Var::from_tensor(&initial_values(h, &s, rng, dev)?.to_dtype(dtype)?)?
        } else {
            candle_core::bail!("the weights have no tensor {name} (shape {:?})", s.dims());
        };
        let t = var.as_tensor().clone();
        inner.vars.insert(name.to_string(), var);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if let Some(v) = self.inner.lock().expect("param store lock").vars.get(name) {
            return Ok(v.as_tensor().clone());
        }
        match &self.files {
            Some(f) if self.file_names.contains(name) => {
                let t = f.load(name, dev)?.to_dtype(dtype)?;
                let var = Var::from_tensor(&t)?;
                self.inner.lock().expect("param store lock").vars.insert(name.to_string(), var.clone());
                Ok(var.as_tensor().clone())
            }
            _ => candle_core::bail!("the weights have no tensor {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.file_names.contains(name) || self.inner.lock().expect("param store lock").vars.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_conv(seed: u64) -> Vec<f32> {
        let store = ParamStore::fresh(seed);
        let init = Init::Uniform { lo: -0.5, up: 0.5 };
        let t = store.var_builder(&Device::Cpu).get_with_hints((4, 3, 3, 3), "model.0.conv.weight", init).unwrap();
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// A fresh store draws the same initial weights from the same seed, other ones from another,
    /// within the requested bounds.
    #[test]
    fn fresh_initialisation_is_seeded() {
        assert_eq!(first_conv(7), first_conv(7));
        assert_ne!(first_conv(7), first_conv(8));
        assert!(first_conv(7).iter().all(|v| (-0.5..0.5).contains(v)));
    }
}

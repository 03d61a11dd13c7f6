//! The MistNet split: an edge **Front** (layers `0..cut`, inference only, BatchNorm folded) and
//! a cloud **Back** (layers `cut..`, trainable). [`UnfoldedFront`] is the same Front with its
//! BatchNorm kept (eval mode) in candle ops, differentiable with respect to the image: what a
//! model-inversion attacker runs.
//!
//! `cut` follows Plato's convention: the edge runs modules `0..cut-1` and sends the output of
//! module `cut − 1`. A cut is valid when that output is the only tensor the Back needs from the
//! Front, so exactly one tensor crosses the network. For YOLOv5 the valid cuts are 1..=5 (layer 4
//! is also the neck's skip input, so cut 5 still sends one tensor; cut 6 would need layers 4 and 5).

use candle_core::{Device, Result as CandleResult, Tensor};
use candle_nn::VarBuilder;

use crate::codec::FrontHash;

use super::batch_norm::BatchNormConfig;
use super::c3::{C3, FoldedC3};
use super::config::{INPUT, LayerKind, LayerSpec};
use super::conv::{Conv, ConvShape, FoldedConv};
use super::direct::Precision;
use super::kernels::on_cpu_f32;
use super::planes::{self, Activation, Planes};
use super::sppf::{FoldedSppf, Sppf};
use super::upsample::upsample_nearest;
use super::weights::ParamStore;
#[cfg(feature = "train")]
use super::yolo::Layer;
use super::yolo::{Yolo, run_graph};
use super::ModelError;

/// The default cut of Plato's and Sedna's MistNet.
pub const DEFAULT_CUT: usize = 4;

/// Cuts at which exactly one tensor (the output of layer `cut − 1`) crosses from Front to Back.
pub fn valid_cuts(specs: &[LayerSpec]) -> Vec<usize> {
    (1..specs.len())
        .filter(|&cut| {
            let front_ok = specs[..cut].iter().all(|s| !matches!(s.kind, LayerKind::Detect { .. }));
            let crossing = specs[cut..].iter().flat_map(|s| s.from.iter()).all(|&j| j != INPUT && (j >= cut || j == cut - 1));
            front_ok && crossing
        })
        .collect()
}

/// Checks `cut` against the config, with a message that lists the valid cuts.
pub fn check_cut(specs: &[LayerSpec], cut: usize) -> Result<(), ModelError> {
    let valid = valid_cuts(specs);
    if valid.contains(&cut) {
        Ok(())
    } else {
        Err(ModelError::Cut { cut, valid })
    }
}

/// Names (prefixes) of the state-dict entries that belong to the Front at `cut`.
pub fn front_prefixes(cut: usize) -> Vec<String> {
    (0..cut).map(|i| format!("model.{i}.")).collect()
}

/// Writes a Front-only weights file (layers `0..cut`) of a model freshly initialised from `seed`:
/// what the speed benchmarks load, as no trained weights can be downloaded.
pub fn save_fresh_front(specs: &[LayerSpec], cut: usize, seed: u64, path: &std::path::Path) -> Result<(), ModelError> {
    check_cut(specs, cut)?;
    let store = ParamStore::fresh(seed);
    Yolo::load(store.var_builder(&Device::Cpu), specs, 0, BatchNormConfig::default())?;
    let prefixes = front_prefixes(cut);
    let front: std::collections::BTreeMap<_, _> =
        store.tensors().into_iter().filter(|(k, _)| prefixes.iter().any(|p| k.starts_with(p))).collect();
    super::weights::save_tensors(&front, path)
}

/// A Front layer with BatchNorm folded away.
#[derive(Debug, Clone)]
enum FrontLayer {
    Conv(FoldedConv),
    C3(FoldedC3),
    Sppf(FoldedSppf),
    Upsample(usize),
    Concat,
}

/// The edge part of the model: layers `0..cut`, inference only.
#[derive(Debug, Clone)]
pub struct Front {
    specs: Vec<LayerSpec>,
    layers: Vec<FrontLayer>,
    cut: usize,
    hash: FrontHash,
    precision: Precision,
}

impl Front {
    /// Builds the folded Front from a store that needs to hold only the Front's tensors.
    pub fn load(specs: &[LayerSpec], cut: usize, store: &ParamStore, device: &Device) -> Result<Self, ModelError> {
        check_cut(specs, cut)?;
        let vb = store.var_builder(device).pp("model");
        let bn = BatchNormConfig::default();
        let layers = specs[..cut]
            .iter()
            .map(|s| fold_layer(vb.pp(s.index), &s.kind, bn))
            .collect::<CandleResult<Vec<_>>>()?;
        let hash = store.hash(&front_prefixes(cut))?;
        Ok(Self { specs: specs[..cut].to_vec(), layers, cut, hash, precision: Precision::F32 })
    }

    /// Runs the CPU path's convolutions in `precision` from now on; an error where this CPU
    /// lacks its instructions. f32 always works (without AVX-512, as im2col + GEMM).
    pub fn set_precision(&mut self, precision: Precision) -> Result<(), ModelError> {
        if precision != Precision::F32 && !precision.available() {
            return Err(ModelError::Config(format!("precision {precision} needs a CPU with AVX512-BF16; this one has none")));
        }
        self.precision = precision;
        Ok(())
    }

    pub fn cut(&self) -> usize {
        self.cut
    }

    /// SHA-256 of the unfolded Front tensors it was built from: names, shapes and values
    /// (`docs/wire-format.md` gives the byte recipe). Every wire message carries it.
    pub fn hash(&self) -> FrontHash {
        self.hash
    }

    /// Channels of the tensor sent to the cloud.
    pub fn out_channels(&self) -> usize {
        self.specs[self.cut - 1].c_out
    }

    /// Stride of the tensor sent to the cloud relative to the input image.
    pub fn out_stride(&self) -> usize {
        self.specs[self.cut - 1].stride
    }

    /// Runs layers `0..cut` on an image batch `[bs, 3, H, W]` (values in 0..1). On the CPU, f32
    /// batches take the fused path ([`planes`]), one image at a time; elsewhere candle's ops.
    pub fn forward(&self, image: &Tensor) -> CandleResult<Tensor> {
        if on_cpu_f32(image) {
            return self.forward_fused(image);
        }
        self.forward_candle(image)
    }

    /// The same computation with candle's ops on any device.
    pub fn forward_candle(&self, image: &Tensor) -> CandleResult<Tensor> {
        let last = self.cut - 1;
        let mut outs = run_graph(&self.specs, 0, image.clone(), false, |i, xs| match &self.layers[i] {
            FrontLayer::Conv(m) => m.forward(xs[0]),
            FrontLayer::C3(m) => m.forward(xs[0]),
            FrontLayer::Sppf(m) => m.forward(xs[0]),
            FrontLayer::Upsample(s) => upsample_nearest(xs[0], *s),
            FrontLayer::Concat => Tensor::cat(xs, 1),
        })?;
        Ok(outs[last].take().expect("the last Front layer's output is kept"))
    }

    fn forward_fused(&self, image: &Tensor) -> CandleResult<Tensor> {
        let (bs, c, h, w) = image.dims4()?;
        let last = self.cut - 1;
        let mut results = Vec::with_capacity(bs);
        for b in 0..bs {
            let x = Activation::F32(Planes::new(c, h, w, image.get(b)?.flatten_all()?.to_vec1()?));
            let mut outs = run_graph(&self.specs, 0, x, false, |i, xs| {
                Ok(match &self.layers[i] {
                    FrontLayer::Conv(m) => m.forward_planes(xs[0], None, self.precision),
                    FrontLayer::C3(m) => m.forward_planes(xs[0], self.precision),
                    FrontLayer::Sppf(m) => m.forward_planes(xs[0], self.precision),
                    FrontLayer::Upsample(s) => Activation::F32(planes::upsample_nearest(&xs[0].to_f32(), *s)),
                    FrontLayer::Concat => Activation::cat(xs),
                })
            })?;
            let y = outs[last].take().expect("the last Front layer's output is kept").into_f32();
            results.push(Tensor::from_vec(y.data, (1, y.c, y.h, y.w), image.device())?);
        }
        if results.len() == 1 { Ok(results.pop().expect("one image")) } else { Tensor::cat(&results, 0) }
    }
}

fn fold_layer(vb: VarBuilder, kind: &LayerKind, bn: BatchNormConfig) -> CandleResult<FrontLayer> {
    Ok(match *kind {
        LayerKind::Conv { c1, c2, k, s, p, g } => FrontLayer::Conv(Conv::load(vb, ConvShape { c1, c2, k, s, p, g }, bn)?.fold()?),
        LayerKind::C3 { c1, c2, n, shortcut } => FrontLayer::C3(C3::load(vb, c1, c2, n, shortcut, bn)?.fold()?),
        LayerKind::Sppf { c1, c2, k } => FrontLayer::Sppf(Sppf::load(vb, c1, c2, k, bn)?.fold()?),
        LayerKind::Upsample { scale } => FrontLayer::Upsample(scale),
        LayerKind::Concat => FrontLayer::Concat,
        LayerKind::Detect { .. } => unreachable!("check_cut keeps Detect out of the Front"),
    })
}

/// Layers `0..cut` unfolded, BatchNorm in eval mode: the Front's function, with gradients (the
/// privacy attacker's; `train` feature).
#[cfg(feature = "train")]
#[derive(Debug, Clone)]
pub struct UnfoldedFront {
    specs: Vec<LayerSpec>,
    layers: Vec<Layer>,
}

#[cfg(feature = "train")]
impl UnfoldedFront {
    /// Builds layers `0..cut` from the same store (and names) as [`Front::load`].
    pub fn load(specs: &[LayerSpec], cut: usize, store: &ParamStore, device: &Device) -> Result<Self, ModelError> {
        check_cut(specs, cut)?;
        let vb = store.var_builder(device).pp("model");
        let bn = BatchNormConfig::default();
        let layers = specs[..cut].iter().map(|s| Layer::load(vb.clone(), s, bn)).collect::<CandleResult<Vec<_>>>()?;
        Ok(Self { specs: specs[..cut].to_vec(), layers })
    }

    /// The output of layer `cut − 1` for an image batch `[bs, 3, H, W]` (values in 0..1).
    pub fn forward(&self, image: &Tensor) -> CandleResult<Tensor> {
        let last = self.specs.len() - 1;
        let mut outs = run_graph(&self.specs, 0, image.clone(), false, |i, xs| self.layers[i].forward_t(xs, false))?;
        Ok(outs[last].take().expect("the last Front layer's output is kept"))
    }
}

/// The cloud part of the model: layers `cut..`, trainable; its input is the Front's output.
pub fn load_back(specs: &[LayerSpec], cut: usize, store: &ParamStore, device: &Device) -> Result<Yolo, ModelError> {
    check_cut(specs, cut)?;
    Ok(Yolo::load(store.var_builder(device), specs, cut, BatchNormConfig::default())?)
}

#[cfg(all(test, feature = "train"))]
mod tests {
    use super::*;
    use crate::model::ModelConfig;

    #[test]
    fn unfolded_front_computes_the_folded_front_and_has_image_gradients() {
        let specs = ModelConfig::load("yolov5n").unwrap().layers().unwrap();
        let dev = Device::Cpu;
        let store = ParamStore::fresh(0);
        // Non-trivial BatchNorm statistics, so that folding matters.
        let unfolded = UnfoldedFront::load(&specs, 4, &store, &dev).unwrap();
        for (name, t) in store.tensors() {
            if name.ends_with("bn.running_var") || name.ends_with("bn.running_mean") || name.ends_with("bn.weight") {
                let n = t.dim(0).unwrap();
                let v = Tensor::arange(0f32, n as f32, &dev).unwrap().affine(0.05, 0.5).unwrap();
                // The store's tensors are variables: the layers see the new values.
                candle_core::Var::from_tensor(&t).unwrap().set(&v).unwrap();
            }
        }
        let front = Front::load(&specs, 4, &store, &dev).unwrap();
        let image = Tensor::rand(0f32, 1.0, (2, 3, 32, 32), &dev).unwrap();
        let want = front.forward(&image).unwrap();
        let got = unfolded.forward(&image).unwrap();
        assert_eq!(got.dims(), want.dims());
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "max |unfolded − folded| = {diff}");

        let x = candle_core::Var::from_tensor(&image).unwrap();
        let grads = unfolded.forward(x.as_tensor()).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g = grads.get(x.as_tensor()).expect("the image has a gradient");
        assert!(g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    }
}

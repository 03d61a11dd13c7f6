//! The YOLOv5 network as a graph of layers built from a resolved config.
//!
//! [`Yolo`] holds the layers from index `first` to the end: `first = 0` is the whole model, and
//! `first = cut` is the cloud's Back, which takes the output of layer `cut − 1` as its input.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::batch_norm::BatchNormConfig;
use super::c3::C3;
use super::config::{INPUT, LayerKind, LayerSpec};
use super::conv::{Conv, ConvShape};
use super::detect::Detect;
use super::sppf::Sppf;
use super::upsample::upsample_nearest;

/// One trainable layer.
#[derive(Debug, Clone)]
pub enum Layer {
    Conv(Conv),
    C3(C3),
    Sppf(Sppf),
    Upsample(usize),
    Concat,
    Detect(Detect),
}

impl Layer {
    pub fn load(vb: VarBuilder, spec: &LayerSpec, bn: BatchNormConfig) -> Result<Self> {
        let vb = vb.pp(spec.index);
        Ok(match &spec.kind {
            &LayerKind::Conv { c1, c2, k, s, p, g } => Layer::Conv(Conv::load(vb, ConvShape { c1, c2, k, s, p, g }, bn)?),
            &LayerKind::C3 { c1, c2, n, shortcut } => Layer::C3(C3::load(vb, c1, c2, n, shortcut, bn)?),
            &LayerKind::Sppf { c1, c2, k } => Layer::Sppf(Sppf::load(vb, c1, c2, k, bn)?),
            &LayerKind::Upsample { scale } => Layer::Upsample(scale),
            LayerKind::Concat => Layer::Concat,
            LayerKind::Detect { nc, anchors, ch, strides } => Layer::Detect(Detect::load(vb, *nc, anchors, ch, strides)?),
        })
    }

    /// The output of a layer other than the head, from its inputs; `train` selects BatchNorm
    /// batch statistics. The Detect head has no single output tensor (see [`Yolo::forward_t`]).
    pub fn forward_t(&self, xs: &[&Tensor], train: bool) -> Result<Tensor> {
        match self {
            Layer::Conv(m) => m.forward_t(xs[0], train),
            Layer::C3(m) => m.forward_t(xs[0], train),
            Layer::Sppf(m) => m.forward_t(xs[0], train),
            Layer::Upsample(s) => upsample_nearest(xs[0], *s),
            Layer::Concat => Tensor::cat(xs, 1),
            Layer::Detect(_) => candle_core::bail!("the Detect head has no single output tensor"),
        }
    }
}

/// Runs layers `first..` of a graph over `input` (the output of layer `first − 1`, or the image).
/// `apply(i, inputs)` computes layer `i`; outputs are kept only while a later layer needs them,
/// unless `keep_all`. Returns the outputs (None where dropped), indexed by layer.
pub fn run_graph<T: Clone>(
    specs: &[LayerSpec],
    first: usize,
    input: T,
    keep_all: bool,
    mut apply: impl FnMut(usize, &[&T]) -> Result<T>,
) -> Result<Vec<Option<T>>> {
    let n = specs.len();
    // last_use[j]: the last layer that reads layer j's output.
    let mut last_use = vec![None; n];
    for s in &specs[first..] {
        for &j in s.from.iter().filter(|&&j| j != INPUT) {
            last_use[j] = Some(s.index);
        }
    }
    let mut outs: Vec<Option<T>> = vec![None; n];
    let mut image = None;
    if first == 0 {
        image = Some(input);
    } else {
        outs[first - 1] = Some(input);
    }
    for i in first..n {
        let out = {
            let inputs = specs[i]
                .from
                .iter()
                .map(|&j| {
                    let t = if j == INPUT { image.as_ref() } else { outs[j].as_ref() };
                    t.ok_or_else(|| candle_core::Error::Msg(format!("layer {i} reads layer {j}, which is before the cut")))
                })
                .collect::<Result<Vec<_>>>()?;
            apply(i, &inputs)?
        };
        outs[i] = Some(out);
        if !keep_all {
            for j in 0..i {
                if last_use[j].is_some_and(|l| l <= i) {
                    outs[j] = None;
                }
            }
        }
    }
    Ok(outs)
}

/// Layers `first..` of a YOLOv5 model.
#[derive(Debug, Clone)]
pub struct Yolo {
    specs: Vec<LayerSpec>,
    first: usize,
    layers: Vec<Layer>,
}

/// What a forward pass produces.
#[derive(Debug, Clone)]
pub struct YoloOutput {
    /// Raw head outputs per level, `[bs, na, ny, nx, nc+5]`.
    pub raw: Vec<Tensor>,
    /// Every layer's output (index − first), when asked for.
    pub layers: Vec<Option<Tensor>>,
}

impl Yolo {
    /// Builds layers `first..` with parameters under `model.{i}` of `vb`.
    pub fn load(vb: VarBuilder, specs: &[LayerSpec], first: usize, bn: BatchNormConfig) -> Result<Self> {
        if first >= specs.len() {
            candle_core::bail!("first layer {first} is past the model's {} layers", specs.len());
        }
        let vb = vb.pp("model");
        let layers = specs[first..].iter().map(|s| Layer::load(vb.clone(), s, bn)).collect::<Result<_>>()?;
        Ok(Self { specs: specs.to_vec(), first, layers })
    }

    pub fn specs(&self) -> &[LayerSpec] {
        &self.specs
    }

    /// Index of the first layer held.
    pub fn first(&self) -> usize {
        self.first
    }

    pub fn detect(&self) -> &Detect {
        match self.layers.last() {
            Some(Layer::Detect(d)) => d,
            _ => unreachable!("config validation ensures the last layer is Detect"),
        }
    }

    /// Forward pass; `train` selects BatchNorm batch statistics (and updates running stats).
    pub fn forward_t(&self, input: &Tensor, train: bool) -> Result<YoloOutput> {
        self.run(input, train, false, None)
    }

    /// Forward pass keeping every layer's output (for parity checks and debugging).
    pub fn forward_all(&self, input: &Tensor, train: bool) -> Result<YoloOutput> {
        self.run(input, train, true, None)
    }

    /// Forward pass in which `map` replaces the output of layer `at` before any later layer reads
    /// it (binarization-aware training: the Front's output binarized before the Back).
    pub fn forward_mapped(&self, input: &Tensor, train: bool, at: usize, map: &mut dyn FnMut(Tensor) -> Result<Tensor>) -> Result<YoloOutput> {
        if at < self.first || at + 1 >= self.specs.len() {
            candle_core::bail!("cannot map the output of layer {at}: the model runs layers {}..{} and the last is the head", self.first, self.specs.len());
        }
        self.run(input, train, false, Some((at, map)))
    }

    fn run(&self, input: &Tensor, train: bool, keep_all: bool, mut map: Option<(usize, &mut dyn FnMut(Tensor) -> Result<Tensor>)>) -> Result<YoloOutput> {
        let mut raw = Vec::new();
        let outs = run_graph(&self.specs, self.first, input.clone(), keep_all, |i, xs| {
            let out = match &self.layers[i - self.first] {
                Layer::Detect(d) => {
                    let owned: Vec<Tensor> = xs.iter().map(|t| (*t).clone()).collect();
                    raw = d.forward(&owned)?;
                    // The head's own "output" is not a tensor; keep a cheap placeholder.
                    return Ok(raw[0].clone());
                }
                layer => layer.forward_t(xs, train)?,
            };
            match &mut map {
                Some((at, f)) if *at == i => f(out),
                _ => Ok(out),
            }
        })?;
        let last = self.specs.len() - 1;
        let layers = if keep_all { outs[self.first..last].to_vec() } else { Vec::new() };
        Ok(YoloOutput { raw, layers })
    }
}

//! `Conv`: Conv2d (no bias) → BatchNorm → SiLU, and its BN-folded inference form.

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::batch_norm::{BatchNorm2d, BatchNormConfig};
use super::direct::Precision;
use super::gemm_conv;
use super::planes::{Activation, ConvKernel};

/// Geometry of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    pub c1: usize,
    pub c2: usize,
    pub k: usize,
    pub s: usize,
    pub p: usize,
    pub g: usize,
}

impl ConvShape {
    /// Ultralytics' autopad: `k // 2`.
    pub fn same(c1: usize, c2: usize, k: usize, s: usize) -> Self {
        Self { c1, c2, k, s, p: k / 2, g: 1 }
    }

    fn weight_shape(&self) -> (usize, usize, usize, usize) {
        (self.c2, self.c1 / self.g, self.k, self.k)
    }

    /// PyTorch's default Conv2d init (kaiming-uniform, a = √5): U(±1/√fan_in).
    fn default_init(&self) -> Init {
        let bound = 1.0 / ((self.c1 / self.g * self.k * self.k) as f64).sqrt();
        Init::Uniform { lo: -bound, up: bound }
    }
}

/// `model.{i}` of kind Conv: `conv.weight` and `bn.*`.
#[derive(Debug, Clone)]
pub struct Conv {
    pub weight: Tensor,
    pub bn: BatchNorm2d,
    pub shape: ConvShape,
}

impl Conv {
    pub fn load(vb: VarBuilder, shape: ConvShape, bn: BatchNormConfig) -> Result<Self> {
        if shape.g == 0 || !shape.c1.is_multiple_of(shape.g) || !shape.c2.is_multiple_of(shape.g) {
            candle_core::bail!("conv groups {} do not divide channels {}→{}", shape.g, shape.c1, shape.c2);
        }
        let weight = vb.pp("conv").get_with_hints(shape.weight_shape(), "weight", shape.default_init())?;
        let bn = BatchNorm2d::load(vb.pp("bn"), shape.c2, bn)?;
        Ok(Self { weight, bn, shape })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = gemm_conv::conv2d(x, &self.weight, self.shape)?;
        self.bn.forward_silu_t(&y, train)
    }

    /// Folds the eval-mode BatchNorm into the convolution.
    pub fn fold(&self) -> Result<FoldedConv> {
        let (scale, shift) = self.bn.eval_scale_shift()?;
        let weight = self.weight.broadcast_mul(&scale.reshape((self.shape.c2, 1, 1, 1))?)?.detach();
        let bias = shift.detach();
        let kernel = ConvKernel::new(weight.flatten_all()?.to_vec1()?, bias.to_vec1()?, self.shape);
        Ok(FoldedConv { weight, bias, shape: self.shape, kernel })
    }
}

/// Inference-only convolution with BatchNorm folded in: `silu(conv(x, w') + b')`.
#[derive(Debug, Clone)]
pub struct FoldedConv {
    pub weight: Tensor,
    pub bias: Tensor,
    pub shape: ConvShape,
    /// The same weights for the fused CPU path.
    pub kernel: ConvKernel,
}

impl FoldedConv {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.conv2d(&self.weight, self.shape.p, self.shape.s, 1, self.shape.g)?;
        y.broadcast_add(&self.bias.reshape((1, self.shape.c2, 1, 1))?)?.silu()
    }

    /// The fused CPU path: `silu(conv(x) + b) (+ residual)` on one image.
    pub fn forward_planes(&self, x: &Activation, residual: Option<&Activation>, precision: Precision) -> Activation {
        self.kernel.forward(x, residual, precision)
    }
}

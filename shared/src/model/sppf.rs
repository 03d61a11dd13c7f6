//! `SPPF`: spatial pyramid pooling (fast), with a max-pool that candle lacks.
//!
//! candle's `max_pool2d` has no padding and no backward when kernel ≠ stride, so the pool here is
//! written with differentiable primitives: pad with -inf, then a separable running maximum
//! (rows, then columns) of `narrow`ed views. Max over a k×k window equals max over rows of the
//! max over columns, so the result is exact, and `maximum` carries the gradient.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::batch_norm::BatchNormConfig;
use super::conv::{Conv, ConvShape, FoldedConv};
use super::planes::{self, Planes};

/// Max-pool with kernel `k` (odd), stride 1 and padding `k / 2` filled with -inf: output size = input size.
pub fn max_pool_same(x: &Tensor, k: usize) -> Result<Tensor> {
    if k.is_multiple_of(2) {
        candle_core::bail!("max_pool_same needs an odd kernel, got {k}");
    }
    let p = k / 2;
    let (_, _, h, w) = x.dims4()?;
    let pad = |t: &Tensor, dim: usize| -> Result<Tensor> {
        let mut dims = t.dims().to_vec();
        dims[dim] = p;
        let fill = Tensor::full(f32::NEG_INFINITY, dims, t.device())?.to_dtype(t.dtype())?;
        Tensor::cat(&[&fill, t, &fill], dim)
    };
    let running_max = |t: &Tensor, dim: usize, len: usize| -> Result<Tensor> {
        let mut acc = t.narrow(dim, 0, len)?;
        for off in 1..k {
            acc = acc.maximum(&t.narrow(dim, off, len)?)?;
        }
        Ok(acc)
    };
    let rows = running_max(&pad(x, 3)?, 3, w)?;
    running_max(&pad(&rows, 2)?, 2, h)
}

/// `model.{i}` of kind SPPF: `cv1`, three chained pools, `cv2` over the concatenation.
#[derive(Debug, Clone)]
pub struct Sppf {
    pub cv1: Conv,
    pub cv2: Conv,
    pub k: usize,
}

impl Sppf {
    pub fn load(vb: VarBuilder, c1: usize, c2: usize, k: usize, bn: BatchNormConfig) -> Result<Self> {
        let c_ = c1 / 2;
        Ok(Self {
            cv1: Conv::load(vb.pp("cv1"), ConvShape::same(c1, c_, 1, 1), bn)?,
            cv2: Conv::load(vb.pp("cv2"), ConvShape::same(c_ * 4, c2, 1, 1), bn)?,
            k,
        })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = self.cv1.forward_t(x, train)?;
        let y1 = max_pool_same(&x, self.k)?;
        let y2 = max_pool_same(&y1, self.k)?;
        let y3 = max_pool_same(&y2, self.k)?;
        self.cv2.forward_t(&Tensor::cat(&[&x, &y1, &y2, &y3], 1)?, train)
    }

    pub fn fold(&self) -> Result<FoldedSppf> {
        Ok(FoldedSppf { cv1: self.cv1.fold()?, cv2: self.cv2.fold()?, k: self.k })
    }
}

/// SPPF with BatchNorm folded.
#[derive(Debug, Clone)]
pub struct FoldedSppf {
    pub cv1: FoldedConv,
    pub cv2: FoldedConv,
    pub k: usize,
}

impl FoldedSppf {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.cv1.forward(x)?;
        let y1 = max_pool_same(&x, self.k)?;
        let y2 = max_pool_same(&y1, self.k)?;
        let y3 = max_pool_same(&y2, self.k)?;
        self.cv2.forward(&Tensor::cat(&[&x, &y1, &y2, &y3], 1)?)
    }

    pub fn forward_planes(&self, x: &Planes) -> Planes {
        let x = self.cv1.forward_planes(x, None);
        let y1 = planes::max_pool_same(&x, self.k);
        let y2 = planes::max_pool_same(&y1, self.k);
        let y3 = planes::max_pool_same(&y2, self.k);
        self.cv2.forward_planes(&Planes::cat(&[&x, &y1, &y2, &y3]), None)
    }
}

//! `C3`: the CSP bottleneck with three convolutions, and its folded inference form.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::batch_norm::BatchNormConfig;
use super::conv::{Conv, ConvShape, FoldedConv};
use super::direct::Precision;
use super::planes::Activation;

/// `m.{j}`: 1×1 then 3×3 convolution (expansion 1.0), with a residual add when `shortcut`.
#[derive(Debug, Clone)]
pub struct Bottleneck {
    pub cv1: Conv,
    pub cv2: Conv,
    pub shortcut: bool,
}

/// `model.{i}` of kind C3: `cv1`, `cv2`, `cv3` and `m.{0..n}`.
#[derive(Debug, Clone)]
pub struct C3 {
    pub cv1: Conv,
    pub cv2: Conv,
    pub cv3: Conv,
    pub m: Vec<Bottleneck>,
}

impl C3 {
    pub fn load(vb: VarBuilder, c1: usize, c2: usize, n: usize, shortcut: bool, bn: BatchNormConfig) -> Result<Self> {
        let c_ = c2 / 2; // hidden channels, e = 0.5
        let cv1 = Conv::load(vb.pp("cv1"), ConvShape::same(c1, c_, 1, 1), bn)?;
        let cv2 = Conv::load(vb.pp("cv2"), ConvShape::same(c1, c_, 1, 1), bn)?;
        let cv3 = Conv::load(vb.pp("cv3"), ConvShape::same(2 * c_, c2, 1, 1), bn)?;
        let m = (0..n)
            .map(|j| {
                let vb = vb.pp("m").pp(j);
                Ok(Bottleneck {
                    cv1: Conv::load(vb.pp("cv1"), ConvShape::same(c_, c_, 1, 1), bn)?,
                    cv2: Conv::load(vb.pp("cv2"), ConvShape::same(c_, c_, 3, 1), bn)?,
                    shortcut,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { cv1, cv2, cv3, m })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut a = self.cv1.forward_t(x, train)?;
        for b in &self.m {
            let y = b.cv2.forward_t(&b.cv1.forward_t(&a, train)?, train)?;
            a = if b.shortcut { (a + y)? } else { y };
        }
        let b = self.cv2.forward_t(x, train)?;
        self.cv3.forward_t(&Tensor::cat(&[&a, &b], 1)?, train)
    }

    pub fn fold(&self) -> Result<FoldedC3> {
        Ok(FoldedC3 {
            cv1: self.cv1.fold()?,
            cv2: self.cv2.fold()?,
            cv3: self.cv3.fold()?,
            m: self
                .m
                .iter()
                .map(|b| Ok((b.cv1.fold()?, b.cv2.fold()?, b.shortcut)))
                .collect::<Result<_>>()?,
        })
    }
}

/// C3 with every BatchNorm folded.
#[derive(Debug, Clone)]
pub struct FoldedC3 {
    pub cv1: FoldedConv,
    pub cv2: FoldedConv,
    pub cv3: FoldedConv,
    /// Bottlenecks: (cv1, cv2, shortcut).
    pub m: Vec<(FoldedConv, FoldedConv, bool)>,
}

impl FoldedC3 {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut a = self.cv1.forward(x)?;
        for (cv1, cv2, shortcut) in &self.m {
            let y = cv2.forward(&cv1.forward(&a)?)?;
            a = if *shortcut { (a + y)? } else { y };
        }
        let b = self.cv2.forward(x)?;
        self.cv3.forward(&Tensor::cat(&[&a, &b], 1)?)
    }

    pub fn forward_planes(&self, x: &Activation, precision: Precision) -> Activation {
        let mut a = self.cv1.forward_planes(x, None, precision);
        for (cv1, cv2, shortcut) in &self.m {
            let hidden = cv1.forward_planes(&a, None, precision);
            a = cv2.forward_planes(&hidden, shortcut.then_some(&a), precision);
        }
        let b = self.cv2.forward_planes(x, None, precision);
        self.cv3.forward_planes(&Activation::cat(&[&a, &b]), None, precision)
    }
}

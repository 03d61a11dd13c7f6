//! `SPPF`: spatial pyramid pooling (fast), with a max-pool that candle lacks.
//!
//! candle's `max_pool2d` has no padding and no backward when kernel ≠ stride. The pool here is a
//! separable running maximum (rows, then columns): max over a k×k window equals max over rows of
//! the max over columns. On CPU f32 it is one op whose backward sends each output's gradient to
//! the first maximum of its window in row-major order, as PyTorch's `max_pool2d` does; on other
//! devices it is built from differentiable primitives: pad with -inf, then `maximum` over
//! `narrow`ed views.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use candle_nn::VarBuilder;

use super::batch_norm::BatchNormConfig;
use super::conv::{Conv, ConvShape, FoldedConv};
use super::direct::Precision;
use super::kernels::{cpu_f32, on_cpu_f32, par_fill};
#[cfg(feature = "train")]
use super::kernels::storage_f32;
use super::planes::{self, Activation, Planes, max_pool_plane};

/// Max-pool with kernel `k` (odd), stride 1 and padding `k / 2` filled with -inf: output size = input size.
pub fn max_pool_same(x: &Tensor, k: usize) -> Result<Tensor> {
    if k.is_multiple_of(2) {
        candle_core::bail!("max_pool_same needs an odd kernel, got {k}");
    }
    if on_cpu_f32(x) {
        return x.contiguous()?.apply_op1(MaxPool { k });
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

struct MaxPool {
    k: usize,
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "mistnet-max-pool-same"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s, l, "max-pool input")?;
        let (_, _, h, w) = l.shape().dims4()?;
        let plane = h * w;
        let (y, _) = par_fill(x.len(), plane, |i, dst| {
            max_pool_plane(&x[i * plane..(i + 1) * plane], h, w, self.k, &mut vec![0f32; plane], dst)
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    #[cfg(feature = "train")]
    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let (_, _, h, w) = x.dims4()?;
        let (plane, r) = (h * w, self.k / 2);
        let (xs, xl) = x.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (xv, g) = (storage_f32(&xs, xl, "max-pool input")?, storage_f32(&gs, gl, "max-pool output gradient")?);
        let (gx, _) = par_fill(xv.len(), plane, |i, gx| {
            let (src, g) = (&xv[i * plane..(i + 1) * plane], &g[i * plane..(i + 1) * plane]);
            // Each value's row-window maximum, then per output the first row of its column window
            // holding the window maximum, and in that row the first column holding it.
            let mut rows = vec![0f32; plane];
            let mut out = vec![0f32; plane];
            max_pool_plane(src, h, w, self.k, &mut rows, &mut out);
            for y in 0..h {
                for xx in 0..w {
                    let m = out[y * w + xx];
                    let Some(yy) = (y.saturating_sub(r)..(y + r + 1).min(h)).find(|&yy| rows[yy * w + xx] == m) else { continue };
                    let row = &src[yy * w..(yy + 1) * w];
                    let Some(cx) = (xx.saturating_sub(r)..(xx + r + 1).min(w)).find(|&cx| row[cx] == m) else { continue };
                    gx[yy * w + cx] += g[y * w + xx];
                }
            }
        });
        Ok(Some(Tensor::from_vec(gx, x.dims(), x.device())?))
    }
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

    pub fn forward_planes(&self, x: &Activation, precision: Precision) -> Activation {
        let x = self.cv1.forward_planes(x, None, precision).into_f32();
        let y1 = planes::max_pool_same(&x, self.k);
        let y2 = planes::max_pool_same(&y1, self.k);
        let y3 = planes::max_pool_same(&y2, self.k);
        self.cv2.forward_planes(&Activation::F32(Planes::cat(&[&x, &y1, &y2, &y3])), None, precision)
    }
}

#[cfg(all(test, feature = "train"))]
mod tests {
    use candle_core::{DType, Device, Var};

    use super::*;

    /// The CPU op agrees with the primitive form (what other devices run) in value, and its
    /// gradient sends each output's gradient to one maximum of its window: for distinct values
    /// the same as the primitive form's.
    #[test]
    fn cpu_pool_matches_the_primitive_form() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 7, 6), &dev).unwrap()).unwrap();
        let ours = max_pool_same(&x, 5).unwrap();
        // The primitive form, as run on other devices: pooled f64 (not the CPU f32 op) and back.
        let theirs = max_pool_same(&x.to_dtype(DType::F64).unwrap(), 5).unwrap().to_dtype(DType::F32).unwrap();
        let max = |t: Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(max((&ours - &theirs).unwrap()), 0.0);
        let probe = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
        let g1 = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (theirs * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max((g1.get(&x).unwrap() - g2.get(&x).unwrap()).unwrap()) < 1e-5);
    }

    /// Ties go to the first maximum in row-major order, as in PyTorch's max_pool2d.
    #[test]
    fn tied_maxima_send_the_gradient_to_the_first() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::ones((1, 1, 3, 3), DType::F32, &dev).unwrap()).unwrap();
        let g = max_pool_same(&x, 3).unwrap().sum_all().unwrap().backward().unwrap();
        let g = g.get(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(g, vec![4.0, 2.0, 0.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    }
}

//! Trainable convolution on the CPU with forward, input gradient and weight gradient all as
//! im2col + GEMM.
//!
//! candle's CPU conv2d computes the input gradient with a direct transposed-convolution loop
//! (about half of a YOLOv5 training step) and runs 1×1 convolutions through im2col. Here:
//! `y = W · col(x)`, `∂x = col⁻¹(Wᵀ · ∂y)`, `∂W = Σₙ ∂yₙ · col(xₙ)ᵀ`, with `col` skipped for 1×1
//! stride-1 convolutions. Images run in parallel on rayon's pool. Other devices and dtypes use
//! candle's own conv2d, made differentiable at any size (`candle_conv2d`).

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
#[cfg(feature = "train")]
use rayon::prelude::*;

use super::conv::ConvShape;
use super::kernels::{cpu_f32, on_cpu_f32, par_fill};
#[cfg(feature = "train")]
use super::planes::col2im;
use super::planes::im2col;

/// `conv2d(x, w)` with this module's backward on CPU f32; candle's conv2d elsewhere.
pub fn conv2d(x: &Tensor, w: &Tensor, shape: ConvShape) -> Result<Tensor> {
    if on_cpu_f32(x) && on_cpu_f32(w) {
        x.contiguous()?.apply_op2(&w.contiguous()?, Conv { shape })
    } else {
        candle_conv2d(x, w, shape)
    }
}

/// candle's conv2d, differentiable at any size. Its backward takes the transposed convolution's
/// output padding from the height alone, so when the stride leaves a different number of rows
/// than columns unread (odd by even sizes at stride 2) the input gradient comes out misshapen:
/// then the input is padded here and cut to what the windows read, which needs no output padding.
fn candle_conv2d(x: &Tensor, w: &Tensor, shape: ConvShape) -> Result<Tensor> {
    let ConvShape { k, s, p, g, .. } = shape;
    let (_, _, h, wd) = x.dims4()?;
    if h + 2 * p < k || wd + 2 * p < k || (h + 2 * p - k) % s == (wd + 2 * p - k) % s {
        return x.conv2d(w, p, s, 1, g);
    }
    let read = |len: usize| (len + 2 * p - k) / s * s + k;
    let x = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
    x.narrow(2, 0, read(h))?.narrow(3, 0, read(wd))?.contiguous()?.conv2d(w, 0, s, 1, g)
}

/// Sizes of one convolution over an `[n, c1, h, w]` input.
#[derive(Clone, Copy)]
struct Geometry {
    shape: ConvShape,
    n: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
}

impl Geometry {
    fn new(shape: ConvShape, dims: &[usize]) -> Result<Self> {
        let &[n, c1, h, w] = dims else { candle_core::bail!("conv input must be [N, C, H, W], got {dims:?}") };
        let ConvShape { k, s, p, .. } = shape;
        if c1 != shape.c1 || h + 2 * p < k || w + 2 * p < k {
            candle_core::bail!("conv input {dims:?} does not fit a {k}×{k} kernel over {} channels", shape.c1);
        }
        Ok(Self { shape, n, h, w, ho: (h + 2 * p - k) / s + 1, wo: (w + 2 * p - k) / s + 1 })
    }
    fn direct(&self) -> bool {
        self.shape.k == 1 && self.shape.s == 1 && self.shape.p == 0
    }
    /// (output channels, input channels, col rows) per group.
    fn group(&self) -> (usize, usize, usize) {
        let ConvShape { c1, c2, k, g, .. } = self.shape;
        (c2 / g, c1 / g, c1 / g * k * k)
    }
    fn in_len(&self) -> usize {
        self.shape.c1 * self.h * self.w
    }
    fn out_len(&self) -> usize {
        self.shape.c2 * self.ho * self.wo
    }
}

/// `dst[m, n] (+)= lhs · rhs` with explicit strides `(row, col)` for each operand.
#[allow(clippy::too_many_arguments)]
fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    // SAFETY: callers pass slices that hold the [m, k], [k, n] and [m, n] matrices these strides describe.
    unsafe {
        gemm::gemm(
            m, n, k, dst.as_mut_ptr(), 1, dst_rs as isize, accumulate, lhs.as_ptr(), lhs_cs as isize, lhs_rs as isize,
            rhs.as_ptr(), rhs_cs as isize, rhs_rs as isize, 1.0, 1.0, false, false, false, gemm::Parallelism::None,
        );
    }
}

/// The im2col matrix of one image and group, or the input itself for a direct 1×1 convolution.
fn columns<'a>(g: &Geometry, x_group: &'a [f32], buf: &'a mut Vec<f32>) -> &'a [f32] {
    if g.direct() {
        return x_group;
    }
    let (_, c_in, kk) = g.group();
    buf.resize(kk * g.ho * g.wo, 0.0);
    im2col(x_group, c_in, g.h, g.w, &g.shape, g.wo, 0, g.ho, buf);
    buf
}

struct Conv {
    shape: ConvShape,
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "mistnet-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let geo = Geometry::new(self.shape, l1.dims())?;
        let (x, w) = (cpu_f32(s1, l1, "conv input")?, cpu_f32(s2, l2, "conv weight")?);
        let (m, c_in, kk) = geo.group();
        let hw = geo.ho * geo.wo;
        let (y, _) = par_fill(geo.n * geo.out_len(), geo.out_len(), |i, y| {
            let x = &x[i * geo.in_len()..(i + 1) * geo.in_len()];
            let mut buf = Vec::new();
            for gi in 0..self.shape.g {
                let col = columns(&geo, &x[gi * c_in * geo.h * geo.w..(gi + 1) * c_in * geo.h * geo.w], &mut buf);
                matmul(m, hw, kk, &mut y[gi * m * hw..], hw, false, &w[gi * m * kk..], (kk, 1), col, (hw, 1));
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((geo.n, self.shape.c2, geo.ho, geo.wo))))
    }

    #[cfg(feature = "train")]
    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let gx = grad.apply_op2_no_bwd(w, &InputGrad { shape: self.shape, h: x.dim(2)?, w: x.dim(3)? })?;
        let gw = x.apply_op2_no_bwd(&grad, &WeightGrad { shape: self.shape })?;
        Ok((Some(gx), Some(gw)))
    }
}

/// `∂x` from `(∂y, W)`.
#[cfg(feature = "train")]
struct InputGrad {
    shape: ConvShape,
    h: usize,
    w: usize,
}

#[cfg(feature = "train")]
impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "mistnet-conv2d-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = l1.dims()[0];
        let geo = Geometry::new(self.shape, &[n, self.shape.c1, self.h, self.w])?;
        let (gy, w) = (cpu_f32(s1, l1, "conv output gradient")?, cpu_f32(s2, l2, "conv weight")?);
        let (m, c_in, kk) = geo.group();
        let hw = geo.ho * geo.wo;
        let plane = geo.h * geo.w;
        let (gx, _) = par_fill(n * geo.in_len(), geo.in_len(), |i, gx| {
            let gy = &gy[i * geo.out_len()..(i + 1) * geo.out_len()];
            let mut gcol = Vec::new();
            for gi in 0..self.shape.g {
                let gx_group = &mut gx[gi * c_in * plane..(gi + 1) * c_in * plane];
                let (w_g, gy_g) = (&w[gi * m * kk..], &gy[gi * m * hw..]);
                if geo.direct() {
                    matmul(kk, hw, m, gx_group, hw, false, w_g, (1, kk), gy_g, (hw, 1));
                } else {
                    gcol.resize(kk * hw, 0.0);
                    matmul(kk, hw, m, &mut gcol, hw, false, w_g, (1, kk), gy_g, (hw, 1));
                    col2im(&gcol, c_in, geo.h, geo.w, &geo.shape, geo.ho, geo.wo, gx_group);
                }
            }
        });
        Ok((CpuStorage::F32(gx), Shape::from((n, self.shape.c1, self.h, self.w))))
    }
}

/// `∂W` from `(x, ∂y)`.
#[cfg(feature = "train")]
struct WeightGrad {
    shape: ConvShape,
}

#[cfg(feature = "train")]
impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "mistnet-conv2d-weight-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let geo = Geometry::new(self.shape, l1.dims())?;
        let (x, gy) = (cpu_f32(s1, l1, "conv input")?, cpu_f32(s2, l2, "conv output gradient")?);
        let (m, c_in, kk) = geo.group();
        let hw = geo.ho * geo.wo;
        let plane = geo.h * geo.w;
        let len = self.shape.c2 * kk;
        // One partial sum per rayon task, added up at the end.
        let gw = x
            .par_chunks(geo.in_len())
            .zip(gy.par_chunks(geo.out_len()))
            .fold(
                || (vec![0f32; len], Vec::new(), false),
                |(mut acc, mut buf, started), (x, gy)| {
                    for gi in 0..self.shape.g {
                        let col = columns(&geo, &x[gi * c_in * plane..(gi + 1) * c_in * plane], &mut buf);
                        let dst = &mut acc[gi * m * kk..(gi + 1) * m * kk];
                        matmul(m, kk, hw, dst, kk, started, &gy[gi * m * hw..], (hw, 1), col, (1, hw));
                    }
                    (acc, buf, true)
                },
            )
            .map(|(acc, _, _)| acc)
            .reduce(|| vec![0f32; len], |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            });
        let ConvShape { c1, c2, k, g, .. } = self.shape;
        Ok((CpuStorage::F32(gw), Shape::from((c2, c1 / g, k, k))))
    }
}

#[cfg(all(test, feature = "train"))]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
        d / b.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt()
    }

    fn dot(a: &Tensor, b: &Tensor) -> f64 {
        (a * b).unwrap().sum_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    const CASES: [(usize, usize, usize, usize, usize, usize, usize); 6] = [
        (3, 8, 6, 2, 2, 1, 17),
        (8, 16, 3, 2, 1, 1, 9),
        (16, 8, 1, 1, 0, 1, 7),
        (8, 8, 3, 1, 1, 1, 6),
        (8, 8, 3, 1, 1, 2, 5),
        (4, 6, 5, 1, 2, 1, 4),
    ];

    /// The gradients are the exact adjoints of the forward map, for any size (candle's own conv
    /// backward returns a wrongly shaped input gradient for odd sizes with stride 2):
    /// ⟨conv(x, w), g⟩ = ⟨x, ∂x(g, w)⟩ = ⟨w, ∂w(x, g)⟩.
    #[test]
    fn gradients_are_the_adjoints_of_the_forward() {
        let dev = Device::Cpu;
        for (c1, c2, k, s, p, g, h) in CASES {
            let shape = ConvShape { c1, c2, k, s, p, g };
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, c1, h, h + 1), &dev).unwrap()).unwrap();
            let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (c2, c1 / g, k, k), &dev).unwrap()).unwrap();
            let y = conv2d(&x, &w, shape).unwrap();
            let probe = Tensor::randn(0f32, 1.0, y.dims(), &dev).unwrap();
            let grads = (&y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let (gx, gw) = (grads.get(&x).unwrap(), grads.get(&w).unwrap());
            assert_eq!((gx.dims(), gw.dims()), (x.dims(), w.dims()));
            let lhs = dot(&y, &probe);
            for (name, rhs) in [("input", dot(&x, gx)), ("weight", dot(&w, gw))] {
                assert!((lhs - rhs).abs() <= 1e-4 * lhs.abs().max(1.0), "{name} adjoint {shape:?}: {lhs} vs {rhs}");
            }
        }
    }

    /// Forward and both gradients equal candle's conv2d where candle's backward works (even sizes).
    #[test]
    fn matches_candle_conv2d_and_its_gradients() {
        let dev = Device::Cpu;
        for (c1, c2, k, s, p, g, h) in CASES {
            let h = h + h % 2;
            let shape = ConvShape { c1, c2, k, s, p, g };
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, c1, h, h), &dev).unwrap()).unwrap();
            let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (c2, c1 / g, k, k), &dev).unwrap()).unwrap();
            let ours = conv2d(&x, &w, shape).unwrap();
            let theirs = x.conv2d(&w, p, s, 1, g).unwrap();
            assert!(rel(&ours, &theirs) < 1e-5, "forward {shape:?}");
            let probe = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
            let g_ours = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let g_theirs = (theirs * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, v) in [("input", &x), ("weight", &w)] {
                let e = rel(g_ours.get(v).unwrap(), g_theirs.get(v).unwrap());
                assert!(e < 1e-5, "{name} gradient {shape:?}: {e}");
            }
        }
    }
}

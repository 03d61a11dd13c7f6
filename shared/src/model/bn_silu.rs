//! Train-mode BatchNorm followed by SiLU as one CPU operation with a closed-form backward.
//!
//! Built from candle's tensor ops, train-mode BatchNorm → SiLU leaves about seven
//! activation-sized nodes per layer in the autograd graph, and candle's backward gives each one a
//! zeroed gradient buffer, an addition, and for the broadcast statistics a strided `sum_keepdim`:
//! together more than half of a YOLOv5 training step on CPU. Here the forward is two passes
//! (statistics, output) and the backward two (channel sums, input gradient), with
//! `x̂ = (x − μ)/σ`, `z = γx̂ + β`, `y = z·s(z)`, `∂z = ∂y·s(z)(1 + z(1 − s(z)))`,
//! `∂β = Σ∂z`, `∂γ = Σ∂z·x̂`, `∂x = γ/(σM)·(M∂z − ∂β − x̂∂γ)` over the `M = N·H·W` values of a channel.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::kernels::{cpu_f32, lane_sum, par_fill, silu_and_slope, storage_f32, widest};

/// Per-channel batch statistics: mean and biased variance over (N, H, W).
pub struct BatchStats {
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
}

/// `silu(γ·(x − μ)/√(σ² + eps) + β)` with the batch's own statistics, differentiable in `x`, `γ`
/// and `β`. `x` is `[N, C, H, W]` f32 on the CPU; also returns the statistics.
pub fn forward(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<(Tensor, BatchStats)> {
    let x = x.contiguous()?;
    let (n, c, h, w) = x.dims4()?;
    let stats = {
        let (storage, layout) = x.storage_and_layout();
        channel_stats(storage_f32(&storage, layout, "batch-norm input")?, n, c, h * w)
    };
    let inv_std = stats.var.iter().map(|v| (1.0 / (*v as f64 + eps).sqrt()) as f32).collect();
    let op = BnSilu { mean: stats.mean.clone(), inv_std };
    let y = x.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?;
    Ok((y, stats))
}

/// Two-pass mean and biased variance per channel; plane sums in f32, their totals in f64.
fn channel_stats(x: &[f32], n: usize, c: usize, plane: usize) -> BatchStats {
    let count = (n * plane) as f64;
    let planes = |ch: usize| (0..n).map(move |i| &x[(i * c + ch) * plane..(i * c + ch + 1) * plane]);
    let (mean, var) = (0..c)
        .into_par_iter()
        .map(|ch| {
            let mean = planes(ch).map(|p| lane_sum(p, p, |a, _| a)).sum::<f64>() / count;
            let m = mean as f32;
            let var = planes(ch).map(|p| lane_sum(p, p, |a, _| (a - m) * (a - m))).sum::<f64>() / count;
            (mean as f32, var as f32)
        })
        .unzip();
    BatchStats { mean, var }
}

struct BnSilu {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
}

impl BnSilu {
    /// Per-channel `(a, b)` with `z = a·x + b`.
    fn affine(&self, weight: &[f32], bias: &[f32]) -> Vec<(f32, f32)> {
        (0..self.mean.len())
            .map(|ch| {
                let a = weight[ch] * self.inv_std[ch];
                (a, bias[ch] - self.mean[ch] * a)
            })
            .collect()
    }
}

impl CustomOp3 for BnSilu {
    fn name(&self) -> &'static str {
        "mistnet-batch-norm-silu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (cpu_f32(s1, l1, "batch-norm input")?, cpu_f32(s2, l2, "batch-norm weight")?, cpu_f32(s3, l3, "batch-norm bias")?);
        let (_, c, h, wd) = l1.shape().dims4()?;
        if w.len() != c || b.len() != c || self.mean.len() != c {
            candle_core::bail!("batch-norm over {c} channels got weight {}, bias {}", w.len(), b.len());
        }
        let affine = self.affine(w, b);
        let plane = h * wd;
        let (y, _) = par_fill(x.len(), plane, |i, y| {
            let (a, b) = affine[i % c];
            widest(#[inline(always)] || {
                for (y, &x) in y.iter_mut().zip(&x[i * plane..(i + 1) * plane]) {
                    *y = silu_and_slope(a * x + b).0;
                }
            })
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, weight: &Tensor, bias: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (n, c, h, w) = x.dims4()?;
        let plane = h * w;
        let (xs, xl) = x.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (ws, wl) = weight.storage_and_layout();
        let (bs, bl) = bias.storage_and_layout();
        let x = storage_f32(&xs, xl, "batch-norm input")?;
        let g = storage_f32(&gs, gl, "batch-norm output gradient")?;
        let gamma = storage_f32(&ws, wl, "batch-norm weight")?;
        let affine = self.affine(gamma, storage_f32(&bs, bl, "batch-norm bias")?);
        // ∂z from ∂y (recomputing z = a·x + b) into `dx`, with its sums Σ∂z and Σ∂z·(x − μ) per plane.
        let (mut dx, plane_sums) = par_fill(x.len(), plane, |p, dz| {
            let ch = p % c;
            let (a, b) = affine[ch];
            let (x, g) = (&x[p * plane..(p + 1) * plane], &g[p * plane..(p + 1) * plane]);
            let mean = self.mean[ch];
            widest(#[inline(always)] || {
                for ((dz, &x), &g) in dz.iter_mut().zip(x).zip(g) {
                    *dz = g * silu_and_slope(a * x + b).1;
                }
                (lane_sum(dz, dz, |d, _| d), lane_sum(dz, x, |d, x| d * (x - mean)))
            })
        });
        // ∂β = Σ∂z and ∂γ = Σ∂z·x̂ per channel.
        let (mut d_bias, mut d_weight) = (vec![0f64; c], vec![0f64; c]);
        for (p, (s_dz, s_dz_centered)) in plane_sums.into_iter().enumerate() {
            d_bias[p % c] += s_dz;
            d_weight[p % c] += s_dz_centered;
        }
        let d_bias: Vec<f32> = d_bias.into_iter().map(|v| v as f32).collect();
        let d_weight: Vec<f32> = d_weight.iter().zip(&self.inv_std).map(|(v, s)| (v * *s as f64) as f32).collect();
        // ∂x = γ/(σM)·(M∂z − ∂β − x̂∂γ), in place over ∂z.
        let count = (n * plane) as f32;
        dx.par_chunks_mut(plane).enumerate().for_each(|(p, dx)| {
            let ch = p % c;
            let (mean, inv_std) = (self.mean[ch], self.inv_std[ch]);
            let k = gamma[ch] * inv_std / count;
            let (sb, sw) = (d_bias[ch], d_weight[ch]);
            widest(#[inline(always)] || {
                for (dx, &x) in dx.iter_mut().zip(&x[p * plane..(p + 1) * plane]) {
                    *dx = k * (count * *dx - sb - (x - mean) * inv_std * sw);
                }
            })
        });
        let dev = weight.device();
        Ok((
            Some(Tensor::from_vec(dx, (n, c, h, w), dev)?),
            Some(Tensor::from_vec(d_weight, c, dev)?),
            Some(Tensor::from_vec(d_bias, c, dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Device, Var};

    /// The same function from candle's tensor ops, as `BatchNorm2d` computed it before this op.
    fn reference(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Tensor {
        let (n, c, h, w) = x.dims4().unwrap();
        let flat = x.transpose(0, 1).unwrap().reshape((c, n * h * w)).unwrap();
        let mean = flat.mean(D::Minus1).unwrap();
        let var = flat.broadcast_sub(&mean.unsqueeze(1).unwrap()).unwrap().sqr().unwrap().mean(D::Minus1).unwrap();
        let inv_std = (var + eps).unwrap().sqrt().unwrap().recip().unwrap();
        let scale = (weight * &inv_std).unwrap();
        let shift = (bias - (&mean * &scale).unwrap()).unwrap();
        let col = |t: &Tensor| t.reshape((1, c, 1, 1)).unwrap();
        x.broadcast_mul(&col(&scale)).unwrap().broadcast_add(&col(&shift)).unwrap().silu().unwrap()
    }

    fn rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
        d / b.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt()
    }

    /// Output and the gradients of x, γ and β agree with autograd through candle's ops, for
    /// shifted, scaled inputs and odd plane sizes.
    #[test]
    fn matches_candle_ops_and_their_gradients() {
        let dev = Device::Cpu;
        for (n, c, h, w) in [(2, 3, 5, 7), (4, 16, 8, 8), (1, 5, 3, 1)] {
            let x = Var::from_tensor(&(Tensor::randn(0f32, 2.0, (n, c, h, w), &dev).unwrap() + 1.5).unwrap()).unwrap();
            let weight = Var::from_tensor(&Tensor::randn(1f32, 0.5, c, &dev).unwrap()).unwrap();
            let bias = Var::from_tensor(&Tensor::randn(0f32, 0.5, c, &dev).unwrap()).unwrap();
            let (ours, stats) = forward(&x, &weight, &bias, 1e-3).unwrap();
            let theirs = reference(&x, &weight, &bias, 1e-3);
            assert!(rel(&ours, &theirs) < 1e-5, "forward {n}×{c}×{h}×{w}");
            let mean = x.transpose(0, 1).unwrap().reshape((c, ())).unwrap().mean(D::Minus1).unwrap();
            assert!(rel(&Tensor::new(stats.mean.as_slice(), &dev).unwrap(), &mean) < 1e-5);
            let probe = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
            let g_ours = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let g_theirs = (theirs * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, v) in [("input", &x), ("weight", &weight), ("bias", &bias)] {
                let e = rel(g_ours.get(v).unwrap(), g_theirs.get(v).unwrap());
                assert!(e < 1e-4, "{name} gradient {n}×{c}×{h}×{w}: {e}");
            }
        }
    }
}

//! Nearest-neighbour upsampling by an integer factor, differentiable.
//!
//! On CPU f32 it is one op whose backward sums each `s × s` block of the output gradient. Other
//! devices build it from a broadcast, whose backward is candle's strided `sum_keepdim`. Neither
//! uses candle's `upsample_nearest2d`, whose backward in candle 0.11 overwrites the gradient
//! already accumulated for its input instead of adding to it (huggingface/candle PR #3507):
//! YOLOv5's upsampled layers 10 and 14 also feed a Concat, and their gradients came out wrong.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::kernels::{cpu_f32, on_cpu_f32, par_fill};
#[cfg(feature = "train")]
use super::kernels::storage_f32;

/// `[n, c, h, w]` → `[n, c, h·scale, w·scale]`, each value repeated over a `scale × scale` block.
pub fn upsample_nearest(x: &Tensor, scale: usize) -> Result<Tensor> {
    if on_cpu_f32(x) {
        return x.contiguous()?.apply_op1(Upsample { scale });
    }
    let (n, c, h, w) = x.dims4()?;
    x.reshape((n, c, h, 1, w, 1))?.broadcast_as((n, c, h, scale, w, scale))?.reshape((n, c, h * scale, w * scale))
}

/// One plane `src` (rows of `w`) upsampled into `dst` (rows of `w·scale`).
pub fn plane(src: &[f32], w: usize, scale: usize, dst: &mut [f32]) {
    for (y, row) in dst.chunks_mut(w * scale).enumerate() {
        let src = &src[(y / scale) * w..(y / scale + 1) * w];
        for (out, &v) in row.chunks_mut(scale).zip(src) {
            out.fill(v);
        }
    }
}

struct Upsample {
    scale: usize,
}

impl CustomOp1 for Upsample {
    fn name(&self) -> &'static str {
        "mistnet-upsample-nearest"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s, l, "upsample input")?;
        let (n, c, h, w) = l.shape().dims4()?;
        let k = self.scale;
        let (y, _) = par_fill(x.len() * k * k, h * w * k * k, |i, dst| plane(&x[i * h * w..(i + 1) * h * w], w, k, dst));
        Ok((CpuStorage::F32(y), Shape::from((n, c, h * k, w * k))))
    }

    #[cfg(feature = "train")]
    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let (n, c, h, w) = x.dims4()?;
        let k = self.scale;
        let (storage, layout) = grad.storage_and_layout();
        let g = storage_f32(&storage, layout, "upsample output gradient")?;
        let (gx, _) = par_fill(n * c * h * w, h * w, |i, gx| {
            let g = &g[i * h * w * k * k..(i + 1) * h * w * k * k];
            for (y, row) in g.chunks(w * k).enumerate() {
                let dst = &mut gx[(y / k) * w..(y / k + 1) * w];
                for (d, block) in dst.iter_mut().zip(row.chunks(k)) {
                    *d += block.iter().sum::<f32>();
                }
            }
        });
        Ok(Some(Tensor::from_vec(gx, (n, c, h, w), x.device())?))
    }
}

#[cfg(all(test, feature = "train"))]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn upsample_gradient_adds_to_the_other_uses_of_its_input() {
        // y = sum(up(x) · a) + sum(x · b): dy/dx = 2×2 block sums of a, plus b.
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::arange(0f32, 8.0, &dev).unwrap().reshape((1, 2, 2, 2)).unwrap()).unwrap();
        let a = Tensor::arange(0f32, 32.0, &dev).unwrap().reshape((1, 2, 4, 4)).unwrap();
        let b = Tensor::full(100f32, (1, 2, 2, 2), &dev).unwrap();
        let up = upsample_nearest(x.as_tensor(), 2).unwrap();
        let y = ((up * &a).unwrap().sum_all().unwrap() + (x.as_tensor() * &b).unwrap().sum_all().unwrap()).unwrap();
        let g = y.backward().unwrap().get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Channel 0 of a: rows 0..4 = 0..16; block (0,0) = 0+1+4+5 = 10, (0,1) = 18, (1,0) = 42, (1,1) = 50.
        assert_eq!(&g[..4], &[110.0, 118.0, 142.0, 150.0]);
    }

    /// The CPU op and the broadcast form (what other devices run) agree, values and gradients.
    #[test]
    fn cpu_op_matches_the_broadcast_form() {
        let dev = Device::Cpu;
        for (scale, h, w) in [(2, 3, 5), (3, 2, 1)] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, h, w), &dev).unwrap()).unwrap();
            let ours = upsample_nearest(x.as_tensor(), scale).unwrap();
            let (n, c) = (2, 3);
            let theirs = x
                .reshape((n, c, h, 1, w, 1))
                .unwrap()
                .broadcast_as((n, c, h, scale, w, scale))
                .unwrap()
                .reshape((n, c, h * scale, w * scale))
                .unwrap();
            let diff = (&ours - &theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(diff, 0.0);
            let probe = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
            let g1 = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (theirs * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let (g1, g2) = (g1.get(x.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap());
            let diff = (g1 - g2).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "scale {scale}: {diff}");
        }
    }
}

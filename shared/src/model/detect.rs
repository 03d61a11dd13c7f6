//! `Detect`: the anchor-based YOLOv5 head.
//!
//! Per level `i`, a 1×1 convolution `m.{i}` (with bias) maps the input to `na·(nc+5)` channels,
//! viewed as raw outputs `[bs, na, ny, nx, nc+5]` (pre-sigmoid; what the loss takes). Decoding
//! (what NMS takes) is `xy = (2σ(t) − 0.5 + grid)·stride`, `wh = (2σ(t))²·anchor_px`,
//! `obj, cls = σ(t)`, concatenated over levels in (anchor, y, x) order. `model.24.anchors` holds
//! the anchors in grid units (pixels / stride), as Ultralytics stores them.

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};
#[cfg(feature = "train")]
use rayon::prelude::*;
use candle_nn::{Init, VarBuilder};

use super::conv::ConvShape;
use super::gemm_conv;
use super::kernels::{cpu_f32, on_cpu_f32, par_fill};
#[cfg(feature = "train")]
use super::kernels::{lane_sum, storage_f32};

#[derive(Debug, Clone)]
pub struct Detect {
    /// `m.{i}.weight`, `m.{i}.bias` per level.
    pub convs: Vec<(Tensor, Tensor)>,
    /// `[nl, na, 2]`, grid units.
    pub anchors: Tensor,
    pub strides: Vec<usize>,
    pub nc: usize,
    pub na: usize,
}

impl Detect {
    pub fn load(vb: VarBuilder, nc: usize, anchors_px: &[Vec<(f32, f32)>], ch: &[usize], strides: &[usize]) -> Result<Self> {
        let na = anchors_px[0].len();
        let no = nc + 5;
        let convs = ch
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let bound = 1.0 / (c as f64).sqrt();
                let init = Init::Uniform { lo: -bound, up: bound };
                let vb = vb.pp("m").pp(i);
                Ok((vb.get_with_hints((na * no, c, 1, 1), "weight", init)?, vb.get_with_hints(na * no, "bias", init)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let grid_units: Vec<f32> = anchors_px
            .iter()
            .zip(strides)
            .flat_map(|(level, &s)| level.iter().flat_map(move |&(w, h)| [w / s as f32, h / s as f32]))
            .collect();
        let default = Tensor::from_vec(grid_units, (anchors_px.len(), na, 2), &Device::Cpu)?;
        let anchors = if vb.contains_tensor("anchors") {
            vb.get((anchors_px.len(), na, 2), "anchors")?
        } else {
            default.to_device(vb.device())?
        };
        Ok(Self { convs, anchors, strides: strides.to_vec(), nc, na })
    }

    /// Raw outputs per level, `[bs, na, ny, nx, nc+5]`.
    pub fn forward(&self, xs: &[Tensor]) -> Result<Vec<Tensor>> {
        if xs.len() != self.convs.len() {
            candle_core::bail!("Detect expects {} inputs, got {}", self.convs.len(), xs.len());
        }
        xs.iter()
            .zip(&self.convs)
            .map(|(x, (w, b))| {
                let shape = ConvShape::same(x.dim(1)?, w.dim(0)?, 1, 1);
                head_layout(&gemm_conv::conv2d(x, w, shape)?, b, self.na)
            })
            .collect()
    }

    /// Boxes for NMS: `[bs, N, nc+5]` with xywh in input pixels, objectness and class scores.
    pub fn decode(&self, raw: &[Tensor]) -> Result<Tensor> {
        let mut levels = Vec::with_capacity(raw.len());
        for (i, r) in raw.iter().enumerate() {
            let (bs, na, ny, nx, no) = r.dims5()?;
            let stride = self.strides[i] as f64;
            let s = candle_nn::ops::sigmoid(r)?;
            let dev = r.device();
            let xs = Tensor::arange(0u32, nx as u32, dev)?.to_dtype(DType::F32)?.reshape((1, 1, 1, nx, 1))?.broadcast_as((1, 1, ny, nx, 1))?;
            let ys = Tensor::arange(0u32, ny as u32, dev)?.to_dtype(DType::F32)?.reshape((1, 1, ny, 1, 1))?.broadcast_as((1, 1, ny, nx, 1))?;
            let grid = (Tensor::cat(&[&xs, &ys], 4)? - 0.5)?.to_dtype(r.dtype())?;
            let xy = ((s.narrow(4, 0, 2)? * 2.0)?.broadcast_add(&grid)? * stride)?;
            let anchor_px = (self.anchors.get(i)? * stride)?.reshape((1, na, 1, 1, 2))?.to_dtype(r.dtype())?;
            let wh = (s.narrow(4, 2, 2)? * 2.0)?.sqr()?.broadcast_mul(&anchor_px)?;
            let rest = s.narrow(4, 4, no - 4)?;
            levels.push(Tensor::cat(&[&xy, &wh, &rest], 4)?.reshape((bs, na * ny * nx, no))?);
        }
        Tensor::cat(&levels, 1)
    }
}

/// `[bs, na·no, ny, nx]` plus the bias `b` per channel, as `[bs, na, ny, nx, no]`. On CPU f32
/// one op with a direct backward; built from candle's ops, the broadcast bias and the permuted
/// copy cost a strided `sum_keepdim` and a single-threaded strided copy of the head's gradient.
fn head_layout(x: &Tensor, b: &Tensor, na: usize) -> Result<Tensor> {
    let (bs, c, ny, nx) = x.dims4()?;
    if !c.is_multiple_of(na) {
        candle_core::bail!("Detect output of {c} channels is not {na} anchors × outputs");
    }
    if on_cpu_f32(x) {
        x.contiguous()?.apply_op2(&b.contiguous()?, HeadLayout { na })
    } else {
        let x = x.broadcast_add(&b.reshape((1, (), 1, 1))?)?;
        x.reshape((bs, na, c / na, ny, nx))?.permute((0, 1, 3, 4, 2))?.contiguous()
    }
}

struct HeadLayout {
    na: usize,
}

impl CustomOp2 for HeadLayout {
    fn name(&self) -> &'static str {
        "mistnet-detect-head-layout"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, b) = (cpu_f32(s1, l1, "Detect convolution output")?, cpu_f32(s2, l2, "Detect bias")?);
        let (bs, c, ny, nx) = l1.shape().dims4()?;
        if b.len() != c {
            candle_core::bail!("Detect bias of {} values for {c} channels", b.len());
        }
        let (no, hw) = (c / self.na, ny * nx);
        // One [hw, no] block per (image, anchor), the transpose of its [no, hw] input block plus bias.
        let (y, _) = par_fill(x.len(), hw * no, |ba, y| {
            let x = &x[ba * no * hw..(ba + 1) * no * hw];
            let bias = &b[(ba % self.na) * no..][..no];
            for (o, (row, &bo)) in x.chunks(hw).zip(bias).enumerate() {
                for (p, &v) in row.iter().enumerate() {
                    y[p * no + o] = v + bo;
                }
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((bs, self.na, ny, nx, no))))
    }

    #[cfg(feature = "train")]
    fn bwd(&self, x: &Tensor, _b: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (bs, c, ny, nx) = x.dims4()?;
        let (no, hw) = (c / self.na, ny * nx);
        let (storage, layout) = grad.storage_and_layout();
        let g = storage_f32(&storage, layout, "Detect output gradient")?;
        let (gx, _) = par_fill(g.len(), no * hw, |i, gx| {
            let g = &g[i * hw * no..(i + 1) * hw * no];
            for (o, row) in gx.chunks_mut(hw).enumerate() {
                for (p, v) in row.iter_mut().enumerate() {
                    *v = g[p * no + o];
                }
            }
        });
        let plane_sums: Vec<f64> = gx.par_chunks(hw).map(|p| lane_sum(p, p, |a, _| a)).collect();
        let mut gb = vec![0f64; c];
        for (ch, s) in plane_sums.into_iter().enumerate() {
            gb[ch % c] += s;
        }
        let gb = gb.into_iter().map(|v| v as f32).collect::<Vec<_>>();
        Ok((Some(Tensor::from_vec(gx, (bs, c, ny, nx), x.device())?), Some(Tensor::from_vec(gb, c, x.device())?)))
    }
}

#[cfg(all(test, feature = "train"))]
mod tests {
    use candle_core::Var;

    use super::*;

    /// The CPU op agrees with candle's broadcast add, reshape and permute: values and both gradients.
    #[test]
    fn head_layout_matches_candle_ops() {
        let dev = Device::Cpu;
        let (na, no) = (3, 4);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, na * no, 3, 5), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, na * no, &dev).unwrap()).unwrap();
        let ours = head_layout(&x, &b, na).unwrap();
        let theirs = x
            .broadcast_add(&b.reshape((1, (), 1, 1)).unwrap())
            .unwrap()
            .reshape((2, na, no, 3, 5))
            .unwrap()
            .permute((0, 1, 3, 4, 2))
            .unwrap();
        assert_eq!(ours.dims(), &[2, na, 3, 5, no]);
        let max = |t: Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(max((&ours - &theirs).unwrap()), 0.0);
        let probe = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
        let g1 = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (theirs * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [x.as_tensor(), b.as_tensor()] {
            assert!(max((g1.get(v).unwrap() - g2.get(v).unwrap()).unwrap()) < 1e-5);
        }
    }
}

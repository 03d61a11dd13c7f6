//! Inference-only CPU kernels for the folded Front, on one image at a time, and the layouts the
//! fused path passes between layers ([`Planes`], [`PairPlanes`], [`Activation`]).
//!
//! Without AVX-512 (or for grouped convolutions), convolutions run here, in f32 ([`super::direct`]
//! has the kernels used otherwise). A convolution is a GEMM `W[c2, c1·k·k] · col(x)[c1·k·k, Ho·Wo]`.
//! Instead of materialising the whole `col` matrix (44 MB for yolov5s' stem at 640 px), the output is cut into tiles of a few
//! rows; each tile builds its slice of `col` in a small per-thread buffer, runs the GEMM, and
//! applies bias, SiLU and an optional residual while the tile is still in cache. Tiles run in
//! parallel on rayon's pool; a 1×1 stride-1 convolution reads the input directly, with no `col`.

use std::borrow::Cow;
use std::cell::RefCell;

use rayon::prelude::*;

use super::conv::ConvShape;
#[cfg(target_arch = "x86_64")]
use super::direct;
use super::direct::{PackedWeights, Precision, bf16_pair, bf16_unpair};
use super::kernels::{silu, widest};
use super::upsample;

/// One image: `c` planes of `h × w` values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Planes {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<f32>,
}

impl Planes {
    pub fn new(c: usize, h: usize, w: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), c * h * w, "planes data length");
        Self { c, h, w, data }
    }

    /// Concatenates along channels.
    pub fn cat(parts: &[&Planes]) -> Planes {
        let (h, w) = (parts[0].h, parts[0].w);
        assert!(parts.iter().all(|p| p.h == h && p.w == w), "concatenated planes must share their size");
        let mut data = Vec::with_capacity(parts.iter().map(|p| p.data.len()).sum());
        for p in parts {
            data.extend_from_slice(&p.data);
        }
        Planes::new(parts.iter().map(|p| p.c).sum(), h, w, data)
    }
}

/// One image in bf16, two channels per word: plane `i` holds channels `2i` (low half) and `2i + 1`
/// (high half; zero when `c` is odd). What the bf16 direct kernels read and write.
#[derive(Debug, Clone, PartialEq)]
pub struct PairPlanes {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<u32>,
}

impl PairPlanes {
    pub fn new(c: usize, h: usize, w: usize, data: Vec<u32>) -> Self {
        assert_eq!(data.len(), c.div_ceil(2) * h * w, "pair planes data length");
        Self { c, h, w, data }
    }

    /// `x` rounded to bf16 (to nearest, ties to even).
    pub fn from_f32(x: &Planes) -> Self {
        let hw = x.h * x.w;
        let plane = |ci: usize| &x.data[ci * hw..(ci + 1) * hw];
        let mut data = Vec::with_capacity(x.c.div_ceil(2) * hw);
        for cp in 0..x.c.div_ceil(2) {
            let lo = plane(2 * cp);
            match (2 * cp + 1 < x.c).then(|| plane(2 * cp + 1)) {
                Some(hi) => data.extend(lo.iter().zip(hi).map(|(&a, &b)| bf16_pair(a, b))),
                None => data.extend(lo.iter().map(|&a| bf16_pair(a, 0.0))),
            }
        }
        Self::new(x.c, x.h, x.w, data)
    }

    pub fn to_f32(&self) -> Planes {
        let hw = self.h * self.w;
        let mut data = vec![0f32; self.c * hw];
        for (ci, plane) in data.chunks_mut(hw).enumerate() {
            let words = &self.data[ci / 2 * hw..(ci / 2 + 1) * hw];
            for (v, &word) in plane.iter_mut().zip(words) {
                let (lo, hi) = bf16_unpair(word);
                *v = if ci % 2 == 0 { lo } else { hi };
            }
        }
        Planes::new(self.c, self.h, self.w, data)
    }
}

/// A layer's output as the Front's fused path passes it on: f32 planes, or bf16 pairs between
/// the convolutions of a bf16 Front.
#[derive(Debug, Clone, PartialEq)]
pub enum Activation {
    F32(Planes),
    Bf16(PairPlanes),
}

impl Activation {
    /// (channels, height, width).
    pub fn dims(&self) -> (usize, usize, usize) {
        match self {
            Activation::F32(p) => (p.c, p.h, p.w),
            Activation::Bf16(p) => (p.c, p.h, p.w),
        }
    }

    pub fn to_f32(&self) -> Cow<'_, Planes> {
        match self {
            Activation::F32(p) => Cow::Borrowed(p),
            Activation::Bf16(p) => Cow::Owned(p.to_f32()),
        }
    }

    pub fn into_f32(self) -> Planes {
        match self {
            Activation::F32(p) => p,
            Activation::Bf16(p) => p.to_f32(),
        }
    }

    /// Concatenates along channels: pair planes stay pairs when every part but the last has an
    /// even channel count; otherwise all in f32.
    pub fn cat(parts: &[&Activation]) -> Activation {
        let pairs: Option<Vec<&PairPlanes>> = parts
            .iter()
            .enumerate()
            .map(|(i, a)| match a {
                Activation::Bf16(p) if p.c % 2 == 0 || i + 1 == parts.len() => Some(p),
                _ => None,
            })
            .collect();
        match pairs {
            Some(pairs) => {
                let (h, w) = (pairs[0].h, pairs[0].w);
                assert!(pairs.iter().all(|p| p.h == h && p.w == w), "concatenated planes must share their size");
                let data = pairs.iter().flat_map(|p| p.data.iter().copied()).collect();
                Activation::Bf16(PairPlanes::new(pairs.iter().map(|p| p.c).sum(), h, w, data))
            }
            None => {
                let planes: Vec<Cow<Planes>> = parts.iter().map(|a| a.to_f32()).collect();
                Activation::F32(Planes::cat(&planes.iter().map(|p| p.as_ref()).collect::<Vec<_>>()))
            }
        }
    }
}

/// Output elements per tile's `col` buffer: keeps a tile's working set in L2.
const COL_TILE_BYTES: usize = 256 * 1024;

/// Folded convolution weights in GEMM layout, and packed for the direct kernels.
#[derive(Debug, Clone)]
pub struct ConvKernel {
    /// `[c2, c1/g · k · k]`, row-major.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub shape: ConvShape,
    /// `None` where the direct kernels do not apply to this shape.
    packed: Option<PackedWeights>,
}

struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

thread_local! {
    static COL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl ConvKernel {
    pub fn new(weight: Vec<f32>, bias: Vec<f32>, shape: ConvShape) -> Self {
        let packed = PackedWeights::pack(&weight, &shape);
        Self { weight, bias, shape, packed }
    }

    /// `silu(conv(x) + bias) + residual`: through the direct kernels where this CPU has them for
    /// `precision` and they apply to the shape (bf16 pairs out in bf16), else in f32 as im2col + GEMM.
    pub fn forward(&self, x: &Activation, residual: Option<&Activation>, precision: Precision) -> Activation {
        #[cfg(target_arch = "x86_64")]
        if let Some(packed) = &self.packed
            && precision.available()
        {
            return direct::conv(x, &self.shape, packed, &self.bias, residual, precision);
        }
        let _ = precision;
        Activation::F32(self.forward_im2col(&x.to_f32(), residual.map(|r| r.to_f32()).as_deref()))
    }

    /// Output size for an input of `h × w`.
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        let ConvShape { k, s, p, .. } = self.shape;
        ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1)
    }

    /// `silu(conv(x) + bias) + residual` in f32, as tiled im2col + GEMM.
    pub fn forward_im2col(&self, x: &Planes, residual: Option<&Planes>) -> Planes {
        let ConvShape { c1, c2, k, s, p, g } = self.shape;
        assert_eq!(x.c, c1, "conv input channels");
        let (ho, wo) = self.out_size(x.h, x.w);
        let hw = ho * wo;
        if let Some(r) = residual {
            assert_eq!((r.c, r.h, r.w), (c2, ho, wo), "residual shape");
        }
        let mut out = vec![0f32; c2 * hw];
        let direct = k == 1 && s == 1 && p == 0;
        let kk = c1 / g * k * k;
        // Columns per tile: whole output rows for im2col, any run for the direct 1×1 case.
        let cols = if direct {
            (COL_TILE_BYTES / 4 / c2.max(1)).max(64).next_multiple_of(16).min(hw)
        } else {
            (COL_TILE_BYTES / 4 / (kk * wo)).max(1) * wo
        };
        let tiles: Vec<usize> = (0..hw).step_by(cols).collect();
        let out_ptr = SendPtr(out.as_mut_ptr());
        let out_ptr = &out_ptr;
        tiles.par_iter().for_each(|&col0| {
            let n = cols.min(hw - col0);
            COL.with(|buf| {
                let mut buf = buf.borrow_mut();
                for gi in 0..g {
                    let (m, c_in) = (c2 / g, c1 / g);
                    let w_ptr = self.weight[gi * m * kk..].as_ptr();
                    // SAFETY: every tile writes the disjoint columns col0..col0+n of its rows.
                    let dst = unsafe { out_ptr.0.add(gi * m * hw + col0) };
                    let x_group = &x.data[gi * c_in * x.h * x.w..(gi + 1) * c_in * x.h * x.w];
                    let (rhs, rhs_rs) = if direct {
                        (x_group[col0..].as_ptr(), hw as isize)
                    } else {
                        buf.resize(kk * n, 0.0);
                        im2col(x_group, c_in, x.h, x.w, &self.shape, wo, col0 / wo, n / wo, &mut buf);
                        (buf.as_ptr(), n as isize)
                    };
                    // SAFETY: pointers and strides describe in-bounds [m, kk], [kk, n] and [m, n] matrices.
                    unsafe {
                        gemm::gemm(
                            m, n, kk, dst, 1, hw as isize, false, w_ptr, 1, kk as isize, rhs, 1, rhs_rs, 0.0, 1.0,
                            false, false, false, gemm::Parallelism::None,
                        );
                    }
                }
            });
            for r in 0..c2 {
                // SAFETY: as above, columns col0..col0+n of row r belong to this tile alone.
                let row = unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add(r * hw + col0), n) };
                let res = residual.map(|t| &t.data[r * hw + col0..r * hw + col0 + n]);
                bias_silu(row, self.bias[r], res);
            }
        });
        Planes::new(c2, ho, wo, out)
    }
}

/// Writes rows `oy0..oy0+rows` of the `col` matrix for one group: `[c·k·k, rows·wo]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn im2col(x: &[f32], c: usize, h: usize, w: usize, shape: &ConvShape, wo: usize, oy0: usize, rows: usize, col: &mut [f32]) {
    let ConvShape { k, s, p, .. } = *shape;
    let n = rows * wo;
    for ci in 0..c {
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        for ky in 0..k {
            for kx in 0..k {
                let r = (ci * k + ky) * k + kx;
                let dst_row = &mut col[r * n..(r + 1) * n];
                // Valid output columns: 0 <= ox*s + kx - p < w.
                let ox_lo = p.saturating_sub(kx).div_ceil(s).min(wo);
                let ox_hi = if w + p > kx { ((w + p - kx - 1) / s + 1).min(wo) } else { 0 }.max(ox_lo);
                for oy in 0..rows {
                    let dst = &mut dst_row[oy * wo..(oy + 1) * wo];
                    let iy = ((oy0 + oy) * s + ky) as isize - p as isize;
                    if iy < 0 || iy >= h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                    dst[..ox_lo].fill(0.0);
                    dst[ox_hi..].fill(0.0);
                    let ix0 = ox_lo * s + kx - p;
                    if s == 1 {
                        dst[ox_lo..ox_hi].copy_from_slice(&src[ix0..ix0 + (ox_hi - ox_lo)]);
                    } else {
                        for (d, ox) in dst[ox_lo..ox_hi].iter_mut().zip(0..) {
                            *d = src[ix0 + ox * s];
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`] over all `ho` output rows: adds each `col` entry back into the input
/// position it was read from (`x` is accumulated into, not overwritten).
#[allow(clippy::too_many_arguments)]
#[cfg(feature = "train")]
pub(crate) fn col2im(col: &[f32], c: usize, h: usize, w: usize, shape: &ConvShape, ho: usize, wo: usize, x: &mut [f32]) {
    let ConvShape { k, s, p, .. } = *shape;
    let n = ho * wo;
    for ci in 0..c {
        let plane = &mut x[ci * h * w..(ci + 1) * h * w];
        for ky in 0..k {
            for kx in 0..k {
                let src_row = &col[((ci * k + ky) * k + kx) * n..][..n];
                let ox_lo = p.saturating_sub(kx).div_ceil(s).min(wo);
                let ox_hi = if w + p > kx { ((w + p - kx - 1) / s + 1).min(wo) } else { 0 }.max(ox_lo);
                for oy in 0..ho {
                    let iy = (oy * s + ky) as isize - p as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * w..(iy as usize + 1) * w];
                    let src = &src_row[oy * wo..(oy + 1) * wo];
                    let ix0 = ox_lo * s + kx - p;
                    for (ox, v) in (ox_lo..ox_hi).zip(&src[ox_lo..ox_hi]) {
                        dst[ix0 + (ox - ox_lo) * s] += v;
                    }
                }
            }
        }
    }
}

/// `row = silu(row + bias) (+ residual)`, vectorised through `kernels::silu`.
fn bias_silu(row: &mut [f32], bias: f32, residual: Option<&[f32]>) {
    widest(#[inline(always)] || bias_silu_body(row, bias, residual))
}

#[inline(always)]
fn bias_silu_body(row: &mut [f32], bias: f32, residual: Option<&[f32]>) {
    match residual {
        Some(res) => {
            for (v, r) in row.iter_mut().zip(res) {
                *v = silu(*v + bias) + r;
            }
        }
        None => {
            for v in row.iter_mut() {
                *v = silu(*v + bias);
            }
        }
    }
}

/// Max-pool with kernel `k` (odd), stride 1, padding `k/2` (padding never wins: -inf).
pub fn max_pool_same(x: &Planes, k: usize) -> Planes {
    let (h, w) = (x.h, x.w);
    let mut rows = vec![0f32; h * w];
    let mut out = vec![0f32; x.data.len()];
    for (src, dst) in x.data.chunks(h * w).zip(out.chunks_mut(h * w)) {
        max_pool_plane(src, h, w, k, &mut rows, dst);
    }
    Planes::new(x.c, h, w, out)
}

/// The window maximum of one `h × w` plane, separably: `rows` gets each value's maximum over its
/// row window, `dst` the maximum of those over the column window (edges clamp the windows, as
/// padding with -inf does).
pub(crate) fn max_pool_plane(src: &[f32], h: usize, w: usize, k: usize, rows: &mut [f32], dst: &mut [f32]) {
    let r = k / 2;
    for y in 0..h {
        for xx in 0..w {
            let (lo, hi) = (xx.saturating_sub(r), (xx + r + 1).min(w));
            rows[y * w + xx] = src[y * w + lo..y * w + hi].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        }
    }
    for y in 0..h {
        let (lo, hi) = (y.saturating_sub(r), (y + r + 1).min(h));
        for xx in 0..w {
            dst[y * w + xx] = (lo..hi).map(|yy| rows[yy * w + xx]).fold(f32::NEG_INFINITY, f32::max);
        }
    }
}

/// Nearest-neighbour upsampling by an integer factor.
pub fn upsample_nearest(x: &Planes, scale: usize) -> Planes {
    let (h, w) = (x.h * scale, x.w * scale);
    let mut out = vec![0f32; x.c * h * w];
    for (src, dst) in x.data.chunks(x.h * x.w).zip(out.chunks_mut(h * w)) {
        upsample::plane(src, x.w, scale, dst);
    }
    Planes::new(x.c, h, w, out)
}

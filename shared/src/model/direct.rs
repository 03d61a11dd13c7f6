//! Direct convolution for the folded Front on AVX-512, in f32 or bf16: no `col` matrix, weights
//! packed once per layer.
//!
//! The input is copied once per layer into zero-padded planes, split into `s × s` phases for a
//! stride `s` (even rows and columns apart from odd ones), so that every kernel tap reads a run of
//! consecutive values. An output position `(oy, ox)` is the lane `oy·wq + ox` of a "wide" row of
//! `wq` lanes (the phase width; the few lanes past the output width are computed and dropped), and
//! the tap `(ky, kx)` of input channel `ci` reads the lane at a fixed offset into plane
//! `(ci, ky mod s, kx mod s)`. A micro-kernel keeps [`MR`] output channels × 48 lanes in registers
//! and walks every `(ci, tap)` with one broadcast-FMA per channel and vector; bias, SiLU and a
//! residual are applied as the tile is stored. 1×1 stride-1 convolutions read the planes as they are.
//!
//! In bf16 ([`Precision::Bf16`], AVX512-BF16), inputs and weights are bf16 in channel pairs
//! ([`PairPlanes`]) multiplied with `vdpbf16ps` (two products per lane, summed in f32): twice the
//! multiplies per instruction. Accumulation, bias, SiLU and the residual add are f32; each layer's
//! output is rounded to bf16 pairs as it is stored, which is what the next convolution reads.

use super::conv::ConvShape;

/// Output channels per micro-tile.
pub const MR: usize = 8;

/// The arithmetic of the Front's convolutions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 throughout (the default): the bits sent are those of the reference Front.
    #[default]
    F32,
    /// Inputs and weights of each convolution rounded to bf16, products summed in f32 (needs
    /// AVX512-BF16). Faster; a small fraction of the sent bits differ (BENCHMARKS.md).
    Bf16,
}

impl Precision {
    /// Whether this CPU runs the direct kernels in this precision.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let f32_ok = is_x86_feature_detected!("avx512f");
            match self {
                Precision::F32 => f32_ok,
                Precision::Bf16 => f32_ok && is_x86_feature_detected!("avx512bf16"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("precision must be f32 or bf16, got {s:?}")),
        }
    }
}

/// One layer's folded weights in micro-kernel order.
#[derive(Debug, Clone)]
pub struct PackedWeights {
    /// `[c2 / MR][c1·k·k][MR]`, f32 bits.
    f32: Vec<u32>,
    /// `[c2 / MR][⌈c1/2⌉·k·k][MR]`: bf16 pairs of channels (the even one in the low half); for
    /// [`pairs_taps`] shapes `[c2 / MR][c1·k·k/2][MR]`, pairs of horizontally adjacent taps.
    bf16: Vec<u32>,
}

/// Whether the bf16 kernel pairs horizontally adjacent taps `(kx, kx + 1)` rather than channels:
/// for an odd number of input channels (the stem's 3), at stride 2 with an even kernel (the
/// stem's 6×6), where channel pairs would multiply a quarter zeros. Such a tap pair reads two
/// neighbouring columns of one padded row, so its planes are plain rows of bf16 pairs.
fn pairs_taps(shape: &ConvShape) -> bool {
    shape.c1 % 2 == 1 && shape.s == 2 && shape.k % 2 == 0
}

impl PackedWeights {
    /// Packs `weight` (`[c2, c1·k·k]` row-major); `None` where the direct kernels do not apply
    /// (groups, or output channels not a multiple of [`MR`]).
    pub fn pack(weight: &[f32], shape: &ConvShape) -> Option<Self> {
        let ConvShape { c1, c2, k, g, .. } = *shape;
        if g != 1 || c2 % MR != 0 || c2 == 0 {
            return None;
        }
        let taps = k * k;
        let kk = c1 * taps;
        let pairs = c1.div_ceil(2);
        let mut f32s = Vec::with_capacity(c2 * kk);
        let mut bf16s = Vec::with_capacity(c2 / MR * pairs * taps * MR);
        for cb in 0..c2 / MR {
            for i in 0..kk {
                f32s.extend((0..MR).map(|r| weight[(cb * MR + r) * kk + i].to_bits()));
            }
            if pairs_taps(shape) {
                // Weight index (ci·k + ky)·k + kx; the pair is kx = 2j, 2j + 1.
                for i in (0..kk).step_by(2) {
                    bf16s.extend((0..MR).map(|r| bf16_pair(weight[(cb * MR + r) * kk + i], weight[(cb * MR + r) * kk + i + 1])));
                }
                continue;
            }
            for cp in 0..pairs {
                for t in 0..taps {
                    bf16s.extend((0..MR).map(|r| {
                        let row = &weight[(cb * MR + r) * kk..];
                        let hi = if 2 * cp + 1 < c1 {
                            row[(2 * cp + 1) * taps + t]
                        } else {
                            0.0
                        };
                        bf16_pair(row[2 * cp * taps + t], hi)
                    }));
                }
            }
        }
        Some(Self {
            f32: f32s,
            bf16: bf16s,
        })
    }
}

/// `v` rounded to the nearest bf16 (ties to even), as its 16 bits.
#[inline(always)]
fn bf16_bits(v: f32) -> u32 {
    let b = v.to_bits();
    (b.wrapping_add(0x7fff + ((b >> 16) & 1))) >> 16
}

/// Two values rounded to bf16 in one word, `lo` in the low half.
#[inline(always)]
pub(crate) fn bf16_pair(lo: f32, hi: f32) -> u32 {
    bf16_bits(lo) | (bf16_bits(hi) << 16)
}

/// The two values of a bf16 pair word.
#[inline(always)]
pub(crate) fn bf16_unpair(word: u32) -> (f32, f32) {
    (
        f32::from_bits(word << 16),
        f32::from_bits(word & 0xffff_0000),
    )
}

#[cfg(target_arch = "x86_64")]
pub use x86::conv;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use rayon::prelude::*;

    use super::super::conv::ConvShape;
    use super::super::planes::{Activation, PairPlanes, Planes};
    use super::{MR, PackedWeights, Precision, bf16_bits, bf16_pair, pairs_taps};

    /// 16-lane vectors per micro-tile.
    const NV: usize = 3;
    /// Output lanes per micro-tile.
    const NR: usize = 16 * NV;
    /// Micro-tiles of lanes per parallel task.
    const TILES_PER_TASK: usize = 4;

    /// `silu(conv(x) + bias) (+ residual)`: f32 planes out in f32, bf16 pairs out in bf16. The
    /// caller checks [`Precision::available`] and that `packed` exists for this layer.
    pub fn conv(
        x: &Activation,
        shape: &ConvShape,
        packed: &PackedWeights,
        bias: &[f32],
        residual: Option<&Activation>,
        precision: Precision,
    ) -> Activation {
        let ConvShape {
            c1, c2, k, s, p, ..
        } = *shape;
        let (c, h, w) = x.dims();
        assert_eq!(c, c1, "conv input channels");
        let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        if let Some(r) = residual {
            assert_eq!(r.dims(), (c2, ho, wo), "residual shape");
        }
        let direct = k == 1 && s == 1 && p == 0;
        // The f32 kernel reads f32 planes, and tap pairs are made from f32 rows: bf16 channel pairs
        // met there are widened first.
        let widened;
        let x = match x {
            Activation::Bf16(pairs) if precision == Precision::F32 || pairs_taps(shape) => {
                widened = Activation::F32(pairs.to_f32());
                &widened
            }
            _ => x,
        };
        // The input as 32-bit words in tap planes: (words, plane length, wide row).
        let prepared: Vec<u32>;
        let (words, plane_len, wq): (&[u32], usize, usize) = match (precision, x) {
            (Precision::F32, Activation::F32(x)) if direct => (as_words(&x.data), h * w, w),
            (Precision::Bf16, Activation::Bf16(x)) if direct => (&x.data, h * w, w),
            (Precision::F32, Activation::F32(x)) => {
                let (buf, plane_len, wq) =
                    prepare(as_words(&x.data), c1, h, w, shape, 1, copy_fill);
                prepared = buf;
                (&prepared, plane_len, wq)
            }
            (Precision::Bf16, Activation::Bf16(x)) => {
                let (buf, plane_len, wq) =
                    prepare(&x.data, c1.div_ceil(2), h, w, shape, 1, copy_fill);
                prepared = buf;
                (&prepared, plane_len, wq)
            }
            (Precision::Bf16, Activation::F32(x)) if pairs_taps(shape) => {
                let (buf, plane_len, wq) = prepare_tap_pairs(x, shape);
                prepared = buf;
                (&prepared, plane_len, wq)
            }
            (Precision::Bf16, Activation::F32(x)) => {
                let (buf, plane_len, wq) = prepare(&x.data, c1, h, w, shape, 2, pair_fill);
                prepared = buf;
                (&prepared, plane_len, wq)
            }
            (Precision::F32, Activation::Bf16(_)) => unreachable!("widened above"),
        };
        let offsets = match precision {
            Precision::F32 => tap_offsets(c1, shape, plane_len, wq),
            Precision::Bf16 if pairs_taps(shape) => tap_pair_offsets(c1, shape, plane_len, wq),
            Precision::Bf16 => tap_offsets(c1.div_ceil(2), shape, plane_len, wq),
        };
        let weights = match precision {
            Precision::F32 => &packed.f32,
            Precision::Bf16 => &packed.bf16,
        };
        let g = Geometry { ho, wo, wq, c2 };
        // Every value is written by `run` (the tiles cover every output lane of every channel
        // block), so the buffers are not zeroed first.
        match precision {
            Precision::F32 => {
                let mut out = Vec::<f32>::with_capacity(c2 * ho * wo);
                run(
                    &offsets,
                    words,
                    weights,
                    bias,
                    residual,
                    g,
                    Out::F32(out.as_mut_ptr()),
                );
                // SAFETY: `run` wrote all c2·ho·wo values through the spare capacity.
                unsafe { out.set_len(c2 * ho * wo) };
                Activation::F32(Planes::new(c2, ho, wo, out))
            }
            Precision::Bf16 => {
                let mut out = Vec::<u32>::with_capacity(c2 / 2 * ho * wo);
                run(
                    &offsets,
                    words,
                    weights,
                    bias,
                    residual,
                    g,
                    Out::Pairs(out.as_mut_ptr()),
                );
                // SAFETY: as above, all c2/2·ho·wo pair words.
                unsafe { out.set_len(c2 / 2 * ho * wo) };
                Activation::Bf16(PairPlanes::new(c2, ho, wo, out))
            }
        }
    }

    /// f32 values as their bits (the kernels move and multiply them, never reinterpret).
    fn as_words(v: &[f32]) -> &[u32] {
        // SAFETY: f32 and u32 have the same size and alignment, and every bit pattern is a u32.
        unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u32>(), v.len()) }
    }

    /// Padded, phase-split copy of `planes` source planes of `h × w` words for a `k × k`
    /// stride-`s` padding-`p` convolution, `group` source planes per word: (buffer, plane length,
    /// wide row). `fill(dst, rows, c_lo, c_hi, s, start)` writes `dst[c]` for `c_lo..c_hi` from
    /// source column `start + (c − c_lo)·s` of `rows` (one row per source plane of the group).
    fn prepare<S: Sync>(
        data: &[S],
        planes: usize,
        h: usize,
        w: usize,
        shape: &ConvShape,
        group: usize,
        fill: unsafe fn(&mut [u32], &[&[S]], usize, usize, usize, usize),
    ) -> (Vec<u32>, usize, usize) {
        let ConvShape { k, s, p, .. } = *shape;
        let (hq, wq) = ((h + 2 * p).div_ceil(s), (w + 2 * p).div_ceil(s));
        // Room for the taps' reads past the last wide row (`run` checks it).
        let plane_len = (hq * wq + k).next_multiple_of(16);
        let mut buf = vec![0u32; planes.div_ceil(group) * s * s * plane_len];
        buf.par_chunks_mut(s * s * plane_len)
            .enumerate()
            .for_each(|(cg, phases)| {
                let chans = cg * group..((cg + 1) * group).min(planes);
                // Row-major over the source: each source row is read once for all its column phases.
                for a in 0..s {
                    for r in 0..hq {
                        let y = (r * s + a) as isize - p as isize;
                        if y < 0 || y >= h as isize {
                            continue;
                        }
                        let at = |ci: usize| {
                            &data[(ci * h + y as usize) * w..(ci * h + y as usize + 1) * w]
                        };
                        let rows: [&[S]; 2] = [at(chans.start), at(chans.end - 1)];
                        for b in 0..s {
                            // Phase columns c read source column c·s + b − p; keep those inside 0..w.
                            let c_lo = p.saturating_sub(b).div_ceil(s).min(wq);
                            let c_hi = (w + p).saturating_sub(b).div_ceil(s).clamp(c_lo, wq);
                            if c_lo < c_hi {
                                let row = (a * s + b) * plane_len + r * wq;
                                // SAFETY: the caller of `conv` checked for AVX-512; `fill` stays in its slices.
                                unsafe {
                                    fill(
                                        &mut phases[row..row + wq],
                                        &rows[..chans.len()],
                                        c_lo,
                                        c_hi,
                                        s,
                                        c_lo * s + b - p,
                                    )
                                };
                            }
                        }
                    }
                }
            });
        (buf, plane_len, wq)
    }

    /// `row[start + s·i]` for the 16 lanes `i`, `s` 1 or 2; the caller keeps `start + 16·s ≤ row.len()`.
    #[inline(always)]
    unsafe fn load_strided(row: *const u32, start: usize, s: usize) -> __m512i {
        unsafe {
            let ptr = row.add(start).cast::<__m512i>();
            if s == 1 {
                _mm512_loadu_si512(ptr)
            } else {
                let even =
                    _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
                _mm512_permutex2var_epi32(
                    _mm512_loadu_si512(ptr),
                    even,
                    _mm512_loadu_si512(ptr.add(1)),
                )
            }
        }
    }

    /// `prepare`'s fill that copies words: f32 planes for the f32 kernel, bf16 pairs for the bf16 one.
    #[target_feature(enable = "avx512f")]
    unsafe fn copy_fill(
        dst: &mut [u32],
        rows: &[&[u32]],
        c_lo: usize,
        c_hi: usize,
        s: usize,
        start: usize,
    ) {
        let row = rows[0];
        let src = |c: usize| start + (c - c_lo) * s;
        let mut c = c_lo;
        if s <= 2 {
            while c + 16 <= c_hi && src(c) + 16 * s <= row.len() {
                // SAFETY: the 16·s words read lie inside `row`, the 16 written inside `dst`.
                unsafe {
                    _mm512_storeu_si512(
                        dst.as_mut_ptr().add(c).cast(),
                        load_strided(row.as_ptr(), src(c), s),
                    )
                };
                c += 16;
            }
        }
        for c in c..c_hi {
            dst[c] = row[src(c)];
        }
    }

    /// [`bf16_bits`] on 16 lanes.
    #[inline(always)]
    unsafe fn bf16_bits16(v: __m512i) -> __m512i {
        unsafe {
            let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(v), _mm512_set1_epi32(1));
            _mm512_srli_epi32::<16>(_mm512_add_epi32(
                v,
                _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)),
            ))
        }
    }

    /// `prepare`'s fill that pairs two f32 planes into bf16 words (the second plane's values in the
    /// high half; zero when the group has one plane).
    #[target_feature(enable = "avx512f")]
    unsafe fn pair_fill(
        dst: &mut [u32],
        rows: &[&[f32]],
        c_lo: usize,
        c_hi: usize,
        s: usize,
        start: usize,
    ) {
        let (lo, hi) = (as_words(rows[0]), rows.get(1).map(|r| as_words(r)));
        let src = |c: usize| start + (c - c_lo) * s;
        let mut c = c_lo;
        if s <= 2 {
            while c + 16 <= c_hi && src(c) + 16 * s <= lo.len() {
                // SAFETY: as in `copy_fill`; both rows have the same length.
                unsafe {
                    let l = bf16_bits16(load_strided(lo.as_ptr(), src(c), s));
                    // A `match`, not a closure: a closure would be compiled without AVX-512.
                    let h = match hi {
                        Some(hi) => bf16_bits16(load_strided(hi.as_ptr(), src(c), s)),
                        None => _mm512_setzero_si512(),
                    };
                    _mm512_storeu_si512(
                        dst.as_mut_ptr().add(c).cast(),
                        _mm512_or_si512(l, _mm512_slli_epi32::<16>(h)),
                    );
                }
                c += 16;
            }
        }
        for c in c..c_hi {
            let i = src(c);
            dst[c] = bf16_bits(rows[0][i]) | rows.get(1).map_or(0, |hi| bf16_bits(hi[i]) << 16);
        }
    }

    /// [`prepare`] for [`pairs_taps`] shapes (stride 2): per channel and row phase `a`, the padded
    /// rows `2r + a` as bf16 pairs of neighbouring columns, `(2c, 2c + 1)`.
    fn prepare_tap_pairs(x: &Planes, shape: &ConvShape) -> (Vec<u32>, usize, usize) {
        let ConvShape { k, p, .. } = *shape;
        let (h, w) = (x.h, x.w);
        let (hq, wq) = ((h + 2 * p).div_ceil(2), (w + 2 * p).div_ceil(2));
        let plane_len = (hq * wq + k).next_multiple_of(16);
        let mut buf = vec![0u32; x.c * 2 * plane_len];
        buf.par_chunks_mut(2 * plane_len).enumerate().for_each(|(ci, planes)| {
            for (a, plane) in planes.chunks_mut(plane_len).enumerate() {
                for r in 0..hq {
                    let y = (2 * r + a) as isize - p as isize;
                    if y >= 0 && y < h as isize {
                        let row = &x.data[(ci * h + y as usize) * w..][..w];
                        // SAFETY: the caller of `conv` checked for AVX512-BF16.
                        unsafe { pair_columns(&mut plane[r * wq..(r + 1) * wq], row, p) };
                    }
                }
            }
        });
        (buf, plane_len, wq)
    }

    /// `dst[c] = (row[2c − p], row[2c + 1 − p])` in bf16, zero outside the row.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn pair_columns(dst: &mut [u32], row: &[f32], p: usize) {
        let at = |i: isize| if i >= 0 && (i as usize) < row.len() { row[i as usize] } else { 0.0 };
        let mut c = 0;
        while c < dst.len() {
            let start = 2 * c as isize - p as isize;
            if start >= 0 && start as usize + 32 <= row.len() && c + 16 <= dst.len() {
                // SAFETY: 32 values of `row` from `start`, 16 words of `dst` from c. The 32 bf16 come
                // out in memory order, so value 2i is the low half of word i.
                unsafe {
                    let src = row.as_ptr().add(start as usize);
                    let v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src.add(16)), _mm512_loadu_ps(src));
                    _mm512_storeu_si512(dst.as_mut_ptr().add(c).cast(), std::mem::transmute::<__m512bh, __m512i>(v));
                }
                c += 16;
            } else {
                dst[c] = bf16_pair(at(start), at(start + 1));
                c += 1;
            }
        }
    }

    /// [`tap_offsets`] for [`pairs_taps`] shapes: `(ci, ky, kx pair j)` reads plane `(ci, ky mod 2)`
    /// at row `ky / 2`, column `j`.
    fn tap_pair_offsets(c1: usize, shape: &ConvShape, plane_len: usize, wq: usize) -> Vec<usize> {
        let k = shape.k;
        let mut offsets = Vec::with_capacity(c1 * k * k / 2);
        for ci in 0..c1 {
            for ky in 0..k {
                for j in 0..k / 2 {
                    offsets.push((ci * 2 + ky % 2) * plane_len + (ky / 2) * wq + j);
                }
            }
        }
        offsets
    }

    /// Word offset of each `(plane group, tap)` into the prepared buffer, for output lane 0.
    fn tap_offsets(groups: usize, shape: &ConvShape, plane_len: usize, wq: usize) -> Vec<usize> {
        let ConvShape { k, s, .. } = *shape;
        let mut offsets = Vec::with_capacity(groups * k * k);
        for cg in 0..groups {
            for ky in 0..k {
                for kx in 0..k {
                    let plane = cg * s * s + (ky % s) * s + kx % s;
                    offsets.push(plane * plane_len + (ky / s) * wq + kx / s);
                }
            }
        }
        offsets
    }

    #[derive(Clone, Copy)]
    struct Geometry {
        ho: usize,
        wo: usize,
        /// Lanes per wide output row.
        wq: usize,
        c2: usize,
    }

    /// Where a layer's output goes: compact f32 planes, or compact bf16 pair planes.
    #[derive(Clone, Copy)]
    enum Out {
        F32(*mut f32),
        Pairs(*mut u32),
    }
    // SAFETY: tasks write disjoint lanes of the output (see `run`).
    unsafe impl Send for Out {}
    unsafe impl Sync for Out {}

    /// Runs every micro-tile: tasks of [`TILES_PER_TASK`] lane tiles in parallel, each over all
    /// output-channel blocks (whose weights stay in L1 across the task's tiles).
    fn run(
        offsets: &[usize],
        words: &[u32],
        weights: &[u32],
        bias: &[f32],
        residual: Option<&Activation>,
        g: Geometry,
        out: Out,
    ) {
        let lanes = g.ho * g.wq;
        let tiles = lanes.div_ceil(NR);
        let max_offset = offsets.iter().copied().max().unwrap_or(0);
        // The last lane read is `lanes − 1 + max_offset`: inside the words (`prepare` leaves room;
        // unprepared 1×1 input has exactly `lanes` words per plane).
        assert!(
            lanes + max_offset <= words.len(),
            "prepared planes too short for the taps"
        );
        let bf16 = matches!(out, Out::Pairs(_));
        (0..tiles.div_ceil(TILES_PER_TASK))
            .into_par_iter()
            .for_each(|task| {
                let tiles = task * TILES_PER_TASK..((task + 1) * TILES_PER_TASK).min(tiles);
                let t = Task {
                    offsets,
                    words: words.as_ptr(),
                    weights,
                    bias,
                    residual,
                    g,
                    out,
                    tiles,
                    lanes,
                };
                // SAFETY: AVX-512 (and BF16 for that kernel) were checked by `conv`'s caller; each
                // task writes only the output lanes of its own tiles.
                unsafe { if bf16 { task_bf16(t) } else { task_f32(t) } }
            });
    }

    struct Task<'a> {
        offsets: &'a [usize],
        words: *const u32,
        weights: &'a [u32],
        bias: &'a [f32],
        residual: Option<&'a Activation>,
        g: Geometry,
        out: Out,
        tiles: std::ops::Range<usize>,
        lanes: usize,
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn task_f32(t: Task) {
        unsafe { task::<false>(t) }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn task_bf16(t: Task) {
        unsafe { task::<true>(t) }
    }

    /// One task's tiles, for every output-channel block. Everything it calls is inlined into the
    /// `target_feature` function that calls it.
    #[inline(always)]
    unsafe fn task<const BF16: bool>(t: Task) {
        let kk = t.offsets.len();
        let mut tile = [0f32; MR * NR];
        let mut taps: Vec<*const u32> = Vec::with_capacity(kk);
        for cb in 0..t.g.c2 / MR {
            let w = t.weights[cb * kk * MR..(cb + 1) * kk * MR].as_ptr();
            for tile_index in t.tiles.clone() {
                let o = tile_index * NR;
                let n = NR.min(t.lanes - o);
                taps.clear();
                // SAFETY: offsets + o stay inside the words (checked in `run`).
                taps.extend(t.offsets.iter().map(|&off| unsafe { t.words.add(off + o) }));
                let masks: [__mmask16; NV] = std::array::from_fn(|j| {
                    ((1u32 << n.saturating_sub(16 * j).min(16)) - 1) as u16
                });
                unsafe {
                    if BF16 {
                        micro_bf16(&taps, w, masks, &mut tile)
                    } else {
                        micro_f32(&taps, w, masks, &mut tile)
                    }
                    store(&tile, n, o, cb * MR, t.bias, t.residual, t.g, t.out);
                }
            }
        }
    }

    #[inline(always)]
    unsafe fn micro_f32(
        taps: &[*const u32],
        w: *const u32,
        masks: [__mmask16; NV],
        tile: &mut [f32; MR * NR],
    ) {
        // No closures here: a closure would be compiled without AVX-512.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); NV]; MR];
            for (i, &p) in taps.iter().enumerate() {
                let p = p.cast::<f32>();
                let mut a = [_mm512_setzero_ps(); NV];
                for (j, a) in a.iter_mut().enumerate() {
                    *a = _mm512_maskz_loadu_ps(masks[j], p.add(16 * j));
                }
                let wk = w.add(i * MR).cast::<f32>();
                for (r, acc) in acc.iter_mut().enumerate() {
                    let b = _mm512_set1_ps(*wk.add(r));
                    for j in 0..NV {
                        acc[j] = _mm512_fmadd_ps(b, a[j], acc[j]);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (j, v) in acc.iter().enumerate() {
                    _mm512_storeu_ps(tile.as_mut_ptr().add(r * NR + 16 * j), *v);
                }
            }
        }
    }

    #[inline(always)]
    unsafe fn micro_bf16(
        taps: &[*const u32],
        w: *const u32,
        masks: [__mmask16; NV],
        tile: &mut [f32; MR * NR],
    ) {
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); NV]; MR];
            for (i, &p) in taps.iter().enumerate() {
                let mut a = [std::mem::transmute::<__m512i, __m512bh>(_mm512_setzero_si512()); NV];
                for (j, a) in a.iter_mut().enumerate() {
                    *a = std::mem::transmute::<__m512i, __m512bh>(_mm512_maskz_loadu_epi32(masks[j], p.add(16 * j).cast()));
                }
                let wk = w.add(i * MR);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let b = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(
                        *wk.add(r) as i32
                    ));
                    for j in 0..NV {
                        acc[j] = _mm512_dpbf16_ps(acc[j], b, a[j]);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (j, v) in acc.iter().enumerate() {
                    _mm512_storeu_ps(tile.as_mut_ptr().add(r * NR + 16 * j), *v);
                }
            }
        }
    }

    /// `silu(x)` on 16 lanes: `kernels::silu`'s exp (Cephes' polynomial, the same operations), and
    /// the reciprocal of `1 + e⁻ˣ` from `vrcp14ps` and one Newton step (near f32 precision)
    /// instead of a division, which would cost more than the rest.
    #[inline(always)]
    unsafe fn silu16(x: __m512) -> __m512 {
        unsafe {
            let set = _mm512_set1_ps;
            const ROUND: f32 = 12_582_912.0;
            let z = _mm512_min_ps(
                _mm512_max_ps(_mm512_sub_ps(_mm512_setzero_ps(), x), set(-87.0)),
                set(88.0),
            );
            let t = _mm512_add_ps(_mm512_mul_ps(z, set(std::f32::consts::LOG2_E)), set(ROUND));
            let n = _mm512_sub_ps(t, set(ROUND));
            let r = _mm512_add_ps(
                _mm512_sub_ps(z, _mm512_mul_ps(n, set(0.693_359_4))),
                _mm512_mul_ps(n, set(2.121_944_4e-4)),
            );
            let mut p = set(1.987_569_1e-4);
            for c in [
                1.398_2e-3,
                8.333_452e-3,
                4.166_579_6e-2,
                1.666_666_5e-1,
                0.5,
            ] {
                p = _mm512_add_ps(_mm512_mul_ps(p, r), set(c));
            }
            let e = _mm512_add_ps(
                _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(p, r), r), r),
                set(1.0),
            );
            let k = _mm512_sub_epi32(
                _mm512_castps_si512(t),
                _mm512_set1_epi32(ROUND.to_bits() as i32),
            );
            let e = _mm512_mul_ps(
                e,
                _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
                    k,
                    _mm512_set1_epi32(127),
                ))),
            );
            let d = _mm512_add_ps(e, set(1.0));
            let q = _mm512_rcp14_ps(d);
            let q = _mm512_mul_ps(q, _mm512_fnmadd_ps(d, q, set(2.0)));
            _mm512_mul_ps(x, q)
        }
    }

    /// The values of a pair word vector: the low (even channel) or high half, as f32.
    #[inline(always)]
    unsafe fn unpair16(words: __m512i, high: bool) -> __m512 {
        unsafe {
            _mm512_castsi512_ps(if high {
                _mm512_and_si512(words, _mm512_set1_epi32(0xffff_0000u32 as i32))
            } else {
                _mm512_slli_epi32::<16>(words)
            })
        }
    }

    /// The residual of channel `ch` at lanes `at..at + 16` (mask `m`) of its plane, as f32.
    #[inline(always)]
    unsafe fn residual16(
        residual: Option<&Activation>,
        ch: usize,
        hw: usize,
        at: usize,
        m: __mmask16,
    ) -> __m512 {
        unsafe {
            match residual {
                None => _mm512_setzero_ps(),
                Some(Activation::F32(r)) => {
                    _mm512_maskz_loadu_ps(m, r.data[ch * hw..].as_ptr().add(at))
                }
                Some(Activation::Bf16(r)) => unpair16(
                    _mm512_maskz_loadu_epi32(m, r.data[ch / 2 * hw..].as_ptr().add(at).cast()),
                    ch % 2 == 1,
                ),
            }
        }
    }

    /// Writes lanes `o..o + n` of output channels `co..co + MR` from `tile`, one run per wide row,
    /// dropping the lanes past the output width: `silu(v + bias) + residual`, 16 lanes at a time.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn store(
        tile: &[f32; MR * NR],
        n: usize,
        o: usize,
        co: usize,
        bias: &[f32],
        residual: Option<&Activation>,
        g: Geometry,
        out: Out,
    ) {
        let hw = g.ho * g.wo;
        let mut l = 0;
        while l < n {
            let (oy, ox) = ((o + l) / g.wq, (o + l) % g.wq);
            if oy >= g.ho {
                break;
            }
            let run = (g.wq - ox).min(n - l);
            let valid = g.wo.saturating_sub(ox).min(run);
            let at = oy * g.wo + ox;
            for i in (0..valid).step_by(16) {
                let m: __mmask16 = ((1u32 << (valid - i).min(16)) - 1) as u16;
                // SAFETY: lanes l + i.. of the tile rows, and lanes at + i.. (masked to the run) of
                // the output and residual planes, owned by this tile.
                unsafe {
                    // No closure calls an intrinsic here: a closure is compiled without AVX-512.
                    #[inline(always)]
                    unsafe fn lanes(
                        v: *const f32,
                        m: __mmask16,
                        bias: f32,
                        residual: __m512,
                    ) -> __m512 {
                        unsafe {
                            _mm512_add_ps(
                                silu16(_mm512_add_ps(
                                    _mm512_maskz_loadu_ps(m, v),
                                    _mm512_set1_ps(bias),
                                )),
                                residual,
                            )
                        }
                    }
                    let v = |r: usize| tile.as_ptr().add(r * NR + l + i);
                    match out {
                        Out::F32(out) => {
                            for r in 0..MR {
                                let y = lanes(
                                    v(r),
                                    m,
                                    bias[co + r],
                                    residual16(residual, co + r, hw, at + i, m),
                                );
                                _mm512_mask_storeu_ps(out.add((co + r) * hw + at + i), m, y);
                            }
                        }
                        Out::Pairs(out) => {
                            for r in (0..MR).step_by(2) {
                                let y0 = lanes(
                                    v(r),
                                    m,
                                    bias[co + r],
                                    residual16(residual, co + r, hw, at + i, m),
                                );
                                let y1 = lanes(
                                    v(r + 1),
                                    m,
                                    bias[co + r + 1],
                                    residual16(residual, co + r + 1, hw, at + i, m),
                                );
                                let (lo, hi) = (
                                    bf16_bits16(_mm512_castps_si512(y0)),
                                    bf16_bits16(_mm512_castps_si512(y1)),
                                );
                                let words = _mm512_or_si512(lo, _mm512_slli_epi32::<16>(hi));
                                _mm512_mask_storeu_epi32(
                                    out.add((co + r) / 2 * hw + at + i).cast(),
                                    m,
                                    words,
                                );
                            }
                        }
                    }
                }
            }
            l += run;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::planes::{Activation, ConvKernel, PairPlanes, Planes};
    use rand::{Rng, SeedableRng};

    fn random(n: usize, rng: &mut rand_chacha::ChaCha8Rng, scale: f32) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-scale..scale)).collect()
    }

    fn worst(a: &Planes, b: &Planes) -> f32 {
        assert_eq!((a.c, a.h, a.w), (b.c, b.h, b.w));
        a.data
            .iter()
            .zip(&b.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    }

    /// Every geometry the Front uses, and odd and tiny ones, against the im2col + GEMM path, with
    /// inputs and residuals in both forms.
    #[test]
    fn direct_kernels_compute_the_im2col_convolution() {
        if !Precision::F32.available() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let cases = [
            (3, 16, 6, 2, 2, 64, 64),
            (3, 8, 6, 2, 2, 37, 50),
            (5, 8, 4, 2, 1, 9, 11),
            (1, 8, 2, 2, 0, 6, 7),
            (16, 32, 3, 2, 1, 33, 32),
            (16, 16, 3, 1, 1, 20, 7),
            (24, 8, 1, 1, 0, 9, 13),
            (8, 16, 3, 2, 1, 3, 5),
            (5, 8, 3, 1, 1, 1, 1),
            (7, 8, 1, 1, 0, 4, 4),
            (32, 64, 1, 1, 0, 2, 3),
        ];
        for (c1, c2, k, s, p, h, w) in cases {
            let shape = ConvShape {
                c1,
                c2,
                k,
                s,
                p,
                g: 1,
            };
            let kernel = ConvKernel::new(
                random(c2 * c1 * k * k, &mut rng, 0.5),
                random(c2, &mut rng, 0.5),
                shape,
            );
            let x = Planes::new(c1, h, w, random(c1 * h * w, &mut rng, 1.0));
            let want = kernel.forward_im2col(&x, None);
            let res = Planes::new(c2, want.h, want.w, random(want.data.len(), &mut rng, 1.0));
            let want_res = kernel.forward_im2col(&x, Some(&res));
            let case = format!("{c1}→{c2} k{k} s{s} p{p} {h}×{w}");
            // f32: the same sums in another order.
            let got = kernel
                .forward(&Activation::F32(x.clone()), None, Precision::F32)
                .into_f32();
            assert!(
                worst(&got, &want) < 1e-4,
                "f32 {case}: max |Δ| = {}",
                worst(&got, &want)
            );
            let res_f32 = Activation::F32(res.clone());
            let got = kernel
                .forward(&Activation::F32(x.clone()), Some(&res_f32), Precision::F32)
                .into_f32();
            assert!(
                worst(&got, &want_res) < 1e-4,
                "f32 {case} + residual: max |Δ| = {}",
                worst(&got, &want_res)
            );
            if !Precision::Bf16.available() {
                continue;
            }
            // bf16: from f32 or pair input, with f32 or pair residuals, to pair output.
            let x_pairs = Activation::Bf16(PairPlanes::from_f32(&x));
            for input in [Activation::F32(x.clone()), x_pairs] {
                let got = kernel.forward(&input, None, Precision::Bf16);
                assert!(
                    matches!(got, Activation::Bf16(_)),
                    "bf16 {case}: the output is bf16 pairs"
                );
                let got = got.into_f32();
                assert!(
                    worst(&got, &want) < 0.05,
                    "bf16 {case}: max |Δ| = {}",
                    worst(&got, &want)
                );
                for residual in [
                    Activation::F32(res.clone()),
                    Activation::Bf16(PairPlanes::from_f32(&res)),
                ] {
                    let got = kernel
                        .forward(&input, Some(&residual), Precision::Bf16)
                        .into_f32();
                    assert!(
                        worst(&got, &want_res) < 0.05,
                        "bf16 {case} + residual: max |Δ| = {}",
                        worst(&got, &want_res)
                    );
                }
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        for (v, want) in [
            (1.0f32, 0x3f80),
            (1.0 + 2f32.powi(-8), 0x3f80),
            (1.0 + 3.0 * 2f32.powi(-8), 0x3f82),
            (-2.5, 0xc020),
        ] {
            assert_eq!(bf16_bits(v), want, "{v}");
        }
        let (lo, hi) = bf16_unpair(bf16_pair(0.15625, -3.0));
        assert_eq!((lo, hi), (0.15625, -3.0));
    }
}

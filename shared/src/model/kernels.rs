//! What the CPU custom ops share: slices of their storages, and small loops written so that
//! they vectorise.
//!
//! Every custom op runs on CPU f32 tensors only ([`on_cpu_f32`]); on CUDA, and for other dtypes,
//! the model computes with candle's own differentiable ops instead. `MISTNET_CANDLE_OPS=1` sends
//! CPU tensors down that path too, so that the path a GPU takes is checked against PyTorch on any
//! machine (deploy/gpu/README.md).

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use candle_core::{CpuStorage, DType, Layout, Result, Storage, Tensor};
use rayon::prelude::*;

/// Whether `t` is f32 on the CPU: what the custom ops handle; other tensors go through candle's
/// ops, and so do all under `MISTNET_CANDLE_OPS=1`.
pub fn on_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && !candle_ops_only()
}

/// `MISTNET_CANDLE_OPS=1`, read once.
fn candle_ops_only() -> bool {
    static ONLY: OnceLock<bool> = OnceLock::new();
    *ONLY.get_or_init(|| std::env::var_os("MISTNET_CANDLE_OPS").is_some_and(|v| v == "1"))
}

/// The f32 values a contiguous CPU storage holds under `layout`; `what` names it in errors.
pub fn cpu_f32<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = storage else { candle_core::bail!("{what} must be f32") };
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// [`cpu_f32`] for a storage of any device (as `Tensor::storage_and_layout` gives it).
pub fn storage_f32<'a>(storage: &'a Storage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let Storage::Cpu(storage) = storage else { candle_core::bail!("{what} must be on the CPU") };
    cpu_f32(storage, layout, what)
}

/// Runs `f` compiled for the widest vector unit the CPU has: AVX-512, AVX2 with FMA, or the
/// build's baseline (SSE2 on x86-64). Mark the closure `#[inline(always)]`, and what it calls:
/// a closure left out of line is compiled once, for the baseline.
#[inline(always)]
pub fn widest<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F.
            return unsafe { with_avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA.
            return unsafe { with_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// A new `len`-value buffer written in parallel: `fill(i, chunk)` gets the `i`-th run of `chunk`
/// values, zeroed by the thread that fills it, and its results are returned in order. (Zeroing
/// the whole buffer first, as `vec![0.0; len]` does, runs on one thread and leaves the other
/// idle: a few percent of a training step on two.)
pub fn par_fill<R: Send>(len: usize, chunk: usize, fill: impl Fn(usize, &mut [f32]) -> R + Sync) -> (Vec<f32>, Vec<R>) {
    let mut v = Vec::with_capacity(len);
    let results = v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .map(|(i, c)| {
            c.fill(MaybeUninit::new(0.0));
            // SAFETY: every element of `c` was initialised on the line above.
            let c = unsafe { &mut *(c as *mut [MaybeUninit<f32>] as *mut [f32]) };
            fill(i, c)
        })
        .collect();
    // SAFETY: the chunks cover `0..len`, and each was initialised above.
    unsafe { v.set_len(len) };
    (v, results)
}

/// `Σ f(aᵢ, bᵢ)` with eight independent accumulators, so that it vectorises.
#[inline(always)]
pub fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let rest: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(&a, &b)| f(a, b)).sum();
    for (ca, cb) in ca.zip(cb) {
        for ((acc, &a), &b) in acc.iter_mut().zip(ca).zip(cb) {
            *acc += f(a, b);
        }
    }
    (acc.iter().sum::<f32>() + rest) as f64
}

/// `eˣ` without branches or calls, so that loops over it vectorise: Cephes' `expf` (range
/// reduction by ln 2, degree-6 polynomial, relative error below 2e-7), clamped to finite results.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer held in the low bits.
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_2e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let k = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    e * f32::from_bits(((k + 127) << 23) as u32)
}

#[inline(always)]
fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp(-z))
}

/// `silu(x) = x·σ(x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// `silu(z)` and `∂silu/∂z`.
#[inline(always)]
pub fn silu_and_slope(z: f32) -> (f32, f32) {
    let s = sigmoid(z);
    (z * s, s * (1.0 + z * (1.0 - s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The branch-free `exp` agrees with the standard library's over the whole clamped range.
    #[test]
    fn exp_is_accurate() {
        let (worst, at) = (-86_900..=87_900)
            .map(|i| i as f32 * 1e-3)
            .map(|x| (((exp(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs(), x))
            .fold((0f64, 0f32), |a, b| if b.0 > a.0 { b } else { a });
        assert!(worst < 2e-7, "worst relative error {worst:e} at {at}");
    }

    #[test]
    fn par_fill_covers_every_value_in_order() {
        let (v, firsts) = par_fill(10, 3, |i, c| {
            c.iter_mut().enumerate().for_each(|(j, x)| *x += (i * 3 + j) as f32);
            i
        });
        assert_eq!(v, (0..10).map(|i| i as f32).collect::<Vec<_>>());
        assert_eq!(firsts, vec![0, 1, 2, 3]);
    }
}

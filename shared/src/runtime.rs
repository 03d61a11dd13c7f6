//! Process-wide settings for tensor work, applied first thing in `main` by both binaries, and
//! the device that tests and benches compute on.

use candle_core::Device;

/// Applies [`keep_freed_memory`] and [`run_candle_ops_inline`]. Call it before any thread starts.
pub fn init() {
    keep_freed_memory();
    run_candle_ops_inline();
}

/// Keeps freed memory in the process for reuse instead of returning it to the kernel.
///
/// glibc serves large allocations with a fresh `mmap` and unmaps them on free, so every
/// activation-sized tensor of a training step is page-faulted in and zeroed by the kernel again:
/// about 15% of a yolov5s training step on one thread (BENCHMARKS.md). With `mmap` and heap
/// trimming off, freed blocks are reused; the resident size stays at its peak. Does nothing on
/// other platforms.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes the arena locks and only changes allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Gives candle's own CPU worker pool no extra threads, unless `CANDLE_NUM_THREADS` is set.
///
/// The heavy CPU work (convolutions, BatchNorm, the model's custom ops, GEMM) runs on rayon's
/// pool, sized by `RAYON_NUM_THREADS` or the core count. What is left to candle's pool are small
/// element-wise ops, and its workers spin-wait between them, taking cores from rayon's: a yolov5s
/// training step on 2 threads took 1.38 s with it and 1.35 s without (BENCHMARKS.md), and on
/// busy cores it made training several times slower.
pub fn run_candle_ops_inline() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: called from `init`, first thing in `main`, before any thread exists.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

/// The device named by the environment variable `var`: `cpu` (the default, when unset) or
/// `cuda:N`, which needs a build with `--features cuda`. How the PyTorch oracle tests
/// (`MISTNET_TEST_DEVICE`) and the benches (`MISTNET_BENCH_DEVICE`) are pointed at a GPU; the
/// binaries take `--device`. Each call opens the device anew, and candle keeps tensors of two
/// opened CUDA devices apart: open it once.
pub fn device_from_env(var: &str) -> candle_core::Result<Device> {
    let Ok(name) = std::env::var(var) else { return Ok(Device::Cpu) };
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    match name.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
        Some(n) => Device::new_cuda(n),
        None => candle_core::bail!("{var} must be cpu or cuda:N, got {name}"),
    }
}

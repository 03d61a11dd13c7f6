//! Process-wide allocator settings for tensor workloads.

/// Keeps freed memory in the process for reuse instead of returning it to the kernel.
///
/// glibc serves large allocations with a fresh `mmap` and unmaps them on free, so every
/// activation-sized tensor of a training step is page-faulted in and zeroed by the kernel again:
/// about 15% of a yolov5s training step on one thread (BENCHMARKS.md). With `mmap` and heap
/// trimming off, freed blocks are reused; the resident size stays at its peak. Call it first
/// thing in `main`. Does nothing on other platforms.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes the arena locks and only changes allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

//! glibc malloc settings for a long-running node.
//!
//! glibc serves allocations from 128 KiB up with `mmap`, but raises that threshold
//! each time such a block is freed (up to 32 MiB), and from then on takes the
//! growing buffers of a snapshot build (tens of MB, doubled step by step) from the
//! heap, where the long-lived lease and key allocations made meanwhile pin them.
//! Measured with 1M live leases (`scripts/bench.sh --fill-leases 1000000`): 401–480
//! MiB per node after the fill with glibc's defaults, 361–362 MiB with the threshold
//! fixed at 128 KiB and the trim threshold likewise (docs/benchmarks.md). Fixing them
//! is what `MALLOC_MMAP_THRESHOLD_=131072 MALLOC_TRIM_THRESHOLD_=131072` does; the
//! binary does it itself so that no deployment has to remember it. An operator who
//! sets either variable, or `GLIBC_TUNABLES`, keeps their own settings.

/// Applies the settings above; call first thing in `main`, before any thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn tune() {
    const OPERATOR_VARS: [&str; 3] = [
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
        "GLIBC_TUNABLES",
    ];
    if OPERATOR_VARS.iter().any(|v| std::env::var_os(v).is_some()) {
        return;
    }
    // From glibc's <malloc.h>.
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    const THRESHOLD: i32 = 128 * 1024;
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    // SAFETY: `mallopt` only sets allocator parameters; it is called before any other
    // thread exists, and both values are within glibc's documented ranges.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, THRESHOLD);
        mallopt(M_TRIM_THRESHOLD, THRESHOLD);
    }
}

/// Other platforms and allocators keep their defaults.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() {}

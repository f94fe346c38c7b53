//! Hints to the CPU cache: loads started ahead of the code that needs them. Hints only:
//! nothing is read, a prefetch never faults, and other architectures than x86-64 skip them.

/// Asks for the cache line holding `at` (any address, null included) in the L1 cache.
#[inline(always)]
pub fn prefetch<T>(at: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing and never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Asks for `data` in the L2 cache: its first 4 KB, as the hardware prefetcher streams the
/// rest of a longer run.
#[inline]
pub fn prefetch_run<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        let p = data.as_ptr().cast::<i8>();
        for offset in (0..std::mem::size_of_val(data).min(4096)).step_by(64) {
            // SAFETY: a prefetch never faults, and the address lies inside `data`.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(p.add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

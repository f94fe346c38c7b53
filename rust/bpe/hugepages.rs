//! Large lookup tables on transparent huge pages.
//!
//! The vocabulary's table (16 MB for o200k) and the front of the per-thread piece cache (2 MiB)
//! are read at random places: on 4 KiB pages most of those reads also miss the TLB, and
//! the page walk costs as much as the read. Where the kernel gives huge pages only to memory
//! that asks for them (THP "madvise", a common default), a table here asks before it is first
//! written, so that its pages are faulted in as 2 MiB ones (o200k encoding measured 2-10%
//! faster). Elsewhere the advice is harmless.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

const HUGE_PAGE: usize = 2 << 20;

/// A fixed-length slice of `Copy` values, aligned to and advised for huge pages when it is at
/// least half a huge page (smaller ones are ordinary allocations).
pub struct HugeSlice<T: Copy> {
    ptr: NonNull<T>,
    len: usize,
}

// SAFETY: a `HugeSlice` owns its values like a `Box<[T]>` does.
unsafe impl<T: Copy + Send> Send for HugeSlice<T> {}
unsafe impl<T: Copy + Sync> Sync for HugeSlice<T> {}

impl<T: Copy> HugeSlice<T> {
    /// `len` copies of `value`.
    pub fn filled(len: usize, value: T) -> HugeSlice<T> {
        let layout = Self::layout(len);
        if layout.size() == 0 {
            return HugeSlice::default();
        }
        // SAFETY: the layout's size is not zero.
        let ptr = unsafe { alloc::alloc(layout) }.cast::<T>();
        let Some(ptr) = NonNull::new(ptr) else {
            alloc::handle_alloc_error(layout)
        };
        if layout.align() == HUGE_PAGE {
            advise_huge_pages(ptr.as_ptr().cast(), layout.size());
        }
        for i in 0..len {
            // SAFETY: `i < len`, and the allocation holds `len` values of `T`.
            unsafe { ptr.as_ptr().add(i).write(value) };
        }
        HugeSlice { ptr, len }
    }

    /// The allocation of `len` values: from half a huge page on, whole huge pages (the last
    /// may be partly unused), else `T`'s own layout.
    fn layout(len: usize) -> Layout {
        let array = Layout::array::<T>(len).expect("a table that fits in memory");
        if array.size() < HUGE_PAGE / 2 {
            return array;
        }
        Layout::from_size_align(array.size().next_multiple_of(HUGE_PAGE), HUGE_PAGE)
            .expect("a table that fits in memory")
    }
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(ptr: *mut u8, len: usize) {
    // SAFETY: the range is one allocation of ours, page-aligned; the advice changes how it is
    // backed, never its contents. A kernel without THP answers EINVAL, which changes nothing.
    unsafe { libc::madvise(ptr.cast(), len, libc::MADV_HUGEPAGE) };
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_: *mut u8, _: usize) {}

impl<T: Copy> Drop for HugeSlice<T> {
    fn drop(&mut self) {
        let layout = Self::layout(self.len);
        if layout.size() != 0 {
            // SAFETY: allocated in `filled` with this same layout.
            unsafe { alloc::dealloc(self.ptr.as_ptr().cast(), layout) };
        }
    }
}

impl<T: Copy> Default for HugeSlice<T> {
    fn default() -> HugeSlice<T> {
        HugeSlice {
            ptr: NonNull::dangling(),
            len: 0,
        }
    }
}

impl<T: Copy> std::ops::Deref for HugeSlice<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` holds `len` initialised values (or is dangling with `len` 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> std::ops::DerefMut for HugeSlice<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> Clone for HugeSlice<T> {
    fn clone(&self) -> HugeSlice<T> {
        let Some(&first) = self.first() else {
            return HugeSlice::default();
        };
        let mut copy = HugeSlice::filled(self.len, first);
        copy.copy_from_slice(self);
        copy
    }
}

impl<T: Copy> std::fmt::Debug for HugeSlice<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HugeSlice(len {})", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_large_empty_and_clone() {
        for len in [0usize, 1, 1000, (3 << 20) / 8] {
            let mut s = HugeSlice::filled(len, 7u64);
            assert_eq!(s.len(), len);
            assert!(s.iter().all(|&x| x == 7));
            if let Some(last) = s.last_mut() {
                *last = 9;
            }
            let c = s.clone();
            assert_eq!(&c[..], &s[..]);
        }
    }
}

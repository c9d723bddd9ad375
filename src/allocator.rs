//! The allocator every fedrun binary runs with: mimalloc, called the way C's `malloc` is
//! for the alignments `malloc` already guarantees.
//!
//! A state of many small persistent-map nodes, strings and `Arc`s is mostly allocations
//! of under 256 bytes; mimalloc keeps them in size-class pages without a per-allocation
//! header, so a finished job's resident bytes sit closer to its allocated bytes than with
//! the system allocator (README, state benchmarks).
//!
//! The `mimalloc` crate's `GlobalAlloc` asks for every block with `mi_malloc_aligned`,
//! whatever its alignment. mimalloc 3 serves that from the size class's free list only
//! when the list has a block at hand; otherwise (a page to refill, or a block over 1 KiB)
//! it takes a generic path that treats any size not a power of two as needing
//! over-allocation: `size + align - 1` bytes, often the next size class up. In a
//! simulated day that was one allocation in eleven, 3.6% of all instructions, and
//! blocks a class larger than asked. A block whose alignment is at most
//! [`MALLOC_ALIGN`] and at most its size needs no such care: mimalloc's size classes of
//! 16 bytes and more are multiples of 16 (and the one below, 8 bytes, holds only blocks
//! of at most 8), so those go through `mi_malloc`, `mi_zalloc` and `mi_realloc`, and only
//! larger alignments through the aligned calls.
//!
//! mimalloc is built with its `no_thp` feature: it does not `madvise` its memory for
//! transparent huge pages. A huge page is zeroed whole (2 MiB) at its first touch, and
//! mimalloc's purges of freed memory split it again, to be faulted whole once more: on a
//! VM where zeroing was dear a simulated day spent most of its system time there, and
//! everywhere the resident memory was higher (README, "Small pages").

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// The alignment `mi_malloc` gives every block of at least this size: C's `max_align_t`
/// (`MI_MAX_ALIGN_SIZE` in mimalloc's `types.h`), to which its size classes round.
const MALLOC_ALIGN: usize = 16;

/// mimalloc as fedrun's global allocator. Declared per binary, since a library cannot
/// choose it for a program that also wants a counting wrapper around it
/// (`benches/state.rs`): `#[global_allocator] static GLOBAL: fedrun::Allocator =
/// fedrun::Allocator;`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Allocator;

/// Whether `mi_malloc` of `size` bytes is aligned enough for `align`. A block smaller
/// than its alignment goes through the aligned calls, as the standard library's own
/// `malloc`-backed allocator does.
fn malloc_aligns(align: usize, size: usize) -> bool {
    align <= MALLOC_ALIGN && align <= size
}

/// A block of `layout` from `plain` (`mi_malloc` or `mi_zalloc`) when that aligns it
/// enough, else from `aligned`, its `_aligned` twin.
///
/// # Safety
///
/// `layout` has a non-zero size (`GlobalAlloc`'s contract).
#[inline]
unsafe fn block(
    layout: Layout,
    plain: unsafe extern "C" fn(usize) -> *mut c_void,
    aligned: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    // SAFETY: both are mimalloc's allocation calls, valid for any size and, for
    // `aligned`, any power-of-two alignment (a `Layout`'s).
    unsafe {
        if malloc_aligns(layout.align(), layout.size()) {
            plain(layout.size()).cast()
        } else {
            aligned(layout.size(), layout.align()).cast()
        }
    }
}

// SAFETY: each method hands the request to mimalloc: `mi_malloc`, `mi_zalloc` and
// `mi_realloc` return blocks aligned to the smaller of `MALLOC_ALIGN` and the size's
// class (or null), used only when the layout asks for no more; larger alignments go to
// the `_aligned` calls. `mi_free` and `mi_realloc` take any block any of these calls
// returned.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `block`'s.
        unsafe {
            block(
                layout,
                libmimalloc_sys::mi_malloc,
                libmimalloc_sys::mi_malloc_aligned,
            )
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `block`'s.
        unsafe {
            block(
                layout,
                libmimalloc_sys::mi_zalloc,
                libmimalloc_sys::mi_zalloc_aligned,
            )
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from one of this allocator's calls (the caller's contract).
        unsafe { libmimalloc_sys::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl's comment; `ptr` came from this allocator.
        unsafe {
            if malloc_aligns(layout.align(), new_size) {
                libmimalloc_sys::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                libmimalloc_sys::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align())
                    .cast()
            }
        }
    }
}

/// Makes [`Allocator`] give pages back to the system 10 ms after they fall free, as
/// mimalloc 2 did by default; mimalloc 3 waits a second. `fedrun sim` calls it: a long
/// run builds a snapshot-sized buffer every few thousand events and frees the one
/// before, and pages freed within the last second made up a tenth of a 10,000-job day's
/// peak resident memory (README, simulator). The server keeps mimalloc's default. A delay
/// set in the environment (`MIMALLOC_PURGE_DELAY`, in milliseconds, which mimalloc reads
/// itself) wins.
pub fn return_freed_pages_soon() {
    // `mi_option_purge_delay` in mimalloc.h's `mi_option_e`, whose values stay fixed
    // across versions (retired options keep their place); libmimalloc-sys names no
    // constant for it.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: sets one of mimalloc's process-wide options, which it reads at each purge;
    // any value is valid and no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Allocates `layout` through `Allocator` (zeroed or not), checks what it got
    /// against the address and the bytes themselves, and grows it.
    fn round_trip(layout: Layout, zeroed: bool, grow_to: usize) {
        let a = Allocator;
        // SAFETY: every layout here has a non-zero size; each block is written only
        // within its size and freed once, with the layout it has at that moment.
        unsafe {
            let p = if zeroed {
                a.alloc_zeroed(layout)
            } else {
                a.alloc(layout)
            };
            assert!(!p.is_null(), "{layout:?}");
            assert_eq!(p as usize % layout.align(), 0, "{layout:?} at {p:p}");
            if zeroed {
                let bytes = std::slice::from_raw_parts(p, layout.size());
                assert!(bytes.iter().all(|b| *b == 0), "{layout:?} zeroed");
            }
            for i in 0..layout.size() {
                *p.add(i) = (i % 251) as u8;
            }
            let q = a.realloc(p, layout, grow_to);
            assert!(!q.is_null(), "{layout:?} -> {grow_to}");
            assert_eq!(
                q as usize % layout.align(),
                0,
                "{layout:?} -> {grow_to} at {q:p}"
            );
            let kept = layout.size().min(grow_to);
            let bytes = std::slice::from_raw_parts(q, kept);
            assert!(
                bytes.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8),
                "{layout:?} -> {grow_to}: the bytes moved with the block"
            );
            a.dealloc(
                q,
                Layout::from_size_align(grow_to, layout.align()).expect("layout"),
            );
        }
    }

    #[test]
    fn every_block_has_its_alignment_and_keeps_its_bytes_when_it_moves() {
        // Sizes around every small size class and past the 1 KiB a class's fast path
        // serves; alignments from a byte to a page, below and above their sizes. Many
        // blocks of each size held at once, so pages fill and refill.
        for align in (0..=12).map(|shift| 1usize << shift) {
            for size in (1..=300).chain([511, 512, 513, 1024, 1025, 4095, 4096, 70_000]) {
                let layout = Layout::from_size_align(size, align).expect("layout");
                for (n, grow_to) in [size * 2 + 3, size.div_ceil(2), 1].into_iter().enumerate() {
                    round_trip(layout, n == 1, grow_to);
                }
            }
        }
        let a = Allocator;
        let layout = Layout::from_size_align(48, 8).expect("layout");
        // SAFETY: each block is freed once with the layout it was allocated with.
        unsafe {
            let held: Vec<*mut u8> = (0..10_000).map(|_| a.alloc(layout)).collect();
            let mut addresses: Vec<usize> = held.iter().map(|p| *p as usize).collect();
            addresses.sort_unstable();
            assert!(
                addresses.windows(2).all(|w| w[1] - w[0] >= 48),
                "blocks held at once do not overlap"
            );
            assert!(
                addresses.iter().all(|p| p % MALLOC_ALIGN == 0),
                "each 16-aligned"
            );
            held.into_iter().for_each(|p| a.dealloc(p, layout));
        }
    }
}

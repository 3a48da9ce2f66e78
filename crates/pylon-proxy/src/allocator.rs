//! The process's global allocator: mimalloc (see the binary's `main.rs` for why),
//! entered the way its own `malloc` is. The `mimalloc` crate's allocator always calls
//! `mi_malloc_aligned`, whose fast case covers only blocks of up to 1 KiB that happen to
//! be aligned: every larger block (a `HeaderMap`'s, a head buffer's) took mimalloc's
//! over-allocating fallback, about 140 instructions instead of 30, five times per
//! proxied request. Here an alignment that mimalloc gives every block anyway (a word:
//! its blocks are sized and placed in whole words) goes to `mi_malloc`, and only larger
//! alignments to the aligned entry points. Sixteen bytes, which any type holding a
//! `u128` needs (`opentelemetry`'s trace ids do, and so did the request path's futures
//! until a trace context kept its id as bytes), is what mimalloc's blocks of 16, 32,
//! 48 and of every size class above 64 bytes have as well (their pages start on 16
//! bytes and the classes are whole multiples of it); the aligned entry took its
//! over-allocating fallback for each HTTP/2 stream's boxed request future (5 KiB,
//! about 500 instructions). Such a block is now asked of
//! `mi_malloc` and its address checked; one that is not aligned (a class this reading
//! of mimalloc missed) is given back and asked of the aligned entry.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every mimalloc block has: a word. (16 bytes only for some sizes: a
/// 24-byte block lies on a 24-byte grid.)
const GUARANTEED_ALIGN: usize = std::mem::size_of::<usize>();

/// The alignment mimalloc's blocks of most sizes have (`MI_MAX_ALIGN_SIZE`): tried
/// with the plain calls, and checked.
const USUAL_ALIGN: usize = 16;

/// Whether a plain (unaligned) mimalloc call meets `align`.
fn plain(align: usize) -> bool {
    align <= GUARANTEED_ALIGN
}

/// A block from `plain_call` if it meets `align`, else one from `aligned_call`.
///
/// # Safety
/// The calls are mimalloc's allocation entries for one size.
#[allow(unsafe_code)]
#[inline]
unsafe fn usually_aligned(
    align: usize,
    plain_call: impl FnOnce() -> *mut c_void,
    aligned_call: impl FnOnce() -> *mut c_void,
) -> *mut u8 {
    if align <= USUAL_ALIGN {
        let p = plain_call();
        if (p as usize) & (align - 1) == 0 {
            return p.cast();
        }
        // SAFETY: `p` is a block mimalloc just gave (or null, which `mi_free` takes).
        unsafe { mi::mi_free(p) };
    }
    aligned_call().cast()
}

/// mimalloc as the global allocator (`#[global_allocator]` in the binary).
pub struct Allocator;

// SAFETY: every entry forwards to mimalloc, which meets `GlobalAlloc`'s contract: the
// plain calls only where mimalloc's own guarantee covers the layout's alignment (see
// `plain`), the aligned calls otherwise; `mi_free` and `mi_realloc*` accept a block
// from any of them.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl's comment.
        unsafe {
            let (size, align) = (layout.size(), layout.align());
            if plain(align) {
                mi::mi_malloc(size).cast()
            } else {
                usually_aligned(
                    align,
                    || mi::mi_malloc(size),
                    || mi::mi_malloc_aligned(size, align),
                )
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl's comment.
        unsafe {
            let (size, align) = (layout.size(), layout.align());
            if plain(align) {
                mi::mi_zalloc(size).cast()
            } else {
                usually_aligned(
                    align,
                    || mi::mi_zalloc(size),
                    || mi::mi_zalloc_aligned(size, align),
                )
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract).
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout` (GlobalAlloc's contract).
        unsafe {
            if plain(layout.align()) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_meet_their_alignment_through_both_entries() {
        let a = Allocator;
        for (size, align) in [
            (1, 1),
            (8, 8),
            (8, 16),
            (16, 16),
            (24, 16),
            (48, 16),
            (80, 16),
            (5184, 16),
            (24, 8),
            (1500, 8),
            (3000, 64),
            (100, 4096),
        ] {
            let layout = Layout::from_size_align(size, align).expect("layout");
            // SAFETY: a non-zero size; the block is freed with the same layout.
            #[allow(unsafe_code)]
            unsafe {
                let p = a.alloc(layout);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "{size} bytes aligned to {align}");
                let q = a.realloc(p, layout, size * 3);
                assert_eq!(
                    q as usize % align,
                    0,
                    "{size} bytes grown, aligned to {align}"
                );
                a.dealloc(q, Layout::from_size_align(size * 3, align).expect("layout"));
                let z = a.alloc_zeroed(layout);
                assert!(std::slice::from_raw_parts(z, size).iter().all(|b| *b == 0));
                a.dealloc(z, layout);
            }
        }
    }

    #[test]
    fn a_plain_block_off_the_asked_alignment_is_replaced() {
        // 24-byte blocks lie on a 24-byte grid: every other one is off 16 bytes, so a
        // run of them takes the checked path's fallback.
        let a = Allocator;
        let layout = Layout::from_size_align(24, 16).expect("layout");
        // SAFETY: non-zero sizes; each block is freed with its layout.
        #[allow(unsafe_code)]
        unsafe {
            let blocks: Vec<*mut u8> = (0..16).map(|_| a.alloc(layout)).collect();
            for &p in &blocks {
                assert!(!p.is_null());
                assert_eq!(p as usize % 16, 0);
            }
            for p in blocks {
                a.dealloc(p, layout);
            }
        }
    }
}

//! The process's global allocator: mimalloc (see the binary's `main.rs` for why),
//! entered the way its own `malloc` is. The `mimalloc` crate's allocator always calls
//! `mi_malloc_aligned`, whose fast case covers only blocks of up to 1 KiB that happen to
//! be aligned: every larger block (a `HeaderMap`'s, a head buffer's) took mimalloc's
//! over-allocating fallback, about 140 instructions instead of 30, five times per
//! proxied request. Here an alignment that mimalloc gives every block anyway (a word:
//! its blocks are sized and placed in whole words) goes to `mi_malloc`, and only larger
//! alignments to the aligned entry points.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every mimalloc block has: a word. (16 bytes only for some sizes: a
/// 24-byte block lies on a 24-byte grid.)
const GUARANTEED_ALIGN: usize = std::mem::size_of::<usize>();

/// Whether a plain (unaligned) mimalloc call meets `align`.
fn plain(align: usize) -> bool {
    align <= GUARANTEED_ALIGN
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
            if plain(layout.align()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl's comment.
        unsafe {
            if plain(layout.align()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
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
}

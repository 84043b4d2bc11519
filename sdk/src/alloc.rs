//! The guest's memory allocator: small blocks in size classes with a free list each, larger ones
//! from the standard allocator. Installed as the global allocator of a plugin built for `wasm32`.
//!
//! A plugin call allocates and frees many small blocks (the input's fields, each output's
//! strings and vectors, the parser's intermediate values). The standard allocator of
//! `wasm32-unknown-unknown` (dlmalloc) searches bins, splits and merges blocks on each of them;
//! here a block of at most [`LARGEST`] bytes is taken from and given back to the list of its size
//! class, a pointer pushed or popped. Rust tells the allocator each block's size when it is
//! freed, so blocks carry no header.
//!
//! Memory: a freed block stays in its class for the next allocation of that class, never given
//! back to the standard allocator; what a class holds is its highest use so far (a Wasm memory
//! never shrinks anyway). Blocks are cut from chunks of [`CHUNK`] bytes; a block is at most a
//! quarter larger than asked (above 256 bytes) or 15 bytes larger (at most 256 bytes).
//!
//! A Wasm instance without the threads proposal runs one thread: the lists need no lock. The
//! allocator is installed only there (see `lib.rs`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr::{self, NonNull};

/// Largest block served from the size classes; larger ones go to the standard allocator.
pub const LARGEST: usize = 4096;
/// Alignment of every class block (and the largest alignment served from the classes).
const ALIGN: usize = 16;
/// Bytes taken from the standard allocator at a time to cut class blocks from.
pub const CHUNK: usize = 64 * 1024;
/// Classes: 16 of 16-byte steps up to 256, then 4 per doubling up to [`LARGEST`].
const CLASSES: usize = 16 + 4 * 4;

/// The size class of a block of `size` bytes (`size <= LARGEST`) and its block size.
pub const fn class_of(size: usize) -> (usize, usize) {
    if size <= 256 {
        let index = if size == 0 { 0 } else { (size - 1) / 16 };
        return (index, (index + 1) * 16);
    }
    // `size` in (2^(bits-1), 2^bits]: four steps of a quarter of the lower power.
    let bits = (usize::BITS - (size - 1).leading_zeros()) as usize;
    let base = 1 << (bits - 1);
    let step = base / 4;
    let k = (size - base).div_ceil(step);
    (16 + (bits - 9) * 4 + (k - 1), base + k * step)
}

struct Lists {
    /// Head of each class's free list (a freed block holds the next one's address).
    free: [*mut u8; CLASSES],
    /// The rest of the current chunk, not yet cut into blocks.
    cursor: *mut u8,
    end: *mut u8,
}

/// Size classes over `B` (the standard allocator when installed; any allocator in tests).
pub struct SizeClasses<B: GlobalAlloc = System> {
    lists: UnsafeCell<Lists>,
    backing: B,
}

// SAFETY: installed only on `wasm32` without the `atomics` feature, where an instance runs one
// thread, so the lists are never touched by two threads.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl Sync for SizeClasses {}

impl SizeClasses {
    /// Empty classes over the standard allocator.
    pub const fn new() -> Self {
        Self::over(System)
    }
}

impl Default for SizeClasses {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: GlobalAlloc> SizeClasses<B> {
    /// Empty classes over `backing`.
    pub const fn over(backing: B) -> Self {
        SizeClasses {
            lists: UnsafeCell::new(Lists {
                free: [ptr::null_mut(); CLASSES],
                cursor: ptr::null_mut(),
                end: ptr::null_mut(),
            }),
            backing,
        }
    }

    fn served(layout: Layout) -> bool {
        layout.size() <= LARGEST && layout.align() <= ALIGN
    }

    /// A block of `class` (`block` bytes): from its list, else cut from the chunk.
    ///
    /// # Safety
    /// Not called from two threads at once.
    unsafe fn take(&self, class: usize, block: usize) -> *mut u8 {
        // SAFETY: one thread (the caller's contract); no reference into the lists outlives this.
        let lists = unsafe { &mut *self.lists.get() };
        let head = lists.free[class];
        if let Some(head) = NonNull::new(head) {
            // SAFETY: a listed block is ours, free, at least 16 bytes and 16-aligned; its first
            // word holds the next block's address.
            lists.free[class] = unsafe { head.as_ptr().cast::<*mut u8>().read() };
            return head.as_ptr();
        }
        if (lists.end as usize) - (lists.cursor as usize) < block {
            // SAFETY: a non-zero size and a power-of-two alignment.
            let chunk = unsafe {
                self.backing
                    .alloc(Layout::from_size_align_unchecked(CHUNK, ALIGN))
            };
            if chunk.is_null() {
                return chunk;
            }
            // The rest of the old chunk is left unused (less than one block of the largest
            // class).
            lists.cursor = chunk;
            // SAFETY: within the chunk just taken.
            lists.end = unsafe { chunk.add(CHUNK) };
        }
        let at = lists.cursor;
        // SAFETY: `block` bytes fit before `end` (checked above).
        lists.cursor = unsafe { at.add(block) };
        at
    }

    /// Give `at` back to the list of `class`.
    ///
    /// # Safety
    /// `at` is a block of `class` taken from these lists and not in use; one thread.
    unsafe fn give(&self, at: *mut u8, class: usize) {
        // SAFETY: as the contract says; the block is at least 16 bytes, 16-aligned.
        unsafe {
            let lists = &mut *self.lists.get();
            at.cast::<*mut u8>().write(lists.free[class]);
            lists.free[class] = at;
        }
    }
}

// SAFETY: every block handed out is at least `layout.size()` bytes, aligned to `layout.align()`
// (class blocks are 16-aligned multiples of 16 and serve alignments up to 16; the rest comes from
// `backing` with the caller's layout), and is used by nobody else until it is freed.
unsafe impl<B: GlobalAlloc> GlobalAlloc for SizeClasses<B> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if Self::served(layout) {
            let (class, block) = class_of(layout.size());
            // SAFETY: one thread (see `Sync`).
            unsafe { self.take(class, block) }
        } else {
            // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
            unsafe { self.backing.alloc(layout) }
        }
    }

    unsafe fn dealloc(&self, at: *mut u8, layout: Layout) {
        if Self::served(layout) {
            // SAFETY: a block of this layout came from `alloc` above, so from its class.
            unsafe { self.give(at, class_of(layout.size()).0) }
        } else {
            // SAFETY: it came from `backing` with this layout.
            unsafe { self.backing.dealloc(at, layout) }
        }
    }

    unsafe fn realloc(&self, at: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `new_size`, rounded up to `align`, does not overflow (the caller's contract).
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (Self::served(layout), Self::served(new)) {
            // SAFETY: the block came from `backing` with `layout`; the new one will too.
            (false, false) => return unsafe { self.backing.realloc(at, layout, new_size) },
            (true, true) if class_of(layout.size()).0 == class_of(new_size).0 => return at,
            _ => {}
        }
        // SAFETY: `new` is a valid layout (above); the old block holds `layout.size()` bytes,
        // the new one at least `new_size`; they do not overlap; the old one is freed once.
        unsafe {
            let moved = self.alloc(new);
            if !moved.is_null() {
                ptr::copy_nonoverlapping(at, moved, layout.size().min(new_size));
                self.dealloc(at, layout);
            }
            moved
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn a_class_block_holds_its_size_and_wastes_at_most_a_quarter_above_256_bytes() {
        let mut last = (0, 0);
        for size in 0..=LARGEST {
            let (class, block) = class_of(size);
            assert!(
                block >= size && block.is_multiple_of(ALIGN),
                "{size}: {block}"
            );
            assert!(class < CLASSES, "{size}: class {class}");
            if size > 256 {
                assert!(block - size < size / 4 + 1, "{size}: {block}");
            } else {
                assert!(block - size.max(1) < 16, "{size}: {block}");
            }
            // Classes grow with the size and one class has one block size.
            assert!(class >= last.0 && (class != last.0 || block == last.1 || size == 0));
            last = (class, block);
        }
        assert_eq!(class_of(LARGEST), (CLASSES - 1, LARGEST));
        assert_eq!(class_of(257), (16, 320));
        assert_eq!(class_of(512), (19, 512));
        assert_eq!(class_of(513), (20, 640));
    }

    #[test]
    fn blocks_do_not_overlap_are_reused_after_free_and_keep_their_bytes_across_a_realloc() {
        let classes = SizeClasses::over(System);
        let sizes = [1usize, 16, 17, 100, 256, 257, 1000, 4096, 4097, 100_000];
        let mut live: Vec<(*mut u8, Layout)> = Vec::new();
        for round in 0..50u8 {
            for &size in &sizes {
                let layout = Layout::from_size_align(size, 8).unwrap();
                // SAFETY: a valid non-zero layout; the block is filled within its size.
                let at = unsafe { classes.alloc(layout) };
                assert!(!at.is_null() && (at as usize).is_multiple_of(8));
                unsafe { ptr::write_bytes(at, round, size) };
                live.push((at, layout));
            }
        }
        // No two live blocks overlap.
        let mut spans: Vec<(usize, usize)> = live
            .iter()
            .map(|(at, l)| (*at as usize, *at as usize + l.size()))
            .collect();
        spans.sort_unstable();
        assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0));
        // Each block still holds what was written into it.
        for (i, (at, layout)) in live.iter().enumerate() {
            let round = (i / sizes.len()) as u8;
            let bytes = unsafe { std::slice::from_raw_parts(*at, layout.size()) };
            assert!(bytes.iter().all(|b| *b == round), "block {i}");
        }
        // Freed small blocks come back for the next allocations of their class.
        let freed: HashSet<usize> = live
            .iter()
            .filter(|(_, l)| l.size() == 100)
            .map(|(at, _)| *at as usize)
            .collect();
        live.retain(|(at, layout)| {
            if layout.size() == 100 {
                unsafe { classes.dealloc(*at, *layout) };
                false
            } else {
                true
            }
        });
        let layout = Layout::from_size_align(97, 1).unwrap();
        for _ in 0..freed.len() {
            let at = unsafe { classes.alloc(layout) };
            assert!(freed.contains(&(at as usize)));
            live.push((at, layout));
        }
        // A realloc within the class keeps the block; across classes and to a large block it
        // moves the bytes.
        let small = Layout::from_size_align(20, 4).unwrap();
        let at = unsafe { classes.alloc(small) };
        unsafe { ptr::copy_nonoverlapping(b"0123456789abcdefghij".as_ptr(), at, 20) };
        assert_eq!(unsafe { classes.realloc(at, small, 32) }, at);
        let grown = unsafe { classes.realloc(at, small, 300) };
        let big = unsafe { classes.realloc(grown, Layout::from_size_align(300, 4).unwrap(), 9000) };
        assert_eq!(
            unsafe { std::slice::from_raw_parts(big, 20) },
            b"0123456789abcdefghij"
        );
        unsafe { classes.dealloc(big, Layout::from_size_align(9000, 4).unwrap()) };
        for (at, layout) in live {
            if !SizeClasses::<System>::served(layout) {
                unsafe { classes.dealloc(at, layout) };
            }
        }
    }

    #[test]
    fn alignments_above_sixteen_go_to_the_backing_allocator() {
        let classes = SizeClasses::over(System);
        let layout = Layout::from_size_align(64, 64).unwrap();
        let at = unsafe { classes.alloc(layout) };
        assert!((at as usize).is_multiple_of(64));
        unsafe { classes.dealloc(at, layout) };
    }
}

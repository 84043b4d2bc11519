//! The guest's memory allocator: small blocks from size classes, the rest from the standard
//! allocator. Installed as the global allocator of a plugin built for `wasm32`.
//!
//! A plugin call allocates and frees many small blocks (the input's fields, each output's
//! strings and vectors, the parser's intermediate values). The standard allocator of
//! `wasm32-unknown-unknown` (dlmalloc) searches bins, splits and merges blocks on each of them;
//! here a block of at most [`LARGEST`] bytes (alignment at most 16) is popped from, and pushed
//! back to, a free list. Rust tells the allocator each block's size when it is freed, so blocks
//! carry no header.
//!
//! Blocks live in slabs of [`SLAB`] bytes, each of one class at a time, aligned to their size so
//! a block finds its slab by masking its address. On `wasm32` slabs are cut from pages the
//! allocator grows the memory by ([`GROW`] bytes at a time, page-aligned, so no alignment gap),
//! elsewhere (tests) from the backing allocator. A class takes blocks from its slabs that have a
//! free one. A slab whose last block is freed goes to a pool shared by every class, unless it is
//! its class's only slab with room (kept, so one block taken and freed per call does not move a
//! slab each time); a class that needs a slab takes one from the pool before growing the memory.
//! So a call that needed many blocks of one size leaves their slabs to any size after it. Slabs
//! are never handed back to dlmalloc (a Wasm memory never shrinks anyway). One live block keeps
//! its whole slab for its class. A block is at most 15 bytes larger than asked up to 256 bytes,
//! at most a quarter larger above.
//!
//! A Wasm instance without the threads proposal runs one thread: the lists need no lock. The
//! allocator is installed only there (see `lib.rs`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;

/// Largest block served from the size classes; larger ones go to the standard allocator.
pub const LARGEST: usize = 4096;
/// Alignment of every class block (and the largest alignment served from the classes).
const ALIGN: usize = 16;
/// Bytes of one slab (and its alignment).
pub const SLAB: usize = 32 * 1024;
/// Bytes of new slabs taken at a time: two Wasm pages, four slabs.
pub const GROW: usize = 2 * 65536;
/// Bytes at the start of a slab that hold its header.
const HEADER: usize = 64;
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

/// The start of a slab: its blocks follow from `HEADER` on.
#[repr(C)]
struct Slab {
    /// Freed blocks of this slab (a free block holds the next one's address).
    free: *mut u8,
    /// The first block never handed out, and the end of the block area.
    fresh: *mut u8,
    end: *mut u8,
    /// The class's other slabs with a free block.
    prev: *mut Slab,
    next: *mut Slab,
    /// Blocks handed out and not freed.
    live: usize,
}

impl Slab {
    /// Whether a block can be taken: then, and only then, the slab is in its class's list.
    fn has_room(&self) -> bool {
        !self.free.is_null() || self.fresh != self.end
    }
}

const _: () = assert!(size_of::<Slab>() <= HEADER && HEADER.is_multiple_of(ALIGN));
const _: () = assert!(SLAB - HEADER >= 4 * LARGEST && GROW.is_multiple_of(SLAB));
const _: () = assert!(GROW.is_multiple_of(65536));

/// Size classes over `B` (the standard allocator when installed; any allocator in tests).
pub struct SizeClasses<B: GlobalAlloc = System> {
    lists: UnsafeCell<Lists>,
    backing: B,
}

struct Lists {
    /// Per class, the first of its slabs that have a free block.
    open: [*mut Slab; CLASSES],
    /// Empty slabs of no class (each holds the next one's address).
    pool: *mut u8,
}

// SAFETY: installed only on `wasm32` without the `atomics` feature, where an instance runs one
// thread, so the slabs are never touched by two threads.
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

#[cfg(not(target_arch = "wasm32"))]
const GROW_LAYOUT: Layout = match Layout::from_size_align(GROW, SLAB) {
    Ok(layout) => layout,
    Err(_) => panic!("the layout of new slabs"),
};

impl<B: GlobalAlloc> SizeClasses<B> {
    /// Empty classes over `backing`.
    pub const fn over(backing: B) -> Self {
        SizeClasses {
            lists: UnsafeCell::new(Lists {
                open: [ptr::null_mut(); CLASSES],
                pool: ptr::null_mut(),
            }),
            backing,
        }
    }

    fn served(layout: Layout) -> bool {
        layout.size() <= LARGEST && layout.align() <= ALIGN
    }

    /// Put `slab` first in the list of `class`.
    ///
    /// # Safety
    /// `slab` is a slab of `class`, not listed; one thread.
    unsafe fn link(open: &mut [*mut Slab; CLASSES], class: usize, slab: *mut Slab) {
        // SAFETY: `slab` and the list's slabs are live slabs of ours (the caller's contract).
        unsafe {
            let head = open[class];
            (*slab).prev = ptr::null_mut();
            (*slab).next = head;
            if !head.is_null() {
                (*head).prev = slab;
            }
            open[class] = slab;
        }
    }

    /// Take `slab` out of the list of `class`.
    ///
    /// # Safety
    /// `slab` is listed in `class`; one thread.
    unsafe fn unlink(open: &mut [*mut Slab; CLASSES], class: usize, slab: *mut Slab) {
        // SAFETY: as `link`.
        unsafe {
            let (prev, next) = ((*slab).prev, (*slab).next);
            if prev.is_null() {
                open[class] = next;
            } else {
                (*prev).next = next;
            }
            if !next.is_null() {
                (*next).prev = prev;
            }
        }
    }

    /// `GROW` bytes of new slabs, aligned to `SLAB`, or null when the memory cannot grow.
    fn more(&self) -> *mut u8 {
        #[cfg(target_arch = "wasm32")]
        {
            let page = core::arch::wasm32::memory_grow(0, GROW / 65536);
            if page == usize::MAX {
                return ptr::null_mut();
            }
            ptr::with_exposed_provenance_mut(page * 65536)
        }
        #[cfg(not(target_arch = "wasm32"))]
        // SAFETY: a non-zero size and a power-of-two alignment.
        unsafe {
            self.backing.alloc(GROW_LAYOUT)
        }
    }

    /// A block of `class` (`block` bytes), or null when no slab can be had.
    ///
    /// # Safety
    /// One thread.
    unsafe fn take(&self, class: usize, block: usize) -> *mut u8 {
        // SAFETY: one thread (the caller's contract); no other reference to the lists lives.
        let lists = unsafe { &mut *self.lists.get() };
        let mut slab = lists.open[class];
        // SAFETY: slabs are ours, `SLAB`-aligned and `SLAB` long; a listed slab has a free or a
        // fresh block; a pooled slab holds the next pooled one's address.
        unsafe {
            if slab.is_null() {
                if lists.pool.is_null() {
                    let new = self.more();
                    if new.is_null() {
                        return new;
                    }
                    for at in (0..GROW).step_by(SLAB).rev() {
                        new.add(at).cast::<*mut u8>().write(lists.pool);
                        lists.pool = new.add(at);
                    }
                }
                let base = lists.pool;
                lists.pool = base.cast::<*mut u8>().read();
                slab = base.cast::<Slab>();
                let first = base.add(HEADER);
                slab.write(Slab {
                    free: ptr::null_mut(),
                    fresh: first,
                    end: first.add((SLAB - HEADER) / block * block),
                    prev: ptr::null_mut(),
                    next: ptr::null_mut(),
                    live: 0,
                });
                Self::link(&mut lists.open, class, slab);
            }
            let at = if (*slab).free.is_null() {
                let at = (*slab).fresh;
                (*slab).fresh = at.add(block);
                at
            } else {
                let at = (*slab).free;
                (*slab).free = at.cast::<*mut u8>().read();
                at
            };
            (*slab).live += 1;
            if !(*slab).has_room() {
                Self::unlink(&mut lists.open, class, slab);
            }
            at
        }
    }

    /// Give `at` back to its slab; a slab left empty goes to the pool unless it is its class's
    /// only one with room.
    ///
    /// # Safety
    /// `at` is a block of `class` taken from these slabs and not in use; one thread.
    unsafe fn give(&self, at: *mut u8, class: usize) {
        // SAFETY: as the contract says; the block is at least 16 bytes, 16-aligned, inside a
        // slab aligned to `SLAB`.
        unsafe {
            let lists = &mut *self.lists.get();
            let slab = at.map_addr(|a| a & !(SLAB - 1)).cast::<Slab>();
            let was_full = !(*slab).has_room();
            at.cast::<*mut u8>().write((*slab).free);
            (*slab).free = at;
            (*slab).live -= 1;
            if was_full {
                Self::link(&mut lists.open, class, slab);
            }
            let alone = (*slab).prev.is_null() && (*slab).next.is_null();
            if (*slab).live == 0 && !alone {
                Self::unlink(&mut lists.open, class, slab);
                let base = slab.cast::<u8>();
                base.cast::<*mut u8>().write(lists.pool);
                lists.pool = base;
            }
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The system allocator, counting the bytes it holds, refusing past `budget`.
    struct Counting {
        held: AtomicUsize,
        budget: usize,
    }

    impl Counting {
        fn new(budget: usize) -> Self {
            Counting {
                held: AtomicUsize::new(0),
                budget,
            }
        }
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if self.held.load(Ordering::Relaxed) + layout.size() > self.budget {
                return ptr::null_mut();
            }
            self.held.fetch_add(layout.size(), Ordering::Relaxed);
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, at: *mut u8, layout: Layout) {
            self.held.fetch_sub(layout.size(), Ordering::Relaxed);
            unsafe { System.dealloc(at, layout) }
        }
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    /// `at` is a block of a slab: past the header, wholly inside the block area.
    fn in_a_slab(at: *mut u8, size: usize) -> bool {
        let offset = at as usize & (SLAB - 1);
        let block = class_of(size).1;
        offset >= HEADER && (offset - HEADER).is_multiple_of(block) && offset + block <= SLAB
    }

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
    fn blocks_are_aligned_inside_their_slab_apart_and_keep_their_bytes() {
        let classes = SizeClasses::over(Counting::new(usize::MAX));
        let sizes = [1usize, 16, 17, 100, 256, 257, 1000, 4096, 4097, 100_000];
        let mut live: Vec<(*mut u8, Layout)> = Vec::new();
        for round in 0..50u8 {
            for &size in &sizes {
                let layout = layout(size, 16);
                let at = unsafe { classes.alloc(layout) };
                assert!(!at.is_null() && (at as usize).is_multiple_of(16), "{size}");
                if size <= LARGEST {
                    assert!(in_a_slab(at, size), "{size} at {at:?}");
                }
                unsafe { ptr::write_bytes(at, round, size) };
                live.push((at, layout));
            }
        }
        let mut spans: Vec<(usize, usize)> = live
            .iter()
            .map(|(at, l)| (*at as usize, *at as usize + l.size()))
            .collect();
        spans.sort_unstable();
        assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "blocks overlap");
        for (i, (at, layout)) in live.iter().enumerate() {
            let round = (i / sizes.len()) as u8;
            let bytes = unsafe { std::slice::from_raw_parts(*at, layout.size()) };
            assert!(bytes.iter().all(|b| *b == round), "block {i}");
        }
        for (at, layout) in live {
            unsafe { classes.dealloc(at, layout) };
        }
        // Every slab went back to the pool but one per class: nothing of the classes is lost.
        let again: Vec<*mut u8> = (0..100)
            .map(|_| unsafe { classes.alloc(layout(24, 8)) })
            .collect();
        assert!(again.iter().all(|at| in_a_slab(*at, 24)));
    }

    #[test]
    fn a_realloc_keeps_the_block_within_its_class_and_moves_the_bytes_across_classes() {
        let classes = SizeClasses::over(Counting::new(usize::MAX));
        let text = b"0123456789abcdefghij";
        let at = unsafe { classes.alloc(layout(20, 4)) };
        unsafe { ptr::copy_nonoverlapping(text.as_ptr(), at, 20) };
        assert_eq!(unsafe { classes.realloc(at, layout(20, 4), 32) }, at);
        let grown = unsafe { classes.realloc(at, layout(32, 4), 300) };
        assert!(in_a_slab(grown, 300));
        let big = unsafe { classes.realloc(grown, layout(300, 4), 9000) };
        let back = unsafe { classes.realloc(big, layout(9000, 4), 4096) };
        assert!(in_a_slab(back, 4096));
        let small = unsafe { classes.realloc(back, layout(4096, 4), 20) };
        assert!(in_a_slab(small, 20));
        assert_eq!(unsafe { std::slice::from_raw_parts(small, 20) }, text);
        unsafe { classes.dealloc(small, layout(20, 4)) };
        assert_eq!(
            classes.backing.held.load(Ordering::Relaxed),
            GROW,
            "only slabs held"
        );
    }

    #[test]
    fn slabs_emptied_by_frees_serve_any_class_after() {
        let classes = SizeClasses::over(Counting::new(usize::MAX));
        let held = || classes.backing.held.load(Ordering::Relaxed);
        let mut peak = 0;
        for size in [48usize, 200, 3000, 48] {
            let layout = layout(size, 8);
            // Enough blocks for several slabs of the class.
            let blocks: Vec<*mut u8> = (0..(5 * SLAB / size))
                .map(|_| unsafe { classes.alloc(layout) })
                .collect();
            assert!(
                blocks
                    .iter()
                    .all(|at| !at.is_null() && in_a_slab(*at, size))
            );
            peak = peak.max(held());
            // Freed in an order that empties slabs while others are still partly used.
            for at in blocks
                .iter()
                .step_by(2)
                .chain(blocks.iter().skip(1).step_by(2))
            {
                unsafe { classes.dealloc(*at, layout) };
            }
        }
        // Each size needed about six slabs; the later ones reused the earlier ones' slabs.
        assert!(
            peak >= 5 * SLAB && held() <= peak + GROW,
            "{peak} {}",
            held()
        );
        assert!(held() < 12 * SLAB, "{}", held());
    }

    #[test]
    fn out_of_memory_is_a_null_and_leaves_blocks_intact() {
        let classes = SizeClasses::over(Counting::new(GROW));
        let mut blocks = Vec::new();
        loop {
            let at = unsafe { classes.alloc(layout(1000, 8)) };
            if at.is_null() {
                break;
            }
            unsafe { ptr::write_bytes(at, 7, 1000) };
            blocks.push(at);
        }
        // Four slabs of 31 blocks of 1,024 bytes (the header takes one block's room).
        assert_eq!(blocks.len(), 4 * ((SLAB - HEADER) / 1024));
        let last = *blocks.last().unwrap();
        assert!(unsafe { classes.realloc(last, layout(1000, 8), 2000) }.is_null());
        assert!(unsafe { classes.alloc(layout(10_000, 8)) }.is_null());
        assert!(
            unsafe { std::slice::from_raw_parts(last, 1000) }
                .iter()
                .all(|b| *b == 7)
        );
        // A freed block serves the next allocation again.
        unsafe { classes.dealloc(last, layout(1000, 8)) };
        assert_eq!(unsafe { classes.alloc(layout(1000, 8)) }, last);
    }

    #[test]
    fn alignments_above_sixteen_go_to_the_backing_allocator() {
        let classes = SizeClasses::over(Counting::new(usize::MAX));
        for align in [32usize, 64, 4096] {
            let blocks: Vec<*mut u8> = (0..20)
                .map(|_| unsafe { classes.alloc(layout(48, align)) })
                .collect();
            for at in blocks {
                assert!((at as usize).is_multiple_of(align), "{align}: {at:?}");
                unsafe { classes.dealloc(at, layout(48, align)) };
            }
        }
        assert_eq!(classes.backing.held.load(Ordering::Relaxed), 0);
    }
}

//! A filter in front of the settled ids: it answers "not settled" for most ids that were not,
//! without a read of the store. Every message from a broker is looked up before it runs, and
//! nearly all were never settled; a read of the store costs a transaction on a file another
//! connection keeps committing to (locks, the log's index), the filter a hash and a few loads.
//!
//! A split-block Bloom filter (each id sets one bit in each word of one 64-byte block), in
//! generations of [`GENERATION_BYTES`] that each take [`GENERATION_IDS`] ids: an id the store
//! settled is always reported as maybe settled (the store then decides); one it did not is
//! reported so by mistake by about one lookup in a hundred for each full generation (a lookup
//! asks them all). Bounded: at most [`MAX_GENERATIONS`] (twice that while the ids of the file
//! are read at opening); past that the two oldest are merged into one (their bits together:
//! nothing is forgotten, mistakes grow more common, and in the worst case every lookup reads the
//! store, as without a filter). A generation whose newest id is older than the window is dropped
//! once the store has deleted those rows (at its next commit of settled ids).

use std::hash::BuildHasher;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// Bytes of one generation's bits.
pub const GENERATION_BYTES: usize = 2 << 20;
/// Ids a generation takes before the next starts: about ten bits each.
pub const GENERATION_IDS: u64 = (GENERATION_BYTES as u64 * 8) / 10;
/// Generations kept at most (so at most this many times [`GENERATION_BYTES`] of memory).
pub const MAX_GENERATIONS: usize = 8;

const WORDS: usize = GENERATION_BYTES / 8;
const BLOCK_WORDS: usize = 8;
const BLOCKS: usize = WORDS / BLOCK_WORDS;
const _: () = assert!(BLOCKS.is_power_of_two() && BLOCKS <= 1 << 16);

/// One generation: its bits, how many ids it took, the newest time it took one at.
struct Generation {
    bits: Box<[u64]>,
    ids: u64,
    newest_ms: i64,
}

impl Generation {
    fn new() -> Generation {
        Generation {
            bits: vec![0; WORDS].into_boxed_slice(),
            ids: 0,
            newest_ms: i64::MIN,
        }
    }

    /// The block of `hash` (its top bits) and the bit in each word of it (six bits each).
    fn place(hash: u64) -> (usize, impl Iterator<Item = u64>) {
        let block = ((hash >> 48) as usize & (BLOCKS - 1)) * BLOCK_WORDS;
        (
            block,
            (0..BLOCK_WORDS).map(move |i| 1 << ((hash >> (6 * i)) & 63)),
        )
    }

    fn add(&mut self, hash: u64, at_ms: i64) {
        let (block, bits) = Self::place(hash);
        for (word, bit) in self.bits[block..block + BLOCK_WORDS].iter_mut().zip(bits) {
            *word |= bit;
        }
        self.ids += 1;
        self.newest_ms = self.newest_ms.max(at_ms);
    }

    fn may_hold(&self, hash: u64) -> bool {
        let (block, bits) = Self::place(hash);
        self.bits[block..block + BLOCK_WORDS]
            .iter()
            .zip(bits)
            .all(|(word, bit)| word & bit != 0)
    }

    /// Take `older`'s ids too.
    fn merge(&mut self, older: &Generation) {
        for (word, other) in self.bits.iter_mut().zip(older.bits.iter()) {
            *word |= other;
        }
        self.ids += older.ids;
        self.newest_ms = self.newest_ms.max(older.newest_ms);
    }
}

/// Generations, oldest first.
#[derive(Default)]
pub struct Generations(Vec<Generation>);

impl Generations {
    /// Take the id of `hash`, settled at `at_ms`.
    pub fn add(&mut self, hash: u64, at_ms: i64) {
        if self.0.last().is_none_or(|g| g.ids >= GENERATION_IDS) {
            self.0.push(Generation::new());
            self.keep_bound();
        }
        self.0.last_mut().expect("a generation").add(hash, at_ms);
    }

    fn may_hold(&self, hash: u64) -> bool {
        self.0.iter().any(|g| g.may_hold(hash))
    }

    /// Merge the oldest while there are more than [`MAX_GENERATIONS`].
    fn keep_bound(&mut self) {
        while self.0.len() > MAX_GENERATIONS {
            let oldest = self.0.remove(0);
            self.0[0].merge(&oldest);
        }
    }

    /// Drop the generations whose every id was settled before `oldest_ms`.
    fn forget_before(&mut self, oldest_ms: i64) {
        self.0.retain(|g| g.newest_ms >= oldest_ms);
    }
}

/// The filter of one store.
pub struct Seen {
    hasher: std::hash::RandomState,
    generations: RwLock<Generations>,
    /// The ids the store held when it was opened are in: until then every lookup reads it.
    complete: AtomicBool,
}

impl Seen {
    pub fn new() -> Seen {
        Seen {
            hasher: std::hash::RandomState::new(),
            generations: RwLock::new(Generations::default()),
            complete: AtomicBool::new(false),
        }
    }

    pub fn hash(&self, route: &str, message_id: &str) -> u64 {
        self.hasher.hash_one((route, message_id))
    }

    /// Whether the store may hold `route`'s `message_id`; `false` only when it surely does not.
    pub fn may_hold(&self, route: &str, message_id: &str) -> bool {
        if !self.complete.load(Ordering::Acquire) {
            return true;
        }
        let hash = self.hash(route, message_id);
        self.generations
            .read()
            .expect("settled-ids filter lock")
            .may_hold(hash)
    }

    /// Take ids the store is about to hold, settled at `at_ms`. Called before they are written,
    /// so an id the store holds is never reported as not held.
    pub fn add<'a>(&self, ids: impl IntoIterator<Item = (&'a str, &'a str)>, at_ms: i64) {
        let hashes: Vec<u64> = ids
            .into_iter()
            .map(|(route, id)| self.hash(route, id))
            .collect();
        let mut generations = self.generations.write().expect("settled-ids filter lock");
        for hash in hashes {
            generations.add(hash, at_ms);
        }
    }

    /// Drop the generations settled wholly before `oldest_ms`: called once the store has
    /// deleted its rows from before then.
    pub fn forget_before(&self, oldest_ms: i64) {
        self.generations
            .write()
            .expect("settled-ids filter lock")
            .forget_before(oldest_ms);
    }

    /// The ids the store held when opened (read by [`Seen::hash`] into `past`): put them before
    /// the ones taken since, and answer from the filter from now on.
    pub fn complete(&self, mut past: Generations) {
        let mut generations = self.generations.write().expect("settled-ids filter lock");
        past.0.append(&mut generations.0);
        past.keep_bound();
        *generations = past;
        self.complete.store(true, Ordering::Release);
    }

    /// Whether [`Seen::complete`] was called.
    #[cfg(test)]
    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    /// Generations held now.
    #[cfg(test)]
    pub fn generations(&self) -> usize {
        self.generations
            .read()
            .expect("settled-ids filter lock")
            .0
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(range: std::ops::Range<u64>) -> Vec<(String, String)> {
        range
            .map(|i| (format!("route-{}", i % 3), format!("m-{i}")))
            .collect()
    }

    /// A filter with nothing read at opening: it answers from its generations at once.
    fn complete() -> Seen {
        let seen = Seen::new();
        seen.complete(Generations::default());
        seen
    }

    /// Count the newest generation as full, so the next id starts another.
    fn fill_newest(seen: &Seen) {
        seen.generations.write().unwrap().0.last_mut().unwrap().ids = GENERATION_IDS;
    }

    fn add(seen: &Seen, ids: &[(String, String)], at_ms: i64) {
        seen.add(ids.iter().map(|(r, m)| (r.as_str(), m.as_str())), at_ms);
    }

    fn mistakes(seen: &Seen, range: std::ops::Range<u64>) -> usize {
        ids(range)
            .iter()
            .filter(|(r, m)| seen.may_hold(r, m))
            .count()
    }

    #[test]
    fn every_id_taken_is_reported_and_few_others_are() {
        let seen = complete();
        let taken = ids(0..100_000);
        add(&seen, &taken, 1);
        assert!(taken.iter().all(|(r, m)| seen.may_hold(r, m)));
        // The same id on another route is another id.
        assert!(!seen.may_hold("route-9", "m-1") || !seen.may_hold("route-9", "m-2"));
        let wrong = mistakes(&seen, 1_000_000..1_100_000);
        assert!(
            wrong < 100,
            "{wrong} of 100,000 ids never taken reported as taken"
        );
    }

    #[test]
    fn until_complete_every_lookup_goes_to_the_store() {
        let seen = Seen::new();
        assert!(seen.may_hold("r", "never"));
        seen.complete(Generations::default());
        assert!(!seen.may_hold("r", "never"));
    }

    #[test]
    fn the_ids_read_at_opening_and_those_taken_meanwhile_are_all_reported() {
        let seen = Seen::new();
        add(&seen, &ids(0..10), 5);
        let mut past = Generations::default();
        for (r, m) in ids(10..20) {
            past.add(seen.hash(&r, &m), 1);
        }
        seen.complete(past);
        assert!(ids(0..20).iter().all(|(r, m)| seen.may_hold(r, m)));
    }

    #[test]
    fn past_its_bound_the_oldest_generations_merge_and_nothing_is_forgotten() {
        let seen = complete();
        // A generation is full at GENERATION_IDS ids; make MAX + 3 of them cheaply: take a few
        // ids, then count each generation as full.
        let mut all = Vec::new();
        for g in 0..(MAX_GENERATIONS as u64 + 3) {
            let batch = ids(g * 1000..g * 1000 + 1000);
            add(&seen, &batch, g as i64);
            fill_newest(&seen);
            all.extend(batch);
        }
        assert_eq!(seen.generations(), MAX_GENERATIONS);
        assert!(all.iter().all(|(r, m)| seen.may_hold(r, m)));
    }

    #[test]
    fn generations_wholly_older_than_the_window_are_dropped() {
        let seen = complete();
        let old = ids(0..1000);
        add(&seen, &old, 10);
        fill_newest(&seen);
        let new = ids(1000..2000);
        add(&seen, &new, 20);
        assert_eq!(seen.generations(), 2);
        // The window now starts after the old generation's newest id.
        seen.add([("r", "m-late")], 30);
        assert_eq!(
            seen.generations(),
            2,
            "nothing is forgotten before it is asked for"
        );
        seen.forget_before(11);
        assert_eq!(seen.generations(), 1);
        assert!(new.iter().all(|(r, m)| seen.may_hold(r, m)));
        assert!(seen.may_hold("r", "m-late"));
        assert!(mistakes(&seen, 0..1000) < 20, "the old ids are gone");
    }
}

//! Identifiers the host makes: message ids for messages that arrive without one, and trace and
//! span ids.
//!
//! Message ids must be hard to guess: a sender that could predict the id the host will give
//! another sender's message could claim it first with its own `Idempotency-Key`, and so the ids
//! of that message's outputs, which downstream deduplicates by. They are the `uuid` crate's
//! UUIDv7: the millisecond, then a 42-bit counter drawn at random at each new millisecond and
//! counted up within it, then 32 random bits. A sender that saw an id knows the counter of the
//! next one made in the same millisecond, so 32 bits are left to guess. The random bits come from
//! `rand`'s per-thread generator (ChaCha12, seeded from the operating system's generator and
//! seeded again after every 64 KiB it gives; the `fast-rng` feature), so an id costs no system
//! call. A host restored from a memory snapshot (a VM's or a process's) would give the same
//! random bits as the original until it reseeds: do not clone running hosts from a snapshot.
//! Trace and span ids need to be unique and evenly spread, not secret, so they come from a
//! cheaper per-thread generator seeded once from the operating system's.

/// A new message id: a UUIDv7 (module notes), as text.
pub fn message_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// 16 random bytes, never all zero (every bit random: the trace sampler reads the low eight).
pub fn random_bytes() -> [u8; 16] {
    thread_local! {
        /// SplitMix64, seeded once per thread from the operating system's generator.
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new({
            let mut seed = [0u8; 8];
            getrandom::fill(&mut seed).expect("the operating system's random generator answers");
            u64::from_le_bytes(seed)
        });
    }
    let next = || {
        STATE.with(|state| {
            let mut z = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
            state.set(z);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
    };
    loop {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&next().to_le_bytes());
        id[8..].copy_from_slice(&next().to_le_bytes());
        if id != [0; 16] {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_uuid_v7_and_distinct_across_threads() {
        let mut seen = std::collections::HashSet::new();
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..1000).map(|_| message_id()).collect::<Vec<_>>()))
            .collect();
        for thread in threads {
            for id in thread.join().unwrap() {
                let parsed = uuid::Uuid::parse_str(&id).unwrap();
                assert_eq!(parsed.get_version_num(), 7, "{id}");
                assert!(seen.insert(id), "a repeated id");
            }
        }
        assert_eq!(seen.len(), 4000);
    }
}

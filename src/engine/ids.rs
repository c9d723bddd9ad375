//! Sources of fresh ids (job ids, boot ids, request ids) for the engine.
//!
//! The pure core never draws an id itself: the engine injects one of these. On a real server
//! they are random UUID v4; in the simulator they come from the scenario's seed, so the same
//! seed gives the same job ids, byte for byte, on every machine.

use uuid::Uuid;

/// Random UUID v4s from the operating system's generator.
#[derive(Debug, Default)]
pub struct RandomIds;

impl RandomIds {
    /// A fresh random UUID v4.
    pub fn next_uuid(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(rand::random()).into_uuid()
    }
}

/// UUID v4s derived from a seed: the n-th id is BLAKE3(seed, n) with the version and variant
/// bits set. BLAKE3 is fixed by its specification, so the sequence never changes with a
/// dependency upgrade (a seeded PRNG from a library makes no such promise).
#[derive(Clone, Debug)]
pub struct SeededIds {
    seed: u64,
    stream: u64,
    counter: u64,
}

impl SeededIds {
    /// The id sequence of `seed`.
    pub fn new(seed: u64) -> Self {
        SeededIds::stream(seed, 0)
    }

    /// Stream `stream` of `seed`: an independent sequence, e.g. one per simulated server
    /// start, so a restart never hands out an id an earlier run already used.
    pub fn stream(seed: u64, stream: u64) -> Self {
        SeededIds {
            seed,
            stream,
            counter: 0,
        }
    }

    /// Moves to a new stream derived from this one and `salt`. The engine does this at
    /// every start with the history's length, so a restarted simulation never hands out an
    /// id an earlier start already used, even with the same seed.
    pub fn restream(&mut self, salt: u64) {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"fedrun seeded ids restream");
        hasher.update(&self.stream.to_le_bytes());
        hasher.update(&salt.to_le_bytes());
        let digest = hasher.finalize();
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&digest.as_bytes()[..8]);
        self.stream = u64::from_le_bytes(bytes);
        self.counter = 0;
    }

    /// The next UUID v4 of the sequence.
    pub fn next_uuid(&mut self) -> Uuid {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"fedrun seeded ids v1");
        hasher.update(&self.seed.to_le_bytes());
        hasher.update(&self.stream.to_le_bytes());
        hasher.update(&self.counter.to_le_bytes());
        self.counter += 1;
        let digest = hasher.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest.as_bytes()[..16]);
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    /// A number drawn from the same sequence, for any other randomness a simulation needs.
    pub fn next_u64(&mut self) -> u64 {
        let id = self.next_uuid();
        let b = id.as_bytes();
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[9], b[10]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_ids_and_they_are_v4() {
        let mut a = SeededIds::new(7);
        let mut b = SeededIds::new(7);
        let mut c = SeededIds::new(8);
        let xs: Vec<Uuid> = (0..5).map(|_| a.next_uuid()).collect();
        let ys: Vec<Uuid> = (0..5).map(|_| b.next_uuid()).collect();
        let zs: Vec<Uuid> = (0..5).map(|_| c.next_uuid()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
        assert!(xs.iter().all(|u| u.get_version_num() == 4));
        let distinct: std::collections::BTreeSet<_> = xs.iter().collect();
        assert_eq!(distinct.len(), 5);
    }
}

//! Identifiers drawn from a seeded RNG, never from OS entropy.

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

/// Generates UUID-v4-shaped identifiers from a seeded RNG so that the same seed
/// always yields the same ids (a requirement for replaying simulator seeds).
#[derive(Debug)]
pub struct IdGen {
    rng: StdRng,
}

impl IdGen {
    pub fn from_seed(seed: u64) -> Self {
        IdGen { rng: StdRng::seed_from_u64(seed) }
    }

    /// Derive a generator for one boot of a town: mixing in the boot count keeps a
    /// restarted town from re-issuing ids it handed out before.
    pub fn for_boot(seed: u64, boot: u64) -> Self {
        Self::from_seed(seed ^ boot.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }

    pub fn uuid(&mut self) -> String {
        let mut b = [0u8; 16];
        self.rng.fill_bytes(&mut b);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h = |r: &[u8]| r.iter().map(|x| format!("{x:02x}")).collect::<String>();
        format!("{}-{}-{}-{}-{}", h(&b[0..4]), h(&b[4..6]), h(&b[6..8]), h(&b[8..10]), h(&b[10..16]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_ids_and_shape() {
        let mut a = IdGen::from_seed(7);
        let mut b = IdGen::from_seed(7);
        let x = a.uuid();
        assert_eq!(x, b.uuid());
        assert_eq!(x.len(), 36);
        assert_eq!(&x[14..15], "4");
        assert_ne!(IdGen::for_boot(7, 1).uuid(), IdGen::for_boot(7, 2).uuid());
    }
}

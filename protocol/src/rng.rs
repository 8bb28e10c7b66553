//! The one source of randomness of the cluster state machines: a seeded xorshift64*.
//!
//! Invariants: no I/O, no clock, no threads. The sequence depends on the seed alone, so
//! the simulator replays a whole cluster from one number. It is not cryptographic and is
//! never used for anything secret: only election timeouts and SWIM's member choices.

use std::convert::Infallible;

/// A deterministic pseudo-random generator (xorshift64*, seeded through splitmix64).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeterministicRng {
    state: u64,
}

impl DeterministicRng {
    /// A generator whose whole output is fixed by `seed` (any value, 0 included).
    pub fn new(seed: u64) -> DeterministicRng {
        // splitmix64 spreads close seeds apart and never yields the all-zero state that
        // xorshift cannot leave.
        let mut mixed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^= mixed >> 31;
        DeterministicRng {
            state: if mixed == 0 {
                0x2545_F491_4F6C_DD1D
            } else {
                mixed
            },
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `low..high` (`low` when the range is empty).
    pub fn range_u64(&mut self, low: u64, high: u64) -> u64 {
        if high <= low {
            return low;
        }
        low + self.next_u64() % (high - low)
    }

    /// True with probability `numerator / denominator`.
    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        denominator > 0 && self.range_u64(0, denominator) < numerator
    }

    /// A new generator for a sub-component, so that components draw independent streams.
    pub fn fork(&mut self) -> DeterministicRng {
        DeterministicRng::new(self.next_u64())
    }
}

/// foca draws through `rand_core`'s traits; this makes our generator one of theirs.
impl rand_core::TryRng for DeterministicRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((self.next_u64() >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.next_u64())
    }

    fn try_fill_bytes(&mut self, destination: &mut [u8]) -> Result<(), Infallible> {
        for chunk in destination.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::DeterministicRng;

    #[test]
    fn same_seed_same_sequence_and_ranges_hold() {
        let mut first = DeterministicRng::new(7);
        let mut second = DeterministicRng::new(7);
        for _ in 0..1000 {
            let value = first.range_u64(1500, 3000);
            assert_eq!(value, second.range_u64(1500, 3000));
            assert!((1500..3000).contains(&value));
        }
        assert_ne!(
            DeterministicRng::new(0).next_u64(),
            DeterministicRng::new(1).next_u64()
        );
        assert_eq!(DeterministicRng::new(3).range_u64(5, 5), 5);
    }
}

//! The simulated network: per-datagram loss, duplication, latency and jitter (which
//! reorders), and partitions as a set of blocked directed links (so that a partition can
//! be asymmetric: A hears B but B does not hear A).

use std::collections::BTreeSet;

use crashmesh_protocol::rng::DeterministicRng;

/// What became of one datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    /// A partition blocked it.
    Blocked,
    /// Lost.
    Lost,
    /// Delivered after these delays (two entries: duplicated).
    Delivered(Vec<u64>),
}

/// The network between the simulated nodes.
#[derive(Clone, Debug, Default)]
pub struct Network {
    /// Loss, in percent.
    pub loss_percent: u64,
    /// Duplication, in percent.
    pub duplication_percent: u64,
    /// Base one-way latency, in ms.
    pub latency_base_ms: u64,
    /// Extra random delay, uniform in `0..=jitter`, in ms.
    pub jitter_ms: u64,
    blocked: BTreeSet<(usize, usize)>,
}

impl Network {
    /// A network with these properties and no partition.
    pub fn new(
        loss_percent: u64,
        duplication_percent: u64,
        latency_base_ms: u64,
        jitter_ms: u64,
    ) -> Network {
        Network {
            loss_percent,
            duplication_percent,
            latency_base_ms,
            jitter_ms,
            blocked: BTreeSet::new(),
        }
    }

    /// Blocks datagrams from `from` to `to` (one direction).
    pub fn block(&mut self, from: usize, to: usize) {
        self.blocked.insert((from, to));
    }

    /// Splits the nodes into two sides that do not hear each other.
    pub fn split(&mut self, side_a: &[usize], side_b: &[usize]) {
        for &a in side_a {
            for &b in side_b {
                self.block(a, b);
                self.block(b, a);
            }
        }
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// True when some link is blocked.
    pub fn partitioned(&self) -> bool {
        !self.blocked.is_empty()
    }

    /// True when `from` can reach `to`.
    pub fn reachable(&self, from: usize, to: usize) -> bool {
        !self.blocked.contains(&(from, to))
    }

    /// Decides one datagram's fate, drawing from `rng`.
    pub fn fate(&self, rng: &mut DeterministicRng, from: usize, to: usize) -> Fate {
        if !self.reachable(from, to) {
            return Fate::Blocked;
        }
        if rng.chance(self.loss_percent, 100) {
            return Fate::Lost;
        }
        let mut delays = vec![self.latency_base_ms + rng.range_u64(0, self.jitter_ms + 1)];
        if rng.chance(self.duplication_percent, 100) {
            delays.push(self.latency_base_ms + rng.range_u64(0, self.jitter_ms + 1));
        }
        Fate::Delivered(delays)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_block_one_way_or_both_and_loss_follows_its_rate() {
        let mut rng = DeterministicRng::new(9);
        let mut network = Network::new(30, 10, 5, 20);
        network.block(0, 1);
        assert_eq!(network.fate(&mut rng, 0, 1), Fate::Blocked);
        assert_ne!(network.fate(&mut rng, 1, 0), Fate::Blocked);
        network.split(&[2], &[3, 4]);
        assert!(!network.reachable(4, 2) && !network.reachable(2, 3));
        let fates: Vec<Fate> = (0..10_000).map(|_| network.fate(&mut rng, 3, 4)).collect();
        let lost = fates.iter().filter(|fate| **fate == Fate::Lost).count();
        let doubled = fates
            .iter()
            .filter(|fate| matches!(fate, Fate::Delivered(delays) if delays.len() == 2))
            .count();
        assert!((2_700..3_300).contains(&lost), "{lost}");
        assert!((500..900).contains(&doubled), "{doubled}");
        network.heal();
        assert!(!network.partitioned());
    }
}

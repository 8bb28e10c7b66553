//! A node's clock: the simulated true time seen through a drifting rate and forward steps.
//!
//! The protocol's `now` is monotonic (the daemon reads `CLOCK_MONOTONIC`), so a step is
//! only ever forward (a VM resumed after a freeze, a host suspended). Drift is a rate error
//! in parts per million, either sign; the local clock still never goes back.

/// The largest drift a node's clock may have (0.1 %: far worse than NTP-less hardware).
pub const DRIFT_PPM_MAX: i64 = 1_000;

/// One node's view of time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeClock {
    base_true_ms: u64,
    base_local_ms: u64,
    drift_ppm: i64,
}

impl NodeClock {
    /// A clock that reads the true time, at the true rate.
    pub fn exact() -> NodeClock {
        NodeClock {
            base_true_ms: 0,
            base_local_ms: 0,
            drift_ppm: 0,
        }
    }

    /// A clock running `drift_ppm` fast (negative: slow) from `true_ms` on.
    pub fn set_drift(&mut self, true_ms: u64, drift_ppm: i64) {
        assert!(drift_ppm.abs() <= DRIFT_PPM_MAX);
        self.rebase(true_ms);
        self.drift_ppm = drift_ppm;
    }

    /// The clock jumps forward by `step_ms` at `true_ms`.
    pub fn step_forward(&mut self, true_ms: u64, step_ms: u64) {
        self.rebase(true_ms);
        self.base_local_ms += step_ms;
    }

    /// The drift in parts per million.
    pub fn drift_ppm(&self) -> i64 {
        self.drift_ppm
    }

    fn rebase(&mut self, true_ms: u64) {
        let local_ms = self.local_ms(true_ms);
        self.base_true_ms = true_ms;
        self.base_local_ms = local_ms;
    }

    /// The local reading at true time `true_ms` (never before the last rebase).
    pub fn local_ms(&self, true_ms: u64) -> u64 {
        let elapsed = true_ms.saturating_sub(self.base_true_ms) as i128;
        let scaled = elapsed * (1_000_000 + self.drift_ppm as i128) / 1_000_000;
        self.base_local_ms + scaled as u64
    }

    /// The first true time at which the local clock reads at least `local_ms`.
    pub fn true_ms_at(&self, local_ms: u64) -> u64 {
        if local_ms <= self.base_local_ms {
            return self.base_true_ms;
        }
        let ahead = (local_ms - self.base_local_ms) as i128;
        let rate = 1_000_000 + self.drift_ppm as i128;
        let elapsed = (ahead * 1_000_000 + rate - 1) / rate;
        let mut true_ms = self.base_true_ms.saturating_add(elapsed as u64);
        // Integer rounding may leave the reading one short; step until it is due.
        while self.local_ms(true_ms) < local_ms {
            true_ms += 1;
        }
        true_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_and_steps_keep_the_clock_monotonic_and_invertible() {
        for drift_ppm in [-1_000, -37, 0, 1, 999] {
            let mut clock = NodeClock::exact();
            clock.set_drift(1_000, drift_ppm);
            clock.step_forward(5_000, 250);
            let mut last = 0;
            for true_ms in (0..100_000).step_by(7) {
                let local = clock.local_ms(true_ms);
                assert!(local >= last);
                last = local;
                let back = clock.true_ms_at(local);
                assert!(back <= true_ms.max(5_000));
                assert!(clock.local_ms(back) >= local);
            }
        }
    }
}

//! The problems the simulated cluster meets: independent arrivals at the reference rate
//! (25,000 reports a day cluster-wide, the reference deployment crashmesh is sized for), compressed
//! in simulated time so that a short run sees many, and bursts of one bug on many nodes (a
//! storage bug crashing the same daemon everywhere).

use crashmesh_protocol::rng::DeterministicRng;

/// The reference deployment's report rate, cluster-wide.
pub const REFERENCE_PROBLEMS_PER_DAY: u64 = 25_000;
/// How much faster than real time the simulated workload runs by default: one simulated
/// second carries ten seconds of the reference arrivals (~2.9 problems/s).
pub const TIME_COMPRESSION_DEFAULT: u64 = 10;
/// Bytes of one simulated report (below the store's minimum chunk size, so that storing
/// it is one chunk and never spreads over threads).
pub const REPORT_BYTES_MAX: usize = 8 * 1024;
/// Bytes of one protocol chunk of a simulated report.
pub const REPORT_PIECE_BYTES: usize = 1024;

/// One problem to inject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrival {
    /// When (true simulated ms).
    pub at_ms: u64,
    /// On which node.
    pub node: usize,
    /// Its signature.
    pub signature: String,
}

/// The arrivals of one run: Poisson arrivals over `0..until_ms` with a skewed choice of
/// signature (a few bugs dominate, as in the field), plus `bursts` bursts of one new
/// signature on a random half or more of the nodes within a second.
pub fn draw_arrivals(
    rng: &mut DeterministicRng,
    nodes: usize,
    start_ms: u64,
    until_ms: u64,
    time_compression: u64,
    bursts: u64,
) -> Vec<Arrival> {
    let mut arrivals = Vec::new();
    let per_ms_millionths = REFERENCE_PROBLEMS_PER_DAY * time_compression * 1_000_000 / 86_400_000;
    let signatures = rng.range_u64(1, 9);
    let mut at_ms = start_ms;
    loop {
        // Exponential inter-arrival time from a uniform draw (inverse transform).
        let uniform = (rng.range_u64(1, 1_000_001) as f64) / 1_000_000.0;
        let gap_ms = -uniform.ln() * 1_000_000.0 / per_ms_millionths.max(1) as f64;
        at_ms += gap_ms.ceil() as u64;
        if at_ms >= until_ms {
            break;
        }
        // Skewed: the smaller of two uniform draws, so low-numbered bugs dominate.
        let signature = rng
            .range_u64(0, signatures)
            .min(rng.range_u64(0, signatures));
        arrivals.push(Arrival {
            at_ms,
            node: rng.range_u64(0, nodes as u64) as usize,
            signature: format!("v1:sim-bug-{signature}"),
        });
    }
    for burst in 0..bursts {
        let burst_at_ms = rng.range_u64(start_ms, until_ms.max(start_ms + 1));
        let share = rng.range_u64(nodes as u64 / 2, nodes as u64 + 1).max(1);
        for node in 0..share as usize {
            arrivals.push(Arrival {
                at_ms: burst_at_ms + rng.range_u64(0, 1_000),
                node,
                signature: format!("v1:sim-burst-{burst}"),
            });
        }
    }
    arrivals.sort_by_key(|arrival| arrival.at_ms);
    arrivals
}

/// The bytes of a simulated report: a part every report of the signature shares (the same
/// binary, the same stack) and a part of its own.
pub fn report_bytes(rng: &mut DeterministicRng, signature: &str, report_id: &str) -> Vec<u8> {
    let shared = format!("signature {signature}\n").repeat(40);
    let own_len = rng.range_u64(200, (REPORT_BYTES_MAX - shared.len()) as u64) as usize;
    let mut bytes = shared.into_bytes();
    let mut state = rng.next_u64();
    bytes.extend(format!("report {report_id}\n").bytes());
    while bytes.len() < own_len + 2_000 && bytes.len() < REPORT_BYTES_MAX {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        bytes.push(b'a' + (state >> 59) as u8);
    }
    bytes.truncate(REPORT_BYTES_MAX);
    bytes
}

/// The protocol chunks of a report's bytes.
pub fn report_pieces(bytes: &[u8]) -> Vec<&[u8]> {
    bytes.chunks(REPORT_PIECE_BYTES).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_follow_the_compressed_reference_rate() {
        let mut rng = DeterministicRng::new(5);
        let arrivals = draw_arrivals(&mut rng, 5, 0, 1_000_000, 10, 0);
        // 25,000/day × 10 over 1,000 s ≈ 2,894.
        assert!(
            (2_600..3_200).contains(&arrivals.len()),
            "{}",
            arrivals.len()
        );
        assert!(arrivals.iter().all(|arrival| arrival.node < 5));
    }

    #[test]
    fn reports_stay_below_one_store_chunk() {
        let mut rng = DeterministicRng::new(1);
        for serial in 0..50 {
            let bytes = report_bytes(&mut rng, "v1:x", &format!("r{serial}"));
            assert!(bytes.len() <= REPORT_BYTES_MAX && bytes.len() > 1_000);
        }
    }
}

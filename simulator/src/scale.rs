//! How the protocol's cost grows with the cluster: the same fault-free workload on 10, 100
//! and 1,000 simulated nodes, measuring messages and bytes per node per second, memory
//! (the process's resident set: each node's protocol state, store index and simulated disk)
//! and the time to the first election.
//!
//! Sizes run smallest first in one process, so the peak RSS of a size includes nothing
//! larger; `rss_growth_bytes` is what the size's simulation added while it lived.

use std::time::Instant;

use serde::Serialize;

use crate::cluster::{Sim, SimConfig};
use crate::faults::FaultPlan;

/// The largest cluster `scale` simulates.
pub const SCALE_NODES_MAX: usize = 5_000;

/// One cluster size's measurements.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleRow {
    /// Cluster size.
    pub nodes: usize,
    /// Simulated seconds.
    pub simulated_secs: f64,
    /// Datagrams sent per node per simulated second.
    pub messages_per_node_per_sec: f64,
    /// Datagram bytes per node per simulated second.
    pub bytes_per_node_per_sec: f64,
    /// Cold start to the first aggregator, ms (None: none within the run).
    pub first_election_ms: Option<u64>,
    /// The process's peak resident set after this size ran.
    pub peak_rss_bytes: u64,
    /// Resident set the size's simulation added while it lived.
    pub rss_growth_bytes: u64,
    /// The same per node.
    pub rss_growth_bytes_per_node: u64,
    /// Store bytes (index and chunks) per node.
    pub disk_bytes_per_node: u64,
    /// Incidents acknowledged.
    pub incidents: u64,
    /// Wall-clock seconds the simulation took.
    pub wall_secs: f64,
}

/// Reads a `/proc/self/status` field in kB, as bytes (0 where unavailable).
fn status_bytes(field: &str) -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// Measures each size for `duration_ms` of simulated time.
pub fn measure(sizes: &[usize], duration_ms: u64, seed: u64) -> Vec<ScaleRow> {
    let mut sizes = sizes.to_vec();
    sizes.sort_unstable();
    sizes
        .into_iter()
        .filter(|&nodes| (1..=SCALE_NODES_MAX).contains(&nodes))
        .map(|nodes| measure_one(nodes, duration_ms, seed))
        .collect()
}

fn measure_one(nodes: usize, duration_ms: u64, seed: u64) -> ScaleRow {
    let rss_before = status_bytes("VmRSS:");
    let started = Instant::now();
    let mut config = SimConfig::new(seed, nodes);
    config.faults = Some(FaultPlan::none());
    config.safety_ms = duration_ms + 1;
    config.bursts = Some(1);
    let mut sim = Sim::new(config);
    sim.run_until_ms(duration_ms);
    let rss_during = status_bytes("VmRSS:");
    let seconds = duration_ms as f64 / 1_000.0;
    let datagrams = sim.datagrams() as f64;
    let row = ScaleRow {
        nodes,
        simulated_secs: seconds,
        messages_per_node_per_sec: datagrams / nodes as f64 / seconds,
        bytes_per_node_per_sec: sim.datagram_bytes() as f64 / nodes as f64 / seconds,
        first_election_ms: sim.election_ms().first().copied(),
        peak_rss_bytes: status_bytes("VmHWM:"),
        rss_growth_bytes: rss_during.saturating_sub(rss_before),
        rss_growth_bytes_per_node: rss_during.saturating_sub(rss_before) / nodes as u64,
        disk_bytes_per_node: sim.disk_bytes() / nodes as u64,
        incidents: sim.incidents_acknowledged(),
        wall_secs: started.elapsed().as_secs_f64(),
    };
    tracing::info!(?row, "scale row");
    row
}

/// The human table.
pub fn table(rows: &[ScaleRow]) -> String {
    let mut out = String::from(
        "nodes  msgs/node/s  bytes/node/s  first election ms  peak RSS MiB  RSS/node KiB  disk/node KiB  wall s\n",
    );
    for row in rows {
        out.push_str(&format!(
            "{:>5}  {:>11.1}  {:>12.0}  {:>17}  {:>12.1}  {:>12.1}  {:>13.1}  {:>6.1}\n",
            row.nodes,
            row.messages_per_node_per_sec,
            row.bytes_per_node_per_sec,
            row.first_election_ms
                .map_or("-".to_string(), |ms| ms.to_string()),
            row.peak_rss_bytes as f64 / (1 << 20) as f64,
            row.rss_growth_bytes_per_node as f64 / 1024.0,
            row.disk_bytes_per_node as f64 / 1024.0,
            row.wall_secs
        ));
    }
    out
}

/// The plot: three panels against the cluster size (log scale).
pub fn plot(rows: &[ScaleRow]) -> String {
    let series = |name: &str, unit: &str, value: &dyn Fn(&ScaleRow) -> f64| crate::svg::Series {
        title: format!("{name} ({unit})"),
        points: rows
            .iter()
            .map(|row| (row.nodes as f64, value(row)))
            .collect(),
    };
    crate::svg::panels(
        "crashmesh-simulator scale: cost against cluster size",
        &[
            series("messages per node per second", "datagrams", &|row| {
                row.messages_per_node_per_sec
            }),
            series("memory per node", "KiB of RSS", &|row| {
                row.rss_growth_bytes_per_node as f64 / 1024.0
            }),
            series("first election", "ms", &|row| {
                row.first_election_ms.unwrap_or(0) as f64
            }),
        ],
    )
}

//! A campaign: many seeds, run on worker threads, combined in seed order (so the campaign's
//! trace hash does not depend on scheduling), with a summary of faults, failures and
//! latency percentiles.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;

use crate::cluster::{SeedReport, Sim, SimConfig};
use crate::faults::{FaultCounts, FaultKind, Sabotage};
use crate::invariants::{Invariant, Violation};

/// The most seeds one campaign runs.
pub const SEEDS_MAX: u64 = 10_000_000;

/// What a campaign runs.
#[derive(Clone, Debug)]
pub struct CampaignConfig {
    /// The seeds, in order.
    pub seeds: Vec<u64>,
    /// Cluster size.
    pub nodes: usize,
    /// A safety mechanism switched off.
    pub sabotage: Sabotage,
    /// Worker threads (0: one per core).
    pub workers: usize,
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
    /// Length of each seed's safety phase, in simulated ms.
    pub safety_ms: u64,
    /// Workload time compression (see [`crate::workload`]).
    pub time_compression: u64,
}

impl CampaignConfig {
    /// Seeds `0..seeds` on `nodes` nodes with the defaults of [`SimConfig::new`].
    pub fn new(seeds: std::ops::Range<u64>, nodes: usize) -> CampaignConfig {
        let defaults = SimConfig::new(0, nodes);
        CampaignConfig {
            seeds: seeds.collect(),
            nodes,
            sabotage: Sabotage::None,
            workers: 0,
            progress: false,
            safety_ms: defaults.safety_ms,
            time_compression: defaults.time_compression,
        }
    }
}

/// A latency distribution's percentiles, ms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Percentiles {
    /// How many samples.
    pub count: usize,
    /// Median.
    pub p50: u64,
    /// 90th.
    pub p90: u64,
    /// 99th.
    pub p99: u64,
    /// Largest.
    pub max: u64,
}

impl Percentiles {
    /// The percentiles of `samples` (nearest rank).
    pub fn of(mut samples: Vec<u64>) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_unstable();
        let rank = |percent: usize| samples[(samples.len() * percent).div_ceil(100).max(1) - 1];
        Percentiles {
            count: samples.len(),
            p50: rank(50),
            p90: rank(90),
            p99: rank(99),
            max: *samples.last().expect("not empty"),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        json!({"count": self.count, "p50": self.p50, "p90": self.p90, "p99": self.p99, "max": self.max})
    }
}

/// A campaign's result.
#[derive(Clone, Debug)]
pub struct CampaignSummary {
    /// Seeds run.
    pub seeds: u64,
    /// Cluster size.
    pub nodes: usize,
    /// The sabotage in force.
    pub sabotage: Sabotage,
    /// Every failed seed's report, in seed order.
    pub failures: Vec<SeedReport>,
    /// Failures by invariant.
    pub failed_by_invariant: Vec<(Invariant, u64)>,
    /// Acknowledged incidents missing at the end, all seeds.
    pub lost_reports: u64,
    /// Duplicate problems and incidents at the endpoint, all seeds.
    pub duplicate_problems: u64,
    /// Stale-term uploads accepted, all seeds.
    pub stale_term_accepted: u64,
    /// Incidents acknowledged, all seeds.
    pub incidents: u64,
    /// Faults by kind, all seeds.
    pub faults: FaultCounts,
    /// Seeds that enabled each kind.
    pub seeds_with_kind: Vec<(FaultKind, u64)>,
    /// Election latency.
    pub election: Percentiles,
    /// Failure detection latency.
    pub detection: Percentiles,
    /// Upload latency.
    pub upload: Percentiles,
    /// Convergence after healing.
    pub convergence: Percentiles,
    /// blake3 over the seeds' trace hashes, in seed order.
    pub trace_hash: [u8; 32],
}

impl CampaignSummary {
    /// Failed seeds.
    pub fn failed(&self) -> u64 {
        self.failures.len() as u64
    }

    /// The campaign trace hash in hex.
    pub fn trace_hex(&self) -> String {
        blake3::Hash::from_bytes(self.trace_hash)
            .to_hex()
            .to_string()
    }

    /// The final JSON line (documented in simulator/README.md).
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "seeds": self.seeds,
            "nodes": self.nodes,
            "sabotage": self.sabotage.name(),
            "failed": self.failed(),
            "failed_seeds": self.failures.iter().map(|report| report.seed).collect::<Vec<_>>(),
            "failed_by_invariant": self.failed_by_invariant.iter()
                .map(|(invariant, count)| (invariant.name().to_string(), json!(count)))
                .collect::<serde_json::Map<_, _>>(),
            "lost_reports": self.lost_reports,
            "duplicate_problems": self.duplicate_problems,
            "stale_term_accepted": self.stale_term_accepted,
            "incidents": self.incidents,
            "faults": self.faults.to_json(),
            "latency_ms": {
                "election": self.election.to_json(),
                "detection": self.detection.to_json(),
                "upload": self.upload.to_json(),
                "convergence": self.convergence.to_json(),
            },
            "trace_hash": self.trace_hex(),
        })
    }

    /// The human summary table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "{} seeds × {} nodes, sabotage {}: {} failed; {} incidents; lost {}, duplicates {}, stale terms accepted {}\n",
            self.seeds,
            self.nodes,
            self.sabotage.name(),
            self.failed(),
            self.incidents,
            self.lost_reports,
            self.duplicate_problems,
            self.stale_term_accepted
        ));
        out.push_str("fault kind         seeds on   injected\n");
        for (kind, seeds) in &self.seeds_with_kind {
            out.push_str(&format!(
                "{:<18} {:>8}   {:>8}\n",
                kind.name(),
                seeds,
                self.faults.get(*kind)
            ));
        }
        out.push_str("latency (ms)       count      p50      p90      p99      max\n");
        for (name, percentiles) in [
            ("detection", &self.detection),
            ("election", &self.election),
            ("upload", &self.upload),
            ("convergence", &self.convergence),
        ] {
            out.push_str(&format!(
                "{:<18} {:>5} {:>8} {:>8} {:>8} {:>8}\n",
                name,
                percentiles.count,
                percentiles.p50,
                percentiles.p90,
                percentiles.p99,
                percentiles.max
            ));
        }
        for (invariant, count) in &self.failed_by_invariant {
            out.push_str(&format!("failed: {:<32} {count}\n", invariant.name()));
        }
        out.push_str(&format!("trace_hash {}\n", self.trace_hex()));
        out
    }
}

/// Runs one seed, turning a panic into a failure.
pub fn run_seed(config: SimConfig) -> SeedReport {
    let replay = config.replay_command();
    let (seed, nodes) = (config.seed, config.nodes);
    match catch_unwind(AssertUnwindSafe(|| Sim::new(config).run())) {
        Ok(report) => report,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
                .unwrap_or_else(|| "a panic".into());
            SeedReport {
                seed,
                nodes,
                violation: Some(Violation {
                    invariant: Invariant::Runaway,
                    detail: format!("panicked: {message}"),
                    at_ms: 0,
                }),
                last_events: Vec::new(),
                trace_hash: *blake3::hash(message.as_bytes()).as_bytes(),
                enabled: Vec::new(),
                faults: FaultCounts::default(),
                incidents_acknowledged: 0,
                incidents_refused: 0,
                lost_reports: 0,
                duplicate_problems: 0,
                stale_term_accepted: 0,
                election_ms: Vec::new(),
                detection_ms: Vec::new(),
                upload_ms: Vec::new(),
                converged_ms: None,
                datagrams: 0,
                datagram_bytes: 0,
                simulated_ms: 0,
                replay,
            }
        }
    }
}

/// The one line a seed prints.
pub fn seed_line(report: &SeedReport) -> String {
    let enabled: Vec<&str> = report.enabled.iter().map(|kind| kind.name()).collect();
    let verdict = match &report.violation {
        None => "ok".to_string(),
        Some(violation) => format!("FAILED {}", violation.invariant.name()),
    };
    format!(
        "seed {} {} nodes={} incidents={} faults=[{}] converged_ms={} trace={}",
        report.seed,
        verdict,
        report.nodes,
        report.incidents_acknowledged,
        enabled.join(","),
        report
            .converged_ms
            .map_or("-".to_string(), |ms| ms.to_string()),
        &report.trace_hex()[..16]
    )
}

/// What a failure prints: the seed, the broken invariant, the last events, the replay.
pub fn failure_text(report: &SeedReport) -> String {
    let Some(violation) = &report.violation else {
        return String::new();
    };
    let mut out = format!("seed {} broke {violation}\nlast events:\n", report.seed);
    for event in &report.last_events {
        out.push_str("  ");
        out.push_str(event);
        out.push('\n');
    }
    out.push_str(&format!("replay: {}\n", report.replay));
    out
}

/// Runs a campaign; `on_seed` sees each seed's report in seed order, as soon as every
/// earlier seed finished (so output streams while memory stays bounded).
pub fn run_campaign(
    config: &CampaignConfig,
    mut on_seed: impl FnMut(&SeedReport),
) -> CampaignSummary {
    assert!(config.seeds.len() as u64 <= SEEDS_MAX);
    let workers = if config.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        config.workers
    }
    .clamp(1, config.seeds.len().max(1));
    let next = AtomicUsize::new(0);
    let show_progress = config.progress && std::io::stderr().is_terminal();
    let mut summary = Summary::new(config);
    std::thread::scope(|scope| {
        let (sender, receiver) = std::sync::mpsc::channel::<(usize, SeedReport)>();
        for _ in 0..workers {
            let sender = sender.clone();
            let next = &next;
            scope.spawn(move || {
                loop {
                    let position = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&seed) = config.seeds.get(position) else {
                        break;
                    };
                    let mut sim_config = SimConfig::new(seed, config.nodes);
                    sim_config.sabotage = config.sabotage;
                    sim_config.safety_ms = config.safety_ms;
                    sim_config.time_compression = config.time_compression;
                    if sender.send((position, run_seed(sim_config))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(sender);
        let mut waiting: BTreeMap<usize, SeedReport> = BTreeMap::new();
        let mut next_in_order = 0;
        for (position, report) in receiver {
            waiting.insert(position, report);
            while let Some(report) = waiting.remove(&next_in_order) {
                on_seed(&report);
                summary.add(report);
                next_in_order += 1;
                if show_progress {
                    progress_bar(next_in_order, config.seeds.len());
                }
            }
        }
        assert_eq!(next_in_order, config.seeds.len(), "every seed ran");
    });
    if show_progress {
        eprintln!();
    }
    summary.finish()
}

fn progress_bar(done: usize, total: usize) {
    const WIDTH: usize = 40;
    let filled = done * WIDTH / total.max(1);
    let mut stderr = std::io::stderr().lock();
    let _ = write!(
        stderr,
        "\r[{}{}] {done}/{total}",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled)
    );
    let _ = stderr.flush();
}

/// The campaign's totals, added to seed by seed in seed order.
struct Summary {
    summary: CampaignSummary,
    hasher: blake3::Hasher,
    election: Vec<u64>,
    detection: Vec<u64>,
    upload: Vec<u64>,
    convergence: Vec<u64>,
}

impl Summary {
    fn new(config: &CampaignConfig) -> Summary {
        Summary {
            summary: CampaignSummary {
                seeds: config.seeds.len() as u64,
                nodes: config.nodes,
                sabotage: config.sabotage,
                failures: Vec::new(),
                failed_by_invariant: Vec::new(),
                lost_reports: 0,
                duplicate_problems: 0,
                stale_term_accepted: 0,
                incidents: 0,
                faults: FaultCounts::default(),
                seeds_with_kind: FaultKind::ALL.iter().map(|kind| (*kind, 0)).collect(),
                election: Percentiles::default(),
                detection: Percentiles::default(),
                upload: Percentiles::default(),
                convergence: Percentiles::default(),
                trace_hash: [0; 32],
            },
            hasher: blake3::Hasher::new(),
            election: Vec::new(),
            detection: Vec::new(),
            upload: Vec::new(),
            convergence: Vec::new(),
        }
    }

    fn add(&mut self, report: SeedReport) {
        let summary = &mut self.summary;
        self.hasher.update(&report.trace_hash);
        summary.faults.merge(&report.faults);
        for (kind, seeds) in &mut summary.seeds_with_kind {
            if report.enabled.contains(kind) {
                *seeds += 1;
            }
        }
        self.election.extend_from_slice(&report.election_ms);
        self.detection.extend_from_slice(&report.detection_ms);
        self.upload.extend_from_slice(&report.upload_ms);
        self.convergence.extend(report.converged_ms);
        summary.lost_reports += report.lost_reports;
        summary.duplicate_problems += report.duplicate_problems;
        summary.stale_term_accepted += report.stale_term_accepted;
        summary.incidents += report.incidents_acknowledged;
        if let Some(violation) = &report.violation {
            match summary
                .failed_by_invariant
                .iter_mut()
                .find(|(invariant, _)| *invariant == violation.invariant)
            {
                Some((_, count)) => *count += 1,
                None => summary.failed_by_invariant.push((violation.invariant, 1)),
            }
            summary.failures.push(report);
        }
    }

    fn finish(mut self) -> CampaignSummary {
        self.summary.election = Percentiles::of(self.election);
        self.summary.detection = Percentiles::of(self.detection);
        self.summary.upload = Percentiles::of(self.upload);
        self.summary.convergence = Percentiles::of(self.convergence);
        self.summary.trace_hash = *self.hasher.finalize().as_bytes();
        self.summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let p = Percentiles::of((1..=100).collect());
        assert_eq!(
            (p.p50, p.p90, p.p99, p.max, p.count),
            (50, 90, 99, 100, 100)
        );
        assert_eq!(Percentiles::of(vec![]), Percentiles::default());
        assert_eq!(Percentiles::of(vec![7]).p50, 7);
    }
}

//! Which faults a seed enables and how hard they strike (swarm testing: each seed turns on
//! a random subset of fault kinds, so that rare combinations get runs of their own instead
//! of drowning in a uniform mix), and the sabotage switches that turn a safety mechanism
//! off so that the checks must fail.

use std::collections::BTreeMap;

use crashmesh_protocol::rng::DeterministicRng;
use serde::Serialize;

/// The largest packet loss a seed may draw, in percent.
pub const PACKET_LOSS_PERCENT_MAX: u64 = 30;
/// The largest duplication rate, in percent.
pub const DUPLICATION_PERCENT_MAX: u64 = 10;
/// The largest one-way base latency, in ms.
pub const LATENCY_BASE_MS_MAX: u64 = 200;
/// The largest extra random delay per packet (reordering), in ms.
pub const REORDER_JITTER_MS_MAX: u64 = 1_000;
/// The largest injected disk error rate, in parts per million of operations.
pub const DISK_ERROR_PPM_MAX: u32 = 20_000;

/// A kind of fault, as counted in the summary (the JSON keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Datagrams dropped by the network.
    PacketLoss,
    /// Datagrams delivered twice.
    Duplication,
    /// Datagrams delayed by random jitter (delivered out of order).
    Reordering,
    /// A high base latency on every link.
    Latency,
    /// A partition (one node isolated, majority/minority, or one direction only).
    Partition,
    /// A node killed (`kill -9`: unsynced writes lost) and restarted later.
    NodeKill,
    /// A node paused (SIGSTOP, a VM freeze) and resumed later.
    Pause,
    /// Clock drift or a forward clock step on a node.
    ClockSkew,
    /// Disk I/O errors, torn writes or a full disk.
    DiskFault,
    /// The endpoint refusing calls or losing its replies.
    EndpointOutage,
}

impl FaultKind {
    /// Every kind, in summary order.
    pub const ALL: [FaultKind; 10] = [
        FaultKind::PacketLoss,
        FaultKind::Duplication,
        FaultKind::Reordering,
        FaultKind::Latency,
        FaultKind::Partition,
        FaultKind::NodeKill,
        FaultKind::Pause,
        FaultKind::ClockSkew,
        FaultKind::DiskFault,
        FaultKind::EndpointOutage,
    ];

    /// True for the kinds that act on every datagram rather than at moments.
    pub fn is_network(self) -> bool {
        matches!(
            self,
            FaultKind::PacketLoss
                | FaultKind::Duplication
                | FaultKind::Reordering
                | FaultKind::Latency
        )
    }

    /// The JSON key.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::PacketLoss => "packet_loss",
            FaultKind::Duplication => "duplication",
            FaultKind::Reordering => "reordering",
            FaultKind::Latency => "latency",
            FaultKind::Partition => "partition",
            FaultKind::NodeKill => "node_kill",
            FaultKind::Pause => "pause",
            FaultKind::ClockSkew => "clock_skew",
            FaultKind::DiskFault => "disk_fault",
            FaultKind::EndpointOutage => "endpoint_outage",
        }
    }
}

/// A safety mechanism switched off, so that the invariants must catch it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sabotage {
    /// Everything on.
    #[default]
    None,
    /// The endpoint stops checking terms: a stale aggregator's upload is accepted.
    NoFencing,
    /// The endpoint stops recognising report ids and stops grouping a full report into the
    /// existing problem of its signature: a retried or repeated upload counts again.
    NoDedup,
}

impl Sabotage {
    /// Parses the `--sabotage` value.
    pub fn parse(text: &str) -> Option<Sabotage> {
        match text {
            "none" => Some(Sabotage::None),
            "no-fencing" => Some(Sabotage::NoFencing),
            "no-dedup" => Some(Sabotage::NoDedup),
            _ => None,
        }
    }

    /// The `--sabotage` value.
    pub fn name(self) -> &'static str {
        match self {
            Sabotage::None => "none",
            Sabotage::NoFencing => "no-fencing",
            Sabotage::NoDedup => "no-dedup",
        }
    }
}

/// The faults of one seed: which kinds are on and their intensities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultPlan {
    /// The enabled kinds.
    pub enabled: Vec<FaultKind>,
    /// Packet loss during the safety phase, in percent.
    pub packet_loss_percent: u64,
    /// Duplication, in percent.
    pub duplication_percent: u64,
    /// Base one-way latency, in ms.
    pub latency_base_ms: u64,
    /// Extra random delay per packet, in ms.
    pub reorder_jitter_ms: u64,
    /// Disk error rate while disk faults strike, in ppm.
    pub disk_error_ppm: u32,
    /// Mean time between scheduled fault actions, in ms.
    pub fault_interval_ms: u64,
}

impl FaultPlan {
    /// No faults at all (the scale runs, the liveness phase).
    pub fn none() -> FaultPlan {
        FaultPlan {
            enabled: Vec::new(),
            packet_loss_percent: 0,
            duplication_percent: 0,
            latency_base_ms: 1,
            reorder_jitter_ms: 5,
            disk_error_ppm: 0,
            fault_interval_ms: u64::MAX,
        }
    }

    /// Draws a plan: each kind on with probability one half, intensities uniform.
    pub fn draw(rng: &mut DeterministicRng) -> FaultPlan {
        let enabled: Vec<FaultKind> = FaultKind::ALL
            .into_iter()
            .filter(|_| rng.chance(1, 2))
            .collect();
        let on = |kind| enabled.contains(&kind);
        let mut plan = FaultPlan::none();
        if on(FaultKind::PacketLoss) {
            plan.packet_loss_percent = rng.range_u64(1, PACKET_LOSS_PERCENT_MAX + 1);
        }
        if on(FaultKind::Duplication) {
            plan.duplication_percent = rng.range_u64(1, DUPLICATION_PERCENT_MAX + 1);
        }
        if on(FaultKind::Latency) {
            plan.latency_base_ms = rng.range_u64(20, LATENCY_BASE_MS_MAX + 1);
        }
        if on(FaultKind::Reordering) {
            plan.reorder_jitter_ms = rng.range_u64(50, REORDER_JITTER_MS_MAX + 1);
        }
        if on(FaultKind::DiskFault) {
            plan.disk_error_ppm = rng.range_u64(100, u64::from(DISK_ERROR_PPM_MAX) + 1) as u32;
        }
        plan.fault_interval_ms = rng.range_u64(1_000, 6_000);
        plan.enabled = enabled;
        plan
    }

    /// True when `kind` is on for this seed.
    pub fn has(&self, kind: FaultKind) -> bool {
        self.enabled.contains(&kind)
    }
}

/// How many faults of each kind struck.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    counts: BTreeMap<FaultKind, u64>,
}

impl FaultCounts {
    /// Counts `times` faults of `kind`.
    pub fn add(&mut self, kind: FaultKind, times: u64) {
        *self.counts.entry(kind).or_default() += times;
    }

    /// The count of one kind.
    pub fn get(&self, kind: FaultKind) -> u64 {
        self.counts.get(&kind).copied().unwrap_or(0)
    }

    /// Adds another run's counts.
    pub fn merge(&mut self, other: &FaultCounts) {
        for (kind, count) in &other.counts {
            self.add(*kind, *count);
        }
    }

    /// Every kind with its count (zeros included), as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> = FaultKind::ALL
            .into_iter()
            .map(|kind| (kind.name().to_string(), self.get(kind).into()))
            .collect();
        serde_json::Value::Object(map)
    }
}

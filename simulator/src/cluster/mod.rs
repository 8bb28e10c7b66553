//! One simulated run: N nodes (the real `protocol::cluster::Node` over the real store on a
//! [`SimDisk`]), the [`Network`], per-node [`NodeClock`]s and the [`SimEndpoint`], all
//! driven by one event queue ordered by (time, sequence) and one seeded generator.
//!
//! A run has two phases (TigerBeetle's VOPR): a **safety phase** with the seed's faults on
//! and the workload arriving, during which every safety invariant is checked as it goes;
//! then a **liveness phase**: everything healed (network, nodes restarted or resumed, disks
//! and endpoint back), and the cluster must converge — one agreed aggregator, every
//! acknowledged incident at the endpoint, no node with pending incidents — within a bound.
//!
//! The shell rules are the daemon's, because they are the same code: both release a node's
//! outputs through `protocol`'s [`Driver`] (persist before release, in order; every
//! message paged by the protocol). The simulator's [`Shell`](crashmesh_protocol::driver::Shell)
//! makes a vote durable with `Store::put_setting`; any store error makes the process
//! restart (the store's documented safe reaction); an incident counts as acknowledged once
//! `record_incident` returned Ok (it is then durable).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::Arc;

use crashmesh_protocol::cluster::{Node, NodeConfig};
use crashmesh_protocol::consolidation::UploadOutcome;
use crashmesh_protocol::driver::Driver;
use crashmesh_protocol::election::{PersistedVote, Role};
use crashmesh_protocol::rng::DeterministicRng;
use crashmesh_protocol::wire::{
    Announcement, ChunkId, ClusterId, Label, NodeId, ReportId, UploadState,
};
use crashmesh_protocol::{Problem, ProblemKind};
use crashmesh_store::{NewIncident, Store, StoreConfig};

use crate::clock::{DRIFT_PPM_MAX, NodeClock};
use crate::disk::SimDisk;
use crate::endpoint::{SimEndpoint, UploadCall};
use crate::faults::{FaultCounts, FaultKind, FaultPlan, Sabotage};
use crate::invariants::{Invariant, Violation};
use crate::network::{Fate, Network};
use crate::workload::{self, TIME_COMPRESSION_DEFAULT};

mod inject;
mod lifecycle;
mod shell;

/// Events one run may handle before it counts as a runaway.
pub const EVENTS_PER_RUN_MAX: u64 = 50_000_000;
/// Events one instant may hold before it counts as a runaway (a timer that never moves).
pub const EVENTS_PER_INSTANT_MAX: u64 = 1_000_000;
/// The last notable events a failure report shows.
pub const LAST_EVENTS_LEN_MAX: usize = 40;
/// How long a restarted process waits before it tries again after a store error, in ms.
pub const RESTART_DELAY_MS: u64 = 1_000;
/// How often the liveness phase checks for convergence, in ms.
pub const CONVERGENCE_CHECK_INTERVAL_MS: u64 = 250;
/// Each simulated node's disk.
pub const DISK_CAPACITY_BYTES: u64 = 256 << 20;
/// Each simulated node's spool quota.
pub const STORE_MAX_BYTES: u64 = 64 << 20;
/// Log bundles a node keeps for the aggregator at most.
pub const LOG_BUNDLES_LEN_MAX: usize = 256;
/// The longest a full report's upload takes to reach the endpoint, in ms.
pub const FULL_REPORT_TRANSFER_MS_MAX: u64 = 10_000;
/// Where each node's store lives on its disk.
const DATA_DIR: &str = "/data";
/// The settings key of the persisted term and vote.
const VOTE_SETTING: &str = "mesh.vote";
/// The settings key prefix marking an incident known uploaded.
const UPLOADED_SETTING_PREFIX: &str = "uploaded:";
/// The simulated cluster's id.
pub const CLUSTER_ID: &str = "sim-cluster";

/// How one run is set up.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed everything is drawn from.
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// A safety mechanism switched off.
    pub sabotage: Sabotage,
    /// The faults; `None` draws them from the seed (swarm testing).
    pub faults: Option<FaultPlan>,
    /// Length of the safety phase (faults on, workload arriving), in ms.
    pub safety_ms: u64,
    /// How long the liveness phase may take to converge, in ms.
    pub liveness_bound_ms: u64,
    /// Workload time compression (see [`workload`]).
    pub time_compression: u64,
    /// Bursts of one bug on many nodes; `None` draws 0..=2 from the seed.
    pub bursts: Option<u64>,
}

impl SimConfig {
    /// The campaign defaults for one seed.
    pub fn new(seed: u64, nodes: usize) -> SimConfig {
        SimConfig {
            seed,
            nodes,
            sabotage: Sabotage::None,
            faults: None,
            safety_ms: 40_000,
            liveness_bound_ms: 90_000,
            time_compression: TIME_COMPRESSION_DEFAULT,
            bursts: None,
        }
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        let mut command = format!(
            "crashmesh-simulator run --seed {} --nodes {}",
            self.seed, self.nodes
        );
        if self.sabotage != Sabotage::None {
            command.push_str(&format!(" --sabotage {}", self.sabotage.name()));
        }
        command
    }
}

/// What one run found.
#[derive(Clone, Debug)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// The first broken invariant, if any.
    pub violation: Option<Violation>,
    /// The last notable events before the end (or the failure).
    pub last_events: Vec<String>,
    /// blake3 of the trace (every datagram, call and fault, with its time).
    pub trace_hash: [u8; 32],
    /// The fault kinds the seed enabled.
    pub enabled: Vec<FaultKind>,
    /// Faults that struck, by kind.
    pub faults: FaultCounts,
    /// Incidents the stores acknowledged.
    pub incidents_acknowledged: u64,
    /// Incidents a disk fault kept from being recorded (never acknowledged).
    pub incidents_refused: u64,
    /// Acknowledged incidents not at the endpoint at the end.
    pub lost_reports: u64,
    /// Problems beyond one per signature, plus incidents counted twice.
    pub duplicate_problems: u64,
    /// Uploads accepted with a term below one accepted before.
    pub stale_term_accepted: u64,
    /// Time from a loss of the aggregator (or the start) to a new one, per election, ms.
    pub election_ms: Vec<u64>,
    /// Time from a node's death to the first node declaring it down, ms.
    pub detection_ms: Vec<u64>,
    /// Time from acknowledgement to the endpoint accepting the incident, ms.
    pub upload_ms: Vec<u64>,
    /// Time the liveness phase took to converge, ms.
    pub converged_ms: Option<u64>,
    /// Datagrams sent.
    pub datagrams: u64,
    /// Bytes of datagrams sent.
    pub datagram_bytes: u64,
    /// Simulated time covered, ms.
    pub simulated_ms: u64,
    /// The command that replays this run.
    pub replay: String,
}

impl SeedReport {
    /// True when no invariant broke.
    pub fn passed(&self) -> bool {
        self.violation.is_none()
    }

    /// The trace hash in hex.
    pub fn trace_hex(&self) -> String {
        blake3::Hash::from_bytes(self.trace_hash)
            .to_hex()
            .to_string()
    }
}

#[derive(Clone, Debug)]
enum PartitionKind {
    IsolateOne,
    MajorityMinority,
    Asymmetric,
}

#[derive(Clone, Debug)]
enum FaultAction {
    Partition(PartitionKind),
    HealPartitions,
    Kill { prefer_aggregator: bool },
    Pause { prefer_aggregator: bool },
    Resume(usize),
    ClockDrift,
    ClockStep,
    DiskErrors,
    DiskFull,
    DiskHeal(usize),
    EndpointOutage { replies_lost: bool },
    EndpointBack,
}

enum Event {
    Deliver {
        from: usize,
        to: usize,
        bytes: Vec<u8>,
    },
    Timer {
        node: usize,
        process: u64,
    },
    EndpointCall {
        node: usize,
        process: u64,
        upload_id: u64,
        call: UploadCall,
    },
    EndpointReply {
        node: usize,
        process: u64,
        upload_id: u64,
        outcome: UploadOutcome,
    },
    Arrival {
        node: usize,
        signature: String,
    },
    Fault(FaultAction),
    Restart {
        node: usize,
    },
    Heal,
}

struct SimNode {
    id: NodeId,
    disk: SimDisk,
    store: Option<Store>,
    /// The running node and its driver (`None`: the process is dead).
    driver: Option<Driver>,
    /// Bumped at every start; events for an older process are dropped.
    process: u64,
    clock: NodeClock,
    paused: bool,
    /// Restarts waiting (so that a kill during a pending restart does not start twice).
    restart_scheduled: bool,
    /// Chunks this node holds as aggregator (in memory: lost with the process).
    held_chunks: BTreeSet<ChunkId>,
    /// Log bundles gathered for the aggregator, by bundle id (in memory).
    log_bundles: BTreeMap<ReportId, Vec<u8>>,
    timer_at_ms: Option<u64>,
    role: Role,
    /// The last vote the store acknowledged as durable.
    durable_vote: PersistedVote,
    serial: u64,
}

impl SimNode {
    fn node(&self) -> Option<&Node> {
        self.driver.as_ref().map(Driver::node)
    }

    fn node_mut(&mut self) -> Option<&mut Node> {
        self.driver.as_mut().map(Driver::node_mut)
    }
}

struct Acknowledged {
    at_ms: u64,
    uploaded: bool,
}

/// One simulated run.
pub struct Sim {
    config: SimConfig,
    plan: FaultPlan,
    rng: DeterministicRng,
    now_ms: u64,
    events: BTreeMap<(u64, u64), Event>,
    sequence: u64,
    nodes: Vec<SimNode>,
    network: Network,
    endpoint: SimEndpoint,
    endpoint_down: bool,
    endpoint_replies_lost: bool,
    healed: bool,
    trace: blake3::Hasher,
    last_events: VecDeque<String>,
    violation: Option<Violation>,
    faults: FaultCounts,
    acknowledged: BTreeMap<ReportId, Acknowledged>,
    report_chunks: BTreeMap<ReportId, Vec<ChunkId>>,
    incidents_refused: u64,
    aggregator_by_term: BTreeMap<u64, usize>,
    highest_accepted_term: u64,
    stale_term_accepted: u64,
    duplicate_problems: u64,
    leaderless_since: Option<(u64, u64)>,
    down_since: BTreeMap<NodeId, u64>,
    election_ms: Vec<u64>,
    detection_ms: Vec<u64>,
    upload_ms: Vec<u64>,
    events_handled: u64,
    datagrams: u64,
    datagram_bytes: u64,
    members: Vec<NodeId>,
}

impl Sim {
    /// Sets a run up: nodes started, workload and faults scheduled.
    pub fn new(config: SimConfig) -> Sim {
        assert!(config.nodes >= 1);
        let mut rng = DeterministicRng::new(config.seed);
        let plan = config
            .faults
            .clone()
            .unwrap_or_else(|| FaultPlan::draw(&mut rng));
        let members: Vec<NodeId> = (0..config.nodes)
            .map(|index| NodeId::new(format!("node-{index}")))
            .collect();
        let nodes = members
            .iter()
            .enumerate()
            .map(|(index, id)| SimNode {
                id: id.clone(),
                disk: SimDisk::new(
                    config.seed.wrapping_mul(31).wrapping_add(index as u64),
                    plan.disk_error_ppm,
                    DISK_CAPACITY_BYTES,
                ),
                store: None,
                driver: None,
                process: 0,
                clock: NodeClock::exact(),
                paused: false,
                restart_scheduled: false,
                held_chunks: BTreeSet::new(),
                log_bundles: BTreeMap::new(),
                timer_at_ms: None,
                role: Role::Follower,
                durable_vote: PersistedVote::default(),
                serial: 0,
            })
            .collect();
        let network = Network::new(
            plan.packet_loss_percent,
            plan.duplication_percent,
            plan.latency_base_ms,
            plan.reorder_jitter_ms,
        );
        let mut sim = Sim {
            endpoint: SimEndpoint::new(config.sabotage),
            plan,
            rng,
            now_ms: 0,
            events: BTreeMap::new(),
            sequence: 0,
            nodes,
            network,
            endpoint_down: false,
            endpoint_replies_lost: false,
            healed: false,
            trace: blake3::Hasher::new(),
            last_events: VecDeque::new(),
            violation: None,
            faults: FaultCounts::default(),
            acknowledged: BTreeMap::new(),
            report_chunks: BTreeMap::new(),
            incidents_refused: 0,
            aggregator_by_term: BTreeMap::new(),
            highest_accepted_term: 0,
            stale_term_accepted: 0,
            duplicate_problems: 0,
            leaderless_since: Some((0, 0)),
            down_since: BTreeMap::new(),
            election_ms: Vec::new(),
            detection_ms: Vec::new(),
            upload_ms: Vec::new(),
            events_handled: 0,
            datagrams: 0,
            datagram_bytes: 0,
            members,
            config,
        };
        sim.schedule_workload();
        sim.schedule_faults();
        let safety_ms = sim.config.safety_ms;
        sim.schedule(safety_ms, Event::Heal);
        for index in 0..sim.nodes.len() {
            sim.start(index);
        }
        sim
    }

    fn schedule(&mut self, at_ms: u64, event: Event) {
        self.sequence += 1;
        self.events.insert((at_ms, self.sequence), event);
    }

    fn note(&mut self, text: String) {
        self.trace.update(&self.now_ms.to_le_bytes());
        self.trace.update(text.as_bytes());
        if self.last_events.len() == LAST_EVENTS_LEN_MAX {
            self.last_events.pop_front();
        }
        self.last_events
            .push_back(format!("{:>8} ms  {text}", self.now_ms));
    }

    fn violate(&mut self, invariant: Invariant, detail: String) {
        if self.violation.is_none() {
            self.note(format!("VIOLATION {}: {detail}", invariant.name()));
            self.violation = Some(Violation {
                invariant,
                detail,
                at_ms: self.now_ms,
            });
        }
    }

    fn local_ms(&self, index: usize) -> u64 {
        self.nodes[index].clock.local_ms(self.now_ms)
    }

    fn running(&self, index: usize) -> bool {
        self.nodes[index].driver.is_some() && !self.nodes[index].paused
    }

    // ---- the event loop -------------------------------------------------------------

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, bytes } => {
                if self.nodes[to].driver.is_none() {
                    return;
                }
                if self.nodes[to].paused {
                    // The kernel holds datagrams for a stopped process.
                    self.schedule(self.now_ms + 100, Event::Deliver { from, to, bytes });
                    return;
                }
                let now_local = self.local_ms(to);
                let from_id = self.nodes[from].id.clone();
                let node = self.nodes[to].node_mut().expect("checked above");
                if let Err(error) = node.handle_datagram(now_local, &from_id, &bytes.into()) {
                    tracing::debug!(%error, "datagram refused");
                }
                self.drain(to);
            }
            Event::Timer { node, process } => {
                let sim_node = &self.nodes[node];
                if sim_node.process != process
                    || sim_node.timer_at_ms != Some(self.now_ms)
                    || !self.running(node)
                {
                    return;
                }
                self.nodes[node].timer_at_ms = None;
                let now_local = self.local_ms(node);
                let running = self.nodes[node].node_mut().expect("running");
                if running.next_deadline_ms() <= now_local {
                    running.handle_timeout(now_local);
                }
                self.drain(node);
            }
            Event::EndpointCall {
                node,
                process,
                upload_id,
                call,
            } => {
                if self.nodes[node].process != process || self.nodes[node].driver.is_none() {
                    // The process died mid-request: the endpoint never sees a whole body.
                    return;
                }
                if self.nodes[node].paused {
                    // A stopped process streams nothing: its request waits with it.
                    let event = Event::EndpointCall {
                        node,
                        process,
                        upload_id,
                        call,
                    };
                    self.schedule(self.now_ms + 100, event);
                    return;
                }
                let reply_ms = self.now_ms + self.rng.range_u64(10, 300);
                let outcome = if self.endpoint_down {
                    self.note(format!("endpoint refused node-{node}'s call (down)"));
                    UploadOutcome::Retry
                } else {
                    let (outcome, accepted) = self.endpoint.handle(&call);
                    if let Some(accepted) = accepted {
                        self.audit(&call, accepted.term);
                    }
                    self.note(format!(
                        "endpoint {outcome:?} node-{node} {} term {}",
                        call.signature, call.term
                    ));
                    if self.endpoint_replies_lost && self.rng.chance(1, 2) {
                        UploadOutcome::Retry
                    } else {
                        outcome
                    }
                };
                self.schedule(
                    reply_ms,
                    Event::EndpointReply {
                        node,
                        process,
                        upload_id,
                        outcome,
                    },
                );
            }
            Event::EndpointReply {
                node,
                process,
                upload_id,
                outcome,
            } => {
                if self.nodes[node].process != process || self.nodes[node].driver.is_none() {
                    return;
                }
                if self.nodes[node].paused {
                    let event = Event::EndpointReply {
                        node,
                        process,
                        upload_id,
                        outcome,
                    };
                    self.schedule(self.now_ms + 100, event);
                    return;
                }
                let now_local = self.local_ms(node);
                let running = self.nodes[node].node_mut().expect("checked above");
                running.upload_finished(now_local, upload_id, outcome);
                self.drain(node);
            }
            Event::Arrival { node, signature } => {
                if self.nodes[node].paused {
                    // The crash waits in the hook until the daemon runs again.
                    self.schedule(self.now_ms + 100, Event::Arrival { node, signature });
                } else {
                    self.arrive(node, signature);
                }
            }
            Event::Fault(action) => self.apply_fault(action),
            Event::Restart { node } => {
                if self.nodes[node].driver.is_none() {
                    self.start(node);
                }
            }
            Event::Heal => self.heal(),
        }
    }

    /// Checks an upload the endpoint accepted against what must hold.
    fn audit(&mut self, call: &UploadCall, term: u64) {
        if term < self.highest_accepted_term {
            self.stale_term_accepted += 1;
            let detail = format!(
                "term {term} accepted after term {}",
                self.highest_accepted_term
            );
            self.violate(Invariant::StaleTermAccepted, detail);
        }
        self.highest_accepted_term = self.highest_accepted_term.max(term);
        let now_ms = self.now_ms;
        for report_id in call.full_report.iter().chain(call.incidents.iter()) {
            if let Some(acknowledged) = self.acknowledged.get_mut(report_id)
                && !acknowledged.uploaded
            {
                acknowledged.uploaded = true;
                self.upload_ms.push(now_ms - acknowledged.at_ms);
            }
        }
        let problems: Vec<_> = self
            .endpoint
            .problems()
            .iter()
            .filter(|problem| problem.signature == call.signature)
            .collect();
        let mut duplicates = problems.len().saturating_sub(1) as u64;
        let mut seen = BTreeSet::new();
        for problem in &problems {
            for report_id in &problem.incidents {
                if !seen.insert(report_id) {
                    duplicates += 1;
                }
            }
        }
        if duplicates > 0 {
            let invariant = if problems.len() > 1 {
                Invariant::DuplicateProblem
            } else {
                Invariant::DuplicateIncident
            };
            let detail = format!(
                "{} at the endpoint as {} problems with {duplicates} duplicates",
                call.signature,
                problems.len()
            );
            self.violate(invariant, detail);
        }
    }

    /// True when the cluster converged: one aggregator everyone follows, every
    /// acknowledged incident at the endpoint, nothing pending anywhere.
    fn converged(&self) -> bool {
        let aggregators: Vec<&SimNode> = self
            .nodes
            .iter()
            .filter(|node| node.role == Role::Aggregator && node.driver.is_some())
            .collect();
        let [leader] = aggregators.as_slice() else {
            return false;
        };
        self.nodes.iter().all(|sim_node| {
            sim_node.node().is_some_and(|node| {
                node.election().aggregator() == Some(&leader.id)
                    && node.consolidation().pending_len() == 0
            })
        }) && self
            .acknowledged
            .keys()
            .all(|report_id| self.endpoint.has_report(report_id))
    }

    /// Handles every event up to `until_ms`; stops early at a violation.
    pub fn run_until_ms(&mut self, until_ms: u64) {
        let mut instant_events = 0;
        while self.violation.is_none() {
            let Some(entry) = self.events.first_entry() else {
                break;
            };
            let at_ms = entry.key().0;
            if at_ms > until_ms {
                break;
            }
            let event = entry.remove();
            if at_ms == self.now_ms {
                instant_events += 1;
            } else {
                instant_events = 0;
            }
            self.now_ms = self.now_ms.max(at_ms);
            self.events_handled += 1;
            if self.events_handled > EVENTS_PER_RUN_MAX || instant_events > EVENTS_PER_INSTANT_MAX {
                let detail = format!("{} events handled", self.events_handled);
                self.violate(Invariant::Runaway, detail);
                break;
            }
            self.handle(event);
        }
        self.now_ms = self.now_ms.max(until_ms);
    }

    /// Runs both phases and reports.
    pub fn run(mut self) -> SeedReport {
        self.run_until_ms(self.config.safety_ms);
        let mut converged_ms = None;
        let healed_ms = self.now_ms;
        let bound_ms = healed_ms + self.config.liveness_bound_ms;
        while self.violation.is_none() && self.now_ms < bound_ms {
            if self.converged() {
                converged_ms = Some(self.now_ms - healed_ms);
                break;
            }
            self.run_until_ms(self.now_ms + CONVERGENCE_CHECK_INTERVAL_MS);
        }
        if converged_ms.is_none() && self.converged() {
            converged_ms = Some(self.now_ms - healed_ms);
        }
        let lost: Vec<&ReportId> = self
            .acknowledged
            .keys()
            .filter(|report_id| !self.endpoint.has_report(report_id))
            .collect();
        let lost_reports = lost.len() as u64;
        if self.violation.is_none() && lost_reports > 0 {
            let detail = format!(
                "{lost_reports} acknowledged incidents missing after healing, e.g. {}",
                lost[0]
            );
            self.violate(Invariant::AcknowledgedIncidentLost, detail);
        }
        if self.violation.is_none() && converged_ms.is_none() {
            let detail = format!(
                "no convergence within {} ms of healing",
                self.config.liveness_bound_ms
            );
            self.violate(Invariant::NotConverged, detail);
        }
        self.finish(lost_reports, converged_ms)
    }

    fn finish(mut self, lost_reports: u64, converged_ms: Option<u64>) -> SeedReport {
        let disk_faults: u64 = self.nodes.iter().map(|node| node.disk.fault_count()).sum();
        self.faults.add(FaultKind::DiskFault, disk_faults);
        let mut duplicate_problems = 0;
        let mut by_signature: BTreeMap<&str, u64> = BTreeMap::new();
        for problem in self.endpoint.problems() {
            *by_signature.entry(&problem.signature).or_default() += 1;
            let distinct: BTreeSet<&ReportId> = problem.incidents.iter().collect();
            duplicate_problems += (problem.incidents.len() - distinct.len()) as u64;
        }
        duplicate_problems += by_signature.values().map(|count| count - 1).sum::<u64>();
        self.duplicate_problems = duplicate_problems;
        SeedReport {
            seed: self.config.seed,
            nodes: self.config.nodes,
            violation: self.violation.clone(),
            last_events: self.last_events.iter().cloned().collect(),
            trace_hash: *self.trace.finalize().as_bytes(),
            enabled: self.plan.enabled.clone(),
            faults: self.faults.clone(),
            incidents_acknowledged: self.acknowledged.len() as u64,
            incidents_refused: self.incidents_refused,
            lost_reports,
            duplicate_problems: self.duplicate_problems,
            stale_term_accepted: self.stale_term_accepted,
            election_ms: std::mem::take(&mut self.election_ms),
            detection_ms: std::mem::take(&mut self.detection_ms),
            upload_ms: std::mem::take(&mut self.upload_ms),
            converged_ms,
            datagrams: self.datagrams,
            datagram_bytes: self.datagram_bytes,
            simulated_ms: self.now_ms,
            replay: self.config.replay_command(),
        }
    }

    /// Simulated time now, ms.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Datagrams sent so far.
    pub fn datagrams(&self) -> u64 {
        self.datagrams
    }

    /// Datagram bytes sent so far.
    pub fn datagram_bytes(&self) -> u64 {
        self.datagram_bytes
    }

    /// Incidents acknowledged so far.
    pub fn incidents_acknowledged(&self) -> u64 {
        self.acknowledged.len() as u64
    }

    /// Elections measured so far (start → first aggregator included), ms.
    pub fn election_ms(&self) -> &[u64] {
        &self.election_ms
    }

    /// Bytes the simulated disks hold, all nodes together.
    pub fn disk_bytes(&self) -> u64 {
        self.nodes
            .iter()
            .filter_map(|node| node.store.as_ref())
            .filter_map(|store| store.used_bytes().ok())
            .sum()
    }
}

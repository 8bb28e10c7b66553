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
//! The shell rules are the daemon's (`node/src/mesh.rs`): a `Persist` is made durable
//! (`Store::put_setting`) before any later output is released; any store error makes the
//! process restart (the store's documented safe reaction); an incident counts as
//! acknowledged once `record_incident` returned Ok (it is then durable).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::Arc;

use crashmesh_protocol::cluster::{Node, NodeConfig, NodeOutput};
use crashmesh_protocol::consolidation::{ConsolidationOutput, UploadOutcome};
use crashmesh_protocol::election::{PersistedVote, Role};
use crashmesh_protocol::membership::MembershipOutput;
use crashmesh_protocol::rng::DeterministicRng;
use crashmesh_protocol::wire::{
    Announcement, ChunkId, ClusterId, Label, Message, NodeId, ReportId, UploadState,
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
/// The longest a full report's upload takes to reach the endpoint, in ms.
pub const FULL_REPORT_TRANSFER_MS_MAX: u64 = 3_000;
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
    node: Option<Node>,
    /// Bumped at every start; events for an older process are dropped.
    process: u64,
    clock: NodeClock,
    paused: bool,
    /// Restarts waiting (so that a kill during a pending restart does not start twice).
    restart_scheduled: bool,
    /// Chunks this node holds as aggregator (in memory: lost with the process).
    held_chunks: BTreeSet<ChunkId>,
    timer_at_ms: Option<u64>,
    role: Role,
    /// The last vote the store acknowledged as durable.
    durable_vote: PersistedVote,
    serial: u64,
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
                node: None,
                process: 0,
                clock: NodeClock::exact(),
                paused: false,
                restart_scheduled: false,
                held_chunks: BTreeSet::new(),
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

    fn schedule_workload(&mut self) {
        let bursts = match self.config.bursts {
            Some(bursts) => bursts,
            None => self.rng.range_u64(0, 3),
        };
        let arrivals = workload::draw_arrivals(
            &mut self.rng,
            self.config.nodes,
            2_000,
            self.config.safety_ms,
            self.config.time_compression,
            bursts,
        );
        for arrival in arrivals {
            self.schedule(
                arrival.at_ms,
                Event::Arrival {
                    node: arrival.node,
                    signature: arrival.signature,
                },
            );
        }
    }

    fn schedule_faults(&mut self) {
        let active: Vec<FaultKind> = [
            FaultKind::Partition,
            FaultKind::NodeKill,
            FaultKind::Pause,
            FaultKind::ClockSkew,
            FaultKind::DiskFault,
            FaultKind::EndpointOutage,
        ]
        .into_iter()
        .filter(|kind| self.plan.has(*kind))
        .collect();
        if active.is_empty() {
            return;
        }
        let interval_ms = self.plan.fault_interval_ms;
        let mut at_ms = 1_000;
        loop {
            at_ms += self.rng.range_u64(interval_ms / 2, interval_ms * 3 / 2 + 1);
            if at_ms >= self.config.safety_ms {
                break;
            }
            let kind = active[self.rng.range_u64(0, active.len() as u64) as usize];
            let prefer_aggregator = self.rng.chance(1, 2);
            let action = match kind {
                FaultKind::Partition => {
                    let partition = match self.rng.range_u64(0, 3) {
                        0 => PartitionKind::IsolateOne,
                        1 => PartitionKind::MajorityMinority,
                        _ => PartitionKind::Asymmetric,
                    };
                    let heal_ms = at_ms + self.rng.range_u64(1_000, 15_000);
                    self.schedule(heal_ms, Event::Fault(FaultAction::HealPartitions));
                    FaultAction::Partition(partition)
                }
                FaultKind::NodeKill => FaultAction::Kill { prefer_aggregator },
                FaultKind::Pause => FaultAction::Pause { prefer_aggregator },
                FaultKind::ClockSkew => {
                    if self.rng.chance(1, 2) {
                        FaultAction::ClockDrift
                    } else {
                        FaultAction::ClockStep
                    }
                }
                FaultKind::DiskFault => {
                    if self.rng.chance(1, 2) {
                        FaultAction::DiskErrors
                    } else {
                        FaultAction::DiskFull
                    }
                }
                _ => {
                    let back_ms = at_ms + self.rng.range_u64(1_000, 20_000);
                    self.schedule(back_ms, Event::Fault(FaultAction::EndpointBack));
                    FaultAction::EndpointOutage {
                        replies_lost: self.rng.chance(1, 2),
                    }
                }
            };
            self.schedule(at_ms, Event::Fault(action));
        }
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
        self.nodes[index].node.is_some() && !self.nodes[index].paused
    }

    // ---- node lifecycle -------------------------------------------------------------

    /// Starts (or restarts) a node's process: the disk comes back as the crash left it, the
    /// store opens (recovery), the vote and the incidents are read back and re-announced.
    fn start(&mut self, index: usize) {
        self.nodes[index].restart_scheduled = false;
        if self.nodes[index].node.is_some() {
            return;
        }
        let sim_node = &mut self.nodes[index];
        if sim_node.process > 0 && sim_node.disk.faulty().is_crashed() {
            sim_node.disk.faulty().restart();
        }
        sim_node.process += 1;
        let process = sim_node.process;
        let disk: Arc<dyn crashmesh_store::Fs> = Arc::new(sim_node.disk.clone());
        let opened = Store::open_with_fs(disk, Path::new(DATA_DIR), store_config())
            .map_err(|error| error.to_string())
            .and_then(|store| {
                let vote = read_vote(&store)?;
                let announcements = read_announcements(&store)?;
                Ok((store, vote, announcements))
            });
        let (store, vote, announcements) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                self.note(format!("node-{index} could not start: {error}"));
                self.crash_and_restart(index);
                return;
            }
        };
        let durable = &self.nodes[index].durable_vote;
        if vote.term < durable.term
            || (vote.term == durable.term && durable.voted_for.is_some() && vote != *durable)
        {
            let detail =
                format!("node-{index} read back {vote:?} but {durable:?} was acknowledged durable");
            self.violate(Invariant::VoteNotDurable, detail);
        }
        let now_local = self.local_ms(index);
        let config = NodeConfig::new(
            self.nodes[index].id.clone(),
            ClusterId::new(CLUSTER_ID),
            self.members.clone(),
            self.now_ms * 16 + process,
        );
        let node_seed = self
            .config
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(index as u64 * 7_919 + process);
        let node = match Node::new(config, vote.clone(), node_seed, now_local) {
            Ok(node) => node,
            Err(error) => panic!("the simulator's node config is invalid: {error}"),
        };
        let sim_node = &mut self.nodes[index];
        sim_node.node = Some(node);
        sim_node.store = Some(store);
        sim_node.durable_vote = vote;
        sim_node.held_chunks.clear();
        sim_node.timer_at_ms = None;
        sim_node.role = Role::Follower;
        let count = announcements.len();
        let id = sim_node.id.clone();
        self.down_since.remove(&id);
        self.note(format!(
            "node-{index} started (process {process}, {count} incidents in its spool)"
        ));
        for announcement in announcements {
            if let Some(node) = self.nodes[index].node.as_mut()
                && let Err(error) = node.announce(now_local, announcement)
            {
                tracing::debug!(%error, "re-announcement refused");
            }
        }
        self.drain(index);
    }

    /// The process dies (`kill -9`): unsynced writes are lost with the disk's crash.
    fn kill(&mut self, index: usize) {
        let sim_node = &mut self.nodes[index];
        if sim_node.node.is_none() {
            return;
        }
        sim_node.disk.faulty().crash();
        sim_node.node = None;
        sim_node.store = None;
        sim_node.paused = false;
        sim_node.timer_at_ms = None;
        let id = sim_node.id.clone();
        let was_aggregator = sim_node.role == Role::Aggregator;
        self.down_since.entry(id).or_insert(self.now_ms);
        if was_aggregator {
            self.aggregator_lost();
        }
        self.note(format!("node-{index} killed"));
    }

    /// A store error: the process restarts (the store's documented safe reaction).
    fn crash_and_restart(&mut self, index: usize) {
        self.kill(index);
        if !self.nodes[index].restart_scheduled {
            self.nodes[index].restart_scheduled = true;
            self.schedule(
                self.now_ms + RESTART_DELAY_MS,
                Event::Restart { node: index },
            );
        }
    }

    fn aggregator_lost(&mut self) {
        if self.leaderless_since.is_none() {
            let term = self
                .nodes
                .iter()
                .filter_map(|node| node.node.as_ref())
                .map(|node| node.election().term())
                .max()
                .unwrap_or(0);
            self.leaderless_since = Some((self.now_ms, term));
        }
    }

    // ---- the shell ------------------------------------------------------------------

    /// Carries out a node's outputs in order, as the daemon's mesh actor does.
    fn drain(&mut self, index: usize) {
        loop {
            let Some(node) = self.nodes[index].node.as_mut() else {
                return;
            };
            let Some(output) = node.poll_output() else {
                break;
            };
            match output {
                NodeOutput::Persist(vote) => {
                    if !self.persist_vote(index, vote) {
                        return;
                    }
                }
                NodeOutput::Transmit { to, bytes } => {
                    let to = self
                        .members
                        .iter()
                        .position(|member| *member == to)
                        .expect("a configured member");
                    self.transmit(index, to, bytes);
                }
                NodeOutput::Membership(MembershipOutput::MemberDown(down)) => {
                    if let Some(since_ms) = self.down_since.remove(&down) {
                        self.detection_ms.push(self.now_ms - since_ms);
                    }
                }
                NodeOutput::AggregatorChanged { .. } | NodeOutput::Membership(_) => {}
                NodeOutput::Consolidation(output) => {
                    if !self.carry_out(index, output) {
                        return;
                    }
                }
            }
        }
        self.after_activity(index);
    }

    /// Makes term and vote durable; false when the store failed (the process restarted).
    fn persist_vote(&mut self, index: usize, vote: PersistedVote) -> bool {
        let durable = self.nodes[index].durable_vote.clone();
        if vote.term < durable.term
            || (vote.term == durable.term
                && durable.voted_for.is_some()
                && vote.voted_for != durable.voted_for)
        {
            let detail = format!("node-{index} persisted {vote:?} after {durable:?}");
            self.violate(Invariant::VoteNotDurable, detail);
        }
        let encoded = encode_vote(&vote);
        let store = self.nodes[index].store.as_ref().expect("a running node");
        match store.put_setting(VOTE_SETTING, &encoded) {
            Ok(()) => {
                self.nodes[index].durable_vote = vote;
                true
            }
            Err(error) => {
                self.note(format!("node-{index} could not persist its vote: {error}"));
                self.crash_and_restart(index);
                false
            }
        }
    }

    fn transmit(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        self.datagrams += 1;
        self.datagram_bytes += bytes.len() as u64;
        self.trace.update(&self.now_ms.to_le_bytes());
        self.trace.update(&(from as u32).to_le_bytes());
        self.trace.update(&(to as u32).to_le_bytes());
        self.trace.update(&bytes);
        match self.network.fate(&mut self.rng, from, to) {
            Fate::Blocked => {}
            Fate::Lost => self.faults.add(FaultKind::PacketLoss, 1),
            Fate::Delivered(delays) => {
                if delays.len() > 1 {
                    self.faults.add(FaultKind::Duplication, 1);
                }
                if self.plan.has(FaultKind::Reordering) && !self.healed {
                    self.faults.add(FaultKind::Reordering, 1);
                }
                if self.plan.has(FaultKind::Latency) && !self.healed {
                    self.faults.add(FaultKind::Latency, 1);
                }
                for delay_ms in delays {
                    let event = Event::Deliver {
                        from,
                        to,
                        bytes: bytes.clone(),
                    };
                    self.schedule(self.now_ms + delay_ms.max(1), event);
                }
            }
        }
    }

    fn send(&mut self, index: usize, to: &NodeId, message: Message) {
        let now_local = self.local_ms(index);
        if let Some(node) = self.nodes[index].node.as_mut()
            && let Err(error) = node.send(now_local, to, message)
        {
            tracing::debug!(%error, "message refused");
        }
    }

    /// Reads a report's protocol chunks back from the node's store.
    fn report_pieces(&self, index: usize, report_id: &ReportId) -> Option<Vec<Vec<u8>>> {
        let store = self.nodes[index].store.as_ref()?;
        let incident = store.incident(&report_id.0).ok()??;
        let evidence = incident
            .attachments
            .iter()
            .find(|evidence| evidence.name == "report")?;
        let bytes = store.read_blob_bytes(&evidence.blob).ok()?;
        Some(
            workload::report_pieces(&bytes)
                .into_iter()
                .map(<[u8]>::to_vec)
                .collect(),
        )
    }

    /// One consolidation effect; false when the process died doing it.
    fn carry_out(&mut self, index: usize, output: ConsolidationOutput) -> bool {
        let now_local = self.local_ms(index);
        match output {
            ConsolidationOutput::ServeReport { to, report_id } => {
                let message = match self.report_pieces(index, &report_id) {
                    Some(pieces) => {
                        let chunk_ids: Vec<ChunkId> =
                            pieces.iter().map(|piece| ChunkId::of(piece)).collect();
                        Message::ReportChunks {
                            report_id: report_id.clone(),
                            report_bytes: pieces.iter().map(|piece| piece.len() as u64).sum(),
                            chunk_count: chunk_ids.len() as u32,
                            offset: 0,
                            chunk_ids,
                        }
                    }
                    None => Message::ReportUnavailable { report_id },
                };
                self.send(index, &to, message);
            }
            ConsolidationOutput::ServeChunks {
                to,
                report_id,
                chunk_ids,
            } => {
                for bytes in self.report_pieces(index, &report_id).unwrap_or_default() {
                    let chunk_id = ChunkId::of(&bytes);
                    if chunk_ids.contains(&chunk_id) {
                        let message = Message::ChunkData {
                            report_id: report_id.clone(),
                            chunk_id,
                            bytes,
                        };
                        self.send(index, &to, message);
                    }
                }
            }
            ConsolidationOutput::ChunksOffered {
                report_id,
                chunk_ids,
            } => {
                let held = &self.nodes[index].held_chunks;
                let missing: Vec<ChunkId> = chunk_ids
                    .into_iter()
                    .filter(|chunk| !held.contains(chunk))
                    .collect();
                if let Some(node) = self.nodes[index].node.as_mut() {
                    node.chunks_missing(now_local, &report_id, missing);
                }
            }
            ConsolidationOutput::StoreChunk {
                chunk_id, bytes, ..
            } => {
                assert_eq!(
                    ChunkId::of(&bytes),
                    chunk_id,
                    "the protocol verifies chunks"
                );
                self.nodes[index].held_chunks.insert(chunk_id);
            }
            ConsolidationOutput::UploadReport(upload) => {
                let wanted = self
                    .report_chunks
                    .get(&upload.first.report_id)
                    .cloned()
                    .unwrap_or_default();
                let held = &self.nodes[index].held_chunks;
                if let Some(missing) = wanted.iter().find(|chunk| !held.contains(chunk)) {
                    let detail = format!(
                        "node-{index} uploads {} without chunk {missing:?}",
                        upload.first.report_id
                    );
                    self.violate(Invariant::UploadWithoutChunks, detail);
                }
                let call = UploadCall {
                    cluster: upload.fence.cluster_id.0.clone(),
                    term: upload.fence.term,
                    signature: upload.signature,
                    full_report: Some(upload.first.report_id),
                    incidents: upload
                        .incidents
                        .into_iter()
                        .map(|incident| incident.report_id)
                        .collect(),
                };
                self.call_endpoint(index, upload.upload_id, call);
            }
            ConsolidationOutput::UploadIncidents(upload) => {
                let call = UploadCall {
                    cluster: upload.fence.cluster_id.0.clone(),
                    term: upload.fence.term,
                    signature: upload.signature,
                    full_report: None,
                    incidents: upload
                        .incidents
                        .into_iter()
                        .map(|incident| incident.report_id)
                        .collect(),
                };
                self.call_endpoint(index, upload.upload_id, call);
            }
            ConsolidationOutput::Uploaded { report_id } => {
                if !self.endpoint.has_report(&report_id) {
                    let detail = format!("node-{index} told {report_id} is uploaded");
                    self.violate(Invariant::UploadedButAbsent, detail);
                }
                let key = format!("{UPLOADED_SETTING_PREFIX}{}", report_id.0);
                let store = self.nodes[index].store.as_ref().expect("a running node");
                if let Err(error) = store.put_setting(&key, b"1") {
                    self.note(format!("node-{index} could not mark {report_id}: {error}"));
                    self.crash_and_restart(index);
                    return false;
                }
            }
            // Logs, feedback and fencing notices change nothing the simulator checks.
            _ => {}
        }
        true
    }

    fn call_endpoint(&mut self, index: usize, upload_id: u64, call: UploadCall) {
        // A full report is big (100 MB on average in the reference deployment): its body
        // takes a while to stream; incident updates are small.
        let latency_ms = if call.full_report.is_some() {
            self.rng.range_u64(200, FULL_REPORT_TRANSFER_MS_MAX)
        } else {
            self.rng.range_u64(10, 300)
        };
        let process = self.nodes[index].process;
        self.note(format!(
            "node-{index} uploads {} term {} ({} incidents{})",
            call.signature,
            call.term,
            call.incidents.len(),
            if call.full_report.is_some() {
                ", full report"
            } else {
                ""
            }
        ));
        self.schedule(
            self.now_ms + latency_ms,
            Event::EndpointCall {
                node: index,
                process,
                upload_id,
                call,
            },
        );
    }

    /// Checks what must hold after a node did something, and keeps its timer scheduled.
    fn after_activity(&mut self, index: usize) {
        let Some(node) = self.nodes[index].node.as_ref() else {
            return;
        };
        let role = node.election().role();
        let term = node.election().term();
        let pending = node.consolidation().pending_len();
        let deadline_local_ms = node.next_deadline_ms();
        if role == Role::Aggregator {
            let holder = *self.aggregator_by_term.entry(term).or_insert(index);
            if holder != index {
                let detail = format!("node-{holder} and node-{index} both lead term {term}");
                self.violate(Invariant::TwoAggregatorsInOneTerm, detail);
            }
            if let Some((since_ms, lost_term)) = self.leaderless_since
                && term > lost_term
            {
                self.election_ms.push(self.now_ms - since_ms);
                self.leaderless_since = None;
            }
        }
        let pending_max =
            crashmesh_protocol::consolidation::ConsolidationConfig::new(ClusterId::new(CLUSTER_ID))
                .pending_records_len_max;
        if pending > pending_max {
            let detail = format!("node-{index} holds {pending} pending incidents");
            self.violate(Invariant::QuotaExceeded, detail);
        }
        if role != self.nodes[index].role {
            self.note(format!("node-{index} is {role:?} in term {term}"));
            self.nodes[index].role = role;
        }
        let due_ms = self.nodes[index]
            .clock
            .true_ms_at(deadline_local_ms)
            .max(self.now_ms);
        if self.nodes[index].timer_at_ms != Some(due_ms) && !self.nodes[index].paused {
            self.nodes[index].timer_at_ms = Some(due_ms);
            let process = self.nodes[index].process;
            self.schedule(
                due_ms,
                Event::Timer {
                    node: index,
                    process,
                },
            );
        }
    }

    // ---- workload -------------------------------------------------------------------

    /// A problem on a node: its report goes into the store (durably), then the incident is
    /// recorded; once that returns Ok the incident is acknowledged and announced.
    fn arrive(&mut self, index: usize, signature: String) {
        if self.nodes[index].node.is_none() {
            // Nothing runs on a dead node to crash.
            return;
        }
        self.nodes[index].serial += 1;
        let report_id = ReportId::new(format!(
            "node-{index}-p{}-{}",
            self.nodes[index].process, self.nodes[index].serial
        ));
        let bytes = workload::report_bytes(&mut self.rng, &signature, &report_id.0);
        let local_ms = self.local_ms(index);
        let incident = NewIncident {
            report_id: report_id.0.clone(),
            time_ms: local_ms,
            node: self.nodes[index].id.as_str().to_string(),
            problem: sim_problem(&signature),
            executable: Some("/usr/bin/storaged".into()),
            pid: Some(1_000 + self.nodes[index].serial as u32),
            uid: Some(0),
            signal: Some(11),
            core: None,
            core_truncated: false,
            attachments: Vec::new(),
            labels: BTreeMap::new(),
        };
        let store = self.nodes[index].store.as_ref().expect("a running node");
        let recorded = store.put_blob_bytes(&bytes).and_then(|blob| {
            let mut incident = incident;
            incident.attachments.push(("report".to_string(), blob));
            store.record_incident(incident)
        });
        if let Err(error) = recorded {
            self.incidents_refused += 1;
            self.note(format!(
                "node-{index} could not record {report_id}: {error}"
            ));
            self.crash_and_restart(index);
            return;
        }
        self.acknowledged.insert(
            report_id.clone(),
            Acknowledged {
                at_ms: self.now_ms,
                uploaded: false,
            },
        );
        self.report_chunks.insert(
            report_id.clone(),
            workload::report_pieces(&bytes)
                .into_iter()
                .map(ChunkId::of)
                .collect(),
        );
        self.note(format!("node-{index} caught {signature} as {report_id}"));
        let store = self.nodes[index].store.as_ref().expect("a running node");
        match store.enforce_quota(self.now_ms) {
            Ok(report) => {
                if !report.still_over_quota && report.used_bytes_after > report.allowed_bytes {
                    let detail = format!(
                        "node-{index} uses {} of {} bytes",
                        report.used_bytes_after, report.allowed_bytes
                    );
                    self.violate(Invariant::QuotaExceeded, detail);
                }
            }
            Err(error) => {
                self.note(format!("node-{index} quota pass failed: {error}"));
                self.crash_and_restart(index);
                return;
            }
        }
        let announcement = Announcement {
            report_id,
            signature,
            kind: ProblemKind::Core,
            time_ms: local_ms,
            node: self.nodes[index].id.clone(),
            report_bytes: bytes.len() as u64,
            labels: vec![Label {
                key: "role".into(),
                value: "storage".into(),
            }],
            upload_state: UploadState::NotUploaded,
        };
        if let Some(node) = self.nodes[index].node.as_mut()
            && let Err(error) = node.announce(local_ms, announcement)
        {
            tracing::debug!(%error, "announcement refused");
        }
        self.drain(index);
    }

    // ---- faults ---------------------------------------------------------------------

    fn pick_node(&mut self, prefer_aggregator: bool) -> usize {
        if prefer_aggregator
            && let Some(index) = (0..self.nodes.len())
                .find(|&index| self.nodes[index].role == Role::Aggregator && self.running(index))
        {
            return index;
        }
        self.rng.range_u64(0, self.nodes.len() as u64) as usize
    }

    fn apply_fault(&mut self, action: FaultAction) {
        if self.healed {
            return;
        }
        let count = self.nodes.len();
        match action {
            FaultAction::Partition(kind) => {
                self.faults.add(FaultKind::Partition, 1);
                match kind {
                    PartitionKind::IsolateOne => {
                        let lonely = self.pick_node(true);
                        let others: Vec<usize> = (0..count).filter(|&i| i != lonely).collect();
                        self.network.split(&[lonely], &others);
                        if self.nodes[lonely].role == Role::Aggregator {
                            self.aggregator_lost();
                        }
                        self.note(format!("partition: node-{lonely} isolated"));
                    }
                    PartitionKind::MajorityMinority => {
                        let minority_len = (count - 1) / 2;
                        let mut order: Vec<usize> = (0..count).collect();
                        for i in (1..count).rev() {
                            let j = self.rng.range_u64(0, i as u64 + 1) as usize;
                            order.swap(i, j);
                        }
                        let (minority, majority) = order.split_at(minority_len.max(1));
                        self.network.split(minority, majority);
                        if minority
                            .iter()
                            .any(|&i| self.nodes[i].role == Role::Aggregator)
                        {
                            self.aggregator_lost();
                        }
                        self.note(format!("partition: minority {minority:?}"));
                    }
                    PartitionKind::Asymmetric => {
                        let from = self.pick_node(true);
                        let to = self.rng.range_u64(0, count as u64) as usize;
                        for other in 0..count {
                            if other != from && (to == from || other == to || count <= 3) {
                                self.network.block(from, other);
                            }
                        }
                        self.note(format!("partition: node-{from} cannot send (one way)"));
                    }
                }
            }
            FaultAction::HealPartitions => {
                self.network.heal();
                self.note("partitions healed".into());
            }
            FaultAction::Kill { prefer_aggregator } => {
                let index = self.pick_node(prefer_aggregator);
                if self.nodes[index].node.is_some() {
                    self.faults.add(FaultKind::NodeKill, 1);
                    self.kill(index);
                    let restart_ms = self.now_ms + self.rng.range_u64(500, 10_000);
                    self.nodes[index].restart_scheduled = true;
                    self.schedule(restart_ms, Event::Restart { node: index });
                }
            }
            FaultAction::Pause { prefer_aggregator } => {
                let index = self.pick_node(prefer_aggregator);
                if self.running(index) {
                    self.faults.add(FaultKind::Pause, 1);
                    self.nodes[index].paused = true;
                    self.nodes[index].timer_at_ms = None;
                    if self.nodes[index].role == Role::Aggregator {
                        self.aggregator_lost();
                    }
                    let resume_ms = self.now_ms + self.rng.range_u64(500, 8_000);
                    self.schedule(resume_ms, Event::Fault(FaultAction::Resume(index)));
                    self.note(format!("node-{index} paused"));
                }
            }
            FaultAction::Resume(index) => self.resume(index),
            FaultAction::ClockDrift => {
                let index = self.pick_node(false);
                let drift_ppm =
                    self.rng.range_u64(0, 2 * DRIFT_PPM_MAX as u64 + 1) as i64 - DRIFT_PPM_MAX;
                self.faults.add(FaultKind::ClockSkew, 1);
                let now_ms = self.now_ms;
                self.nodes[index].clock.set_drift(now_ms, drift_ppm);
                self.note(format!("node-{index} clock drifts {drift_ppm} ppm"));
                self.after_activity(index);
            }
            FaultAction::ClockStep => {
                let index = self.pick_node(false);
                let step_ms = self.rng.range_u64(100, 5_000);
                self.faults.add(FaultKind::ClockSkew, 1);
                let now_ms = self.now_ms;
                self.nodes[index].clock.step_forward(now_ms, step_ms);
                self.note(format!("node-{index} clock steps {step_ms} ms forward"));
                self.after_activity(index);
            }
            FaultAction::DiskErrors | FaultAction::DiskFull => {
                let index = self.pick_node(false);
                if matches!(action, FaultAction::DiskErrors) {
                    self.nodes[index].disk.faulty().set_faults(true);
                    self.note(format!("node-{index} disk starts failing"));
                } else {
                    self.nodes[index].disk.set_full(true);
                    self.note(format!("node-{index} disk full"));
                }
                let heal_ms = self.now_ms + self.rng.range_u64(1_000, 10_000);
                self.schedule(heal_ms, Event::Fault(FaultAction::DiskHeal(index)));
            }
            FaultAction::DiskHeal(index) => {
                self.nodes[index].disk.faulty().set_faults(false);
                self.nodes[index].disk.set_full(false);
                self.note(format!("node-{index} disk healthy"));
            }
            FaultAction::EndpointOutage { replies_lost } => {
                self.faults.add(FaultKind::EndpointOutage, 1);
                if replies_lost {
                    self.endpoint_replies_lost = true;
                    self.note("endpoint loses its replies".into());
                } else {
                    self.endpoint_down = true;
                    self.note("endpoint down".into());
                }
            }
            FaultAction::EndpointBack => {
                self.endpoint_down = false;
                self.endpoint_replies_lost = false;
                self.note("endpoint back".into());
            }
        }
    }

    fn resume(&mut self, index: usize) {
        if self.nodes[index].paused {
            self.nodes[index].paused = false;
            self.note(format!("node-{index} resumed"));
            self.after_activity(index);
        }
    }

    /// The end of the safety phase: every fault healed, every node running.
    fn heal(&mut self) {
        self.healed = true;
        self.network = Network::new(0, 0, 1, 5);
        self.endpoint_down = false;
        self.endpoint_replies_lost = false;
        for index in 0..self.nodes.len() {
            self.nodes[index].disk.faulty().set_faults(false);
            self.nodes[index].disk.set_full(false);
            self.resume(index);
        }
        for index in 0..self.nodes.len() {
            if self.nodes[index].node.is_none() {
                self.start(index);
            }
        }
        self.note("healed: liveness phase".into());
    }

    // ---- the event loop -------------------------------------------------------------

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, bytes } => {
                if self.nodes[to].node.is_none() {
                    return;
                }
                if self.nodes[to].paused {
                    // The kernel holds datagrams for a stopped process.
                    self.schedule(self.now_ms + 100, Event::Deliver { from, to, bytes });
                    return;
                }
                let now_local = self.local_ms(to);
                let from_id = self.nodes[from].id.clone();
                let node = self.nodes[to].node.as_mut().expect("checked above");
                if let Err(error) = node.handle_datagram(now_local, &from_id, &bytes) {
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
                let running = self.nodes[node].node.as_mut().expect("running");
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
                if self.nodes[node].process != process || self.nodes[node].node.is_none() {
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
                if self.nodes[node].process != process || self.nodes[node].node.is_none() {
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
                let running = self.nodes[node].node.as_mut().expect("checked above");
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
                if self.nodes[node].node.is_none() {
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
            .filter(|node| node.role == Role::Aggregator && node.node.is_some())
            .collect();
        let [leader] = aggregators.as_slice() else {
            return false;
        };
        self.nodes.iter().all(|sim_node| {
            sim_node.node.as_ref().is_some_and(|node| {
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

fn store_config() -> StoreConfig {
    StoreConfig {
        max_bytes: STORE_MAX_BYTES,
        ..StoreConfig::default()
    }
}

fn encode_vote(vote: &PersistedVote) -> Vec<u8> {
    let mut bytes = vote.term.to_le_bytes().to_vec();
    if let Some(voted_for) = &vote.voted_for {
        bytes.extend_from_slice(voted_for.as_str().as_bytes());
    }
    bytes
}

fn decode_vote(bytes: &[u8]) -> Result<PersistedVote, String> {
    let (term, voted_for) = bytes
        .split_first_chunk::<8>()
        .ok_or_else(|| format!("a vote of {} bytes", bytes.len()))?;
    let voted_for = if voted_for.is_empty() {
        None
    } else {
        let name = std::str::from_utf8(voted_for).map_err(|error| error.to_string())?;
        Some(NodeId::new(name))
    };
    Ok(PersistedVote {
        term: u64::from_le_bytes(*term),
        voted_for,
    })
}

fn read_vote(store: &Store) -> Result<PersistedVote, String> {
    match store
        .get_setting(VOTE_SETTING)
        .map_err(|error| error.to_string())?
    {
        Some(bytes) => decode_vote(&bytes),
        None => Ok(PersistedVote::default()),
    }
}

/// What the spool holds, as the daemon re-announces it at start.
fn read_announcements(store: &Store) -> Result<Vec<Announcement>, String> {
    let mut announcements = Vec::new();
    for summary in store.problems().map_err(|error| error.to_string())? {
        let Some(detail) = store
            .problem(&summary.id)
            .map_err(|error| error.to_string())?
        else {
            continue;
        };
        for incident in detail.incidents {
            let uploaded = store
                .get_setting(&format!("{UPLOADED_SETTING_PREFIX}{}", incident.report_id))
                .map_err(|error| error.to_string())?
                .is_some();
            let report_bytes = incident
                .attachments
                .iter()
                .find(|evidence| evidence.name == "report")
                .map_or(0, |evidence| evidence.len_bytes);
            announcements.push(Announcement {
                report_id: ReportId::new(incident.report_id),
                signature: summary.signature.clone(),
                kind: ProblemKind::Core,
                time_ms: incident.time_ms,
                node: NodeId::new(incident.node),
                report_bytes,
                labels: vec![Label {
                    key: "role".into(),
                    value: "storage".into(),
                }],
                upload_state: if uploaded {
                    UploadState::Uploaded
                } else {
                    UploadState::NotUploaded
                },
            });
        }
    }
    Ok(announcements)
}

fn sim_problem(signature: &str) -> Problem {
    Problem {
        kind: ProblemKind::Core,
        reason: format!("storaged killed by SIGSEGV ({signature})"),
        signature: signature.to_string(),
        frames: Vec::new(),
        signal: Some(11),
        executable: Some("/usr/bin/storaged".into()),
        package: None,
        threads: None,
        modules: None,
        taint_flags: None,
        version: None,
        hardware: None,
        process: None,
        exception_type: None,
        message: None,
        text: None,
        analysis_error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vote_round_trips() {
        for vote in [
            PersistedVote::default(),
            PersistedVote {
                term: 7,
                voted_for: Some(NodeId::new("node-3")),
            },
        ] {
            assert_eq!(decode_vote(&encode_vote(&vote)).unwrap(), vote);
        }
        assert!(decode_vote(&[1, 2]).is_err());
    }
}

//! Whole clusters of `Node`s on a deterministic in-test network (quinn's `Pair`, for N
//! nodes): a virtual clock, latency, loss and partitions drawn from a seed, stepping to
//! the next deadline, and a fake endpoint that fences by term and deduplicates by report
//! id. Each node's outputs leave through the daemon's own `Driver`, with [`TestShell`] as
//! its shell, so the driver's checks (nothing overtakes a persist) run on every seed.
//! Safety is checked after every step; liveness as "converged within a bound".
//! A failing run panics with its seed; replay it with `Sim::new(seed, …)`.

use std::collections::{BTreeMap, BTreeSet};

use crashmesh_protocol::ProblemKind;
use crashmesh_protocol::cluster::{Node, NodeConfig};
use crashmesh_protocol::consolidation::{
    ChunksRequest, Fence, IncidentRecord, LogsRequest, ReportRead, ReportRequest, UploadIncidents,
    UploadOutcome, UploadReport,
};
use crashmesh_protocol::driver::{
    Answer, Driver, Notice, PersistToken, Persisting, Released, Shell,
};
use crashmesh_protocol::election::{PersistedVote, Role};
use crashmesh_protocol::membership::MemberState;
use crashmesh_protocol::rng::DeterministicRng;
use crashmesh_protocol::wire::{
    Announcement, CHUNK_IDS_PER_MESSAGE_MAX, ChunkId, ClusterId, Encoded, Feedback, Label, Message,
    NodeId, ReportId, UploadState,
};

/// Steps one run may take before it counts as "never converged".
const STEPS_MAX: u64 = 2_000_000;

#[derive(Clone, Debug)]
struct Faults {
    loss_percent: u64,
    latency_min_ms: u64,
    latency_max_ms: u64,
    endpoint_latency_ms: u64,
}

impl Faults {
    fn none() -> Faults {
        Faults {
            loss_percent: 0,
            latency_min_ms: 1,
            latency_max_ms: 10,
            endpoint_latency_ms: 50,
        }
    }
    fn lossy(loss_percent: u64) -> Faults {
        Faults {
            loss_percent,
            latency_min_ms: 1,
            latency_max_ms: 40,
            endpoint_latency_ms: 80,
        }
    }
}

#[derive(Default, Debug)]
struct EndpointProblem {
    full_report_id: Option<ReportId>,
    full_reports_received: u32,
    incidents: BTreeSet<ReportId>,
}

/// The endpoint as the simulator sees it: term fencing and report-id dedup.
#[derive(Default, Debug)]
struct FakeEndpoint {
    highest_term: u64,
    problems: BTreeMap<String, EndpointProblem>,
    stale_rejected: u64,
    duplicate_incident_submissions: u64,
    uploads_accepted: u64,
}

impl FakeEndpoint {
    fn accept(
        &mut self,
        term: u64,
        signature: &str,
        full: Option<&ReportId>,
        incidents: &[ReportId],
    ) -> UploadOutcome {
        if term < self.highest_term {
            self.stale_rejected += 1;
            return UploadOutcome::StaleTerm;
        }
        self.highest_term = term;
        self.uploads_accepted += 1;
        let problem = self.problems.entry(signature.to_string()).or_default();
        if let Some(full) = full {
            problem.full_reports_received += 1;
            problem.full_report_id.get_or_insert_with(|| full.clone());
        }
        for report_id in incidents {
            if !problem.incidents.insert(report_id.clone()) {
                self.duplicate_incident_submissions += 1;
            }
        }
        UploadOutcome::Acked
    }
}

struct Report {
    announcement: Announcement,
    chunks: Vec<Vec<u8>>,
    uploaded: bool,
}

struct SimNode {
    id: NodeId,
    /// The running node and its driver (`None`: killed).
    driver: Option<Driver>,
    /// Bumped on every restart; replies to an older process are dropped.
    process: u64,
    persisted: PersistedVote,
    /// The node's spool: its own reports.
    reports: BTreeMap<ReportId, Report>,
    /// The node's chunk store (chunks fetched as aggregator).
    chunks: BTreeSet<ChunkId>,
    /// Log bundles gathered for the aggregator, served like reports.
    log_bundles: BTreeMap<ReportId, Vec<Vec<u8>>>,
    /// The problems whose endpoint feedback reached this node.
    feedback: BTreeSet<String>,
}

impl SimNode {
    fn node(&self) -> Option<&Node> {
        self.driver.as_ref().map(Driver::node)
    }

    fn node_mut(&mut self) -> Option<&mut Node> {
        self.driver.as_mut().map(Driver::node_mut)
    }
}

enum Event {
    Deliver {
        from: usize,
        to: usize,
        bytes: Vec<u8>,
    },
    EndpointCall {
        node: usize,
        process: u64,
        upload_id: u64,
        term: u64,
        signature: String,
        full: Option<ReportId>,
        incidents: Vec<ReportId>,
    },
    EndpointReply {
        node: usize,
        process: u64,
        upload_id: u64,
        signature: String,
        outcome: UploadOutcome,
    },
}

struct Sim {
    seed: u64,
    rng: DeterministicRng,
    now_ms: u64,
    faults: Faults,
    nodes: Vec<SimNode>,
    cluster_id: ClusterId,
    events: BTreeMap<(u64, u64), Event>,
    event_sequence: u64,
    /// Partition group per node: messages cross only within a group.
    groups: Vec<u8>,
    endpoint: FakeEndpoint,
    aggregator_by_term: BTreeMap<u64, NodeId>,
    steps: u64,
    /// (time, node, term) of every upload call the shell made.
    upload_calls: Vec<(u64, usize, u64)>,
    full_upload_calls: u64,
    /// The peers whose logs went up with each problem's full report.
    peer_logs_uploaded: BTreeMap<String, BTreeSet<NodeId>>,
    incidents_injected: BTreeSet<ReportId>,
    /// Every datagram sent, with time and ends: equal for equal seeds.
    trace: blake3::Hasher,
}

impl Sim {
    fn new(seed: u64, count: usize, faults: Faults) -> Sim {
        let ids: Vec<NodeId> = (0..count)
            .map(|i| NodeId::new(format!("node-{i}")))
            .collect();
        let mut sim = Sim {
            seed,
            rng: DeterministicRng::new(seed),
            now_ms: 0,
            faults,
            nodes: ids
                .iter()
                .map(|id| SimNode {
                    id: id.clone(),
                    driver: None,
                    process: 0,
                    persisted: PersistedVote::default(),
                    reports: BTreeMap::new(),
                    chunks: BTreeSet::new(),
                    log_bundles: BTreeMap::new(),
                    feedback: BTreeSet::new(),
                })
                .collect(),
            cluster_id: ClusterId::new("sim-cluster"),
            events: BTreeMap::new(),
            event_sequence: 0,
            groups: vec![0; count],
            endpoint: FakeEndpoint::default(),
            aggregator_by_term: BTreeMap::new(),
            steps: 0,
            upload_calls: Vec::new(),
            full_upload_calls: 0,
            peer_logs_uploaded: BTreeMap::new(),
            incidents_injected: BTreeSet::new(),
            trace: blake3::Hasher::new(),
        };
        for index in 0..count {
            sim.start(index);
        }
        sim
    }

    fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|node| node.id.clone()).collect()
    }

    fn start(&mut self, index: usize) {
        let ids = self.ids();
        let sim_node = &mut self.nodes[index];
        sim_node.process += 1;
        let mut config = NodeConfig::new(
            sim_node.id.clone(),
            self.cluster_id.clone(),
            ids.clone(),
            self.now_ms + sim_node.process,
        );
        config.consolidation.log_peers = ids;
        config.consolidation.log_wait_ms = 3_000;
        let node_seed = self
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(index as u64 * 7919 + sim_node.process);
        sim_node.driver = Some(
            Driver::new(config, sim_node.persisted.clone(), node_seed, self.now_ms)
                .expect("valid config"),
        );
        // The spool re-announces what it still holds, uploaded or not.
        let announcements: Vec<Announcement> = sim_node
            .reports
            .values()
            .map(|report| {
                let mut announcement = report.announcement.clone();
                if report.uploaded {
                    announcement.upload_state = UploadState::Uploaded;
                }
                announcement
            })
            .collect();
        for announcement in announcements {
            self.nodes[index]
                .node_mut()
                .unwrap()
                .announce(self.now_ms, announcement)
                .expect("queue has room");
        }
        self.drain(index);
    }

    fn kill(&mut self, index: usize) {
        self.nodes[index].driver = None;
    }

    fn alive(&self, index: usize) -> bool {
        self.nodes[index].driver.is_some()
    }

    fn schedule(&mut self, at_ms: u64, event: Event) {
        self.event_sequence += 1;
        self.events.insert((at_ms, self.event_sequence), event);
    }

    /// A problem on `index`: its report has a few chunks, some shared with other nodes'
    /// reports of the same signature (the same binary), some its own.
    fn inject(&mut self, index: usize, signature: &str, serial: u32) -> ReportId {
        let own_chunks = 1 + self.rng.range_u64(0, 3);
        self.inject_with_chunks(index, signature, serial, own_chunks)
    }

    /// [`Sim::inject`] with `own_chunks` chunks besides the shared one.
    fn inject_with_chunks(
        &mut self,
        index: usize,
        signature: &str,
        serial: u32,
        own_chunks: u64,
    ) -> ReportId {
        let id = self.nodes[index].id.clone();
        let report_id = ReportId::new(format!("{id}-{serial}"));
        let mut chunks = vec![format!("shared chunk of {signature}").into_bytes()];
        for part in 0..own_chunks {
            chunks.push(format!("{report_id} part {part} {}", self.rng.next_u64()).into_bytes());
        }
        let announcement = Announcement {
            report_id: report_id.clone(),
            signature: signature.to_string(),
            kind: ProblemKind::Core,
            time_ms: self.now_ms,
            node: id,
            report_bytes: chunks.iter().map(|chunk| chunk.len() as u64).sum(),
            labels: vec![Label {
                key: "role".into(),
                value: "storage".into(),
            }],
            upload_state: UploadState::NotUploaded,
        };
        self.incidents_injected.insert(report_id.clone());
        self.nodes[index].reports.insert(
            report_id.clone(),
            Report {
                announcement: announcement.clone(),
                chunks,
                uploaded: false,
            },
        );
        if let Some(node) = self.nodes[index].node_mut() {
            node.announce(self.now_ms, announcement)
                .expect("queue has room");
            self.drain(index);
        }
        report_id
    }

    /// Carries out a node's outputs through the shared driver, with this harness as shell.
    fn drain(&mut self, index: usize) {
        let Some(mut driver) = self.nodes[index].driver.take() else {
            return;
        };
        let (now_ms, seed) = (self.now_ms, self.seed);
        // The driver's own checks panic without the seed: name it, to replay the run.
        let released = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            driver.release(now_ms, &mut TestShell { sim: self, index })
        }))
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()));
            panic!("seed {seed}: {}", message.unwrap_or_default())
        });
        assert_eq!(released, Released::Idle, "seed {seed}: a synchronous shell");
        self.nodes[index].driver = Some(driver);
    }

    fn transmit(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        self.trace.update(&self.now_ms.to_le_bytes());
        self.trace.update(&[from as u8, to as u8]);
        self.trace.update(&bytes);
        if self.groups[from] != self.groups[to] || self.rng.chance(self.faults.loss_percent, 100) {
            return;
        }
        let latency_ms = self
            .rng
            .range_u64(self.faults.latency_min_ms, self.faults.latency_max_ms + 1);
        self.schedule(self.now_ms + latency_ms, Event::Deliver { from, to, bytes });
    }

    /// Sends an upload to the fake endpoint, which answers after its latency.
    fn call_endpoint(
        &mut self,
        index: usize,
        upload_id: u64,
        fence: &Fence,
        signature: String,
        full: Option<ReportId>,
        incidents: Vec<IncidentRecord>,
    ) {
        let now_ms = self.now_ms;
        self.upload_calls.push((now_ms, index, fence.term));
        let process = self.nodes[index].process;
        self.schedule(
            now_ms + self.faults.endpoint_latency_ms,
            Event::EndpointCall {
                node: index,
                process,
                upload_id,
                term: fence.term,
                signature,
                full,
                incidents: incidents
                    .into_iter()
                    .map(|incident| incident.report_id)
                    .collect(),
            },
        );
    }

    /// The chunks of a report or a log bundle this node holds.
    fn chunks_of(&self, index: usize, report_id: &ReportId) -> Option<Vec<Vec<u8>>> {
        let node = &self.nodes[index];
        node.reports
            .get(report_id)
            .map(|report| report.chunks.clone())
            .or_else(|| node.log_bundles.get(report_id).cloned())
    }

    fn next_time_ms(&self) -> u64 {
        let mut next = self
            .events
            .keys()
            .next()
            .map_or(u64::MAX, |(at_ms, _)| *at_ms);
        for sim_node in &self.nodes {
            if let Some(node) = sim_node.node() {
                next = next.min(node.next_deadline_ms());
            }
        }
        next
    }

    /// Advances to the next event or deadline and handles everything due then.
    fn step(&mut self) {
        self.steps += 1;
        assert!(
            self.steps < STEPS_MAX,
            "seed {}: never converged within {STEPS_MAX} steps",
            self.seed
        );
        let next = self.next_time_ms();
        assert!(next != u64::MAX, "seed {}: nothing left to do", self.seed);
        self.now_ms = self.now_ms.max(next);
        let now_ms = self.now_ms;
        while let Some(entry) = self.events.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            match entry.remove() {
                Event::Deliver { from, to, bytes } => {
                    let from_id = self.nodes[from].id.clone();
                    if let Some(node) = self.nodes[to].node_mut() {
                        node.handle_datagram(now_ms, &from_id, &bytes.into())
                            .expect("peer bytes are valid");
                        self.drain(to);
                    }
                }
                Event::EndpointCall {
                    node,
                    process,
                    upload_id,
                    term,
                    signature,
                    full,
                    incidents,
                } => {
                    let outcome = self
                        .endpoint
                        .accept(term, &signature, full.as_ref(), &incidents);
                    self.schedule(
                        now_ms + self.faults.endpoint_latency_ms,
                        Event::EndpointReply {
                            node,
                            process,
                            upload_id,
                            signature,
                            outcome,
                        },
                    );
                }
                Event::EndpointReply {
                    node,
                    process,
                    upload_id,
                    signature,
                    outcome,
                } => {
                    let same_process = self.nodes[node].process == process;
                    if let Some(running) = self.nodes[node].node_mut().filter(|_| same_process) {
                        running.upload_finished(now_ms, upload_id, outcome);
                        if outcome == UploadOutcome::Acked {
                            running.upload_feedback(
                                now_ms,
                                &signature,
                                Feedback {
                                    problem_id: format!("problem of {signature}"),
                                    known: false,
                                    bug: Some((1, "open".into(), "http://endpoint/bugs/1".into())),
                                    workaround: None,
                                },
                            );
                        }
                        self.drain(node);
                    }
                }
            }
        }
        for index in 0..self.nodes.len() {
            let due = self.nodes[index]
                .node()
                .is_some_and(|node| node.next_deadline_ms() <= now_ms);
            if due {
                self.nodes[index].node_mut().unwrap().handle_timeout(now_ms);
                self.drain(index);
            }
        }
        self.check_safety();
    }

    /// At most one aggregator per term, ever.
    fn check_safety(&mut self) {
        for sim_node in &self.nodes {
            let Some(node) = sim_node.node() else {
                continue;
            };
            if node.election().role() == Role::Aggregator {
                let term = node.election().term();
                let holder = self
                    .aggregator_by_term
                    .entry(term)
                    .or_insert_with(|| sim_node.id.clone());
                assert_eq!(
                    holder, &sim_node.id,
                    "seed {}: two aggregators in term {term}",
                    self.seed
                );
            }
        }
    }

    fn run_until_ms(&mut self, until_ms: u64) {
        while self.next_time_ms() <= until_ms {
            self.step();
        }
        self.now_ms = self.now_ms.max(until_ms);
    }

    /// Steps until `done` holds; fails after `within_ms` of simulated time.
    fn run_until(&mut self, within_ms: u64, what: &str, mut done: impl FnMut(&Sim) -> bool) -> u64 {
        let start_ms = self.now_ms;
        while !done(self) {
            assert!(
                self.now_ms <= start_ms + within_ms,
                "seed {}: {what} did not happen within {within_ms} ms",
                self.seed
            );
            self.step();
        }
        self.now_ms - start_ms
    }

    fn aggregators(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i]
                    .node()
                    .is_some_and(|node| node.election().role() == Role::Aggregator)
            })
            .collect()
    }

    /// Exactly one aggregator among the live nodes, and every live node follows it.
    fn agreed_aggregator(&self) -> Option<usize> {
        let aggregators = self.aggregators();
        if aggregators.len() != 1 {
            return None;
        }
        let leader = &self.nodes[aggregators[0]].id;
        let everyone = self
            .nodes
            .iter()
            .filter_map(|sim_node| sim_node.node())
            .all(|node| node.election().aggregator() == Some(leader));
        everyone.then_some(aggregators[0])
    }

    /// Every injected incident is at the endpoint, and every live node knows it.
    fn all_uploaded(&self) -> bool {
        let at_endpoint: BTreeSet<&ReportId> = self
            .endpoint
            .problems
            .values()
            .flat_map(|problem| problem.incidents.iter())
            .collect();
        self.incidents_injected
            .iter()
            .all(|report_id| at_endpoint.contains(report_id))
            && self
                .nodes
                .iter()
                .filter_map(|sim_node| sim_node.node())
                .all(|node| node.consolidation().pending_len() == 0)
    }

    /// One problem per signature with one full report, no incident twice, no stale term.
    fn check_endpoint(&self, signatures: usize) {
        assert_eq!(
            self.endpoint.problems.len(),
            signatures,
            "seed {}: problems {:?}",
            self.seed,
            self.endpoint.problems.keys()
        );
        for (signature, problem) in &self.endpoint.problems {
            assert!(
                problem.full_report_id.is_some(),
                "seed {}: {signature} has no full report",
                self.seed
            );
        }
        let total: usize = self
            .endpoint
            .problems
            .values()
            .map(|problem| problem.incidents.len())
            .sum();
        assert_eq!(total, self.incidents_injected.len(), "seed {}", self.seed);
    }
}

/// One node's shell in this harness: the in-test network, the node's spool and chunk
/// store (in memory), the fake endpoint. It answers every read at once.
struct TestShell<'a> {
    sim: &'a mut Sim,
    index: usize,
}

impl Shell for TestShell<'_> {
    fn stopped(&self) -> bool {
        false
    }

    fn persist(&mut self, _token: PersistToken, vote: &PersistedVote) -> Persisting {
        let seed = self.sim.seed;
        let old = &self.sim.nodes[self.index].persisted;
        assert!(vote.term >= old.term, "seed {seed}: term went back");
        if vote.term == old.term && old.voted_for.is_some() {
            assert_eq!(
                vote.voted_for, old.voted_for,
                "seed {seed}: two votes in term {}",
                vote.term
            );
        }
        self.sim.nodes[self.index].persisted = vote.clone();
        Persisting::Durable
    }

    fn transmit(&mut self, to: NodeId, bytes: Encoded) {
        let to = self
            .sim
            .nodes
            .iter()
            .position(|node| node.id == to)
            .expect("a member");
        self.sim.transmit(self.index, to, bytes.to_vec());
    }

    fn read_report(&mut self, request: ReportRequest) -> Answer<ReportRead> {
        let chunks = self.sim.chunks_of(self.index, &request.report_id);
        Answer::Now(chunks.map_or(ReportRead::Unavailable, |chunks| {
            ReportRead::of_chunks(&chunks)
        }))
    }

    fn read_chunks(&mut self, request: ChunksRequest) -> Answer<Vec<(ChunkId, bytes::Bytes)>> {
        let chunks = self.sim.chunks_of(self.index, &request.report_id);
        Answer::Now(request.wanted_among(chunks.unwrap_or_default()))
    }

    fn gather_logs(&mut self, request: LogsRequest) -> Answer<Option<ReportId>> {
        let node = &mut self.sim.nodes[self.index];
        let (start_ms, end_ms) = (request.window_start_ms, request.window_end_ms);
        let bundle = ReportId::new(format!("logs.{}.{}.{start_ms}", node.id, request.signature));
        let log = format!("{} log of {start_ms}..{end_ms}", node.id).into_bytes();
        node.log_bundles.insert(bundle.clone(), vec![log]);
        Answer::Now(Some(bundle))
    }

    fn chunks_offered(&mut self, _: ReportId, mut chunk_ids: Vec<ChunkId>) -> Answer<Vec<ChunkId>> {
        chunk_ids.retain(|chunk| !self.sim.nodes[self.index].chunks.contains(chunk));
        Answer::Now(chunk_ids)
    }

    fn store_chunk(&mut self, _report_id: ReportId, chunk_id: ChunkId, bytes: bytes::Bytes) {
        assert_eq!(ChunkId::of(&bytes), chunk_id);
        self.sim.nodes[self.index].chunks.insert(chunk_id);
    }

    fn upload_report(&mut self, upload: UploadReport) {
        let (sim, index) = (&mut *self.sim, self.index);
        // The full report must be in this node's store before it goes up.
        let origin = sim
            .nodes
            .iter()
            .find(|node| node.id == upload.first.node)
            .unwrap();
        let report = &origin.reports[&upload.first.report_id];
        for chunk in &report.chunks {
            assert!(
                sim.nodes[index].chunks.contains(&ChunkId::of(chunk)),
                "seed {}: uploading {} without its chunks",
                sim.seed,
                upload.first.report_id
            );
        }
        for (peer, bundle) in &upload.peer_logs {
            let holder = sim.nodes.iter().find(|node| &node.id == peer).unwrap();
            for chunk in &holder.log_bundles[bundle] {
                assert!(
                    sim.nodes[index].chunks.contains(&ChunkId::of(chunk)),
                    "seed {}: uploading the logs of {peer} without their chunks",
                    sim.seed
                );
            }
            sim.peer_logs_uploaded
                .entry(upload.signature.clone())
                .or_default()
                .insert(peer.clone());
        }
        assert_eq!(upload.fence.cluster_id, sim.cluster_id);
        sim.full_upload_calls += 1;
        sim.call_endpoint(
            index,
            upload.upload_id,
            &upload.fence,
            upload.signature,
            Some(upload.first.report_id),
            upload.incidents,
        );
    }

    fn upload_incidents(&mut self, upload: UploadIncidents) {
        self.sim.call_endpoint(
            self.index,
            upload.upload_id,
            &upload.fence,
            upload.signature,
            None,
            upload.incidents,
        );
    }

    fn uploaded(&mut self, report_id: ReportId) {
        assert!(
            self.sim
                .endpoint
                .problems
                .values()
                .any(|problem| problem.incidents.contains(&report_id)),
            "seed {}: told uploaded but the endpoint lacks {report_id}",
            self.sim.seed
        );
        if let Some(report) = self.sim.nodes[self.index].reports.get_mut(&report_id) {
            report.uploaded = true;
        }
    }

    fn notice(&mut self, notice: Notice) {
        match notice {
            Notice::Feedback { signature, .. } => {
                self.sim.nodes[self.index].feedback.insert(signature);
            }
            Notice::AnswerRefused(error) => {
                panic!(
                    "seed {}: the node refused an answer: {error}",
                    self.sim.seed
                )
            }
            Notice::AggregatorChanged { .. }
            | Notice::MemberUp(_)
            | Notice::MemberDown(_)
            | Notice::Rejoined { .. }
            | Notice::Fenced { .. } => {}
        }
    }
}

#[test]
fn three_and_five_nodes_elect_exactly_one_aggregator_over_200_seeds() {
    let mut slowest_ms = 0;
    for nodes in [3, 5] {
        for seed in 0..200 {
            let mut sim = Sim::new(seed, nodes, Faults::none());
            let took_ms = sim.run_until(10_000, "first election", |sim| {
                sim.agreed_aggregator().is_some()
            });
            slowest_ms = slowest_ms.max(took_ms);
            // And it holds: nobody else takes over while nothing fails.
            let leader = sim.agreed_aggregator().unwrap();
            let term = sim.nodes[leader].node().unwrap().election().term();
            sim.run_until_ms(sim.now_ms + 20_000);
            assert_eq!(sim.agreed_aggregator(), Some(leader), "seed {seed}");
            assert_eq!(
                sim.nodes[leader].node().unwrap().election().term(),
                term,
                "seed {seed}"
            );
        }
    }
    println!("slowest first election: {slowest_ms} ms");
}

#[test]
fn a_killed_aggregator_is_replaced_within_10_s_over_200_seeds() {
    let mut slowest_ms = 0;
    for seed in 0..200 {
        let mut sim = Sim::new(seed, 5, Faults::none());
        sim.run_until(10_000, "first election", |sim| {
            sim.agreed_aggregator().is_some()
        });
        sim.run_until_ms(sim.now_ms + 2_000);
        let old = sim.agreed_aggregator().unwrap();
        sim.kill(old);
        let took_ms = sim.run_until(10_000, "a new aggregator", |sim| {
            sim.agreed_aggregator().is_some()
        });
        slowest_ms = slowest_ms.max(took_ms);
    }
    println!("slowest replacement: {slowest_ms} ms");
    assert!(slowest_ms <= 10_000);
}

/// The minority never leads and, asking first (pre-vote), never raises its term; so
/// when the partition heals, the majority's aggregator stays, in its term.
#[test]
fn a_minority_partition_elects_nobody_and_all_agree_after_healing() {
    for seed in 0..100 {
        let mut sim = Sim::new(seed, 5, Faults::none());
        sim.groups = vec![1, 1, 0, 0, 0];
        let partitioned_until_ms = 30_000;
        while sim.now_ms < partitioned_until_ms {
            sim.step();
            for minority in [0, 1] {
                let election = sim.nodes[minority].node().unwrap().election();
                assert_ne!(
                    election.role(),
                    Role::Aggregator,
                    "seed {seed}: minority node {minority} leads"
                );
                assert_eq!(
                    election.term(),
                    0,
                    "seed {seed}: minority node {minority} raised its term"
                );
            }
        }
        let majority_leader = sim.aggregators();
        assert_eq!(
            majority_leader.len(),
            1,
            "seed {seed}: the majority elected {majority_leader:?}"
        );
        let leader = majority_leader[0];
        let leader_term = sim.nodes[leader].node().unwrap().election().term();
        // The same problem everywhere while cut: the majority's go up, the minority's wait.
        for index in 0..5 {
            sim.inject(index, "v1:cut", 1);
        }
        sim.run_until_ms(sim.now_ms + 10_000);
        sim.groups = vec![0; 5];
        sim.run_until(15_000, "agreement after healing", |sim| {
            sim.agreed_aggregator().is_some()
        });
        sim.run_until(15_000, "every incident uploaded after healing", |sim| {
            sim.all_uploaded()
        });
        sim.check_endpoint(1);
        assert_eq!(
            sim.agreed_aggregator(),
            Some(leader),
            "seed {seed}: healing replaced the majority's aggregator"
        );
        let term_after = sim.nodes[leader].node().unwrap().election().term();
        assert_eq!(
            term_after, leader_term,
            "seed {seed}: healing disrupted the aggregator's term"
        );
    }
}

#[test]
fn the_same_problem_on_every_node_goes_up_once_with_every_incident() {
    for nodes in [3, 5] {
        for seed in 0..200 {
            let mut sim = Sim::new(seed, nodes, Faults::none());
            sim.run_until(10_000, "first election", |sim| {
                sim.agreed_aggregator().is_some()
            });
            for index in 0..nodes {
                sim.inject(index, "v1:same-bug", 1);
            }
            sim.run_until(20_000, "every incident uploaded", |sim| sim.all_uploaded());
            sim.check_endpoint(1);
            assert_eq!(
                sim.full_upload_calls, 1,
                "seed {seed}: full report uploaded more than once"
            );
            assert_eq!(
                sim.endpoint.duplicate_incident_submissions, 0,
                "seed {seed}"
            );
            assert_eq!(sim.endpoint.stale_rejected, 0, "seed {seed}");
            // The report carries every peer's logs of the window, and every node hears
            // what the endpoint answered.
            assert_eq!(
                sim.peer_logs_uploaded["v1:same-bug"],
                sim.ids().into_iter().collect::<BTreeSet<_>>(),
                "seed {seed}"
            );
            sim.run_until(5_000, "feedback on every node", |sim| {
                sim.nodes
                    .iter()
                    .all(|node| node.feedback.contains("v1:same-bug"))
            });
        }
    }
}

/// A chunk list longer than one message goes in pages, and the chunks wanted in several
/// `ChunkWant`s: the protocol pages both, whatever the shell.
#[test]
fn a_report_of_more_chunks_than_a_page_goes_up_whole() {
    for seed in 0..10 {
        let mut sim = Sim::new(seed, 3, Faults::none());
        sim.run_until(10_000, "first election", |sim| {
            sim.agreed_aggregator().is_some()
        });
        let big = 2 * CHUNK_IDS_PER_MESSAGE_MAX as u64 + 7;
        sim.inject_with_chunks(1, "v1:big-report", 1, big);
        sim.run_until(20_000, "the big report uploaded", |sim| sim.all_uploaded());
        sim.check_endpoint(1);
        assert_eq!(sim.full_upload_calls, 1, "seed {seed}");
    }
}

#[test]
fn problems_before_any_election_wait_and_then_go_up() {
    for seed in 0..100 {
        let mut sim = Sim::new(seed, 3, Faults::none());
        for index in 0..3 {
            sim.inject(index, "v1:early", 1);
            sim.inject(index, &format!("v1:only-on-{index}"), 2);
        }
        sim.run_until(30_000, "every incident uploaded", |sim| sim.all_uploaded());
        sim.check_endpoint(4);
        assert_eq!(sim.full_upload_calls, 4, "seed {seed}");
    }
}

#[test]
fn aggregator_killed_mid_way_the_next_finishes_nothing_lost_nothing_twice() {
    let mut slowest_takeover_ms = 0;
    let mut full_uploads_repeated = 0;
    for seed in 0..200 {
        let mut sim = Sim::new(seed, 5, Faults::none());
        sim.run_until(10_000, "first election", |sim| {
            sim.agreed_aggregator().is_some()
        });
        let old = sim.agreed_aggregator().unwrap();
        for index in 0..5 {
            sim.inject(index, "v1:storage-bug", 1);
            sim.inject(index, &format!("v1:local-{}", index % 2), 2);
        }
        // Kill it somewhere between announcing and finishing, drawn from the seed.
        let kill_after_ms = sim.rng.range_u64(0, 3_000);
        sim.run_until_ms(sim.now_ms + kill_after_ms);
        sim.kill(old);
        let killed_ms = sim.now_ms;
        let calls_before = sim.upload_calls.len();
        // What the old aggregator may have got to the endpoint without telling anyone: a
        // full report accepted, or one still on its way there.
        let mut unconfirmed: BTreeSet<String> = sim
            .endpoint
            .problems
            .iter()
            .filter(|(_, problem)| problem.full_report_id.is_some())
            .map(|(signature, _)| signature.clone())
            .collect();
        for event in sim.events.values() {
            if let Event::EndpointCall {
                node,
                signature,
                full: Some(_),
                ..
            } = event
                && *node == old
            {
                unconfirmed.insert(signature.clone());
            }
        }
        let took_ms = sim.run_until(10_000, "an upload by the new aggregator", |sim| {
            sim.upload_calls[calls_before..]
                .iter()
                .any(|(_, node, _)| *node != old)
                || (sim.all_uploaded_except(old))
        });
        slowest_takeover_ms = slowest_takeover_ms.max(took_ms);
        // The old aggregator's node comes back (its spool kept its incidents).
        sim.run_until_ms(killed_ms + 15_000);
        sim.start(old);
        sim.run_until(30_000, "every incident uploaded", |sim| sim.all_uploaded());
        sim.check_endpoint(3);
        assert_eq!(sim.endpoint.stale_rejected, 0, "seed {seed}");
        full_uploads_repeated += sim.full_upload_calls - 3;
        for (signature, problem) in &sim.endpoint.problems {
            if problem.full_reports_received > 1 {
                assert!(
                    unconfirmed.contains(signature),
                    "seed {seed}: {signature} went up twice though the old aggregator had not sent it"
                );
                assert_eq!(problem.full_reports_received, 2, "seed {seed}: {signature}");
            }
        }
    }
    println!(
        "slowest takeover to upload: {slowest_takeover_ms} ms; full reports sent again: {full_uploads_repeated}"
    );
    assert!(slowest_takeover_ms <= 10_000);
}

#[test]
fn lossy_network_with_partitions_and_kills_converges_after_healing() {
    for seed in 0..200 {
        let nodes = 3 + (seed % 3) as usize;
        let loss = DeterministicRng::new(seed).range_u64(0, 21);
        let mut sim = Sim::new(seed, nodes, Faults::lossy(loss));
        let signatures = 1 + sim.rng.range_u64(0, 3) as usize;
        let mut serial = 0;
        // Safety phase: incidents, partitions and kills drawn from the seed.
        while sim.now_ms < 40_000 {
            let at_ms = sim.now_ms + sim.rng.range_u64(500, 4_000);
            sim.run_until_ms(at_ms);
            match sim.rng.range_u64(0, 6) {
                0..=2 => {
                    let index = sim.rng.range_u64(0, nodes as u64) as usize;
                    let signature = format!("v1:bug-{}", sim.rng.range_u64(0, signatures as u64));
                    serial += 1;
                    sim.inject(index, &signature, serial);
                }
                3 => {
                    sim.groups = (0..nodes).map(|_| sim.rng.range_u64(0, 2) as u8).collect();
                }
                4 => {
                    let index = sim.rng.range_u64(0, nodes as u64) as usize;
                    if sim.alive(index) {
                        sim.kill(index);
                    } else {
                        sim.start(index);
                    }
                }
                _ => sim.groups = vec![0; nodes],
            }
        }
        // Liveness phase: heal everything, restart the dead, and require convergence.
        sim.groups = vec![0; nodes];
        sim.faults = Faults::none();
        for index in 0..nodes {
            if !sim.alive(index) {
                sim.start(index);
            }
        }
        sim.run_until(60_000, "convergence after healing", |sim| {
            sim.agreed_aggregator().is_some() && sim.all_uploaded()
        });
        let used: BTreeSet<&String> = sim
            .nodes
            .iter()
            .flat_map(|node| {
                node.reports
                    .values()
                    .map(|report| &report.announcement.signature)
            })
            .collect();
        sim.check_endpoint(used.len());
        assert!(sim.endpoint.highest_term > 0);
    }
}

#[test]
fn swim_sees_a_killed_node_go_down_and_everyone_alive() {
    for seed in 0..20 {
        let mut sim = Sim::new(seed, 5, Faults::none());
        sim.run_until_ms(5_000);
        for index in 0..5 {
            let members = sim.nodes[index].node().unwrap().status().members;
            assert_eq!(members.len(), 5, "seed {seed}: {members:?}");
            assert!(
                members
                    .iter()
                    .all(|member| member.state == MemberState::Alive),
                "seed {seed}"
            );
        }
        sim.kill(4);
        sim.run_until(15_000, "node-4 declared down everywhere", |sim| {
            (0..4).all(|index| {
                sim.nodes[index]
                    .node()
                    .unwrap()
                    .status()
                    .members
                    .iter()
                    .any(|member| {
                        member.node.as_str() == "node-4" && member.state == MemberState::Down
                    })
            })
        });
    }
}

impl Sim {
    /// Everything uploaded except what only the dead node `except` still holds.
    fn all_uploaded_except(&self, except: usize) -> bool {
        let at_endpoint: BTreeSet<&ReportId> = self
            .endpoint
            .problems
            .values()
            .flat_map(|problem| problem.incidents.iter())
            .collect();
        self.nodes
            .iter()
            .enumerate()
            .filter(|(index, _)| *index != except)
            .all(|(_, node)| {
                node.reports
                    .keys()
                    .all(|report_id| at_endpoint.contains(report_id))
            })
    }
}

/// The same seed replays the same cluster, datagram for datagram.
fn trace_of(seed: u64) -> [u8; 32] {
    let mut sim = Sim::new(seed, 5, Faults::lossy(10));
    sim.run_until_ms(5_000);
    for index in 0..5 {
        sim.inject(index, "v1:replayed", 1);
    }
    sim.run_until_ms(8_000);
    if let Some(leader) = sim.agreed_aggregator() {
        sim.kill(leader);
    }
    sim.run_until_ms(30_000);
    *sim.trace.finalize().as_bytes()
}

#[test]
fn a_seed_replays_the_same_trace() {
    assert_eq!(trace_of(42), trace_of(42));
    assert_ne!(trace_of(42), trace_of(43));
}

#[test]
fn hostile_datagrams_are_refused_and_the_node_carries_on() {
    let mut sim = Sim::new(7, 3, Faults::none());
    sim.run_until(10_000, "first election", |sim| {
        sim.agreed_aggregator().is_some()
    });
    let now_ms = sim.now_ms;
    let peer = NodeId::new("node-1");
    let node = sim.nodes[0].node_mut().unwrap();
    let envelope = |cluster: &str, from: &str| {
        crashmesh_protocol::wire::encode(&crashmesh_protocol::wire::Envelope {
            cluster_id: ClusterId::new(cluster),
            from: NodeId::new(from),
            message: Message::Vote {
                term: 1_000,
                granted: true,
            },
        })
        .unwrap()
    };
    use crashmesh_protocol::cluster::NodeError;
    assert!(matches!(
        node.handle_datagram(now_ms, &peer, &bytes::Bytes::new()),
        Err(NodeError::Decode(_))
    ));
    assert!(matches!(
        node.handle_datagram(now_ms, &peer, &bytes::Bytes::from([9, 9, 9].to_vec())),
        Err(NodeError::Decode(_))
    ));
    assert!(matches!(
        node.handle_datagram(now_ms, &peer, &bytes::Bytes::from(vec![1; 2 << 20])),
        Err(NodeError::Decode(_))
    ));
    assert!(matches!(
        node.handle_datagram(now_ms, &peer, &envelope("other-cluster", "node-1").into()),
        Err(NodeError::WrongCluster(_))
    ));
    assert!(matches!(
        node.handle_datagram(now_ms, &peer, &envelope("sim-cluster", "node-2").into()),
        Err(NodeError::SenderMismatch { .. })
    ));
    let garbage_swim = crashmesh_protocol::wire::encode(&crashmesh_protocol::wire::Envelope {
        cluster_id: ClusterId::new("sim-cluster"),
        from: peer.clone(),
        message: Message::Membership {
            packet: vec![0xff; 64],
        },
    })
    .unwrap();
    assert!(matches!(
        node.handle_datagram(now_ms, &peer, &garbage_swim.into()),
        Err(NodeError::Membership(_))
    ));
    let term = node.election().term();
    assert!(term < 1_000, "no refused datagram changed the term");
    sim.inject(1, "v1:after-garbage", 1);
    sim.run_until(20_000, "upload after garbage", |sim| sim.all_uploaded());
}

//! Consolidation: every node announces its incidents to the aggregator; the aggregator
//! deduplicates them by signature across the cluster and uploads one report per problem.
//!
//! Node side: [`Consolidation::announce`] queues an incident; it is sent to the current
//! aggregator and re-sent with backoff until acknowledged, re-sent at once to a new
//! aggregator after an election, and re-sent now and then while it waits for its upload.
//! A record is dropped from the pending queue only when an aggregator reports that the
//! endpoint acknowledged it; uploaded records are kept (bounded) and told to every new
//! aggregator, so it knows which problems the endpoint already has.
//!
//! Aggregator side: the first incident of a signature makes it pull that report from its
//! origin (`FetchReport`, then have/want by chunk id, verified by blake3) and upload
//! [`UploadReport`] with every incident known so far; later incidents go up as
//! [`UploadIncidents`]. Every upload is stamped with `(cluster_id, term)` ([`Fence`]).
//! The aggregator's state is rebuilt from announcements alone: they are idempotent by
//! report id and carry whether the endpoint has them, so a new aggregator re-announced to
//! after a failover neither loses nor re-sends what the old one finished. A new
//! aggregator waits `takeover_quiet_ms` for those re-announcements before uploading.
//!
//! Origin side: the shell only reads what the aggregator asks for
//! ([`ConsolidationOutput::ReadReport`], [`ConsolidationOutput::ReadChunks`],
//! [`ConsolidationOutput::GatherLogs`]) and hands it back ([`Consolidation::report_read`],
//! …); the messages are built and paged here (`ReportChunks` of
//! [`CHUNK_IDS_PER_MESSAGE_MAX`] ids, one `ChunkData` per chunk), so every shell serves a
//! fetch the same way. Nothing is kept per request: a read the shell never answers costs
//! nothing, and the aggregator asks again.
//!
//! Invariants:
//! - No I/O, no clock, no threads, no randomness: every input carries `now_ms`, every
//!   effect is an output ([`ConsolidationOutput`]) the shell carries out: messages, uploads,
//!   chunk reads and writes. Store and endpoint stay in the shell.
//! - Every collection is bounded by a named limit in [`ConsolidationConfig`]; a full queue
//!   refuses with a typed error (the spool keeps the incident and the shell retries) or
//!   withholds the acknowledgement (the announcing node retries later). Nothing is dropped
//!   silently, so nothing acknowledged is lost.
//! - Every retry has a backoff computed from `now_ms` and a ceiling; the work done in
//!   one call is bounded (`announces_per_call_max`).
//! - At most one upload per problem is in flight, identified by `upload_id`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::model::ProblemKind;
use crate::wire::{
    Announcement, CHUNK_BYTES_MAX, CHUNK_IDS_PER_MESSAGE_MAX, CHUNKS_PER_REPORT_MAX, ChunkId,
    ClusterId, DecodeError, Feedback, Label, Message, NodeId, ReportId, Term, UploadState,
};

/// Limits and timings; [`ConsolidationConfig::new`] has the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsolidationConfig {
    /// The cluster, stamped on every upload.
    pub cluster_id: ClusterId,
    /// The peers asked for their logs of a new problem's window (default: none here; the
    /// shell fills in the storage peers).
    pub log_peers: Vec<NodeId>,
    /// Node side: incidents announced but not yet uploaded (default 4096).
    pub pending_records_len_max: usize,
    /// Node side: uploaded incidents remembered for the next aggregator (default 4096).
    pub uploaded_records_len_max: usize,
    /// Node side: first retry of an unacknowledged announcement (default 500 ms).
    pub announce_retry_initial_ms: u64,
    /// Node side: the longest retry interval (default 8 s).
    pub announce_retry_max_ms: u64,
    /// Node side: how often an acknowledged, not yet uploaded incident is re-announced
    /// to learn its upload (default 15 s).
    pub reannounce_interval_ms: u64,
    /// Node side: announcements sent per call at most (default 256).
    pub announces_per_call_max: usize,
    /// Aggregator: problems tracked (default 4096).
    pub problems_len_max: usize,
    /// Aggregator: incidents of one problem waiting for upload (default 4096).
    pub pending_incidents_per_problem_len_max: usize,
    /// Aggregator: uploaded report ids remembered to answer re-announcements (default 65536).
    pub uploaded_report_ids_len_max: usize,
    /// Aggregator: how long a new aggregator collects re-announcements before it uploads
    /// (default 1 s: nodes re-announce as soon as they hear its first heartbeat).
    pub takeover_quiet_ms: u64,
    /// Aggregator: retry interval of a report fetch (default 1 s).
    pub fetch_retry_ms: u64,
    /// Aggregator: attempts at one origin before fetching another incident's report
    /// (default 5).
    pub fetch_attempts_per_origin_max: u32,
    /// Aggregator: how long the shell may take to say which chunks are missing, or to
    /// finish an upload, before the attempt counts as failed (default 120 s).
    pub shell_answer_timeout_ms: u64,
    /// Aggregator: first retry of a failed upload (default 1 s).
    pub upload_retry_initial_ms: u64,
    /// Aggregator: the longest upload retry interval (default 30 s).
    pub upload_retry_max_ms: u64,
    /// Aggregator: incidents in one upload at most (default 1024; the upload format takes
    /// 4096).
    pub upload_incidents_len_max: usize,
    /// Aggregator: the log window starts this long before the first incident (default 60 s).
    pub log_window_before_ms: u64,
    /// Aggregator: the log window ends this long after the first incident (default 10 s).
    pub log_window_after_ms: u64,
    /// Aggregator: how long a new problem's report waits for the peers' logs before it
    /// goes up without the missing ones (default 20 s).
    pub log_wait_ms: u64,
    /// Aggregator: nodes remembered per problem to tell the endpoint's feedback
    /// (default 1024).
    pub feedback_nodes_per_problem_len_max: usize,
}

impl ConsolidationConfig {
    /// The defaults for `cluster_id`.
    pub fn new(cluster_id: ClusterId) -> ConsolidationConfig {
        ConsolidationConfig {
            cluster_id,
            log_peers: Vec::new(),
            pending_records_len_max: 4096,
            uploaded_records_len_max: 4096,
            announce_retry_initial_ms: 500,
            announce_retry_max_ms: 8_000,
            reannounce_interval_ms: 15_000,
            announces_per_call_max: 256,
            problems_len_max: 4096,
            pending_incidents_per_problem_len_max: 4096,
            uploaded_report_ids_len_max: 65_536,
            takeover_quiet_ms: 1_000,
            fetch_retry_ms: 1_000,
            fetch_attempts_per_origin_max: 5,
            shell_answer_timeout_ms: 120_000,
            upload_retry_initial_ms: 1_000,
            upload_retry_max_ms: 30_000,
            upload_incidents_len_max: 1024,
            log_window_before_ms: 60_000,
            log_window_after_ms: 10_000,
            log_wait_ms: 20_000,
            feedback_nodes_per_problem_len_max: 1024,
        }
    }
}

/// What an upload is stamped with; the endpoint refuses a term lower than its highest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    /// The cluster.
    pub cluster_id: ClusterId,
    /// The aggregator's term.
    pub term: Term,
}

/// One incident as it goes up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncidentRecord {
    /// The origin node's report id.
    pub report_id: ReportId,
    /// The origin node.
    pub node: NodeId,
    /// When it happened (unix ms).
    pub time_ms: u64,
    /// The origin node's labels.
    pub labels: Vec<Label>,
    /// The size of its full report.
    pub report_bytes: u64,
}

/// A new problem: the first incident's full report (its chunks are in the aggregator's
/// store) and every incident known so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadReport {
    /// Identifies the upload in [`Consolidation::upload_finished`].
    pub upload_id: u64,
    /// `(cluster_id, term)`.
    pub fence: Fence,
    /// The problem's signature.
    pub signature: String,
    /// The problem's kind.
    pub kind: ProblemKind,
    /// The incident whose full report goes up.
    pub first: IncidentRecord,
    /// Every incident of this upload, `first` included.
    pub incidents: Vec<IncidentRecord>,
    /// The peers' log bundles fetched for the problem's window (their chunks are in the
    /// aggregator's store, offered like a report's).
    pub peer_logs: Vec<(NodeId, ReportId)>,
}

/// Later incidents of a problem the endpoint already has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadIncidents {
    /// Identifies the upload in [`Consolidation::upload_finished`].
    pub upload_id: u64,
    /// `(cluster_id, term)`.
    pub fence: Fence,
    /// The problem's signature.
    pub signature: String,
    /// The problem's kind.
    pub kind: ProblemKind,
    /// The incidents.
    pub incidents: Vec<IncidentRecord>,
}

/// How an upload ended, as the shell reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadOutcome {
    /// The endpoint acknowledged it (also when it already had every report id).
    Acked,
    /// It failed in a way worth retrying (network, endpoint down, 5xx).
    Retry,
    /// The endpoint has seen a higher term: this aggregator is stale and stops uploading.
    StaleTerm,
}

/// Node side: an aggregator asked for the chunk list of a report or a log bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportRequest {
    /// The aggregator asking.
    pub to: NodeId,
    /// The report or log bundle.
    pub report_id: ReportId,
}

/// Node side: an aggregator wants these chunks of a report (one `ChunkWant`: at most
/// [`CHUNK_IDS_PER_MESSAGE_MAX`] ids).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunksRequest {
    /// The aggregator asking.
    pub to: NodeId,
    /// The report or log bundle.
    pub report_id: ReportId,
    /// The chunks wanted.
    pub chunk_ids: Vec<ChunkId>,
}

/// Node side: an aggregator asked for this node's logs of a problem's window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogsRequest {
    /// The aggregator asking.
    pub to: NodeId,
    /// The term of the request (echoed in `LogReady`).
    pub term: Term,
    /// The problem.
    pub signature: String,
    /// The problem's kind (chooses the gathering rules).
    pub kind: ProblemKind,
    /// Window start (unix ms).
    pub window_start_ms: u64,
    /// Window end (unix ms).
    pub window_end_ms: u64,
}

/// What the shell found when asked for a report's chunk list ([`ReportRequest`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReportRead {
    /// The report's chunks, in order, and its whole size.
    Found {
        /// The report's size in bytes.
        report_bytes: u64,
        /// Its chunks, in order (at most [`CHUNKS_PER_REPORT_MAX`]).
        chunk_ids: Vec<ChunkId>,
    },
    /// This node does not have it (evicted, or never had it): the aggregator fetches
    /// another incident's report.
    Unavailable,
}

impl ReportRead {
    /// A report a shell holds whole, as its chunks in order.
    pub fn of_chunks(chunks: &[impl AsRef<[u8]>]) -> ReportRead {
        ReportRead::Found {
            report_bytes: chunks.iter().map(|chunk| chunk.as_ref().len() as u64).sum(),
            chunk_ids: chunks
                .iter()
                .map(|chunk| ChunkId::of(chunk.as_ref()))
                .collect(),
        }
    }
}

impl ChunksRequest {
    /// The chunks it wants among those of a report a shell holds whole, each with its id
    /// (the bytes moved into the answer, not copied).
    pub fn wanted_among(&self, chunks: Vec<Vec<u8>>) -> Vec<(ChunkId, bytes::Bytes)> {
        chunks
            .into_iter()
            .map(|chunk| (ChunkId::of(&chunk), bytes::Bytes::from(chunk)))
            .filter(|(chunk_id, _)| self.chunk_ids.contains(chunk_id))
            .collect()
    }
}

/// What consolidation asks of the shell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsolidationOutput {
    /// Send a message to a member (possibly this node itself).
    Send {
        /// The member.
        to: NodeId,
        /// The message.
        message: Message,
    },
    /// Upload a new problem; answer with [`Consolidation::upload_finished`].
    UploadReport(UploadReport),
    /// Upload later incidents; answer with [`Consolidation::upload_finished`].
    UploadIncidents(UploadIncidents),
    /// The origin offered these chunks of a report; answer with
    /// [`Consolidation::chunks_missing`] naming those the store lacks.
    ChunksOffered {
        /// The report.
        report_id: ReportId,
        /// Every chunk of it, in order.
        chunk_ids: Vec<ChunkId>,
    },
    /// Store this verified chunk (its blake3 matched).
    StoreChunk {
        /// The report it belongs to.
        report_id: ReportId,
        /// The chunk's id.
        chunk_id: ChunkId,
        /// Its bytes (shared with the message they came in).
        bytes: bytes::Bytes,
    },
    /// Node side: read a report's (or log bundle's) chunk list; answer with
    /// [`Consolidation::report_read`], which pages it to the aggregator.
    ReadReport(ReportRequest),
    /// Node side: read these chunks; answer with [`Consolidation::chunks_read`] (in as
    /// many calls as the shell likes), which sends each as `ChunkData`.
    ReadChunks(ChunksRequest),
    /// Node side: gather this node's logs of the window into a bundle the aggregator can
    /// fetch like a report; answer with [`Consolidation::logs_gathered`] (`LogReady`).
    GatherLogs(LogsRequest),
    /// Node side: the endpoint has this incident; the spool may release its evidence.
    Uploaded {
        /// The incident.
        report_id: ReportId,
    },
    /// Aggregator: the endpoint refused this term; uploads stop until the next term.
    Fenced {
        /// The refused term.
        term: Term,
    },
    /// Node side: the aggregator passed on what the endpoint knows of a problem; keep it
    /// for `problems show`.
    Feedback {
        /// The problem.
        signature: String,
        /// The endpoint's answer.
        feedback: Feedback,
    },
}

/// This node's part, from the election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsolidationRole {
    /// Announce to `aggregator` (none known: wait).
    Follower {
        /// The current term.
        term: Term,
        /// The aggregator, if known.
        aggregator: Option<NodeId>,
    },
    /// This node is the aggregator of `term` (and announces to itself too).
    Aggregator {
        /// The term.
        term: Term,
    },
}

/// Why an input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsolidationError {
    /// The node's pending queue is full; the spool keeps the incident, retry later.
    #[error("announcement queue full ({len_max} pending incidents)")]
    QueueFull {
        /// The limit.
        len_max: usize,
    },
    /// The announcement breaks a wire limit.
    #[error("invalid announcement: {0}")]
    Invalid(#[from] DecodeError),
    /// The announcement is not this node's.
    #[error("announcement of node {0}, not of this node")]
    NotThisNode(NodeId),
    /// The shell's answer to a read breaks a wire limit; what broke it was not sent.
    #[error("the shell's answer breaks a wire limit: {0}")]
    InvalidAnswer(DecodeError),
}

/// A counter of what went wrong, for status and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsolidationCounters {
    /// Chunks whose bytes did not hash to their id.
    pub chunks_rejected: u64,
    /// Announcements not acknowledged because a limit was reached.
    pub announcements_withheld: u64,
    /// Fetches given up at one origin.
    pub fetches_failed: u64,
    /// Uploads that failed and were retried.
    pub uploads_retried: u64,
}

#[derive(Clone, Debug)]
struct NodeRecord {
    announcement: Announcement,
    /// The aggregator (and term) that acknowledged it.
    acknowledged_by: Option<(NodeId, Term)>,
    next_send_ms: u64,
    retry_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Fetch {
    Idle,
    Requested {
        report_id: ReportId,
        origin: NodeId,
        attempts: u32,
        retry_at_ms: u64,
        chunk_count: u32,
        offered: Vec<ChunkId>,
    },
    AwaitingShell {
        report_id: ReportId,
        origin: NodeId,
        give_up_at_ms: u64,
    },
    Transferring {
        report_id: ReportId,
        origin: NodeId,
        wanted: BTreeSet<ChunkId>,
        attempts: u32,
        retry_at_ms: u64,
    },
    Fetched {
        report_id: ReportId,
    },
}

#[derive(Clone, Debug)]
struct InFlightUpload {
    upload_id: u64,
    report_ids: Vec<ReportId>,
    full_report: bool,
    give_up_at_ms: u64,
}

#[derive(Clone, Debug)]
struct AggregatorProblem {
    kind: ProblemKind,
    /// The endpoint has the problem (uploaded by this or an earlier aggregator).
    at_endpoint: bool,
    pending: BTreeMap<ReportId, IncidentRecord>,
    uploaded_count: u64,
    fetch: Fetch,
    fetch_failed: BTreeSet<ReportId>,
    upload: Option<InFlightUpload>,
    upload_not_before_ms: u64,
    upload_retry_ms: u64,
    /// When the peers were asked for their logs (once per problem and term).
    logs_requested_at_ms: Option<u64>,
    /// Each asked peer's log bundle.
    logs: BTreeMap<NodeId, PeerLogs>,
    /// The nodes with incidents of the problem, told the endpoint's feedback.
    nodes: BTreeSet<NodeId>,
}

/// Where one peer's logs of a problem's window stand.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PeerLogs {
    /// Asked; no answer yet.
    Waiting,
    /// The peer named its bundle; fetching it like a report.
    Fetching(Fetch),
    /// The bundle's chunks are in the store.
    Ready(ReportId),
    /// The peer has no logs of the window, or its bundle could not be fetched.
    Unavailable,
}

#[derive(Debug)]
struct AggregatorState {
    term: Term,
    since_ms: u64,
    fenced: bool,
    problems: BTreeMap<String, AggregatorProblem>,
    uploaded_report_ids: BTreeSet<ReportId>,
    uploaded_order: VecDeque<ReportId>,
}

/// A summary of one problem on the aggregator, for `crashmesh status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProblemStatus {
    /// The signature.
    pub signature: String,
    /// Whether the endpoint has it.
    pub at_endpoint: bool,
    /// Incidents uploaded by this aggregator or known uploaded.
    pub uploaded_count: u64,
    /// Incidents waiting.
    pub pending_count: usize,
}

/// The consolidation state machine of one node (both sides).
#[derive(Debug)]
pub struct Consolidation {
    self_id: NodeId,
    config: ConsolidationConfig,
    role: ConsolidationRole,
    records: BTreeMap<ReportId, NodeRecord>,
    pending_records_len: usize,
    uploaded_records_order: VecDeque<ReportId>,
    aggregator: Option<AggregatorState>,
    next_upload_id: u64,
    next_deadline_ms: Option<u64>,
    outputs: VecDeque<ConsolidationOutput>,
    counters: ConsolidationCounters,
}

impl Consolidation {
    /// A node with no aggregator known yet.
    pub fn new(self_id: NodeId, config: ConsolidationConfig) -> Consolidation {
        Consolidation {
            self_id,
            config,
            role: ConsolidationRole::Follower {
                term: 0,
                aggregator: None,
            },
            records: BTreeMap::new(),
            pending_records_len: 0,
            uploaded_records_order: VecDeque::new(),
            aggregator: None,
            next_upload_id: 1,
            next_deadline_ms: None,
            outputs: VecDeque::new(),
            counters: ConsolidationCounters::default(),
        }
    }

    /// The next output, in order.
    pub fn poll_output(&mut self) -> Option<ConsolidationOutput> {
        self.outputs.pop_front()
    }

    /// When [`Consolidation::handle_timeout`] must next be called (`None`: only on input).
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.next_deadline_ms
    }

    /// What went wrong so far.
    pub fn counters(&self) -> &ConsolidationCounters {
        &self.counters
    }

    /// Node side: incidents not yet known uploaded.
    pub fn pending_len(&self) -> usize {
        self.pending_records_len
    }

    /// Aggregator side: every tracked problem (empty on other nodes).
    pub fn problems(&self) -> Vec<ProblemStatus> {
        let Some(state) = &self.aggregator else {
            return Vec::new();
        };
        state
            .problems
            .iter()
            .map(|(signature, problem)| ProblemStatus {
                signature: signature.clone(),
                at_endpoint: problem.at_endpoint,
                uploaded_count: problem.uploaded_count,
                pending_count: problem.pending.len(),
            })
            .collect()
    }

    /// Follows the election: whom to announce to, and whether to aggregate.
    pub fn set_role(&mut self, now_ms: u64, role: ConsolidationRole) {
        if role == self.role {
            return;
        }
        let target_changed = self.announce_target() != announce_target_of(&self.self_id, &role);
        self.role = role;
        match &self.role {
            ConsolidationRole::Aggregator { term } => {
                let keep = self
                    .aggregator
                    .as_ref()
                    .is_some_and(|state| state.term == *term);
                if !keep {
                    self.aggregator = Some(AggregatorState {
                        term: *term,
                        since_ms: now_ms,
                        fenced: false,
                        problems: BTreeMap::new(),
                        uploaded_report_ids: BTreeSet::new(),
                        uploaded_order: VecDeque::new(),
                    });
                }
            }
            ConsolidationRole::Follower { .. } => self.aggregator = None,
        }
        if target_changed {
            for record in self.records.values_mut() {
                record.acknowledged_by = None;
                record.next_send_ms = now_ms;
                record.retry_ms = self.config.announce_retry_initial_ms;
            }
        }
        self.drive(now_ms);
    }

    /// Node side: an incident of this node to announce. Idempotent by report id.
    pub fn announce(
        &mut self,
        now_ms: u64,
        announcement: Announcement,
    ) -> Result<(), ConsolidationError> {
        announcement.validate()?;
        if announcement.node != self.self_id {
            return Err(ConsolidationError::NotThisNode(announcement.node));
        }
        if self.records.contains_key(&announcement.report_id) {
            return Ok(());
        }
        if self.pending_records_len >= self.config.pending_records_len_max {
            return Err(ConsolidationError::QueueFull {
                len_max: self.config.pending_records_len_max,
            });
        }
        let uploaded = announcement.upload_state == UploadState::Uploaded;
        let report_id = announcement.report_id.clone();
        self.records.insert(
            report_id.clone(),
            NodeRecord {
                announcement,
                acknowledged_by: None,
                next_send_ms: now_ms,
                retry_ms: self.config.announce_retry_initial_ms,
            },
        );
        if uploaded {
            self.remember_uploaded_record(report_id);
        } else {
            self.pending_records_len += 1;
        }
        self.drive(now_ms);
        Ok(())
    }

    /// Handles a consolidation message from `from` (other messages are ignored).
    pub fn handle_message(&mut self, now_ms: u64, from: &NodeId, message: &Message) {
        match message {
            Message::Announce { announcement, .. } => {
                self.aggregator_handle_announce(from, announcement)
            }
            Message::AnnounceAck {
                term,
                report_id,
                uploaded,
            } => self.node_handle_ack(now_ms, from, *term, report_id, *uploaded),
            Message::FetchReport { report_id, .. } => {
                self.outputs
                    .push_back(ConsolidationOutput::ReadReport(ReportRequest {
                        to: from.clone(),
                        report_id: report_id.clone(),
                    }));
            }
            Message::ChunkWant {
                report_id,
                chunk_ids,
            } => {
                self.outputs
                    .push_back(ConsolidationOutput::ReadChunks(ChunksRequest {
                        to: from.clone(),
                        report_id: report_id.clone(),
                        chunk_ids: chunk_ids.clone(),
                    }));
            }
            Message::LogRequest {
                term,
                signature,
                kind,
                window_start_ms,
                window_end_ms,
            } => {
                self.outputs
                    .push_back(ConsolidationOutput::GatherLogs(LogsRequest {
                        to: from.clone(),
                        term: *term,
                        signature: signature.clone(),
                        kind: *kind,
                        window_start_ms: *window_start_ms,
                        window_end_ms: *window_end_ms,
                    }));
            }
            Message::LogReady {
                term,
                signature,
                bundle,
            } => self.aggregator_handle_log_ready(now_ms, from, *term, signature, bundle),
            Message::ProblemFeedback {
                signature,
                feedback,
                ..
            } => self.node_handle_feedback(from, signature, feedback),
            Message::ReportChunks {
                report_id,
                chunk_count,
                offset,
                chunk_ids,
                ..
            } => self.aggregator_handle_report_chunks(
                now_ms,
                from,
                report_id,
                *chunk_count,
                *offset,
                chunk_ids,
            ),
            Message::ReportUnavailable { report_id } => {
                self.aggregator_fetch_failed(from, report_id)
            }
            Message::ChunkData {
                report_id,
                chunk_id,
                bytes,
            } => self.aggregator_handle_chunk(from, report_id, *chunk_id, bytes),
            _ => {}
        }
        self.drive(now_ms);
    }

    /// Acts on the passage of time: retries, fetches, uploads.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.drive(now_ms);
    }

    /// The shell connected to `peer` (or `peer` to it). When `peer` is the aggregator this
    /// node announces to, what it has not acknowledged is sent now rather than at the next
    /// retry, which may be seconds away after a partition or the aggregator's restart.
    pub fn peer_reachable(&mut self, now_ms: u64, peer: &NodeId) {
        let target = self.announce_target();
        if target
            .as_ref()
            .is_none_or(|(aggregator, _)| aggregator != peer)
        {
            return;
        }
        let mut nudged = false;
        for record in self.records.values_mut() {
            if record.acknowledged_by == target
                || record.next_send_ms == u64::MAX
                || record.next_send_ms <= now_ms
            {
                continue;
            }
            record.next_send_ms = now_ms;
            record.retry_ms = self.config.announce_retry_initial_ms;
            nudged = true;
        }
        if nudged {
            self.drive(now_ms);
        }
    }

    /// Node side: the shell's answer to [`ConsolidationOutput::ReadReport`]. The chunk
    /// list goes to the aggregator in `ReportChunks` pages of [`CHUNK_IDS_PER_MESSAGE_MAX`]
    /// ids (an empty list as one empty page), or as `ReportUnavailable`. A list longer than
    /// [`CHUNKS_PER_REPORT_MAX`] cannot be fetched: the aggregator is told the report is
    /// unavailable, and the shell gets the error.
    pub fn report_read(
        &mut self,
        request: ReportRequest,
        read: ReportRead,
    ) -> Result<(), ConsolidationError> {
        let ReportRequest { to, report_id } = request;
        let unavailable = |report_id| ConsolidationOutput::Send {
            to: to.clone(),
            message: Message::ReportUnavailable { report_id },
        };
        let (report_bytes, chunk_ids) = match read {
            ReportRead::Found {
                report_bytes,
                chunk_ids,
            } => (report_bytes, chunk_ids),
            ReportRead::Unavailable => {
                self.outputs.push_back(unavailable(report_id));
                return Ok(());
            }
        };
        if chunk_ids.len() > CHUNKS_PER_REPORT_MAX {
            self.outputs.push_back(unavailable(report_id));
            return Err(ConsolidationError::InvalidAnswer(
                DecodeError::InvalidField {
                    field: "chunk_ids",
                    reason: "a report of more than CHUNKS_PER_REPORT_MAX chunks",
                },
            ));
        }
        let chunk_count = chunk_ids.len() as u32;
        let mut offset = 0;
        loop {
            let end = (offset + CHUNK_IDS_PER_MESSAGE_MAX).min(chunk_ids.len());
            self.outputs.push_back(ConsolidationOutput::Send {
                to: to.clone(),
                message: Message::ReportChunks {
                    report_id: report_id.clone(),
                    report_bytes,
                    chunk_count,
                    offset: offset as u32,
                    chunk_ids: chunk_ids[offset..end].to_vec(),
                },
            });
            offset = end;
            if offset == chunk_ids.len() {
                return Ok(());
            }
        }
    }

    /// Node side: chunks the shell read for a [`ConsolidationOutput::ReadChunks`] (all of
    /// them or a batch; a chunk it could not read is left out): each goes to `to` as one
    /// `ChunkData`, its bytes shared, not copied. A chunk over [`CHUNK_BYTES_MAX`] is not
    /// sent and the shell gets the error; the others are.
    pub fn chunks_read(
        &mut self,
        to: &NodeId,
        report_id: &ReportId,
        chunks: Vec<(ChunkId, bytes::Bytes)>,
    ) -> Result<(), ConsolidationError> {
        let mut refused = Ok(());
        for (chunk_id, bytes) in chunks {
            if bytes.len() > CHUNK_BYTES_MAX {
                refused = Err(ConsolidationError::InvalidAnswer(
                    DecodeError::InvalidField {
                        field: "bytes",
                        reason: "a chunk over CHUNK_BYTES_MAX",
                    },
                ));
                continue;
            }
            self.outputs.push_back(ConsolidationOutput::Send {
                to: to.clone(),
                message: Message::ChunkData {
                    report_id: report_id.clone(),
                    chunk_id,
                    bytes,
                },
            });
        }
        refused
    }

    /// Node side: the shell's answer to [`ConsolidationOutput::GatherLogs`]: the bundle it
    /// keeps for the aggregator to fetch, or none when it has no logs of the window. An
    /// invalid bundle id is answered as no bundle, and the shell gets the error.
    pub fn logs_gathered(
        &mut self,
        request: LogsRequest,
        bundle: Option<ReportId>,
    ) -> Result<(), ConsolidationError> {
        let checked = bundle.as_ref().map_or(Ok(()), ReportId::validate);
        let bundle = bundle.filter(|_| checked.is_ok());
        self.outputs.push_back(ConsolidationOutput::Send {
            to: request.to,
            message: Message::LogReady {
                term: request.term,
                signature: request.signature,
                bundle,
            },
        });
        checked.map_err(ConsolidationError::InvalidAnswer)
    }

    /// Aggregator: the shell's answer to [`ConsolidationOutput::ChunksOffered`].
    pub fn chunks_missing(&mut self, now_ms: u64, report_id: &ReportId, missing: Vec<ChunkId>) {
        let fetch_retry_ms = self.config.fetch_retry_ms;
        let Some(state) = &mut self.aggregator else {
            return;
        };
        let mut sends = Vec::new();
        for problem in state.problems.values_mut() {
            for fetch in problem.fetches_mut() {
                sends.extend(fetch_chunks_missing(
                    fetch,
                    now_ms,
                    report_id,
                    &missing,
                    fetch_retry_ms,
                ));
            }
            problem.settle_logs();
        }
        self.outputs.extend(sends);
        self.drive(now_ms);
    }

    /// Aggregator: the endpoint's answer about a problem (from an upload's reply), passed
    /// on to every node with incidents of it.
    pub fn upload_feedback(&mut self, now_ms: u64, signature: &str, feedback: Feedback) {
        if feedback.validate().is_err() {
            return;
        }
        let Some(state) = &mut self.aggregator else {
            return;
        };
        let Some(problem) = state.problems.get(signature) else {
            return;
        };
        for node in &problem.nodes {
            self.outputs.push_back(ConsolidationOutput::Send {
                to: node.clone(),
                message: Message::ProblemFeedback {
                    term: state.term,
                    signature: signature.to_string(),
                    feedback: feedback.clone(),
                },
            });
        }
        self.drive(now_ms);
    }

    /// Aggregator: how an upload ended.
    pub fn upload_finished(&mut self, now_ms: u64, upload_id: u64, outcome: UploadOutcome) {
        let config = &self.config;
        let Some(state) = &mut self.aggregator else {
            return;
        };
        let Some(problem) = state.problems.values_mut().find(|problem| {
            problem
                .upload
                .as_ref()
                .is_some_and(|upload| upload.upload_id == upload_id)
        }) else {
            return;
        };
        let upload = problem.upload.take().expect("found by its upload");
        match outcome {
            UploadOutcome::Acked => {
                problem.at_endpoint = true;
                problem.upload_retry_ms = config.upload_retry_initial_ms;
                problem.upload_not_before_ms = now_ms;
                if upload.full_report {
                    problem.fetch = Fetch::Idle;
                    problem.fetch_failed.clear();
                }
                let mut acknowledged = Vec::new();
                for report_id in &upload.report_ids {
                    if let Some(incident) = problem.pending.remove(report_id) {
                        problem.uploaded_count += 1;
                        acknowledged.push(incident);
                    }
                }
                for incident in acknowledged {
                    self.outputs.push_back(ConsolidationOutput::Send {
                        to: incident.node.clone(),
                        message: Message::AnnounceAck {
                            term: state.term,
                            report_id: incident.report_id.clone(),
                            uploaded: true,
                        },
                    });
                    remember_uploaded_report_id(state, config, incident.report_id);
                }
            }
            UploadOutcome::Retry => {
                self.counters.uploads_retried += 1;
                problem.upload_not_before_ms = now_ms + problem.upload_retry_ms;
                problem.upload_retry_ms =
                    (problem.upload_retry_ms * 2).min(config.upload_retry_max_ms);
            }
            UploadOutcome::StaleTerm => {
                state.fenced = true;
                self.outputs
                    .push_back(ConsolidationOutput::Fenced { term: state.term });
            }
        }
        self.drive(now_ms);
    }

    fn announce_target(&self) -> Option<(NodeId, Term)> {
        announce_target_of(&self.self_id, &self.role)
    }

    fn remember_uploaded_record(&mut self, report_id: ReportId) {
        self.uploaded_records_order.push_back(report_id);
        while self.uploaded_records_order.len() > self.config.uploaded_records_len_max {
            let oldest = self
                .uploaded_records_order
                .pop_front()
                .expect("over the limit");
            self.records.remove(&oldest);
        }
    }

    fn node_handle_ack(
        &mut self,
        now_ms: u64,
        from: &NodeId,
        term: Term,
        report_id: &ReportId,
        uploaded: bool,
    ) {
        let target = self.announce_target();
        let from_target = target.as_ref().is_some_and(|(node, _)| node == from);
        let Some(record) = self.records.get_mut(report_id) else {
            return;
        };
        if uploaded {
            if record.announcement.upload_state == UploadState::NotUploaded {
                record.announcement.upload_state = UploadState::Uploaded;
                self.pending_records_len -= 1;
                self.outputs.push_back(ConsolidationOutput::Uploaded {
                    report_id: report_id.clone(),
                });
                // The current aggregator must learn it too, unless it is the one telling.
                let record = self.records.get_mut(report_id).expect("present");
                if from_target {
                    record.acknowledged_by = target.clone();
                    record.next_send_ms = u64::MAX;
                } else {
                    record.acknowledged_by = None;
                    record.next_send_ms = now_ms;
                }
                self.remember_uploaded_record(report_id.clone());
            } else if from_target {
                record.acknowledged_by = target.clone();
                record.next_send_ms = u64::MAX;
            }
            return;
        }
        if from_target && record.announcement.upload_state == UploadState::NotUploaded {
            record.acknowledged_by = Some((from.clone(), term));
            record.retry_ms = self.config.announce_retry_initial_ms;
            record.next_send_ms = now_ms + self.config.reannounce_interval_ms;
        }
    }

    fn aggregator_handle_announce(&mut self, from: &NodeId, announcement: &Announcement) {
        let config = &self.config;
        let Some(state) = &mut self.aggregator else {
            return;
        };
        if state.fenced || announcement.node != *from || announcement.validate().is_err() {
            return;
        }
        let report_id = announcement.report_id.clone();
        let already_uploaded = state.uploaded_report_ids.contains(&report_id);
        if !state.problems.contains_key(&announcement.signature) {
            if state.problems.len() >= config.problems_len_max && !evict_idle_problem(state) {
                self.counters.announcements_withheld += 1;
                return;
            }
            state.problems.insert(
                announcement.signature.clone(),
                AggregatorProblem {
                    kind: announcement.kind,
                    at_endpoint: false,
                    pending: BTreeMap::new(),
                    uploaded_count: 0,
                    fetch: Fetch::Idle,
                    fetch_failed: BTreeSet::new(),
                    upload: None,
                    upload_not_before_ms: 0,
                    upload_retry_ms: config.upload_retry_initial_ms,
                    logs_requested_at_ms: None,
                    logs: BTreeMap::new(),
                    nodes: BTreeSet::new(),
                },
            );
        }
        let problem = state
            .problems
            .get_mut(&announcement.signature)
            .expect("inserted");
        if problem.nodes.len() < config.feedback_nodes_per_problem_len_max {
            problem.nodes.insert(announcement.node.clone());
        }
        let uploaded = if already_uploaded || announcement.upload_state == UploadState::Uploaded {
            problem.at_endpoint = true;
            if problem.pending.remove(&report_id).is_some() || !already_uploaded {
                problem.uploaded_count += 1;
            }
            if !already_uploaded {
                remember_uploaded_report_id(state, config, report_id.clone());
            }
            true
        } else if problem.pending.contains_key(&report_id) {
            false
        } else if problem.pending.len() >= config.pending_incidents_per_problem_len_max {
            self.counters.announcements_withheld += 1;
            return;
        } else {
            problem.pending.insert(
                report_id.clone(),
                IncidentRecord {
                    report_id: report_id.clone(),
                    node: announcement.node.clone(),
                    time_ms: announcement.time_ms,
                    labels: announcement.labels.clone(),
                    report_bytes: announcement.report_bytes,
                },
            );
            false
        };
        self.outputs.push_back(ConsolidationOutput::Send {
            to: from.clone(),
            message: Message::AnnounceAck {
                term: state.term,
                report_id,
                uploaded,
            },
        });
    }

    fn aggregator_handle_report_chunks(
        &mut self,
        now_ms: u64,
        from: &NodeId,
        report_id: &ReportId,
        page_chunk_count: u32,
        page_offset: u32,
        page: &[ChunkId],
    ) {
        let shell_answer_timeout_ms = self.config.shell_answer_timeout_ms;
        let Some(state) = &mut self.aggregator else {
            return;
        };
        for problem in state.problems.values_mut() {
            for fetch in problem.fetches_mut() {
                let page = FetchPage {
                    from,
                    report_id,
                    chunk_count: page_chunk_count,
                    offset: page_offset,
                    chunk_ids: page,
                };
                if let Some(output) = fetch_take_page(fetch, now_ms, page, shell_answer_timeout_ms)
                {
                    self.outputs.push_back(output);
                }
            }
            problem.settle_logs();
        }
    }

    fn aggregator_handle_log_ready(
        &mut self,
        now_ms: u64,
        from: &NodeId,
        term: Term,
        signature: &str,
        bundle: &Option<ReportId>,
    ) {
        let fetch_retry_ms = self.config.fetch_retry_ms;
        let Some(state) = &mut self.aggregator else {
            return;
        };
        if term != state.term {
            return;
        }
        let Some(problem) = state.problems.get_mut(signature) else {
            return;
        };
        let Some(logs) = problem.logs.get_mut(from) else {
            return;
        };
        if *logs != PeerLogs::Waiting {
            return;
        }
        match bundle {
            None => *logs = PeerLogs::Unavailable,
            Some(bundle) => {
                self.outputs.push_back(ConsolidationOutput::Send {
                    to: from.clone(),
                    message: Message::FetchReport {
                        term,
                        report_id: bundle.clone(),
                    },
                });
                *logs = PeerLogs::Fetching(Fetch::Requested {
                    report_id: bundle.clone(),
                    origin: from.clone(),
                    attempts: 1,
                    retry_at_ms: now_ms + fetch_retry_ms,
                    chunk_count: 0,
                    offered: Vec::new(),
                });
            }
        }
    }

    fn node_handle_feedback(&mut self, from: &NodeId, signature: &str, feedback: &Feedback) {
        let from_aggregator = self
            .announce_target()
            .is_some_and(|(aggregator, _)| aggregator == *from);
        if !from_aggregator {
            return;
        }
        self.outputs.push_back(ConsolidationOutput::Feedback {
            signature: signature.to_string(),
            feedback: feedback.clone(),
        });
    }

    fn aggregator_fetch_failed(&mut self, from: &NodeId, report_id: &ReportId) {
        let Some(state) = &mut self.aggregator else {
            return;
        };
        for problem in state.problems.values_mut() {
            if fetch_is_from(&problem.fetch, from, report_id) {
                self.counters.fetches_failed += 1;
                problem.fetch_failed.insert(report_id.clone());
                problem.fetch = Fetch::Idle;
            }
            for logs in problem.logs.values_mut() {
                if let PeerLogs::Fetching(fetch) = logs
                    && fetch_is_from(fetch, from, report_id)
                {
                    self.counters.fetches_failed += 1;
                    *logs = PeerLogs::Unavailable;
                }
            }
        }
    }

    fn aggregator_handle_chunk(
        &mut self,
        from: &NodeId,
        report_id: &ReportId,
        chunk_id: ChunkId,
        bytes: &bytes::Bytes,
    ) {
        let Some(state) = &mut self.aggregator else {
            return;
        };
        for problem in state.problems.values_mut() {
            let mut stored = false;
            for fetch in problem.fetches_mut() {
                match fetch_take_chunk(fetch, from, report_id, chunk_id, bytes) {
                    ChunkTaken::No => {}
                    ChunkTaken::Rejected => self.counters.chunks_rejected += 1,
                    ChunkTaken::Yes if stored => {}
                    ChunkTaken::Yes => {
                        stored = true;
                        self.outputs.push_back(ConsolidationOutput::StoreChunk {
                            report_id: report_id.clone(),
                            chunk_id,
                            bytes: bytes.clone(),
                        });
                    }
                }
            }
            problem.settle_logs();
        }
    }

    /// Does all work due at `now_ms` and computes the next deadline.
    fn drive(&mut self, now_ms: u64) {
        let mut deadline: Option<u64> = None;
        let mut consider = |at_ms: u64| deadline = Some(deadline.map_or(at_ms, |d| d.min(at_ms)));
        self.drive_node_side(now_ms, &mut consider);
        self.drive_aggregator(now_ms, &mut consider);
        self.next_deadline_ms = deadline;
    }

    fn drive_node_side(&mut self, now_ms: u64, consider: &mut impl FnMut(u64)) {
        let Some((aggregator, term)) = self.announce_target() else {
            return;
        };
        let mut sent = 0;
        for record in self.records.values_mut() {
            if record.next_send_ms > now_ms {
                if record.next_send_ms != u64::MAX {
                    consider(record.next_send_ms);
                }
                continue;
            }
            if sent >= self.config.announces_per_call_max {
                consider(now_ms);
                continue;
            }
            sent += 1;
            self.outputs.push_back(ConsolidationOutput::Send {
                to: aggregator.clone(),
                message: Message::Announce {
                    term,
                    announcement: record.announcement.clone(),
                },
            });
            record.next_send_ms = now_ms + record.retry_ms;
            record.retry_ms = (record.retry_ms * 2).min(self.config.announce_retry_max_ms);
            consider(record.next_send_ms);
        }
    }

    fn drive_aggregator(&mut self, now_ms: u64, consider: &mut impl FnMut(u64)) {
        let config = &self.config;
        let Some(state) = &mut self.aggregator else {
            return;
        };
        if state.fenced {
            return;
        }
        let quiet_until_ms = state.since_ms + config.takeover_quiet_ms;
        if now_ms < quiet_until_ms {
            consider(quiet_until_ms);
            return;
        }
        let fence = Fence {
            cluster_id: config.cluster_id.clone(),
            term: state.term,
        };
        for (signature, problem) in state.problems.iter_mut() {
            if problem.pending.is_empty() && problem.upload.is_none() {
                continue;
            }
            if problem.logs_requested_at_ms.is_none()
                && !problem.at_endpoint
                && let Some(first) = problem
                    .pending
                    .values()
                    .min_by_key(|incident| incident.time_ms)
            {
                problem.logs_requested_at_ms = Some(now_ms);
                for peer in &config.log_peers {
                    problem.logs.insert(peer.clone(), PeerLogs::Waiting);
                    self.outputs.push_back(ConsolidationOutput::Send {
                        to: peer.clone(),
                        message: Message::LogRequest {
                            term: state.term,
                            signature: signature.clone(),
                            kind: problem.kind,
                            window_start_ms: first
                                .time_ms
                                .saturating_sub(config.log_window_before_ms),
                            window_end_ms: first.time_ms.saturating_add(config.log_window_after_ms),
                        },
                    });
                }
            }
            drive_log_fetches(
                config,
                state.term,
                now_ms,
                problem,
                &mut self.outputs,
                &mut self.counters,
                consider,
            );
            if let Some(upload) = &problem.upload {
                if now_ms >= upload.give_up_at_ms {
                    problem.upload = None;
                    problem.upload_not_before_ms = now_ms;
                } else {
                    consider(upload.give_up_at_ms);
                    continue;
                }
            }
            if !problem.at_endpoint {
                drive_fetch(
                    config,
                    state.term,
                    now_ms,
                    problem,
                    &mut self.outputs,
                    &mut self.counters,
                    consider,
                );
                let Fetch::Fetched { report_id } = &problem.fetch else {
                    continue;
                };
                let Some(first) = problem.pending.get(report_id).cloned() else {
                    problem.fetch = Fetch::Idle;
                    consider(now_ms);
                    continue;
                };
                if now_ms < problem.upload_not_before_ms {
                    consider(problem.upload_not_before_ms);
                    continue;
                }
                if let Some(requested_at_ms) = problem.logs_requested_at_ms
                    && !problem.logs_settled()
                    && now_ms < requested_at_ms + config.log_wait_ms
                {
                    consider(requested_at_ms + config.log_wait_ms);
                    continue;
                }
                let peer_logs: Vec<(NodeId, ReportId)> = problem
                    .logs
                    .iter()
                    .filter_map(|(peer, logs)| match logs {
                        PeerLogs::Ready(bundle) => Some((peer.clone(), bundle.clone())),
                        _ => None,
                    })
                    .collect();
                let mut incidents = vec![first.clone()];
                incidents.extend(
                    problem
                        .pending
                        .values()
                        .filter(|incident| incident.report_id != first.report_id)
                        .take(config.upload_incidents_len_max - 1)
                        .cloned(),
                );
                let upload_id = self.next_upload_id;
                self.next_upload_id += 1;
                problem.upload = Some(InFlightUpload {
                    upload_id,
                    report_ids: incidents
                        .iter()
                        .map(|incident| incident.report_id.clone())
                        .collect(),
                    full_report: true,
                    give_up_at_ms: now_ms + config.shell_answer_timeout_ms,
                });
                consider(now_ms + config.shell_answer_timeout_ms);
                self.outputs
                    .push_back(ConsolidationOutput::UploadReport(UploadReport {
                        upload_id,
                        fence: fence.clone(),
                        signature: signature.clone(),
                        kind: problem.kind,
                        first,
                        incidents,
                        peer_logs,
                    }));
            } else if !problem.pending.is_empty() {
                if now_ms < problem.upload_not_before_ms {
                    consider(problem.upload_not_before_ms);
                    continue;
                }
                let incidents: Vec<IncidentRecord> = problem
                    .pending
                    .values()
                    .take(config.upload_incidents_len_max)
                    .cloned()
                    .collect();
                let upload_id = self.next_upload_id;
                self.next_upload_id += 1;
                problem.upload = Some(InFlightUpload {
                    upload_id,
                    report_ids: incidents
                        .iter()
                        .map(|incident| incident.report_id.clone())
                        .collect(),
                    full_report: false,
                    give_up_at_ms: now_ms + config.shell_answer_timeout_ms,
                });
                consider(now_ms + config.shell_answer_timeout_ms);
                self.outputs
                    .push_back(ConsolidationOutput::UploadIncidents(UploadIncidents {
                        upload_id,
                        fence: fence.clone(),
                        signature: signature.clone(),
                        kind: problem.kind,
                        incidents,
                    }));
            }
        }
    }
}

fn announce_target_of(self_id: &NodeId, role: &ConsolidationRole) -> Option<(NodeId, Term)> {
    match role {
        ConsolidationRole::Aggregator { term } => Some((self_id.clone(), *term)),
        ConsolidationRole::Follower { term, aggregator } => aggregator
            .as_ref()
            .map(|aggregator| (aggregator.clone(), *term)),
    }
}

fn remember_uploaded_report_id(
    state: &mut AggregatorState,
    config: &ConsolidationConfig,
    report_id: ReportId,
) {
    if state.uploaded_report_ids.insert(report_id.clone()) {
        state.uploaded_order.push_back(report_id);
    }
    while state.uploaded_order.len() > config.uploaded_report_ids_len_max {
        let oldest = state.uploaded_order.pop_front().expect("over the limit");
        state.uploaded_report_ids.remove(&oldest);
    }
}

/// Forgets one problem with nothing left to do (the endpoint has it, nothing pending).
fn evict_idle_problem(state: &mut AggregatorState) -> bool {
    let idle = state
        .problems
        .iter()
        .find(|(_, problem)| {
            problem.at_endpoint && problem.pending.is_empty() && problem.upload.is_none()
        })
        .map(|(signature, _)| signature.clone());
    match idle {
        Some(signature) => {
            state.problems.remove(&signature);
            true
        }
        None => false,
    }
}

fn chunk_wants(
    origin: &NodeId,
    report_id: &ReportId,
    wanted: &BTreeSet<ChunkId>,
) -> Vec<ConsolidationOutput> {
    let wanted: Vec<ChunkId> = wanted.iter().copied().collect();
    wanted
        .chunks(CHUNK_IDS_PER_MESSAGE_MAX)
        .map(|page| ConsolidationOutput::Send {
            to: origin.clone(),
            message: Message::ChunkWant {
                report_id: report_id.clone(),
                chunk_ids: page.to_vec(),
            },
        })
        .collect()
}

/// Starts, retries or fails over the fetch of a problem's first full report.
fn drive_fetch(
    config: &ConsolidationConfig,
    term: Term,
    now_ms: u64,
    problem: &mut AggregatorProblem,
    outputs: &mut VecDeque<ConsolidationOutput>,
    counters: &mut ConsolidationCounters,
    consider: &mut impl FnMut(u64),
) {
    if problem.fetch == Fetch::Idle {
        let candidate = problem
            .pending
            .values()
            .filter(|incident| !problem.fetch_failed.contains(&incident.report_id))
            .min_by(|a, b| (a.time_ms, &a.report_id).cmp(&(b.time_ms, &b.report_id)))
            .cloned();
        {
            let next = match candidate {
                Some(next) => Some(next),
                None => {
                    // Every origin failed once: start over, no sooner than a retry interval.
                    problem.fetch_failed.clear();
                    problem.upload_not_before_ms = now_ms + config.fetch_retry_ms;
                    None
                }
            };
            let Some(first) = next else {
                consider(now_ms + config.fetch_retry_ms);
                return;
            };
            if now_ms < problem.upload_not_before_ms {
                consider(problem.upload_not_before_ms);
                return;
            }
            outputs.push_back(ConsolidationOutput::Send {
                to: first.node.clone(),
                message: Message::FetchReport {
                    term,
                    report_id: first.report_id.clone(),
                },
            });
            problem.fetch = Fetch::Requested {
                report_id: first.report_id,
                origin: first.node,
                attempts: 1,
                retry_at_ms: now_ms + config.fetch_retry_ms,
                chunk_count: 0,
                offered: Vec::new(),
            };
            consider(now_ms + config.fetch_retry_ms);
        }
        return;
    }
    if let Some(failed) = advance_fetch(config, term, now_ms, &mut problem.fetch, outputs, consider)
    {
        if let Some(report_id) = failed {
            counters.fetches_failed += 1;
            problem.fetch_failed.insert(report_id);
        }
        problem.fetch = Fetch::Idle;
        consider(now_ms);
    }
}

/// Retries the fetches of the peers' log bundles; one that fails is given up (the report
/// goes up without those logs).
fn drive_log_fetches(
    config: &ConsolidationConfig,
    term: Term,
    now_ms: u64,
    problem: &mut AggregatorProblem,
    outputs: &mut VecDeque<ConsolidationOutput>,
    counters: &mut ConsolidationCounters,
    consider: &mut impl FnMut(u64),
) {
    for logs in problem.logs.values_mut() {
        let PeerLogs::Fetching(fetch) = logs else {
            continue;
        };
        if advance_fetch(config, term, now_ms, fetch, outputs, consider).is_some() {
            counters.fetches_failed += 1;
            *logs = PeerLogs::Unavailable;
        }
    }
    problem.settle_logs();
}

/// Retries a fetch under way. `Some(Some(id))`: it failed at its origin; `Some(None)`:
/// the shell did not answer in time; either way it starts over.
fn advance_fetch(
    config: &ConsolidationConfig,
    term: Term,
    now_ms: u64,
    fetch: &mut Fetch,
    outputs: &mut VecDeque<ConsolidationOutput>,
    consider: &mut impl FnMut(u64),
) -> Option<Option<ReportId>> {
    match fetch {
        Fetch::Idle | Fetch::Fetched { .. } => None,
        Fetch::Requested {
            report_id,
            origin,
            attempts,
            retry_at_ms,
            offered,
            ..
        } => {
            if now_ms < *retry_at_ms {
                consider(*retry_at_ms);
                return None;
            }
            if *attempts >= config.fetch_attempts_per_origin_max {
                return Some(Some(report_id.clone()));
            }
            *attempts += 1;
            offered.clear();
            *retry_at_ms = now_ms + config.fetch_retry_ms;
            consider(*retry_at_ms);
            outputs.push_back(ConsolidationOutput::Send {
                to: origin.clone(),
                message: Message::FetchReport {
                    term,
                    report_id: report_id.clone(),
                },
            });
            None
        }
        Fetch::AwaitingShell { give_up_at_ms, .. } => {
            if now_ms >= *give_up_at_ms {
                Some(None)
            } else {
                consider(*give_up_at_ms);
                None
            }
        }
        Fetch::Transferring {
            report_id,
            origin,
            wanted,
            attempts,
            retry_at_ms,
        } => {
            if now_ms < *retry_at_ms {
                consider(*retry_at_ms);
                return None;
            }
            if *attempts >= config.fetch_attempts_per_origin_max {
                return Some(Some(report_id.clone()));
            }
            *attempts += 1;
            *retry_at_ms = now_ms + config.fetch_retry_ms;
            consider(*retry_at_ms);
            outputs.extend(chunk_wants(origin, report_id, wanted));
            None
        }
    }
}

impl AggregatorProblem {
    /// The report fetch and every log bundle fetch under way.
    fn fetches_mut(&mut self) -> impl Iterator<Item = &mut Fetch> {
        std::iter::once(&mut self.fetch).chain(self.logs.values_mut().filter_map(
            |logs| match logs {
                PeerLogs::Fetching(fetch) => Some(fetch),
                _ => None,
            },
        ))
    }

    /// Turns finished log fetches into ready bundles.
    fn settle_logs(&mut self) {
        for logs in self.logs.values_mut() {
            if let PeerLogs::Fetching(Fetch::Fetched { report_id }) = logs {
                *logs = PeerLogs::Ready(report_id.clone());
            }
        }
    }

    /// True when every asked peer answered and its bundle is fetched or given up.
    fn logs_settled(&self) -> bool {
        self.logs
            .values()
            .all(|logs| matches!(logs, PeerLogs::Ready(_) | PeerLogs::Unavailable))
    }
}

/// One `ReportChunks` page as it arrived.
struct FetchPage<'a> {
    from: &'a NodeId,
    report_id: &'a ReportId,
    chunk_count: u32,
    offset: u32,
    chunk_ids: &'a [ChunkId],
}

/// Adds a page to a fetch waiting for its chunk list; once the list is whole, asks the
/// shell which chunks the store lacks.
fn fetch_take_page(
    fetch: &mut Fetch,
    now_ms: u64,
    page: FetchPage<'_>,
    shell_answer_timeout_ms: u64,
) -> Option<ConsolidationOutput> {
    let Fetch::Requested {
        report_id: requested,
        origin,
        chunk_count,
        offered,
        ..
    } = fetch
    else {
        return None;
    };
    if requested != page.report_id || origin != page.from {
        return None;
    }
    // Pages arrive in order over one stream; a page out of order restarts the list.
    if page.offset as usize != offered.len()
        || (page.offset > 0 && *chunk_count != page.chunk_count)
    {
        offered.clear();
        if page.offset != 0 {
            return None;
        }
    }
    *chunk_count = page.chunk_count;
    offered.extend_from_slice(page.chunk_ids);
    debug_assert!(offered.len() <= CHUNKS_PER_REPORT_MAX);
    if offered.len() < *chunk_count as usize {
        return None;
    }
    let chunk_ids = std::mem::take(offered);
    if chunk_ids.is_empty() {
        *fetch = Fetch::Fetched {
            report_id: page.report_id.clone(),
        };
        None
    } else {
        *fetch = Fetch::AwaitingShell {
            report_id: page.report_id.clone(),
            origin: page.from.clone(),
            give_up_at_ms: now_ms + shell_answer_timeout_ms,
        };
        Some(ConsolidationOutput::ChunksOffered {
            report_id: page.report_id.clone(),
            chunk_ids,
        })
    }
}

/// The shell named the chunks the store lacks: want them from the origin (or done).
fn fetch_chunks_missing(
    fetch: &mut Fetch,
    now_ms: u64,
    report_id: &ReportId,
    missing: &[ChunkId],
    fetch_retry_ms: u64,
) -> Vec<ConsolidationOutput> {
    let Fetch::AwaitingShell {
        report_id: awaited,
        origin,
        ..
    } = fetch
    else {
        return Vec::new();
    };
    if awaited != report_id {
        return Vec::new();
    }
    if missing.is_empty() {
        *fetch = Fetch::Fetched {
            report_id: report_id.clone(),
        };
        return Vec::new();
    }
    let origin = origin.clone();
    let wanted: BTreeSet<ChunkId> = missing.iter().copied().collect();
    let sends = chunk_wants(&origin, report_id, &wanted);
    *fetch = Fetch::Transferring {
        report_id: report_id.clone(),
        origin,
        wanted,
        attempts: 1,
        retry_at_ms: now_ms + fetch_retry_ms,
    };
    sends
}

/// Whether a fetch took a chunk.
enum ChunkTaken {
    /// Not one it wants.
    No,
    /// Wanted, but its bytes do not hash to its id.
    Rejected,
    /// Wanted and verified: store it.
    Yes,
}

fn fetch_take_chunk(
    fetch: &mut Fetch,
    from: &NodeId,
    report_id: &ReportId,
    chunk_id: ChunkId,
    bytes: &[u8],
) -> ChunkTaken {
    let Fetch::Transferring {
        report_id: fetching,
        origin,
        wanted,
        attempts,
        ..
    } = fetch
    else {
        return ChunkTaken::No;
    };
    if fetching != report_id || origin != from || !wanted.contains(&chunk_id) {
        return ChunkTaken::No;
    }
    if ChunkId::of(bytes) != chunk_id {
        return ChunkTaken::Rejected;
    }
    wanted.remove(&chunk_id);
    *attempts = 1;
    if wanted.is_empty() {
        *fetch = Fetch::Fetched {
            report_id: report_id.clone(),
        };
    }
    ChunkTaken::Yes
}

/// True when `fetch` is getting `report_id` from `from` (so its failure there ends it).
fn fetch_is_from(fetch: &Fetch, from: &NodeId, report_id: &ReportId) -> bool {
    match fetch {
        Fetch::Requested {
            report_id: fetching,
            origin,
            ..
        }
        | Fetch::Transferring {
            report_id: fetching,
            origin,
            ..
        } => fetching == report_id && origin == from,
        _ => false,
    }
}

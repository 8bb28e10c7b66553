//! A cluster node: membership, election and consolidation composed behind one
//! bytes-in, outputs-out interface. Its outputs leave only through the
//! [`Driver`](crate::driver::Driver), which the daemon's mesh actor, the simulator and
//! `protocol/tests/cluster.rs` all use: one shell protocol, not three.
//!
//! Invariants:
//! - No I/O, no clock, no threads; randomness only from the seed given to the driver.
//! - Peer bytes enter only through [`Node::handle_datagram`]: decoded with the size limit,
//!   checked for the cluster id and for the sender the transport authenticated.
//! - Outputs come out in order. **Anything after a `Persist` is released only once that
//!   persist is durable** (the election's rule, kept across the composition, enforced by
//!   the driver; every election message names the durable vote it rests on,
//!   [`VoteNeeded`], and the driver checks it).
//! - Every message is built here, never by a shell: the shell reads what the node asks for
//!   (a report's chunk list, chunks, a log bundle) and hands the data back
//!   ([`Node::report_read`], [`Node::chunks_read`], [`Node::logs_gathered`]); the node
//!   pages it: `ReportChunks` of `wire::CHUNK_IDS_PER_MESSAGE_MAX` ids, one `ChunkData` per
//!   chunk (its bytes shared, not copied), one `LogReady`.
//! - Messages a node sends itself (the aggregator announcing its own incidents, fetching
//!   its own report) never leave it: they are handled in the same call, in a bounded loop.

use std::collections::VecDeque;

use crate::consolidation::{
    Consolidation, ConsolidationConfig, ConsolidationError, ConsolidationOutput, ConsolidationRole,
    LogsRequest, ProblemStatus, ReportRead, ReportRequest, UploadOutcome,
};
use crate::election::{
    Election, ElectionConfig, ElectionConfigError, ElectionOutput, PersistedVote, Role, VoteNeeded,
};
use crate::membership::{
    MemberStatus, Membership, MembershipConfig, MembershipError, MembershipOutput,
};
use crate::wire::{
    Announcement, ChunkId, ClusterId, DecodeError, EncodeError, Encoded, Envelope, Feedback,
    MESSAGE_BYTES_MAX, Message, NodeId, ReportId, Term, decode_shared, encode_parts,
};

/// Self-addressed messages handled in one call at most (a node fetching its own report
/// and announcing to itself needs a handful; more means a loop).
const LOOPBACK_MESSAGES_PER_CALL_MAX: usize = 100_000;

/// Everything a node is configured with.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node.
    pub node: NodeId,
    /// The cluster.
    pub cluster_id: ClusterId,
    /// Grows across restarts (persisted boot counter or start time in ms).
    pub generation: u64,
    /// The configured members (this node included) and election timings.
    pub election: ElectionConfig,
    /// SWIM timings.
    pub membership: MembershipConfig,
    /// Consolidation limits and timings.
    pub consolidation: ConsolidationConfig,
    /// The largest datagram accepted from a peer.
    pub message_bytes_max: usize,
}

impl NodeConfig {
    /// The defaults for `node` in a cluster of `members`.
    pub fn new(
        node: NodeId,
        cluster_id: ClusterId,
        members: Vec<NodeId>,
        generation: u64,
    ) -> NodeConfig {
        NodeConfig {
            node,
            consolidation: ConsolidationConfig::new(cluster_id.clone()),
            cluster_id,
            generation,
            election: ElectionConfig::default_timings(members),
            membership: MembershipConfig::default(),
            message_bytes_max: MESSAGE_BYTES_MAX,
        }
    }
}

/// What the node asks of its shell, in order; the [`Driver`](crate::driver::Driver)
/// releases them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NodeOutput {
    /// Make term and vote durable before releasing any later output.
    Persist(PersistedVote),
    /// Send these bytes to a member.
    Transmit {
        /// The member.
        to: NodeId,
        /// An encoded [`Envelope`], in parts (a chunk's bytes are not copied into it).
        bytes: Encoded,
        /// The durable vote an election message rests on.
        vote_needed: Option<VoteNeeded>,
    },
    /// The known aggregator changed.
    AggregatorChanged {
        /// The term.
        term: Term,
        /// The aggregator, if any.
        aggregator: Option<NodeId>,
    },
    /// A consolidation effect other than a message (reads, uploads, chunk work).
    Consolidation(ConsolidationOutput),
    /// A member came up or went down, or this node rejoined.
    Membership(MembershipOutput),
}

/// Why an input was refused; the node carries on.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The bytes do not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// From another cluster.
    #[error("datagram for cluster {0:?}")]
    WrongCluster(ClusterId),
    /// The envelope names another sender than the transport authenticated.
    #[error("datagram claims to be from {claimed} but came from {authenticated}")]
    SenderMismatch {
        /// Who the envelope says.
        claimed: NodeId,
        /// Who the transport says.
        authenticated: NodeId,
    },
    /// SWIM refused the packet.
    #[error(transparent)]
    Membership(#[from] MembershipError),
    /// A message could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// Consolidation refused an announcement or a shell's answer.
    #[error(transparent)]
    Consolidation(#[from] ConsolidationError),
}

/// What `crashmesh status` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// The current term.
    pub term: Term,
    /// The aggregator known, if any.
    pub aggregator: Option<NodeId>,
    /// This node's role.
    pub role: Role,
    /// Every member with its SWIM state.
    pub members: Vec<MemberStatus>,
    /// This node's incidents not yet known uploaded.
    pub pending_incidents: usize,
    /// The problems this node aggregates (empty unless aggregator).
    pub problems: Vec<ProblemStatus>,
}

/// One cluster node's protocol state.
#[derive(Debug)]
pub struct Node {
    config: NodeConfig,
    election: Election,
    membership: Membership,
    consolidation: Consolidation,
    outputs: VecDeque<NodeOutput>,
    loopback: VecDeque<Message>,
}

impl Node {
    /// A node (re)starting with its persisted vote; it announces itself to the other
    /// configured members (the SWIM seeds). The driver builds it.
    pub(crate) fn new(
        config: NodeConfig,
        persisted: PersistedVote,
        seed: u64,
        now_ms: u64,
    ) -> Result<Node, NodeConfigError> {
        let mut rng = crate::rng::DeterministicRng::new(seed);
        let election = Election::new(
            config.node.clone(),
            config.election.clone(),
            persisted,
            rng.next_u64(),
            now_ms,
        )?;
        let mut membership = Membership::new(
            config.node.clone(),
            config.generation,
            config.membership.clone(),
            rng.next_u64(),
        )?;
        membership.join(now_ms, &config.election.members);
        let consolidation = Consolidation::new(config.node.clone(), config.consolidation.clone());
        let mut node = Node {
            config,
            election,
            membership,
            consolidation,
            outputs: VecDeque::new(),
            loopback: VecDeque::new(),
        };
        node.collect(now_ms);
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> &NodeId {
        &self.config.node
    }

    /// The election state machine (read only).
    pub fn election(&self) -> &Election {
        &self.election
    }

    /// The consolidation state machine (read only).
    pub fn consolidation(&self) -> &Consolidation {
        &self.consolidation
    }

    /// What `crashmesh status` shows.
    pub fn status(&self) -> NodeStatus {
        NodeStatus {
            term: self.election.term(),
            aggregator: self.election.aggregator().cloned(),
            role: self.election.role(),
            members: self.membership.members(),
            pending_incidents: self.consolidation.pending_len(),
            problems: self.consolidation.problems(),
        }
    }

    /// The next output, in order (for the driver alone: it holds what follows a persist).
    pub(crate) fn poll_output(&mut self) -> Option<NodeOutput> {
        self.outputs.pop_front()
    }

    /// When [`Node::handle_timeout`] must next be called.
    pub fn next_deadline_ms(&self) -> u64 {
        let mut deadline_ms = self.election.next_deadline_ms();
        if let Some(membership_ms) = self.membership.next_deadline_ms() {
            deadline_ms = deadline_ms.min(membership_ms);
        }
        if let Some(consolidation_ms) = self.consolidation.next_deadline_ms() {
            deadline_ms = deadline_ms.min(consolidation_ms);
        }
        deadline_ms
    }

    /// Bytes from `peer` (as the transport authenticated it). A chunk's bytes are kept
    /// in them, not copied ([`crate::wire::decode_shared`]).
    pub fn handle_datagram(
        &mut self,
        now_ms: u64,
        peer: &NodeId,
        bytes: &bytes::Bytes,
    ) -> Result<(), NodeError> {
        let envelope = decode_shared(bytes, self.config.message_bytes_max)?;
        if envelope.cluster_id != self.config.cluster_id {
            return Err(NodeError::WrongCluster(envelope.cluster_id));
        }
        if &envelope.from != peer {
            return Err(NodeError::SenderMismatch {
                claimed: envelope.from,
                authenticated: peer.clone(),
            });
        }
        let result = self.dispatch(now_ms, peer, &envelope.message);
        self.collect(now_ms);
        result
    }

    /// Acts on the passage of time.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.membership.handle_timeout(now_ms);
        if self.election.next_deadline_ms() <= now_ms {
            self.election.handle_timeout(now_ms);
        }
        self.collect(now_ms);
        self.consolidation.handle_timeout(now_ms);
        self.collect(now_ms);
    }

    /// A new incident of this node to announce (idempotent by report id).
    pub fn announce(&mut self, now_ms: u64, announcement: Announcement) -> Result<(), NodeError> {
        let result = self.consolidation.announce(now_ms, announcement);
        self.collect(now_ms);
        Ok(result?)
    }

    /// The shell has a connection to `peer` again: announcements waiting for it go now.
    pub fn peer_reachable(&mut self, now_ms: u64, peer: &NodeId) {
        self.consolidation.peer_reachable(now_ms, peer);
        self.collect(now_ms);
    }

    /// The shell's answer to `ChunksOffered`: the chunks its store lacks.
    pub fn chunks_missing(&mut self, now_ms: u64, report_id: &ReportId, missing: Vec<ChunkId>) {
        self.consolidation
            .chunks_missing(now_ms, report_id, missing);
        self.collect(now_ms);
    }

    /// How an upload ended.
    pub fn upload_finished(&mut self, now_ms: u64, upload_id: u64, outcome: UploadOutcome) {
        self.consolidation
            .upload_finished(now_ms, upload_id, outcome);
        self.collect(now_ms);
    }

    /// Aggregator: the endpoint's answer about a problem, passed on to its nodes.
    pub fn upload_feedback(&mut self, now_ms: u64, signature: &str, feedback: Feedback) {
        self.consolidation
            .upload_feedback(now_ms, signature, feedback);
        self.collect(now_ms);
    }

    /// The shell read the chunk list a peer asked for (see
    /// [`Consolidation::report_read`]); the node pages it to the peer.
    pub fn report_read(
        &mut self,
        now_ms: u64,
        request: ReportRequest,
        read: ReportRead,
    ) -> Result<(), NodeError> {
        let result = self.consolidation.report_read(request, read);
        self.collect(now_ms);
        Ok(result?)
    }

    /// The shell read chunks a peer wants (see [`Consolidation::chunks_read`]); each goes
    /// as one `ChunkData`, its bytes shared with the shell's read.
    pub fn chunks_read(
        &mut self,
        now_ms: u64,
        to: &NodeId,
        report_id: &ReportId,
        chunks: Vec<(ChunkId, bytes::Bytes)>,
    ) -> Result<(), NodeError> {
        let result = self.consolidation.chunks_read(to, report_id, chunks);
        self.collect(now_ms);
        Ok(result?)
    }

    /// The shell gathered this node's logs a peer asked for (see
    /// [`Consolidation::logs_gathered`]).
    pub fn logs_gathered(
        &mut self,
        now_ms: u64,
        request: LogsRequest,
        bundle: Option<ReportId>,
    ) -> Result<(), NodeError> {
        let result = self.consolidation.logs_gathered(request, bundle);
        self.collect(now_ms);
        Ok(result?)
    }

    fn transmit(&mut self, to: NodeId, message: Message) -> Result<(), NodeError> {
        let vote_needed = VoteNeeded::of(&to, &message);
        let envelope = Envelope {
            cluster_id: self.config.cluster_id.clone(),
            from: self.config.node.clone(),
            message,
        };
        let bytes = encode_parts(&envelope)?;
        self.outputs.push_back(NodeOutput::Transmit {
            to,
            bytes,
            vote_needed,
        });
        Ok(())
    }

    fn dispatch(&mut self, now_ms: u64, from: &NodeId, message: &Message) -> Result<(), NodeError> {
        match message {
            Message::Membership { packet } => self.membership.handle_packet(now_ms, packet)?,
            Message::RequestVote { .. }
            | Message::Vote { .. }
            | Message::PreVote { .. }
            | Message::PreVoteReply { .. }
            | Message::Heartbeat { .. }
            | Message::HeartbeatAck { .. } => self.election.handle_message(now_ms, from, message),
            _ => self.consolidation.handle_message(now_ms, from, message),
        }
        Ok(())
    }

    /// Moves every sub-machine's outputs into ours, in order, until all are quiet.
    fn collect(&mut self, now_ms: u64) {
        let mut loopback_handled = 0;
        loop {
            let mut progressed = false;
            while let Some(output) = self.election.poll_output() {
                progressed = true;
                match output {
                    ElectionOutput::Persist(vote) => {
                        self.outputs.push_back(NodeOutput::Persist(vote))
                    }
                    ElectionOutput::Send { to, message } => {
                        // Election messages are small and valid by construction.
                        let _ = self.transmit(to, message);
                    }
                    ElectionOutput::AggregatorChanged { term, aggregator } => {
                        let role = if aggregator.as_ref() == Some(&self.config.node) {
                            ConsolidationRole::Aggregator { term }
                        } else {
                            ConsolidationRole::Follower {
                                term,
                                aggregator: aggregator.clone(),
                            }
                        };
                        self.outputs
                            .push_back(NodeOutput::AggregatorChanged { term, aggregator });
                        self.consolidation.set_role(now_ms, role);
                    }
                }
            }
            while let Some(output) = self.membership.poll_output() {
                progressed = true;
                match output {
                    MembershipOutput::Send { to, packet } => {
                        let _ = self.transmit(to, Message::Membership { packet });
                    }
                    event => self.outputs.push_back(NodeOutput::Membership(event)),
                }
            }
            while let Some(output) = self.consolidation.poll_output() {
                progressed = true;
                match output {
                    ConsolidationOutput::Send { to, message } => {
                        if to == self.config.node {
                            self.loopback.push_back(message);
                        } else {
                            let _ = self.transmit(to, message);
                        }
                    }
                    other => self.outputs.push_back(NodeOutput::Consolidation(other)),
                }
            }
            if let Some(message) = self.loopback.pop_front() {
                progressed = true;
                loopback_handled += 1;
                assert!(
                    loopback_handled <= LOOPBACK_MESSAGES_PER_CALL_MAX,
                    "loopback loop"
                );
                let own = self.config.node.clone();
                self.consolidation.handle_message(now_ms, &own, &message);
            }
            if !progressed {
                break;
            }
        }
    }
}

/// Why a node could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NodeConfigError {
    /// The election configuration is unusable.
    #[error(transparent)]
    Election(#[from] ElectionConfigError),
    /// The membership configuration is unusable.
    #[error(transparent)]
    Membership(#[from] MembershipError),
}

//! The one way a [`Node`]'s outputs leave it: the [`Driver`] owns the node and releases
//! its outputs, in order, through the [`Shell`] trait. The daemon's mesh actor, the
//! simulator and `protocol/tests/cluster.rs` each implement `Shell` (QUIC and redb, a
//! simulated network and disk, an in-test network); none of them orders, pages or builds
//! messages itself, so the simulator runs the daemon's shell rules, not a copy of them.
//!
//! Invariants:
//! - No I/O, no clock: the shell does the I/O when the driver calls it.
//! - Outputs are released in the order the node produced them, each once.
//! - **Anything after a `Persist` waits until it is durable.** The shell makes a vote
//!   durable at once ([`Persisting::Durable`]: a synchronous store) or later
//!   ([`Persisting::Pending`]: a commit on another thread, or a write that failed). Then
//!   [`Driver::release`] stops at it and returns [`Released::Blocked`] with its
//!   [`PersistToken`], and nothing more leaves until the shell calls
//!   [`Driver::persisted`] with that token. Inputs meanwhile are fine: their outputs queue
//!   behind the persist.
//! - The rule is checked, not only followed: the driver knows the last vote the shell made
//!   durable, and an election message whose [`VoteNeeded`] that vote does not cover (a
//!   vote or a candidacy that overtook its `Persist`) is a bug of the protocol, which
//!   panics before the message leaves. So does a `Persist` that goes back (a lower term,
//!   or a second vote in one term). The many-seed cluster tests and the simulator catch
//!   such a bug on every seed, not only the election's unit tests.
//! - The node asks the shell to read (a report's chunk list, chunks, its logs of a
//!   window), to check its store ([`Shell::chunks_offered`]) and to upload; the shell
//!   answers at once ([`Answer::Now`]: the driver hands the answer to the node and goes on
//!   releasing what it produced) or later ([`Answer::Later`]: through the node's method
//!   named on each [`Shell`] method, then [`Driver::release`] again). An upload is always
//!   answered later ([`Node::upload_finished`]).

use crate::cluster::{Node, NodeConfig, NodeConfigError, NodeError, NodeOutput};
use crate::consolidation::{
    ChunksRequest, ConsolidationOutput, LogsRequest, ReportRead, ReportRequest, UploadIncidents,
    UploadReport,
};
use crate::election::{PersistedVote, VoteNeeded};
use crate::membership::MembershipOutput;
use crate::wire::{ChunkId, Encoded, Feedback, NodeId, ReportId, Term};

/// Names one persist the shell makes durable later; handed back to [`Driver::persisted`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PersistToken(u64);

/// How the shell took a persist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persisting {
    /// Durable already: the release goes on.
    Durable,
    /// Not durable yet (being written, or the write failed and is tried again): the
    /// release stops here until [`Driver::persisted`].
    Pending,
}

/// The shell's answer to a request of the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer<T> {
    /// Here it is: the driver hands it to the node in the same release.
    Now(T),
    /// The shell answers later through the node's method (or, when it cannot read, not
    /// at all: the asking peer asks again).
    Later,
}

/// Where a release stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Released {
    /// Everything is out; nothing waits.
    Idle,
    /// Stopped at a persist the shell has not made durable yet.
    Blocked(PersistToken),
    /// The shell's process is gone ([`Shell::stopped`]); the rest goes with the node.
    Stopped,
}

/// What the node tells its shell that needs no answer: for the log, the status and the
/// simulator's measurements.
#[derive(Debug)]
pub enum Notice {
    /// The known aggregator changed.
    AggregatorChanged {
        /// The term.
        term: Term,
        /// The aggregator, if any.
        aggregator: Option<NodeId>,
    },
    /// A member became active.
    MemberUp(NodeId),
    /// A member was declared down.
    MemberDown(NodeId),
    /// This node was declared down and rejoined under a new generation.
    Rejoined {
        /// The new generation.
        generation: u64,
    },
    /// Aggregator: the endpoint refused this term; uploads stop until the next term.
    Fenced {
        /// The refused term.
        term: Term,
    },
    /// The aggregator passed on what the endpoint knows of a problem; keep it for
    /// `problems show`.
    Feedback {
        /// The problem.
        signature: String,
        /// The endpoint's answer.
        feedback: Feedback,
    },
    /// The node refused an answer the shell gave at once ([`Answer::Now`]): it breaks a
    /// wire limit (what broke it was not sent).
    AnswerRefused(NodeError),
}

/// What a node's surroundings do for it: durability, the network, the store and the
/// endpoint. Each method is one kind of output; the [`Driver`] calls them in the node's
/// order.
pub trait Shell {
    /// True once the shell's process is gone in the middle of a release (the simulator
    /// kills a node whose store failed): the driver stops releasing.
    fn stopped(&self) -> bool;

    /// Make term and vote durable. Nothing after it is released before it is.
    fn persist(&mut self, token: PersistToken, vote: &PersistedVote) -> Persisting;

    /// Send these bytes to a member (best effort: the protocol tolerates loss).
    fn transmit(&mut self, to: NodeId, bytes: Encoded);

    /// Node side: read the chunk list of a report or log bundle a peer asked for; answer
    /// later with [`Node::report_read`].
    fn read_report(&mut self, request: ReportRequest) -> Answer<ReportRead>;

    /// Node side: read these chunks (those it cannot read are left out); answer later
    /// with [`Node::chunks_read`], in as many batches as suits the shell's memory.
    fn read_chunks(&mut self, request: ChunksRequest) -> Answer<Vec<(ChunkId, bytes::Bytes)>>;

    /// Node side: gather this node's logs of the window into a bundle kept to be fetched
    /// like a report (`None`: no logs of the window); answer later with
    /// [`Node::logs_gathered`].
    fn gather_logs(&mut self, request: LogsRequest) -> Answer<Option<ReportId>>;

    /// Aggregator: the chunks of a report being fetched; answer with those the store
    /// lacks, later with [`Node::chunks_missing`]. The list is the report's whole: the
    /// upload of that report needs it.
    fn chunks_offered(
        &mut self,
        report_id: ReportId,
        chunk_ids: Vec<ChunkId>,
    ) -> Answer<Vec<ChunkId>>;

    /// Aggregator: store this verified chunk (its bytes hash to its id).
    fn store_chunk(&mut self, report_id: ReportId, chunk_id: ChunkId, bytes: bytes::Bytes);

    /// Aggregator: upload a new problem; answer with [`Node::upload_finished`].
    fn upload_report(&mut self, upload: UploadReport);

    /// Aggregator: upload later incidents; answer with [`Node::upload_finished`].
    fn upload_incidents(&mut self, upload: UploadIncidents);

    /// Node side: the endpoint has this incident; the spool may release its evidence.
    fn uploaded(&mut self, report_id: ReportId);

    /// Something to log or record; no answer.
    fn notice(&mut self, notice: Notice);
}

/// Why the driver refused a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// [`Driver::persisted`] named a persist the driver does not wait for.
    #[error("persist {token:?} is not the one the driver waits for ({waiting:?})")]
    UnknownPersist {
        /// The token given.
        token: PersistToken,
        /// The token waited for, if any.
        waiting: Option<PersistToken>,
    },
}

/// Owns a [`Node`] and releases its outputs through a [`Shell`] (see the module
/// documentation).
#[derive(Debug)]
pub struct Driver {
    node: Node,
    /// The last vote the shell made durable.
    durable: PersistedVote,
    /// The persist the shell is making durable: nothing after it leaves until then.
    waiting: Option<(PersistToken, PersistedVote)>,
    next_token: u64,
}

impl Driver {
    /// A node (re)starting with `persisted`, the vote its shell read back from disk; it
    /// announces itself to the other configured members (the SWIM seeds). Randomness
    /// comes only from `seed`.
    pub fn new(
        config: NodeConfig,
        persisted: PersistedVote,
        seed: u64,
        now_ms: u64,
    ) -> Result<Driver, NodeConfigError> {
        let node = Node::new(config, persisted.clone(), seed, now_ms)?;
        Ok(Driver {
            node,
            durable: persisted,
            waiting: None,
            next_token: 0,
        })
    }

    /// The node (its state, read only).
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The node, for inputs and answers; their outputs wait for [`Driver::release`].
    pub fn node_mut(&mut self) -> &mut Node {
        &mut self.node
    }

    /// The last vote the shell made durable.
    pub fn durable_vote(&self) -> &PersistedVote {
        &self.durable
    }

    /// The shell made the persist of `token` durable: what follows it may go (call
    /// [`Driver::release`]).
    pub fn persisted(&mut self, token: PersistToken) -> Result<(), DriverError> {
        match self.waiting.take() {
            Some((waited, vote)) if waited == token => {
                self.durable = vote;
                Ok(())
            }
            waiting => {
                let waited = waiting.as_ref().map(|(waited, _)| *waited);
                self.waiting = waiting;
                Err(DriverError::UnknownPersist {
                    token,
                    waiting: waited,
                })
            }
        }
    }

    /// Carries out the node's outputs through `shell`, in order, until none is left, a
    /// persist is not durable yet, or the shell stopped. `now_ms` is the node's clock, for
    /// the answers the shell gives at once.
    pub fn release(&mut self, now_ms: u64, shell: &mut impl Shell) -> Released {
        loop {
            if let Some((token, _)) = &self.waiting {
                return Released::Blocked(*token);
            }
            if shell.stopped() {
                return Released::Stopped;
            }
            let Some(output) = self.node.poll_output() else {
                return Released::Idle;
            };
            match output {
                NodeOutput::Persist(vote) => self.persist(vote, shell),
                NodeOutput::Transmit {
                    to,
                    bytes,
                    vote_needed,
                } => {
                    if let Some(needed) = vote_needed {
                        self.assert_durable(&to, &needed);
                    }
                    shell.transmit(to, bytes);
                }
                NodeOutput::AggregatorChanged { term, aggregator } => {
                    shell.notice(Notice::AggregatorChanged { term, aggregator })
                }
                NodeOutput::Membership(output) => shell.notice(match output {
                    MembershipOutput::MemberUp(member) => Notice::MemberUp(member),
                    MembershipOutput::MemberDown(member) => Notice::MemberDown(member),
                    MembershipOutput::Rejoined { generation } => Notice::Rejoined { generation },
                    MembershipOutput::Send { .. } => {
                        unreachable!("the node turns membership sends into transmits")
                    }
                }),
                NodeOutput::Consolidation(output) => self.carry_out(now_ms, output, shell),
            }
        }
    }

    fn persist(&mut self, vote: PersistedVote, shell: &mut impl Shell) {
        assert!(
            vote.term > self.durable.term
                || (vote.term == self.durable.term
                    && (self.durable.voted_for.is_none()
                        || self.durable.voted_for == vote.voted_for)),
            "{}: persisting {vote:?} after {:?} went back",
            self.node.id(),
            self.durable
        );
        let token = PersistToken(self.next_token);
        self.next_token += 1;
        match shell.persist(token, &vote) {
            Persisting::Durable => self.durable = vote,
            Persisting::Pending => self.waiting = Some((token, vote)),
        }
    }

    /// An election message leaves only once the vote it rests on is durable.
    fn assert_durable(&self, to: &NodeId, needed: &VoteNeeded) {
        assert!(
            needed.is_met_by(&self.durable),
            "{}: an election message to {to} needs {needed:?} durable, but only {:?} is: \
             it overtook its persist",
            self.node.id(),
            self.durable
        );
    }

    fn carry_out(&mut self, now_ms: u64, output: ConsolidationOutput, shell: &mut impl Shell) {
        let answered = match output {
            ConsolidationOutput::Send { .. } => {
                unreachable!("the node turns consolidation sends into transmits")
            }
            ConsolidationOutput::ReadReport(request) => match shell.read_report(request.clone()) {
                Answer::Now(read) => self.node.report_read(now_ms, request, read),
                Answer::Later => Ok(()),
            },
            ConsolidationOutput::ReadChunks(request) => {
                let (to, report_id) = (request.to.clone(), request.report_id.clone());
                match shell.read_chunks(request) {
                    Answer::Now(chunks) => self.node.chunks_read(now_ms, &to, &report_id, chunks),
                    Answer::Later => Ok(()),
                }
            }
            ConsolidationOutput::GatherLogs(request) => match shell.gather_logs(request.clone()) {
                Answer::Now(bundle) => self.node.logs_gathered(now_ms, request, bundle),
                Answer::Later => Ok(()),
            },
            ConsolidationOutput::ChunksOffered {
                report_id,
                chunk_ids,
            } => {
                if let Answer::Now(missing) = shell.chunks_offered(report_id.clone(), chunk_ids) {
                    self.node.chunks_missing(now_ms, &report_id, missing);
                }
                Ok(())
            }
            ConsolidationOutput::StoreChunk {
                report_id,
                chunk_id,
                bytes,
            } => {
                shell.store_chunk(report_id, chunk_id, bytes);
                Ok(())
            }
            ConsolidationOutput::UploadReport(upload) => {
                shell.upload_report(upload);
                Ok(())
            }
            ConsolidationOutput::UploadIncidents(upload) => {
                shell.upload_incidents(upload);
                Ok(())
            }
            ConsolidationOutput::Uploaded { report_id } => {
                shell.uploaded(report_id);
                Ok(())
            }
            ConsolidationOutput::Fenced { term } => {
                shell.notice(Notice::Fenced { term });
                Ok(())
            }
            ConsolidationOutput::Feedback {
                signature,
                feedback,
            } => {
                shell.notice(Notice::Feedback {
                    signature,
                    feedback,
                });
                Ok(())
            }
        };
        if let Err(error) = answered {
            shell.notice(Notice::AnswerRefused(error));
        }
    }
}

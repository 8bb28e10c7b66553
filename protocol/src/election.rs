//! Aggregator election: Raft's terms and votes, without a replicated log.
//!
//! Invariants:
//! - No I/O, no clock, no threads: every input carries `now_ms`; randomness (election
//!   timeouts) comes only from the [`DeterministicRng`] seeded at construction.
//! - Outputs come out of [`Election::poll_output`] in order. **A `Persist` output must be
//!   durable before any output after it is released**: the shell writes term and vote
//!   (redb, fsync), then sends the messages queued behind it. A vote or a candidacy is
//!   never visible to a peer before it is on disk, so a restarted node cannot vote twice
//!   in one term.
//! - A node wins only with the votes of a majority of the CONFIGURED members (not of the
//!   live ones), so a minority partition elects nobody and two winners in one term would
//!   need a voter that voted twice: at most one aggregator per term.
//! - Nodes configured with `may_be_aggregator = false` vote but never stand.
//! - Pre-vote (Raft thesis §9.6): when its election timeout passes, a node first asks
//!   every member whether it would vote for it in the next term (`PreVote`), changing
//!   nothing on either side; only with a majority of yes does it raise its term and stand.
//!   A node that cannot win (cut off in a minority) therefore keeps its term, and when
//!   it comes back it follows the aggregator instead of forcing it out with a higher
//!   term. A `PreVoteReply` carrying a higher term is adopted, so a node that fell
//!   behind catches up.
//! - The aggregator holds its role by heartbeats; it steps down when it sees a higher
//!   term, and when no majority has acknowledged a heartbeat sent within `lease_ms`.
//!   Followers refuse to vote while they heard the aggregator within
//!   `election_timeout_min_ms`; with `lease_ms <= election_timeout_min_ms` an old
//!   aggregator's lease ends before a majority can elect the next one (clock rates
//!   assumed equal). Fencing by term at the endpoint covers whatever clocks do.
//! - The output queue is bounded: one input yields at most one message per member plus
//!   a persist and an event, and the shell drains after each input.
//!
//! Default timings ([`ElectionConfig::default_timings`]): heartbeat every 500 ms, election
//! timeout drawn from 1500..3000 ms, lease 1500 ms. A killed aggregator is replaced after
//! at most 3 s of silence plus two round trips (pre-vote, vote), plus another 1.5–3 s
//! per split vote: a new
//! aggregator is usually in place within 5 s, well inside the 10 s goal for uploading.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::rng::DeterministicRng;
use crate::wire::{Message, NodeId, Term};

/// The configured members and the timings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionConfig {
    /// Every configured member, this node included; majorities count over this list.
    pub members: Vec<NodeId>,
    /// False for nodes configured `aggregator = false`: they vote but never stand.
    pub may_be_aggregator: bool,
    /// How often the aggregator sends heartbeats.
    pub heartbeat_interval_ms: u64,
    /// The shortest election timeout; also how long a follower refuses votes after
    /// hearing the aggregator.
    pub election_timeout_min_ms: u64,
    /// The longest election timeout (exclusive).
    pub election_timeout_max_ms: u64,
    /// How long a majority's acknowledgement of a heartbeat keeps the aggregator in role.
    pub lease_ms: u64,
}

impl ElectionConfig {
    /// The default timings for `members` (see the module documentation for why).
    pub fn default_timings(members: Vec<NodeId>) -> ElectionConfig {
        ElectionConfig {
            members,
            may_be_aggregator: true,
            heartbeat_interval_ms: 500,
            election_timeout_min_ms: 1500,
            election_timeout_max_ms: 3000,
            lease_ms: 1500,
        }
    }
}

/// What the shell keeps durable: the current term and the vote given in it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PersistedVote {
    /// The current term.
    pub term: Term,
    /// Who this node voted for in `term`, if anyone.
    pub voted_for: Option<NodeId>,
}

/// The durable vote an election message rests on: it may leave this node only once the
/// vote on disk covers it. A vote granted, a candidacy and a heartbeat rest on their term
/// with that vote given; the other election messages on their term. Every election
/// message carries the sender's term as persisted when it was queued, behind its
/// `Persist`, so the [`Driver`](crate::driver::Driver) can check that none overtook one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoteNeeded {
    /// The term the message carries.
    pub term: Term,
    /// The vote it needs given in that term, if any.
    pub voted_for: Option<NodeId>,
}

impl VoteNeeded {
    /// What `message` to `to` rests on; `None` for a message outside the election (and
    /// for `PreVote`, which asks without changing anything).
    pub fn of(to: &NodeId, message: &Message) -> Option<VoteNeeded> {
        let (term, voted_for) = match message {
            Message::RequestVote { term, candidate } => (*term, Some(candidate.clone())),
            Message::Heartbeat {
                term, aggregator, ..
            } => (*term, Some(aggregator.clone())),
            Message::Vote {
                term,
                granted: true,
            } => (*term, Some(to.clone())),
            Message::Vote {
                term,
                granted: false,
            }
            | Message::HeartbeatAck { term, .. }
            | Message::PreVoteReply { term, .. } => (*term, None),
            _ => return None,
        };
        Some(VoteNeeded { term, voted_for })
    }

    /// True when `durable`, the vote on disk, covers it: a later term, or this term with
    /// the vote it needs.
    pub fn is_met_by(&self, durable: &PersistedVote) -> bool {
        durable.term > self.term
            || (durable.term == self.term
                && (self.voted_for.is_none() || durable.voted_for == self.voted_for))
    }
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElectionConfigError {
    /// This node is not among the configured members.
    #[error("node {0} is not among the configured members")]
    NotAMember(NodeId),
    /// A member is listed twice.
    #[error("member {0} is listed twice")]
    DuplicateMember(NodeId),
    /// Timings that break the lease argument or are empty.
    #[error("invalid timings: {0}")]
    InvalidTimings(&'static str),
}

/// What the election asks of the shell, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElectionOutput {
    /// Make this durable before releasing any later output.
    Persist(PersistedVote),
    /// Send a message to a member.
    Send {
        /// The member.
        to: NodeId,
        /// The message.
        message: Message,
    },
    /// The aggregator this node knows of changed (`None`: nobody known).
    AggregatorChanged {
        /// The current term.
        term: Term,
        /// The aggregator, if any.
        aggregator: Option<NodeId>,
    },
}

/// This node's part in the election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Follows an aggregator, or waits for one.
    Follower,
    /// Asks whether it would get votes, before standing (pre-vote).
    PreCandidate,
    /// Asks for votes.
    Candidate,
    /// Is the aggregator of the current term.
    Aggregator,
}

/// The election state machine of one node.
#[derive(Debug)]
pub struct Election {
    self_id: NodeId,
    config: ElectionConfig,
    rng: DeterministicRng,
    persisted: PersistedVote,
    role: Role,
    aggregator: Option<NodeId>,
    /// When this node last heard the aggregator of its term (followers).
    heard_aggregator_ms: Option<u64>,
    election_deadline_ms: u64,
    votes: BTreeSet<NodeId>,
    /// Who would vote for this node in the next term (pre-candidates).
    pre_votes: BTreeSet<NodeId>,
    election_started_ms: u64,
    /// Per member, the latest own `sent_ms` it acknowledged in this term (aggregator).
    acknowledged_sent_ms: BTreeMap<NodeId, u64>,
    lease_until_ms: u64,
    next_heartbeat_ms: u64,
    outputs: VecDeque<ElectionOutput>,
}

impl Election {
    /// A node starting (or restarting) as a follower with what it had persisted.
    pub fn new(
        self_id: NodeId,
        mut config: ElectionConfig,
        persisted: PersistedVote,
        seed: u64,
        now_ms: u64,
    ) -> Result<Election, ElectionConfigError> {
        config.members.sort();
        if let Some(pair) = config.members.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(ElectionConfigError::DuplicateMember(pair[0].clone()));
        }
        if !config.members.contains(&self_id) {
            return Err(ElectionConfigError::NotAMember(self_id));
        }
        if config.heartbeat_interval_ms == 0
            || config.election_timeout_min_ms >= config.election_timeout_max_ms
            || config.heartbeat_interval_ms >= config.lease_ms
        {
            return Err(ElectionConfigError::InvalidTimings(
                "need 0 < heartbeat_interval_ms < lease_ms and min < max election timeout",
            ));
        }
        if config.lease_ms > config.election_timeout_min_ms {
            return Err(ElectionConfigError::InvalidTimings(
                "lease_ms must not exceed election_timeout_min_ms",
            ));
        }
        let mut election = Election {
            self_id,
            config,
            rng: DeterministicRng::new(seed),
            persisted,
            role: Role::Follower,
            aggregator: None,
            heard_aggregator_ms: None,
            election_deadline_ms: 0,
            votes: BTreeSet::new(),
            pre_votes: BTreeSet::new(),
            election_started_ms: 0,
            acknowledged_sent_ms: BTreeMap::new(),
            lease_until_ms: 0,
            next_heartbeat_ms: 0,
            outputs: VecDeque::new(),
        };
        election.reset_election_deadline(now_ms);
        Ok(election)
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.persisted.term
    }

    /// This node's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The aggregator this node knows of in the current term.
    pub fn aggregator(&self) -> Option<&NodeId> {
        self.aggregator.as_ref()
    }

    /// `(term, aggregator)` for `crashmesh status`.
    pub fn status(&self) -> (Term, Option<NodeId>) {
        (self.persisted.term, self.aggregator.clone())
    }

    /// The term to stamp uploads with, while this node is the aggregator with a live lease.
    pub fn fencing_token(&self, now_ms: u64) -> Option<Term> {
        (self.role == Role::Aggregator && now_ms < self.lease_until_ms)
            .then_some(self.persisted.term)
    }

    /// What must be durable (for the shell's restart).
    pub fn persisted(&self) -> &PersistedVote {
        &self.persisted
    }

    /// The configured members, sorted.
    pub fn members(&self) -> &[NodeId] {
        &self.config.members
    }

    /// The next output, in order (see the module documentation about `Persist`).
    pub fn poll_output(&mut self) -> Option<ElectionOutput> {
        self.outputs.pop_front()
    }

    /// When [`Election::handle_timeout`] must next be called.
    pub fn next_deadline_ms(&self) -> u64 {
        match self.role {
            Role::Aggregator => self.next_heartbeat_ms.min(self.lease_until_ms),
            Role::Follower | Role::PreCandidate | Role::Candidate => self.election_deadline_ms,
        }
    }

    /// Acts on the passage of time: stand for election, send heartbeats, let a lease end.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        match self.role {
            Role::Aggregator => {
                if now_ms >= self.lease_until_ms {
                    self.become_follower(now_ms, None);
                    return;
                }
                if now_ms >= self.next_heartbeat_ms {
                    self.send_heartbeats(now_ms);
                }
            }
            Role::Follower | Role::PreCandidate | Role::Candidate => {
                if now_ms < self.election_deadline_ms {
                    return;
                }
                if self.aggregator.is_some() {
                    self.aggregator = None;
                    self.emit_aggregator_changed();
                }
                if self.config.may_be_aggregator {
                    self.start_pre_vote(now_ms);
                } else {
                    self.role = Role::Follower;
                    self.reset_election_deadline(now_ms);
                }
            }
        }
    }

    /// Handles an election message from `from` (other messages are ignored).
    pub fn handle_message(&mut self, now_ms: u64, from: &NodeId, message: &Message) {
        if from == &self.self_id || self.config.members.binary_search(from).is_err() {
            return;
        }
        match message {
            Message::RequestVote { term, candidate } => {
                if candidate != from {
                    return;
                }
                self.handle_request_vote(now_ms, from, *term);
            }
            Message::Vote { term, granted } => self.handle_vote(now_ms, from, *term, *granted),
            Message::PreVote { term, candidate } => {
                if candidate != from {
                    return;
                }
                self.handle_pre_vote(now_ms, from, *term);
            }
            Message::PreVoteReply {
                for_term,
                term,
                granted,
            } => self.handle_pre_vote_reply(now_ms, from, *for_term, *term, *granted),
            Message::Heartbeat {
                term,
                aggregator,
                sent_ms,
            } => {
                if aggregator != from {
                    return;
                }
                self.handle_heartbeat(now_ms, from, *term, *sent_ms);
            }
            Message::HeartbeatAck { term, echo_sent_ms } => {
                self.handle_heartbeat_ack(now_ms, from, *term, *echo_sent_ms)
            }
            _ => {}
        }
    }

    fn majority(&self) -> usize {
        self.config.members.len() / 2 + 1
    }

    fn reset_election_deadline(&mut self, now_ms: u64) {
        let timeout_ms = self.rng.range_u64(
            self.config.election_timeout_min_ms,
            self.config.election_timeout_max_ms,
        );
        self.election_deadline_ms = now_ms + timeout_ms;
    }

    fn emit_aggregator_changed(&mut self) {
        self.outputs.push_back(ElectionOutput::AggregatorChanged {
            term: self.persisted.term,
            aggregator: self.aggregator.clone(),
        });
    }

    fn persist(&mut self) {
        self.outputs
            .push_back(ElectionOutput::Persist(self.persisted.clone()));
    }

    fn send(&mut self, to: NodeId, message: Message) {
        self.outputs.push_back(ElectionOutput::Send { to, message });
    }

    /// Adopts a higher term seen from a peer: no vote yet, follower. Persisted.
    fn adopt_term(&mut self, now_ms: u64, term: Term) {
        debug_assert!(term > self.persisted.term);
        self.persisted = PersistedVote {
            term,
            voted_for: None,
        };
        self.persist();
        let had_aggregator = self.aggregator.is_some();
        let was_leading = self.role != Role::Follower;
        self.role = Role::Follower;
        self.aggregator = None;
        self.heard_aggregator_ms = None;
        self.votes.clear();
        self.pre_votes.clear();
        self.acknowledged_sent_ms.clear();
        if had_aggregator || was_leading {
            self.emit_aggregator_changed();
        }
        if was_leading {
            self.reset_election_deadline(now_ms);
        }
    }

    fn become_follower(&mut self, now_ms: u64, aggregator: Option<NodeId>) {
        let changed = self.aggregator != aggregator;
        self.role = Role::Follower;
        self.aggregator = aggregator;
        self.votes.clear();
        self.pre_votes.clear();
        self.acknowledged_sent_ms.clear();
        self.reset_election_deadline(now_ms);
        if changed {
            self.emit_aggregator_changed();
        }
    }

    /// Asks every member whether it would vote for this node in the next term, without
    /// raising the term: only with a majority of yes does the node stand.
    fn start_pre_vote(&mut self, now_ms: u64) {
        debug_assert!(self.config.may_be_aggregator);
        self.role = Role::PreCandidate;
        self.aggregator = None;
        self.heard_aggregator_ms = None;
        self.votes.clear();
        self.pre_votes = BTreeSet::from([self.self_id.clone()]);
        self.reset_election_deadline(now_ms);
        if self.pre_votes.len() >= self.majority() {
            self.start_election(now_ms);
            return;
        }
        let request = Message::PreVote {
            term: self.persisted.term + 1,
            candidate: self.self_id.clone(),
        };
        for member in self.config.members.clone() {
            if member != self.self_id {
                self.send(member, request.clone());
            }
        }
    }

    /// Whether this node would grant `candidate` its vote in `term` now: not while it
    /// hears the aggregator or leads with a live lease (Raft's guard against disruptive
    /// servers), and not for a term it has passed or already given to someone else.
    fn would_vote(&self, now_ms: u64, candidate: &NodeId, term: Term) -> bool {
        !self.aggregator_alive(now_ms)
            && (term > self.persisted.term
                || (term == self.persisted.term && self.vote_free_for(candidate)))
    }

    /// The aggregator is heard, or this node is the aggregator with a live lease.
    fn aggregator_alive(&self, now_ms: u64) -> bool {
        let aggregator_heard = self
            .heard_aggregator_ms
            .is_some_and(|heard_ms| now_ms < heard_ms + self.config.election_timeout_min_ms);
        let leading = self.role == Role::Aggregator && now_ms < self.lease_until_ms;
        aggregator_heard || leading
    }

    /// This term's vote is not given yet, or given to `candidate`.
    fn vote_free_for(&self, candidate: &NodeId) -> bool {
        self.persisted
            .voted_for
            .as_ref()
            .is_none_or(|voted_for| voted_for == candidate)
    }

    fn handle_pre_vote(&mut self, now_ms: u64, candidate: &NodeId, term: Term) {
        let granted = self.would_vote(now_ms, candidate, term);
        self.send(
            candidate.clone(),
            Message::PreVoteReply {
                for_term: term,
                term: self.persisted.term,
                granted,
            },
        );
    }

    fn handle_pre_vote_reply(
        &mut self,
        now_ms: u64,
        voter: &NodeId,
        for_term: Term,
        term: Term,
        granted: bool,
    ) {
        if term > self.persisted.term {
            // Behind the cluster: catch up, and ask again for the term after.
            self.adopt_term(now_ms, term);
            return;
        }
        if self.role != Role::PreCandidate || for_term != self.persisted.term + 1 || !granted {
            return;
        }
        self.pre_votes.insert(voter.clone());
        if self.pre_votes.len() >= self.majority() {
            self.start_election(now_ms);
        }
    }

    fn start_election(&mut self, now_ms: u64) {
        debug_assert!(self.config.may_be_aggregator);
        self.pre_votes.clear();
        self.persisted = PersistedVote {
            term: self.persisted.term + 1,
            voted_for: Some(self.self_id.clone()),
        };
        self.persist();
        self.role = Role::Candidate;
        self.aggregator = None;
        self.heard_aggregator_ms = None;
        self.votes = BTreeSet::from([self.self_id.clone()]);
        self.election_started_ms = now_ms;
        self.reset_election_deadline(now_ms);
        if self.votes.len() >= self.majority() {
            self.become_aggregator(now_ms);
            return;
        }
        let request = Message::RequestVote {
            term: self.persisted.term,
            candidate: self.self_id.clone(),
        };
        for member in self.config.members.clone() {
            if member != self.self_id {
                self.send(member, request.clone());
            }
        }
    }

    fn become_aggregator(&mut self, now_ms: u64) {
        self.role = Role::Aggregator;
        self.aggregator = Some(self.self_id.clone());
        self.acknowledged_sent_ms.clear();
        // The voters granted after the request went out at `election_started_ms`.
        self.lease_until_ms = self.election_started_ms + self.config.lease_ms;
        self.emit_aggregator_changed();
        self.send_heartbeats(now_ms);
    }

    fn send_heartbeats(&mut self, now_ms: u64) {
        self.next_heartbeat_ms = now_ms + self.config.heartbeat_interval_ms;
        // A node alone is its own majority: no acknowledgement will come to renew the
        // lease, and none is needed.
        if self.majority() == 1 {
            self.lease_until_ms = self.lease_until_ms.max(now_ms + self.config.lease_ms);
        }
        let heartbeat = Message::Heartbeat {
            term: self.persisted.term,
            aggregator: self.self_id.clone(),
            sent_ms: now_ms,
        };
        for member in self.config.members.clone() {
            if member != self.self_id {
                self.send(member, heartbeat.clone());
            }
        }
    }

    fn handle_request_vote(&mut self, now_ms: u64, candidate: &NodeId, term: Term) {
        // Raft's guard against disruptive servers: while the aggregator is heard (or
        // this node is the aggregator with a live lease), requests are ignored without
        // even adopting their term.
        if term > self.persisted.term && self.aggregator_alive(now_ms) {
            return;
        }
        if term > self.persisted.term {
            self.adopt_term(now_ms, term);
        }
        let granted = term == self.persisted.term && self.vote_free_for(candidate);
        if granted && self.persisted.voted_for.is_none() {
            self.persisted.voted_for = Some(candidate.clone());
            self.persist();
            self.reset_election_deadline(now_ms);
        }
        self.send(
            candidate.clone(),
            Message::Vote {
                term: self.persisted.term,
                granted,
            },
        );
    }

    fn handle_vote(&mut self, now_ms: u64, voter: &NodeId, term: Term, granted: bool) {
        if term > self.persisted.term {
            self.adopt_term(now_ms, term);
            return;
        }
        if self.role != Role::Candidate || term != self.persisted.term || !granted {
            return;
        }
        self.votes.insert(voter.clone());
        if self.votes.len() >= self.majority() {
            self.become_aggregator(now_ms);
        }
    }

    fn handle_heartbeat(&mut self, now_ms: u64, aggregator: &NodeId, term: Term, sent_ms: u64) {
        if term < self.persisted.term {
            // Tells a stale aggregator that a newer term exists.
            self.send(
                aggregator.clone(),
                Message::HeartbeatAck {
                    term: self.persisted.term,
                    echo_sent_ms: sent_ms,
                },
            );
            return;
        }
        if term > self.persisted.term {
            self.adopt_term(now_ms, term);
        }
        if self.role == Role::Aggregator {
            // Two aggregators in one term cannot happen with honest peers; ignore.
            return;
        }
        self.role = Role::Follower;
        self.votes.clear();
        self.pre_votes.clear();
        self.heard_aggregator_ms = Some(now_ms);
        self.reset_election_deadline(now_ms);
        if self.aggregator.as_ref() != Some(aggregator) {
            self.aggregator = Some(aggregator.clone());
            self.emit_aggregator_changed();
        }
        self.send(
            aggregator.clone(),
            Message::HeartbeatAck {
                term: self.persisted.term,
                echo_sent_ms: sent_ms,
            },
        );
    }

    fn handle_heartbeat_ack(&mut self, now_ms: u64, member: &NodeId, term: Term, echo_ms: u64) {
        if term > self.persisted.term {
            self.adopt_term(now_ms, term);
            return;
        }
        if self.role != Role::Aggregator || term != self.persisted.term || echo_ms > now_ms {
            return;
        }
        let entry = self.acknowledged_sent_ms.entry(member.clone()).or_insert(0);
        *entry = (*entry).max(echo_ms);
        // The lease runs from the newest heartbeat a majority (this node included, whose
        // own knowledge is current) has acknowledged.
        let mut acknowledged: Vec<u64> = self.acknowledged_sent_ms.values().copied().collect();
        acknowledged.push(now_ms);
        acknowledged.sort_unstable_by(|a, b| b.cmp(a));
        if let Some(&majority_sent_ms) = acknowledged.get(self.majority() - 1) {
            self.lease_until_ms = self
                .lease_until_ms
                .max(majority_sent_ms + self.config.lease_ms);
        }
    }
}

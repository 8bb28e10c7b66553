//! Membership: SWIM failure detection with suspicion (foca), as our kind of state machine.
//!
//! foca (a sans-IO SWIM+Inf.+Susp. implementation) does the protocol: probes, indirect
//! probes through `indirect_probes` members, suspicion refuted by incarnation numbers,
//! suspect → down after `suspect_to_down_ms`, updates piggybacked on every packet. This
//! module only turns foca's runtime callbacks into our outputs and keeps its timers: foca
//! asks "give me this event back after a duration", we turn that into a deadline from the
//! `now_ms` of the call and hand the event back in [`Membership::handle_timeout`].
//!
//! Invariants:
//! - No I/O, no clock, no threads: every input carries `now_ms`; foca's randomness (whom
//!   to probe, whom to gossip to) comes from a [`DeterministicRng`] seeded at
//!   construction, so a seed replays the same probes.
//! - Bounded: foca refuses packets over `packet_bytes_max`; the timer set holds at most
//!   `timers_len_max` events (foca keeps a few per member: probe, indirect probe, suspicion,
//!   removal), and the outputs of one input are drained by the shell after it.
//! - Identities are `(node, generation)`. The shell passes a generation that grows across
//!   restarts (a persisted boot counter, or the start time in ms), so a restarted node
//!   wins over its own old, possibly dead, identity.
//!
//! Membership is informational for the election (which counts CONFIGURED members, not
//! live ones): it feeds `crashmesh status` and tells consolidation which peers are up.

use std::collections::{BTreeMap, VecDeque};
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use foca::{Foca, Notification, PeriodicParams, PostcardCodec, Runtime, Timer};
use serde::{Deserialize, Serialize};

use crate::rng::DeterministicRng;
use crate::wire::{MEMBERSHIP_PACKET_BYTES_MAX, NodeId};

/// A member's identity in SWIM: the node and the generation of its process.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MemberIdentity {
    /// The node.
    pub node: NodeId,
    /// Grows across restarts of the node; the higher one wins.
    pub generation: u64,
}

impl foca::Identity for MemberIdentity {
    type Addr = NodeId;

    fn renew(&self) -> Option<MemberIdentity> {
        Some(MemberIdentity {
            node: self.node.clone(),
            generation: self.generation + 1,
        })
    }

    fn addr(&self) -> NodeId {
        self.node.clone()
    }

    fn win_addr_conflict(&self, adversary: &MemberIdentity) -> bool {
        self.generation > adversary.generation
    }
}

/// SWIM timings and limits; [`MembershipConfig::default`] has the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipConfig {
    /// How often a random member is probed (default 1 s).
    pub probe_period_ms: u64,
    /// How long a direct probe may take before indirect probes go out (default 500 ms).
    pub probe_rtt_ms: u64,
    /// How many members are asked to probe indirectly (default 3).
    pub indirect_probes: usize,
    /// How long a suspect has to refute before it is declared down (default 3 s).
    pub suspect_to_down_ms: u64,
    /// How often each update is piggybacked (default 6, ~4·log10(N+1) for N up to 30).
    pub update_transmissions_max: u8,
    /// How long a down member is remembered (default 1 h).
    pub remove_down_after_ms: u64,
    /// How often updates are gossiped to `gossip_members` random members (default 200 ms).
    pub gossip_interval_ms: u64,
    /// Members gossiped to each time (default 3).
    pub gossip_members: usize,
    /// How often this node re-announces itself to a random member, healing partitions
    /// (default 10 s).
    pub announce_interval_ms: u64,
    /// The largest packet sent or accepted.
    pub packet_bytes_max: usize,
    /// Timer events kept at most (foca keeps a few per member).
    pub timers_len_max: usize,
}

impl Default for MembershipConfig {
    fn default() -> MembershipConfig {
        MembershipConfig {
            probe_period_ms: 1_000,
            probe_rtt_ms: 500,
            indirect_probes: 3,
            suspect_to_down_ms: 3_000,
            update_transmissions_max: 6,
            remove_down_after_ms: 3_600_000,
            gossip_interval_ms: 200,
            gossip_members: 3,
            announce_interval_ms: 10_000,
            packet_bytes_max: MEMBERSHIP_PACKET_BYTES_MAX,
            timers_len_max: 16_384,
        }
    }
}

/// A member's state as `crashmesh status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MemberState {
    /// Answers probes.
    Alive,
    /// Missed a probe; has `suspect_to_down_ms` to refute.
    Suspect,
    /// Declared down by the cluster.
    Down,
}

/// One member as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The node.
    pub node: NodeId,
    /// Its process generation.
    pub generation: u64,
    /// Alive, suspect or down.
    pub state: MemberState,
    /// Its SWIM incarnation (grows when it refutes a suspicion).
    pub incarnation: u64,
}

/// What membership asks of the shell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipOutput {
    /// Send this SWIM packet (as `Message::Membership`) to a member.
    Send {
        /// The member.
        to: NodeId,
        /// foca's packet.
        packet: Vec<u8>,
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
}

/// Why a packet was refused.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// foca refused it (too big, malformed, from ourselves, …); state is unchanged.
    #[error("SWIM packet refused: {0}")]
    Refused(#[from] foca::Error),
    /// The configuration is unusable.
    #[error("invalid membership config: {0}")]
    InvalidConfig(&'static str),
}

type SwimTimer = Timer<MemberIdentity>;

/// The SWIM state machine of one node.
pub struct Membership {
    foca: Foca<MemberIdentity, PostcardCodec, DeterministicRng, foca::NoCustomBroadcast>,
    config: MembershipConfig,
    /// Timer events by (deadline, sequence): fired in deadline order, ties in order given.
    timers: BTreeMap<(u64, u64), SwimTimer>,
    timer_sequence: u64,
    timers_dropped: u64,
    outputs: VecDeque<MembershipOutput>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Membership")
            .field("identity", self.foca.identity())
            .field("timers", &self.timers.len())
            .finish()
    }
}

struct Collector<'a> {
    now_ms: u64,
    timers: &'a mut BTreeMap<(u64, u64), SwimTimer>,
    timer_sequence: &'a mut u64,
    timers_len_max: usize,
    timers_dropped: &'a mut u64,
    outputs: &'a mut VecDeque<MembershipOutput>,
}

impl Runtime<MemberIdentity> for Collector<'_> {
    fn notify(&mut self, notification: Notification<'_, MemberIdentity>) {
        match notification {
            Notification::MemberUp(member) => self
                .outputs
                .push_back(MembershipOutput::MemberUp(member.node.clone())),
            Notification::MemberDown(member) => self
                .outputs
                .push_back(MembershipOutput::MemberDown(member.node.clone())),
            Notification::Rejoin(identity) => self.outputs.push_back(MembershipOutput::Rejoined {
                generation: identity.generation,
            }),
            _ => {}
        }
    }

    fn send_to(&mut self, to: MemberIdentity, data: &[u8]) {
        self.outputs.push_back(MembershipOutput::Send {
            to: to.node,
            packet: data.to_vec(),
        });
    }

    fn submit_after(&mut self, event: SwimTimer, after: Duration) {
        if self.timers.len() >= self.timers_len_max {
            // foca keeps a few timers per member; reaching the limit means a membership
            // far beyond the configured size. Count it rather than grow without bound.
            *self.timers_dropped += 1;
            return;
        }
        let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX / 2);
        *self.timer_sequence += 1;
        self.timers.insert(
            (self.now_ms.saturating_add(after_ms), *self.timer_sequence),
            event,
        );
    }
}

impl Membership {
    /// A node alone, until [`Membership::join`] or a peer's packet.
    pub fn new(
        node: NodeId,
        generation: u64,
        config: MembershipConfig,
        seed: u64,
    ) -> Result<Membership, MembershipError> {
        let invalid = MembershipError::InvalidConfig;
        let foca_config = foca::Config {
            probe_period: Duration::from_millis(config.probe_period_ms),
            probe_rtt: Duration::from_millis(config.probe_rtt_ms),
            num_indirect_probes: NonZeroUsize::new(config.indirect_probes)
                .ok_or(invalid("indirect_probes is 0"))?,
            max_transmissions: NonZeroU8::new(config.update_transmissions_max)
                .ok_or(invalid("update_transmissions_max is 0"))?,
            suspect_to_down_after: Duration::from_millis(config.suspect_to_down_ms),
            remove_down_after: Some(Duration::from_millis(config.remove_down_after_ms)),
            max_packet_size: NonZeroUsize::new(
                config.packet_bytes_max.min(MEMBERSHIP_PACKET_BYTES_MAX),
            )
            .ok_or(invalid("packet_bytes_max is 0"))?,
            notify_down_members: true,
            periodic_announce: NonZeroUsize::new(1).map(|num_members| PeriodicParams {
                frequency: Duration::from_millis(config.announce_interval_ms),
                num_members,
            }),
            periodic_announce_to_down_members: NonZeroUsize::new(1).map(|num_members| {
                PeriodicParams {
                    frequency: Duration::from_millis(config.announce_interval_ms * 3),
                    num_members,
                }
            }),
            periodic_gossip: NonZeroUsize::new(config.gossip_members).map(|num_members| {
                PeriodicParams {
                    frequency: Duration::from_millis(config.gossip_interval_ms),
                    num_members,
                }
            }),
        };
        if config.probe_rtt_ms >= config.probe_period_ms {
            return Err(invalid("probe_rtt_ms must be below probe_period_ms"));
        }
        let identity = MemberIdentity { node, generation };
        let foca = Foca::new(
            identity,
            foca_config,
            DeterministicRng::new(seed),
            PostcardCodec,
        );
        Ok(Membership {
            foca,
            config,
            timers: BTreeMap::new(),
            timer_sequence: 0,
            timers_dropped: 0,
            outputs: VecDeque::new(),
        })
    }

    fn collector(
        &mut self,
        now_ms: u64,
    ) -> (
        &mut Foca<MemberIdentity, PostcardCodec, DeterministicRng, foca::NoCustomBroadcast>,
        Collector<'_>,
    ) {
        (
            &mut self.foca,
            Collector {
                now_ms,
                timers: &mut self.timers,
                timer_sequence: &mut self.timer_sequence,
                timers_len_max: self.config.timers_len_max,
                timers_dropped: &mut self.timers_dropped,
                outputs: &mut self.outputs,
            },
        )
    }

    /// Announces this node to the seed peers (their generation is not needed).
    pub fn join(&mut self, now_ms: u64, seeds: &[NodeId]) {
        let own = self.foca.identity().node.clone();
        for seed in seeds.iter().filter(|seed| **seed != own) {
            let (foca, collector) = self.collector(now_ms);
            // Announce only fails on encoding, which a valid identity cannot trigger.
            let _ = foca.announce(
                MemberIdentity {
                    node: seed.clone(),
                    generation: 0,
                },
                collector,
            );
        }
    }

    /// Handles a SWIM packet from a peer.
    pub fn handle_packet(&mut self, now_ms: u64, packet: &[u8]) -> Result<(), MembershipError> {
        if packet.len() > self.config.packet_bytes_max {
            return Err(MembershipError::Refused(foca::Error::DataTooBig));
        }
        let (foca, collector) = self.collector(now_ms);
        foca.handle_data(packet, collector)?;
        Ok(())
    }

    /// Fires every timer due at `now_ms`.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        // Bounded: the timers due now, not those they schedule (always in the future
        // or, at zero delay, handled on the next call).
        let due: Vec<(u64, u64)> = self
            .timers
            .range(..(now_ms + 1, 0))
            .map(|(key, _)| *key)
            .collect();
        for key in due {
            let Some(timer) = self.timers.remove(&key) else {
                continue;
            };
            let (foca, collector) = self.collector(now_ms);
            // A stale timer (an old token) is an expected no-op error in foca.
            let _ = foca.handle_timer(timer, collector);
        }
    }

    /// When [`Membership::handle_timeout`] must next be called.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.timers
            .keys()
            .next()
            .map(|(deadline_ms, _)| *deadline_ms)
    }

    /// The next output, in order.
    pub fn poll_output(&mut self) -> Option<MembershipOutput> {
        self.outputs.pop_front()
    }

    /// Timer events refused because the timer set was full (0 unless misconfigured).
    pub fn timers_dropped(&self) -> u64 {
        self.timers_dropped
    }

    /// Every member this node knows of, itself included, sorted by node.
    pub fn members(&self) -> Vec<MemberStatus> {
        let own = self.foca.identity();
        let mut members: Vec<MemberStatus> = self
            .foca
            .iter_membership_state()
            .map(|member| MemberStatus {
                node: member.id().node.clone(),
                generation: member.id().generation,
                state: match member.state() {
                    foca::State::Alive => MemberState::Alive,
                    foca::State::Suspect => MemberState::Suspect,
                    foca::State::Down => MemberState::Down,
                },
                incarnation: u64::from(member.incarnation()),
            })
            .collect();
        members.push(MemberStatus {
            node: own.node.clone(),
            generation: own.generation,
            state: MemberState::Alive,
            incarnation: 0,
        });
        members.sort_by(|a, b| (&a.node, a.generation).cmp(&(&b.node, b.generation)));
        members
    }
}

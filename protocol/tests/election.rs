//! Election alone: a few nodes on an instant, lossless network with a virtual clock.

use std::collections::{BTreeMap, VecDeque};

use crashmesh_protocol::election::{
    Election, ElectionConfig, ElectionConfigError, ElectionOutput, PersistedVote, Role, VoteNeeded,
};
use crashmesh_protocol::wire::{Message, NodeId};

struct Net {
    nodes: Vec<Election>,
    ids: Vec<NodeId>,
    alive: Vec<bool>,
    persisted: Vec<PersistedVote>,
    now_ms: u64,
    /// (deliver_at_ms, to, from, message)
    in_flight: VecDeque<(u64, usize, NodeId, Message)>,
    aggregator_by_term: BTreeMap<u64, NodeId>,
}

impl Net {
    fn new(count: usize, seed: u64, can_stand: impl Fn(usize) -> bool) -> Net {
        let ids: Vec<NodeId> = (0..count).map(|i| NodeId::new(format!("n{i}"))).collect();
        let nodes = (0..count)
            .map(|i| {
                let mut config = ElectionConfig::default_timings(ids.clone());
                config.may_be_aggregator = can_stand(i);
                Election::new(
                    ids[i].clone(),
                    config,
                    PersistedVote::default(),
                    seed * 100 + i as u64,
                    0,
                )
                .unwrap()
            })
            .collect();
        Net {
            nodes,
            ids,
            alive: vec![true; count],
            persisted: vec![PersistedVote::default(); count],
            now_ms: 0,
            in_flight: VecDeque::new(),
            aggregator_by_term: BTreeMap::new(),
        }
    }

    fn drain(&mut self, index: usize) {
        let mut durable = true;
        while let Some(output) = self.nodes[index].poll_output() {
            match output {
                ElectionOutput::Persist(vote) => {
                    assert!(vote.term >= self.persisted[index].term, "term went back");
                    if vote.term == self.persisted[index].term {
                        assert!(
                            self.persisted[index].voted_for.is_none()
                                || self.persisted[index].voted_for == vote.voted_for,
                            "second vote in term {}",
                            vote.term
                        );
                    }
                    self.persisted[index] = vote;
                    durable = true;
                }
                ElectionOutput::Send { to, message } => {
                    assert!(durable);
                    let to = self.ids.iter().position(|id| id == &to).unwrap();
                    self.in_flight.push_back((
                        self.now_ms + 5,
                        to,
                        self.ids[index].clone(),
                        message,
                    ));
                }
                ElectionOutput::AggregatorChanged { .. } => {}
            }
        }
        for node in &self.nodes {
            if node.role() == Role::Aggregator {
                let holder = self
                    .aggregator_by_term
                    .entry(node.term())
                    .or_insert_with(|| node.aggregator().unwrap().clone());
                assert_eq!(
                    holder,
                    node.aggregator().unwrap(),
                    "two aggregators in term {}",
                    node.term()
                );
            }
        }
    }

    fn step(&mut self) {
        let next_message = self.in_flight.front().map(|item| item.0);
        let next_timer = (0..self.nodes.len())
            .filter(|&i| self.alive[i])
            .map(|i| self.nodes[i].next_deadline_ms())
            .min()
            .unwrap();
        let next = next_message.map_or(next_timer, |message_ms| message_ms.min(next_timer));
        self.now_ms = self.now_ms.max(next);
        if next_message == Some(next) {
            let (_, to, from, message) = self.in_flight.pop_front().unwrap();
            if self.alive[to] {
                self.nodes[to].handle_message(self.now_ms, &from, &message);
                self.drain(to);
            }
            return;
        }
        for i in 0..self.nodes.len() {
            if self.alive[i] && self.nodes[i].next_deadline_ms() <= self.now_ms {
                self.nodes[i].handle_timeout(self.now_ms);
                self.drain(i);
            }
        }
    }

    fn run_until_ms(&mut self, until_ms: u64) {
        let mut steps = 0;
        while self.now_ms < until_ms {
            self.step();
            steps += 1;
            assert!(steps < 1_000_000, "no progress");
        }
    }

    fn aggregators(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.alive[i] && self.nodes[i].role() == Role::Aggregator)
            .collect()
    }
}

#[test]
fn three_nodes_elect_one_aggregator_that_everyone_follows() {
    for seed in 0..50 {
        let mut net = Net::new(3, seed, |_| true);
        net.run_until_ms(10_000);
        let aggregators = net.aggregators();
        assert_eq!(aggregators.len(), 1, "seed {seed}");
        let leader = net.ids[aggregators[0]].clone();
        for node in &net.nodes {
            assert_eq!(node.aggregator(), Some(&leader), "seed {seed}");
        }
        assert!(
            net.nodes[aggregators[0]]
                .fencing_token(net.now_ms)
                .is_some()
        );
    }
}

#[test]
fn nodes_that_may_not_stand_vote_but_never_win() {
    for seed in 0..30 {
        let mut net = Net::new(5, seed, |i| i == 3);
        net.run_until_ms(10_000);
        assert_eq!(net.aggregators(), vec![3], "seed {seed}");
    }
}

#[test]
fn killed_aggregator_is_replaced_and_the_old_term_never_returns() {
    for seed in 0..50 {
        let mut net = Net::new(5, seed, |_| true);
        net.run_until_ms(10_000);
        let first = net.aggregators()[0];
        let first_term = net.nodes[first].term();
        net.alive[first] = false;
        let killed_ms = net.now_ms;
        while net.aggregators().is_empty() {
            net.step();
            assert!(
                net.now_ms < killed_ms + 10_000,
                "seed {seed}: no new aggregator within 10 s"
            );
        }
        let second = net.aggregators()[0];
        assert!(net.nodes[second].term() > first_term);
    }
}

#[test]
fn a_single_node_cluster_elects_itself_and_persists_before_it_leads() {
    let id = NodeId::new("solo");
    let mut election = Election::new(
        id.clone(),
        ElectionConfig::default_timings(vec![id.clone()]),
        PersistedVote::default(),
        1,
        0,
    )
    .unwrap();
    election.handle_timeout(election.next_deadline_ms());
    assert_eq!(
        election.poll_output(),
        Some(ElectionOutput::Persist(PersistedVote {
            term: 1,
            voted_for: Some(id.clone())
        }))
    );
    assert_eq!(election.role(), Role::Aggregator);
}

#[test]
fn a_vote_is_persisted_before_it_is_sent_and_never_given_twice_in_a_term() {
    let ids: Vec<NodeId> = ["a", "b", "c"].iter().map(|n| NodeId::new(*n)).collect();
    let mut voter = Election::new(
        ids[0].clone(),
        ElectionConfig::default_timings(ids.clone()),
        PersistedVote::default(),
        1,
        0,
    )
    .unwrap();
    voter.handle_message(
        10,
        &ids[1],
        &Message::RequestVote {
            term: 4,
            candidate: ids[1].clone(),
        },
    );
    assert_eq!(
        voter.poll_output(),
        Some(ElectionOutput::Persist(PersistedVote {
            term: 4,
            voted_for: None
        }))
    );
    assert_eq!(
        voter.poll_output(),
        Some(ElectionOutput::Persist(PersistedVote {
            term: 4,
            voted_for: Some(ids[1].clone())
        }))
    );
    assert_eq!(
        voter.poll_output(),
        Some(ElectionOutput::Send {
            to: ids[1].clone(),
            message: Message::Vote {
                term: 4,
                granted: true
            }
        })
    );
    voter.handle_message(
        11,
        &ids[2],
        &Message::RequestVote {
            term: 4,
            candidate: ids[2].clone(),
        },
    );
    assert_eq!(
        voter.poll_output(),
        Some(ElectionOutput::Send {
            to: ids[2].clone(),
            message: Message::Vote {
                term: 4,
                granted: false
            }
        })
    );
    // Restarted from what was persisted: still no second vote in term 4.
    let mut restarted = Election::new(
        ids[0].clone(),
        ElectionConfig::default_timings(ids.clone()),
        voter.persisted().clone(),
        2,
        20,
    )
    .unwrap();
    restarted.handle_message(
        21,
        &ids[2],
        &Message::RequestVote {
            term: 4,
            candidate: ids[2].clone(),
        },
    );
    assert_eq!(
        restarted.poll_output(),
        Some(ElectionOutput::Send {
            to: ids[2].clone(),
            message: Message::Vote {
                term: 4,
                granted: false
            }
        })
    );
}

#[test]
fn bad_configs_are_refused() {
    let ids: Vec<NodeId> = ["a", "b"].iter().map(|n| NodeId::new(*n)).collect();
    let outsider = NodeId::new("z");
    assert_eq!(
        Election::new(
            outsider.clone(),
            ElectionConfig::default_timings(ids.clone()),
            PersistedVote::default(),
            1,
            0
        )
        .unwrap_err(),
        ElectionConfigError::NotAMember(outsider)
    );
    let mut long_lease = ElectionConfig::default_timings(ids.clone());
    long_lease.lease_ms = long_lease.election_timeout_min_ms + 1;
    assert!(matches!(
        Election::new(ids[0].clone(), long_lease, PersistedVote::default(), 1, 0),
        Err(ElectionConfigError::InvalidTimings(_))
    ));
}

#[test]
fn each_election_message_names_the_durable_vote_it_rests_on() {
    let (a, b) = (NodeId::new("a"), NodeId::new("b"));
    let vote = |term, voted_for: Option<&NodeId>| PersistedVote {
        term,
        voted_for: voted_for.cloned(),
    };
    let granted = VoteNeeded::of(
        &b,
        &Message::Vote {
            term: 4,
            granted: true,
        },
    )
    .unwrap();
    assert!(
        !granted.is_met_by(&vote(4, None)),
        "the vote itself not on disk"
    );
    assert!(!granted.is_met_by(&vote(3, Some(&b))));
    assert!(!granted.is_met_by(&vote(4, Some(&a))));
    assert!(granted.is_met_by(&vote(4, Some(&b))));
    assert!(granted.is_met_by(&vote(5, None)));
    let refused = VoteNeeded::of(
        &b,
        &Message::Vote {
            term: 4,
            granted: false,
        },
    )
    .unwrap();
    assert!(refused.is_met_by(&vote(4, None)));
    assert!(!refused.is_met_by(&vote(3, Some(&b))));
    let candidacy = Message::RequestVote {
        term: 2,
        candidate: a.clone(),
    };
    assert_eq!(
        VoteNeeded::of(&b, &candidacy),
        Some(VoteNeeded {
            term: 2,
            voted_for: Some(a.clone())
        })
    );
    let asking = Message::PreVote {
        term: 2,
        candidate: a.clone(),
    };
    assert_eq!(VoteNeeded::of(&b, &asking), None);
    let fetch = Message::FetchReport {
        term: 2,
        report_id: crashmesh_protocol::wire::ReportId::new("r1"),
    };
    assert_eq!(VoteNeeded::of(&b, &fetch), None);
}

#[test]
fn a_single_node_cluster_stays_its_own_aggregator_in_one_term() {
    let mut net = Net::new(1, 7, |_| true);
    net.run_until_ms(5_000);
    assert_eq!(net.aggregators(), [0]);
    let term = net.nodes[0].term();
    // A majority of one renews its own lease: no step down, no new election, ever.
    net.run_until_ms(120_000);
    assert_eq!(net.aggregators(), [0]);
    assert_eq!(
        net.nodes[0].term(),
        term,
        "the term moved: the node flapped"
    );
    assert_eq!(net.nodes[0].fencing_token(net.now_ms), Some(term));
}

//! Election, one node at a time: every message and timeout handed in by hand on a virtual
//! clock, every output checked exactly, at the boundaries of the guards (the disruption
//! guard, the lease, the fencing token, which replies and votes count).
//!
//! Default timings: heartbeat every 500 ms, election timeout 1500..3000 ms, lease 1500 ms.

use crashmesh_protocol::election::{
    Election, ElectionConfig, ElectionOutput, PersistedVote, Role, VoteNeeded,
};
use crashmesh_protocol::wire::{Message, NodeId, Term};

const HEARTBEAT_MS: u64 = 500;
const TIMEOUT_MIN_MS: u64 = 1500;
const TIMEOUT_MAX_MS: u64 = 3000;
const LEASE_MS: u64 = 1500;

fn id(name: &str) -> NodeId {
    NodeId::new(name)
}

/// A node of the cluster `a`, `b`, `c` (listed out of order: the election sorts them).
fn node(name: &str, persisted: PersistedVote, now_ms: u64) -> Election {
    let config = ElectionConfig::default_timings(vec![id("c"), id("a"), id("b")]);
    assert_eq!(config.heartbeat_interval_ms, HEARTBEAT_MS);
    assert_eq!(config.election_timeout_min_ms, TIMEOUT_MIN_MS);
    assert_eq!(config.election_timeout_max_ms, TIMEOUT_MAX_MS);
    assert_eq!(config.lease_ms, LEASE_MS);
    Election::new(id(name), config, persisted, 7, now_ms).unwrap()
}

fn at_term(term: Term, voted_for: Option<&str>) -> PersistedVote {
    PersistedVote {
        term,
        voted_for: voted_for.map(id),
    }
}

fn drain(election: &mut Election) -> Vec<ElectionOutput> {
    std::iter::from_fn(|| election.poll_output()).collect()
}

fn send(to: &str, message: Message) -> ElectionOutput {
    ElectionOutput::Send {
        to: id(to),
        message,
    }
}

fn persist(term: Term, voted_for: Option<&str>) -> ElectionOutput {
    ElectionOutput::Persist(at_term(term, voted_for))
}

fn changed(term: Term, aggregator: Option<&str>) -> ElectionOutput {
    ElectionOutput::AggregatorChanged {
        term,
        aggregator: aggregator.map(id),
    }
}

fn pre_vote(term: Term, candidate: &str) -> Message {
    Message::PreVote {
        term,
        candidate: id(candidate),
    }
}

fn pre_vote_reply(for_term: Term, term: Term, granted: bool) -> Message {
    Message::PreVoteReply {
        for_term,
        term,
        granted,
    }
}

fn request_vote(term: Term, candidate: &str) -> Message {
    Message::RequestVote {
        term,
        candidate: id(candidate),
    }
}

fn vote(term: Term, granted: bool) -> Message {
    Message::Vote { term, granted }
}

fn heartbeat(term: Term, aggregator: &str, sent_ms: u64) -> Message {
    Message::Heartbeat {
        term,
        aggregator: id(aggregator),
        sent_ms,
    }
}

fn ack(term: Term, echo_sent_ms: u64) -> Message {
    Message::HeartbeatAck { term, echo_sent_ms }
}

/// `a`, restarted in term 4, whose election timeout has passed: a pre-candidate for
/// term 5. Returns it and the time its pre-vote went out.
fn pre_candidate_a() -> (Election, u64) {
    let mut a = node("a", at_term(4, None), 1000);
    let deadline_ms = a.next_deadline_ms();
    a.handle_timeout(deadline_ms);
    assert_eq!(
        drain(&mut a),
        vec![send("b", pre_vote(5, "a")), send("c", pre_vote(5, "a"))]
    );
    assert_eq!(a.role(), Role::PreCandidate);
    assert_eq!(a.term(), 4, "a pre-vote changes no term");
    (a, deadline_ms)
}

/// `a` as a candidate in term 5, and the time it stood.
fn candidate_a() -> (Election, u64) {
    let (mut a, pre_vote_ms) = pre_candidate_a();
    let started_ms = pre_vote_ms + 10;
    a.handle_message(started_ms, &id("b"), &pre_vote_reply(5, 4, true));
    assert_eq!(
        drain(&mut a),
        vec![
            persist(5, Some("a")),
            send("b", request_vote(5, "a")),
            send("c", request_vote(5, "a")),
        ]
    );
    assert_eq!(a.role(), Role::Candidate);
    (a, started_ms)
}

/// `a` as the aggregator of term 5. Returns it, the time it stood (its lease runs from
/// then) and the time it won (its first heartbeats went out then).
fn aggregator_a() -> (Election, u64, u64) {
    let (mut a, started_ms) = candidate_a();
    let won_ms = started_ms + 10;
    a.handle_message(won_ms, &id("b"), &vote(5, true));
    assert_eq!(
        drain(&mut a),
        vec![
            changed(5, Some("a")),
            send("b", heartbeat(5, "a", won_ms)),
            send("c", heartbeat(5, "a", won_ms)),
        ]
    );
    assert_eq!(a.role(), Role::Aggregator);
    assert_eq!(a.aggregator(), Some(&id("a")));
    (a, started_ms, won_ms)
}

/// `b`, a follower that heard aggregator `a` of term 1 at `heard_ms` (after voting for it).
fn follower_b_that_heard_a(heard_ms: u64) -> Election {
    let mut b = node("b", at_term(1, Some("a")), 0);
    b.handle_message(heard_ms, &id("a"), &heartbeat(1, "a", heard_ms - 5));
    assert_eq!(
        drain(&mut b),
        vec![changed(1, Some("a")), send("a", ack(1, heard_ms - 5))]
    );
    b
}

#[test]
fn a_heartbeat_rests_on_its_term_with_the_vote_for_its_aggregator() {
    let b = id("b");
    assert_eq!(
        VoteNeeded::of(&b, &heartbeat(3, "a", 100)),
        Some(VoteNeeded {
            term: 3,
            voted_for: Some(id("a"))
        })
    );
    assert_eq!(
        VoteNeeded::of(&b, &ack(3, 100)),
        Some(VoteNeeded {
            term: 3,
            voted_for: None
        })
    );
    assert_eq!(
        VoteNeeded::of(&b, &pre_vote_reply(4, 3, true)),
        Some(VoteNeeded {
            term: 3,
            voted_for: None
        })
    );
}

#[test]
fn members_are_sorted_and_status_is_the_term_and_the_aggregator_known() {
    let mut b = node("b", at_term(4, None), 1000);
    assert_eq!(b.members(), &[id("a"), id("b"), id("c")]);
    assert_eq!(b.status(), (4, None));
    b.handle_message(1100, &id("a"), &heartbeat(6, "a", 1090));
    assert_eq!(b.status(), (6, Some(id("a"))));
    assert_eq!(b.term(), 6);
    assert_eq!(b.aggregator(), Some(&id("a")));
}

#[test]
fn a_new_node_times_out_between_the_shortest_and_the_longest_election_timeout_from_now() {
    for now_ms in [0, 1000, 1_000_000] {
        let b = node("b", PersistedVote::default(), now_ms);
        let deadline_ms = b.next_deadline_ms();
        assert!(
            (now_ms + TIMEOUT_MIN_MS..now_ms + TIMEOUT_MAX_MS).contains(&deadline_ms),
            "deadline {deadline_ms} from {now_ms}"
        );
        assert_eq!(b.role(), Role::Follower);
    }
}

#[test]
fn the_election_timeout_does_nothing_before_its_deadline_and_starts_a_pre_vote_after_it() {
    let mut a = node("a", at_term(4, None), 1000);
    let deadline_ms = a.next_deadline_ms();
    a.handle_timeout(deadline_ms - 1);
    assert_eq!(drain(&mut a), vec![]);
    assert_eq!(a.role(), Role::Follower);
    assert_eq!(a.next_deadline_ms(), deadline_ms);
    // Called late (the shell was busy): the pre-vote starts all the same.
    a.handle_timeout(deadline_ms + 7);
    assert_eq!(
        drain(&mut a),
        vec![send("b", pre_vote(5, "a")), send("c", pre_vote(5, "a"))]
    );
    assert_eq!(a.role(), Role::PreCandidate);
    let retry_ms = a.next_deadline_ms();
    assert!(
        (deadline_ms + 7 + TIMEOUT_MIN_MS..deadline_ms + 7 + TIMEOUT_MAX_MS).contains(&retry_ms),
        "the next timeout {retry_ms} is drawn afresh"
    );
}

#[test]
fn messages_from_itself_or_from_outside_the_membership_are_ignored() {
    let mut a = node("a", at_term(4, None), 1000);
    let outsider = id("z");
    for (from, message) in [
        (&outsider, request_vote(9, "z")),
        (&outsider, heartbeat(9, "z", 1000)),
        (&outsider, ack(9, 1000)),
        (&id("a"), request_vote(9, "a")),
        (&id("a"), heartbeat(9, "a", 1000)),
        (&id("a"), vote(9, false)),
    ] {
        a.handle_message(1010, from, &message);
        assert_eq!(drain(&mut a), vec![], "{from:?} {message:?}");
        assert_eq!(a.status(), (4, None));
        assert_eq!(a.role(), Role::Follower);
    }
}

#[test]
fn a_follower_that_heard_its_aggregator_refuses_pre_votes_until_election_timeout_min_has_passed() {
    let heard_ms = 10_000;
    let mut b = follower_b_that_heard_a(heard_ms);
    b.handle_message(heard_ms + TIMEOUT_MIN_MS - 1, &id("c"), &pre_vote(2, "c"));
    assert_eq!(drain(&mut b), vec![send("c", pre_vote_reply(2, 1, false))]);
    b.handle_message(heard_ms + TIMEOUT_MIN_MS, &id("c"), &pre_vote(2, "c"));
    assert_eq!(drain(&mut b), vec![send("c", pre_vote_reply(2, 1, true))]);
    // Asking changes nothing.
    assert_eq!(b.persisted(), &at_term(1, Some("a")));
    assert_eq!(b.status(), (1, Some(id("a"))));
    assert_eq!(b.role(), Role::Follower);
}

#[test]
fn a_follower_that_heard_its_aggregator_ignores_vote_requests_until_election_timeout_min_has_passed()
 {
    let heard_ms = 10_000;
    let mut b = follower_b_that_heard_a(heard_ms);
    b.handle_message(
        heard_ms + TIMEOUT_MIN_MS - 1,
        &id("c"),
        &request_vote(2, "c"),
    );
    assert_eq!(drain(&mut b), vec![], "not even the term is adopted");
    assert_eq!(b.persisted(), &at_term(1, Some("a")));
    b.handle_message(heard_ms + TIMEOUT_MIN_MS, &id("c"), &request_vote(2, "c"));
    assert_eq!(
        drain(&mut b),
        vec![
            persist(2, None),
            changed(2, None),
            persist(2, Some("c")),
            send("c", vote(2, true)),
        ]
    );
    assert_eq!(b.status(), (2, None));
}

#[test]
fn a_follower_answers_a_vote_request_for_its_own_term_even_while_it_hears_its_aggregator() {
    let heard_ms = 10_000;
    let mut b = follower_b_that_heard_a(heard_ms);
    b.handle_message(heard_ms + 1, &id("c"), &request_vote(1, "c"));
    assert_eq!(drain(&mut b), vec![send("c", vote(1, false))]);
    // Asked again by the one it voted for: yes again, nothing new to persist.
    b.handle_message(heard_ms + 2, &id("a"), &request_vote(1, "a"));
    assert_eq!(drain(&mut b), vec![send("a", vote(1, true))]);
    assert_eq!(b.persisted(), &at_term(1, Some("a")));
}

#[test]
fn pre_votes_are_granted_only_for_a_later_term_or_for_this_term_with_the_vote_still_free() {
    // Restarted: never heard an aggregator, voted for `b` in term 3.
    let mut a = node("a", at_term(3, Some("b")), 1000);
    for (candidate, term, granted) in [
        ("c", 4, true),
        ("c", 3, false),
        ("b", 3, true),
        ("b", 2, false),
        ("c", 2, false),
    ] {
        a.handle_message(1010, &id(candidate), &pre_vote(term, candidate));
        assert_eq!(
            drain(&mut a),
            vec![send(candidate, pre_vote_reply(term, 3, granted))],
            "pre-vote of {candidate} for term {term}"
        );
    }
    let mut free = node("a", at_term(3, None), 1000);
    for (term, granted) in [(2, false), (3, true), (4, true)] {
        free.handle_message(1010, &id("c"), &pre_vote(term, "c"));
        assert_eq!(
            drain(&mut free),
            vec![send("c", pre_vote_reply(term, 3, granted))],
            "pre-vote for term {term}"
        );
    }
    assert_eq!(a.persisted(), &at_term(3, Some("b")));
    assert_eq!(free.persisted(), &at_term(3, None));
}

#[test]
fn vote_requests_for_a_past_term_are_refused_without_touching_the_vote() {
    let mut a = node("a", at_term(5, None), 1000);
    a.handle_message(1010, &id("c"), &request_vote(3, "c"));
    assert_eq!(drain(&mut a), vec![send("c", vote(5, false))]);
    assert_eq!(a.persisted(), &at_term(5, None));
    // The vote of term 5 is still free.
    a.handle_message(1020, &id("b"), &request_vote(5, "b"));
    assert_eq!(
        drain(&mut a),
        vec![persist(5, Some("b")), send("b", vote(5, true))]
    );
}

#[test]
fn an_aggregator_refuses_pre_votes_and_ignores_vote_requests_while_its_lease_lasts() {
    let (mut a, started_ms, _) = aggregator_a();
    let lease_until_ms = started_ms + LEASE_MS;
    a.handle_message(lease_until_ms - 1, &id("b"), &pre_vote(6, "b"));
    assert_eq!(drain(&mut a), vec![send("b", pre_vote_reply(6, 5, false))]);
    a.handle_message(lease_until_ms - 1, &id("b"), &request_vote(6, "b"));
    assert_eq!(drain(&mut a), vec![]);
    assert_eq!(a.role(), Role::Aggregator);
    assert_eq!(a.term(), 5);
    // The lease is over (even before the timeout that steps it down has come).
    a.handle_message(lease_until_ms, &id("b"), &pre_vote(6, "b"));
    assert_eq!(drain(&mut a), vec![send("b", pre_vote_reply(6, 5, true))]);
    a.handle_message(lease_until_ms, &id("b"), &request_vote(6, "b"));
    assert_eq!(
        drain(&mut a),
        vec![
            persist(6, None),
            changed(6, None),
            persist(6, Some("b")),
            send("b", vote(6, true)),
        ]
    );
    assert_eq!(a.role(), Role::Follower);
}

#[test]
fn an_aggregators_fencing_token_is_its_term_strictly_before_the_lease_ends_and_none_from_then_on() {
    let (a, started_ms, won_ms) = aggregator_a();
    let lease_until_ms = started_ms + LEASE_MS;
    assert_eq!(a.fencing_token(won_ms), Some(5));
    assert_eq!(a.fencing_token(lease_until_ms - 1), Some(5));
    assert_eq!(a.fencing_token(lease_until_ms), None);
    assert_eq!(a.fencing_token(lease_until_ms + 1), None);
    // Its followers have none.
    let mut b = node("b", at_term(4, None), 1000);
    assert_eq!(b.fencing_token(won_ms), None);
    b.handle_message(won_ms + 5, &id("a"), &heartbeat(5, "a", won_ms));
    assert_eq!(b.aggregator(), Some(&id("a")));
    assert_eq!(b.fencing_token(won_ms + 5), None);
}

#[test]
fn an_aggregator_deposed_by_a_higher_term_within_its_lease_has_no_token_and_votes_again() {
    let (mut a, started_ms, won_ms) = aggregator_a();
    let lease_until_ms = started_ms + LEASE_MS;
    // `c` has moved on to term 6 (a partition healed).
    a.handle_message(won_ms + 20, &id("c"), &ack(6, won_ms));
    assert_eq!(drain(&mut a), vec![persist(6, None), changed(6, None)]);
    assert_eq!(a.role(), Role::Follower);
    assert_eq!(a.fencing_token(won_ms + 20), None);
    assert_eq!(a.fencing_token(lease_until_ms - 1), None);
    // Its old lease no longer keeps it from voting.
    a.handle_message(won_ms + 30, &id("b"), &pre_vote(7, "b"));
    assert_eq!(drain(&mut a), vec![send("b", pre_vote_reply(7, 6, true))]);
    a.handle_message(won_ms + 40, &id("b"), &request_vote(7, "b"));
    assert_eq!(
        drain(&mut a),
        vec![
            persist(7, None),
            persist(7, Some("b")),
            send("b", vote(7, true))
        ]
    );
}

#[test]
fn an_aggregator_whose_lease_ends_steps_down_and_announces_that_no_aggregator_is_known() {
    let (mut a, started_ms, won_ms) = aggregator_a();
    let lease_until_ms = started_ms + LEASE_MS;
    assert_eq!(a.next_deadline_ms(), won_ms + HEARTBEAT_MS);
    a.handle_timeout(lease_until_ms - 1);
    assert_eq!(
        drain(&mut a),
        vec![
            send("b", heartbeat(5, "a", lease_until_ms - 1)),
            send("c", heartbeat(5, "a", lease_until_ms - 1)),
        ]
    );
    assert_eq!(a.role(), Role::Aggregator);
    assert_eq!(a.next_deadline_ms(), lease_until_ms, "the lease ends first");
    a.handle_timeout(lease_until_ms);
    assert_eq!(drain(&mut a), vec![changed(5, None)]);
    assert_eq!(a.role(), Role::Follower);
    assert_eq!(a.status(), (5, None));
    assert_eq!(a.persisted(), &at_term(5, Some("a")));
    let deadline_ms = a.next_deadline_ms();
    assert!(
        (lease_until_ms + TIMEOUT_MIN_MS..lease_until_ms + TIMEOUT_MAX_MS).contains(&deadline_ms),
        "deadline {deadline_ms}"
    );
}

#[test]
fn heartbeats_go_to_every_other_member_each_interval_stamped_with_their_send_time() {
    let (mut a, _, won_ms) = aggregator_a();
    let next_ms = won_ms + HEARTBEAT_MS;
    assert_eq!(a.next_deadline_ms(), next_ms);
    a.handle_timeout(next_ms - 1);
    assert_eq!(drain(&mut a), vec![], "not yet");
    a.handle_timeout(next_ms);
    assert_eq!(
        drain(&mut a),
        vec![
            send("b", heartbeat(5, "a", next_ms)),
            send("c", heartbeat(5, "a", next_ms)),
        ]
    );
    assert_eq!(a.next_deadline_ms(), next_ms + HEARTBEAT_MS);
}

#[test]
fn a_majority_acknowledging_a_heartbeat_extends_the_lease_from_when_it_was_sent() {
    let (mut a, started_ms, won_ms) = aggregator_a();
    let sent_ms = won_ms + HEARTBEAT_MS;
    a.handle_timeout(sent_ms);
    drain(&mut a);
    a.handle_message(sent_ms + 20, &id("b"), &ack(5, sent_ms));
    assert_eq!(
        drain(&mut a),
        vec![],
        "an acknowledgement is answered by nothing"
    );
    assert!(sent_ms + LEASE_MS > started_ms + LEASE_MS);
    assert_eq!(a.fencing_token(sent_ms + LEASE_MS - 1), Some(5));
    assert_eq!(a.fencing_token(sent_ms + LEASE_MS), None);
    // An acknowledgement arriving within the millisecond it was sent counts too.
    let (mut a, _, won_ms) = aggregator_a();
    let sent_ms = won_ms + HEARTBEAT_MS;
    a.handle_timeout(sent_ms);
    drain(&mut a);
    a.handle_message(sent_ms, &id("c"), &ack(5, sent_ms));
    assert_eq!(a.fencing_token(sent_ms + LEASE_MS - 1), Some(5));
    assert_eq!(a.fencing_token(sent_ms + LEASE_MS), None);
    // And the aggregator keeps its role through the old lease's end.
    a.handle_timeout(started_ms + LEASE_MS);
    assert_eq!(a.role(), Role::Aggregator);
    a.handle_timeout(sent_ms + LEASE_MS);
    assert_eq!(a.role(), Role::Follower);
}

#[test]
fn acknowledgements_from_the_future_or_an_earlier_term_do_not_extend_the_lease() {
    let (mut a, started_ms, won_ms) = aggregator_a();
    let lease_until_ms = started_ms + LEASE_MS;
    let sent_ms = won_ms + HEARTBEAT_MS;
    a.handle_timeout(sent_ms);
    drain(&mut a);
    // Echoing a time this node has not reached yet: forged or confused.
    a.handle_message(sent_ms + 20, &id("b"), &ack(5, sent_ms + 100));
    // An acknowledgement left over from term 4.
    a.handle_message(sent_ms + 20, &id("c"), &ack(4, sent_ms));
    assert_eq!(drain(&mut a), vec![]);
    assert_eq!(a.term(), 5);
    assert_eq!(a.fencing_token(lease_until_ms - 1), Some(5));
    assert_eq!(a.fencing_token(lease_until_ms), None);
}

#[test]
fn a_follower_that_adopts_a_higher_term_forgets_its_aggregator_and_says_so() {
    let heard_ms = 10_000;
    let mut b = follower_b_that_heard_a(heard_ms);
    b.handle_message(heard_ms + 10, &id("c"), &vote(3, false));
    assert_eq!(drain(&mut b), vec![persist(3, None), changed(3, None)]);
    assert_eq!(b.status(), (3, None));
    assert_eq!(b.role(), Role::Follower);
    // Without an aggregator known, adopting a term announces nothing.
    let mut c = node("c", at_term(1, None), 0);
    c.handle_message(10, &id("a"), &vote(3, false));
    assert_eq!(drain(&mut c), vec![persist(3, None)]);
}

#[test]
fn a_heartbeat_makes_a_follower_follow_and_acknowledge_and_only_the_first_announces_it() {
    let mut b = node("b", at_term(4, None), 1000);
    b.handle_message(1100, &id("a"), &heartbeat(5, "a", 1095));
    assert_eq!(
        drain(&mut b),
        vec![
            persist(5, None),
            changed(5, Some("a")),
            send("a", ack(5, 1095)),
        ]
    );
    let deadline_ms = b.next_deadline_ms();
    assert!((1100 + TIMEOUT_MIN_MS..1100 + TIMEOUT_MAX_MS).contains(&deadline_ms));
    b.handle_message(1600, &id("a"), &heartbeat(5, "a", 1595));
    assert_eq!(drain(&mut b), vec![send("a", ack(5, 1595))]);
    assert!((1600 + TIMEOUT_MIN_MS..1600 + TIMEOUT_MAX_MS).contains(&b.next_deadline_ms()));
    // A new aggregator in a later term.
    b.handle_message(5000, &id("c"), &heartbeat(6, "c", 4995));
    assert_eq!(
        drain(&mut b),
        vec![
            persist(6, None),
            changed(6, None),
            changed(6, Some("c")),
            send("c", ack(6, 4995)),
        ]
    );
    assert_eq!(b.status(), (6, Some(id("c"))));
}

#[test]
fn a_heartbeat_from_a_stale_aggregator_is_answered_with_the_newer_term_and_changes_nothing() {
    let mut b = node("b", at_term(5, None), 1000);
    let deadline_ms = b.next_deadline_ms();
    b.handle_message(1100, &id("a"), &heartbeat(3, "a", 1095));
    assert_eq!(drain(&mut b), vec![send("a", ack(5, 1095))]);
    assert_eq!(b.status(), (5, None));
    assert_eq!(
        b.next_deadline_ms(),
        deadline_ms,
        "a stale heartbeat holds off nothing"
    );
    // And the stale aggregator steps down when it hears of the newer term.
    let (mut a, _, won_ms) = aggregator_a();
    a.handle_message(won_ms + 5, &id("b"), &ack(7, won_ms));
    assert_eq!(drain(&mut a), vec![persist(7, None), changed(7, None)]);
    assert_eq!(a.role(), Role::Follower);
}

#[test]
fn a_candidate_that_hears_a_heartbeat_of_its_own_term_follows_the_winner() {
    let (mut a, started_ms) = candidate_a();
    a.handle_message(
        started_ms + 10,
        &id("c"),
        &heartbeat(5, "c", started_ms + 5),
    );
    assert_eq!(
        drain(&mut a),
        vec![changed(5, Some("c")), send("c", ack(5, started_ms + 5))]
    );
    assert_eq!(a.role(), Role::Follower);
    // Late votes no longer count.
    a.handle_message(started_ms + 20, &id("b"), &vote(5, true));
    assert_eq!(drain(&mut a), vec![]);
    assert_eq!(a.role(), Role::Follower);
}

#[test]
fn an_aggregator_ignores_a_heartbeat_from_another_node_in_its_own_term() {
    let (mut a, _, won_ms) = aggregator_a();
    a.handle_message(won_ms + 5, &id("c"), &heartbeat(5, "c", won_ms));
    assert_eq!(drain(&mut a), vec![]);
    assert_eq!(a.role(), Role::Aggregator);
    assert_eq!(a.aggregator(), Some(&id("a")));
}

#[test]
fn pre_vote_replies_count_only_when_granted_for_the_next_term_while_a_pre_candidate() {
    // A refusal does not count.
    let (mut a, pre_vote_ms) = pre_candidate_a();
    a.handle_message(pre_vote_ms + 10, &id("b"), &pre_vote_reply(5, 4, false));
    assert_eq!(drain(&mut a), vec![]);
    assert_eq!(a.role(), Role::PreCandidate);
    // Nor a yes to another round's question.
    for for_term in [4, 6] {
        a.handle_message(
            pre_vote_ms + 20,
            &id("b"),
            &pre_vote_reply(for_term, 4, true),
        );
        assert_eq!(drain(&mut a), vec![], "for term {for_term}");
        assert_eq!(a.role(), Role::PreCandidate);
        assert_eq!(a.term(), 4);
    }
    // A yes from a lower term does.
    a.handle_message(pre_vote_ms + 30, &id("c"), &pre_vote_reply(5, 3, true));
    assert_eq!(a.role(), Role::Candidate);
    assert_eq!(a.term(), 5);
    // Nor do yeses to a node that is not a pre-candidate.
    let mut follower = node("a", at_term(4, None), 1000);
    follower.handle_message(1010, &id("b"), &pre_vote_reply(5, 4, true));
    follower.handle_message(1010, &id("c"), &pre_vote_reply(5, 4, true));
    assert_eq!(drain(&mut follower), vec![]);
    assert_eq!(follower.role(), Role::Follower);
    let (mut candidate, started_ms) = candidate_a();
    candidate.handle_message(started_ms + 5, &id("b"), &pre_vote_reply(6, 5, true));
    candidate.handle_message(started_ms + 5, &id("c"), &pre_vote_reply(6, 5, true));
    assert_eq!(drain(&mut candidate), vec![]);
    assert_eq!(candidate.role(), Role::Candidate);
    assert_eq!(candidate.term(), 5);
}

#[test]
fn a_pre_vote_reply_from_a_higher_term_is_adopted_and_ends_the_pre_vote() {
    let (mut a, pre_vote_ms) = pre_candidate_a();
    a.handle_message(pre_vote_ms + 10, &id("b"), &pre_vote_reply(5, 8, false));
    assert_eq!(drain(&mut a), vec![persist(8, None), changed(8, None)]);
    assert_eq!(a.role(), Role::Follower);
}

#[test]
fn votes_count_only_when_granted_in_the_candidates_term_while_a_candidate() {
    let (mut a, started_ms) = candidate_a();
    a.handle_message(started_ms + 5, &id("b"), &vote(5, false));
    a.handle_message(started_ms + 6, &id("c"), &vote(4, true));
    assert_eq!(drain(&mut a), vec![]);
    assert_eq!(a.role(), Role::Candidate);
    // A refusal from a later term ends the candidacy.
    a.handle_message(started_ms + 7, &id("c"), &vote(7, false));
    assert_eq!(drain(&mut a), vec![persist(7, None), changed(7, None)]);
    assert_eq!(a.role(), Role::Follower);
    // Granted votes to a follower (its own term, late) make no aggregator.
    let mut follower = node("a", at_term(4, Some("a")), 1000);
    follower.handle_message(1010, &id("b"), &vote(4, true));
    follower.handle_message(1010, &id("c"), &vote(4, true));
    assert_eq!(drain(&mut follower), vec![]);
    assert_eq!(follower.role(), Role::Follower);
    // Nor to an aggregator.
    let (mut aggregator, _, won_ms) = aggregator_a();
    aggregator.handle_message(won_ms + 1, &id("c"), &vote(5, true));
    assert_eq!(drain(&mut aggregator), vec![]);
    assert_eq!(aggregator.role(), Role::Aggregator);
}

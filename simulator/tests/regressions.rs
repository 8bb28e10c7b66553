//! Seeds that once broke an invariant, replayed on every test run (one entry per finding,
//! like ripgrep's one regression test per bug). A campaign prints the replay command of a
//! failing seed; once the cause is fixed, the seed goes here with `expect: None`, so that
//! it keeps passing. Entries with a sabotage keep the checks honest: with the mechanism
//! off, that seed must still break that invariant.

use crashmesh_simulator::SimConfig;
use crashmesh_simulator::campaign::{failure_text, run_seed};
use crashmesh_simulator::faults::Sabotage;
use crashmesh_simulator::invariants::Invariant;

struct Regression {
    seed: u64,
    nodes: usize,
    sabotage: Sabotage,
    /// The invariant the seed must break (`None`: it must pass).
    expect: Option<Invariant>,
    /// What the seed found.
    why: &'static str,
}

const REGRESSIONS: &[Regression] = &[
    Regression {
        seed: 0,
        nodes: 5,
        sabotage: Sabotage::NoFencing,
        expect: Some(Invariant::StaleTermAccepted),
        why: "an aggregator's full report still streaming when a new term's upload lands",
    },
    Regression {
        seed: 12,
        nodes: 5,
        sabotage: Sabotage::NoFencing,
        expect: Some(Invariant::StaleTermAccepted),
        // Seed 17 found this first; since elections pre-vote it no longer fails over at
        // the moment that mattered, and seed 12 does.
        why: "a stale upload after the aggregator changed (term 9 after term 10)",
    },
    Regression {
        seed: 4,
        nodes: 5,
        sabotage: Sabotage::NoDedup,
        expect: Some(Invariant::DuplicateIncident),
        // Seed 0 found this first; since elections pre-vote it breaks DuplicateProblem
        // first, and seed 4 breaks this one.
        why: "the same incident reaches the endpoint twice",
    },
    Regression {
        seed: 5,
        nodes: 5,
        sabotage: Sabotage::NoDedup,
        expect: Some(Invariant::DuplicateProblem),
        why: "the next aggregator sends the full reports of its problems again",
    },
];

#[test]
fn every_regression_seed_replays_as_recorded() {
    for regression in REGRESSIONS {
        let mut config = SimConfig::new(regression.seed, regression.nodes);
        config.sabotage = regression.sabotage;
        let report = run_seed(config);
        let found = report
            .violation
            .as_ref()
            .map(|violation| violation.invariant);
        assert_eq!(
            found,
            regression.expect,
            "seed {} ({}): {}",
            regression.seed,
            regression.why,
            failure_text(&report)
        );
    }
}

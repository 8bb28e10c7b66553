//! The simulator's own claims, shown: a campaign of 200 seeds passes with every safety
//! mechanism on; a seed replays the same trace; switching fencing or deduplication off
//! makes the campaign report failures of the matching invariant; the regression seeds
//! stay fixed.

use crashmesh_simulator::SimConfig;
use crashmesh_simulator::campaign::{CampaignConfig, CampaignSummary, run_campaign, run_seed};
use crashmesh_simulator::faults::{FaultKind, Sabotage};
use crashmesh_simulator::invariants::Invariant;

/// A campaign with a shorter safety phase and a lighter workload than the command's
/// defaults (the same code paths; debug builds are slow).
fn campaign(seeds: std::ops::Range<u64>, sabotage: Sabotage) -> CampaignSummary {
    let config = CampaignConfig {
        sabotage,
        safety_ms: 20_000,
        time_compression: 3,
        ..CampaignConfig::new(seeds, 5)
    };
    run_campaign(&config, |_| {})
}

#[test]
fn two_hundred_seeds_with_every_fault_kind_pass() {
    let summary = campaign(0..200, Sabotage::None);
    print!("{}", summary.table());
    for failure in &summary.failures {
        print!("{}", crashmesh_simulator::campaign::failure_text(failure));
    }
    assert_eq!(
        summary.failed(),
        0,
        "failed seeds: {:?}",
        summary.to_json()["failed_seeds"]
    );
    assert_eq!(summary.lost_reports, 0);
    assert_eq!(summary.duplicate_problems, 0);
    assert_eq!(summary.stale_term_accepted, 0);
    // The campaign really injected every kind of fault, and work got done.
    for kind in FaultKind::ALL {
        assert!(summary.faults.get(kind) > 0, "no {} injected", kind.name());
    }
    assert!(summary.incidents > 1_000, "{} incidents", summary.incidents);
    assert!(summary.election.count >= 200);
    assert_eq!(summary.upload.count as u64, summary.incidents);
    let json = summary.to_json();
    for key in [
        "seeds",
        "nodes",
        "failed",
        "lost_reports",
        "duplicate_problems",
        "stale_term_accepted",
        "faults",
        "trace_hash",
    ] {
        assert!(!json[key].is_null(), "{key} missing from {json}");
    }
    for key in [
        "partition",
        "packet_loss",
        "node_kill",
        "disk_fault",
        "clock_skew",
    ] {
        assert!(json["faults"][key].as_u64().unwrap() > 0, "{key}");
    }
}

#[test]
fn a_seed_replays_the_same_trace_and_another_does_not() {
    let first = run_seed(SimConfig::new(4_242, 5));
    let again = run_seed(SimConfig::new(4_242, 5));
    let other = run_seed(SimConfig::new(4_243, 5));
    assert!(first.passed() && again.passed() && other.passed());
    assert_eq!(first.trace_hash, again.trace_hash);
    assert_eq!(first.incidents_acknowledged, again.incidents_acknowledged);
    assert_eq!(first.faults, again.faults);
    assert_ne!(first.trace_hash, other.trace_hash);
    // A campaign's hash is independent of how seeds were spread over worker threads.
    let config = |workers| CampaignConfig {
        workers,
        safety_ms: 15_000,
        ..CampaignConfig::new(10..16, 3)
    };
    let one_worker = run_campaign(&config(1), |_| {});
    let three_workers = run_campaign(&config(3), |_| {});
    assert_eq!(one_worker.trace_hash, three_workers.trace_hash);
}

#[test]
fn without_fencing_the_endpoint_accepts_stale_terms_and_the_campaign_fails() {
    // The command's default workload: stale uploads need uploads in flight at a failover.
    let config = CampaignConfig {
        sabotage: Sabotage::NoFencing,
        ..CampaignConfig::new(0..30, 5)
    };
    let summary = run_campaign(&config, |_| {});
    print!("{}", summary.table());
    assert!(summary.failed() > 0, "no failure without fencing");
    assert!(summary.stale_term_accepted > 0);
    for failure in &summary.failures {
        let violation = failure.violation.as_ref().unwrap();
        assert_eq!(
            violation.invariant,
            Invariant::StaleTermAccepted,
            "{violation}"
        );
        assert!(failure.replay.ends_with("--sabotage no-fencing"));
    }
    // A failure replays: the same seed breaks the same invariant at the same time.
    let failure = &summary.failures[0];
    let mut replay = SimConfig::new(failure.seed, 5);
    replay.sabotage = Sabotage::NoFencing;
    let again = run_seed(replay);
    assert_eq!(again.violation, failure.violation);
    assert_eq!(again.trace_hash, failure.trace_hash);
}

#[test]
fn without_deduplication_the_endpoint_counts_twice_and_the_campaign_fails() {
    let summary = campaign(0..20, Sabotage::NoDedup);
    print!("{}", summary.table());
    assert!(summary.failed() > 0, "no failure without deduplication");
    assert!(summary.duplicate_problems > 0);
    for failure in &summary.failures {
        let invariant = failure.violation.as_ref().unwrap().invariant;
        assert!(
            matches!(
                invariant,
                Invariant::DuplicateIncident | Invariant::DuplicateProblem
            ),
            "{invariant:?}"
        );
    }
}

//! What must hold in every run, and what a broken one looks like.
//!
//! Safety invariants are checked as the run goes (after every node activity and every
//! endpoint call); liveness ("after healing, every acknowledged incident is uploaded within
//! the bound") at the end of the liveness phase.

use std::fmt;

use serde::Serialize;

/// One invariant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Invariant {
    /// An incident the store acknowledged (recorded durably) never reached the endpoint.
    AcknowledgedIncidentLost,
    /// Two nodes were aggregator in the same term.
    TwoAggregatorsInOneTerm,
    /// The endpoint accepted an upload whose term is below one it accepted before.
    StaleTermAccepted,
    /// The endpoint holds two problems for one signature.
    DuplicateProblem,
    /// The endpoint counts one incident twice.
    DuplicateIncident,
    /// A store stayed over its quota though it said it was within it, or a protocol queue
    /// went past its limit.
    QuotaExceeded,
    /// A node was told an incident is uploaded that the endpoint does not have.
    UploadedButAbsent,
    /// An aggregator uploaded a full report without holding all of its chunks.
    UploadWithoutChunks,
    /// A durable term and vote went back, or two votes were given in one term.
    VoteNotDurable,
    /// After healing, the cluster did not converge within the bound.
    NotConverged,
    /// The run did not settle (too many events at one instant, or a panic).
    Runaway,
}

impl Invariant {
    /// The name printed and put in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Invariant::AcknowledgedIncidentLost => "acknowledged_incident_lost",
            Invariant::TwoAggregatorsInOneTerm => "two_aggregators_in_one_term",
            Invariant::StaleTermAccepted => "stale_term_accepted",
            Invariant::DuplicateProblem => "duplicate_problem",
            Invariant::DuplicateIncident => "duplicate_incident",
            Invariant::QuotaExceeded => "quota_exceeded",
            Invariant::UploadedButAbsent => "uploaded_but_absent",
            Invariant::UploadWithoutChunks => "upload_without_chunks",
            Invariant::VoteNotDurable => "vote_not_durable",
            Invariant::NotConverged => "not_converged",
            Invariant::Runaway => "runaway",
        }
    }
}

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Which.
    pub invariant: Invariant,
    /// What exactly.
    pub detail: String,
    /// When (true simulated ms).
    pub at_ms: u64,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {} ms: {}",
            self.invariant.name(),
            self.at_ms,
            self.detail
        )
    }
}

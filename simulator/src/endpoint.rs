//! The simulated upload endpoint, modelled on the real one's rules
//! (`endpoint/src/ingest.rs`): per cluster, a term below the highest seen is refused
//! (`check_term`, then `raise_term`); a report id already stored is acknowledged without
//! change (idempotent); reports are grouped into one problem per signature.
//!
//! It also keeps an audit log of every accepted call, which the invariants read: the
//! endpoint's own bookkeeping is not trusted to check itself.

use std::collections::{BTreeMap, BTreeSet};

use crashmesh_protocol::consolidation::UploadOutcome;
use crashmesh_protocol::wire::ReportId;

use crate::faults::Sabotage;

/// One upload as the aggregator's shell sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadCall {
    /// The cluster.
    pub cluster: String,
    /// The fencing term.
    pub term: u64,
    /// The problem's signature.
    pub signature: String,
    /// The full report's id (a new problem), or none (incident updates).
    pub full_report: Option<ReportId>,
    /// Every incident the upload carries.
    pub incidents: Vec<ReportId>,
}

/// One problem as the endpoint stores it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointProblem {
    /// The signature.
    pub signature: String,
    /// The full reports stored for it (one, unless dedup is sabotaged).
    pub full_reports: Vec<ReportId>,
    /// Every incident counted (each once, unless dedup is sabotaged).
    pub incidents: Vec<ReportId>,
}

/// What the audit log records of an accepted call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The cluster.
    pub cluster: String,
    /// The term it was accepted under.
    pub term: u64,
}

/// The endpoint.
#[derive(Debug, Default)]
pub struct SimEndpoint {
    sabotage: Sabotage,
    highest_term: BTreeMap<String, u64>,
    problems: Vec<EndpointProblem>,
    problem_by_signature: BTreeMap<String, usize>,
    known_reports: BTreeSet<ReportId>,
    /// Calls refused as stale.
    pub stale_refused: u64,
    /// Calls accepted.
    pub accepted: u64,
}

impl SimEndpoint {
    /// An empty endpoint, with a safety mechanism off when sabotaged.
    pub fn new(sabotage: Sabotage) -> SimEndpoint {
        SimEndpoint {
            sabotage,
            ..SimEndpoint::default()
        }
    }

    /// Handles one upload; returns the outcome and, when accepted, the audit record.
    pub fn handle(&mut self, call: &UploadCall) -> (UploadOutcome, Option<Accepted>) {
        let highest = self.highest_term.get(&call.cluster).copied().unwrap_or(0);
        if call.term < highest && self.sabotage != Sabotage::NoFencing {
            self.stale_refused += 1;
            return (UploadOutcome::StaleTerm, None);
        }
        if call.term > highest {
            self.highest_term.insert(call.cluster.clone(), call.term);
        }
        self.accepted += 1;
        let dedup = self.sabotage != Sabotage::NoDedup;
        let problem = match (self.problem_by_signature.get(&call.signature), dedup) {
            (Some(&index), true) => index,
            (Some(&index), false) if call.full_report.is_none() => index,
            _ => {
                self.problems.push(EndpointProblem {
                    signature: call.signature.clone(),
                    ..EndpointProblem::default()
                });
                let index = self.problems.len() - 1;
                self.problem_by_signature
                    .entry(call.signature.clone())
                    .or_insert(index);
                index
            }
        };
        if let Some(full) = &call.full_report
            && (!dedup || !self.known_reports.contains(full))
        {
            self.problems[problem].full_reports.push(full.clone());
        }
        // One call names each report once, even when the full report is also listed as an
        // incident; across calls, only the report-id check keeps a retry from counting again.
        let in_call: BTreeSet<&ReportId> = call
            .full_report
            .iter()
            .chain(call.incidents.iter())
            .collect();
        for report_id in in_call {
            let new = self.known_reports.insert(report_id.clone());
            if new || !dedup {
                self.problems[problem].incidents.push(report_id.clone());
            }
        }
        (
            UploadOutcome::Acked,
            Some(Accepted {
                cluster: call.cluster.clone(),
                term: call.term,
            }),
        )
    }

    /// Every problem stored.
    pub fn problems(&self) -> &[EndpointProblem] {
        &self.problems
    }

    /// True when the endpoint holds this report id (as an incident of some problem).
    pub fn has_report(&self, report_id: &ReportId) -> bool {
        self.known_reports.contains(report_id)
    }

    /// The highest term seen for a cluster.
    pub fn highest_term(&self, cluster: &str) -> u64 {
        self.highest_term.get(cluster).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(term: u64, full: Option<&str>, incidents: &[&str]) -> UploadCall {
        UploadCall {
            cluster: "c".into(),
            term,
            signature: "v1:s".into(),
            full_report: full.map(ReportId::new),
            incidents: incidents.iter().map(|id| ReportId::new(*id)).collect(),
        }
    }

    #[test]
    fn fenced_by_term_idempotent_by_report_id_grouped_by_signature() {
        let mut endpoint = SimEndpoint::new(Sabotage::None);
        assert_eq!(
            endpoint.handle(&call(2, Some("a"), &["a"])).0,
            UploadOutcome::Acked
        );
        assert_eq!(
            endpoint.handle(&call(2, Some("a"), &["a", "b"])).0,
            UploadOutcome::Acked
        );
        assert_eq!(
            endpoint.handle(&call(3, None, &["b", "c"])).0,
            UploadOutcome::Acked
        );
        let (outcome, accepted) = endpoint.handle(&call(2, None, &["d"]));
        assert_eq!((outcome, accepted), (UploadOutcome::StaleTerm, None));
        assert_eq!(endpoint.problems().len(), 1);
        let ids: Vec<&str> = endpoint.problems()[0]
            .incidents
            .iter()
            .map(|id| id.0.as_str())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert!(!endpoint.has_report(&ReportId::new("d")));
        assert_eq!(endpoint.highest_term("c"), 3);
    }

    #[test]
    fn sabotaged_endpoints_accept_stale_terms_or_count_again() {
        let mut unfenced = SimEndpoint::new(Sabotage::NoFencing);
        unfenced.handle(&call(5, Some("a"), &["a"]));
        assert_eq!(
            unfenced.handle(&call(4, None, &["b"])).0,
            UploadOutcome::Acked
        );
        let mut undeduplicated = SimEndpoint::new(Sabotage::NoDedup);
        undeduplicated.handle(&call(1, Some("a"), &["a"]));
        undeduplicated.handle(&call(1, Some("a"), &["a"]));
        undeduplicated.handle(&call(1, None, &["b"]));
        undeduplicated.handle(&call(1, None, &["b"]));
        assert_eq!(undeduplicated.problems().len(), 2);
        let counted: usize = undeduplicated
            .problems()
            .iter()
            .map(|p| p.incidents.len())
            .sum();
        assert_eq!(counted, 4);
    }
}

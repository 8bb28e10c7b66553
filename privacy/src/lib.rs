//! Customer mode: what leaves the cluster carries no secret and no private name.
//!
//! - **Secrets** (cloud and service keys and tokens, passwords in URLs and `key=value`
//!   pairs, bearer tokens, PEM private keys, JWTs, credit-card numbers passing the Luhn
//!   check) are replaced by `[REDACTED:<rule>]`.
//! - **Names** (host names, IPv4/IPv6 and MAC addresses, user names, e-mail addresses,
//!   `/home/<user>`) are replaced by keyed pseudonyms (`host-3f9a0c51e2d4`): blake3 keyed
//!   with the cluster's secret, so the same name gives the same pseudonym on every node
//!   of the cluster (incidents still correlate) and nothing outside it can reverse them.
//! - **Environment variables** outside an allowlist lose their values.
//!
//! Invariants:
//! - No I/O, no clock: callers read files and keys and hand bytes in.
//! - Signatures are never touched (grouping at the endpoint is unchanged); every other
//!   free text of a problem is scrubbed ([`scrub_problem`]).
//! - Every rule runs in one pass of one combined regular expression (linear time in the
//!   input whatever the input), see [`scrub::Scrubber`].

pub mod pseudonym;
pub mod rules;
pub mod scrub;

use crashmesh_protocol::model::{Frame, Problem};
use crashmesh_protocol::report::Incident;

pub use pseudonym::PseudonymKey;
pub use rules::{ExtraPattern, NameClass};
pub use scrub::{LineScrubber, ScrubConfig, ScrubCounts, Scrubber};

/// Why scrubbing could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrivacyError {
    /// A rule (added or built in) that does not compile or is malformed.
    #[error("privacy rule {name:?}: {reason}")]
    BadRule { name: String, reason: String },
    /// A pseudonym key that is not 64 hex digits.
    #[error("privacy key: {0}")]
    BadKey(String),
}

fn scrub_frame(scrubber: &Scrubber, frame: &mut Frame, counts: &mut ScrubCounts) {
    scrubber.scrub_option(&mut frame.module, counts);
    scrubber.scrub_option(&mut frame.file, counts);
    scrubber.scrub_option(&mut frame.code, counts);
}

/// Scrubs every free text of a problem: reason, executable, process, hardware, message,
/// text, analysis error, and of every frame (crashing thread and all threads) its module,
/// file and quoted code line, and thread names. The signature, function names, offsets
/// and build-ids are kept as they are: they are what groups problems.
pub fn scrub_problem(scrubber: &Scrubber, problem: &mut Problem, counts: &mut ScrubCounts) {
    problem.reason = scrubber.scrub_text(&problem.reason, counts);
    for frame in &mut problem.frames {
        scrub_frame(scrubber, frame, counts);
    }
    scrubber.scrub_option(&mut problem.executable, counts);
    if let Some(threads) = problem.threads.as_mut() {
        for thread in threads {
            scrubber.scrub_option(&mut thread.name, counts);
            scrubber.scrub_option(&mut thread.unwind_error, counts);
            for frame in &mut thread.frames {
                scrub_frame(scrubber, frame, counts);
            }
        }
    }
    scrubber.scrub_option(&mut problem.hardware, counts);
    scrubber.scrub_option(&mut problem.process, counts);
    scrubber.scrub_option(&mut problem.message, counts);
    scrubber.scrub_option(&mut problem.text, counts);
    scrubber.scrub_option(&mut problem.analysis_error, counts);
}

/// A node's name as it leaves the cluster.
pub fn node_pseudonym(scrubber: &Scrubber, node: &str) -> String {
    scrubber.pseudonym(NameClass::Host, node)
}

/// A node report id (`NODE:entry`) as it leaves the cluster: the node part pseudonymized,
/// the rest (a time and a pid) kept.
pub fn report_id_pseudonym(scrubber: &Scrubber, report_id: &str) -> String {
    match report_id.split_once(':') {
        Some((node, rest)) => format!("{}:{rest}", node_pseudonym(scrubber, node)),
        None => node_pseudonym(scrubber, report_id),
    }
}

/// Scrubs an incident: node and report id pseudonymized, label values scrubbed.
pub fn scrub_incident(scrubber: &Scrubber, incident: &mut Incident, counts: &mut ScrubCounts) {
    incident.node = node_pseudonym(scrubber, &incident.node);
    counts.add("node_name", false);
    incident.report_id = report_id_pseudonym(scrubber, &incident.report_id);
    for value in incident.labels.values_mut() {
        *value = scrubber.scrub_text(value, counts);
    }
}

#[cfg(test)]
mod tests;

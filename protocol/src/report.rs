//! The consolidated report: what a cluster's aggregator uploads to the endpoint, and what
//! the endpoint answers.
//!
//! An upload is a [`ReportManifest`] (JSON): the problem's full analysis from its first
//! incident, every incident so far, and each attachment as a blob manifest — its length and
//! its chunks (blake3 of the uncompressed bytes, 64 hex digits; FastCDC-cut like the node's
//! store, so a node's chunks and the endpoint's are the same). The endpoint answers with an
//! [`UploadReply`] naming the chunks it lacks; those follow one by one, then the report is
//! completed. Later incidents of the same problem go up as an [`IncidentUpdate`].
//!
//! Invariants:
//! - Everything here is pure: types and validation, no I/O, no clock.
//! - A value that passed `validate` has every id in its expected form (report and chunk
//!   ids 64 lower-case hex digits, cluster and node names from a small safe alphabet, never
//!   starting with a dot), so ids are safe in URLs and file names, and every list and text
//!   is within its limit below.
//! - `format_version` is checked first: a version this build does not know is refused,
//!   never half read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{Problem, ProblemKind};

/// The report format this build writes and reads.
pub const REPORT_FORMAT_VERSION: u32 = 1;
/// Incidents one manifest or update may carry.
pub const INCIDENTS_MAX: usize = 4096;
/// Attachments one report may carry.
pub const ATTACHMENTS_MAX: usize = 256;
/// Chunks one report may name over all its attachments (at 128 KiB average, 8 GiB).
pub const CHUNKS_PER_REPORT_MAX: usize = 65_536;
/// The largest uncompressed chunk (FastCDC's maximum, see [`crate::chunk`]).
pub use crate::chunk::CHUNK_BYTES_MAX;
/// The largest attachment.
pub const ATTACHMENT_BYTES_MAX: u64 = 64 << 30;
/// Bytes of a name: cluster, node, customer, attachment, label key.
pub const NAME_BYTES_MAX: usize = 128;
/// Bytes of an incident's report id as the node made it (`node:entry`).
pub const INCIDENT_ID_BYTES_MAX: usize = 256;
/// Bytes of a label value, a version or a signature.
pub const TEXT_BYTES_MAX: usize = 4096;
/// Labels on one incident.
pub const LABELS_MAX: usize = 32;
/// Frames in the problem's crashing thread.
pub const FRAMES_MAX: usize = 4096;
/// Threads in the problem.
pub const THREADS_MAX: usize = 4096;
/// Rules counted in one report's scrub summary.
pub const SCRUB_RULES_MAX: usize = 256;
/// Bytes of the problem's free texts (`text`, `message`, `reason`) together.
pub const PROBLEM_TEXT_BYTES_MAX: usize = 4 << 20;

/// Why a report, update or reply was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// A `format_version` this build does not read.
    #[error("report format version {found} is not supported (this build reads {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    /// A list or text over its limit.
    #[error("{what} is {value}, over the limit of {limit}")]
    LimitExceeded {
        what: &'static str,
        value: u64,
        limit: u64,
    },
    /// A field that is not in its expected form.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl ReportError {
    /// True for refusals that are about size (an HTTP server answers 413 for them).
    pub fn is_limit(&self) -> bool {
        matches!(self, ReportError::LimitExceeded { .. })
    }
}

/// One occurrence of the problem on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    /// The node it happened on.
    pub node: String,
    /// When, in milliseconds since the Unix epoch (the node's clock).
    pub time_ms: u64,
    /// The node's report id of this incident (`node:entry`): an incident is recorded
    /// once per id.
    pub report_id: String,
    /// The version of what crashed (package version or kernel), when known.
    pub version: Option<String>,
    /// Free-form labels (`test_run = …`), for filtering.
    pub labels: BTreeMap<String, String>,
}

/// A blob as a list of content-addressed chunks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobManifest {
    /// blake3 of the whole uncompressed content, 64 hex digits.
    pub blob_id: String,
    /// The uncompressed length.
    pub len_bytes: u64,
    /// The chunks in order: (blake3 of the uncompressed chunk, 64 hex digits; its length).
    pub chunks: Vec<(String, u32)>,
}

/// A file attached to a report: a correlated log, a core, a /proc snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// A relative name (`node-2/journal.log`): no leading `/`, no `.`/`..` components.
    pub name: String,
    /// Its content.
    pub blob: BlobManifest,
}

/// What scrubbing (customer mode) removed before upload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubSummary {
    /// The privacy mode (`customer`, …).
    pub mode: String,
    /// Values replaced by pseudonyms.
    pub replaced: u64,
    /// Attachments dropped whole (memory dumps the policy withholds, files too large to
    /// scrub).
    pub dropped_attachments: u64,
    /// Secrets removed.
    #[serde(default)]
    pub removed: u64,
    /// Matches per rule (`aws_access_key`, `ipv4_address`, `env_value`, `node_name`, …).
    #[serde(default)]
    pub rules: BTreeMap<String, u64>,
    /// The cluster's policy for memory dumps: `never`, `on_request`, `always`.
    #[serde(default)]
    pub cores: String,
}

/// A consolidated report: one problem, every incident so far, the evidence of the first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportManifest {
    /// [`REPORT_FORMAT_VERSION`].
    pub format_version: u32,
    /// The report's id, 64 hex digits; uploads are idempotent by it.
    pub report_id: String,
    /// The cluster that sends it.
    pub cluster_id: String,
    /// The aggregator's election term (fencing: a lower term than seen is refused).
    pub term: u64,
    /// The customer, when the vendor knows it.
    pub customer_id: Option<String>,
    /// The first incident's full analysis.
    pub problem: Problem,
    /// The problem's signature (equal to `problem.signature`).
    pub signature: String,
    /// The problem's kind (equal to `problem.kind`).
    pub kind: ProblemKind,
    /// Every incident so far, the first one first.
    pub incidents: Vec<Incident>,
    /// The evidence: the first incident's files and the peers' correlated logs.
    pub attachments: Vec<Attachment>,
    /// What scrubbing did, in customer mode.
    pub scrub: Option<ScrubSummary>,
    /// When the aggregator built it (ms since the epoch).
    pub created_ms: u64,
}

/// Later incidents of a problem already reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentUpdate {
    /// The report the incidents belong to.
    pub report_id: String,
    /// The cluster that sends it.
    pub cluster_id: String,
    /// The aggregator's election term.
    pub term: u64,
    /// The problem's signature.
    pub signature: String,
    /// The new incidents (ones already recorded are ignored).
    pub incidents: Vec<Incident>,
}

/// A bug in the endpoint's tracker, as the cluster sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BugRef {
    /// The bug's number.
    pub id: u64,
    /// `open`, `fixed`, `wontfix`, …
    pub status: String,
    /// Where a person reads it.
    pub url: String,
}

/// The endpoint's answer to a manifest, a completion or an update.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadReply {
    /// The problem the report belongs to.
    pub problem_id: String,
    /// True when the endpoint knew the problem before this report.
    pub known: bool,
    /// The problem's bug, once there is one.
    pub bug: Option<BugRef>,
    /// What to do about it meanwhile, when someone wrote it down.
    pub workaround: Option<String>,
    /// Chunk ids the endpoint still lacks; empty once the report is complete.
    pub missing_chunks: Vec<String>,
}

/// True for a lower-case 64-digit hex id (a blake3 hash).
pub fn is_hex_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// True for a name made of `A-Z a-z 0-9 . _ : -`, 1 to `bytes_max` bytes, not starting
/// with a dot (so it is safe as a URL segment and a file name).
pub fn is_safe_name(text: &str, bytes_max: usize) -> bool {
    !text.is_empty()
        && text.len() <= bytes_max
        && !text.starts_with('.')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// True for a relative path of safe names (`node-2/journal.log`).
pub fn is_safe_relative_path(text: &str, bytes_max: usize) -> bool {
    text.len() <= bytes_max
        && !text.is_empty()
        && text
            .split('/')
            .all(|component| is_safe_name(component, bytes_max))
}

fn limit(what: &'static str, value: usize, limit: usize) -> Result<(), ReportError> {
    if value > limit {
        return Err(ReportError::LimitExceeded {
            what,
            value: value as u64,
            limit: limit as u64,
        });
    }
    Ok(())
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ReportError {
    ReportError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn check_hex_id(field: &'static str, text: &str) -> Result<(), ReportError> {
    if is_hex_id(text) {
        Ok(())
    } else {
        Err(invalid(field, "not 64 lower-case hex digits"))
    }
}

fn check_name(field: &'static str, text: &str, bytes_max: usize) -> Result<(), ReportError> {
    if is_safe_name(text, bytes_max) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("not 1..={bytes_max} bytes of A-Z a-z 0-9 . _ : - (no leading dot)"),
        ))
    }
}

fn check_signature(signature: &str) -> Result<(), ReportError> {
    limit("signature bytes", signature.len(), TEXT_BYTES_MAX)?;
    if signature.is_empty() {
        return Err(invalid("signature", "empty"));
    }
    Ok(())
}

fn check_incidents(incidents: &[Incident]) -> Result<(), ReportError> {
    limit("incidents", incidents.len(), INCIDENTS_MAX)?;
    for incident in incidents {
        check_name("incidents.node", &incident.node, NAME_BYTES_MAX)?;
        check_name(
            "incidents.report_id",
            &incident.report_id,
            INCIDENT_ID_BYTES_MAX,
        )?;
        if let Some(version) = &incident.version {
            limit("incident version bytes", version.len(), TEXT_BYTES_MAX)?;
        }
        limit("incident labels", incident.labels.len(), LABELS_MAX)?;
        for (key, value) in &incident.labels {
            check_name("incidents.labels key", key, NAME_BYTES_MAX)?;
            limit("label value bytes", value.len(), TEXT_BYTES_MAX)?;
        }
    }
    Ok(())
}

impl BlobManifest {
    /// Checks ids, limits, and that the chunk lengths add up to `len_bytes`.
    pub fn validate(&self) -> Result<(), ReportError> {
        check_hex_id("blob_id", &self.blob_id)?;
        if self.len_bytes > ATTACHMENT_BYTES_MAX {
            return Err(ReportError::LimitExceeded {
                what: "attachment bytes",
                value: self.len_bytes,
                limit: ATTACHMENT_BYTES_MAX,
            });
        }
        limit(
            "chunks per report",
            self.chunks.len(),
            CHUNKS_PER_REPORT_MAX,
        )?;
        let mut total_bytes = 0u64;
        for (id, len) in &self.chunks {
            check_hex_id("chunk id", id)?;
            if *len == 0 || *len > CHUNK_BYTES_MAX {
                return Err(invalid(
                    "chunk length",
                    format!("{len} is not within 1..={CHUNK_BYTES_MAX}"),
                ));
            }
            total_bytes += u64::from(*len);
        }
        if total_bytes != self.len_bytes {
            return Err(invalid(
                "len_bytes",
                format!(
                    "says {} bytes, its chunks add up to {total_bytes}",
                    self.len_bytes
                ),
            ));
        }
        Ok(())
    }
}

impl ReportManifest {
    /// Checks the version, every id and every limit; see the module's invariants.
    pub fn validate(&self) -> Result<(), ReportError> {
        if self.format_version != REPORT_FORMAT_VERSION {
            return Err(ReportError::UnsupportedVersion {
                found: self.format_version,
                supported: REPORT_FORMAT_VERSION,
            });
        }
        check_hex_id("report_id", &self.report_id)?;
        check_name("cluster_id", &self.cluster_id, NAME_BYTES_MAX)?;
        if let Some(customer) = &self.customer_id {
            check_name("customer_id", customer, NAME_BYTES_MAX)?;
        }
        check_signature(&self.signature)?;
        if self.problem.signature != self.signature {
            return Err(invalid("signature", "differs from problem.signature"));
        }
        if self.problem.kind != self.kind {
            return Err(invalid("kind", "differs from problem.kind"));
        }
        limit("problem frames", self.problem.frames.len(), FRAMES_MAX)?;
        if let Some(threads) = &self.problem.threads {
            limit("problem threads", threads.len(), THREADS_MAX)?;
            let frames: usize = threads.iter().map(|thread| thread.frames.len()).sum();
            limit("problem thread frames", frames, FRAMES_MAX * 16)?;
        }
        let text_bytes = self.problem.reason.len()
            + self.problem.text.as_ref().map_or(0, String::len)
            + self.problem.message.as_ref().map_or(0, String::len);
        limit("problem text bytes", text_bytes, PROBLEM_TEXT_BYTES_MAX)?;
        if self.incidents.is_empty() {
            return Err(invalid("incidents", "a report has at least one incident"));
        }
        check_incidents(&self.incidents)?;
        limit("attachments", self.attachments.len(), ATTACHMENTS_MAX)?;
        let mut names = std::collections::BTreeSet::new();
        for attachment in &self.attachments {
            if !is_safe_relative_path(&attachment.name, NAME_BYTES_MAX * 4) {
                return Err(invalid(
                    "attachments.name",
                    format!("{:?} is not a safe relative path", attachment.name),
                ));
            }
            if !names.insert(attachment.name.as_str()) {
                return Err(invalid(
                    "attachments.name",
                    format!("{:?} twice", attachment.name),
                ));
            }
            attachment.blob.validate()?;
        }
        limit(
            "chunks per report",
            self.chunk_count(),
            CHUNKS_PER_REPORT_MAX,
        )?;
        if let Some(scrub) = &self.scrub {
            limit("scrub rules", scrub.rules.len(), SCRUB_RULES_MAX)?;
            for rule in scrub.rules.keys() {
                check_name("scrub.rules key", rule, NAME_BYTES_MAX)?;
            }
            limit(
                "scrub mode bytes",
                scrub.mode.len() + scrub.cores.len(),
                NAME_BYTES_MAX,
            )?;
        }
        Ok(())
    }

    /// Chunks named over all attachments, repeats counted.
    pub fn chunk_count(&self) -> usize {
        self.attachments
            .iter()
            .map(|attachment| attachment.blob.chunks.len())
            .sum()
    }

    /// Uncompressed bytes over all attachments.
    pub fn payload_bytes(&self) -> u64 {
        self.attachments
            .iter()
            .map(|attachment| attachment.blob.len_bytes)
            .sum()
    }

    /// Every chunk id, in order, without repeats.
    pub fn chunk_ids(&self) -> Vec<&str> {
        let mut seen = std::collections::HashSet::new();
        self.attachments
            .iter()
            .flat_map(|attachment| attachment.blob.chunks.iter())
            .map(|(id, _)| id.as_str())
            .filter(|id| seen.insert(*id))
            .collect()
    }
}

impl IncidentUpdate {
    /// Checks ids and limits.
    pub fn validate(&self) -> Result<(), ReportError> {
        check_hex_id("report_id", &self.report_id)?;
        check_name("cluster_id", &self.cluster_id, NAME_BYTES_MAX)?;
        check_signature(&self.signature)?;
        if self.incidents.is_empty() {
            return Err(invalid("incidents", "an update has at least one incident"));
        }
        check_incidents(&self.incidents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Frame;

    fn hex(byte: u8) -> String {
        format!("{byte:02x}").repeat(32)
    }

    fn manifest() -> ReportManifest {
        let mut problem = Problem::new(ProblemKind::Core, "SIGSEGV in leaf");
        problem.signature = "v1:core:leaf".into();
        problem.frames.push(Frame {
            address: Some(0x401000),
            function: Some("leaf".into()),
            reliable: true,
            ..Frame::default()
        });
        ReportManifest {
            format_version: REPORT_FORMAT_VERSION,
            report_id: hex(0xab),
            cluster_id: "cluster-1".into(),
            term: 3,
            customer_id: None,
            signature: problem.signature.clone(),
            kind: problem.kind,
            problem,
            incidents: vec![Incident {
                node: "node-1".into(),
                time_ms: 1_700_000_000_000,
                report_id: "node-1:1700000000000-42".into(),
                version: Some("1.2.3".into()),
                labels: BTreeMap::from([("test_run".into(), "r1".into())]),
            }],
            attachments: vec![Attachment {
                name: "node-1/journal.log".into(),
                blob: BlobManifest {
                    blob_id: hex(1),
                    len_bytes: 300,
                    chunks: vec![(hex(2), 100), (hex(3), 200)],
                },
            }],
            scrub: None,
            created_ms: 1_700_000_000_500,
        }
    }

    #[test]
    fn a_good_manifest_validates_and_round_trips() {
        let manifest = manifest();
        manifest.validate().unwrap();
        let json = serde_json::to_string(&manifest).unwrap();
        assert_eq!(
            serde_json::from_str::<ReportManifest>(&json).unwrap(),
            manifest
        );
        let bytes = postcard::to_allocvec(&manifest).unwrap();
        assert_eq!(
            postcard::from_bytes::<ReportManifest>(&bytes).unwrap(),
            manifest
        );
        assert_eq!(manifest.chunk_count(), 2);
        assert_eq!(manifest.payload_bytes(), 300);
    }

    #[test]
    fn unknown_version_is_refused_first() {
        let mut manifest = manifest();
        manifest.format_version = 2;
        manifest.report_id = "nonsense".into();
        assert_eq!(
            manifest.validate(),
            Err(ReportError::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        );
    }

    #[test]
    fn path_tricks_in_ids_and_names_are_refused() {
        for bad in ["../etc/passwd", "..", "ABCD", "", "a/b"] {
            let mut manifest = manifest();
            manifest.report_id = bad.into();
            assert!(manifest.validate().is_err(), "{bad}");
        }
        for bad in ["../x", "/abs", "a/../b", ".hidden", "a//b", "a\\b", ""] {
            let mut manifest = manifest();
            manifest.attachments[0].name = bad.into();
            assert!(manifest.validate().is_err(), "{bad}");
        }
        for bad in ["..", "a/b", "node 1", ""] {
            let mut manifest = manifest();
            manifest.incidents[0].node = bad.into();
            assert!(manifest.validate().is_err(), "{bad}");
            let mut manifest = self::manifest();
            manifest.cluster_id = bad.into();
            assert!(manifest.validate().is_err(), "{bad}");
        }
        let mut manifest = manifest();
        manifest.attachments[0].blob.chunks[0].0 = "../".repeat(21) + "a";
        assert!(manifest.validate().is_err());
    }

    #[test]
    fn limits_are_typed_errors() {
        let mut manifest = manifest();
        manifest.incidents = vec![manifest.incidents[0].clone(); INCIDENTS_MAX + 1];
        let error = manifest.validate().unwrap_err();
        assert!(error.is_limit(), "{error}");

        let mut manifest = self::manifest();
        manifest.attachments[0].blob.chunks = vec![(hex(2), 1); CHUNKS_PER_REPORT_MAX + 1];
        manifest.attachments[0].blob.len_bytes = CHUNKS_PER_REPORT_MAX as u64 + 1;
        assert!(manifest.validate().unwrap_err().is_limit());
    }

    #[test]
    fn inconsistent_manifests_are_refused() {
        let mut manifest = manifest();
        manifest.attachments[0].blob.len_bytes = 299;
        assert!(matches!(
            manifest.validate(),
            Err(ReportError::Invalid {
                field: "len_bytes",
                ..
            })
        ));
        let mut manifest = self::manifest();
        manifest.signature = "v1:other".into();
        assert!(manifest.validate().is_err());
        let mut manifest = self::manifest();
        manifest.incidents.clear();
        assert!(manifest.validate().is_err());
        let mut manifest = self::manifest();
        manifest.attachments.push(manifest.attachments[0].clone());
        assert!(manifest.validate().is_err());
        let mut manifest = self::manifest();
        manifest.attachments[0].blob.chunks[0].1 = CHUNK_BYTES_MAX + 1;
        assert!(manifest.validate().is_err());
    }

    #[test]
    fn incident_updates_validate() {
        let manifest = manifest();
        let update = IncidentUpdate {
            report_id: manifest.report_id.clone(),
            cluster_id: manifest.cluster_id.clone(),
            term: 4,
            signature: manifest.signature.clone(),
            incidents: manifest.incidents.clone(),
        };
        update.validate().unwrap();
        let mut bad = update.clone();
        bad.incidents.clear();
        assert!(bad.validate().is_err());
        let mut bad = update;
        bad.report_id = "x".into();
        assert!(bad.validate().is_err());
    }
}

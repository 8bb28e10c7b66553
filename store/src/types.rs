//! The store's public inputs and outputs.

use std::collections::BTreeMap;

use crashmesh_protocol::{Problem, ProblemKind};
use serde::{Deserialize, Serialize};

use crate::ids::{BlobId, ChunkId};

/// The store's limits; every field has a documented default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    /// Everything in the data directory together stays under this (default 5 GiB).
    pub max_bytes: u64,
    /// Keep at least this share of the file system free (default 15 %).
    pub keep_free_percent: u8,
    /// Cores kept per problem; later incidents keep their metadata only (default 3).
    pub max_cores_per_signature: u32,
    /// Evidence (cores, logs) older than this is evicted even under quota (default 30
    /// days: long enough to span a holiday before someone looks, short enough that a
    /// spool never fills with stale cores). 0 disables age eviction.
    pub max_age_days: u32,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            max_bytes: 5 << 30,
            keep_free_percent: 15,
            max_cores_per_signature: 3,
            max_age_days: 30,
        }
    }
}

/// One incident to record: a report the node made of one occurrence of a problem.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewIncident {
    /// Made by the caller, unique; recording the same id twice is a no-op.
    pub report_id: String,
    /// When the problem happened (unix ms).
    pub time_ms: u64,
    /// The node's name.
    pub node: String,
    /// The analysed problem; its `signature` groups incidents into problems.
    pub problem: Problem,
    /// The crashed executable, when known.
    pub executable: Option<String>,
    /// The crashed process's pid.
    pub pid: Option<u32>,
    /// The crashed process's uid.
    pub uid: Option<u32>,
    /// The fatal signal.
    pub signal: Option<i32>,
    /// The core, already in the store (`put_blob`).
    pub core: Option<BlobId>,
    /// True when the core was cut at the capture limit.
    pub core_truncated: bool,
    /// Other evidence by name (`proc/maps`, `log/journal`, …), already in the store.
    pub attachments: Vec<(String, BlobId)>,
    /// Free-form notes and labels.
    pub labels: BTreeMap<String, String>,
}

/// What `record_incident` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// The problem the incident belongs to.
    pub problem_id: String,
    /// True when this incident created the problem.
    pub new_problem: bool,
    /// The problem's incident count after this one.
    pub count: u64,
    /// True when the incident's core is kept (false: none, or over the per-problem limit).
    pub core_kept: bool,
}

/// Whether a problem went out of the cluster yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadState {
    /// Not sent yet.
    Pending,
    /// Accepted by the endpoint at this time (unix ms).
    Uploaded { at_ms: u64 },
}

/// Why an incident no longer holds a piece of evidence it was recorded with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvidenceState {
    /// Kept in the store.
    Kept,
    /// Not kept: the problem already had `max_cores_per_signature` cores.
    DroppedDuplicate,
    /// Evicted to stay inside the quota.
    Evicted,
    /// Evicted because it was older than `max_age_days`.
    Expired,
    /// `check` found a chunk of it missing or corrupt and dropped it.
    Damaged,
}

/// One piece of evidence an incident was recorded with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// `core`, or the attachment's name.
    pub name: String,
    /// The blob's id.
    pub blob: BlobId,
    /// The blob's length.
    pub len_bytes: u64,
    /// Whether it is still in the store.
    pub state: EvidenceState,
}

/// One incident as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IncidentDetail {
    /// The caller's report id.
    pub report_id: String,
    /// The problem it belongs to.
    pub problem_id: String,
    /// When it happened (unix ms).
    pub time_ms: u64,
    /// The node's name.
    pub node: String,
    /// The crashed executable.
    pub executable: Option<String>,
    /// The crashed process's pid.
    pub pid: Option<u32>,
    /// The crashed process's uid.
    pub uid: Option<u32>,
    /// The fatal signal.
    pub signal: Option<i32>,
    /// The core (named `core`), if one was recorded.
    pub core: Option<Evidence>,
    /// True when the core was cut at the capture limit.
    pub core_truncated: bool,
    /// Other evidence by name.
    pub attachments: Vec<Evidence>,
    /// Notes and labels.
    pub labels: BTreeMap<String, String>,
}

/// One line of `problems list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProblemSummary {
    /// Short stable id: 16 hex digits derived from the signature.
    pub id: String,
    /// The problem's kind.
    pub kind: ProblemKind,
    /// One readable line.
    pub reason: String,
    /// The signature incidents are grouped by.
    pub signature: String,
    /// The first frame with a function name.
    pub crash_function: Option<String>,
    /// The crashed executable, when known.
    pub executable: Option<String>,
    /// Incidents, repeats included.
    pub count: u64,
    /// Unix ms of the first incident.
    pub first_seen: u64,
    /// Unix ms of the latest incident.
    pub last_seen: u64,
    /// Cores currently kept.
    pub cores_kept: u32,
    /// Bytes of evidence (uncompressed) currently kept for it.
    pub bytes: u64,
    /// Whether it went out of the cluster.
    pub upload: UploadState,
}

/// One problem in full.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProblemDetail {
    /// What `problems list` shows.
    pub summary: ProblemSummary,
    /// The analysis of the problem's first incident.
    pub problem: Problem,
    /// Every incident recorded, oldest first.
    pub incidents: Vec<IncidentDetail>,
}

/// A blob's manifest: enough to move it between nodes chunk by chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The blake3 hash of the whole content.
    pub blob: BlobId,
    /// The content's length.
    pub len_bytes: u64,
    /// The chunks in order, each with its uncompressed length.
    pub chunks: Vec<(ChunkId, u32)>,
}

/// The store's state for `crashmesh status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// Bytes used in the data directory (index, chunks, temporary files).
    pub used_bytes: u64,
    /// The limit the quota enforces now: `max_bytes`, lowered to keep the free share.
    pub allowed_bytes: u64,
    /// The configured limits.
    pub config: StoreConfig,
    /// Free bytes on the file system.
    pub fs_free_bytes: u64,
    /// Size of the file system.
    pub fs_total_bytes: u64,
    /// Problems known.
    pub problems: u64,
    /// Incidents recorded.
    pub incidents: u64,
    /// Distinct blobs stored.
    pub blobs: u64,
    /// Distinct chunks stored.
    pub chunks: u64,
    /// Bytes freed by eviction since the store was created.
    pub evicted_bytes: u64,
}

/// What `enforce_quota` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvictionReport {
    /// Bytes used before.
    pub used_bytes_before: u64,
    /// Bytes used after.
    pub used_bytes_after: u64,
    /// The limit enforced.
    pub allowed_bytes: u64,
    /// Disk bytes freed.
    pub freed_bytes: u64,
    /// Evidence references dropped: (report id, evidence name, why).
    pub evicted: Vec<(String, String, EvidenceState)>,
    /// True when everything evictable is gone and the store is still over its limit
    /// (what remains is metadata, which is never evicted, or blobs not yet recorded).
    pub still_over_quota: bool,
}

/// What `check` found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Chunks the index lists.
    pub chunks_checked: u64,
    /// Blobs the index lists.
    pub blobs_checked: u64,
    /// Indexed chunks without a file.
    pub missing_chunks: Vec<ChunkId>,
    /// Indexed chunks whose file does not decompress to bytes of the right hash.
    pub corrupt_chunks: Vec<ChunkId>,
    /// Chunk files the index does not list.
    pub orphan_files: Vec<String>,
    /// Reference counts that disagreed with the manifests.
    pub refcount_mismatches: u64,
    /// Blobs with a missing or corrupt chunk.
    pub damaged_blobs: Vec<BlobId>,
    /// Evidence references dropped because their blob was damaged: (report id, name).
    pub dropped_references: Vec<(String, String)>,
    /// True when `repair` was asked for.
    pub repaired: bool,
    /// Problems that remain after repair; non-empty means the CLI exits non-zero.
    pub unrepaired: Vec<String>,
}

impl CheckReport {
    /// True when nothing was wrong.
    pub fn is_clean(&self) -> bool {
        self.missing_chunks.is_empty()
            && self.corrupt_chunks.is_empty()
            && self.orphan_files.is_empty()
            && self.refcount_mismatches == 0
            && self.damaged_blobs.is_empty()
            && self.unrepaired.is_empty()
    }
}

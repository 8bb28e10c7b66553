//! The redb tables and their rows (format version 2).
//!
//! Keys are redb-native; rows are postcard. A change to any row or table is a new
//! [`FORMAT_VERSION`]: open refuses a version it does not know rather than misread it.

use std::collections::BTreeMap;

use crashmesh_protocol::Problem;
use redb::{MultimapTableDefinition, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::ids::{BlobId, ChunkId};
use crate::types::{EvidenceState, Recorded, UploadState};

/// The index format this build reads and writes (2: chunks live in pack files).
pub const FORMAT_VERSION: u64 = 2;

/// Counters and the format version, by name.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta_v1");
/// Chunk id → [`ChunkRow`] as a tuple (references from blob manifests, compressed bytes,
/// uncompressed bytes, pack number, offset in the pack).
pub(crate) const CHUNKS: TableDefinition<[u8; 32], (u64, u64, u64, u64, u64)> =
    TableDefinition::new("chunks_v2");
/// Copies of chunks nothing references any more, by where they lie: (pack number,
/// offset) → (chunk id, compressed bytes). The next collection rewrites or deletes their
/// packs.
pub(crate) const GARBAGE: TableDefinition<(u64, u64), ([u8; 32], u64)> =
    TableDefinition::new("garbage_v2");
/// Pack number → the pack file's length in bytes, for every pack chunks may live in.
pub(crate) const PACKS: TableDefinition<u64, u64> = TableDefinition::new("packs_v2");
/// Packs no chunk lies in any more, whose files the collection deletes: number → length.
pub(crate) const DEAD_PACKS: TableDefinition<u64, u64> = TableDefinition::new("dead_packs_v2");
/// Blob id → [`BlobRow`].
pub(crate) const BLOBS: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("blobs_v1");
/// Problem id → [`ProblemRow`].
pub(crate) const PROBLEMS: TableDefinition<&str, &[u8]> = TableDefinition::new("problems_v1");
/// Signature → problem id.
pub(crate) const SIGNATURES: TableDefinition<&str, &str> = TableDefinition::new("signatures_v1");
/// Report id → [`IncidentRow`].
pub(crate) const INCIDENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("incidents_v1");
/// Problem id → its report ids.
pub(crate) const PROBLEM_INCIDENTS: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("problem_incidents_v1");

pub(crate) const META_FORMAT_VERSION: &str = "format_version";
/// Disk bytes of every pack file believed on disk (in `PACKS` or `DEAD_PACKS`).
pub(crate) const META_PACK_DISK_BYTES: &str = "pack_disk_bytes";
/// Disk bytes freed by eviction, ever.
pub(crate) const META_EVICTED_BYTES: &str = "evicted_bytes";

/// A chunk: how many manifests reference it and where its zstd frame lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChunkRow {
    pub refs: u64,
    pub stored_bytes: u64,
    pub raw_bytes: u64,
    pub pack: u64,
    pub offset: u64,
}

impl ChunkRow {
    pub(crate) fn from_value(value: (u64, u64, u64, u64, u64)) -> ChunkRow {
        let (refs, stored_bytes, raw_bytes, pack, offset) = value;
        ChunkRow {
            refs,
            stored_bytes,
            raw_bytes,
            pack,
            offset,
        }
    }

    pub(crate) fn value(&self) -> (u64, u64, u64, u64, u64) {
        (
            self.refs,
            self.stored_bytes,
            self.raw_bytes,
            self.pack,
            self.offset,
        )
    }
}

/// A blob: its manifest and who holds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct BlobRow {
    pub len_bytes: u64,
    /// Evidence references from incidents.
    pub refs: u64,
    /// `put_blob` calls not yet consumed by `record_incident` or `release_blob`; reset at
    /// open, because their callers died with the process.
    pub pending: u64,
    pub chunks: Vec<(ChunkId, u32)>,
}

/// A problem: the analysis of its first incident and counters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ProblemRow {
    pub id: String,
    pub problem: Problem,
    pub first_seen: u64,
    pub last_seen: u64,
    pub count: u64,
    pub cores_kept: u32,
    /// The report whose core is the problem's first kept core (evicted last).
    pub first_core_report: Option<String>,
    /// Uncompressed bytes of evidence currently kept.
    pub bytes_kept: u64,
    pub upload: UploadState,
}

/// A reference from an incident to a blob.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct EvidenceRow {
    pub name: String,
    pub blob: BlobId,
    pub len_bytes: u64,
    pub state: EvidenceState,
}

/// An incident: metadata that is never evicted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct IncidentRow {
    pub report_id: String,
    pub problem_id: String,
    pub time_ms: u64,
    pub node: String,
    pub executable: Option<String>,
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    pub signal: Option<i32>,
    pub core: Option<EvidenceRow>,
    pub core_truncated: bool,
    pub attachments: Vec<EvidenceRow>,
    pub labels: BTreeMap<String, String>,
    /// What recording it answered, returned again to a repeated call.
    pub recorded: Recorded,
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value).map_err(|error| StoreError::Invalid(error.to_string()))
}

pub(crate) fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|error| StoreError::CorruptRow {
        what: what.to_string(),
        detail: error.to_string(),
    })
}

pub(crate) fn meta_get(
    table: &impl ReadableTable<&'static str, u64>,
    key: &str,
) -> Result<u64, StoreError> {
    Ok(table.get(key)?.map(|value| value.value()).unwrap_or(0))
}

pub(crate) fn meta_add(
    table: &mut redb::Table<&'static str, u64>,
    key: &str,
    delta: i128,
) -> Result<u64, StoreError> {
    let current = table.get(key)?.map(|value| value.value()).unwrap_or(0);
    let next = (current as i128 + delta).max(0) as u64;
    debug_assert!(
        current as i128 + delta >= 0,
        "meta counter {key} went negative"
    );
    table.insert(key, next)?;
    Ok(next)
}

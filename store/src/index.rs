//! The redb tables and their rows (format version 2).
//!
//! Keys are redb-native; rows are postcard. A change to any row or table is a new
//! [`FORMAT_VERSION`]: open refuses a version it does not know rather than misread it.

use std::collections::BTreeMap;

use crashmesh_protocol::Problem;
use redb::{MultimapTableDefinition, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use tracing::debug;

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

/// Every table, opened in one write transaction.
pub(crate) struct Tables<'txn> {
    pub meta: redb::Table<'txn, &'static str, u64>,
    pub chunks: redb::Table<'txn, [u8; 32], (u64, u64, u64, u64, u64)>,
    pub garbage: redb::Table<'txn, (u64, u64), ([u8; 32], u64)>,
    pub packs: redb::Table<'txn, u64, u64>,
    pub dead_packs: redb::Table<'txn, u64, u64>,
    pub blobs: redb::Table<'txn, [u8; 32], &'static [u8]>,
    pub problems: redb::Table<'txn, &'static str, &'static [u8]>,
    pub signatures: redb::Table<'txn, &'static str, &'static str>,
    pub incidents: redb::Table<'txn, &'static str, &'static [u8]>,
    pub problem_incidents: redb::MultimapTable<'txn, &'static str, &'static str>,
}

impl<'txn> Tables<'txn> {
    pub(crate) fn open(txn: &'txn redb::WriteTransaction) -> Result<Tables<'txn>, StoreError> {
        Ok(Tables {
            meta: txn.open_table(META)?,
            chunks: txn.open_table(CHUNKS)?,
            garbage: txn.open_table(GARBAGE)?,
            packs: txn.open_table(PACKS)?,
            dead_packs: txn.open_table(DEAD_PACKS)?,
            blobs: txn.open_table(BLOBS)?,
            problems: txn.open_table(PROBLEMS)?,
            signatures: txn.open_table(SIGNATURES)?,
            incidents: txn.open_table(INCIDENTS)?,
            problem_incidents: txn.open_multimap_table(PROBLEM_INCIDENTS)?,
        })
    }

    pub(crate) fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkRow>, StoreError> {
        Ok(self
            .chunks
            .get(id.0)?
            .map(|value| ChunkRow::from_value(value.value())))
    }

    pub(crate) fn put_chunk(&mut self, id: &ChunkId, row: &ChunkRow) -> Result<(), StoreError> {
        self.chunks.insert(id.0, row.value())?;
        Ok(())
    }

    /// Where a garbage copy of `id` lies, if one does (a scan: garbage is short-lived).
    pub(crate) fn find_garbage(&self, id: &ChunkId) -> Result<Option<(u64, u64, u64)>, StoreError> {
        for entry in self.garbage.iter()? {
            let (key, value) = entry?;
            let (chunk, stored_bytes) = value.value();
            if chunk == id.0 {
                let (pack, offset) = key.value();
                return Ok(Some((pack, offset, stored_bytes)));
            }
        }
        Ok(None)
    }

    pub(crate) fn blob(&self, id: &BlobId) -> Result<Option<BlobRow>, StoreError> {
        match self.blobs.get(id.0)? {
            Some(bytes) => Ok(Some(decode(&format!("blob {id}"), bytes.value())?)),
            None => Ok(None),
        }
    }

    pub(crate) fn problem(&self, id: &str) -> Result<Option<ProblemRow>, StoreError> {
        match self.problems.get(id)? {
            Some(bytes) => Ok(Some(decode(&format!("problem {id}"), bytes.value())?)),
            None => Ok(None),
        }
    }

    pub(crate) fn put_problem(&mut self, row: &ProblemRow) -> Result<(), StoreError> {
        self.problems
            .insert(row.id.as_str(), encode(row)?.as_slice())?;
        Ok(())
    }

    pub(crate) fn incident(&self, report_id: &str) -> Result<Option<IncidentRow>, StoreError> {
        match self.incidents.get(report_id)? {
            Some(bytes) => Ok(Some(decode(
                &format!("incident {report_id}"),
                bytes.value(),
            )?)),
            None => Ok(None),
        }
    }

    pub(crate) fn put_incident(&mut self, row: &IncidentRow) -> Result<(), StoreError> {
        self.incidents
            .insert(row.report_id.as_str(), encode(row)?.as_slice())?;
        Ok(())
    }

    /// Changes a blob's counts; a blob nobody holds any more is deleted and its chunks
    /// released. Returns the compressed bytes of chunks that became garbage.
    pub(crate) fn adjust_blob(
        &mut self,
        id: &BlobId,
        refs_delta: i64,
        pending_delta: i64,
    ) -> Result<u64, StoreError> {
        let Some(mut row) = self.blob(id)? else {
            return Err(StoreError::UnknownBlob(*id));
        };
        row.refs = (row.refs as i64 + refs_delta).max(0) as u64;
        row.pending = (row.pending as i64 + pending_delta).max(0) as u64;
        if row.refs > 0 || row.pending > 0 {
            self.blobs.insert(id.0, encode(&row)?.as_slice())?;
            return Ok(0);
        }
        self.blobs.remove(id.0)?;
        let mut freed_bytes = 0;
        for (chunk_id, _) in &row.chunks {
            freed_bytes += self.release_chunk(chunk_id)?;
        }
        debug!(blob = %id, freed_bytes, "blob released");
        Ok(freed_bytes)
    }

    /// Drops one manifest reference to a chunk; the last one makes it garbage.
    pub(crate) fn release_chunk(&mut self, id: &ChunkId) -> Result<u64, StoreError> {
        let Some(mut row) = self.chunk(id)? else {
            // check() may already have removed a missing chunk's row.
            return Ok(0);
        };
        if row.refs > 1 {
            row.refs -= 1;
            self.put_chunk(id, &row)?;
            return Ok(0);
        }
        self.make_garbage(id, &row)?;
        Ok(row.stored_bytes)
    }

    /// Drops a chunk's row; its copy becomes garbage at its place.
    pub(crate) fn make_garbage(&mut self, id: &ChunkId, row: &ChunkRow) -> Result<(), StoreError> {
        self.chunks.remove(id.0)?;
        self.garbage
            .insert((row.pack, row.offset), (id.0, row.stored_bytes))?;
        Ok(())
    }
}

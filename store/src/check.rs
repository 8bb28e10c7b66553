//! Verifying the index against the pack files, and repairing what can be.

use std::collections::{HashMap, HashSet};

use redb::{ReadableDatabase, ReadableTable};
use tracing::warn;

use crate::chunk;
use crate::error::StoreError;
use crate::ids::{BlobId, ChunkId};
use crate::index::Tables;
use crate::index::{
    BLOBS, BlobRow, CHUNKS, ChunkRow, DEAD_PACKS, INCIDENTS, IncidentRow, PACKS, decode,
};
use crate::pack;
use crate::store::Store;
use crate::types::{CheckReport, EvidenceState};

impl Store {
    /// Verifies every chunk and manifest and finds orphan pack files; with `repair`, fixes
    /// what it can (see the crate documentation) and lists the rest in `unrepaired`.
    pub fn check(&self, repair: bool) -> Result<CheckReport, StoreError> {
        self.collect_garbage()?;
        let _exclusive = self
            .collection_lock
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut report = CheckReport {
            repaired: repair,
            ..CheckReport::default()
        };

        let (chunks, blobs, packs, incidents) = {
            let txn = self.db.begin_read()?;
            let mut chunks: HashMap<ChunkId, ChunkRow> = HashMap::new();
            for entry in txn.open_table(CHUNKS)?.iter()? {
                let (key, value) = entry?;
                chunks.insert(ChunkId(key.value()), ChunkRow::from_value(value.value()));
            }
            let mut blobs: HashMap<BlobId, BlobRow> = HashMap::new();
            for entry in txn.open_table(BLOBS)?.iter()? {
                let (key, value) = entry?;
                let id = BlobId(key.value());
                blobs.insert(id, decode(&format!("blob {id}"), value.value())?);
            }
            let mut packs = HashSet::new();
            for table in [PACKS, DEAD_PACKS] {
                for entry in txn.open_table(table)?.iter()? {
                    packs.insert(entry?.0.value());
                }
            }
            let mut incidents: Vec<IncidentRow> = Vec::new();
            for entry in txn.open_table(INCIDENTS)?.iter()? {
                let (key, value) = entry?;
                incidents.push(decode(&format!("incident {}", key.value()), value.value())?);
            }
            (chunks, blobs, packs, incidents)
        };
        report.chunks_checked = chunks.len() as u64;
        report.blobs_checked = blobs.len() as u64;

        let mut orphan_paths = Vec::new();
        for name in self
            .fs
            .list_dir(&self.packs_dir)
            .map_err(|error| StoreError::io("list", &self.packs_dir, error))?
        {
            let known = pack::parse_pack_file(&name).is_some_and(|number| packs.contains(&number));
            if !known {
                report.orphan_files.push(format!("packs/{name}"));
                orphan_paths.push(self.packs_dir.join(name));
            }
        }

        let mut bad_chunks: HashSet<ChunkId> = HashSet::new();
        let mut sorted_chunks: Vec<_> = chunks.iter().collect();
        sorted_chunks.sort_by_key(|(_, row)| (row.pack, row.offset));
        for (id, row) in sorted_chunks {
            match self.read_stored(id, row) {
                Err(StoreError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    report.missing_chunks.push(*id);
                    bad_chunks.insert(*id);
                }
                Err(StoreError::Io { source, .. }) => {
                    report
                        .unrepaired
                        .push(format!("chunk {id} unreadable: {source}"));
                }
                Err(_) => {
                    report.corrupt_chunks.push(*id);
                    bad_chunks.insert(*id);
                }
                Ok(stored) => match chunk::decompress_verified(id, &stored) {
                    Ok(raw) if raw.len() as u64 == row.raw_bytes => {}
                    _ => {
                        report.corrupt_chunks.push(*id);
                        bad_chunks.insert(*id);
                    }
                },
            }
        }

        let mut expected_chunk_refs: HashMap<ChunkId, u64> = HashMap::new();
        let mut damaged: HashSet<BlobId> = HashSet::new();
        let mut sorted_blobs: Vec<_> = blobs.iter().collect();
        sorted_blobs.sort_by_key(|(id, _)| **id);
        for (blob, row) in &sorted_blobs {
            for (id, _) in &row.chunks {
                *expected_chunk_refs.entry(*id).or_default() += 1;
                if !chunks.contains_key(id) && !bad_chunks.contains(id) {
                    report.missing_chunks.push(*id);
                    bad_chunks.insert(*id);
                }
                if bad_chunks.contains(id) {
                    damaged.insert(**blob);
                }
            }
            if !damaged.contains(*blob) {
                // Every chunk is sound; the blob's hash checks the manifest's order.
                let mut sink = std::io::sink();
                match self.read_blob(blob, &mut sink) {
                    Ok(_) => {}
                    Err(StoreError::Io { .. }) => {
                        report.unrepaired.push(format!("blob {blob} unreadable"));
                    }
                    Err(_) => {
                        damaged.insert(**blob);
                    }
                }
            }
        }
        for (id, row) in &chunks {
            if expected_chunk_refs.get(id).copied().unwrap_or(0) != row.refs {
                // A chunk received from a peer has no reference until its manifest comes.
                if row.refs != 0 || expected_chunk_refs.contains_key(id) {
                    report.refcount_mismatches += 1;
                }
            }
        }
        let mut expected_blob_refs: HashMap<BlobId, u64> = HashMap::new();
        for incident in &incidents {
            let kept = incident
                .core
                .iter()
                .chain(incident.attachments.iter())
                .filter(|evidence| evidence.state == EvidenceState::Kept);
            for evidence in kept {
                *expected_blob_refs.entry(evidence.blob).or_default() += 1;
                if !blobs.contains_key(&evidence.blob) {
                    report.unrepaired.push(format!(
                        "incident {} holds blob {} that is not stored",
                        incident.report_id, evidence.blob
                    ));
                }
            }
        }
        for (blob, row) in &blobs {
            if expected_blob_refs.get(blob).copied().unwrap_or(0) != row.refs {
                report.refcount_mismatches += 1;
            }
        }
        report.damaged_blobs = damaged.iter().copied().collect();
        report.damaged_blobs.sort();
        report.missing_chunks.sort();
        report.corrupt_chunks.sort();

        if !repair {
            return Ok(report);
        }

        for path in &orphan_paths {
            if let Err(error) = self.fs.remove_file(path) {
                report
                    .unrepaired
                    .push(format!("orphan {} not removed: {error}", path.display()));
            }
        }
        let txn = self.db.begin_write()?;
        {
            let mut tables = Tables::open(&txn)?;
            // Reference counts first, so that dropping damaged blobs frees their chunks.
            for (id, row) in &chunks {
                let expected = expected_chunk_refs.get(id).copied().unwrap_or(0);
                if expected == 0 && row.refs == 0 && bad_chunks.contains(id) {
                    // A bad chunk no manifest holds yet is of no use to anyone.
                    tables.make_garbage(id, row)?;
                } else if expected != row.refs && !(row.refs == 0 && expected == 0) {
                    if expected == 0 {
                        tables.make_garbage(id, row)?;
                    } else {
                        tables.put_chunk(
                            id,
                            &ChunkRow {
                                refs: expected,
                                ..*row
                            },
                        )?;
                    }
                }
            }
            for (blob, row) in &blobs {
                let expected = expected_blob_refs.get(blob).copied().unwrap_or(0);
                if expected != row.refs && !damaged.contains(blob) {
                    let delta = expected as i64 - row.refs as i64;
                    tables.adjust_blob(blob, delta, 0)?;
                }
            }
            let mut problems = self.all_problems(&tables)?;
            for mut incident in incidents {
                let mut changed = false;
                let evidence = incident
                    .core
                    .iter_mut()
                    .map(|core| (true, core))
                    .chain(incident.attachments.iter_mut().map(|a| (false, a)));
                for (is_core, evidence) in evidence {
                    if evidence.state == EvidenceState::Kept && damaged.contains(&evidence.blob) {
                        evidence.state = EvidenceState::Damaged;
                        changed = true;
                        report
                            .dropped_references
                            .push((incident.report_id.clone(), evidence.name.clone()));
                        if let Some(problem) = problems.get_mut(&incident.problem_id) {
                            problem.bytes_kept =
                                problem.bytes_kept.saturating_sub(evidence.len_bytes);
                            if is_core {
                                problem.cores_kept = problem.cores_kept.saturating_sub(1);
                            }
                        }
                    }
                }
                if changed {
                    tables.put_incident(&incident)?;
                }
            }
            for problem in problems.values() {
                tables.put_problem(problem)?;
            }
            for blob in &damaged {
                // Drop the blob whatever holds it; its good chunks are released, its bad
                // ones become garbage and their files are deleted.
                if let Some(mut row) = tables.blob(blob)? {
                    row.refs = 0;
                    row.pending = 0;
                    tables
                        .blobs
                        .insert(blob.0, crate::index::encode(&row)?.as_slice())?;
                    tables.adjust_blob(blob, 0, 0)?;
                }
                warn!(%blob, "blob damaged: dropped, incidents keep their metadata");
            }
        }
        txn.commit()?;
        drop(_exclusive);
        self.collect_garbage()?;
        Ok(report)
    }
}

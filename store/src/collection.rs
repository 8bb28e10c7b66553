//! The collection: gives back the space of chunks nothing references (see `pack.rs` for
//! where chunks live and why a pack holding garbage is deleted or rewritten).

use std::collections::{BTreeMap, BTreeSet};

use redb::{ReadableDatabase, ReadableTable};
use tracing::{debug, warn};

use crate::chunk::{self, disk_bytes};
use crate::error::StoreError;
use crate::ids::ChunkId;
use crate::index::*;
use crate::pack::*;
use crate::store::Store;

impl Store {
    /// Frees the space of unreferenced chunks: packs holding only garbage are deleted,
    /// packs holding some are rewritten without it. Waits for running puts.
    pub fn collect_garbage(&self) -> Result<u64, StoreError> {
        let _exclusive = self
            .collection_lock
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.collect_garbage_locked()
    }

    pub(crate) fn collect_garbage_locked(&self) -> Result<u64, StoreError> {
        let written_bytes = self.rewrite_packs_with_garbage()?;
        let freed_bytes = self.delete_dead_packs()?;
        Ok(freed_bytes.saturating_sub(written_bytes))
    }

    /// Copies the live chunks of every pack holding garbage into new packs and retires
    /// the old ones to `DEAD_PACKS`, in one commit. Returns the disk bytes written.
    fn rewrite_packs_with_garbage(&self) -> Result<u64, StoreError> {
        let (with_garbage, mut live) = {
            let txn = self.db.begin_read()?;
            let mut with_garbage = BTreeSet::new();
            for entry in txn.open_table(GARBAGE)?.iter()? {
                with_garbage.insert(entry?.0.value().0);
            }
            let mut live: BTreeMap<u64, Vec<(ChunkId, ChunkRow)>> = BTreeMap::new();
            if !with_garbage.is_empty() {
                for entry in txn.open_table(CHUNKS)?.iter()? {
                    let (key, value) = entry?;
                    let row = ChunkRow::from_value(value.value());
                    if with_garbage.contains(&row.pack) {
                        live.entry(row.pack)
                            .or_default()
                            .push((ChunkId(key.value()), row));
                    }
                }
            }
            (with_garbage, live)
        };
        if with_garbage.is_empty() {
            return Ok(0);
        }
        let mut writer = PackWriter::new(self.pack_place());
        let mut retired = Vec::new();
        let mut moved: Vec<(ChunkId, ChunkRow)> = Vec::new();
        for pack in &with_garbage {
            let chunks = live.remove(pack).unwrap_or_default();
            let path = pack_path(&self.packs_dir, *pack);
            let mut copies = Vec::with_capacity(chunks.len());
            let mut readable = true;
            for (id, row) in &chunks {
                let copy = self
                    .fs
                    .read_at(&path, row.offset, row.stored_bytes as usize)
                    .map_err(|error| error.to_string())
                    .and_then(|stored| {
                        chunk::decompress_verified(id, &stored)
                            .map(|_| stored)
                            .map_err(|error| error.to_string())
                    });
                match copy {
                    Ok(stored) => copies.push((*id, *row, stored)),
                    Err(error) => {
                        // `store check` drops the blobs that hold it; until then the pack
                        // stays as it is.
                        warn!(%id, pack = %path.display(), %error, "live chunk unreadable; pack not rewritten");
                        readable = false;
                        break;
                    }
                }
            }
            if !readable {
                continue;
            }
            for (id, row, stored) in copies {
                let placed = match writer.append(id, &stored, row.raw_bytes) {
                    Ok(placed) => placed,
                    Err(error) => {
                        writer.discard();
                        return Err(error);
                    }
                };
                moved.push((
                    id,
                    ChunkRow {
                        pack: placed.pack,
                        offset: placed.offset,
                        ..row
                    },
                ));
            }
            retired.push(*pack);
        }
        if let Err(error) = writer.make_durable() {
            writer.discard();
            return Err(error);
        }
        let written_bytes: u64 = writer.packs.iter().map(|p| disk_bytes(p.len_bytes)).sum();
        let txn = self.db.begin_write()?;
        {
            let mut tables = Tables::open(&txn)?;
            commit_packs(&mut tables, &writer.packs)?;
            for (id, row) in &moved {
                tables.put_chunk(id, row)?;
            }
            for pack in &retired {
                let len_bytes = tables
                    .packs
                    .remove(*pack)?
                    .map(|value| value.value())
                    .unwrap_or(0);
                tables.dead_packs.insert(*pack, len_bytes)?;
                tables
                    .garbage
                    .retain_in((*pack, 0)..=(*pack, u64::MAX), |_, _| false)?;
            }
        }
        txn.commit()?;
        debug!(
            rewritten = retired.len(),
            moved = moved.len(),
            written_bytes,
            "packs with garbage rewritten"
        );
        Ok(written_bytes)
    }

    /// Deletes the files of dead packs; each one gone stops counting at once. Returns the
    /// disk bytes freed.
    fn delete_dead_packs(&self) -> Result<u64, StoreError> {
        let dead: Vec<(u64, u64)> = {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(DEAD_PACKS)?;
            let mut rows = Vec::new();
            for entry in table.iter()? {
                let (key, value) = entry?;
                rows.push((key.value(), value.value()));
            }
            rows
        };
        if dead.is_empty() {
            return Ok(0);
        }
        // Files go before their rows: a removal lost in a crash leaves an orphan file,
        // which recovery deletes.
        let mut removed = Vec::with_capacity(dead.len());
        let mut freed_bytes = 0;
        let mut failure = None;
        for (number, len_bytes) in &dead {
            let path = pack_path(&self.packs_dir, *number);
            match self.fs.remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    failure = Some(StoreError::io("remove", &path, error));
                    break;
                }
            }
            *self.lock_deleted_uncommitted() += disk_bytes(*len_bytes);
            removed.push(*number);
            freed_bytes += disk_bytes(*len_bytes);
        }
        // What was removed is committed even when a removal failed: the rest stays dead,
        // counted, for the next collection.
        let committed = self.forget_dead_packs(&removed, freed_bytes);
        if committed.is_err() {
            // The rows stay; the next collection finds their files gone and counts them
            // then. Until it does, the usage over-counts, never under-counts.
            *self.lock_deleted_uncommitted() = 0;
        }
        committed?;
        if let Some(error) = failure {
            return Err(error);
        }
        debug!(packs = removed.len(), freed_bytes, "dead packs deleted");
        Ok(freed_bytes)
    }

    fn forget_dead_packs(&self, removed: &[u64], freed_bytes: u64) -> Result<(), StoreError> {
        if removed.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut tables = Tables::open(&txn)?;
            for number in removed {
                tables.dead_packs.remove(*number)?;
            }
            meta_add(
                &mut tables.meta,
                META_PACK_DISK_BYTES,
                -(freed_bytes as i128),
            )?;
        }
        let mut deleted_uncommitted = self.lock_deleted_uncommitted();
        txn.commit()?;
        *deleted_uncommitted = 0;
        Ok(())
    }
}

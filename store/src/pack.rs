//! Pack files: where chunks live on disk, and the collection that gives their space back.
//!
//! A put writes the chunks it adds, one zstd frame after another, into a new pack file
//! (a temporary file, synced, then renamed into `packs/`, the directory synced), so a
//! put creates one file, not one per chunk. `zstdcat packs/X.pack` prints the chunks'
//! bytes in the order they were written.
//!
//! A chunk that loses its last reference becomes a `GARBAGE` row at its place. The
//! collection then, for each pack holding garbage: deletes the pack when nothing in it is
//! referenced any more, and otherwise copies its live chunks (verified) into a new pack,
//! points their rows there in one commit, and deletes the old pack. The old pack is listed
//! in `DEAD_PACKS` from that commit until its file is gone, so its bytes count until then.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable};
use tracing::{debug, warn};

use crate::chunk::{self, disk_bytes};
use crate::error::StoreError;
use crate::ids::ChunkId;
use crate::index::*;
use crate::store::{Store, Tables};

/// The most bytes one pack file takes: a put of more starts another pack, so that
/// rewriting a pack to free part of it never copies more than this.
pub const PACK_BYTES_MAX: u64 = 64 << 20;
/// Bytes gathered in memory before they are appended to the pack file.
const PACK_WRITE_BYTES: usize = 4 << 20;

/// `packs/0000000000000001.pack`.
pub(crate) fn pack_path(packs_dir: &Path, number: u64) -> PathBuf {
    packs_dir.join(format!("{number:016x}.pack"))
}

/// The pack number a file name in `packs/` names, if it is a pack file name.
pub(crate) fn parse_pack_file(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".pack")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// `tmp/<number>.pack`: a pack being written.
pub(crate) fn tmp_pack_path(tmp_dir: &Path, number: u64) -> PathBuf {
    tmp_dir.join(format!("{number:016x}.pack"))
}

/// A chunk a writer placed in a new pack.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NewChunk {
    pub id: ChunkId,
    pub pack: u64,
    pub offset: u64,
    pub stored_bytes: u64,
    pub raw_bytes: u64,
}

/// A pack a writer created, in `tmp/` until it is made durable.
#[derive(Clone, Debug)]
pub(crate) struct NewPack {
    pub number: u64,
    pub tmp_path: PathBuf,
    pub len_bytes: u64,
}

/// Appends chunks to new pack files, starting another at [`PACK_BYTES_MAX`].
pub(crate) struct PackWriter<'store> {
    store: &'store Store,
    pub packs: Vec<NewPack>,
    pub chunks: Vec<NewChunk>,
    pending: Vec<u8>,
}

impl<'store> PackWriter<'store> {
    pub(crate) fn new(store: &'store Store) -> PackWriter<'store> {
        PackWriter {
            store,
            packs: Vec::new(),
            chunks: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// Places one compressed chunk; the bytes reach the file by the next `flush` at the
    /// latest.
    pub(crate) fn append(
        &mut self,
        id: ChunkId,
        stored: &[u8],
        raw_bytes: u64,
    ) -> Result<NewChunk, StoreError> {
        let stored_bytes = stored.len() as u64;
        let full = self.packs.last().is_none_or(|pack| {
            pack.len_bytes > 0 && pack.len_bytes + stored_bytes > PACK_BYTES_MAX
        });
        if full {
            self.flush()?;
            let number = self.store.next_pack_number();
            self.packs.push(NewPack {
                number,
                tmp_path: tmp_pack_path(&self.store.tmp_dir, number),
                len_bytes: 0,
            });
        }
        let pack = self.packs.last_mut().expect("a pack was started");
        let placed = NewChunk {
            id,
            pack: pack.number,
            offset: pack.len_bytes,
            stored_bytes,
            raw_bytes,
        };
        pack.len_bytes += stored_bytes;
        self.pending.extend_from_slice(stored);
        self.chunks.push(placed);
        if self.pending.len() >= PACK_WRITE_BYTES {
            self.flush()?;
        }
        Ok(placed)
    }

    /// Appends what is gathered to the current pack's file.
    pub(crate) fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pack = self.packs.last().expect("bytes pending belong to a pack");
        self.store
            .fs
            .append_file(&pack.tmp_path, &self.pending)
            .map_err(|error| StoreError::io("write", &pack.tmp_path, error))?;
        self.pending.clear();
        Ok(())
    }

    /// Flushes, then makes every pack durable under its name: content synced before the
    /// rename, the renames synced (one directory sync) before the index commit that
    /// references them.
    pub(crate) fn make_durable(&mut self) -> Result<(), StoreError> {
        self.flush()?;
        if self.packs.is_empty() {
            return Ok(());
        }
        let fs = &self.store.fs;
        for pack in &self.packs {
            fs.sync_file(&pack.tmp_path)
                .map_err(|error| StoreError::io("sync", &pack.tmp_path, error))?;
        }
        for pack in &self.packs {
            let path = pack_path(&self.store.packs_dir, pack.number);
            fs.rename(&pack.tmp_path, &path)
                .map_err(|error| StoreError::io("rename", &pack.tmp_path, error))?;
        }
        let dir = &self.store.packs_dir;
        fs.sync_dir(dir)
            .map_err(|error| StoreError::io("sync directory", dir, error))?;
        Ok(())
    }

    /// Best effort after a failure: what stays is a temporary file or an orphan pack,
    /// both removed at the next open.
    pub(crate) fn discard(&self) {
        for pack in &self.packs {
            let _ = self.store.fs.remove_file(&pack.tmp_path);
        }
    }
}

/// Lists the new packs in the index and counts their bytes.
pub(crate) fn commit_packs(tables: &mut Tables<'_>, packs: &[NewPack]) -> Result<(), StoreError> {
    let mut added: i128 = 0;
    for pack in packs {
        tables.packs.insert(pack.number, pack.len_bytes)?;
        added += disk_bytes(pack.len_bytes) as i128;
    }
    meta_add(&mut tables.meta, META_PACK_DISK_BYTES, added)?;
    Ok(())
}

/// Places a newly written chunk: a row of its own when the index lacks the chunk, else
/// (another put stored it meanwhile) garbage at its place. `refs` is the new row's count.
pub(crate) fn place_chunk(
    tables: &mut Tables<'_>,
    chunk: &NewChunk,
    refs: u64,
) -> Result<bool, StoreError> {
    if let Some(existing) = tables.chunk(&chunk.id)?
        && (existing.pack, existing.offset) != (chunk.pack, chunk.offset)
    {
        tables
            .garbage
            .insert((chunk.pack, chunk.offset), (chunk.id.0, chunk.stored_bytes))?;
        return Ok(false);
    }
    tables.put_chunk(
        &chunk.id,
        &ChunkRow {
            refs,
            stored_bytes: chunk.stored_bytes,
            raw_bytes: chunk.raw_bytes,
            pack: chunk.pack,
            offset: chunk.offset,
        },
    )?;
    Ok(true)
}

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
        let mut writer = PackWriter::new(self);
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

//! Pack files: where chunks live on disk (the collection that gives their space back is
//! `collection.rs`).
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

use std::path::{Path, PathBuf};

use crate::chunk::disk_bytes;
use crate::error::StoreError;
use crate::fs::Fs;
use crate::ids::ChunkId;
use crate::index::Tables;
use crate::index::*;

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

/// Where a [`PackWriter`] makes its packs: the store's file system, directories and pack
/// numbers.
#[derive(Clone, Copy)]
pub(crate) struct PackPlace<'store> {
    pub fs: &'store dyn Fs,
    pub tmp_dir: &'store Path,
    pub packs_dir: &'store Path,
    pub next_number: &'store std::sync::atomic::AtomicU64,
}

/// Appends chunks to new pack files, starting another at [`PACK_BYTES_MAX`].
pub(crate) struct PackWriter<'store> {
    store: PackPlace<'store>,
    pub packs: Vec<NewPack>,
    pub chunks: Vec<NewChunk>,
    pending: Vec<u8>,
}

impl<'store> PackWriter<'store> {
    pub(crate) fn new(store: PackPlace<'store>) -> PackWriter<'store> {
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
            let number = self
                .store
                .next_number
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.packs.push(NewPack {
                number,
                tmp_path: tmp_pack_path(self.store.tmp_dir, number),
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
        let fs = self.store.fs;
        for pack in &self.packs {
            fs.sync_file(&pack.tmp_path)
                .map_err(|error| StoreError::io("sync", &pack.tmp_path, error))?;
        }
        for pack in &self.packs {
            let path = pack_path(self.store.packs_dir, pack.number);
            fs.rename(&pack.tmp_path, &path)
                .map_err(|error| StoreError::io("rename", &pack.tmp_path, error))?;
        }
        let dir = self.store.packs_dir;
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

//! The store: opening and recovery, blobs in and out, incidents and problems.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use tracing::{debug, info, warn};

use crate::chunk::{self, CHUNK_BYTES_AVG, CHUNK_BYTES_MAX, CHUNK_BYTES_MIN, disk_bytes};
use crate::error::StoreError;
use crate::fs::{BoxedBackend, Fs, RealFs};
use crate::ids::{BlobId, ChunkId};
use crate::index::*;
use crate::types::*;

/// How many new chunks a put syncs one by one; above this it syncs the file system once.
pub const SYNC_EACH_FILE_CHUNKS_MAX: usize = 16;
/// The longest report id, node name, label key or value accepted.
pub const NAME_BYTES_MAX: usize = 4096;
/// Files outside the store's own (spool, scratch) measured for the quota at most.
pub const OTHER_FILES_MAX: usize = 100_000;
/// The most attachments or labels one incident may carry.
pub const INCIDENT_ITEMS_MAX: usize = 1024;
/// The largest encoded `Problem` an incident may carry.
pub const PROBLEM_BYTES_MAX: usize = 16 << 20;
/// The shortest id prefix `problem` resolves.
pub const PROBLEM_ID_PREFIX_MIN: usize = 4;

/// The largest value [`Store::put_setting`] keeps.
pub const SETTING_BYTES_MAX: usize = 64 * 1024;
/// Small settings of other parts of the node (key → bytes), see [`Store::put_setting`].
const SETTINGS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("settings_v1");

/// The node's durable spool index and content-addressed chunk store.
#[derive(Debug)]
pub struct Store {
    pub(crate) fs: Arc<dyn Fs>,
    pub(crate) data_dir: PathBuf,
    pub(crate) chunks_dir: PathBuf,
    pub(crate) tmp_dir: PathBuf,
    pub(crate) index_path: PathBuf,
    pub(crate) config: StoreConfig,
    pub(crate) db: redb::Database,
    /// Puts hold it shared from their first index look-up to their commit; deleting chunk
    /// files holds it exclusively, so a put never references a chunk whose file is gone.
    pub(crate) collection_lock: RwLock<()>,
    /// Disk bytes of garbage chunk files the running collection already deleted and the
    /// index still counts (its commit comes after the last removal). `used_bytes`
    /// subtracts them, so the usage follows the disk file by file; the lock makes reading
    /// the counter and this one step, and the commit and resetting this another.
    deleted_uncommitted: Mutex<u64>,
    /// Held by `enforce_quota` throughout: two passes measuring the usage at once would
    /// both evict for the same excess.
    pub(crate) quota_lock: Mutex<()>,
    tmp_counter: AtomicU64,
}

/// Every table, opened in one write transaction.
pub(crate) struct Tables<'txn> {
    pub meta: redb::Table<'txn, &'static str, u64>,
    pub chunks: redb::Table<'txn, [u8; 32], (u64, u64, u64)>,
    pub garbage: redb::Table<'txn, [u8; 32], u64>,
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
            blobs: txn.open_table(BLOBS)?,
            problems: txn.open_table(PROBLEMS)?,
            signatures: txn.open_table(SIGNATURES)?,
            incidents: txn.open_table(INCIDENTS)?,
            problem_incidents: txn.open_multimap_table(PROBLEM_INCIDENTS)?,
        })
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
    /// released. Returns the disk bytes of chunks that became garbage.
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
        let Some((refs, stored, raw)) = self.chunks.get(id.0)?.map(|value| value.value()) else {
            // check() may already have removed a missing chunk's row.
            return Ok(0);
        };
        if refs > 1 {
            self.chunks.insert(id.0, (refs - 1, stored, raw))?;
            return Ok(0);
        }
        self.chunks.remove(id.0)?;
        self.garbage.insert(id.0, stored)?;
        Ok(disk_bytes(stored))
    }
}

/// The problem id for a signature: 16 hex digits of a hash of it. A problem without a
/// signature is its own problem, keyed by its report id.
pub fn problem_id_for(signature: &str, report_id: &str) -> String {
    let mut hasher = blake3::Hasher::new();
    if signature.is_empty() {
        hasher.update(b"crashmesh problem id v1, no signature\0");
        hasher.update(report_id.as_bytes());
    } else {
        hasher.update(b"crashmesh problem id v1\0");
        hasher.update(signature.as_bytes());
    }
    hasher.finalize().to_hex()[..16].to_string()
}

fn check_len(what: &'static str, value: usize, limit: usize) -> Result<(), StoreError> {
    if value > limit {
        return Err(StoreError::LimitExceeded {
            what,
            value: value as u64,
            limit: limit as u64,
        });
    }
    Ok(())
}

/// A chunk written to a temporary file by a put, not yet in the index.
struct NewChunk {
    id: ChunkId,
    tmp_path: PathBuf,
    stored_bytes: u64,
    raw_bytes: u64,
}

impl Store {
    /// Opens (creating) the store in `data_dir` on the real file system, running recovery.
    pub fn open(data_dir: &Path, config: StoreConfig) -> Result<Store, StoreError> {
        Store::open_with_fs(Arc::new(RealFs), data_dir, config)
    }

    /// Opens the store on any [`Fs`] (a faulty one in tests, a simulated one in the
    /// simulator), running recovery.
    pub fn open_with_fs(
        fs: Arc<dyn Fs>,
        data_dir: &Path,
        config: StoreConfig,
    ) -> Result<Store, StoreError> {
        if config.keep_free_percent > 90 {
            return Err(StoreError::Invalid(format!(
                "keep_free_percent {} is above 90",
                config.keep_free_percent
            )));
        }
        let data_dir = data_dir.to_path_buf();
        let chunks_dir = data_dir.join("chunks");
        let tmp_dir = data_dir.join("tmp");
        let index_path = data_dir.join("index.redb");
        for name in chunk::fan_out_names() {
            let dir = chunks_dir.join(name);
            fs.create_dir_all(&dir)
                .map_err(|error| StoreError::io("create directory", &dir, error))?;
        }
        for name in tmp_fan_out_names() {
            let dir = tmp_dir.join(name);
            fs.create_dir_all(&dir)
                .map_err(|error| StoreError::io("create directory", &dir, error))?;
        }
        for dir in [&chunks_dir, &data_dir] {
            fs.sync_dir(dir)
                .map_err(|error| StoreError::io("sync directory", dir, error))?;
        }
        if let Some(parent) = data_dir
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            // The data directory's own entry; failing here is not fatal for the store.
            if let Err(error) = fs.sync_dir(parent) {
                warn!(%error, dir = %parent.display(), "could not sync the data directory's parent");
            }
        }

        // Temporary files are puts that never reached their rename.
        let mut removed_tmp = 0;
        for dir in tmp_dirs(&tmp_dir) {
            let removed_before = removed_tmp;
            for name in fs
                .list_dir(&dir)
                .map_err(|error| StoreError::io("list", &dir, error))?
            {
                if dir == tmp_dir && tmp_fan_out_names().any(|fan_out| fan_out == name) {
                    continue;
                }
                let path = dir.join(name);
                fs.remove_file(&path)
                    .map_err(|error| StoreError::io("remove", &path, error))?;
                removed_tmp += 1;
            }
            if removed_tmp > removed_before {
                fs.sync_dir(&dir)
                    .map_err(|error| StoreError::io("sync directory", &dir, error))?;
            }
        }

        let backend = fs
            .open_database(&index_path)
            .map_err(|error| StoreError::io("open index", &index_path, error))?;
        fs.sync_dir(&data_dir)
            .map_err(|error| StoreError::io("sync directory", &data_dir, error))?;
        let db = redb::Database::builder().create_with_backend(BoxedBackend(backend))?;

        let store = Store {
            fs,
            data_dir,
            chunks_dir,
            tmp_dir,
            index_path,
            config,
            db,
            collection_lock: RwLock::new(()),
            deleted_uncommitted: Mutex::new(0),
            quota_lock: Mutex::new(()),
            tmp_counter: AtomicU64::new(0),
        };
        store.check_format()?;
        store.recover()?;
        info!(data_dir = %store.data_dir.display(), removed_tmp, "store open");
        Ok(store)
    }

    /// The limits this store enforces.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn check_format(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut tables = Tables::open(&txn)?;
            let found = tables
                .meta
                .get(META_FORMAT_VERSION)?
                .map(|value| value.value());
            match found {
                Some(FORMAT_VERSION) => {}
                Some(found) => {
                    return Err(StoreError::UnsupportedFormat {
                        found,
                        supported: FORMAT_VERSION,
                    });
                }
                None => {
                    if !tables.incidents.is_empty()? || !tables.blobs.is_empty()? {
                        return Err(StoreError::UnsupportedFormat {
                            found: 0,
                            supported: FORMAT_VERSION,
                        });
                    }
                    tables.meta.insert(META_FORMAT_VERSION, FORMAT_VERSION)?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Finishes or rolls back what a crash left half done: pins of dead callers go,
    /// chunk files the index does not list go, and the byte counter is recomputed.
    fn recover(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut tables = Tables::open(&txn)?;
            let mut pinned = Vec::new();
            for entry in tables.blobs.iter()? {
                let (key, value) = entry?;
                let row: BlobRow = decode("blob", value.value())?;
                if row.pending > 0 {
                    pinned.push((BlobId(key.value()), row.pending));
                }
            }
            for (id, pending) in pinned {
                tables.adjust_blob(&id, 0, -(pending as i64))?;
            }
            let mut unreferenced = Vec::new();
            for entry in tables.chunks.iter()? {
                let (key, value) = entry?;
                if value.value().0 == 0 {
                    unreferenced.push(key.value());
                }
            }
            for id in unreferenced {
                let (_, stored, _) = tables.chunks.remove(id)?.expect("listed above").value();
                tables.garbage.insert(id, stored)?;
            }
        }
        txn.commit()?;

        // Every chunk file the index does not list is an orphan (a put that crashed
        // before its commit, or garbage): delete it.
        let indexed = self.indexed_chunk_ids()?;
        let mut orphans = 0u64;
        for fan_out in chunk::fan_out_names() {
            let dir = self.chunks_dir.join(&fan_out);
            for name in self
                .fs
                .list_dir(&dir)
                .map_err(|error| StoreError::io("list", &dir, error))?
            {
                let keep = chunk::parse_chunk_file(&fan_out, &name)
                    .is_some_and(|id| indexed.contains(&id));
                if !keep {
                    let path = dir.join(&name);
                    self.fs
                        .remove_file(&path)
                        .map_err(|error| StoreError::io("remove", &path, error))?;
                    orphans += 1;
                }
            }
        }

        let txn = self.db.begin_write()?;
        {
            let mut tables = Tables::open(&txn)?;
            tables.garbage.retain(|_, _| false)?;
            let mut chunk_disk_bytes = 0;
            for entry in tables.chunks.iter()? {
                let (_, value) = entry?;
                chunk_disk_bytes += disk_bytes(value.value().1);
            }
            tables
                .meta
                .insert(META_CHUNK_DISK_BYTES, chunk_disk_bytes)?;
        }
        txn.commit()?;
        if orphans > 0 {
            info!(orphans, "recovery deleted orphan chunk files");
        }
        Ok(())
    }

    pub(crate) fn indexed_chunk_ids(&self) -> Result<HashSet<ChunkId>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CHUNKS)?;
        let mut ids = HashSet::new();
        for entry in table.iter()? {
            ids.insert(ChunkId(entry?.0.value()));
        }
        Ok(ids)
    }

    /// Deletes the files of chunks that lost their last reference. Waits for running puts.
    pub fn collect_garbage(&self) -> Result<u64, StoreError> {
        let _exclusive = self
            .collection_lock
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.collect_garbage_locked()
    }

    pub(crate) fn collect_garbage_locked(&self) -> Result<u64, StoreError> {
        let garbage: Vec<([u8; 32], u64)> = {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(GARBAGE)?;
            let mut rows = Vec::new();
            for entry in table.iter()? {
                let (key, value) = entry?;
                rows.push((key.value(), value.value()));
            }
            rows
        };
        if garbage.is_empty() {
            return Ok(0);
        }
        // Files go before their rows: a removal lost in a crash leaves an orphan file,
        // which recovery deletes. Each file gone is subtracted from the usage at once.
        let mut removed = Vec::with_capacity(garbage.len());
        let mut freed_bytes = 0;
        let mut failure = None;
        for (id, stored) in &garbage {
            let path = chunk::chunk_path(&self.chunks_dir, &ChunkId(*id));
            match self.fs.remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    failure = Some(StoreError::io("remove", &path, error));
                    break;
                }
            }
            *self.lock_deleted_uncommitted() += disk_bytes(*stored);
            removed.push(*id);
            freed_bytes += disk_bytes(*stored);
        }
        // What was removed is committed even when a removal failed: the rest stays
        // garbage, counted, for the next collection.
        let committed = self.forget_garbage(&removed, freed_bytes);
        if committed.is_err() {
            // The rows stay; the next collection finds their files gone and counts them
            // then. Until it does, the usage over-counts, never under-counts.
            *self.lock_deleted_uncommitted() = 0;
        }
        committed?;
        if let Some(error) = failure {
            return Err(error);
        }
        debug!(chunks = removed.len(), freed_bytes, "garbage collected");
        Ok(freed_bytes)
    }

    /// Drops the garbage rows of removed chunk files and their bytes from the counter.
    fn forget_garbage(&self, removed: &[[u8; 32]], freed_bytes: u64) -> Result<(), StoreError> {
        if removed.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut tables = Tables::open(&txn)?;
            for id in removed {
                tables.garbage.remove(*id)?;
            }
            meta_add(
                &mut tables.meta,
                META_CHUNK_DISK_BYTES,
                -(freed_bytes as i128),
            )?;
        }
        let mut deleted_uncommitted = self.lock_deleted_uncommitted();
        txn.commit()?;
        *deleted_uncommitted = 0;
        Ok(())
    }

    fn lock_deleted_uncommitted(&self) -> MutexGuard<'_, u64> {
        self.deleted_uncommitted
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn try_collect_garbage(&self) {
        if let Ok(_exclusive) = self.collection_lock.try_write()
            && let Err(error) = self.collect_garbage_locked()
        {
            warn!(%error, "garbage collection failed; it is retried later");
        }
    }

    // ---------------------------------------------------------------- blobs

    /// Stores a blob read from `source` in bounded memory and returns its id. The blob is
    /// durable when this returns, and pinned until `record_incident` names it,
    /// `release_blob` lets it go, or the store is reopened.
    pub fn put_blob(&self, source: &mut impl Read) -> Result<BlobId, StoreError> {
        let _shared = self
            .collection_lock
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut new_chunks: Vec<NewChunk> = Vec::new();
        let result = self.put_blob_locked(source, &mut new_chunks);
        if result.is_err() {
            for new_chunk in &new_chunks {
                // Best effort: what stays is a temporary file or an orphan, both removed
                // at the next open.
                let _ = self.fs.remove_file(&new_chunk.tmp_path);
            }
        }
        result
    }

    /// Stores a blob held in memory.
    pub fn put_blob_bytes(&self, bytes: &[u8]) -> Result<BlobId, StoreError> {
        self.put_blob(&mut &bytes[..])
    }

    fn put_blob_locked(
        &self,
        source: &mut impl Read,
        new_chunks: &mut Vec<NewChunk>,
    ) -> Result<BlobId, StoreError> {
        let mut buffer = vec![0u8; chunk::READ_BUFFER_BYTES];
        let mut filled = 0usize;
        let mut eof = false;
        let mut total_bytes = 0u64;
        let mut blob_hasher = blake3::Hasher::new();
        let mut manifest: Vec<(ChunkId, u32)> = Vec::new();
        let mut seen: HashSet<ChunkId> = HashSet::new();
        loop {
            while !eof && filled < buffer.len() {
                match source.read(&mut buffer[filled..]) {
                    Ok(0) => eof = true,
                    Ok(read) => {
                        filled += read;
                        total_bytes += read as u64;
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(StoreError::Input(error)),
                }
            }
            if total_bytes > chunk::BLOB_BYTES_MAX {
                return Err(StoreError::LimitExceeded {
                    what: "blob bytes",
                    value: total_bytes,
                    limit: chunk::BLOB_BYTES_MAX,
                });
            }
            if filled == 0 {
                break;
            }
            let txn = self.db.begin_read()?;
            let chunks_table = txn.open_table(CHUNKS)?;
            let mut cuts: Vec<(usize, usize)> = Vec::new();
            for cut in fastcdc::v2020::FastCDC::new(
                &buffer[..filled],
                CHUNK_BYTES_MIN,
                CHUNK_BYTES_AVG,
                CHUNK_BYTES_MAX,
            ) {
                let end = cut.offset + cut.length;
                if end == filled && !eof {
                    // The tail may grow into a different chunk once more bytes arrive.
                    break;
                }
                cuts.push((cut.offset, end));
            }
            let consumed = cuts.last().map_or(0, |&(_, end)| end);
            blob_hasher.update(&buffer[..consumed]);
            // Hashing and compressing chunks is most of the work: spread it over the cores,
            // in order, then decide sequentially which chunks are new.
            let ids = parallel_map(&cuts, |&(start, end)| ChunkId::of(&buffer[start..end]));
            let mut wanted: Vec<(ChunkId, usize, usize)> = Vec::new();
            for (&(start, end), id) in cuts.iter().zip(ids) {
                manifest.push((id, (end - start) as u32));
                if seen.insert(id) && chunks_table.get(id.0)?.is_none() {
                    wanted.push((id, start, end));
                }
            }
            for written in parallel_map(&wanted, |&(id, start, end)| {
                self.write_tmp_chunk(id, &buffer[start..end])
            }) {
                new_chunks.push(written?);
            }
            assert!(
                consumed > 0 || (eof && filled == 0),
                "a full buffer always holds a whole chunk"
            );
            buffer.copy_within(consumed..filled, 0);
            filled -= consumed;
            if eof && filled == 0 {
                break;
            }
        }
        let blob = BlobId(*blob_hasher.finalize().as_bytes());
        debug_assert_eq!(
            manifest.iter().map(|(_, len)| *len as u64).sum::<u64>(),
            total_bytes
        );
        self.make_chunks_durable(new_chunks)?;
        self.commit_blob(blob, total_bytes, manifest, new_chunks)?;
        debug!(%blob, total_bytes, new_chunks = new_chunks.len(), "blob stored");
        Ok(blob)
    }

    fn write_tmp_chunk(&self, id: ChunkId, raw: &[u8]) -> Result<NewChunk, StoreError> {
        let stored = chunk::compress(raw)?;
        let number = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp_path = tmp_chunk_path(&self.tmp_dir, number);
        self.fs
            .write_file(&tmp_path, &stored)
            .map_err(|error| StoreError::io("write", &tmp_path, error))?;
        Ok(NewChunk {
            id,
            tmp_path,
            stored_bytes: stored.len() as u64,
            raw_bytes: raw.len() as u64,
        })
    }

    /// A chunk's content is durable before it gets its name, and its name before the
    /// index commit that references it. Few chunks are synced one by one; many are synced
    /// with one `syncfs` before and one after the renames, instead of one journal commit
    /// per file.
    fn make_chunks_durable(&self, new_chunks: &[NewChunk]) -> Result<(), StoreError> {
        if new_chunks.is_empty() {
            return Ok(());
        }
        let sync_each = new_chunks.len() <= SYNC_EACH_FILE_CHUNKS_MAX;
        if sync_each {
            for new_chunk in new_chunks {
                self.fs
                    .sync_file(&new_chunk.tmp_path)
                    .map_err(|error| StoreError::io("sync", &new_chunk.tmp_path, error))?;
            }
        } else {
            self.fs
                .sync_filesystem(&self.data_dir)
                .map_err(|error| StoreError::io("sync file system", &self.data_dir, error))?;
        }
        let mut fan_outs = BTreeSet::new();
        for new_chunk in new_chunks {
            let path = chunk::chunk_path(&self.chunks_dir, &new_chunk.id);
            self.fs
                .rename(&new_chunk.tmp_path, &path)
                .map_err(|error| StoreError::io("rename", &new_chunk.tmp_path, error))?;
            fan_outs.insert(
                path.parent()
                    .expect("chunk paths have a parent")
                    .to_path_buf(),
            );
        }
        if sync_each {
            for dir in fan_outs {
                self.fs
                    .sync_dir(&dir)
                    .map_err(|error| StoreError::io("sync directory", &dir, error))?;
            }
        } else {
            self.fs
                .sync_filesystem(&self.data_dir)
                .map_err(|error| StoreError::io("sync file system", &self.data_dir, error))?;
        }
        Ok(())
    }

    fn commit_blob(
        &self,
        blob: BlobId,
        len_bytes: u64,
        manifest: Vec<(ChunkId, u32)>,
        new_chunks: &[NewChunk],
    ) -> Result<(), StoreError> {
        let written: HashMap<ChunkId, &NewChunk> =
            new_chunks.iter().map(|new| (new.id, new)).collect();
        let txn = self.db.begin_write()?;
        {
            let mut tables = Tables::open(&txn)?;
            if let Some(mut row) = tables.blob(&blob)? {
                row.pending += 1;
                tables.blobs.insert(blob.0, encode(&row)?.as_slice())?;
            } else {
                let mut added_disk_bytes: i128 = 0;
                for (id, raw_len) in &manifest {
                    let existing = tables.chunks.get(id.0)?.map(|value| value.value());
                    if let Some((refs, stored, raw)) = existing {
                        tables.chunks.insert(id.0, (refs + 1, stored, raw))?;
                        continue;
                    }
                    let garbage_bytes = tables.garbage.remove(id.0)?.map(|value| value.value());
                    if let Some(new) = written.get(id) {
                        tables
                            .chunks
                            .insert(id.0, (1, new.stored_bytes, new.raw_bytes))?;
                        added_disk_bytes += disk_bytes(new.stored_bytes) as i128;
                        if let Some(old_bytes) = garbage_bytes {
                            added_disk_bytes -= disk_bytes(old_bytes) as i128;
                        }
                    } else if let Some(stored) = garbage_bytes {
                        // Released since our look-up, but its file is still there: the
                        // collection lock we hold keeps it from being deleted.
                        tables.chunks.insert(id.0, (1, stored, *raw_len as u64))?;
                    } else {
                        return Err(StoreError::Index(format!(
                            "chunk {id} vanished from the index during a put"
                        )));
                    }
                }
                meta_add(&mut tables.meta, META_CHUNK_DISK_BYTES, added_disk_bytes)?;
                let row = BlobRow {
                    len_bytes,
                    refs: 0,
                    pending: 1,
                    chunks: manifest,
                };
                tables.blobs.insert(blob.0, encode(&row)?.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Lets go of a `put_blob` that will not be recorded; an unreferenced blob is freed.
    pub fn release_blob(&self, blob: &BlobId) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut tables = Tables::open(&txn)?;
            tables.adjust_blob(blob, 0, -1)?;
        }
        txn.commit()?;
        self.try_collect_garbage();
        Ok(())
    }

    /// Writes a blob's content to `out`, verifying every chunk and the whole. On error,
    /// what was written is a verified prefix and must be discarded by the caller.
    pub fn read_blob(&self, blob: &BlobId, out: &mut impl Write) -> Result<u64, StoreError> {
        let manifest = self.manifest(blob)?.ok_or(StoreError::UnknownBlob(*blob))?;
        let mut hasher = blake3::Hasher::new();
        let mut written = 0u64;
        for (id, raw_len) in &manifest.chunks {
            let raw = self.read_chunk(blob, id)?;
            if raw.len() != *raw_len as usize {
                return Err(StoreError::CorruptChunk {
                    chunk: *id,
                    detail: format!("{} bytes, the manifest says {raw_len}", raw.len()),
                });
            }
            hasher.update(&raw);
            out.write_all(&raw).map_err(StoreError::Output)?;
            written += raw.len() as u64;
        }
        if BlobId(*hasher.finalize().as_bytes()) != *blob || written != manifest.len_bytes {
            return Err(StoreError::CorruptBlob(*blob));
        }
        Ok(written)
    }

    /// Reads a whole blob into memory (for small blobs: reports, /proc files).
    pub fn read_blob_bytes(&self, blob: &BlobId) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        self.read_blob(blob, &mut out)?;
        Ok(out)
    }

    fn read_chunk(&self, blob: &BlobId, id: &ChunkId) -> Result<Vec<u8>, StoreError> {
        let path = chunk::chunk_path(&self.chunks_dir, id);
        let stored = match self.fs.read_file(&path) {
            Ok(stored) => stored,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::MissingChunk {
                    blob: *blob,
                    chunk: *id,
                });
            }
            Err(error) => return Err(StoreError::io("read", &path, error)),
        };
        chunk::decompress_verified(id, &stored)
    }

    /// A blob's manifest, if the blob is stored.
    pub fn manifest(&self, blob: &BlobId) -> Result<Option<Manifest>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BLOBS)?;
        let Some(bytes) = table.get(blob.0)? else {
            return Ok(None);
        };
        let row: BlobRow = decode(&format!("blob {blob}"), bytes.value())?;
        Ok(Some(Manifest {
            blob: *blob,
            len_bytes: row.len_bytes,
            chunks: row.chunks,
        }))
    }

    /// A blob's uncompressed length, if it is stored.
    pub fn blob_len(&self, blob: &BlobId) -> Result<Option<u64>, StoreError> {
        Ok(self.manifest(blob)?.map(|manifest| manifest.len_bytes))
    }

    /// True when the chunk is in the index (and so on disk).
    pub fn has_chunk(&self, id: &ChunkId) -> Result<bool, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CHUNKS)?;
        Ok(table.get(id.0)?.is_some())
    }

    /// The ids among `ids` this store lacks, in order, without repeats (have/want sync).
    pub fn missing_chunks(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CHUNKS)?;
        let mut seen = HashSet::new();
        let mut missing = Vec::new();
        for id in ids {
            if seen.insert(*id) && table.get(id.0)?.is_none() {
                missing.push(*id);
            }
        }
        Ok(missing)
    }

    /// A chunk's compressed bytes (one zstd frame), verified, for moving it to a peer.
    pub fn chunk_bytes(&self, id: &ChunkId) -> Result<Vec<u8>, StoreError> {
        if !self.has_chunk(id)? {
            return Err(StoreError::UnknownChunk(*id));
        }
        let path = chunk::chunk_path(&self.chunks_dir, id);
        let stored = self
            .fs
            .read_file(&path)
            .map_err(|error| StoreError::io("read", &path, error))?;
        chunk::decompress_verified(id, &stored)?;
        Ok(stored)
    }

    /// Stores a chunk received from a peer after checking it hashes to `id`. It stays
    /// until the store is reopened unless `put_manifest` references it.
    pub fn put_chunk_compressed(&self, id: &ChunkId, stored: &[u8]) -> Result<(), StoreError> {
        if stored.len() as u64 > chunk::CHUNK_COMPRESSED_BYTES_MAX {
            return Err(StoreError::LimitExceeded {
                what: "compressed chunk bytes",
                value: stored.len() as u64,
                limit: chunk::CHUNK_COMPRESSED_BYTES_MAX,
            });
        }
        let raw = chunk::decompress_verified(id, stored)?;
        let _shared = self
            .collection_lock
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.has_chunk(id)? {
            return Ok(());
        }
        let number = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let new_chunk = NewChunk {
            id: *id,
            tmp_path: tmp_chunk_path(&self.tmp_dir, number),
            stored_bytes: stored.len() as u64,
            raw_bytes: raw.len() as u64,
        };
        let result = (|| {
            self.fs
                .write_file(&new_chunk.tmp_path, stored)
                .map_err(|error| StoreError::io("write", &new_chunk.tmp_path, error))?;
            self.make_chunks_durable(std::slice::from_ref(&new_chunk))?;
            let txn = self.db.begin_write()?;
            {
                let mut tables = Tables::open(&txn)?;
                if tables.chunks.get(id.0)?.is_none() {
                    let old = tables.garbage.remove(id.0)?.map(|value| value.value());
                    tables
                        .chunks
                        .insert(id.0, (0, new_chunk.stored_bytes, new_chunk.raw_bytes))?;
                    let delta = disk_bytes(new_chunk.stored_bytes) as i128
                        - old.map(disk_bytes).unwrap_or(0) as i128;
                    meta_add(&mut tables.meta, META_CHUNK_DISK_BYTES, delta)?;
                }
            }
            txn.commit()?;
            Ok(())
        })();
        if result.is_err() {
            let _ = self.fs.remove_file(&new_chunk.tmp_path);
        }
        result
    }

    /// Stores a chunk received from a peer as its uncompressed bytes (the mesh moves raw
    /// chunks, verified by blake3): compressed here, then as [`Store::put_chunk_compressed`].
    pub fn put_chunk_raw(&self, id: &ChunkId, raw: &[u8]) -> Result<(), StoreError> {
        if raw.len() > chunk::CHUNK_BYTES_MAX as usize {
            return Err(StoreError::LimitExceeded {
                what: "chunk bytes",
                value: raw.len() as u64,
                limit: chunk::CHUNK_BYTES_MAX as u64,
            });
        }
        if self.has_chunk(id)? {
            return Ok(());
        }
        let stored = chunk::compress(raw)?;
        self.put_chunk_compressed(id, &stored)
    }

    /// A chunk's uncompressed bytes, verified against its id.
    pub fn chunk_raw(&self, id: &ChunkId) -> Result<Vec<u8>, StoreError> {
        let stored = self.chunk_bytes(id)?;
        chunk::decompress_verified(id, &stored)
    }

    /// Stores a blob whose chunks are all present (received from a peer); pinned like
    /// `put_blob`.
    pub fn put_manifest(&self, manifest: &Manifest) -> Result<BlobId, StoreError> {
        let _shared = self
            .collection_lock
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let total: u64 = manifest.chunks.iter().map(|(_, len)| *len as u64).sum();
        if total != manifest.len_bytes {
            return Err(StoreError::Invalid(format!(
                "manifest of {} says {} bytes, its chunks add up to {total}",
                manifest.blob, manifest.len_bytes
            )));
        }
        // The blob id is verified by reading the chunks back in order.
        let mut hasher = blake3::Hasher::new();
        for (id, raw_len) in &manifest.chunks {
            if !self.has_chunk(id)? {
                return Err(StoreError::UnknownChunk(*id));
            }
            let raw = self.read_chunk(&manifest.blob, id)?;
            if raw.len() != *raw_len as usize {
                return Err(StoreError::Invalid(format!("chunk {id} length differs")));
            }
            hasher.update(&raw);
        }
        if BlobId(*hasher.finalize().as_bytes()) != manifest.blob {
            return Err(StoreError::CorruptBlob(manifest.blob));
        }
        // put_chunk_compressed left the chunks at zero references; a blob takes them.
        let txn = self.db.begin_write()?;
        {
            let mut tables = Tables::open(&txn)?;
            if let Some(mut row) = tables.blob(&manifest.blob)? {
                row.pending += 1;
                tables
                    .blobs
                    .insert(manifest.blob.0, encode(&row)?.as_slice())?;
            } else {
                for (id, _) in &manifest.chunks {
                    let Some((refs, stored, raw)) = tables.chunks.get(id.0)?.map(|v| v.value())
                    else {
                        return Err(StoreError::UnknownChunk(*id));
                    };
                    tables.chunks.insert(id.0, (refs + 1, stored, raw))?;
                }
                let row = BlobRow {
                    len_bytes: manifest.len_bytes,
                    refs: 0,
                    pending: 1,
                    chunks: manifest.chunks.clone(),
                };
                tables
                    .blobs
                    .insert(manifest.blob.0, encode(&row)?.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(manifest.blob)
    }

    // ---------------------------------------------------------------- incidents

    /// Records an incident durably (its metadata is never evicted). Idempotent by
    /// `report_id`: a repeat returns the first call's answer and changes nothing.
    pub fn record_incident(&self, incident: NewIncident) -> Result<Recorded, StoreError> {
        check_len("report id bytes", incident.report_id.len(), NAME_BYTES_MAX)?;
        check_len("node name bytes", incident.node.len(), NAME_BYTES_MAX)?;
        check_len(
            "attachments",
            incident.attachments.len(),
            INCIDENT_ITEMS_MAX,
        )?;
        check_len("labels", incident.labels.len(), INCIDENT_ITEMS_MAX)?;
        for (key, value) in &incident.labels {
            check_len("label bytes", key.len().max(value.len()), NAME_BYTES_MAX)?;
        }
        for (name, _) in &incident.attachments {
            check_len("attachment name bytes", name.len(), NAME_BYTES_MAX)?;
        }
        if incident.report_id.is_empty() {
            return Err(StoreError::Invalid("empty report id".to_string()));
        }
        let problem_bytes = encode(&incident.problem)?;
        check_len("problem bytes", problem_bytes.len(), PROBLEM_BYTES_MAX)?;

        let txn = self.db.begin_write()?;
        let recorded = {
            let mut tables = Tables::open(&txn)?;
            if let Some(existing) = tables.incident(&incident.report_id)? {
                // A repeat: consume the caller's pins so that they do not linger.
                let blobs = incident
                    .core
                    .iter()
                    .chain(incident.attachments.iter().map(|(_, b)| b));
                for blob in blobs {
                    if tables.blob(blob)?.is_some_and(|row| row.pending > 0) {
                        tables.adjust_blob(blob, 0, -1)?;
                    }
                }
                existing.recorded
            } else {
                self.record_new_incident(&mut tables, incident)?
            }
        };
        txn.commit()?;
        self.try_collect_garbage();
        Ok(recorded)
    }

    fn record_new_incident(
        &self,
        tables: &mut Tables<'_>,
        incident: NewIncident,
    ) -> Result<Recorded, StoreError> {
        let problem_id = problem_id_for(&incident.problem.signature, &incident.report_id);
        let existing = tables.problem(&problem_id)?;
        let new_problem = existing.is_none();
        let mut problem = existing.unwrap_or_else(|| ProblemRow {
            id: problem_id.clone(),
            problem: incident.problem.clone(),
            first_seen: incident.time_ms,
            last_seen: incident.time_ms,
            count: 0,
            cores_kept: 0,
            first_core_report: None,
            bytes_kept: 0,
            upload: UploadState::Pending,
        });
        problem.count += 1;
        problem.first_seen = problem.first_seen.min(incident.time_ms);
        problem.last_seen = problem.last_seen.max(incident.time_ms);

        let mut core_kept = false;
        let core = match incident.core {
            None => None,
            Some(blob) => {
                let row = tables.blob(&blob)?.ok_or(StoreError::UnknownBlob(blob))?;
                core_kept = problem.cores_kept < self.config.max_cores_per_signature;
                if core_kept {
                    problem.cores_kept += 1;
                    problem.bytes_kept += row.len_bytes;
                    if problem.first_core_report.is_none() {
                        problem.first_core_report = Some(incident.report_id.clone());
                    }
                }
                tables.adjust_blob(&blob, i64::from(core_kept), -1)?;
                Some(EvidenceRow {
                    name: "core".to_string(),
                    blob,
                    len_bytes: row.len_bytes,
                    state: if core_kept {
                        EvidenceState::Kept
                    } else {
                        EvidenceState::DroppedDuplicate
                    },
                })
            }
        };
        let mut attachments = Vec::with_capacity(incident.attachments.len());
        for (name, blob) in incident.attachments {
            let row = tables.blob(&blob)?.ok_or(StoreError::UnknownBlob(blob))?;
            tables.adjust_blob(&blob, 1, -1)?;
            problem.bytes_kept += row.len_bytes;
            attachments.push(EvidenceRow {
                name,
                blob,
                len_bytes: row.len_bytes,
                state: EvidenceState::Kept,
            });
        }
        let recorded = Recorded {
            problem_id: problem_id.clone(),
            new_problem,
            count: problem.count,
            core_kept,
        };
        let row = IncidentRow {
            report_id: incident.report_id,
            problem_id: problem_id.clone(),
            time_ms: incident.time_ms,
            node: incident.node,
            executable: incident.executable,
            pid: incident.pid,
            uid: incident.uid,
            signal: incident.signal,
            core,
            core_truncated: incident.core_truncated,
            attachments,
            labels: incident.labels,
            recorded: recorded.clone(),
        };
        tables.put_incident(&row)?;
        tables
            .problem_incidents
            .insert(problem_id.as_str(), row.report_id.as_str())?;
        if new_problem && !problem.problem.signature.is_empty() {
            tables
                .signatures
                .insert(problem.problem.signature.as_str(), problem_id.as_str())?;
        }
        tables.put_problem(&problem)?;
        Ok(recorded)
    }

    /// Adds evidence that arrived after the incident was recorded (logs gathered for the
    /// window after the problem, the output of event commands). Consumes the blobs' pins.
    /// Idempotent: an attachment whose name the incident already has is not added again.
    /// Gives back how many were added.
    pub fn add_attachments(
        &self,
        report_id: &str,
        attachments: Vec<(String, BlobId)>,
    ) -> Result<usize, StoreError> {
        for (name, _) in &attachments {
            check_len("attachment name bytes", name.len(), NAME_BYTES_MAX)?;
        }
        let txn = self.db.begin_write()?;
        let added = {
            let mut tables = Tables::open(&txn)?;
            let mut incident = tables
                .incident(report_id)?
                .ok_or_else(|| StoreError::Invalid(format!("no incident {report_id:?}")))?;
            check_len(
                "attachments",
                incident.attachments.len() + attachments.len(),
                INCIDENT_ITEMS_MAX,
            )?;
            let mut problem = tables.problem(&incident.problem_id)?;
            let mut added = 0;
            for (name, blob) in attachments {
                let row = tables.blob(&blob)?.ok_or(StoreError::UnknownBlob(blob))?;
                if incident
                    .attachments
                    .iter()
                    .any(|evidence| evidence.name == name)
                {
                    if row.pending > 0 {
                        tables.adjust_blob(&blob, 0, -1)?;
                    }
                    continue;
                }
                tables.adjust_blob(&blob, 1, -1)?;
                if let Some(problem) = problem.as_mut() {
                    problem.bytes_kept += row.len_bytes;
                }
                incident.attachments.push(EvidenceRow {
                    name,
                    blob,
                    len_bytes: row.len_bytes,
                    state: EvidenceState::Kept,
                });
                added += 1;
            }
            tables.put_incident(&incident)?;
            if let Some(problem) = problem {
                tables.put_problem(&problem)?;
            }
            added
        };
        txn.commit()?;
        Ok(added)
    }

    /// Adds crash-loop repeats that came without evidence to a problem, named by id or
    /// signature. Returns the new count.
    pub fn add_repeat_count(
        &self,
        problem: &str,
        extra: u64,
        time_ms: u64,
    ) -> Result<u64, StoreError> {
        let txn = self.db.begin_write()?;
        let count = {
            let mut tables = Tables::open(&txn)?;
            let id = match tables.signatures.get(problem)? {
                Some(id) => id.value().to_string(),
                None => problem.to_string(),
            };
            let mut row = tables
                .problem(&id)?
                .ok_or_else(|| StoreError::UnknownProblem(problem.to_string()))?;
            row.count = row.count.saturating_add(extra);
            row.last_seen = row.last_seen.max(time_ms);
            tables.put_problem(&row)?;
            row.count
        };
        txn.commit()?;
        Ok(count)
    }

    /// Marks whether a problem went out of the cluster (uploaded evidence is evicted first).
    pub fn set_upload_state(&self, problem_id: &str, state: UploadState) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut tables = Tables::open(&txn)?;
            let mut row = tables
                .problem(problem_id)?
                .ok_or_else(|| StoreError::UnknownProblem(problem_id.to_string()))?;
            row.upload = state;
            tables.put_problem(&row)?;
        }
        txn.commit()?;
        Ok(())
    }

    // ---------------------------------------------------------------- queries

    fn summary(row: &ProblemRow) -> ProblemSummary {
        ProblemSummary {
            id: row.id.clone(),
            kind: row.problem.kind,
            reason: row.problem.reason.clone(),
            signature: row.problem.signature.clone(),
            crash_function: row.problem.crash_function().map(str::to_string),
            executable: row.problem.executable.clone(),
            count: row.count,
            first_seen: row.first_seen,
            last_seen: row.last_seen,
            cores_kept: row.cores_kept,
            bytes: row.bytes_kept,
            upload: row.upload.clone(),
        }
    }

    /// Every problem, oldest first.
    pub fn problems(&self) -> Result<Vec<ProblemSummary>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PROBLEMS)?;
        let mut summaries = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let row: ProblemRow = decode(&format!("problem {}", key.value()), value.value())?;
            summaries.push(Store::summary(&row));
        }
        summaries.sort_by(|a, b| (a.first_seen, &a.id).cmp(&(b.first_seen, &b.id)));
        Ok(summaries)
    }

    /// One problem with its incidents, by id, unique id prefix (at least 4 digits) or
    /// signature.
    pub fn problem(&self, id: &str) -> Result<Option<ProblemDetail>, StoreError> {
        let txn = self.db.begin_read()?;
        let problems = txn.open_table(PROBLEMS)?;
        let signatures = txn.open_table(SIGNATURES)?;
        let mut resolved = match signatures.get(id)? {
            Some(found) => Some(found.value().to_string()),
            None if problems.get(id)?.is_some() => Some(id.to_string()),
            None => None,
        };
        if resolved.is_none() && id.len() >= PROBLEM_ID_PREFIX_MIN {
            let mut matches = Vec::new();
            for entry in problems.range(id..)? {
                let key = entry?.0.value().to_string();
                if !key.starts_with(id) || matches.len() > 1 {
                    break;
                }
                matches.push(key);
            }
            if matches.len() > 1 {
                return Err(StoreError::AmbiguousProblem(id.to_string()));
            }
            resolved = matches.pop();
        }
        let Some(problem_id) = resolved else {
            return Ok(None);
        };
        let Some(bytes) = problems.get(problem_id.as_str())? else {
            return Ok(None);
        };
        let row: ProblemRow = decode(&format!("problem {problem_id}"), bytes.value())?;
        let incidents_table = txn.open_table(INCIDENTS)?;
        let links = txn.open_multimap_table(PROBLEM_INCIDENTS)?;
        let mut incidents = Vec::new();
        for report in links.get(problem_id.as_str())? {
            let report = report?;
            let report_id = report.value();
            if let Some(bytes) = incidents_table.get(report_id)? {
                let row: IncidentRow = decode(&format!("incident {report_id}"), bytes.value())?;
                incidents.push(incident_detail(row));
            }
        }
        incidents.sort_by(|a, b| (a.time_ms, &a.report_id).cmp(&(b.time_ms, &b.report_id)));
        Ok(Some(ProblemDetail {
            summary: Store::summary(&row),
            problem: row.problem,
            incidents,
        }))
    }

    /// One incident by report id.
    pub fn incident(&self, report_id: &str) -> Result<Option<IncidentDetail>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INCIDENTS)?;
        match table.get(report_id)? {
            Some(bytes) => Ok(Some(incident_detail(decode(
                &format!("incident {report_id}"),
                bytes.value(),
            )?))),
            None => Ok(None),
        }
    }

    /// Bytes used in the data directory: chunk files (in whole blocks, garbage included
    /// until its file is deleted), the index file, temporary files and everything else.
    pub fn used_bytes(&self) -> Result<u64, StoreError> {
        let chunk_bytes = {
            // Garbage files a running collection already removed no longer take space.
            let deleted_uncommitted = self.lock_deleted_uncommitted();
            let txn = self.db.begin_read()?;
            let meta = txn.open_table(META)?;
            meta_get(&meta, META_CHUNK_DISK_BYTES)?.saturating_sub(*deleted_uncommitted)
        };
        let index_bytes = self
            .fs
            .file_len(&self.index_path)
            .map_err(|error| StoreError::io("stat", &self.index_path, error))?;
        let mut tmp_bytes = 0;
        for dir in tmp_dirs(&self.tmp_dir) {
            for name in self
                .fs
                .list_dir(&dir)
                .map_err(|error| StoreError::io("list", &dir, error))?
            {
                // A temporary file may be renamed away between the listing and the stat
                // (and the fan-out directories themselves have no length here).
                tmp_bytes += self
                    .fs
                    .file_len(&dir.join(name))
                    .map(disk_bytes)
                    .unwrap_or(0);
            }
        }
        Ok(chunk_bytes + disk_bytes(index_bytes) + tmp_bytes + self.other_bytes())
    }

    /// Bytes of everything else in the data directory (the node's spool, scratch files,
    /// logs): everything in the data dir counts against the quota. These files are not the
    /// store's, so they are measured on the real file system, at most
    /// [`OTHER_FILES_MAX`] of them.
    fn other_bytes(&self) -> u64 {
        let mut total = 0;
        let mut seen = 0usize;
        let mut pending = vec![self.data_dir.clone()];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.filter_map(|entry| entry.ok()) {
                seen += 1;
                if seen > OTHER_FILES_MAX {
                    return total;
                }
                let path = entry.path();
                if path == self.chunks_dir || path == self.tmp_dir || path == self.index_path {
                    continue;
                }
                let Ok(metadata) = entry.metadata() else {
                    continue;
                };
                if metadata.is_dir() {
                    pending.push(path);
                } else {
                    total += disk_bytes(metadata.len());
                }
            }
        }
        total
    }

    /// The limit enforced now: `max_bytes`, lowered so the file system keeps
    /// `keep_free_percent` free (what we use could be freed, so it counts as available).
    pub(crate) fn allowed_bytes(
        &self,
        used_bytes: u64,
    ) -> Result<(u64, crate::FsSpace), StoreError> {
        let space = self
            .fs
            .space(&self.data_dir)
            .map_err(|error| StoreError::io("statvfs", &self.data_dir, error))?;
        let keep_free_bytes =
            (space.total_bytes as u128 * self.config.keep_free_percent as u128 / 100) as u64;
        let available = (used_bytes + space.free_bytes).saturating_sub(keep_free_bytes);
        Ok((self.config.max_bytes.min(available), space))
    }

    /// Bytes used, limits, and counts.
    pub fn status(&self) -> Result<StoreStatus, StoreError> {
        let used_bytes = self.used_bytes()?;
        let (allowed_bytes, space) = self.allowed_bytes(used_bytes)?;
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(StoreStatus {
            used_bytes,
            allowed_bytes,
            config: self.config.clone(),
            fs_free_bytes: space.free_bytes,
            fs_total_bytes: space.total_bytes,
            problems: txn.open_table(PROBLEMS)?.len()?,
            incidents: txn.open_table(INCIDENTS)?.len()?,
            blobs: txn.open_table(BLOBS)?.len()?,
            chunks: txn.open_table(CHUNKS)?.len()?,
            evicted_bytes: meta_get(&meta, META_EVICTED_BYTES)?,
        })
    }

    /// Stores a small setting of another part of the node (the mesh's term and vote, its
    /// boot counter) durably: the commit is `Durability::Immediate`, so it is on disk when
    /// this returns. Settings live in their own table; the rest of the index ignores them.
    pub fn put_setting(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        assert!(key.len() <= NAME_BYTES_MAX && value.len() <= SETTING_BYTES_MAX);
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(|error| StoreError::Index(error.to_string()))?;
        txn.open_table(SETTINGS)?.insert(key, value)?;
        txn.commit()?;
        Ok(())
    }

    /// A setting [`Store::put_setting`] stored, if any.
    pub fn get_setting(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(SETTINGS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        let value = table.get(key)?.map(|value| value.value().to_vec());
        if let Some(value) = &value {
            assert!(value.len() <= SETTING_BYTES_MAX);
        }
        Ok(value)
    }

    /// Every incident row, for eviction and check.
    pub(crate) fn all_incidents(
        &self,
        tables: &Tables<'_>,
    ) -> Result<Vec<IncidentRow>, StoreError> {
        let mut rows = Vec::new();
        for entry in tables.incidents.iter()? {
            let (key, value) = entry?;
            rows.push(decode(&format!("incident {}", key.value()), value.value())?);
        }
        Ok(rows)
    }

    /// Every problem row by id.
    pub(crate) fn all_problems(
        &self,
        tables: &Tables<'_>,
    ) -> Result<BTreeMap<String, ProblemRow>, StoreError> {
        let mut rows = BTreeMap::new();
        for entry in tables.problems.iter()? {
            let (key, value) = entry?;
            let row: ProblemRow = decode(&format!("problem {}", key.value()), value.value())?;
            rows.insert(row.id.clone(), row);
        }
        Ok(rows)
    }
}

fn evidence(row: EvidenceRow) -> Evidence {
    Evidence {
        name: row.name,
        blob: row.blob,
        len_bytes: row.len_bytes,
        state: row.state,
    }
}

fn incident_detail(row: IncidentRow) -> IncidentDetail {
    IncidentDetail {
        report_id: row.report_id,
        problem_id: row.problem_id,
        time_ms: row.time_ms,
        node: row.node,
        executable: row.executable,
        pid: row.pid,
        uid: row.uid,
        signal: row.signal,
        core: row.core.map(evidence),
        core_truncated: row.core_truncated,
        attachments: row.attachments.into_iter().map(evidence).collect(),
        labels: row.labels,
    }
}

/// `map` over `items` on up to [`PARALLEL_WORKERS_MAX`] threads, results in order.
fn parallel_map<T: Sync, R: Send>(items: &[T], map: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(PARALLEL_WORKERS_MAX)
        .min(items.len().max(1));
    if workers <= 1 {
        return items.iter().map(&map).collect();
    }
    let per_worker = items.len().div_ceil(workers);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(per_worker)
            .map(|part| scope.spawn(|| part.iter().map(&map).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("a chunk worker panicked"))
            .collect()
    })
}

/// Threads that hash and compress the chunks of one buffer at most.
const PARALLEL_WORKERS_MAX: usize = 8;

/// Temporary chunk files are spread over this many directories under `tmp/`: the workers
/// of one put create files at once, and every create holds its directory's lock.
const TMP_FAN_OUT: u64 = 16;

fn tmp_fan_out_names() -> impl Iterator<Item = String> {
    (0..TMP_FAN_OUT).map(|n| format!("{n:x}"))
}

/// `tmp/` itself (files of the older flat layout) and its fan-out directories.
fn tmp_dirs(tmp_dir: &Path) -> Vec<PathBuf> {
    std::iter::once(tmp_dir.to_path_buf())
        .chain(tmp_fan_out_names().map(|name| tmp_dir.join(name)))
        .collect()
}

fn tmp_chunk_path(tmp_dir: &Path, number: u64) -> PathBuf {
    tmp_dir
        .join(format!("{:x}", number % TMP_FAN_OUT))
        .join(format!("{number}.chunk"))
}

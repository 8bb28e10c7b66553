//! The store: opening and recovery, blobs in and out, incidents and problems.

use std::collections::{BTreeMap, HashMap, HashSet};
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
use crate::pack::{self, NewChunk, PackWriter};
use crate::types::*;
/// Problem ids are the protocol's, so the node's and the endpoint's agree.
pub use crashmesh_protocol::problem_id_for;

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

/// How many times one chunk read follows the chunk to a new pack (each move is a whole
/// collection, so more than a few in one read means something else is wrong).
pub const CHUNK_MOVES_FOLLOWED_MAX: usize = 4;

/// The largest value [`Store::put_setting`] keeps.
pub const SETTING_BYTES_MAX: usize = 64 * 1024;
/// Small settings of other parts of the node (key → bytes), see [`Store::put_setting`].
const SETTINGS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("settings_v1");

/// The node's durable spool index and content-addressed chunk store.
#[derive(Debug)]
pub struct Store {
    pub(crate) fs: Arc<dyn Fs>,
    pub(crate) data_dir: PathBuf,
    pub(crate) packs_dir: PathBuf,
    pub(crate) tmp_dir: PathBuf,
    pub(crate) index_path: PathBuf,
    pub(crate) config: StoreConfig,
    pub(crate) db: redb::Database,
    /// Puts hold it shared from their first index look-up to their commit; the collection
    /// holds it exclusively, so a put never references a chunk whose pack is gone.
    pub(crate) collection_lock: RwLock<()>,
    /// Disk bytes of dead pack files the running collection already deleted and the
    /// index still counts (its commit comes after the last removal). `used_bytes`
    /// subtracts them, so the usage follows the disk file by file; the lock makes reading
    /// the counter and this one step, and the commit and resetting this another.
    pub(crate) deleted_uncommitted: Mutex<u64>,
    /// Held by `enforce_quota` throughout: two passes measuring the usage at once would
    /// both evict for the same excess.
    pub(crate) quota_lock: Mutex<()>,
    /// The number the next new pack gets; above every pack number the store has used.
    next_pack: AtomicU64,
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
        let packs_dir = data_dir.join("packs");
        let tmp_dir = data_dir.join("tmp");
        let index_path = data_dir.join("index.redb");
        for dir in [&packs_dir, &tmp_dir] {
            fs.create_dir_all(dir)
                .map_err(|error| StoreError::io("create directory", dir, error))?;
        }
        fs.sync_dir(&data_dir)
            .map_err(|error| StoreError::io("sync directory", &data_dir, error))?;
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
        for name in fs
            .list_dir(&tmp_dir)
            .map_err(|error| StoreError::io("list", &tmp_dir, error))?
        {
            let path = tmp_dir.join(name);
            fs.remove_file(&path)
                .map_err(|error| StoreError::io("remove", &path, error))?;
            removed_tmp += 1;
        }
        if removed_tmp > 0 {
            fs.sync_dir(&tmp_dir)
                .map_err(|error| StoreError::io("sync directory", &tmp_dir, error))?;
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
            packs_dir,
            tmp_dir,
            index_path,
            config,
            db,
            collection_lock: RwLock::new(()),
            deleted_uncommitted: Mutex::new(0),
            quota_lock: Mutex::new(()),
            next_pack: AtomicU64::new(1),
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
    /// pack files the index does not list go, and the byte counter is recomputed.
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
                let row = ChunkRow::from_value(value.value());
                if row.refs == 0 {
                    unreferenced.push((ChunkId(key.value()), row));
                }
            }
            for (id, row) in unreferenced {
                tables.make_garbage(&id, &row)?;
            }
            // Their files are orphans now, deleted below.
            tables.dead_packs.retain(|_, _| false)?;
        }
        txn.commit()?;

        // Every pack file the index does not list is an orphan (a put or a rewrite that
        // crashed before its commit, or a dead pack): delete it.
        let listed: HashSet<u64> = {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(PACKS)?;
            let mut listed = HashSet::new();
            for entry in table.iter()? {
                listed.insert(entry?.0.value());
            }
            listed
        };
        let mut highest = listed.iter().copied().max().unwrap_or(0);
        let mut orphans = 0u64;
        for name in self
            .fs
            .list_dir(&self.packs_dir)
            .map_err(|error| StoreError::io("list", &self.packs_dir, error))?
        {
            let number = pack::parse_pack_file(&name);
            if let Some(number) = number {
                highest = highest.max(number);
            }
            if !number.is_some_and(|number| listed.contains(&number)) {
                let path = self.packs_dir.join(&name);
                self.fs
                    .remove_file(&path)
                    .map_err(|error| StoreError::io("remove", &path, error))?;
                orphans += 1;
            }
        }
        if orphans > 0 {
            self.fs
                .sync_dir(&self.packs_dir)
                .map_err(|error| StoreError::io("sync directory", &self.packs_dir, error))?;
        }
        self.next_pack.store(highest + 1, Ordering::SeqCst);

        let txn = self.db.begin_write()?;
        {
            let mut tables = Tables::open(&txn)?;
            tables
                .garbage
                .retain(|(pack, _), _| listed.contains(&pack))?;
            let mut pack_disk_bytes = 0;
            for entry in tables.packs.iter()? {
                pack_disk_bytes += disk_bytes(entry?.1.value());
            }
            tables.meta.insert(META_PACK_DISK_BYTES, pack_disk_bytes)?;
        }
        txn.commit()?;
        if orphans > 0 {
            info!(orphans, "recovery deleted orphan pack files");
        }
        Ok(())
    }

    /// A number no pack has had.
    /// Where this store's packs are made.
    pub(crate) fn pack_place(&self) -> crate::pack::PackPlace<'_> {
        crate::pack::PackPlace {
            fs: &*self.fs,
            tmp_dir: &self.tmp_dir,
            packs_dir: &self.packs_dir,
            next_number: &self.next_pack,
        }
    }

    pub(crate) fn lock_deleted_uncommitted(&self) -> MutexGuard<'_, u64> {
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
        let mut writer = PackWriter::new(self.pack_place());
        let result = self.put_blob_locked(source, &mut writer);
        if result.is_err() {
            writer.discard();
        }
        result
    }

    /// Stores a blob held in memory.
    pub fn put_blob_bytes(&self, bytes: &[u8]) -> Result<BlobId, StoreError> {
        self.put_blob(&mut &bytes[..])
    }

    /// Two stages run at once: this thread reads, cuts (FastCDC is sequential) and hashes
    /// the whole blob, while a worker hashes and compresses the cut chunks (spread over the
    /// cores) and appends the new ones to a pack. Buffers go back and forth, so at most
    /// four of [`chunk::READ_BUFFER_BYTES`] exist (see [`PUT_QUEUE_BATCHES`]).
    fn put_blob_locked(
        &self,
        source: &mut impl Read,
        writer: &mut PackWriter<'_>,
    ) -> Result<BlobId, StoreError> {
        let (to_worker, batches) = std::sync::mpsc::sync_channel::<Batch>(PUT_QUEUE_BATCHES);
        let (give_back, returned) = std::sync::mpsc::channel::<Vec<u8>>();
        let (cut, stored) = std::thread::scope(|scope| {
            let worker = scope.spawn(|| {
                let result = self.store_batches(batches, &give_back, writer);
                drop(give_back);
                result
            });
            let cut = self.cut_blob(source, &to_worker, &returned);
            drop(to_worker);
            let stored = worker.join().expect("the chunk worker panicked");
            (cut, stored)
        });
        // A worker failure makes the cutter fail to send: report the worker's error.
        let manifest = stored?;
        let (blob, total_bytes) = cut?;
        debug_assert_eq!(
            manifest.iter().map(|(_, len)| *len as u64).sum::<u64>(),
            total_bytes
        );
        writer.make_durable()?;
        self.commit_blob(blob, total_bytes, manifest, writer)?;
        debug!(%blob, total_bytes, new_chunks = writer.chunks.len(), "blob stored");
        Ok(blob)
    }

    /// Reads `source` into buffers, cuts each into chunks and sends them on; returns the
    /// blob's id and length.
    fn cut_blob(
        &self,
        source: &mut impl Read,
        to_worker: &std::sync::mpsc::SyncSender<Batch>,
        returned: &std::sync::mpsc::Receiver<Vec<u8>>,
    ) -> Result<(BlobId, u64), StoreError> {
        let mut buffer = vec![0u8; chunk::READ_BUFFER_BYTES];
        let mut filled = 0usize;
        let mut eof = false;
        let mut total_bytes = 0u64;
        let mut blob_hasher = blake3::Hasher::new();
        let worker_gone = || StoreError::Index("the chunk worker stopped".to_string());
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
            assert!(
                consumed > 0 || (eof && filled == 0),
                "a full buffer always holds a whole chunk"
            );
            blob_hasher.update(&buffer[..consumed]);
            // The next buffer: one the worker is done with, else a new one (at most four
            // are ever made: the full channel holds the cutter back).
            let mut next = returned
                .try_recv()
                .unwrap_or_else(|_| vec![0u8; chunk::READ_BUFFER_BYTES]);
            next[..filled - consumed].copy_from_slice(&buffer[consumed..filled]);
            let data = std::mem::replace(&mut buffer, next);
            filled -= consumed;
            to_worker
                .send(Batch { data, cuts })
                .map_err(|_| worker_gone())?;
            if eof && filled == 0 {
                break;
            }
        }
        Ok((BlobId(*blob_hasher.finalize().as_bytes()), total_bytes))
    }

    /// Hashes and compresses the chunks of each batch, appends the new ones to the pack,
    /// and gives the buffer back; returns the blob's manifest.
    fn store_batches(
        &self,
        batches: std::sync::mpsc::Receiver<Batch>,
        give_back: &std::sync::mpsc::Sender<Vec<u8>>,
        writer: &mut PackWriter<'_>,
    ) -> Result<Vec<(ChunkId, u32)>, StoreError> {
        let mut manifest: Vec<(ChunkId, u32)> = Vec::new();
        let mut seen: HashSet<ChunkId> = HashSet::new();
        for Batch { data, cuts } in batches {
            let txn = self.db.begin_read()?;
            let chunks_table = txn.open_table(CHUNKS)?;
            // Hashing and compressing chunks is most of the work: spread it over the
            // cores, in order, then decide sequentially which chunks are new.
            let ids = parallel_map(&cuts, |&(start, end)| ChunkId::of(&data[start..end]));
            let mut wanted: Vec<(ChunkId, usize, usize)> = Vec::new();
            for (&(start, end), id) in cuts.iter().zip(ids) {
                manifest.push((id, (end - start) as u32));
                if seen.insert(id) && chunks_table.get(id.0)?.is_none() {
                    wanted.push((id, start, end));
                }
            }
            let compressed = parallel_map(&wanted, |&(id, start, end)| {
                chunk::compress(&data[start..end]).map(|stored| (id, stored, end - start))
            });
            for result in compressed {
                let (id, stored, raw_bytes) = result?;
                writer.append(id, &stored, raw_bytes as u64)?;
            }
            // The cutter may have finished already; then the buffer is simply dropped.
            let _ = give_back.send(data);
        }
        Ok(manifest)
    }

    fn commit_blob(
        &self,
        blob: BlobId,
        len_bytes: u64,
        manifest: Vec<(ChunkId, u32)>,
        writer: &PackWriter<'_>,
    ) -> Result<(), StoreError> {
        let written: HashMap<ChunkId, &NewChunk> =
            writer.chunks.iter().map(|new| (new.id, new)).collect();
        let txn = self.db.begin_write()?;
        {
            let mut tables = Tables::open(&txn)?;
            pack::commit_packs(&mut tables, &writer.packs)?;
            if let Some(mut row) = tables.blob(&blob)? {
                // Stored meanwhile by another put: what this one wrote is garbage.
                row.pending += 1;
                tables.blobs.insert(blob.0, encode(&row)?.as_slice())?;
                for new in &writer.chunks {
                    tables
                        .garbage
                        .insert((new.pack, new.offset), (new.id.0, new.stored_bytes))?;
                }
            } else {
                let mut placed: HashSet<ChunkId> = HashSet::new();
                for (id, raw_len) in &manifest {
                    if let Some(new) = written.get(id)
                        && !placed.contains(id)
                    {
                        placed.insert(*id);
                        if pack::place_chunk(&mut tables, new, 1)? {
                            continue;
                        }
                    }
                    if let Some(mut row) = tables.chunk(id)? {
                        row.refs += 1;
                        tables.put_chunk(id, &row)?;
                    } else if let Some((pack, offset, stored_bytes)) = tables.find_garbage(id)? {
                        // Released since our look-up, but its pack is still there: the
                        // collection lock we hold keeps it from being rewritten.
                        tables.garbage.remove((pack, offset))?;
                        tables.put_chunk(
                            id,
                            &ChunkRow {
                                refs: 1,
                                stored_bytes,
                                raw_bytes: *raw_len as u64,
                                pack,
                                offset,
                            },
                        )?;
                    } else {
                        return Err(StoreError::Index(format!(
                            "chunk {id} vanished from the index during a put"
                        )));
                    }
                }
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
        let missing = StoreError::MissingChunk {
            blob: *blob,
            chunk: *id,
        };
        let stored = match self.stored_chunk(id) {
            Ok(Some(stored)) => stored,
            Ok(None) => return Err(missing),
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(missing);
            }
            Err(error) => return Err(error),
        };
        chunk::decompress_verified(id, &stored)
    }

    /// A chunk's compressed bytes (not verified), `None` when the index lacks it. Readers
    /// hold no lock, so a collection may move a live chunk to a new pack and delete the
    /// old one between the look-up and the read: a pack gone from under the read is
    /// followed to the chunk's new place ([`CHUNK_MOVES_FOLLOWED_MAX`] times).
    fn stored_chunk(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(mut row) = self.chunk_row(id)? else {
            return Ok(None);
        };
        let mut moves = 0;
        loop {
            match self.read_stored(id, &row) {
                Err(StoreError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound
                        && moves < CHUNK_MOVES_FOLLOWED_MAX =>
                {
                    match self.chunk_row(id)? {
                        Some(now) if now != row => {
                            row = now;
                            moves += 1;
                        }
                        _ => {
                            let path = pack::pack_path(&self.packs_dir, row.pack);
                            return Err(StoreError::io("read", &path, source));
                        }
                    }
                }
                other => return other.map(Some),
            }
        }
    }

    /// A chunk's index row, if the chunk is stored.
    pub(crate) fn chunk_row(&self, id: &ChunkId) -> Result<Option<ChunkRow>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CHUNKS)?;
        Ok(table
            .get(id.0)?
            .map(|value| ChunkRow::from_value(value.value())))
    }

    /// A chunk's compressed bytes as its pack holds them (not verified). A pack shorter
    /// than the row says is a corrupt chunk.
    pub(crate) fn read_stored(&self, id: &ChunkId, row: &ChunkRow) -> Result<Vec<u8>, StoreError> {
        let path = pack::pack_path(&self.packs_dir, row.pack);
        match self
            .fs
            .read_at(&path, row.offset, row.stored_bytes as usize)
        {
            Ok(stored) => Ok(stored),
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(StoreError::CorruptChunk {
                    chunk: *id,
                    detail: format!("pack {} is shorter than the index says", path.display()),
                })
            }
            Err(error) => Err(StoreError::io("read", &path, error)),
        }
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
        let stored = self
            .stored_chunk(id)?
            .ok_or(StoreError::UnknownChunk(*id))?;
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
        let mut writer = PackWriter::new(self.pack_place());
        let result = (|| {
            let new = writer.append(*id, stored, raw.len() as u64)?;
            writer.make_durable()?;
            let txn = self.db.begin_write()?;
            {
                let mut tables = Tables::open(&txn)?;
                pack::commit_packs(&mut tables, &writer.packs)?;
                pack::place_chunk(&mut tables, &new, 0)?;
            }
            txn.commit()?;
            Ok(())
        })();
        if result.is_err() {
            writer.discard();
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
                    let Some(mut row) = tables.chunk(id)? else {
                        return Err(StoreError::UnknownChunk(*id));
                    };
                    row.refs += 1;
                    tables.put_chunk(id, &row)?;
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

    /// The problem an incident belongs to: its signature's. A scheme 2 native signature
    /// the store has not seen yet joins the problem the same crash's scheme 1 signature
    /// made before the upgrade (`crashmesh_protocol::signature::previous_signature`), and
    /// the signatures table remembers it.
    fn problem_id_of(
        &self,
        tables: &mut Tables<'_>,
        incident: &NewIncident,
    ) -> Result<String, StoreError> {
        let signature = incident.problem.signature.as_str();
        let fresh = problem_id_for(signature, &incident.report_id);
        if signature.is_empty() {
            return Ok(fresh);
        }
        if let Some(id) = tables.signatures.get(signature)? {
            return Ok(id.value().to_string());
        }
        if tables.problem(&fresh)?.is_some() {
            return Ok(fresh);
        }
        let Some(previous) = crashmesh_protocol::signature::previous_signature(&incident.problem)
        else {
            return Ok(fresh);
        };
        let Some(old) = tables
            .signatures
            .get(previous.0.as_str())?
            .map(|id| id.value().to_string())
        else {
            return Ok(fresh);
        };
        tables.signatures.insert(signature, old.as_str())?;
        Ok(old)
    }

    fn record_new_incident(
        &self,
        tables: &mut Tables<'_>,
        incident: NewIncident,
    ) -> Result<Recorded, StoreError> {
        let problem_id = self.problem_id_of(tables, &incident)?;
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

    /// The problem of a signature, if there is one (one lookup in the signatures table).
    pub fn problem_of_signature(
        &self,
        signature: &str,
    ) -> Result<Option<ProblemSummary>, StoreError> {
        let txn = self.db.begin_read()?;
        let signatures = txn.open_table(SIGNATURES)?;
        let Some(id) = signatures
            .get(signature)?
            .map(|found| found.value().to_string())
        else {
            return Ok(None);
        };
        let problems = txn.open_table(PROBLEMS)?;
        let Some(value) = problems.get(id.as_str())? else {
            return Ok(None);
        };
        let row: ProblemRow = decode(&format!("problem {id}"), value.value())?;
        Ok(Some(Store::summary(&row)))
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

    /// Bytes used in the data directory: pack files (in whole blocks, garbage included
    /// until its file is deleted), the index file, temporary files and everything else.
    pub fn used_bytes(&self) -> Result<u64, StoreError> {
        let chunk_bytes = {
            // Garbage files a running collection already removed no longer take space.
            let deleted_uncommitted = self.lock_deleted_uncommitted();
            let txn = self.db.begin_read()?;
            let meta = txn.open_table(META)?;
            meta_get(&meta, META_PACK_DISK_BYTES)?.saturating_sub(*deleted_uncommitted)
        };
        let index_bytes = self
            .fs
            .file_len(&self.index_path)
            .map_err(|error| StoreError::io("stat", &self.index_path, error))?;
        let mut tmp_bytes = 0;
        for name in self
            .fs
            .list_dir(&self.tmp_dir)
            .map_err(|error| StoreError::io("list", &self.tmp_dir, error))?
        {
            // A temporary file may be renamed away between the listing and the stat.
            tmp_bytes += self
                .fs
                .file_len(&self.tmp_dir.join(name))
                .map(disk_bytes)
                .unwrap_or(0);
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
                if path == self.packs_dir || path == self.tmp_dir || path == self.index_path {
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

/// Batches queued between a put's cutter and its worker. A put then holds at most four
/// read buffers: one being filled, one being sent, one queued, one being stored.
const PUT_QUEUE_BATCHES: usize = 1;

/// A buffer of a blob and the chunks cut in it, from the cutter to the worker.
struct Batch {
    data: Vec<u8>,
    cuts: Vec<(usize, usize)>,
}

/// Threads that hash and compress the chunks of one buffer at most.
const PARALLEL_WORKERS_MAX: usize = 8;

//! Local blob storage: chunks appended to a few large pack files, located through a redb
//! table, instead of one file per chunk.
//!
//! A file per chunk cost an inode allocation per chunk, and ext4's allocator scans past
//! recently deleted inodes: on a busy file system a 128 KiB chunk's `create` alone took
//! 0.1–0.8 ms, most of the endpoint's time for large reports. Appending costs a copy.
//!
//! ```text
//! BLOBS/packs/00000001.pack   records: "CMPK", length (u32 LE), chunk id (32 bytes), the zstd frame
//! BLOBS/chunks/ab/cdef…       chunks of older data dirs (one file each), still read
//! ```
//! The `chunks_v1` table of `endpoint.redb` maps a chunk id to (pack, offset of the frame,
//! length).
//!
//! Invariants:
//! - a chunk is indexed only after its bytes are durable: the committer calls
//!   [`Packs::stage`] (one `fdatasync` per pack written since the last one), then writes the
//!   locations in the transaction that records the reports naming them, so a recorded
//!   report never names a chunk a power cut could lose;
//! - a chunk whose PUT was answered is findable at once: until that commit its location is
//!   held in memory (a process that stops before it leaves bytes nothing names, and the
//!   uploader, whose report was not acknowledged, sends them again);
//! - a pack is only appended to, by this process, at offsets reserved under a lock; a new
//!   pack's name is made durable (directory `fsync`) before anything is written to it;
//! - a pack's blocks are reserved [`PREALLOCATE_BYTES`] ahead of its appends (`fallocate`,
//!   the file's size unchanged) and what was not written is given back when the pack is
//!   closed, or, after a crash, when the writer opens the packs again.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use crate::db::Db;
use crate::error::EndpointError;

/// Chunk id (hex) → (pack number, offset of the zstd frame, its length).
pub(crate) const CHUNKS: TableDefinition<&str, (u64, u64, u32)> = TableDefinition::new("chunks_v1");

/// A pack is closed for appends past this size.
pub const PACK_BYTES_MAX: u64 = 1 << 30;
/// The writeback thread's pause between two rounds, so a round covers many appends and
/// appenders rarely have to wake it.
const WRITEBACK_PAUSE: Duration = Duration::from_millis(1);
/// How far ahead of its appends a pack's blocks are reserved.
pub const PREALLOCATE_BYTES: u64 = 64 << 20;
/// Packs appended to at once: a thread keeps to its lane, so two request threads do not
/// queue on one file's inode lock.
const LANES: usize = 4;
/// Pack files kept open for reading.
const READERS_OPEN_MAX: usize = 64;
/// The record header: magic, length, chunk id.
const RECORD_MAGIC: &[u8; 4] = b"CMPK";
const RECORD_HEADER_BYTES: u64 = 4 + 4 + 32;

/// Where a chunk's frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Location {
    pub pack: u64,
    pub offset: u64,
    pub len: u32,
}

/// The pack being appended to.
struct Writer {
    pack: u64,
    file: Arc<File>,
    end: u64,
    /// The file's blocks reserved up to here ([`PREALLOCATE_BYTES`] at a time).
    allocated: u64,
    /// False once the file system refused a reservation: the pack's appends stop asking.
    reserving: bool,
}

impl Writer {
    /// Reserves the pack's blocks ahead of `end`, so that appends land in blocks the file
    /// system allocated once, rather than one reservation per 4 KiB page (measured: ext4's
    /// delayed allocation was a third of a payload upload's write cost; 960–990 MB/s
    /// without, 1,140–1,170 with). A file system that cannot reserve just allocates as
    /// the appends come, and is not asked again for this pack.
    fn reserve(&mut self) {
        use std::os::fd::AsRawFd;
        if !self.reserving || self.end <= self.allocated {
            return;
        }
        let len = PREALLOCATE_BYTES.max(self.end - self.allocated);
        // SAFETY: a plain syscall on a file we own.
        let reserved = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_KEEP_SIZE,
                self.allocated as libc::off_t,
                len as libc::off_t,
            )
        };
        if reserved == 0 {
            self.allocated += len;
        } else {
            tracing::debug!(error = %std::io::Error::last_os_error(), pack = self.pack, "cannot reserve pack blocks");
            self.reserving = false;
        }
    }
}

impl Drop for Writer {
    /// Gives back what was reserved past the last append.
    fn drop(&mut self) {
        if self.allocated > self.end {
            release_beyond(&self.file, self.end);
        }
    }
}

/// Frees a pack's blocks past `end`, reserved and never written: a truncation to the
/// size it has (or will have once the appends in flight land) gives them back (a hole
/// punched past the end of a file does not, on ext4).
fn release_beyond(file: &File, end: u64) {
    if let Err(error) = file.set_len(end) {
        tracing::debug!(%error, "cannot release a pack's reserved blocks");
    }
}

/// Chunks in pack files under one directory.
pub struct Packs {
    dir: PathBuf,
    db: Arc<Db>,
    fsync: bool,
    /// `chunks/` of an older data dir exists: look there too.
    legacy: bool,
    /// The packs being appended to, one per lane; `None` until a lane's first append
    /// (which starts a new pack).
    lanes: Vec<Mutex<Option<Writer>>>,
    /// The highest pack number in use.
    last_pack: Mutex<u64>,
    readers: Mutex<HashMap<u64, Arc<File>>>,
    /// Chunks appended and not yet indexed (see [`Packs::stage`]).
    unindexed: Mutex<HashMap<String, Location>>,
    /// Ranges just appended, for the writeback thread (with `fsync`).
    writeback: Option<Arc<Writeback>>,
}

/// The spans appended since the writeback thread's last round, one per pack file.
struct Writeback {
    state: Mutex<WritebackState>,
    wake: Condvar,
}

#[derive(Default)]
struct WritebackState {
    spans: Vec<(Arc<File>, u64, u64)>,
    /// The thread waits for a span (an appender must wake it).
    idle: bool,
    stop: bool,
}

impl Writeback {
    fn add(&self, file: Arc<File>, start: u64, end: u64) {
        let mut state = self.state.lock().unwrap();
        match state
            .spans
            .iter_mut()
            .find(|span| Arc::ptr_eq(&span.0, &file))
        {
            Some(span) => {
                span.1 = span.1.min(start);
                span.2 = span.2.max(end);
            }
            None => state.spans.push((file, start, end)),
        }
        if state.idle {
            state.idle = false;
            self.wake.notify_one();
        }
    }
}

impl Drop for Packs {
    fn drop(&mut self) {
        if let Some(writeback) = &self.writeback {
            writeback.state.lock().unwrap().stop = true;
            writeback.wake.notify_one();
        }
    }
}

/// Chunk locations made durable, to be written in the committing transaction.
pub struct Staged {
    pub(crate) locations: Vec<(String, Location)>,
}

/// The lane the next thread to append takes.
static NEXT_LANE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn pack_name(pack: u64) -> String {
    format!("{pack:08}.pack")
}

fn raw_id(id: &str) -> Result<[u8; 32], EndpointError> {
    let mut raw = [0u8; 32];
    for (index, byte) in raw.iter_mut().enumerate() {
        *byte = u8::from_str_radix(id.get(index * 2..index * 2 + 2).unwrap_or("zz"), 16)
            .map_err(|_| EndpointError::BadRequest(format!("bad chunk id {id:?}")))?;
    }
    Ok(raw)
}

/// Writes `parts` one after another at `offset`, in one `pwritev` when it takes them all.
fn write_all_at(file: &File, parts: &[&[u8]], offset: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let total: usize = parts.iter().map(|part| part.len()).sum();
    let vectors: Vec<libc::iovec> = parts
        .iter()
        .map(|part| libc::iovec {
            iov_base: part.as_ptr() as *mut libc::c_void,
            iov_len: part.len(),
        })
        .collect();
    // SAFETY: the vectors point into `parts`, alive and unchanged for the call.
    let written = unsafe {
        libc::pwritev(
            file.as_raw_fd(),
            vectors.as_ptr(),
            vectors.len() as libc::c_int,
            offset as libc::off_t,
        )
    };
    if written < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut done = written as usize;
    if done == total {
        return Ok(());
    }
    // A short write: the rest, part by part.
    let mut position = offset + done as u64;
    for part in parts {
        if done >= part.len() {
            done -= part.len();
            continue;
        }
        file.write_all_at(&part[done..], position)?;
        position += (part.len() - done) as u64;
        done = 0;
    }
    Ok(())
}

/// Starts writing appended ranges out as they come, on a thread of its own: the disk
/// works while chunks arrive, and neither the request nor the committer's sync pays for
/// submitting the writes. A round covers the span of each pack's new appends (nearly
/// contiguous; pages already clean are skipped).
///
/// A round also waits for the previous round's spans to be written and drops their pages
/// from the page cache ([`drop_written`]): chunks are written once and read rarely, and
/// recycling a few MiB of pages instead of taking fresh ones for every chunk made large
/// reports 2x faster on a virtual machine, where a fresh page costs a fault in the host
/// (buffered writes of new files ran at 350-450 MB/s there, with the drop at 2.3-3.3 GB/s);
/// it also keeps the blobs from pushing the database's pages out of the cache.
fn writeback_loop(writeback: Arc<Writeback>) {
    let mut written: Vec<(Arc<File>, u64, u64)> = Vec::new();
    loop {
        let spans = {
            let mut state = writeback.state.lock().unwrap();
            while state.spans.is_empty() {
                if !written.is_empty() {
                    break;
                }
                if state.stop {
                    return;
                }
                state.idle = true;
                state = writeback.wake.wait(state).unwrap();
            }
            state.idle = false;
            std::mem::take(&mut state.spans)
        };
        for (file, start, end) in &spans {
            start_writeback(file, *start, end - start);
        }
        for (file, start, end) in written.drain(..) {
            drop_written(&file, start, end);
        }
        written = spans;
        std::thread::sleep(WRITEBACK_PAUSE);
    }
}

/// Asks the kernel to start writing a range out now (`sync_file_range`, no waiting), so the
/// committer's `fdatasync` finds little left to write.
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on a descriptor `file` keeps open. A failure only means the
    // data is written at the sync instead.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Waits until a range is written (`sync_file_range`; not a durability point, which stays
/// the committer's `fdatasync`) and drops its pages from the page cache, but for the page
/// holding `end`, which the next append to the pack fills on (dropping it would make that
/// append read it back from the disk).
fn drop_written(file: &File, start: u64, end: u64) {
    use std::os::fd::AsRawFd;
    let page_bytes = crashmesh_store::DISK_BLOCK_BYTES;
    let end = end - end % page_bytes;
    if end <= start {
        return;
    }
    // SAFETY: plain syscalls on a descriptor `file` keeps open. A failure only leaves the
    // pages cached (the kernel reclaims them later).
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            start as libc::off64_t,
            (end - start) as libc::off64_t,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        );
        libc::posix_fadvise(
            file.as_raw_fd(),
            start as libc::off_t,
            (end - start) as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        );
    }
}

/// The numbers of the pack files, ascending.
fn pack_numbers(dir: &Path) -> Result<Vec<u64>, EndpointError> {
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|error| EndpointError::io("list", dir, error))? {
        let entry = entry.map_err(|error| EndpointError::io("list", dir, error))?;
        if let Some(number) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.strip_suffix(".pack"))
            .and_then(|number| number.parse::<u64>().ok())
        {
            numbers.push(number);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

fn sync_directory(dir: &Path) -> Result<(), EndpointError> {
    File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(|error| EndpointError::io("sync", dir, error))
}

impl Packs {
    /// Opens the pack directory under `dir` (made if absent; nothing is written until the
    /// first chunk).
    pub fn open(dir: &Path, db: Arc<Db>, fsync: bool) -> Result<Packs, EndpointError> {
        let packs = dir.join("packs");
        std::fs::create_dir_all(&packs)
            .map_err(|error| EndpointError::io("create", &packs, error))?;
        let writeback = if fsync {
            let writeback = Arc::new(Writeback {
                state: Mutex::new(WritebackState::default()),
                wake: Condvar::new(),
            });
            let thread_writeback = writeback.clone();
            std::thread::Builder::new()
                .name("pack-writeback".into())
                .spawn(move || writeback_loop(thread_writeback))
                .map_err(|error| EndpointError::io("spawn", Path::new("pack-writeback"), error))?;
            Some(writeback)
        } else {
            None
        };
        let numbers = pack_numbers(&packs)?;
        // A process that stopped without closing its packs left their reservations (the
        // database's one process opens the packs).
        for &pack in numbers.iter().rev().take(LANES) {
            let path = packs.join(pack_name(pack));
            if let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path)
                && let Ok(metadata) = file.metadata()
            {
                release_beyond(&file, metadata.len());
            }
        }
        Ok(Packs {
            writeback,
            legacy: dir.join("chunks").is_dir(),
            dir: dir.to_path_buf(),
            db,
            fsync,
            lanes: (0..LANES).map(|_| Mutex::new(None)).collect(),
            last_pack: Mutex::new(numbers.last().copied().unwrap_or(0)),
            readers: Mutex::new(HashMap::new()),
            unindexed: Mutex::new(HashMap::new()),
        })
    }

    fn pack_path(&self, pack: u64) -> PathBuf {
        self.dir.join("packs").join(pack_name(pack))
    }

    fn legacy_path(&self, id: &str) -> PathBuf {
        self.dir.join("chunks").join(&id[..2]).join(&id[2..])
    }

    /// Starts a new pack after the highest present, its name durable.
    fn new_writer(&self) -> Result<Writer, EndpointError> {
        let packs = self.dir.join("packs");
        let mut last_pack = self.last_pack.lock().unwrap();
        let pack = *last_pack + 1;
        let path = self.pack_path(pack);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|error| EndpointError::io("create", &path, error))?;
        if self.fsync {
            sync_directory(&packs)?;
        }
        *last_pack = pack;
        Ok(Writer {
            pack,
            file: Arc::new(file),
            end: 0,
            allocated: 0,
            reserving: true,
        })
    }

    /// Appends a verified chunk's frame; it is findable when this returns and durable at
    /// the next [`Packs::stage`].
    pub fn append(&self, id: &str, compressed: &[u8]) -> Result<(), EndpointError> {
        let len = u32::try_from(compressed.len()).map_err(|_| EndpointError::TooLarge {
            what: "chunk bytes",
            value: compressed.len() as u64,
            limit: u32::MAX as u64,
        })?;
        let mut header = [0u8; RECORD_HEADER_BYTES as usize];
        header[..4].copy_from_slice(RECORD_MAGIC);
        header[4..8].copy_from_slice(&len.to_le_bytes());
        header[8..].copy_from_slice(&raw_id(id)?);
        let record_len = RECORD_HEADER_BYTES + compressed.len() as u64;
        // Reserve the range under the lock; write it outside, beside other writers.
        let (pack, file, start) = {
            thread_local! {
                static LANE: usize = NEXT_LANE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % LANES;
            }
            let mut writer = self.lanes[LANE.with(|lane| *lane)].lock().unwrap();
            let full = writer
                .as_ref()
                .is_none_or(|writer| writer.end + record_len > PACK_BYTES_MAX);
            if full {
                *writer = Some(self.new_writer()?);
            }
            let writer = writer.as_mut().expect("made above");
            let start = writer.end;
            writer.end += record_len;
            writer.reserve();
            (writer.pack, writer.file.clone(), start)
        };
        write_all_at(&file, &[&header, compressed], start)
            .map_err(|error| EndpointError::io("write", &self.pack_path(pack), error))?;
        if let Some(writeback) = &self.writeback {
            writeback.add(file, start, start + record_len);
        }
        let location = Location {
            pack,
            offset: start + RECORD_HEADER_BYTES,
            len,
        };
        self.unindexed
            .lock()
            .unwrap()
            .insert(id.to_string(), location);
        Ok(())
    }

    /// Makes every chunk appended so far durable (one `fdatasync` per pack involved) and
    /// returns their locations for [`Packs::record`]. They stay findable in memory until
    /// [`Packs::committed`].
    pub fn stage(&self) -> Result<Staged, EndpointError> {
        let locations: Vec<(String, Location)> = self
            .unindexed
            .lock()
            .unwrap()
            .iter()
            .map(|(id, location)| (id.clone(), *location))
            .collect();
        if self.fsync {
            let mut packs: Vec<u64> = locations
                .iter()
                .map(|(_, location)| location.pack)
                .collect();
            packs.sort_unstable();
            packs.dedup();
            for pack in packs {
                self.reader(pack)?
                    .sync_data()
                    .map_err(|error| EndpointError::io("sync", &self.pack_path(pack), error))?;
            }
        }
        Ok(Staged { locations })
    }

    /// Writes staged locations in the transaction that records the reports naming them.
    pub fn record(
        txn: &WriteTransaction,
        locations: &[(String, Location)],
    ) -> Result<(), EndpointError> {
        if locations.is_empty() {
            return Ok(());
        }
        let mut table = txn.open_table(CHUNKS)?;
        for (id, location) in locations {
            table.insert(id.as_str(), (location.pack, location.offset, location.len))?;
        }
        Ok(())
    }

    /// Forgets the in-memory locations the committed transaction indexed.
    pub fn committed(&self, staged: Staged) {
        let mut unindexed = self.unindexed.lock().unwrap();
        for (id, location) in staged.locations {
            if unindexed.get(&id) == Some(&location) {
                unindexed.remove(&id);
            }
        }
    }

    /// Every record in the pack files, in pack and offset order, up to the first torn or
    /// unwritten one of each pack (a stop during an append): what a check or a rebuild of
    /// the index reads.
    pub fn records(&self) -> Result<Vec<(String, Location)>, EndpointError> {
        let packs = pack_numbers(&self.dir.join("packs"))?;
        let mut records = Vec::new();
        for pack in packs {
            let path = self.pack_path(pack);
            let file =
                File::open(&path).map_err(|error| EndpointError::io("open", &path, error))?;
            let end = file
                .metadata()
                .map_err(|error| EndpointError::io("stat", &path, error))?
                .len();
            let mut offset = 0;
            let mut header = [0u8; RECORD_HEADER_BYTES as usize];
            while offset + RECORD_HEADER_BYTES <= end {
                file.read_exact_at(&mut header, offset)
                    .map_err(|error| EndpointError::io("read", &path, error))?;
                let len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
                let frame = offset + RECORD_HEADER_BYTES;
                if &header[..4] != RECORD_MAGIC || frame + len as u64 > end {
                    break;
                }
                let id: String = header[8..]
                    .iter()
                    .map(|byte| format!("{byte:02x}"))
                    .collect();
                records.push((
                    id,
                    Location {
                        pack,
                        offset: frame,
                        len,
                    },
                ));
                offset = frame + len as u64;
            }
        }
        Ok(records)
    }

    /// Chunks appended and not yet indexed.
    pub fn unindexed_len(&self) -> usize {
        self.unindexed.lock().unwrap().len()
    }

    fn reader(&self, pack: u64) -> Result<Arc<File>, EndpointError> {
        if let Some(file) = self.readers.lock().unwrap().get(&pack) {
            return Ok(file.clone());
        }
        let path = self.pack_path(pack);
        let file =
            Arc::new(File::open(&path).map_err(|error| EndpointError::io("open", &path, error))?);
        let mut readers = self.readers.lock().unwrap();
        if readers.len() >= READERS_OPEN_MAX {
            readers.clear();
        }
        readers.insert(pack, file.clone());
        Ok(file)
    }

    fn locate_in(
        &self,
        table: &impl ReadableTable<&'static str, (u64, u64, u32)>,
        id: &str,
    ) -> Result<Option<Location>, EndpointError> {
        if let Some(location) = self.unindexed.lock().unwrap().get(id) {
            return Ok(Some(*location));
        }
        Ok(table.get(id)?.map(|value| {
            let (pack, offset, len) = value.value();
            Location { pack, offset, len }
        }))
    }

    /// For each id, whether the chunk is stored.
    pub fn present(&self, ids: &[&str]) -> Result<Vec<bool>, EndpointError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CHUNKS)?;
        ids.iter()
            .map(|id| {
                Ok(self.locate_in(&table, id)?.is_some()
                    || (self.legacy && self.legacy_path(id).is_file()))
            })
            .collect()
    }

    /// A chunk's stored frame, `None` when it is not stored.
    pub fn read(&self, id: &str) -> Result<Option<Vec<u8>>, EndpointError> {
        let location = {
            let txn = self.db.begin_read()?;
            self.locate_in(&txn.open_table(CHUNKS)?, id)?
        };
        let Some(location) = location else {
            if !self.legacy {
                return Ok(None);
            }
            let path = self.legacy_path(id);
            return match std::fs::read(&path) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(error) => Err(EndpointError::io("read", &path, error)),
            };
        };
        let mut bytes = vec![0u8; location.len as usize];
        self.reader(location.pack)?
            .read_exact_at(&mut bytes, location.offset)
            .map_err(|error| EndpointError::io("read", &self.pack_path(location.pack), error))?;
        Ok(Some(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(text: &str) -> (String, Vec<u8>) {
        let id = blake3::hash(text.as_bytes()).to_hex().to_string();
        (id, zstd::bulk::compress(text.as_bytes(), 1).unwrap())
    }

    fn commit(packs: &Packs, db: &Db) {
        let staged = packs.stage().unwrap();
        let txn = db.begin_write().unwrap();
        Packs::record(&txn, &staged.locations).unwrap();
        txn.commit().unwrap();
        packs.committed(staged);
    }

    #[test]
    fn an_appended_chunk_is_found_at_once_indexed_at_the_commit_and_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(dir.path()).unwrap());
        let blobs = dir.path().join("blobs");
        let packs = Packs::open(&blobs, db.clone(), true).unwrap();
        let (a, a_bytes) = chunk("first chunk");
        let (b, b_bytes) = chunk("second chunk");
        assert_eq!(packs.present(&[&a, &b]).unwrap(), [false, false]);
        packs.append(&a, &a_bytes).unwrap();
        packs.append(&b, &b_bytes).unwrap();
        assert_eq!(packs.present(&[&a, &b]).unwrap(), [true, true]);
        assert_eq!(packs.unindexed_len(), 2);
        assert_eq!(packs.read(&a).unwrap().unwrap(), a_bytes);
        commit(&packs, &db);
        assert_eq!(packs.unindexed_len(), 0);
        assert_eq!(packs.read(&b).unwrap().unwrap(), b_bytes);

        // A chunk appended but never committed is gone after a restart (its report was not
        // acknowledged: the uploader sends it again); committed ones stay.
        let (c, c_bytes) = chunk("third chunk");
        packs.append(&c, &c_bytes).unwrap();
        drop(packs);
        let packs = Packs::open(&blobs, db.clone(), true).unwrap();
        assert_eq!(packs.present(&[&a, &b, &c]).unwrap(), [true, true, false]);
        assert_eq!(packs.read(&a).unwrap().unwrap(), a_bytes);
        assert_eq!(packs.read(&c).unwrap(), None);
        // A new process appends to a new pack; the records read back in order.
        packs.append(&c, &c_bytes).unwrap();
        let records = packs.records().unwrap();
        let ids: Vec<&str> = records.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, [a.as_str(), b.as_str(), c.as_str(), c.as_str()]);
        assert_eq!(records[0].1.pack, 1);
        assert_eq!(records[3].1.pack, 2);
    }

    /// Pages of `path` in the page cache (`mincore` over a mapping of the file).
    fn resident_pages(path: &Path) -> (usize, usize) {
        use std::os::fd::AsRawFd;
        let file = File::open(path).unwrap();
        let len = file.metadata().unwrap().len() as usize;
        let page = 4096;
        let pages = len.div_ceil(page);
        let mut residency = vec![0u8; pages];
        // SAFETY: a read-only shared mapping of an open file, unmapped before return;
        // `residency` has one byte per page of it.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(map, libc::MAP_FAILED);
            assert_eq!(libc::mincore(map, len, residency.as_mut_ptr()), 0);
            libc::munmap(map, len);
        }
        (
            residency.iter().filter(|byte| *byte & 1 == 1).count(),
            pages,
        )
    }

    #[test]
    fn written_chunks_leave_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(dir.path()).unwrap());
        let blobs = dir.path().join("blobs");
        let packs = Packs::open(&blobs, db.clone(), true).unwrap();
        // 16 MiB of incompressible chunks (zstd keeps them as raw blocks).
        let mut ids = Vec::new();
        for index in 0..128u32 {
            let mut raw = vec![0u8; 128 * 1024];
            let mut hasher = blake3::Hasher::new();
            hasher.update(&index.to_le_bytes());
            hasher.finalize_xof().fill(&mut raw);
            let id = blake3::hash(&raw).to_hex().to_string();
            packs
                .append(&id, &zstd::bulk::compress(&raw, 1).unwrap())
                .unwrap();
            ids.push(id);
        }
        commit(&packs, &db);
        let pack = blobs.join("packs").join(pack_name(1));
        // The writeback thread drops a round's pages one round later.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let (mut resident, pages) = resident_pages(&pack);
        while resident > pages / 8 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            resident = resident_pages(&pack).0;
        }
        assert!(
            resident <= pages / 8,
            "{resident} of {pages} pages still cached"
        );
        // And they read back from the disk.
        let raw = zstd::bulk::decompress(&packs.read(&ids[7]).unwrap().unwrap(), 1 << 20).unwrap();
        assert_eq!(blake3::hash(&raw).to_hex().to_string(), ids[7]);
    }

    /// The bytes of disk a file holds.
    fn allocated_bytes(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn a_packs_blocks_are_reserved_ahead_and_given_back_when_it_closes_or_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(dir.path()).unwrap());
        let blobs = dir.path().join("blobs");
        let pack = blobs.join("packs").join(pack_name(1));
        let packs = Packs::open(&blobs, db.clone(), true).unwrap();
        let (id, bytes) = chunk("a small chunk");
        packs.append(&id, &bytes).unwrap();
        let size = std::fs::metadata(&pack).unwrap().len();
        assert!(size < 4096, "{size}");
        assert!(
            allocated_bytes(&pack) >= PREALLOCATE_BYTES,
            "reserved ahead: {} bytes",
            allocated_bytes(&pack)
        );
        commit(&packs, &db);
        drop(packs);
        assert!(
            allocated_bytes(&pack) <= 64 * 1024,
            "given back on close: {} bytes",
            allocated_bytes(&pack)
        );
        // A crash leaves a reservation; the next open gives it back, a reader's does not.
        {
            use std::os::fd::AsRawFd;
            let file = std::fs::OpenOptions::new().write(true).open(&pack).unwrap();
            // SAFETY: a plain syscall on a file we own.
            let reserved = unsafe {
                libc::fallocate(
                    file.as_raw_fd(),
                    libc::FALLOC_FL_KEEP_SIZE,
                    size as libc::off_t,
                    (16 << 20) as libc::off_t,
                )
            };
            assert_eq!(reserved, 0);
        }
        assert!(allocated_bytes(&pack) >= 16 << 20);
        drop(db);
        let db = Arc::new(Db::open(dir.path()).unwrap());
        let packs = Packs::open(&blobs, db.clone(), true).unwrap();
        assert!(
            allocated_bytes(&pack) <= 64 * 1024,
            "given back after a crash: {} bytes",
            allocated_bytes(&pack)
        );
        assert!(packs.read(&id).unwrap().is_some());
    }

    #[test]
    fn a_torn_record_at_a_pack_end_stops_the_scan_and_older_chunk_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(dir.path()).unwrap());
        let blobs = dir.path().join("blobs");
        let (old, old_bytes) = chunk("a chunk of an older data dir");
        let legacy = blobs.join("chunks").join(&old[..2]);
        std::fs::create_dir_all(&legacy).unwrap();
        std::fs::write(legacy.join(&old[2..]), &old_bytes).unwrap();
        let packs = Packs::open(&blobs, db.clone(), false).unwrap();
        assert_eq!(packs.present(&[&old]).unwrap(), [true]);
        assert_eq!(packs.read(&old).unwrap().unwrap(), old_bytes);

        let (a, a_bytes) = chunk("kept");
        packs.append(&a, &a_bytes).unwrap();
        commit(&packs, &db);
        // A stop in the middle of an append: half a header at the end.
        let pack = blobs.join("packs").join(pack_name(1));
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&pack)
            .unwrap();
        std::io::Write::write_all(&mut file, b"CMPK\x10").unwrap();
        let records = packs.records().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].0, a);
        assert_eq!(packs.read(&a).unwrap().unwrap(), a_bytes);
    }
}

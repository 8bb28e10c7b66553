//! Local blob storage: chunks appended to a few large pack files, located through a redb
//! table, instead of one file per chunk.
//!
//! A file per chunk cost an inode allocation per chunk, and ext4's allocator scans past
//! recently deleted inodes: on a busy file system a 128 KiB chunk's `create` alone took
//! 0.1–0.8 ms, most of the endpoint's time for large reports. Appending costs a copy.
//!
//! ```text
//! BLOBS/packs/00000001.pack   records: "CMPK", length (u32 LE), chunk id (32 bytes), the zstd frame
//!                             (zeros after a record, up to the next 4 KiB, in a pack written direct)
//! BLOBS/chunks/ab/cdef…       chunks of older data dirs (one file each), still read
//! ```
//! The `chunks_v1` table of `endpoint.redb` maps a chunk id to (pack, offset of the frame,
//! length).
//!
//! Writing: a thread (a lane; `LANES` of them, one by default) appends to a pack of its
//! own, taking chunks from a bounded queue a batch at a time, one `pwritev` per batch. A
//! pack is opened `O_DIRECT` where the file system takes it, its records block-aligned and
//! written from the buffer the request body was read into ([`ChunkBuffer`]): the page
//! cache never holds them, so no copy into it, no writeback and no eviction (measured on
//! the 2-core VM: 0.13–0.18 ms of CPU per MB written, against 0.52–0.70 through the page
//! cache). Elsewhere the lanes write through the page cache and a writeback thread pushes
//! the pages out early.
//!
//! Invariants:
//! - a chunk is indexed only after its bytes are durable: the committer calls
//!   [`Packs::stage`] (which waits for the lanes to write every chunk appended before it,
//!   then runs one `fdatasync` per pack written since the last one), then writes the
//!   locations in the transaction that records the reports naming them, so a recorded
//!   report never names a chunk a power cut could lose;
//! - a chunk whose PUT was answered is findable at once: from memory until its lane has
//!   written it, then by its location in memory until that commit (a process that stops
//!   before it leaves bytes nothing names, and the uploader, whose report was not
//!   acknowledged, sends them again);
//! - a chunk whose PUT was answered is never dropped: a lane tries a failed write again in
//!   a new pack until it succeeds or the packs close (meanwhile [`Packs::stage`] refuses, after
//!   `STAGE_WAIT_MAX`, so no report naming it is recorded);
//! - a pack is appended to by one lane of this process only, at its end; a new pack's
//!   name is made durable (directory `fsync`) before anything is written to it;
//! - a pack's blocks are reserved [`PREALLOCATE_BYTES`] ahead of its appends (`fallocate`,
//!   the file's size unchanged) and what was not written is given back when the pack is
//!   closed, or, after a crash, when the writer opens the packs again.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use redb::{ReadableTable, WriteTransaction};

use crate::error::EndpointError;
use crate::storage::chunk_buffer::ChunkBuffer;
use crate::storage::db::{CHUNKS, Db};

/// A pack is closed for appends past this size.
pub const PACK_BYTES_MAX: u64 = 1 << 30;
/// The writeback thread's pause between two rounds, so a round covers many appends and
/// appenders rarely have to wake it.
const WRITEBACK_PAUSE: Duration = Duration::from_millis(1);
/// How far ahead of its appends a pack's blocks are reserved.
pub const PREALLOCATE_BYTES: u64 = 64 << 20;
/// Packs appended to at once, each by a thread of its own (a lane). One: its batches are
/// larger than those of several (measured on the 2-core VM, 8 uploads of 4 MiB reports:
/// the lanes' CPU 0.08 ms per MB with one, 0.12 with two, 0.14–0.19 with four, and the
/// server's whole 0.63–0.70 against 0.70–0.94), and one thread writing batches of up to 2 MiB
/// `O_DIRECT` kept up with 1,400–1,560 MB/s.
const LANES: usize = 1;
/// Appends waiting for a lane; a full queue holds the request back. With the appends
/// being written, this bounds the chunk buffers held: `LANES` x (this + a batch).
const LANE_QUEUE_CHUNKS_MAX: usize = 16;
/// Appends a lane writes in one `pwritev`.
const LANE_BATCH_CHUNKS_MAX: usize = 16;
/// A lane's pause before it tries a failed write again, doubling up to the max.
const LANE_RETRY_PAUSE_MIN: Duration = Duration::from_millis(100);
const LANE_RETRY_PAUSE_MAX: Duration = Duration::from_secs(5);
/// How long [`Packs::stage`] waits for the chunks being written before it refuses.
const STAGE_WAIT_MAX: Duration = Duration::from_secs(10);
/// Pack files kept open for reading.
const READERS_OPEN_MAX: usize = 64;
/// The record header: magic, length, chunk id.
const RECORD_MAGIC: &[u8; 4] = b"CMPK";
const RECORD_HEADER_BYTES: u64 = crate::storage::chunk_buffer::RECORD_HEADER_BYTES as u64;
/// Where records of a pack written past the page cache start, and the multiple of their
/// written length (zeros pad a record up to it): the file system's block.
const DIRECT_ALIGN_BYTES: u64 = crate::storage::chunk_buffer::BUFFER_ALIGN_BYTES as u64;

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
    /// Opened with `O_DIRECT`: its records start on [`DIRECT_ALIGN_BYTES`] boundaries and
    /// are written from an aligned buffer, past the page cache.
    direct: bool,
    /// Where a pack written through the page cache hands its appended ranges (with
    /// `fsync`).
    writeback: Option<Arc<Writeback>>,
}

impl Writer {
    /// Reserves the pack's blocks ahead of `end`, so that appends land in blocks the file
    /// system allocated once, rather than one reservation per 4 KiB page (measured: ext4's
    /// delayed allocation was a third of a payload upload's write cost through the page
    /// cache; 960–990 MB/s without, 1,140–1,170 with). A file system that cannot reserve just allocates as
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
    shared: Arc<Shared>,
    db: Arc<Db>,
    /// `chunks/` of an older data dir exists: look there too.
    legacy: bool,
    /// The appending threads, one pack each.
    lanes: Vec<Lane>,
    /// The lane the next append goes to (round robin).
    next_lane: AtomicUsize,
    readers: Mutex<HashMap<u64, Arc<File>>>,
}

/// What the lanes share with the readers.
struct Shared {
    dir: PathBuf,
    fsync: bool,
    /// The highest pack number in use.
    last_pack: Mutex<u64>,
    /// New packs are opened `O_DIRECT` (until the file system refuses a direct write).
    direct: AtomicBool,
    /// Chunks appended and not yet indexed (see [`Packs::stage`]).
    unindexed: Mutex<HashMap<String, Stored>>,
    /// Notified when a lane has written chunks.
    written: Condvar,
    /// The packs are closing: a lane stops trying a failed write again.
    stopping: AtomicBool,
    /// How long [`Packs::stage`] waits for the chunks being written ([`STAGE_WAIT_MAX`]).
    stage_wait: Duration,
    /// Stages waiting now for chunks being written ([`Packs::stages_waiting`]).
    stages_waiting: AtomicUsize,
    /// The writeback thread, started for the first pack written through the page cache
    /// (with `fsync`).
    writeback: Mutex<Option<Arc<Writeback>>>,
}

/// One waiting stage, counted while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn count(counter: &'a AtomicUsize) -> Waiting<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        Waiting(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    fn pack_path(&self, pack: u64) -> PathBuf {
        self.dir.join("packs").join(pack_name(pack))
    }

    /// The writeback thread, started if it is not yet.
    fn writeback(&self) -> Result<Arc<Writeback>, EndpointError> {
        let mut writeback = self.writeback.lock().unwrap();
        if let Some(running) = writeback.as_ref() {
            return Ok(running.clone());
        }
        let started = Arc::new(Writeback {
            state: Mutex::new(WritebackState::default()),
            wake: Condvar::new(),
        });
        let thread_writeback = started.clone();
        std::thread::Builder::new()
            .name("pack-writeback".into())
            .spawn(move || writeback_loop(thread_writeback))
            .map_err(|error| EndpointError::io("spawn", Path::new("pack-writeback"), error))?;
        *writeback = Some(started.clone());
        Ok(started)
    }
}

/// A thread appending to a pack of its own, and the queue of appends it takes from.
struct Lane {
    appends: Option<tokio::sync::mpsc::Sender<Append>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// One chunk for a lane to append.
struct Append {
    id: String,
    chunk: Arc<ChunkBuffer>,
}

/// Where a stored chunk's frame is read from. A chunk appended and not yet indexed is
/// held in memory while it is queued for its lane or being written, then in its pack
/// (durable at the next [`Packs::stage`]).
#[derive(Clone)]
enum Stored {
    Memory(Arc<ChunkBuffer>),
    Pack(Location),
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
    /// Lets the lanes finish the appends queued, close their packs and stop.
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        for lane in &mut self.lanes {
            lane.appends.take();
        }
        for lane in &mut self.lanes {
            if let Some(thread) = lane.thread.take() {
                let _ = thread.join();
            }
        }
        if let Some(writeback) = self.shared.writeback.lock().unwrap().as_ref() {
            writeback.state.lock().unwrap().stop = true;
            writeback.wake.notify_one();
        }
    }
}

/// Chunk locations made durable, to be written in the committing transaction.
pub struct Staged {
    pub(crate) locations: Vec<(String, Location)>,
}

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

/// Turns `O_DIRECT` on or off for a pack's descriptor (on fails where the file system
/// does not take it).
fn set_direct(file: &File, on: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain fcntl calls on a descriptor `file` keeps open.
    let set = unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        let wanted = if on {
            flags | libc::O_DIRECT
        } else {
            flags & !libc::O_DIRECT
        };
        flags >= 0 && libc::fcntl(file.as_raw_fd(), libc::F_SETFL, wanted) == 0
    };
    if set {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
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
    let page_bytes = crate::storage::chunk_buffer::DISK_BLOCK_BYTES as u64;
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

/// A lane's thread: takes the appends queued (up to [`LANE_BATCH_CHUNKS_MAX`] at a time)
/// and writes them to its pack in one `pwritev`. A write that fails is tried again in a
/// new pack after a pause (doubling up to [`LANE_RETRY_PAUSE_MAX`]), until it succeeds or
/// the packs close: a chunk whose PUT was answered is never dropped, and meanwhile
/// [`Packs::stage`] waits and then refuses, so no report naming it is recorded.
fn lane_loop(shared: Arc<Shared>, mut appends: tokio::sync::mpsc::Receiver<Append>) {
    let mut writer: Option<Writer> = None;
    let mut batch = Vec::with_capacity(LANE_BATCH_CHUNKS_MAX);
    let mut pause = LANE_RETRY_PAUSE_MIN;
    while let Some(first) = appends.blocking_recv() {
        batch.push(first);
        while batch.len() < LANE_BATCH_CHUNKS_MAX {
            match appends.try_recv() {
                Ok(append) => batch.push(append),
                Err(_) => break,
            }
        }
        while let Err(error) = append_batch(&shared, &mut writer, &mut batch) {
            tracing::warn!(%error, chunks = batch.len(), retry_in = ?pause, "cannot append chunks to a pack; trying again in a new pack");
            writer = None;
            if shared.stopping.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(LANE_RETRY_PAUSE_MAX);
        }
        pause = LANE_RETRY_PAUSE_MIN;
    }
}

/// Writes the appends of `batch` one after another at the end of the lane's pack (a new
/// pack when it is full), each run bound for one pack at once, and makes each findable
/// in the pack as its run is written (`batch` keeps those not written yet).
fn append_batch(
    shared: &Shared,
    writer: &mut Option<Writer>,
    batch: &mut Vec<Append>,
) -> Result<(), EndpointError> {
    while !batch.is_empty() {
        if writer.is_none() {
            *writer = Some(new_writer(shared)?);
        }
        let current = writer.as_mut().expect("made above");
        let start = current.end;
        let mut end = start;
        let mut locations = Vec::with_capacity(batch.len());
        for append in batch.iter() {
            let record_len = append.chunk.record().len() as u64;
            // A pack holds at least one record, however long.
            if end > 0 && end + record_len > PACK_BYTES_MAX {
                break;
            }
            locations.push(Location {
                pack: current.pack,
                offset: end + RECORD_HEADER_BYTES,
                len: (record_len - RECORD_HEADER_BYTES) as u32,
            });
            end += if current.direct {
                record_len.next_multiple_of(DIRECT_ALIGN_BYTES)
            } else {
                record_len
            };
        }
        if locations.is_empty() {
            // Full (past its first record): the next run starts a new pack.
            *writer = None;
            continue;
        }
        current.end = end;
        current.reserve();
        let records: Vec<&[u8]> = batch[..locations.len()]
            .iter()
            .map(|append| {
                if current.direct {
                    append.chunk.padded_record()
                } else {
                    append.chunk.record()
                }
            })
            .collect();
        let written = if current.direct {
            write_direct(shared, &current.file, &records, start)
        } else {
            write_all_at(&current.file, &records, start)
        };
        written
            .map_err(|error| EndpointError::io("write", &shared.pack_path(current.pack), error))?;
        if let Some(writeback) = &current.writeback {
            writeback.add(current.file.clone(), start, end);
        }
        {
            let mut unindexed = shared.unindexed.lock().unwrap();
            for (append, location) in batch.drain(..locations.len()).zip(locations) {
                unindexed.insert(append.id, Stored::Pack(location));
            }
        }
        shared.written.notify_all();
    }
    Ok(())
}

/// Writes the record header in front of a chunk's frame, and zeros after it to the block.
fn seal_record(id: &str, chunk: &mut ChunkBuffer) -> Result<(), EndpointError> {
    let frame_bytes = chunk.frame().len();
    let len = u32::try_from(frame_bytes).map_err(|_| EndpointError::TooLarge {
        what: "chunk bytes",
        value: frame_bytes as u64,
        limit: u32::MAX as u64,
    })?;
    let mut header = [0u8; RECORD_HEADER_BYTES as usize];
    header[..4].copy_from_slice(RECORD_MAGIC);
    header[4..8].copy_from_slice(&len.to_le_bytes());
    header[8..].copy_from_slice(&raw_id(id)?);
    chunk.seal(&header);
    Ok(())
}

/// Writes padded records past the page cache. A file system that refuses the write
/// (`EINVAL`: it took `O_DIRECT` at the open, not this alignment) gets it, and the rest
/// of the pack, through the page cache, and later packs are not opened direct.
fn write_direct(
    shared: &Shared,
    file: &File,
    records: &[&[u8]],
    start: u64,
) -> std::io::Result<()> {
    match write_all_at(file, records, start) {
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
            tracing::debug!(%error, "the file system refuses direct writes; packs go through the page cache");
            shared.direct.store(false, Ordering::Relaxed);
            set_direct(file, false)?;
            write_all_at(file, records, start)
        }
        other => other,
    }
}

/// Starts a new pack after the highest present, its name durable.
fn new_writer(shared: &Shared) -> Result<Writer, EndpointError> {
    let packs = shared.dir.join("packs");
    let mut last_pack = shared.last_pack.lock().unwrap();
    let pack = *last_pack + 1;
    let path = shared.pack_path(pack);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|error| EndpointError::io("create", &path, error))?;
    if shared.fsync {
        sync_directory(&packs)?;
    }
    *last_pack = pack;
    let direct = shared.direct.load(Ordering::Relaxed) && set_direct(&file, true).is_ok();
    let writeback = if shared.fsync && !direct {
        Some(shared.writeback()?)
    } else {
        None
    };
    Ok(Writer {
        pack,
        file: Arc::new(file),
        end: 0,
        allocated: 0,
        reserving: true,
        direct,
        writeback,
    })
}

impl Packs {
    /// Opens the pack directory under `dir` (made if absent; nothing is written until the
    /// first chunk) and starts its lanes.
    pub fn open(dir: &Path, db: Arc<Db>, fsync: bool) -> Result<Packs, EndpointError> {
        Packs::open_with(dir, db, fsync, true, STAGE_WAIT_MAX)
    }

    /// [`Packs::open`]; `direct` false writes through the page cache from the start (what
    /// a file system that refuses `O_DIRECT` gets).
    fn open_with(
        dir: &Path,
        db: Arc<Db>,
        fsync: bool,
        direct: bool,
        stage_wait: Duration,
    ) -> Result<Packs, EndpointError> {
        let packs = dir.join("packs");
        std::fs::create_dir_all(&packs)
            .map_err(|error| EndpointError::io("create", &packs, error))?;
        let numbers = pack_numbers(&packs)?;
        // A process that stopped without closing its packs left their reservations (the
        // database's one process opens the packs; earlier versions kept four open).
        for &pack in numbers.iter().rev().take(LANES.max(4)) {
            let path = packs.join(pack_name(pack));
            if let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path)
                && let Ok(metadata) = file.metadata()
            {
                release_beyond(&file, metadata.len());
            }
        }
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            fsync,
            last_pack: Mutex::new(numbers.last().copied().unwrap_or(0)),
            direct: AtomicBool::new(direct),
            unindexed: Mutex::new(HashMap::new()),
            written: Condvar::new(),
            stopping: AtomicBool::new(false),
            stage_wait,
            stages_waiting: AtomicUsize::new(0),
            writeback: Mutex::new(None),
        });
        let mut lanes = Vec::with_capacity(LANES);
        for lane in 0..LANES {
            let (sender, receiver) = tokio::sync::mpsc::channel(LANE_QUEUE_CHUNKS_MAX);
            let lane_shared = shared.clone();
            let thread = std::thread::Builder::new()
                .name(format!("pack-lane-{lane}"))
                .spawn(move || lane_loop(lane_shared, receiver))
                .map_err(|error| EndpointError::io("spawn", Path::new("pack-lane"), error))?;
            lanes.push(Lane {
                appends: Some(sender),
                thread: Some(thread),
            });
        }
        Ok(Packs {
            shared,
            db,
            legacy: dir.join("chunks").is_dir(),
            lanes,
            next_lane: AtomicUsize::new(0),
            readers: Mutex::new(HashMap::new()),
        })
    }

    fn pack_path(&self, pack: u64) -> PathBuf {
        self.shared.pack_path(pack)
    }

    fn legacy_path(&self, id: &str) -> PathBuf {
        self.shared.dir.join("chunks").join(&id[..2]).join(&id[2..])
    }

    /// Appends a verified chunk's frame: it is findable (from memory) when this returns,
    /// in its pack once its lane has written it (the request does not wait for the
    /// disk), and durable at the next [`Packs::stage`]. The record is written from
    /// `chunk` itself: its header goes in front of the frame, and a pack opened `O_DIRECT`
    /// takes the buffer as it is. A chunk appended or indexed already is not written
    /// again. Waits only while the lane's queue is full.
    pub async fn append(&self, id: &str, mut chunk: ChunkBuffer) -> Result<(), EndpointError> {
        seal_record(id, &mut chunk)?;
        let chunk = Arc::new(chunk);
        {
            let mut unindexed = self.shared.unindexed.lock().unwrap();
            if unindexed.contains_key(id) {
                return Ok(());
            }
            unindexed.insert(id.to_string(), Stored::Memory(chunk.clone()));
        }
        let lane = self.next_lane.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        let queued = match &self.lanes[lane].appends {
            Some(appends) => appends
                .send(Append {
                    id: id.to_string(),
                    chunk,
                })
                .await
                .is_ok(),
            None => false,
        };
        if !queued {
            self.shared.unindexed.lock().unwrap().remove(id);
            return Err(EndpointError::Storage("the pack lanes have stopped".into()));
        }
        Ok(())
    }

    /// [`Packs::append`] from a thread outside the async runtime.
    #[cfg(test)]
    pub fn append_blocking(&self, id: &str, chunk: ChunkBuffer) -> Result<(), EndpointError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(self.append(id, chunk))
    }

    /// Makes every chunk appended so far durable (one `fdatasync` per pack involved) and
    /// returns their locations for [`Packs::record`]. They stay findable in memory until
    /// [`Packs::committed`].
    pub fn stage(&self) -> Result<Staged, EndpointError> {
        let mut unindexed = self.shared.unindexed.lock().unwrap();
        // Every chunk being written now was answered before this stage began: wait for
        // the lanes to write them.
        let mut writing: Vec<String> = unindexed
            .iter()
            .filter(|(_, chunk)| matches!(chunk, Stored::Memory(_)))
            .map(|(id, _)| id.clone())
            .collect();
        let deadline = std::time::Instant::now() + self.shared.stage_wait;
        let mut waiting = None;
        loop {
            writing.retain(|id| matches!(unindexed.get(id), Some(Stored::Memory(_))));
            if writing.is_empty() {
                break;
            }
            waiting.get_or_insert_with(|| Waiting::count(&self.shared.stages_waiting));
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(EndpointError::Storage(format!(
                    "{} chunks are still not written to their packs after {:?}",
                    writing.len(),
                    self.shared.stage_wait
                )));
            }
            unindexed = self.shared.written.wait_timeout(unindexed, left).unwrap().0;
        }
        drop(waiting);
        let locations: Vec<(String, Location)> = unindexed
            .iter()
            .filter_map(|(id, chunk)| match chunk {
                Stored::Pack(location) => Some((id.clone(), *location)),
                Stored::Memory(_) => None,
            })
            .collect();
        drop(unindexed);
        if self.shared.fsync {
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
        let mut unindexed = self.shared.unindexed.lock().unwrap();
        for (id, location) in staged.locations {
            if matches!(unindexed.get(&id), Some(Stored::Pack(written)) if *written == location) {
                unindexed.remove(&id);
            }
        }
    }

    /// Every record in the pack files, in pack and offset order, up to the first torn or
    /// unwritten one of each pack (a stop during an append): what a check or a rebuild of
    /// the index reads.
    pub fn records(&self) -> Result<Vec<(String, Location)>, EndpointError> {
        let packs = pack_numbers(&self.shared.dir.join("packs"))?;
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
                    // Past a record written past the page cache, zeros up to a boundary.
                    let aligned = offset.next_multiple_of(DIRECT_ALIGN_BYTES);
                    let padding = ((aligned - offset) as usize).min(header.len());
                    if aligned != offset && header[..padding].iter().all(|byte| *byte == 0) {
                        offset = aligned;
                        continue;
                    }
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
        self.shared.unindexed.lock().unwrap().len()
    }

    /// Stages (report completions) waiting now for chunks still being written.
    pub fn stages_waiting(&self) -> usize {
        self.shared.stages_waiting.load(Ordering::Relaxed)
    }

    /// Chunks appended and not yet written to their pack.
    pub fn writing_len(&self) -> usize {
        self.shared
            .unindexed
            .lock()
            .unwrap()
            .values()
            .filter(|chunk| matches!(chunk, Stored::Memory(_)))
            .count()
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
    ) -> Result<Option<Stored>, EndpointError> {
        if let Some(stored) = self.shared.unindexed.lock().unwrap().get(id) {
            return Ok(Some(stored.clone()));
        }
        Ok(table.get(id)?.map(|value| {
            let (pack, offset, len) = value.value();
            Stored::Pack(Location { pack, offset, len })
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
        let location = match location {
            Some(Stored::Pack(location)) => location,
            Some(Stored::Memory(chunk)) => return Ok(Some(chunk.frame().to_vec())),
            None if !self.legacy => return Ok(None),
            None => {
                let path = self.legacy_path(id);
                return match std::fs::read(&path) {
                    Ok(bytes) => Ok(Some(bytes)),
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(error) => Err(EndpointError::io("read", &path, error)),
                };
            }
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

    /// Both ways of writing a pack: past the page cache, and through it.
    const MODES: [bool; 2] = [true, false];

    #[test]
    fn an_appended_chunk_is_found_at_once_indexed_at_the_commit_and_after_a_reopen() {
        for direct in MODES {
            appended_chunks_are_found_indexed_and_kept(direct);
        }
    }

    fn appended_chunks_are_found_indexed_and_kept(direct: bool) {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(dir.path()).unwrap());
        let blobs = dir.path().join("blobs");
        let packs = Packs::open_with(&blobs, db.clone(), true, direct, STAGE_WAIT_MAX).unwrap();
        let (a, a_bytes) = chunk("first chunk");
        let (b, b_bytes) = chunk("second chunk");
        assert_eq!(packs.present(&[&a, &b]).unwrap(), [false, false]);
        packs
            .append_blocking(&a, ChunkBuffer::from_frame(&a_bytes))
            .unwrap();
        packs
            .append_blocking(&b, ChunkBuffer::from_frame(&b_bytes))
            .unwrap();
        assert_eq!(packs.present(&[&a, &b]).unwrap(), [true, true]);
        assert_eq!(packs.unindexed_len(), 2);
        assert_eq!(packs.read(&a).unwrap().unwrap(), a_bytes);
        commit(&packs, &db);
        assert_eq!(packs.unindexed_len(), 0);
        assert_eq!(packs.read(&b).unwrap().unwrap(), b_bytes);

        // A chunk appended but never committed is gone after a restart (its report was not
        // acknowledged: the uploader sends it again); committed ones stay.
        let (c, c_bytes) = chunk("third chunk");
        packs
            .append_blocking(&c, ChunkBuffer::from_frame(&c_bytes))
            .unwrap();
        drop(packs);
        let packs = Packs::open_with(&blobs, db.clone(), true, direct, STAGE_WAIT_MAX).unwrap();
        assert_eq!(packs.present(&[&a, &b, &c]).unwrap(), [true, true, false]);
        assert_eq!(packs.read(&a).unwrap().unwrap(), a_bytes);
        assert_eq!(packs.read(&c).unwrap(), None);
        // A new process appends to a new pack, after the first process's (as many as it
        // had lanes); the records read back in pack order.
        packs
            .append_blocking(&c, ChunkBuffer::from_frame(&c_bytes))
            .unwrap();
        packs.stage().unwrap();
        let records = packs.records().unwrap();
        let mut ids: Vec<&str> = records.iter().map(|(id, _)| id.as_str()).collect();
        ids[..3].sort_unstable();
        let mut expected = [a.as_str(), b.as_str(), c.as_str(), c.as_str()];
        expected[..3].sort_unstable();
        assert_eq!(ids, expected);
        let first_process = records[..3].iter().map(|(_, location)| location.pack).max();
        assert!(first_process <= Some(LANES as u64));
        assert!(records[3].1.pack > first_process.unwrap());
    }

    #[test]
    fn a_failed_write_is_tried_again_and_the_stage_waits_for_it_or_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(dir.path()).unwrap());
        let blobs = dir.path().join("blobs");
        let packs =
            Packs::open_with(&blobs, db.clone(), true, true, Duration::from_millis(300)).unwrap();
        // Without its directory a lane cannot start a pack: the append is answered, the
        // chunk read from memory, and a stage refuses for as long as it is not written.
        std::fs::remove_dir(blobs.join("packs")).unwrap();
        let (a, a_bytes) = chunk("written late");
        packs
            .append_blocking(&a, ChunkBuffer::from_frame(&a_bytes))
            .unwrap();
        assert_eq!(packs.present(&[&a]).unwrap(), [true]);
        assert_eq!(packs.read(&a).unwrap().unwrap(), a_bytes);
        let refused = packs.stage().err().expect("a chunk is still being written");
        assert!(
            refused
                .to_string()
                .contains("1 chunks are still not written"),
            "{refused}"
        );
        // Once the directory is back, the lane's next try writes it and a stage takes it.
        std::fs::create_dir(blobs.join("packs")).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let staged = loop {
            match packs.stage() {
                Ok(staged) => break staged,
                Err(_) if std::time::Instant::now() < deadline => continue,
                Err(error) => panic!("{error}"),
            }
        };
        assert_eq!(staged.locations.len(), 1);
        assert_eq!(staged.locations[0].0, a);
        let txn = db.begin_write().unwrap();
        Packs::record(&txn, &staged.locations).unwrap();
        txn.commit().unwrap();
        packs.committed(staged);
        drop(packs);
        let packs = Packs::open(&blobs, db.clone(), true).unwrap();
        assert_eq!(packs.read(&a).unwrap().unwrap(), a_bytes);
    }

    #[test]
    fn direct_records_start_on_block_boundaries_and_the_scan_steps_over_their_padding() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(dir.path()).unwrap());
        let blobs = dir.path().join("blobs");
        let packs = Packs::open_with(&blobs, db.clone(), true, true, STAGE_WAIT_MAX).unwrap();
        // 12 chunks, of lengths that leave every amount of padding from none to most of a
        // block.
        let mut appended = Vec::new();
        for index in 0..12usize {
            let len = [4096 - 40, 1, 5000, 8192 - 40 - 17][index % 4] + index;
            let mut raw = vec![0u8; len];
            blake3::Hasher::new()
                .update(&index.to_le_bytes())
                .finalize_xof()
                .fill(&mut raw);
            let id = blake3::hash(&raw).to_hex().to_string();
            let frame = zstd::bulk::compress(&raw, 1).unwrap();
            packs
                .append_blocking(&id, ChunkBuffer::from_frame(&frame))
                .unwrap();
            appended.push((id, frame));
        }
        commit(&packs, &db);
        for pack in pack_numbers(&blobs.join("packs")).unwrap() {
            let path = blobs.join("packs").join(pack_name(pack));
            assert_eq!(
                std::fs::metadata(&path).unwrap().len() % DIRECT_ALIGN_BYTES,
                0
            );
            assert_eq!(
                resident_pages(&path).0,
                0,
                "pack {pack} bypassed the page cache"
            );
        }
        let records = packs.records().unwrap();
        assert_eq!(records.len(), 12);
        for (id, location) in &records {
            assert_eq!(
                (location.offset - RECORD_HEADER_BYTES) % DIRECT_ALIGN_BYTES,
                0
            );
            let frame = &appended
                .iter()
                .find(|(appended, _)| appended == id)
                .unwrap()
                .1;
            assert_eq!(location.len as usize, frame.len());
            assert_eq!(&packs.read(id).unwrap().unwrap(), frame);
        }
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
        for direct in MODES {
            chunks_leave_the_page_cache(direct);
        }
    }

    fn chunks_leave_the_page_cache(direct: bool) {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(dir.path()).unwrap());
        let blobs = dir.path().join("blobs");
        let packs = Packs::open_with(&blobs, db.clone(), true, direct, STAGE_WAIT_MAX).unwrap();
        // 16 MiB of incompressible chunks (zstd keeps them as raw blocks).
        let mut ids = Vec::new();
        for index in 0..128u32 {
            let mut raw = vec![0u8; 128 * 1024];
            let mut hasher = blake3::Hasher::new();
            hasher.update(&index.to_le_bytes());
            hasher.finalize_xof().fill(&mut raw);
            let id = blake3::hash(&raw).to_hex().to_string();
            let frame = zstd::bulk::compress(&raw, 1).unwrap();
            packs
                .append_blocking(&id, ChunkBuffer::from_frame(&frame))
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
        packs
            .append_blocking(&id, ChunkBuffer::from_frame(&bytes))
            .unwrap();
        packs.stage().unwrap();
        let size = std::fs::metadata(&pack).unwrap().len();
        assert!(size <= 4096, "{size}");
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
        for direct in MODES {
            a_torn_record_stops_the_scan(direct);
        }
    }

    fn a_torn_record_stops_the_scan(direct: bool) {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(dir.path()).unwrap());
        let blobs = dir.path().join("blobs");
        let (old, old_bytes) = chunk("a chunk of an older data dir");
        let legacy = blobs.join("chunks").join(&old[..2]);
        std::fs::create_dir_all(&legacy).unwrap();
        std::fs::write(legacy.join(&old[2..]), &old_bytes).unwrap();
        let packs = Packs::open_with(&blobs, db.clone(), false, direct, STAGE_WAIT_MAX).unwrap();
        assert_eq!(packs.present(&[&old]).unwrap(), [true]);
        assert_eq!(packs.read(&old).unwrap().unwrap(), old_bytes);

        let (a, a_bytes) = chunk("kept");
        packs
            .append_blocking(&a, ChunkBuffer::from_frame(&a_bytes))
            .unwrap();
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

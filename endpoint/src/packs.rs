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
//!   pack's name is made durable (directory `fsync`) before anything is written to it.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use crate::db::Db;
use crate::error::EndpointError;

/// Chunk id (hex) → (pack number, offset of the zstd frame, its length).
pub(crate) const CHUNKS: TableDefinition<&str, (u64, u64, u32)> = TableDefinition::new("chunks_v1");

/// A pack is closed for appends past this size.
pub const PACK_BYTES_MAX: u64 = 1 << 30;
/// Pack files kept open for reading.
const READERS_OPEN_MAX: usize = 64;
/// The record header: magic, length, chunk id.
const RECORD_MAGIC: &[u8; 4] = b"CMPK";
const RECORD_HEADER_BYTES: u64 = 4 + 4 + 32;

/// Where a chunk's frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
}

/// Chunks in pack files under one directory.
pub struct Packs {
    dir: PathBuf,
    db: Arc<Db>,
    fsync: bool,
    /// `chunks/` of an older data dir exists: look there too.
    legacy: bool,
    /// `None` until the first append of this process (which starts a new pack).
    writer: Mutex<Option<Writer>>,
    readers: Mutex<HashMap<u64, Arc<File>>>,
    /// Chunks appended and not yet indexed (see [`Packs::stage`]).
    unindexed: Mutex<HashMap<String, Location>>,
}

/// Chunk locations made durable, to be written in the committing transaction.
pub struct Staged {
    locations: Vec<(String, Location)>,
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
        Ok(Packs {
            legacy: dir.join("chunks").is_dir(),
            dir: dir.to_path_buf(),
            db,
            fsync,
            writer: Mutex::new(None),
            readers: Mutex::new(HashMap::new()),
            unindexed: Mutex::new(HashMap::new()),
        })
    }

    /// The numbers of the pack files, ascending.
    fn pack_numbers(&self) -> Result<Vec<u64>, EndpointError> {
        let dir = self.dir.join("packs");
        let mut numbers = Vec::new();
        for entry in
            std::fs::read_dir(&dir).map_err(|error| EndpointError::io("list", &dir, error))?
        {
            let entry = entry.map_err(|error| EndpointError::io("list", &dir, error))?;
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

    fn pack_path(&self, pack: u64) -> PathBuf {
        self.dir.join("packs").join(pack_name(pack))
    }

    fn legacy_path(&self, id: &str) -> PathBuf {
        self.dir.join("chunks").join(&id[..2]).join(&id[2..])
    }

    /// Starts a new pack after the highest present, its name durable.
    fn new_writer(&self) -> Result<Writer, EndpointError> {
        let packs = self.dir.join("packs");
        let pack = self.pack_numbers()?.last().copied().unwrap_or(0) + 1;
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
        Ok(Writer {
            pack,
            file: Arc::new(file),
            end: 0,
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
        let mut record = Vec::with_capacity(RECORD_HEADER_BYTES as usize + compressed.len());
        record.extend_from_slice(RECORD_MAGIC);
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&raw_id(id)?);
        record.extend_from_slice(compressed);
        // Reserve the range under the lock; write it outside, beside other writers.
        let (pack, file, start) = {
            let mut writer = self.writer.lock().unwrap();
            let full = writer
                .as_ref()
                .is_none_or(|writer| writer.end + record.len() as u64 > PACK_BYTES_MAX);
            if full {
                *writer = Some(self.new_writer()?);
            }
            let writer = writer.as_mut().expect("made above");
            let start = writer.end;
            writer.end += record.len() as u64;
            (writer.pack, writer.file.clone(), start)
        };
        file.write_all_at(&record, start)
            .map_err(|error| EndpointError::io("write", &self.pack_path(pack), error))?;
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
    pub fn record(txn: &WriteTransaction, staged: &Staged) -> Result<(), EndpointError> {
        if staged.locations.is_empty() {
            return Ok(());
        }
        let mut table = txn.open_table(CHUNKS)?;
        for (id, location) in &staged.locations {
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
        let packs = self.pack_numbers()?;
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
        let txn = self.db.db.begin_read()?;
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
            let txn = self.db.db.begin_read()?;
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

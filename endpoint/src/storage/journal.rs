//! The ingest journal, `DATA_DIR/ingest.journal`: the committer's batches, appended and
//! synced before their uploads are answered.
//!
//! A batch is committed to redb without a sync of its own (`Durability::None`: the pages
//! stay in memory and a later commit may reuse them); the journal entry, one sequential
//! append and one `fdatasync`, is what makes it durable. Every `[storage] checkpoint_ms`
//! (and when the journal passes [`JOURNAL_BYTES_MAX`], and at a clean stop) the committer
//! makes the database durable and empties the journal. Each batch writes its sequence
//! number into the database, so when the database is opened after a crash the entries
//! past the last durable one are run again (`recording::replay`).
//!
//! An entry is what its batch's effect depends on, nothing the server looks up at the
//! time: the manifests and updates, the uninteresting-rule decisions, the batch's clock,
//! and the chunk locations it indexed. Replaying it on the state it was first run on
//! writes the same rows.
//!
//! ```text
//! entry = magic "CMJ1" | payload length u32 LE | blake3(payload)[..8] | payload (postcard)
//! ```
//! Reading stops at the first entry that is torn or does not match its checksum: a stop
//! during an append, never answered. Appends go into a part of the file written ahead
//! ([`JOURNAL_PREPARE_STEP_BYTES`]), and a checkpoint rewinds the journal without
//! truncating it: what lies past the last entry is zeros or entries of batches the
//! database has made durable, which a replay skips by their numbers. A clean stop
//! truncates it.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crashmesh_protocol::Problem;
use crashmesh_protocol::report::{IncidentUpdate, ReportManifest};
use serde::{Deserialize, Serialize};

use crate::error::EndpointError;
use crate::storage::packs::Location;

/// The journal's file name in the data dir.
pub const JOURNAL_FILE: &str = "ingest.journal";
/// A journal longer than this is checkpointed without waiting for the interval.
pub const JOURNAL_BYTES_MAX: u64 = 64 << 20;
/// The journal's file is written (zeros) and synced this far ahead of its entries, so an
/// append's sync writes its own blocks only, not the file's size and block map too
/// (measured: 110 against 180–300 µs for a 20 KB append and its `fdatasync`).
pub const JOURNAL_PREPARE_STEP_BYTES: u64 = 4 << 20;

const ENTRY_MAGIC: &[u8; 4] = b"CMJ1";
const ENTRY_HEADER_BYTES: usize = 16;

/// One job of a batch, as it is run and as it is replayed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Work {
    /// A report whose chunks are all stored.
    Complete {
        manifest: Arc<ReportManifest>,
        /// `None`: the manifest's problem as sent; else re-symbolized.
        analysis: Option<Box<Problem>>,
        /// The rule that marks the problem uninteresting, as written (decided once, when
        /// the report came in, so a replay under changed rules writes the same row).
        uninteresting: Option<String>,
    },
    /// An incident update.
    Update(IncidentUpdate),
    /// The admin merges problem `from` into problem `into` (new variants go last: the
    /// journal names a variant by its position).
    Merge { from: String, into: String },
}

/// A batch as the journal keeps it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Entry {
    /// The batch's number; the database keeps the last one it committed.
    pub seq: u64,
    /// The batch's clock (ms since the epoch).
    pub now_ms: u64,
    pub works: Vec<Work>,
    /// Chunk locations (local packs) indexed by the batch.
    pub chunks: Vec<(String, Location)>,
}

/// [`Entry`] by reference: postcard writes the same bytes.
#[derive(Serialize)]
pub struct EntryRef<'a> {
    pub seq: u64,
    pub now_ms: u64,
    pub works: &'a [&'a Work],
    pub chunks: &'a [(String, Location)],
}

/// The open journal, appended to by the committer alone.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    len_bytes: u64,
    /// The file is written and synced up to here.
    prepared_bytes: u64,
    buffer: Vec<u8>,
}

impl Journal {
    /// Opens (or creates) the journal in `data_dir` and reads its whole entries.
    pub fn open(data_dir: &Path) -> Result<(Journal, Vec<Entry>), EndpointError> {
        let path = data_dir.join(JOURNAL_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|error| EndpointError::io("open", &path, error))?;
        let (entries, read_bytes, file_bytes) = read_entries(&file, &path)?;
        if read_bytes < file_bytes {
            tracing::warn!(
                path = %path.display(),
                entries = entries.len(),
                ignored_bytes = file_bytes - read_bytes,
                "the journal ends in a torn or damaged entry; it is ignored (never answered)"
            );
        }
        Ok((
            Journal {
                file,
                path,
                len_bytes: read_bytes,
                // What a crash left may not all be synced.
                prepared_bytes: read_bytes,
                buffer: Vec::new(),
            },
            entries,
        ))
    }

    /// A handle that syncs the journal from another thread (a sync covers every entry
    /// written before it began).
    pub fn syncer(&self) -> Result<JournalSync, EndpointError> {
        Ok(JournalSync {
            file: self
                .file
                .try_clone()
                .map_err(|error| EndpointError::io("open", &self.path, error))?,
            path: self.path.clone(),
        })
    }

    /// Appends an entry without syncing it ([`JournalSync::sync`] does).
    pub fn write(&mut self, entry: &EntryRef) -> Result<(), EndpointError> {
        let buffer = &mut self.buffer;
        buffer.clear();
        buffer.extend_from_slice(ENTRY_MAGIC);
        buffer.extend_from_slice(&[0; ENTRY_HEADER_BYTES - 4]);
        postcard::serialize_with_flavor(entry, crashmesh_protocol::wire::ExtendVec(buffer))
            .map_err(|error| {
                EndpointError::Database(format!("encoding a journal entry: {error}"))
            })?;
        let payload_bytes = u32::try_from(buffer.len() - ENTRY_HEADER_BYTES)
            .map_err(|_| EndpointError::Database("a journal entry over 4 GiB".into()))?;
        let checksum = blake3::hash(&buffer[ENTRY_HEADER_BYTES..]);
        buffer[4..8].copy_from_slice(&payload_bytes.to_le_bytes());
        buffer[8..16].copy_from_slice(&checksum.as_bytes()[..8]);
        let end = self.len_bytes + buffer.len() as u64;
        if end > self.prepared_bytes {
            let prepared = end.max(self.prepared_bytes + JOURNAL_PREPARE_STEP_BYTES);
            let zeros = vec![0u8; (prepared - self.len_bytes) as usize];
            self.file
                .write_all_at(&zeros, self.len_bytes)
                .and_then(|()| self.file.sync_data())
                .map_err(|error| EndpointError::io("prepare", &self.path, error))?;
            self.prepared_bytes = prepared;
        }
        let buffer = &self.buffer;
        self.file
            .write_all_at(buffer, self.len_bytes)
            .map_err(|error| EndpointError::io("append to", &self.path, error))?;
        self.len_bytes += buffer.len() as u64;
        Ok(())
    }

    /// Starts the journal again from its beginning, once a checkpoint made its entries
    /// durable in the database (they stay in the file until overwritten, and a replay
    /// skips them).
    pub fn rewind(&mut self) {
        self.len_bytes = 0;
    }

    /// Empties the journal's file (its entries are durable in the database).
    pub fn clear(&mut self) -> Result<(), EndpointError> {
        self.file
            .set_len(0)
            .map_err(|error| EndpointError::io("truncate", &self.path, error))?;
        self.len_bytes = 0;
        self.prepared_bytes = 0;
        Ok(())
    }

    /// Bytes of whole entries.
    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }
}

/// Syncs the journal: every entry written before the call is durable when it returns.
#[derive(Debug)]
pub struct JournalSync {
    file: File,
    path: PathBuf,
}

impl JournalSync {
    pub fn sync(&self) -> Result<(), EndpointError> {
        self.file
            .sync_data()
            .map_err(|error| EndpointError::io("sync", &self.path, error))
    }
}

/// The whole entries, the bytes they take, and the file's length.
fn read_entries(file: &File, path: &Path) -> Result<(Vec<Entry>, u64, u64), EndpointError> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut &*file, &mut bytes)
        .map_err(|error| EndpointError::io("read", path, error))?;
    let (entries, read_bytes) = parse_entries(&bytes);
    Ok((entries, read_bytes as u64, bytes.len() as u64))
}

/// The whole entries at the start of `bytes` and the bytes they take: reading stops at the
/// first frame that is cut short, has no magic, or whose payload does not match its
/// checksum or does not decode.
pub fn parse_entries(bytes: &[u8]) -> (Vec<Entry>, usize) {
    let mut entries = Vec::new();
    let mut offset = 0;
    while let Some(header) = bytes.get(offset..offset + ENTRY_HEADER_BYTES) {
        let payload_bytes = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
        let start = offset + ENTRY_HEADER_BYTES;
        let Some(payload) = bytes.get(start..start + payload_bytes) else {
            break;
        };
        if &header[..4] != ENTRY_MAGIC || blake3::hash(payload).as_bytes()[..8] != header[8..16] {
            break;
        }
        match postcard::from_bytes::<Entry>(payload) {
            Ok(entry) => entries.push(entry),
            Err(_) => break,
        }
        offset = start + payload_bytes;
    }
    (entries, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(report: &str) -> Work {
        Work::Update(IncidentUpdate {
            report_id: report.into(),
            cluster_id: "c1".into(),
            term: 3,
            signature: "v1:core:x".into(),
            incidents: Vec::new(),
        })
    }

    #[test]
    fn entries_come_back_in_order_up_to_a_torn_or_damaged_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, entries) = Journal::open(dir.path()).unwrap();
        assert!(entries.is_empty());
        let location = Location {
            pack: 2,
            offset: 4096,
            len: 77,
        };
        for seq in 1..=3 {
            let work = update(&format!("r{seq}"));
            journal
                .write(&EntryRef {
                    seq,
                    now_ms: 1000 + seq,
                    works: &[&work],
                    chunks: &[(format!("chunk{seq}"), location)],
                })
                .unwrap();
        }
        let whole = journal.len_bytes();
        drop(journal);
        let path = dir.path().join(JOURNAL_FILE);
        // Written ahead of the entries.
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            JOURNAL_PREPARE_STEP_BYTES
        );

        let seqs = |entries: &[Entry]| entries.iter().map(|entry| entry.seq).collect::<Vec<_>>();
        let (_, entries) = Journal::open(dir.path()).unwrap();
        assert_eq!(seqs(&entries), [1, 2, 3]);
        assert_eq!(entries[1].now_ms, 1002);
        assert_eq!(entries[2].chunks, [("chunk3".to_string(), location)]);
        assert!(matches!(&entries[0].works[0], Work::Update(update) if update.report_id == "r1"));

        // A torn append: the last entry cut short is ignored, and the next append
        // overwrites it.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(whole - 5)
            .unwrap();
        let (mut journal, entries) = Journal::open(dir.path()).unwrap();
        assert_eq!(seqs(&entries), [1, 2]);
        let work = update("r4");
        journal
            .write(&EntryRef {
                seq: 4,
                now_ms: 0,
                works: &[&work],
                chunks: &[],
            })
            .unwrap();
        let (mut journal, entries) = Journal::open(dir.path()).unwrap();
        assert_eq!(seqs(&entries), [1, 2, 4]);

        // Rewound (after a checkpoint), the next entry goes first; the older ones after it
        // are read too, and a replay skips them by their numbers.
        journal.rewind();
        let work = update("r9");
        journal
            .write(&EntryRef {
                seq: 9,
                // As long an encoding as entry 1's, which it overwrites exactly.
                now_ms: 1009,
                works: &[&work],
                chunks: &[("chunk9".to_string(), location)],
            })
            .unwrap();
        let (_, entries) = Journal::open(dir.path()).unwrap();
        assert_eq!(seqs(&entries), [9, 2, 4]);

        // A flipped byte in the second entry's payload ends the journal there.
        let mut bytes = std::fs::read(&path).unwrap();
        let second = bytes.windows(4).rposition(|w| w == ENTRY_MAGIC).unwrap();
        let first_end = bytes[4..]
            .windows(4)
            .position(|w| w == ENTRY_MAGIC)
            .unwrap()
            + 4;
        assert!(first_end < second);
        bytes[first_end + ENTRY_HEADER_BYTES + 2] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let (_, entries) = Journal::open(dir.path()).unwrap();
        assert_eq!(seqs(&entries), [9]);

        // Garbage: no entries, no error; cleared, the journal is empty.
        std::fs::write(&path, b"\xffgarbage that is no journal at all").unwrap();
        let (mut journal, entries) = Journal::open(dir.path()).unwrap();
        assert!(entries.is_empty());
        journal.clear().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        let (journal, _) = Journal::open(dir.path()).unwrap();
        assert_eq!(journal.len_bytes(), 0);
    }

    /// A small deterministic generator (xorshift64*).
    struct Random(u64);

    impl Random {
        fn below(&mut self, bound: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound as u64) as usize
        }
    }

    #[test]
    fn a_damaged_journal_gives_a_prefix_of_its_entries_and_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open(dir.path()).unwrap();
        let location = Location {
            pack: 1,
            offset: 0,
            len: 9,
        };
        for seq in 1..=6 {
            let work = update(&format!("r{seq}"));
            journal
                .write(&EntryRef {
                    seq,
                    now_ms: seq * 7,
                    works: &[&work, &work],
                    chunks: &[(format!("c{seq}"), location)],
                })
                .unwrap();
        }
        let whole = journal.len_bytes() as usize;
        let bytes = std::fs::read(dir.path().join(JOURNAL_FILE)).unwrap()[..whole].to_vec();
        let (entries, read) = parse_entries(&bytes);
        assert_eq!((entries.len(), read), (6, whole));
        let mut random = Random(0x9E37_79B9_7F4A_7C15);
        for round in 0..3000 {
            let mut damaged = bytes.clone();
            match round % 3 {
                // Cut anywhere.
                0 => damaged.truncate(random.below(whole)),
                // Flip bits anywhere.
                1 => {
                    for _ in 0..1 + random.below(4) {
                        let at = random.below(whole);
                        damaged[at] ^= 1 << random.below(8);
                    }
                }
                // Overwrite a stretch with garbage.
                _ => {
                    let at = random.below(whole);
                    let len = random.below(64).min(whole - at);
                    for byte in &mut damaged[at..at + len] {
                        *byte = random.below(256) as u8;
                    }
                }
            }
            let (entries, read) = parse_entries(&damaged);
            assert!(read <= damaged.len());
            // What comes back is entries 1, 2, … as written, up to the damage.
            for (index, entry) in entries.iter().enumerate() {
                assert_eq!(entry.seq, index as u64 + 1, "round {round}");
                assert_eq!(entry.now_ms, entry.seq * 7);
                assert_eq!(entry.chunks, [(format!("c{}", entry.seq), location)]);
            }
            if damaged == bytes {
                assert_eq!(entries.len(), 6);
            }
        }
    }
}

//! crashmesh's durable spool: a redb index plus a content-addressed chunk store, in one
//! data directory, with quotas, eviction and crash recovery, behind a file-system trait.
//!
//! # Layout
//! ```text
//! DATA_DIR/index.redb                the index (format version 2, refused if unknown)
//! DATA_DIR/packs/0000000000000001.pack  zstd frames, one per chunk, back to back
//! DATA_DIR/tmp/                      packs being written; emptied at open
//! ```
//! A blob (a core, a log, a /proc file, a report) is cut into FastCDC v2020 chunks of
//! 32 KiB min / 128 KiB average / 512 KiB max, each named by the blake3 of its bytes.
//! The chunks a put adds go into one new pack file (a new pack every
//! [`PACK_BYTES_MAX`]); the index says where each chunk lies. Why packs and not a file
//! per chunk: creating a file costs an inode allocation and a directory entry, which on
//! ext4 took more time than compressing the chunk (the store wrote at a quarter of the
//! disk's speed, `bench/run --only store_ingest`); a pack is one file per put. The
//! price is the collection: a pack still holding live chunks is rewritten to free the
//! dead ones (see `pack.rs`), which is crash-safe the same way a put is. `zstdcat` reads
//! a pack. Why 128 KiB: cores of one crash loop still share most of their chunks, and a
//! 1 GiB core's manifest stays at ~8 Ki entries (~290 KiB). A put cuts on one thread
//! while another hashes, compresses and writes what was cut before.
//!
//! # Guarantees
//! - **Durable when Ok.** When `put_blob` returns Ok, every pack it wrote is synced and
//!   named (content synced before the rename, the rename synced before the index commit),
//!   and the index lists the blob. When `record_incident`, `add_repeat_count`,
//!   `set_upload_state`, `enforce_quota` or `check` returns Ok, its redb transaction is
//!   committed with `Durability::Immediate`.
//! - **No torn blob is ever visible.** Reading verifies every chunk against its id and
//!   the whole against the blob id; a bad chunk is [`StoreError::CorruptChunk`] or
//!   [`StoreError::MissingChunk`], never wrong bytes.
//! - **Packs before the index.** A pack file exists before any index row references it.
//!   A crash in between leaves an orphan pack (or a temporary file), which the next open
//!   deletes. A dead chunk stays where it is until the collection rewrites or deletes its
//!   pack, which happens only after the transaction that dropped its last reference
//!   committed, and never while a put is running that may reuse it. A rewrite writes and
//!   syncs the new pack, commits the chunks' new places, and only then deletes the old.
//!   Readers take no lock: a read that finds its chunk's pack gone looks the chunk up
//!   again and reads it at its new place.
//! - **Metadata is never evicted.** An incident's row (report id, time, node, process,
//!   labels, which evidence it had and what became of it) and its problem's count survive
//!   every eviction. Only blobs are evicted.
//! - **Eviction order** (`enforce_quota`): first evidence older than `max_age_days`,
//!   whatever the usage; then, while over the limit: (1) cores of a problem other than its
//!   first kept core, (2) the remaining (first) cores, (3) logs and other attachments.
//!   Within each step, problems already uploaded go before those not yet uploaded, and
//!   older incidents before newer. Blobs put but not yet recorded are not evicted.
//! - **The limit**: `max_bytes`, lowered so that the file system keeps
//!   `keep_free_percent` free; everything in the data directory counts (pack files in
//!   whole 4 KiB blocks, the index file, temporary files). After `enforce_quota` returns
//!   Ok the store is within it, unless the report says `still_over_quota` (only metadata
//!   and pinned blobs were left).
//! - **Usage is what the disk holds.** The bytes `status` and `enforce_quota` report
//!   count a pack file from its commit until its deletion, garbage included: a chunk
//!   freed while a put runs stays counted (its pack stays) until a later collection (every
//!   `enforce_quota` starts with one) rewrites or deletes its pack, and each pack a
//!   collection deletes stops counting as soon as its unlink returns, not when the whole
//!   collection commits. Concurrent `enforce_quota` calls run one after the other.
//! - **Pins.** A blob from `put_blob` is pinned until `record_incident` names it,
//!   `release_blob` lets it go, or the store is reopened (its caller died with the
//!   process). A core over `max_cores_per_signature` is freed at once; its incident keeps
//!   its metadata and count.
//! - **Recovery at open**: temporary files removed, pins of dead callers released, pack
//!   files the index does not list (orphans, dead packs) deleted, byte counters
//!   recomputed.
//! - **`check`** verifies every indexed chunk (its pack present and long enough, it
//!   decompresses, it hashes to its id), every manifest (chunks present, reference counts)
//!   and finds orphan pack files. With
//!   `repair`, it deletes orphans, fixes reference counts, and marks each blob with a
//!   missing or corrupt chunk damaged: the blob is dropped, and each incident that held it
//!   keeps its metadata with the evidence marked `damaged`. What it could not repair is
//!   listed in `unrepaired`.
//! - **I/O errors**: a failed operation returns an error and changes nothing that a later
//!   successful call depends on. After a failed fsync, what was unsynced may be lost
//!   (fsyncgate): the store never reuses a pack file whose sync failed, and redb refuses
//!   further writes until it is reopened. The safe reaction to any I/O error on the index
//!   is to restart the process.
//!
//! Only one `Store` opens a data directory at a time (redb locks its file).

mod check;
mod chunk;
mod collection;
mod error;
mod faulty_fs;
mod fs;
mod ids;
mod index;
mod pack;
pub mod permissions;
mod quota;
mod store;
mod types;

pub use chunk::{
    BLOB_BYTES_MAX, CHUNK_BYTES_AVG, CHUNK_BYTES_MAX, CHUNK_BYTES_MIN, CHUNK_COMPRESSED_BYTES_MAX,
    DISK_BLOCK_BYTES, ZSTD_LEVEL,
};
pub use error::StoreError;
pub use faulty_fs::{FaultConfig, FaultCounts, FaultyFs};
pub use fs::{Fs, FsSpace, PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, RealFs};
pub use ids::{BadId, BlobId, ChunkId};
pub use index::FORMAT_VERSION;
pub use pack::PACK_BYTES_MAX;
pub use permissions::{Tightened, make_private};
pub use store::{
    CHUNK_MOVES_FOLLOWED_MAX, INCIDENT_ITEMS_MAX, NAME_BYTES_MAX, PROBLEM_BYTES_MAX,
    PROBLEM_ID_PREFIX_MIN, Store, problem_id_for,
};
pub use types::{
    CheckReport, EvictionReport, Evidence, EvidenceState, IncidentDetail, Manifest, NewIncident,
    ProblemDetail, ProblemSummary, Recorded, StoreConfig, StoreStatus, UploadState,
};

//! How a blob is cut into chunks and how a chunk is kept, as the node's store, the mesh and
//! the endpoint all agree: FastCDC (v2020) with these sizes, a chunk's id the blake3 of its
//! bytes, each chunk one zstd frame at [`ZSTD_LEVEL`]. A chunk one side cut is a chunk the
//! other side already has, so equal regions are sent and kept once.
//!
//! Invariant: these are conventions, not code that cuts or compresses (this crate does no
//! I/O and links no compressor); a change to any of them changes chunk ids and stops the
//! deduplication between nodes and the endpoint of different versions.

/// FastCDC's smallest chunk (except a blob's last).
pub const CHUNK_BYTES_MIN: u32 = 32 * 1024;
/// FastCDC's target average chunk.
pub const CHUNK_BYTES_AVG: u32 = 128 * 1024;
/// FastCDC's largest chunk; also the most a chunk may decompress to.
pub const CHUNK_BYTES_MAX: u32 = 512 * 1024;
/// The largest compressed chunk accepted (zstd's worst case for an incompressible
/// [`CHUNK_BYTES_MAX`] plus room).
pub const CHUNK_COMPRESSED_BYTES_MAX: u64 = CHUNK_BYTES_MAX as u64 + 64 * 1024;
/// zstd level: 1 is the fastest, and the spool's cost is write time, not disk.
pub const ZSTD_LEVEL: i32 = 1;

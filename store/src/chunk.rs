//! Chunks: how blobs are cut, compressed and verified.

use crate::error::StoreError;
use crate::ids::ChunkId;

/// FastCDC's smallest chunk (except a blob's last).
pub const CHUNK_BYTES_MIN: u32 = 32 * 1024;
/// FastCDC's target average chunk.
pub const CHUNK_BYTES_AVG: u32 = 128 * 1024;
/// FastCDC's largest chunk; also the most a chunk may decompress to.
pub const CHUNK_BYTES_MAX: u32 = 512 * 1024;
/// Bytes read from a blob's source at a time; a multiple of the largest chunk so that
/// FastCDC always finds at least one whole chunk in a full buffer.
pub const READ_BUFFER_BYTES: usize = 8 * CHUNK_BYTES_MAX as usize;
/// The largest blob `put_blob` accepts (a 64 GiB core is ~512 Ki chunks, a 19 MiB manifest).
pub const BLOB_BYTES_MAX: u64 = 64 << 30;
/// The largest compressed chunk `put_chunk_compressed` accepts (zstd's worst case
/// for an incompressible `CHUNK_BYTES_MAX` plus room).
pub const CHUNK_COMPRESSED_BYTES_MAX: u64 = CHUNK_BYTES_MAX as u64 + 64 * 1024;
/// zstd level: 1 is the fastest, and the spool's cost is write time, not disk.
pub const ZSTD_LEVEL: i32 = 1;
/// The allocation unit pack files are counted in against the quota.
pub const DISK_BLOCK_BYTES: u64 = 4096;

/// Bytes a file of `len` occupies, rounded up to whole blocks.
pub(crate) fn disk_bytes(len: u64) -> u64 {
    len.div_ceil(DISK_BLOCK_BYTES) * DISK_BLOCK_BYTES
}

/// Compresses one chunk as one zstd frame (so `zstdcat` reads a pack file).
pub(crate) fn compress(raw: &[u8]) -> Result<Vec<u8>, StoreError> {
    debug_assert!(raw.len() <= CHUNK_BYTES_MAX as usize);
    zstd::bulk::compress(raw, ZSTD_LEVEL).map_err(StoreError::Input)
}

/// Decompresses a chunk's stored bytes and checks them against the chunk's id.
pub(crate) fn decompress_verified(id: &ChunkId, stored: &[u8]) -> Result<Vec<u8>, StoreError> {
    let raw = zstd::bulk::decompress(stored, CHUNK_BYTES_MAX as usize).map_err(|error| {
        StoreError::CorruptChunk {
            chunk: *id,
            detail: format!("does not decompress: {error}"),
        }
    })?;
    if ChunkId::of(&raw) != *id {
        return Err(StoreError::CorruptChunk {
            chunk: *id,
            detail: "content does not hash to its id".to_string(),
        });
    }
    Ok(raw)
}

//! Chunks: how blobs are cut, compressed and verified.

use crate::error::StoreError;
use crate::ids::ChunkId;

// The chunk conventions the store shares with the mesh and the endpoint.
pub use crashmesh_protocol::chunk::{
    CHUNK_BYTES_AVG, CHUNK_BYTES_MAX, CHUNK_BYTES_MIN, CHUNK_COMPRESSED_BYTES_MAX, ZSTD_LEVEL,
};

/// Bytes read from a blob's source at a time; a multiple of the largest chunk so that
/// FastCDC always finds at least one whole chunk in a full buffer.
pub const READ_BUFFER_BYTES: usize = 8 * CHUNK_BYTES_MAX as usize;
/// The largest blob `put_blob` accepts (a 64 GiB core is ~512 Ki chunks, a 19 MiB manifest).
pub const BLOB_BYTES_MAX: u64 = 64 << 30;
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

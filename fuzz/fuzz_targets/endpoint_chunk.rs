//! Chunk bodies as an uploader sends them to `PUT /api/v1/chunks/{id}`: no panic, and the
//! endpoint's check accepts exactly the bodies zstd decodes to 1 byte..CHUNK_BYTES_MAX
//! bytes hashing to the id. The id is the hash of what the body decodes to when it
//! decodes (so accepted bodies are reached), else the input's first 32 bytes.
#![no_main]

use crashmesh_endpoint::storage::blobs::check_chunk;
use libfuzzer_sys::fuzz_target;

const CHUNK_BYTES_MAX: usize = crashmesh_protocol::chunk::CHUNK_BYTES_MAX as usize;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, body)) = data.split_first() else {
        return;
    };
    let decoded = zstd::bulk::decompress(body, CHUNK_BYTES_MAX + 1).ok();
    let id = match (&decoded, choice % 2) {
        (Some(raw), 0) => blake3::hash(raw).to_hex().to_string(),
        _ => blake3::hash(&data[..data.len().min(32)]).to_hex().to_string(),
    };
    let fits = |raw: &Vec<u8>| !raw.is_empty() && raw.len() <= CHUNK_BYTES_MAX;
    let expected = decoded
        .as_ref()
        .filter(|raw| fits(raw) && blake3::hash(raw).to_hex().as_str() == id)
        .map(Vec::len);
    assert_eq!(check_chunk(&id, body).ok(), expected);
    // Ids that are not 64 lower-case hex digits, or name a path, are refused.
    assert!(check_chunk(&id.to_uppercase(), body).is_err() || id == id.to_uppercase());
    assert!(check_chunk("../../etc/passwd", body).is_err());
});

//! Mesh datagrams from a hostile peer: no panic, whatever decodes is valid and encodes
//! back to the same bytes, and the shared decoder (a chunk left in its frame) gives the
//! same answer as the copying one.
#![no_main]

use crashmesh_protocol::wire::{MESSAGE_BYTES_MAX, decode, decode_shared, encode, encode_parts};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = decode(data, MESSAGE_BYTES_MAX);
    let frame = bytes::Bytes::copy_from_slice(data);
    assert_eq!(decode_shared(&frame, MESSAGE_BYTES_MAX), decoded);
    if let Ok(envelope) = decoded {
        envelope
            .validate()
            .expect("decode returns only valid envelopes");
        let bytes = encode(&envelope).expect("a valid envelope encodes");
        assert_eq!(decode(&bytes, MESSAGE_BYTES_MAX).as_ref(), Ok(&envelope));
        let parts = encode_parts(&envelope).expect("a valid envelope encodes in parts");
        assert_eq!(parts.to_vec(), bytes);
    }
});

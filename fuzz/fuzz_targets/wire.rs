//! Mesh datagrams from a hostile peer: no panic, and whatever decodes is valid and
//! encodes back to the same bytes.
#![no_main]

use crashmesh_protocol::wire::{MESSAGE_BYTES_MAX, decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = decode(data, MESSAGE_BYTES_MAX) {
        envelope
            .validate()
            .expect("decode returns only valid envelopes");
        let bytes = encode(&envelope).expect("a valid envelope encodes");
        assert_eq!(decode(&bytes, MESSAGE_BYTES_MAX).as_ref(), Ok(&envelope));
    }
});

//! The endpoint's ingest journal as a crash (or a damaged disk) may leave it: no panic,
//! reading stops within the bytes, and the entries read are exactly those of the prefix
//! it says they take.
#![no_main]

use crashmesh_endpoint::storage::journal::parse_entries;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (entries, consumed) = parse_entries(data);
    assert!(consumed <= data.len());
    let (again, again_consumed) = parse_entries(&data[..consumed]);
    assert_eq!(again_consumed, consumed);
    assert_eq!(again.len(), entries.len());
    for (first, second) in entries.iter().zip(&again) {
        assert_eq!(first.seq, second.seq);
    }
});

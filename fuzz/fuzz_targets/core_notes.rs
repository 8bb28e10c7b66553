//! Fuzzes the core note decoder: any bytes must give notes (what did not decode named as
//! damage), within its caps, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let notes = crashmesh_coredump::parse_notes(data);
    assert!(notes.threads.len() <= crashmesh_coredump::notes::CORE_THREADS_MAX);
    assert!(notes.file_mappings.len() <= crashmesh_coredump::notes::CORE_FILE_MAPPINGS_MAX);
    assert!(notes.auxv.len() <= crashmesh_coredump::notes::AUXV_ENTRIES_MAX);
    assert!(notes.damage.len() <= data.len() / 12 + 2, "at most one line per note, and the count's");
    for thread in &notes.threads {
        assert!(thread.registers.len() <= crashmesh_coredump::notes::REGISTER_WORDS_MAX);
    }
});

//! Fuzzes the whole analysis of a core held in memory: header, segments, notes, module
//! discovery, unwinding and symbolization from the core's own memory. Files on disk are
//! not opened, so a run depends on nothing but its input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let options = crashmesh_coredump::AnalyzeOptions {
        read_module_files: false,
        threads_max: 16,
        frames_max: 64,
        ..crashmesh_coredump::AnalyzeOptions::default()
    };
    if let Ok(analysis) = crashmesh_coredump::analyze_core_bytes(data, &options) {
        for thread in analysis.problem.threads.iter().flatten() {
            assert!(thread.frames.len() <= options.frames_max);
        }
    }
});

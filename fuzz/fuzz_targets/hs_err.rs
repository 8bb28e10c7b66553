//! JVM hs_err files on lossy UTF-8: no panic, bounded output.
#![no_main]

use crashmesh_parsers::hs_err::{HS_ERR_FRAMES_MAX, HS_ERR_TEXT_BYTES_MAX, parse_hs_err};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(problem) = parse_hs_err(&text) {
        assert!(problem.signature.starts_with("v1:"));
        assert!(problem.frames.len() <= HS_ERR_FRAMES_MAX);
        assert!(problem.text.as_deref().unwrap_or("").len() <= HS_ERR_TEXT_BYTES_MAX);
        assert!(problem.reason.len() <= 300);
    }
});

//! Python tracebacks on lossy UTF-8: no panic, and every problem is well formed.
#![no_main]

use crashmesh_parsers::python::{PythonLimits, parse_python_tracebacks_detailed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let limits = PythonLimits {
        frames_per_exception_max: 8,
        chain_exceptions_max: 3,
        message_lines_max: 4,
        text_bytes_max: 4_096,
        ..PythonLimits::default()
    };
    for traceback in parse_python_tracebacks_detailed(&text, &limits) {
        assert!(!traceback.chain.is_empty());
        assert!(traceback.chain.len() <= limits.chain_exceptions_max);
        assert!(traceback.text.len() <= limits.text_bytes_max);
        for exception in &traceback.chain {
            assert!(exception.frames.len() <= limits.frames_per_exception_max);
        }
        let problem = traceback.to_problem();
        assert!(problem.signature.starts_with("v1:"));
        assert!(problem.reason.len() <= 300);
    }
});

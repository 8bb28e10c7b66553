//! Kernel logs: the whole-file parser on lossy UTF-8, the live assembler fed line by line
//! (with callers, timestamp jumps and polls drawn from the input), and the raw /dev/kmsg
//! record parser. None may panic, and every problem must respect the limits.
#![no_main]

use crashmesh_parsers::kernel::{KernelLogLimits, parse_kernel_log};
use crashmesh_parsers::kmsg::{KernelLogAssembler, KmsgRecord, parse_kmsg_record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for problem in parse_kernel_log(&text) {
        assert!(problem.signature.starts_with("v1:"));
    }

    let limits = KernelLogLimits {
        lines_per_problem_max: 64,
        line_bytes_max: 512,
        header_lines_max: 16,
        open_problems_max: 3,
        quiet_period_ms: 50,
        problems_per_signature_per_window_max: 2,
        rate_limit_window_ms: 1_000,
        signatures_tracked_max: 8,
        suppression_reports_max: 8,
        output_problems_max: 16,
        ..KernelLogLimits::default()
    };
    let mut assembler = KernelLogAssembler::new(limits);
    let mut now_ms = 0u64;
    let mut problems = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let first = line.bytes().next().unwrap_or(0);
        now_ms += u64::from(first % 7) * 10;
        let record = KmsgRecord {
            caller: Some(format!("T{}", first % 5)),
            ..KmsgRecord::kernel(index as u64, now_ms * 1_000, line)
        };
        problems.extend(assembler.push(record, now_ms));
        if first % 11 == 0 {
            problems.extend(assembler.poll(now_ms));
            // After a poll, nothing is left waiting for a time that has passed.
            if let Some(deadline) = assembler.next_deadline_ms() {
                assert!(deadline > now_ms, "deadline {deadline} not after {now_ms}");
            }
        }
    }
    problems.extend(assembler.flush(now_ms + 10_000));
    for problem in &problems {
        let text = problem.text.as_deref().unwrap_or("");
        assert!(text.lines().count() <= limits.lines_per_problem_max);
        assert!(text.lines().all(|line| line.len() <= limits.line_bytes_max));
    }
    assert!(assembler.drain_suppressed().len() <= limits.suppression_reports_max);

    let _ = parse_kmsg_record(data);
});

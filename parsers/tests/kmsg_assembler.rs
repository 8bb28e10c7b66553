//! The live `/dev/kmsg` assembler: records fed one by one, quiet-period close, the
//! per-signature rate limit under a flood, hostile input, and interleaved callers.

use crashmesh_parsers::kernel::{KernelLogLimits, LogLine, parse_kernel_log, split_log_line};
use crashmesh_parsers::kmsg::{KernelLogAssembler, KmsgRecord, parse_kmsg_record};
use crashmesh_protocol::model::ProblemKind;

fn corpus(file: &str) -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/corpus/kernel/abrt-examples/"
    )
    .to_string()
        + file;
    String::from_utf8_lossy(&std::fs::read(&path).expect("corpus file"))
        .replace(":HOSTNAME:", "node1")
}

/// The kernel messages of a log file, as /dev/kmsg would have carried them.
fn records_of(text: &str) -> Vec<KmsgRecord> {
    text.lines()
        .filter_map(|line| match split_log_line(line) {
            LogLine::Kernel { message, .. } => Some(message.to_string()),
            LogLine::Other { .. } => None,
        })
        .enumerate()
        .map(|(index, message)| KmsgRecord::kernel(index as u64, 1_000_000 + index as u64, message))
        .collect()
}

fn warning_records(sequence: &mut u64, timestamp_usecs: u64) -> Vec<KmsgRecord> {
    [
        "------------[ cut here ]------------",
        "WARNING: CPU: 3 PID: 812 at drivers/net/foo/foo_main.c:1234 foo_tx_timeout+0x4e/0x60 [foo]",
        "Modules linked in: foo bar",
        "CPU: 3 PID: 812 Comm: kworker/3:2 Not tainted 6.1.0-18-amd64 #1 Debian 6.1.76-1",
        "RIP: 0010:foo_tx_timeout+0x4e/0x60 [foo]",
        "Call Trace:",
        " <TASK>",
        " dev_watchdog+0x207/0x210",
        " call_timer_fn+0x27/0x130",
        " </TASK>",
        "---[ end trace 0000000000000000 ]---",
    ]
    .iter()
    .map(|message| {
        *sequence += 1;
        KmsgRecord::kernel(*sequence, timestamp_usecs, *message)
    })
    .collect()
}

#[test]
fn records_fed_one_by_one_close_on_the_quiet_period() {
    // nmi_oops has no end marker: only the quiet period can close it.
    let text = corpus("nmi_oops.test.template");
    let mut assembler = KernelLogAssembler::new(KernelLogLimits::default());
    let mut now_ms = 10_000;
    for record in records_of(&text) {
        assert!(assembler.push(record, now_ms).is_empty());
        now_ms += 1;
    }
    assert_eq!(assembler.next_deadline_ms(), Some(now_ms - 1 + 1_000));
    assert!(assembler.poll(now_ms + 998).is_empty());
    let problems = assembler.poll(now_ms + 999);
    assert_eq!(problems.len(), 1);
    // The live result is the whole-file result.
    assert_eq!(problems, parse_kernel_log(&text));
    assert_eq!(assembler.next_deadline_ms(), None);
}

#[test]
fn end_marker_closes_at_once_and_every_corpus_case_matches_the_batch_parser() {
    let text = corpus("oops-32bit-graphics.test");
    let mut assembler = KernelLogAssembler::new(KernelLogLimits::default());
    let mut emitted = Vec::new();
    for record in records_of(&text) {
        emitted.extend(assembler.push(record, 5));
    }
    // Both reports end with `---[ end trace`, so neither waits for the quiet period.
    assert_eq!(emitted.len(), 2);
    assert_eq!(emitted, parse_kernel_log(&text));

    for file in [
        "cut_here.test",
        "oops3.test.template",
        "oops8_ppc64.test",
        "oops10_s390x.test",
        "oops-kernel-panic-hung-tasks-arm.test",
        "10_oopses.test",
        "mce1.test",
    ] {
        let text = corpus(file);
        // No rate limit here: 10_oopses repeats one warning more often than it allows.
        let mut assembler = KernelLogAssembler::new(KernelLogLimits {
            problems_per_signature_per_window_max: u32::MAX,
            ..KernelLogLimits::default()
        });
        let mut live = Vec::new();
        for record in records_of(&text) {
            live.extend(assembler.push(record, 0));
        }
        live.extend(assembler.flush(0));
        assert_eq!(live, parse_kernel_log(&text), "{file}");
    }
}

#[test]
fn a_gap_in_record_timestamps_closes_the_open_problem() {
    let mut assembler = KernelLogAssembler::new(KernelLogLimits::default());
    assert!(
        assembler
            .push(
                KmsgRecord::kernel(
                    1,
                    1_000_000,
                    "BUG: scheduling while atomic: swapper/0/0/0x00010000"
                ),
                0
            )
            .is_empty()
    );
    assert!(
        assembler
            .push(
                KmsgRecord::kernel(2, 1_000_010, "Modules linked in: foo"),
                0
            )
            .is_empty()
    );
    // Two seconds later by the kernel's clock (a replay reads both at once).
    let problems = assembler.push(
        KmsgRecord::kernel(3, 3_000_000, "usb 1-1: new high-speed USB device"),
        0,
    );
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].kind, ProblemKind::KernelOops);
    assert_eq!(
        problems[0].text.as_deref(),
        Some("BUG: scheduling while atomic: swapper/0/0/0x00010000\nModules linked in: foo")
    );
}

#[test]
fn a_flood_of_warnings_is_rate_limited_and_counted() {
    let limits = KernelLogLimits::default();
    let mut assembler = KernelLogAssembler::new(limits);
    let mut sequence = 0;
    let mut emitted = Vec::new();
    // 10,000 identical warnings within one second.
    for index in 0..10_000u64 {
        let now_ms = index / 10;
        for record in warning_records(&mut sequence, 5_000_000 + index * 100) {
            emitted.extend(assembler.push(record, now_ms));
        }
    }
    emitted.extend(assembler.poll(2_000));
    assert_eq!(
        emitted.len(),
        limits.problems_per_signature_per_window_max as usize
    );
    assert!(emitted.iter().all(|p| p.kind == ProblemKind::KernelWarning));
    assert_eq!(
        emitted[0].frames[0].function.as_deref(),
        Some("foo_tx_timeout")
    );
    assert_eq!(
        assembler.stats().problems_suppressed,
        10_000 - emitted.len() as u64
    );
    // Nothing is reported while the window is open…
    assert!(assembler.drain_suppressed().is_empty());
    assert_eq!(
        assembler.next_deadline_ms(),
        Some(limits.rate_limit_window_ms)
    );
    // …and one report with the count when it ends.
    assembler.poll(limits.rate_limit_window_ms);
    let suppressed = assembler.drain_suppressed();
    assert_eq!(suppressed.len(), 1);
    assert_eq!(suppressed[0].suppressed_count, 9_995);
    assert_eq!(suppressed[0].signature, emitted[0].signature);
    assert_eq!(suppressed[0].window_start_ms, 0);
    // A new window admits the warning again.
    let again: Vec<_> = warning_records(&mut sequence, 90_000_000)
        .into_iter()
        .flat_map(|record| assembler.push(record, 70_000))
        .collect();
    assert_eq!(again.len(), 1);
}

#[test]
fn many_signatures_keep_the_window_table_bounded() {
    let limits = KernelLogLimits {
        signatures_tracked_max: 16,
        ..KernelLogLimits::default()
    };
    let mut assembler = KernelLogAssembler::new(limits);
    let mut emitted = 0;
    for index in 0..1_000u64 {
        // A frameless problem hashes its first line with numbers replaced, so vary words.
        let message = format!(
            "BUG: unable to handle page fault for address in module{}x",
            index
        );
        let words: String =
            message.replace(char::is_numeric, "").to_string() + &"q".repeat(index as usize % 40);
        emitted += assembler
            .push(KmsgRecord::kernel(index, index * 10, words), index)
            .len();
        emitted += assembler.poll(index + 5_000).len();
    }
    assert!(emitted > 0);
    assert!(assembler.drain_suppressed().len() <= limits.suppression_reports_max);
}

fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn garbage_binary_and_endless_lines_stay_bounded() {
    let limits = KernelLogLimits {
        lines_per_problem_max: 50,
        line_bytes_max: 256,
        ..KernelLogLimits::default()
    };
    let mut assembler = KernelLogAssembler::new(limits);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut problems = Vec::new();
    let fragments = [
        "BUG: unable to handle kernel NULL pointer dereference at 0000000000000008",
        "Call Trace:",
        " [<ffffffff81000000>] ? foo+0x1/0x2",
        " <IRQ>",
        "---[ end trace",
        "Kernel panic - not syncing: Fatal exception",
        "invoked oom-killer: gfp_mask=0x0",
        "[ cut here ]",
        "\u{0}\u{1}\u{7f}",
        "Modules linked in:",
    ];
    for index in 0..20_000u64 {
        let choice = next_random(&mut state);
        let message = match choice % 4 {
            0 => fragments[(choice >> 8) as usize % fragments.len()].to_string(),
            1 => (0..(choice >> 16) % 300)
                .map(|_| char::from_u32((next_random(&mut state) % 0x800) as u32).unwrap_or('?'))
                .collect(),
            2 => " [<ffffffff81000000>] endless_recursion+0x10/0x20".to_string(),
            _ => "x".repeat(((choice >> 20) % 100_000) as usize),
        };
        let caller = format!("T{}", choice % 13);
        let record = KmsgRecord {
            caller: Some(caller),
            ..KmsgRecord::kernel(index, index * 3, message)
        };
        problems.extend(assembler.push(record, index / 4));
        if index % 1_000 == 0 {
            problems.extend(assembler.poll(index / 4));
        }
    }
    problems.extend(assembler.flush(10_000));
    assert!(!problems.is_empty());
    for problem in &problems {
        let text = problem.text.as_deref().unwrap_or("");
        assert!(
            text.lines().count() <= limits.lines_per_problem_max,
            "{}",
            text.lines().count()
        );
        assert!(text.lines().all(|line| line.len() <= limits.line_bytes_max));
        assert!(problem.reason.len() <= 300);
    }
    // Garbage in the record format itself is a typed error, never a panic.
    for length in 0..200usize {
        let bytes: Vec<u8> = (0..length).map(|_| next_random(&mut state) as u8).collect();
        let _ = parse_kmsg_record(&bytes);
    }
}

#[test]
fn an_endless_trace_is_cut_at_the_line_limit() {
    let limits = KernelLogLimits {
        lines_per_problem_max: 100,
        ..KernelLogLimits::default()
    };
    let mut assembler = KernelLogAssembler::new(limits);
    let mut problems = assembler.push(
        KmsgRecord::kernel(
            0,
            0,
            "BUG: kernel NULL pointer dereference, address: 0000000000000000",
        ),
        0,
    );
    problems.extend(assembler.push(KmsgRecord::kernel(1, 1, "Call Trace:"), 0));
    for index in 2..100_000u64 {
        problems.extend(assembler.push(KmsgRecord::kernel(index, index, " recurse+0x10/0x20"), 0));
    }
    problems.extend(assembler.flush(0));
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].text.as_deref().unwrap().lines().count(), 100);
    assert!(problems[0].analysis_error.is_some());
    assert_eq!(problems[0].frames.len(), 98);
}

#[test]
fn interleaved_callers_stay_apart_and_open_problems_are_bounded() {
    let mut assembler = KernelLogAssembler::new(KernelLogLimits::default());
    let cpu_a = [
        "BUG: kernel NULL pointer dereference, address: 0000000000000010",
        "Oops: 0000 [#1] PREEMPT SMP NOPTI",
        "CPU: 1 PID: 100 Comm: alpha Not tainted 6.6.0 #1",
        "RIP: 0010:alpha_work+0x12/0x40",
        "Call Trace:",
        " <TASK>",
        " alpha_caller+0x20/0x30",
        " </TASK>",
        "---[ end trace 0000000000000000 ]---",
    ];
    let cpu_b = [
        "WARNING: CPU: 2 PID: 200 at mm/beta.c:10 beta_check+0x1/0x2",
        "CPU: 2 PID: 200 Comm: beta Not tainted 6.6.0 #1",
        "RIP: 0010:beta_check+0x1/0x2",
        "Call Trace:",
        " <TASK>",
        " beta_caller+0x5/0x9",
        " </TASK>",
        "---[ end trace 0000000000000000 ]---",
    ];
    let mut problems = Vec::new();
    for index in 0..cpu_a.len().max(cpu_b.len()) {
        for (caller, lines) in [("T100", &cpu_a[..]), ("T200", &cpu_b[..])] {
            if let Some(line) = lines.get(index) {
                let record = KmsgRecord {
                    caller: Some(caller.to_string()),
                    ..KmsgRecord::kernel(index as u64, index as u64, *line)
                };
                problems.extend(assembler.push(record, 0));
            }
        }
    }
    assert_eq!(problems.len(), 2);
    let alpha = problems
        .iter()
        .find(|p| p.kind == ProblemKind::KernelOops)
        .unwrap();
    let beta = problems
        .iter()
        .find(|p| p.kind == ProblemKind::KernelWarning)
        .unwrap();
    assert_eq!(
        alpha
            .frames
            .iter()
            .map(|f| f.function.clone().unwrap())
            .collect::<Vec<_>>(),
        ["alpha_work", "alpha_caller"]
    );
    assert_eq!(
        beta.frames
            .iter()
            .map(|f| f.function.clone().unwrap())
            .collect::<Vec<_>>(),
        ["beta_check", "beta_caller"]
    );
    assert_eq!(alpha.process.as_deref(), Some("alpha[100]"));

    // Twenty callers each opening a problem: at most `open_problems_max` stay open.
    let limits = KernelLogLimits::default();
    let mut assembler = KernelLogAssembler::new(limits);
    let mut closed = 0;
    for caller in 0..20u64 {
        let record = KmsgRecord {
            caller: Some(format!("T{caller}")),
            ..KmsgRecord::kernel(
                caller,
                caller,
                format!("INFO: task worker{caller}:{caller} blocked for more than 120 seconds."),
            )
        };
        closed += assembler.push(record, caller).len();
    }
    assert_eq!(
        assembler.stats().problems_closed_for_room,
        20 - limits.open_problems_max as u64
    );
    closed += assembler.flush(100).len();
    assert_eq!(closed, 20);
}

#[test]
fn raw_records_and_facilities() {
    let kernel =
        parse_kmsg_record(b"4,1024,7000000,-;BUG: soft lockup - CPU#0 stuck for 22s! [spin:42]")
            .unwrap();
    assert!(kernel.is_kernel_facility());
    assert_eq!(kernel.level, 4);
    let user =
        parse_kmsg_record(b"14,1025,7000001,-;BUG: written by a user into /dev/kmsg").unwrap();
    assert_eq!(user.facility, 1);
    assert!(!user.is_kernel_facility());
    let continued = parse_kmsg_record(b"4,1026,7000002,c; more").unwrap();
    assert!(continued.continuation);
}

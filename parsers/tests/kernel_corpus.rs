//! Data-driven tests over ABRT's kernel oops examples (`tests/corpus/kernel/abrt-examples`, see its README for provenance).
//!
//! One helper, [`check`], parses `NAME.test` (or `NAME.test.template` with its host-name
//! placeholders filled in) and compares the problems with ABRT's `NAME.right`: the number
//! of problems, every line of each extracted text (whitespace-normalized) and the kernel
//! version. Where this parser's extraction differs from ABRT's on purpose, the test says
//! so and asserts our output instead.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crashmesh_parsers::kernel::{KernelLogOptions, parse_kernel_log, parse_kernel_log_with};
use crashmesh_protocol::model::{Problem, ProblemKind};

const HOSTNAME: &str = "crashmesh-test-host";
const FULL_HOSTNAME: &str = "crashmesh-test-host.example.com";

fn corpus_dir() -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/corpus/kernel/abrt-examples"
    ))
    .to_path_buf()
}

fn read(file: &str) -> String {
    let path = corpus_dir().join(file);
    let bytes = std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    String::from_utf8_lossy(&bytes)
        .replace(":FULL_HOSTNAME:", FULL_HOSTNAME)
        .replace(":HOSTNAME:", HOSTNAME)
}

/// The input of case `name`: `NAME.test`, `NAME.test.template` or `NAME` itself.
fn read_input(name: &str) -> String {
    for candidate in [
        format!("{name}.test"),
        format!("{name}.test.template"),
        format!("{name}.template"),
        name.to_string(),
    ] {
        if corpus_dir().join(&candidate).is_file() {
            return read(&candidate);
        }
    }
    panic!("no input for corpus case {name}");
}

#[derive(Debug)]
struct AbrtProblem {
    version: String,
    lines: Vec<String>,
}

/// ABRT's expectation: `abrt-dump-oops: Found oopses: N`, then per problem a blank line,
/// `Version: …` and the text.
fn read_right(name: &str) -> Vec<AbrtProblem> {
    let text = read(&format!("{name}.right"));
    if text.trim().is_empty() {
        return Vec::new();
    }
    let mut chunks = text.split("\nVersion: ");
    let header = chunks.next().unwrap_or("");
    let count: usize = header
        .lines()
        .find_map(|line| line.strip_prefix("abrt-dump-oops: Found oopses: "))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name}.right has no count line"));
    let problems: Vec<AbrtProblem> = chunks
        .map(|chunk| {
            let mut lines = chunk.lines();
            let version = lines.next().unwrap_or("").trim().to_string();
            let lines = lines
                .map(normalize)
                .filter(|line| !line.is_empty())
                .collect();
            AbrtProblem { version, lines }
        })
        .collect();
    assert_eq!(problems.len(), count, "{name}.right is self-consistent");
    problems
}

fn normalize(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn lines_of(problem: &Problem) -> Vec<String> {
    problem
        .text
        .as_deref()
        .unwrap_or("")
        .lines()
        .map(normalize)
        .filter(|line| !line.is_empty())
        .collect()
}

fn options() -> KernelLogOptions {
    KernelLogOptions {
        hostname: Some(HOSTNAME.to_string()),
        ..KernelLogOptions::default()
    }
}

fn parse_case(name: &str) -> Vec<Problem> {
    let problems = parse_kernel_log_with(&read_input(name), &options());
    for problem in &problems {
        assert!(problem.signature.starts_with("v1:"), "{name}: {problem:?}");
        assert!(!problem.reason.is_empty(), "{name}: {problem:?}");
    }
    problems
}

/// Parses case `name` and asserts that it matches ABRT's `NAME.right` exactly.
fn check(name: &str) -> Vec<Problem> {
    let ours = parse_case(name);
    let abrt = read_right(name);
    assert_eq!(
        ours.len(),
        abrt.len(),
        "{name}: problem count; ours: {:#?}",
        ours.iter().map(|p| &p.reason).collect::<Vec<_>>()
    );
    for (index, (ours, abrt)) in ours.iter().zip(&abrt).enumerate() {
        assert_eq!(
            lines_of(ours),
            abrt.lines,
            "{name}: text of problem {index}"
        );
        if !abrt.version.is_empty() {
            assert_eq!(
                ours.version.as_deref(),
                Some(abrt.version.as_str()),
                "{name}: version of problem {index}"
            );
        }
    }
    ours
}

fn function_names(problem: &Problem) -> Vec<&str> {
    problem
        .frames
        .iter()
        .map(|frame| frame.function.as_deref().unwrap_or("?"))
        .collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| item.to_string()).collect()
}

// --- Cases that match ABRT exactly -------------------------------------------------------

#[test]
fn cut_here() {
    let problems = check("cut_here");
    let warning = &problems[0];
    assert_eq!(warning.kind, ProblemKind::KernelWarning);
    assert_eq!(warning.process.as_deref(), Some("modprobe[143]"));
    assert_eq!(warning.hardware.as_deref(), Some("ProLiant BL460c G1"));
    assert_eq!(
        warning.modules,
        Some(strings(&[
            "radeon",
            "ttm",
            "drm_kms_helper",
            "drm",
            "i2c_algo_bit",
            "i2c_core",
            "dm_mod"
        ]))
    );
    assert_eq!(warning.taint_flags, Some(vec![]));
    assert_eq!(warning.frames.len(), 32);
    assert_eq!(
        warning
            .frames
            .iter()
            .filter(|frame| !frame.reliable)
            .count(),
        7
    );
    assert_eq!(warning.frames[6].module.as_deref(), Some("radeon"));
    assert_eq!(warning.frames[0].address, Some(0xffffffff81067c33));
}

#[test]
fn debug_messages_are_not_bugs() {
    let problems = check("debug_messages");
    assert_eq!(problems[0].kind, ProblemKind::KernelOops);
    assert_eq!(problems[0].process.as_deref(), Some("modprobe[4467]"));
    // Frame 0 is the faulting instruction the register dump names; then the 12 of the trace.
    assert_eq!(problems[0].frames.len(), 13);
    assert_eq!(
        problems[0].frames[0].function.as_deref(),
        Some("acpi_ns_internalize_name")
    );
    assert_eq!(
        problems[0].crash_function(),
        Some("acpi_ns_internalize_name")
    );
}

#[test]
fn mce1_fatal_machine_check_keeps_its_panic() {
    let problems = check("mce1");
    assert_eq!(problems[0].kind, ProblemKind::MachineCheck);
    assert!(problems[0].frames.is_empty());
}

#[test]
fn mce2_non_fatal_machine_check_is_one_line() {
    let problems = check("mce2");
    assert_eq!(problems[0].kind, ProblemKind::MachineCheck);
}

#[test]
fn kernel_panic_oom() {
    let problems = check("kernel_panic_oom");
    let panic = &problems[0];
    assert_eq!(panic.kind, ProblemKind::KernelPanic);
    assert_eq!(panic.process.as_deref(), Some("webservice[35943]"));
    assert_eq!(panic.frames.len(), 13);
    assert!(!panic.frames[7].reliable);
    assert!(
        panic
            .hardware
            .as_deref()
            .unwrap()
            .starts_with("VMware, Inc.")
    );
}

#[test]
fn nmi_oops_frames_carry_their_stack() {
    for name in ["nmi_oops", "nmi_oops_hash"] {
        let problems = check(name);
        let lockup = &problems[0];
        // A watchdog WARNING that says "hard LOCKUP" is a lockup.
        assert_eq!(lockup.kind, ProblemKind::SoftLockup, "{name}");
        assert_eq!(lockup.frames.len(), 25, "{name}");
        assert_eq!(lockup.frames[0].stack.as_deref(), Some("nmi"));
        assert!(!lockup.frames[0].reliable);
        assert_eq!(lockup.frames[15].stack.as_deref(), Some("nmi"));
        assert_eq!(
            lockup.frames[16].function.as_deref(),
            Some("account_idle_ticks")
        );
        assert_eq!(lockup.frames[16].stack.as_deref(), Some("task"));
    }
    let a = parse_case("nmi_oops");
    let b = parse_case("nmi_oops_hash");
    assert_eq!(a[0].signature, b[0].signature);
}

#[test]
fn oops1_old_i386_format() {
    let problems = check("oops1");
    assert_eq!(problems[0].process.as_deref(), Some("Xorg[8003]"));
    assert_eq!(
        problems[0].frames[0].function.as_deref(),
        Some("radeon_cp_init_ring_buffer")
    );
    assert_eq!(problems[0].frames[0].module.as_deref(), Some("radeon"));
    assert_eq!(problems[0].frames.len(), 9);
}

#[test]
fn oops2_lockdep_recursive_locking() {
    let problems = check("oops2");
    assert_eq!(problems[0].kind, ProblemKind::Lockdep);
    // The lock lines in the header (`at: [<…>]` and bare `func+0x…` lines) are not frames.
    assert_eq!(problems[0].frames.len(), 27);
    assert_eq!(
        problems[0].frames[0].function.as_deref(),
        Some("__lock_acquire")
    );
}

#[test]
fn oops3_three_oopses_among_other_programs() {
    let problems = check("oops3");
    assert!(problems.iter().all(|p| p.kind == ProblemKind::KernelOops));
    // The same bug three times: one signature.
    assert_eq!(problems[0].signature, problems[1].signature);
    assert_eq!(problems[1].signature, problems[2].signature);
    assert_eq!(
        problems[0].frames[0].function.as_deref(),
        Some("radeon_read_ring_rptr")
    );
}

#[test]
fn oops5_efi_message_is_not_an_oops() {
    let problems = check("oops5");
    assert_eq!(problems[0].kind, ProblemKind::KernelWarning);
}

#[test]
fn ppc64_cases() {
    let problems = check("oops8_ppc64");
    let warning = &problems[0];
    // The NIP line gives frame 0; ppc64 ELFv1 dot symbols lose their dot.
    assert_eq!(
        function_names(warning)[..3],
        [
            "eeh_dev_check_failure",
            "eeh_dev_check_failure",
            "rtas_read_config"
        ]
    );
    assert!(!warning.frames[1].reliable);
    assert_eq!(warning.frames.len(), 21);
    assert_eq!(warning.frames[5].module.as_deref(), Some("ipr"));

    let problems = check("oops9_ppc64");
    let oops = &problems[0];
    assert_eq!(oops.taint_flags, Some(strings(&["W"])));
    assert_eq!(oops.frames[1].function, None);
    assert!(!oops.frames[1].reliable);
    assert_eq!(oops.frames.len(), 8);
    assert_eq!(oops.process.as_deref(), Some("eehd[251]"));
}

#[test]
fn s390x_case() {
    let problems = check("oops10_s390x");
    let bug = &problems[0];
    assert_eq!(bug.kind, ProblemKind::KernelOops);
    // Krnl PSW gives frame 0, the parenthesized r14 guess is unreliable, and the frame
    // after "Last Breaking-Event-Address:" is not part of the trace.
    assert_eq!(
        bug.frames[0].function.as_deref(),
        Some("scsi_alloc_sgtable")
    );
    assert_eq!(bug.frames[1].function, None);
    assert!(!bug.frames[1].reliable);
    assert_eq!(bug.frames.len(), 18);
    assert_eq!(bug.frames.last().unwrap().address, Some(0x4e15e926dc));
}

#[test]
fn arm_hung_task_panic() {
    let problems = check("oops-kernel-panic-hung-tasks-arm");
    let panic = &problems[0];
    assert_eq!(panic.kind, ProblemKind::KernelPanic);
    assert_eq!(panic.taint_flags, Some(strings(&["P", "O"])));
    assert_eq!(
        function_names(panic),
        [
            "dump_backtrace_log_lvl",
            "show_stack",
            "dump_stack",
            "panic",
            "watchdog",
            "kthread",
            "ret_from_fork"
        ]
    );
    assert_eq!(panic.frames[1].offset, Some(0x24));
    assert_eq!(
        panic.hardware.as_deref(),
        Some("Marvell Armada 370/XP (Device Tree)")
    );
}

#[test]
fn thirty_two_bit_graphics_two_problems() {
    let problems = check("oops-32bit-graphics");
    assert_eq!(problems[0].kind, ProblemKind::KernelOops);
    assert_eq!(problems[1].kind, ProblemKind::KernelWarning);
    assert_eq!(problems[1].taint_flags, Some(strings(&["D"])));
    assert_eq!(
        problems[0].frames.iter().filter(|f| !f.reliable).count(),
        15
    );
}

#[test]
fn remaining_exact_cases() {
    for name in [
        "oops-module-nouveau",
        "oops-with-jiffies",
        "oops-without-addrs",
        "oops_broken_bios",
        "oops_no_reliable_frame",
        "oops_recursive_locking1",
        "oops_unsupported_hw",
    ] {
        check(name);
    }
    let problems = parse_case("oops-without-addrs");
    assert_eq!(problems[0].kind, ProblemKind::KernelPanic);
    assert_eq!(problems[0].frames.len(), 11);
    assert!(!problems[0].frames[2].reliable);
    assert_eq!(problems[0].frames[2].address, None);
    let problems = parse_case("oops_no_reliable_frame");
    assert!(
        problems[0]
            .frames
            .iter()
            .skip(1)
            .all(|frame| !frame.reliable)
    );
    let problems = parse_case("oops-with-jiffies");
    let modules = problems[0].modules.as_ref().unwrap();
    // The syslog daemon wrapped the module list inside "i2c_core".
    assert!(modules.contains(&"i2c_core".to_string()), "{modules:?}");
    assert_eq!(modules.last().map(String::as_str), Some("video"));
}

// --- Cases where this parser differs from ABRT on purpose --------------------------------

#[test]
fn oops6_user_trap_and_allocation_failure_are_two_problems() {
    // ABRT starts its one problem at the `traps: chrome[2979] trap invalid opcode` line
    // because "invalid opcode" is one of its trigger words. That line is a user-space trap
    // (a hint pointing at chrome's core, like `segfault at`), and the kernel problem is
    // the allocation failure that follows: we report both, and the second one's text is
    // ABRT's minus the two trap lines.
    let ours = parse_case("oops6");
    let abrt = read_right("oops6");
    assert_eq!(ours.len(), 2);
    assert_eq!(ours[0].kind, ProblemKind::SegfaultHint);
    assert_eq!(ours[0].process.as_deref(), Some("chrome[2979]"));
    assert_eq!(ours[0].signal, Some(4));
    assert_eq!(ours[0].frames[0].address, Some(0x55911b28dba3));
    assert_eq!(ours[0].frames[0].module.as_deref(), Some("chrome"));
    assert_eq!(
        ours[0].frames[0].offset,
        Some(0x55911b28dba3 - 0x55911728a000)
    );
    assert_eq!(lines_of(&ours[0]), abrt[0].lines[..2]);
    assert_eq!(ours[1].kind, ProblemKind::KernelWarning);
    // ABRT's recording was made from an earlier copy of the input that named kernel
    // 4.8.15-300; the input names 4.9.3-200 in its CPU line, which is the only difference.
    let abrt_lines: Vec<String> = abrt[0].lines[2..]
        .iter()
        .map(|line| line.replace("4.8.15-300.fc25", "4.9.3-200.fc25"))
        .collect();
    assert_eq!(lines_of(&ours[1]), abrt_lines);
    assert_eq!(ours[1].version.as_deref(), Some("4.9.3-200.fc25.x86_64"));
}

#[test]
fn oops7_two_alsa_bug_lines_are_two_problems() {
    // ABRT folds the second identical line into the first one's 40-line wait for a trace;
    // these are two occurrences four seconds apart, so we report both (they share one
    // signature, so the node counts them as two incidents of one problem).
    let ours = parse_case("oops7");
    let abrt = read_right("oops7");
    assert_eq!(ours.len(), 2);
    assert_eq!(lines_of(&ours[0]), abrt[0].lines);
    assert_eq!(lines_of(&ours[1]), abrt[0].lines);
    assert_eq!(ours[0].signature, ours[1].signature);
}

// --- Cases that must produce nothing ------------------------------------------------------

#[test]
fn not_oops_cases_produce_nothing() {
    assert!(read_right("not_oops1").is_empty());
    assert!(parse_case("not_oops1").is_empty());
    // not_oops2 holds a real oops, followed by ABRT's own "Reported 1 kernel oopses to
    // Abrt" marker: everything above the marker was reported already.
    assert!(read_right("not_oops2").is_empty());
    assert!(parse_case("not_oops2").is_empty());
    let without_marker_rule = KernelLogOptions {
        honor_abrt_reported_marker: false,
        ..options()
    };
    assert_eq!(
        parse_kernel_log_with(&read_input("not_oops2"), &without_marker_rule).len(),
        1
    );
    // A machine check from another host in a shared syslog file is not ours.
    assert!(parse_case("not_oops_foreign_hostname").is_empty());
    assert_eq!(
        parse_kernel_log(&read_input("not_oops_foreign_hostname")).len(),
        1
    );
    // A bare call trace without a report header is not a problem.
    assert!(parse_case("no_oops").is_empty());
}

#[test]
fn xorg_journal_crashes_are_not_kernel_problems() {
    // ABRT's .right files here come from its X server extractor (abrt-dump-xorg), not
    // the kernel one; the X server's backtrace is a user-space crash whose core the core
    // detector handles.
    for name in ["xorg_journal_crash1", "xorg_journal_crash2"] {
        assert!(parse_case(name).is_empty(), "{name}");
    }
}

// --- Inputs without an expectation: counts verified by reading them -----------------------

#[test]
fn inputs_without_expectations() {
    // Ten radeon/drm/ttm/pci warnings, each between `cut here` and `end trace`.
    let problems = parse_case("10_oopses");
    assert_eq!(problems.len(), 10);
    assert!(
        problems
            .iter()
            .all(|p| p.kind == ProblemKind::KernelWarning)
    );
    assert_eq!(problems[0].signature, problems[1].signature);
    assert_ne!(problems[0].signature, problems[9].signature);
    assert_eq!(
        problems[9].reason,
        "WARNING: CPU: 0 PID: 37 at drivers/pci/pci.c:1430 pci_disable_device+0x84/0x90()"
    );
    assert!(lines_of(&problems[9]).contains(&"disabling already-disabled device".to_string()));
    assert_eq!(problems[8].taint_flags, Some(strings(&["W"])));
    // <KERNEL_VERSION> is a placeholder, not a version.
    assert_eq!(problems[0].version, None);

    // One warning; the trailing `cut here` opens nothing.
    let problems = parse_case("1_oops");
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].frames.len(), 40);

    let problems = parse_case("koops-tainted-bg1");
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].kind, ProblemKind::KernelOops);
    assert_eq!(problems[0].taint_flags, Some(strings(&["B"])));
    assert_eq!(
        problems[0].version.as_deref(),
        Some("2.6.38.6-27.fc15.i686")
    );
    assert_eq!(problems[0].modules.as_ref().map(Vec::len), Some(41));
    // The wrapped `Code:` bytes belong to the oops, the [drm] lines after it do not.
    let text = problems[0].text.as_deref().unwrap();
    assert!(
        text.ends_with("EIP: [<c04ac80f>] __remove_from_page_cache+0x4d/0xab SS:ESP 0068:d6959e28"),
        "{text}"
    );

    let problems = parse_case("koops-tainted-g");
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].taint_flags, Some(vec![]));
    assert_eq!(problems[0].modules.as_ref().map(Vec::len), Some(67));

    let problems = parse_case("koops-tainted-insane");
    assert_eq!(problems.len(), 1);
    let flags = problems[0].taint_flags.clone().unwrap();
    assert_eq!(flags.len(), 25);
    assert!(!flags.contains(&"G".to_string()));

    // Not a template: it names its own host, so no host filter here.
    let problems = parse_kernel_log(&read_input("koops-tainted-spaces"));
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].taint_flags, Some(vec![]));

    let problems = parse_case("oops-kernel-3.x.x");
    assert_eq!(problems.len(), 1);
    assert_eq!(
        problems[0].version.as_deref(),
        Some("3.0.0-3.fc16.i686.PAE")
    );

    for (name, kind, frames) in [
        ("oops-module-ati", ProblemKind::KernelOops, 24),
        ("oops-module-intel", ProblemKind::KernelWarning, 14),
        ("oops-module-qxl", ProblemKind::KernelWarning, 0),
        ("oops1-module-nouveau", ProblemKind::SoftLockup, 0),
    ] {
        let problems = parse_case(name);
        assert_eq!(problems.len(), 1, "{name}");
        assert_eq!(problems[0].kind, kind, "{name}");
        if frames > 0 {
            assert_eq!(
                problems[0].frames.len(),
                frames,
                "{name}: {:?}",
                function_names(&problems[0])
            );
        } else {
            assert!(!problems[0].frames.is_empty(), "{name}");
        }
    }
    let problems = parse_case("oops1-module-nouveau");
    assert_eq!(problems[0].process.as_deref(), Some("X[5189]"));

    // The placeholder case names the full host name; a short-name filter still matches.
    let problems = parse_kernel_log_with(&read("oops_full_hostname.test.template"), &options());
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].kind, ProblemKind::MachineCheck);
    let coprbox = KernelLogOptions {
        hostname: Some("coprbox".to_string()),
        ..KernelLogOptions::default()
    };
    assert_eq!(
        parse_kernel_log_with(&read("oops_full_hostname.test"), &coprbox).len(),
        1
    );

    // A non-fatal machine check; the mcelog lines are another program's.
    let problems = parse_case("oops-non-fatal-mce");
    assert_eq!(problems.len(), 1);
    assert_eq!(
        lines_of(&problems[0]),
        ["mce: [Hardware Error]: Machine check events logged"]
    );
}

// --- Signatures -------------------------------------------------------------------------

#[test]
fn hash_gen_signatures() {
    let signature = |file: &str| {
        let problems = parse_kernel_log(&read(file));
        assert_eq!(problems.len(), 1, "{file}");
        problems[0].signature.clone()
    };
    let oops6 = signature("hash-gen-oops6.right");
    assert_eq!(oops6, signature("hash-gen-same-as-oops6.right"));
    assert_ne!(oops6, signature("hash-gen-short-oops.right"));
    // oops4 and oops-same-as-oops4 differ below the sixth frame only.
    assert_eq!(
        signature("oops4.right"),
        signature("oops-same-as-oops4.right")
    );
}

#[test]
fn every_corpus_file_is_checked() {
    // Adding a file to the corpus must come with a test for it.
    let covered: BTreeSet<&str> = [
        "10_oopses.test",
        "1_oops.test",
        "cut_here.right",
        "cut_here.test",
        "debug_messages.right",
        "debug_messages.test",
        "hash-gen-oops6.right",
        "hash-gen-same-as-oops6.right",
        "hash-gen-short-oops.right",
        "kernel_panic_oom.right",
        "kernel_panic_oom.test",
        "koops-tainted-bg1",
        "koops-tainted-g.template",
        "koops-tainted-insane.template",
        "koops-tainted-spaces",
        "mce1.right",
        "mce1.test",
        "mce2.right",
        "mce2.test",
        "nmi_oops.right",
        "nmi_oops.test.template",
        "nmi_oops_hash.right",
        "nmi_oops_hash.test",
        "no_oops.test",
        "not_oops1.right",
        "not_oops1.test",
        "not_oops2.right",
        "not_oops2.test.template",
        "not_oops_foreign_hostname.test",
        "oops-32bit-graphics.right",
        "oops-32bit-graphics.test",
        "oops-kernel-3.x.x",
        "oops-kernel-panic-hung-tasks-arm.right",
        "oops-kernel-panic-hung-tasks-arm.test",
        "oops-module-ati.test",
        "oops-module-intel.test",
        "oops-module-nouveau.right",
        "oops-module-nouveau.test",
        "oops-module-qxl.test",
        "oops-non-fatal-mce.test.template",
        "oops-same-as-oops4.right",
        "oops-with-jiffies.right",
        "oops-with-jiffies.test",
        "oops-without-addrs.right",
        "oops-without-addrs.test",
        "oops1-module-nouveau.test",
        "oops1.right",
        "oops1.test.template",
        "oops10_s390x.right",
        "oops10_s390x.test",
        "oops2.right",
        "oops2.test",
        "oops3.right",
        "oops3.test.template",
        "oops4.right",
        "oops5.right",
        "oops5.test",
        "oops6.right",
        "oops6.test",
        "oops7.right",
        "oops7.test.template",
        "oops8_ppc64.right",
        "oops8_ppc64.test",
        "oops9_ppc64.right",
        "oops9_ppc64.test",
        "oops_broken_bios.right",
        "oops_broken_bios.test",
        "oops_full_hostname.test",
        "oops_full_hostname.test.template",
        "oops_no_reliable_frame.right",
        "oops_no_reliable_frame.test.template",
        "oops_recursive_locking1.right",
        "oops_recursive_locking1.test",
        "oops_unsupported_hw.right",
        "oops_unsupported_hw.test",
        "xorg_journal_crash1.right",
        "xorg_journal_crash1.test",
        "xorg_journal_crash2.right",
        "xorg_journal_crash2.test",
    ]
    .into_iter()
    .collect();
    let present: BTreeSet<String> = std::fs::read_dir(corpus_dir())
        .expect("the corpus is checked out beside the project")
        .map(|entry| {
            entry
                .expect("readable entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let uncovered: Vec<&String> = present
        .iter()
        .filter(|name| !covered.contains(name.as_str()))
        .collect();
    assert!(
        uncovered.is_empty(),
        "corpus files without a test: {uncovered:?}"
    );
}

/// Regression: i386 prints the faulting address on its `EIP: 0060:[<…>]` register line
/// and the symbol on `EIP is at …`; frame 0 carries both (it had no address).
#[test]
fn i386_frame_zero_has_the_eip_address() {
    let problems = parse_case("debug_messages");
    let frame = &problems[0].frames[0];
    assert_eq!(frame.function.as_deref(), Some("acpi_ns_internalize_name"));
    assert_eq!(frame.address, Some(0xc022a7b5));
    let problems = parse_case("koops-tainted-bg1");
    assert_eq!(problems[0].frames[0].address, Some(0xc04ac80f));
}

//! Problem signatures: equal signatures mean the same problem, on one node or across the
//! cluster and the endpoint.
//!
//! A signature is `v1:` followed by 40 hex digits: the first 20 bytes of a blake3 hash of
//! the scheme version, the problem kind and a list of normalized parts (mostly frames).
//! The scheme is versioned: a change to any rule below is a new version, because old and
//! new signatures of one problem would otherwise differ silently.
//!
//! # Native crashes (version 1)
//! From the crashing thread, top first:
//! 1. Leading frames of the crash machinery are dropped: `raise`, `abort`,
//!    `__pthread_kill_implementation`, `__assert_fail`, `__stack_chk_fail`, the signal
//!    trampoline `__restore_rt`, Rust's `panic`/`begin_panic` frames, … (see
//!    [`NATIVE_MACHINERY`]). `__GI_raise` → `raise`, so it is dropped too.
//! 2. Names are normalized ([`normalize_native_function`]): `__GI_` and `__libc_` prefixes
//!    and leading underscores go (`__GI___libc_write` → `write`), CPU-variant suffixes go
//!    (`__memmove_avx_unaligned_erms` → `memmove`, `__strlen_sse2` → `strlen`), symbol
//!    versions (`@@GLIBC_2.2.5`) and Rust hashes (`::h0123…`) go.
//! 3. A frame without a function name becomes `<build-id>+0x<offset in module>`, or
//!    `<module file name>+0x<offset>` without a build-id.
//! 4. Recursion collapses: consecutive equal parts count once.
//! 5. The first [`NATIVE_FRAMES_MAX`] parts are hashed, with the signal number.
//!
//! Example: `raise ← abort ← __assert_fail ← parse_header ← main` hashes
//! `parse_header`, `main` and signal 6.
//!
//! # Kernel problems (version 1)
//! Reliable frames only (a trace whose frames are all `?` uses them all), offsets and
//! module names dropped, compiler suffixes dropped (`.isra.0`, `.constprop.3`, `.part.1`,
//! `.cold`), leading reporting machinery dropped (`dump_stack`, `__warn`, `report_bug`,
//! `exc_page_fault`, …; see [`KERNEL_MACHINERY`]), recursion collapsed, first
//! [`KERNEL_FRAMES_MAX`] hashed. A report with no frames at all hashes its first line with
//! every number and address replaced by `N` (so two machine checks of one bank agree).
//!
//! # Python (version 1)
//! The exception type and the innermost [`PYTHON_FRAMES_MAX`] frames as
//! `<file name>:<function>`; line numbers are left out so that a patched file does not
//! make a new problem.

use crate::model::{Frame, ProblemKind};

/// Bumped whenever a rule in this module changes.
pub const SIGNATURE_SCHEME_VERSION: u32 = 1;
/// How many normalized native frames go into a signature.
pub const NATIVE_FRAMES_MAX: usize = 5;
/// How many normalized kernel frames go into a signature.
pub const KERNEL_FRAMES_MAX: usize = 6;
/// How many innermost Python frames go into a signature.
pub const PYTHON_FRAMES_MAX: usize = 5;

/// The problem id for a signature: 16 hex digits of a hash of it, the same on the node and
/// at the endpoint. A problem without a signature is its own problem, keyed by its report
/// id.
pub fn problem_id_for(signature: &str, report_id: &str) -> String {
    let mut hasher = blake3::Hasher::new();
    if signature.is_empty() {
        hasher.update(b"crashmesh problem id v1, no signature\0");
        hasher.update(report_id.as_bytes());
    } else {
        hasher.update(b"crashmesh problem id v1\0");
        hasher.update(signature.as_bytes());
    }
    hasher.finalize().to_hex()[..16].to_string()
}

/// A problem's signature: `v1:` and 40 hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Signature(pub String);

impl std::fmt::Display for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Frames at the top of a native crash that say how the process died, not where.
pub const NATIVE_MACHINERY: &[&str] = &[
    "raise",
    "abort",
    "gsignal",
    "pthread_kill",
    "pthread_kill_implementation",
    "pthread_kill_internal",
    "assert_fail",
    "assert_fail_base",
    "assert_perror_fail",
    "message",
    "fatal",
    "fortify_fail",
    "chk_fail",
    "stack_chk_fail",
    "malloc_printerr",
    "restore_rt",
    "kernel_rt_sigreturn",
    "rust_panic",
    "rust_start_panic",
    "std::sys::pal::unix::abort_internal",
    "std::process::abort",
    "std::panicking::begin_panic",
    "std::panicking::begin_panic_handler",
    "std::panicking::rust_panic_with_hook",
    "std::panicking::default_hook",
    "core::panicking::panic",
    "core::panicking::panic_fmt",
    "core::panicking::panic_bounds_check",
    "core::option::unwrap_failed",
    "core::result::unwrap_failed",
    "std::sys::backtrace::rust_end_short_backtrace",
    "std::sys::backtrace::__rust_end_short_backtrace",
    "std::sys_common::backtrace::__rust_end_short_backtrace",
];

/// Frames at the top of a kernel trace that belong to reporting the problem.
pub const KERNEL_MACHINERY: &[&str] = &[
    "dump_stack",
    "dump_stack_lvl",
    "show_stack",
    "show_trace_log_lvl",
    "__warn",
    "warn_slowpath_common",
    "warn_slowpath_fmt",
    "warn_slowpath_null",
    "report_bug",
    "handle_bug",
    "exc_invalid_op",
    "asm_exc_invalid_op",
    "do_invalid_op",
    "do_error_trap",
    "do_trap",
    "invalid_op",
    "panic",
    "oops_end",
    "die",
    "__die",
    "no_context",
    "page_fault_oops",
    "kernelmode_fixup_or_oops",
    "__bad_area_nosemaphore",
    "bad_area_nosemaphore",
    "bad_area",
    "do_user_addr_fault",
    "exc_page_fault",
    "asm_exc_page_fault",
    "do_page_fault",
    "page_fault",
    "exc_general_protection",
    "asm_exc_general_protection",
    "do_general_protection",
    "general_protection",
    "print_report",
    "kasan_report",
    "lockdep_print_held_locks",
    "print_deadlock_bug",
    "print_usage_bug",
    "dump_header",
    "oom_kill_process",
    "out_of_memory",
];

const CPU_VARIANT_TOKENS: &[&str] = &[
    "avx",
    "avx2",
    "avx512",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "evex",
    "evex512",
    "sse",
    "sse2",
    "sse3",
    "ssse3",
    "sse4",
    "sse41",
    "sse42",
    "unaligned",
    "aligned",
    "erms",
    "rtm",
    "vzeroupper",
    "ifunc",
    "generic",
    "movbe",
    "bmi2",
    "lzcnt",
    "fma",
    "fma4",
    "nocacheline",
    "back",
    "rep",
    "power7",
    "power8",
    "power9",
    "power10",
    "z13",
    "z15",
    "zarch",
    "vx",
    "asimd",
    "sve",
    "neon",
    "noneon",
    "kunpeng",
    "thunderx",
    "thunderx2",
    "falkor",
    "mops",
    "1",
    "2",
];

/// Normalize one native function name for signatures (see the module docs).
pub fn normalize_native_function(name: &str) -> String {
    let mut name = name.trim();
    if let Some(at) = name.find('@') {
        name = &name[..at];
    }
    // Rust legacy mangling leaves `::h<16 hex>` on demangled names.
    if let Some(position) = name.rfind("::h") {
        let hash = &name[position + 3..];
        if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            name = &name[..position];
        }
    }
    let mut name = name.to_string();
    loop {
        let before = name.len();
        for prefix in ["__GI_", "__GL_", "__libc_", "__"] {
            if let Some(rest) = name.strip_prefix(prefix)
                && !rest.is_empty()
            {
                name = rest.to_string();
            }
        }
        if name.len() == before {
            break;
        }
    }
    let name = name.trim_start_matches('_').to_string();
    // CPU-variant suffixes only apply to plain C identifiers.
    if name.contains("::") || name.contains('(') {
        return name;
    }
    let mut tokens: Vec<&str> = name.split('_').collect();
    while tokens.len() > 1 && CPU_VARIANT_TOKENS.contains(tokens.last().expect("len > 1")) {
        tokens.pop();
    }
    tokens.join("_")
}

/// Normalize one kernel function name for signatures: compiler suffixes go.
pub fn normalize_kernel_function(name: &str) -> String {
    let mut name = name.trim();
    // `foo.isra.0`, `foo.constprop.3`, `foo.part.1`, `foo.cold`, `foo.llvm.123`.
    if let Some(dot) = name.find('.') {
        name = &name[..dot];
    }
    name.to_string()
}

fn collapse_recursion(parts: Vec<String>) -> Vec<String> {
    let mut collapsed: Vec<String> = Vec::with_capacity(parts.len());
    for part in parts {
        if collapsed.last() != Some(&part) {
            collapsed.push(part);
        }
    }
    collapsed
}

fn native_part(frame: &Frame) -> Option<String> {
    if let Some(function) = &frame.function {
        return Some(normalize_native_function(function));
    }
    let offset = frame.offset?;
    if let Some(build_id) = &frame.build_id {
        return Some(format!("{build_id}+{offset:#x}"));
    }
    let module = frame.module.as_deref()?;
    let file_name = module.rsplit('/').next().unwrap_or(module);
    Some(format!("{file_name}+{offset:#x}"))
}

/// The signature of a native crash from its crashing thread's frames (top first).
pub fn native_signature(frames: &[Frame], signal: Option<i32>) -> Signature {
    let parts: Vec<String> = frames.iter().filter_map(native_part).collect();
    let first_kept = parts
        .iter()
        .position(|part| !NATIVE_MACHINERY.contains(&part.as_str()))
        .unwrap_or(parts.len());
    let mut parts = collapse_recursion(parts[first_kept..].to_vec());
    parts.truncate(NATIVE_FRAMES_MAX);
    if parts.is_empty() {
        parts.push("<no frames>".to_string());
    }
    parts.push(format!("signal {}", signal.unwrap_or(0)));
    hash_parts(ProblemKind::Core, &parts)
}

/// The signature of a kernel problem from its trace (top first) and its first line.
pub fn kernel_signature(kind: ProblemKind, frames: &[Frame], first_line: &str) -> Signature {
    let any_reliable = frames.iter().any(|frame| frame.reliable);
    let parts: Vec<String> = frames
        .iter()
        .filter(|frame| frame.reliable || !any_reliable)
        .filter_map(|frame| frame.function.as_deref())
        .map(normalize_kernel_function)
        .collect();
    let first_kept = parts
        .iter()
        .position(|part| !KERNEL_MACHINERY.contains(&part.as_str()))
        .unwrap_or(parts.len());
    let mut parts = collapse_recursion(parts[first_kept..].to_vec());
    parts.truncate(KERNEL_FRAMES_MAX);
    if parts.is_empty() {
        parts.push(normalize_text_line(first_line));
    }
    hash_parts(kind, &parts)
}

/// The signature of an uncaught Python exception. `frames` are top first (innermost).
pub fn python_signature(exception_type: &str, frames: &[Frame]) -> Signature {
    let mut parts = vec![exception_type.trim().to_string()];
    parts.extend(frames.iter().take(PYTHON_FRAMES_MAX).map(|frame| {
        let file = frame.file.as_deref().unwrap_or("?");
        let file_name = file.rsplit('/').next().unwrap_or(file);
        format!("{file_name}:{}", frame.function.as_deref().unwrap_or("?"))
    }));
    hash_parts(ProblemKind::Python, &parts)
}

/// A signature from free-form parts, for kinds with their own rules (Java, VM guests).
pub fn signature_from_parts(kind: ProblemKind, parts: &[String]) -> Signature {
    hash_parts(kind, parts)
}

/// A line with every number, hex address and run of spaces replaced, for problems that
/// have no frames.
pub fn normalize_text_line(line: &str) -> String {
    let mut normalized = String::with_capacity(line.len());
    let mut previous_was_number = false;
    for word in line.split_whitespace() {
        let is_number = word
            .trim_matches(|c: char| !c.is_ascii_alphanumeric())
            .trim_start_matches("0x")
            .chars()
            .all(|c| c.is_ascii_hexdigit())
            && word.chars().any(|c| c.is_ascii_digit());
        if is_number {
            if !previous_was_number {
                normalized.push_str(" N");
            }
        } else {
            normalized.push(' ');
            normalized.push_str(word);
        }
        previous_was_number = is_number;
    }
    normalized.trim().to_string()
}

fn hash_parts(kind: ProblemKind, parts: &[String]) -> Signature {
    let mut hasher = blake3::Hasher::new();
    hasher.update(format!("crashmesh-signature-v{SIGNATURE_SCHEME_VERSION}\0{kind}\0").as_bytes());
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update(b"\n");
    }
    let hash = hasher.finalize();
    let hex: String = hash.as_bytes()[..20]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Signature(format!("v{SIGNATURE_SCHEME_VERSION}:{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(names: &[&str]) -> Vec<Frame> {
        names
            .iter()
            .map(|name| Frame {
                function: Some(name.to_string()),
                reliable: true,
                ..Frame::default()
            })
            .collect()
    }

    #[test]
    fn a_problem_id_is_16_hex_digits_of_its_signature_or_of_its_report_without_one() {
        let id = problem_id_for("v1:core:leaf", "r1");
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            problem_id_for("v1:core:leaf", "r2"),
            id,
            "one problem per signature"
        );
        assert_ne!(problem_id_for("v1:core:other", "r1"), id);
        assert_ne!(problem_id_for("", "r1"), problem_id_for("", "r2"));
        assert_ne!(problem_id_for("", "v1:core:leaf"), id);
    }

    #[test]
    fn native_names_normalize() {
        for (raw, expected) in [
            ("__GI_raise", "raise"),
            ("__GI___libc_write", "write"),
            ("__memmove_avx_unaligned_erms", "memmove"),
            ("__memcpy_avx_unaligned", "memcpy"),
            ("__strlen_sse2", "strlen"),
            ("__strlen_avx2", "strlen"),
            ("__strcmp_sse4_2", "strcmp"),
            ("memcpy@@GLIBC_2.14", "memcpy"),
            (
                "__pthread_kill_implementation",
                "pthread_kill_implementation",
            ),
            ("parse_header", "parse_header"),
            (
                "core::ptr::drop_in_place::h0123456789abcdef",
                "core::ptr::drop_in_place",
            ),
            (
                "std::vector<int>::at(unsigned long)",
                "std::vector<int>::at(unsigned long)",
            ),
        ] {
            assert_eq!(normalize_native_function(raw), expected, "{raw}");
        }
    }

    #[test]
    fn abort_machinery_is_dropped_and_recursion_collapsed() {
        let with_machinery = named(&[
            "__pthread_kill_implementation",
            "__GI_raise",
            "__GI_abort",
            "__assert_fail_base",
            "__assert_fail",
            "walk",
            "walk",
            "walk",
            "main",
        ]);
        let plain = named(&["walk", "main"]);
        assert_eq!(
            native_signature(&with_machinery, Some(6)),
            native_signature(&plain, Some(6))
        );
        assert_ne!(
            native_signature(&plain, Some(6)),
            native_signature(&plain, Some(11))
        );
        assert_ne!(
            native_signature(&plain, Some(6)),
            native_signature(&named(&["main"]), Some(6))
        );
    }

    #[test]
    fn frames_without_names_use_build_id_and_offset() {
        let frame = |offset| Frame {
            address: Some(0x5555_0000_0000 + offset),
            offset: Some(offset),
            build_id: Some("abcd".into()),
            module: Some("/usr/bin/sleep".into()),
            ..Frame::default()
        };
        // The same offsets in the same build give one signature, whatever the load address.
        let mut moved = frame(0x10);
        moved.address = Some(0x7777_0000_0010);
        assert_eq!(
            native_signature(&[frame(0x10)], Some(11)),
            native_signature(&[moved], Some(11))
        );
        assert_ne!(
            native_signature(&[frame(0x10)], Some(11)),
            native_signature(&[frame(0x20)], Some(11))
        );
    }

    #[test]
    fn kernel_signature_ignores_unreliable_frames_offsets_and_suffixes() {
        let mut frames = named(&["dump_stack", "__warn", "ext4_write.isra.0", "vfs_write"]);
        frames.insert(
            2,
            Frame {
                function: Some("noise".into()),
                reliable: false,
                ..Frame::default()
            },
        );
        frames[3].offset = Some(0x10);
        let clean = named(&["ext4_write", "vfs_write"]);
        assert_eq!(
            kernel_signature(ProblemKind::KernelWarning, &frames, "a"),
            kernel_signature(ProblemKind::KernelWarning, &clean, "b")
        );
        assert_ne!(
            kernel_signature(ProblemKind::KernelWarning, &clean, "a"),
            kernel_signature(ProblemKind::KernelOops, &clean, "a")
        );
    }

    #[test]
    fn frameless_kernel_problems_hash_their_first_line_without_numbers() {
        let a = kernel_signature(
            ProblemKind::MachineCheck,
            &[],
            "mce: [Hardware Error]: CPU 1: Machine Check: 0 Bank 4: be00000000800400",
        );
        let b = kernel_signature(
            ProblemKind::MachineCheck,
            &[],
            "mce: [Hardware Error]: CPU 3: Machine Check: 0 Bank 4: be00000000800400",
        );
        assert_eq!(a, b);
        assert!(a.0.starts_with("v1:") && a.0.len() == 43);
    }

    #[test]
    fn python_signature_ignores_line_numbers_and_directories() {
        let frame = |file: &str, line| Frame {
            function: Some("handler".into()),
            file: Some(file.into()),
            line: Some(line),
            ..Frame::default()
        };
        assert_eq!(
            python_signature("KeyError", &[frame("/opt/a/app.py", 10)]),
            python_signature("KeyError", &[frame("/srv/b/app.py", 12)])
        );
        assert_ne!(
            python_signature("KeyError", &[frame("/opt/a/app.py", 10)]),
            python_signature("ValueError", &[frame("/opt/a/app.py", 10)])
        );
    }
}

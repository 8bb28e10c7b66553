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
//! # Native crashes (version 2)
//! What every node that ran the same build has, whatever debug packages it installed: a
//! signature no `-dbg`/`-dbgsym` package, separate debug file or `strip` can change.
//! Each frame of the crashing thread is a [`StableFrame`] (the core analysis reads them
//! from the module files, see `crashmesh_coredump::stable`):
//! 1. Its module is its build-id (its file name without one).
//! 2. Its function is the name the module's dynamic symbol table gives the function's
//!    start, when there is one (`abort`, `strlen`, `_ZSt9terminatev`), normalized as in
//!    version 1; else `<module>+<start>`, the function's start from the module's own
//!    unwind table; else `<module>@<address>`. Names from `.symtab`, DWARF or separate
//!    debug files never enter the hash.
//! 3. Leading machinery is dropped: frames are read from the top while they are
//!    machinery by name ([`is_native_machinery`]: version 1's list, C++'s terminate and
//!    throw path, Rust's panic path as today's toolchains name it), or unnamed frames of
//!    a library (glibc's `__pthread_kill_implementation` has no exported name); every
//!    frame up to the last machinery frame of that run goes. In the executable, its own
//!    `.symtab` also names machinery (Rust's standard library is linked in): a stripped
//!    Rust program keeps its panic frames, an unstripped one does not.
//! 4. Recursion collapses; the first [`NATIVE_FRAMES_MAX`] parts are hashed with the
//!    signal, under version 2 (`v2:` and 40 hex digits).
//!
//! Example: `__pthread_kill_implementation ← raise ← abort ← check_header ← main` of
//! `/usr/bin/tool` (build-id `ab12…`) hashes `ab12…+0x1180`, `ab12…+0x1040` and signal 6:
//! the same with or without libc6-dbg, and for a stripped copy of the tool.
//!
//! A node's store and the endpoint find the problem a version 1 signature made for the
//! same crash ([`native_signature`] of the same frames) and keep counting there.
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

/// Bumped whenever a rule in this module changes (kernel, Python and the other kinds).
pub const SIGNATURE_SCHEME_VERSION: u32 = 1;
/// The native crash scheme ([`native_signature_v2`]).
pub const NATIVE_SIGNATURE_SCHEME_VERSION: u32 = 2;
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

/// How every copy of a build names a function (see "Native crashes (version 2)").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StableFunction {
    /// The dynamic symbol table's name for the function's start, raw (mangled).
    Exported(String),
    /// The function's start from the module's unwind table, a stated address.
    Start(u64),
    /// Neither: the frame's own stated address.
    Address(u64),
}

/// One frame of the crashing thread as scheme 2 reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StableFrame {
    /// The module's build-id (hex), or its file name without one; `None` outside any
    /// module (such a frame is not hashed).
    pub module: Option<String>,
    pub function: StableFunction,
    /// True for a frame in the crashed executable.
    pub in_executable: bool,
    /// The name machinery is recognized by, demangled: the exported name, or in the
    /// executable its own `.symtab`'s.
    pub machinery_name: Option<String>,
}

/// Machinery named as today's toolchains name it, beyond version 1's list: C++'s
/// terminate and throw path, Rust's panic path (generics, closures and parameters are
/// cut before comparing).
const NATIVE_MACHINERY_V2: &[&str] = &[
    "std::terminate",
    "__cxxabiv1::__terminate",
    "__gnu_cxx::__verbose_terminate_handler",
    "__cxa_throw",
    "__cxa_rethrow",
    "__cxa_call_terminate",
    "__cxa_call_unexpected",
    "__cxa_pure_virtual",
    "__cxa_deleted_virtual",
    "std::rt::__rust_abort",
    "__rustc::__rust_abort",
    "panic_abort::__rust_start_panic",
    "__rustc::__rust_start_panic",
    "std::panicking::rust_panic",
    "__rustc::rust_panic",
    "std::panicking::panic_with_hook",
    "std::panicking::panic_handler",
    "__rustc::rust_begin_unwind",
    "rust_begin_unwind",
    "std::panicking::begin_panic_handler",
    "std::panicking::rust_panic_with_hook",
    "std::panicking::begin_panic",
    "std::panicking::default_hook",
    "std::sys::backtrace::__rust_end_short_backtrace",
    "core::panicking::panic",
    "core::panicking::panic_fmt",
    "core::panicking::panic_nounwind",
    "core::panicking::panic_nounwind_fmt",
    "core::panicking::panic_explicit",
    "core::panicking::panic_bounds_check",
    "core::panicking::panic_misaligned_pointer_dereference",
    "core::panicking::panic_null_pointer_dereference",
    "core::panicking::assert_failed",
    "core::panicking::assert_failed_inner",
    "core::panicking::panic_const::panic_const_add_overflow",
    "core::panicking::panic_const::panic_const_sub_overflow",
    "core::panicking::panic_const::panic_const_mul_overflow",
    "core::panicking::panic_const::panic_const_div_by_zero",
    "core::panicking::panic_const::panic_const_rem_by_zero",
    "core::option::unwrap_failed",
    "core::option::expect_failed",
    "core::result::unwrap_failed",
    "core::slice::index::slice_start_index_len_fail",
    "core::slice::index::slice_end_index_len_fail",
    "core::slice::index::slice_index_order_fail",
    "core::str::slice_error_fail",
    "std::process::abort",
    "std::sys::pal::unix::abort_internal",
    "alloc::alloc::handle_alloc_error",
    "std::alloc::rust_oom",
    "__rustc::__rg_oom",
];

/// A demangled name with what must not matter cut: parameters (`(int)`), generic
/// arguments (`<…>`, `::<…>`), closure suffixes (`::{closure#0}`, `::{{closure}}`) and
/// Rust hashes.
fn machinery_key(name: &str) -> String {
    let mut key = String::with_capacity(name.len());
    let mut depth = 0usize;
    for character in name.chars() {
        match character {
            '<' | '(' => depth += 1,
            '>' | ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => key.push(character),
            _ => {}
        }
    }
    let mut key = key.replace("::::", "::");
    while let Some(cut) = key.rfind("::{").filter(|&at| key[at..].ends_with('}')) {
        key.truncate(cut);
    }
    key.trim_end_matches("::").trim().to_string()
}

/// Whether a (demangled) name is crash machinery: how the process died, not where.
pub fn is_native_machinery(name: &str) -> bool {
    let key = machinery_key(name);
    NATIVE_MACHINERY_V2.contains(&key.as_str())
        || NATIVE_MACHINERY.contains(&normalize_native_function(&key).as_str())
}

fn stable_part(frame: &StableFrame) -> Option<String> {
    let module = frame.module.as_deref()?;
    Some(match &frame.function {
        StableFunction::Exported(name) => normalize_native_function(name),
        StableFunction::Start(start) => format!("{module}+{start:#x}"),
        StableFunction::Address(address) => format!("{module}@{address:#x}"),
    })
}

/// The signature of a native crash under scheme 2, from its crashing thread's stable
/// frames (top first).
pub fn native_signature_v2(frames: &[StableFrame], signal: Option<i32>) -> Signature {
    let mut last_machinery = None;
    for (index, frame) in frames.iter().enumerate() {
        match &frame.machinery_name {
            Some(name) if is_native_machinery(name) => last_machinery = Some(index),
            Some(_) => break,
            None if !frame.in_executable && frame.module.is_some() => {}
            None => break,
        }
    }
    let first_kept = last_machinery.map_or(0, |index| index + 1);
    let parts: Vec<String> = frames[first_kept..]
        .iter()
        .filter_map(stable_part)
        .collect();
    let mut parts = collapse_recursion(parts);
    parts.truncate(NATIVE_FRAMES_MAX);
    if parts.is_empty() {
        parts.push("<no frames>".to_string());
    }
    parts.push(format!("signal {}", signal.unwrap_or(0)));
    hash_parts_version(NATIVE_SIGNATURE_SCHEME_VERSION, ProblemKind::Core, &parts)
}

/// The version 1 signature the same crash had, for a version 2 native signature: what a
/// store or the endpoint looks up to keep counting a problem recorded before scheme 2.
pub fn previous_signature(problem: &crate::model::Problem) -> Option<Signature> {
    (problem.kind == ProblemKind::Core
        && problem
            .signature
            .starts_with(&format!("v{NATIVE_SIGNATURE_SCHEME_VERSION}:")))
    .then(|| native_signature(&problem.frames, problem.signal))
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
    hash_parts_version(SIGNATURE_SCHEME_VERSION, kind, parts)
}

fn hash_parts_version(version: u32, kind: ProblemKind, parts: &[String]) -> Signature {
    let mut hasher = blake3::Hasher::new();
    hasher.update(format!("crashmesh-signature-v{version}\0{kind}\0").as_bytes());
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update(b"\n");
    }
    let hash = hasher.finalize();
    let hex: String = hash.as_bytes()[..20]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Signature(format!("v{version}:{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stable(
        module: &str,
        function: StableFunction,
        in_executable: bool,
        name: Option<&str>,
    ) -> StableFrame {
        StableFrame {
            module: Some(module.to_string()),
            function,
            in_executable,
            machinery_name: name.map(str::to_string),
        }
    }

    #[test]
    fn machinery_is_recognized_as_todays_toolchains_name_it() {
        for name in [
            "abort",
            "raise",
            "__GI_raise",
            "std::terminate()",
            "__gnu_cxx::__verbose_terminate_handler()",
            "__cxa_throw",
            "std::rt::__rust_abort",
            "__rustc::__rust_abort",
            "std::panicking::panic_handler::{closure#0}",
            "std::sys::backtrace::__rust_end_short_backtrace::<std::panicking::panic_handler::{closure#0}, !>",
            "std::sys::backtrace::__rust_end_short_backtrace<std::panicking::panic_handler::{closure_env#0}, !>",
            "core::panicking::panic_bounds_check",
            "core::result::unwrap_failed",
        ] {
            assert!(is_native_machinery(name), "{name}");
        }
        for name in [
            "main",
            "p::parse::{closure#0}",
            "strlen",
            "std::vector<int>::at(unsigned long)",
        ] {
            assert!(!is_native_machinery(name), "{name}");
        }
    }

    #[test]
    fn scheme_2_drops_the_machinery_run_and_ignores_every_name_but_exported_ones() {
        let libc = "11aa";
        let tool = "22bb";
        // With libc's debug file, the top frames have names; without, they have none: the
        // stable frames are the same either way, since only exported names count.
        let frames = vec![
            stable(libc, StableFunction::Start(0x8aec0), false, None),
            stable(libc, StableFunction::Start(0x8af30), false, None),
            stable(
                libc,
                StableFunction::Exported("raise".into()),
                false,
                Some("raise"),
            ),
            stable(
                libc,
                StableFunction::Exported("abort".into()),
                false,
                Some("abort"),
            ),
            stable(tool, StableFunction::Start(0x1180), true, None),
            stable(tool, StableFunction::Start(0x1040), true, None),
        ];
        let signature = native_signature_v2(&frames, Some(6));
        assert!(signature.0.starts_with("v2:") && signature.0.len() == 43);
        let kept = vec![frames[4].clone(), frames[5].clone()];
        assert_eq!(native_signature_v2(&kept, Some(6)), signature);
        // An unstripped copy names its own frames in .symtab: not machinery, so nothing
        // changes.
        let mut unstripped = frames.clone();
        unstripped[4].machinery_name = Some("check_header".into());
        unstripped[5].machinery_name = Some("main".into());
        assert_eq!(native_signature_v2(&unstripped, Some(6)), signature);
        // Another signal, or another function, is another problem.
        assert_ne!(native_signature_v2(&frames, Some(11)), signature);
        let mut elsewhere = frames.clone();
        elsewhere[4].function = StableFunction::Start(0x1200);
        assert_ne!(native_signature_v2(&elsewhere, Some(6)), signature);
    }

    #[test]
    fn a_rust_panic_drops_the_panic_path_named_in_the_executable() {
        let libc = "11aa";
        let tool = "33cc";
        let exe = |start, name: &str| stable(tool, StableFunction::Start(start), true, Some(name));
        let panic_path = vec![
            stable(libc, StableFunction::Start(0x8aec0), false, None),
            stable(
                libc,
                StableFunction::Exported("abort".into()),
                false,
                Some("abort"),
            ),
            exe(0x100, "std::sys::pal::unix::abort_internal"),
            exe(0x200, "std::process::abort"),
            exe(0x300, "__rustc::__rust_abort"),
            exe(0x400, "panic_abort::__rust_start_panic"),
            exe(0x500, "__rustc::rust_panic"),
            exe(0x600, "std::panicking::panic_with_hook"),
            exe(0x700, "std::panicking::panic_handler::{closure#0}"),
            exe(
                0x800,
                "std::sys::backtrace::__rust_end_short_backtrace<std::panicking::panic_handler::{closure_env#0}, !>",
            ),
            exe(0x900, "__rustc::rust_begin_unwind"),
            exe(0xa00, "core::panicking::panic_fmt"),
            exe(0xb00, "core::panicking::panic_bounds_check"),
        ];
        let mut one = panic_path.clone();
        one.extend([exe(0x1000, "p::parse::{closure#0}"), exe(0x1100, "p::main")]);
        let mut other = panic_path.clone();
        other.extend([exe(0x2000, "p::load"), exe(0x1100, "p::main")]);
        assert_ne!(
            native_signature_v2(&one, Some(6)),
            native_signature_v2(&other, Some(6)),
            "two panics in one program are two problems"
        );
    }

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

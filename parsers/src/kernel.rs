//! Kernel log problems: oopses, `BUG:`s, warnings, panics, soft and hard lockups, hung
//! tasks, OOM kills, machine checks, lockdep reports, and user-space `segfault at` /
//! `traps:` lines (hints that point at a core).
//!
//! # How a problem is found
//! Each log line first loses its transport prefixes ([`split_log_line`]: syslog and journal
//! prefixes, `<N>` levels, dmesg `[  123.456789]` timestamps, `[T123]` caller ids). The
//! message then goes through one `ProblemExtractor`, a small state machine shared by the
//! whole-file parser ([`parse_kernel_log`]) and the live `/dev/kmsg` assembler
//! ([`crate::kmsg::KernelLogAssembler`]):
//! 1. A *trigger* line opens a problem (`BUG:`, `WARNING: at`, `Kernel panic - not
//!    syncing`, `blocked for more than`, `Out of memory: Killed process`, `mce: [Hardware
//!    Error]`, …; see `classify_trigger`). Up to four lines after a `[ cut here ]` marker
//!    are kept as its preamble (newer kernels print a warning's message before the
//!    `WARNING:` line).
//! 2. *Header* lines are kept until the trace starts (`Call Trace:`, `Backtrace:` or a
//!    bracketed frame line). A trigger that only restates the open problem (`Oops: 0000
//!    [#1]` after `BUG: unable to handle …`) stays in it; any other trigger closes it.
//! 3. *Trace* lines are kept while they look like a trace: frames of x86, ARM, ppc64 and
//!    s390x, `<IRQ>`/`<NMI>` markers, register and code dumps, module lists. The first
//!    other line closes the problem and is not part of it.
//! 4. `---[ end trace`, `---[ end Kernel panic`, `[ cut here ]` and `Linux version` close
//!    the open problem and are never part of one.
//!
//! Problems that never carry a trace (segfault hints, machine checks, `Killed process`
//! lines) close at their first line that is not one of their continuation lines.
//! A problem still waiting for its trace when the input ends (or a quiet period passes, or
//! [`KernelLogLimits::header_lines_max`] lines go by) keeps only its trigger and the report
//! lines that directly follow it.
//!
//! # Invariants
//! - At most one problem is open per extractor, and it never holds more than
//!   [`KernelLogLimits::lines_per_problem_max`] lines of at most
//!   [`KernelLogLimits::line_bytes_max`] bytes each: a problem that reaches the limit is
//!   closed and marked truncated in `analysis_error`.
//! - Every frame a trace shows becomes a [`Frame`], unreliable (`?`) ones included and
//!   marked; the signature comes from [`kernel_signature`] alone.
//! - A `Kernel panic - not syncing: Fatal exception` (or a lockup or hung-task panic) that
//!   follows a problem within a few lines is that problem's consequence, not a new
//!   problem: reporting it would give every fatal oops in the cluster one shared signature.

use std::sync::LazyLock;

use crashmesh_protocol::model::{Frame, FrameSource, Problem, ProblemKind};
use crashmesh_protocol::signature::kernel_signature;
use regex::Regex;

use crate::text::{parse_hex, truncate_to_bytes};

/// Limits that bound what one kernel log parser or assembler holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLogLimits {
    /// Lines kept in one problem; a problem that reaches it is closed as truncated.
    pub lines_per_problem_max: usize,
    /// Bytes kept of one line; the rest of a longer line is dropped.
    pub line_bytes_max: usize,
    /// Lines a problem waits for its trace before it is closed without one.
    pub header_lines_max: usize,
    /// Lines skipped between an `invoked oom-killer` trace and its `Killed process` line
    /// (the memory report and task table) before the problem is closed anyway.
    pub oom_report_lines_max: usize,
    /// Problems open at once in the live assembler (one per printk caller).
    pub open_problems_max: usize,
    /// Silence after which the live assembler closes an open problem.
    pub quiet_period_ms: u64,
    /// Problems of one signature the live assembler emits per rate-limit window.
    pub problems_per_signature_per_window_max: u32,
    /// Length of one rate-limit window.
    pub rate_limit_window_ms: u64,
    /// Signatures whose rate-limit windows are tracked at once.
    pub signatures_tracked_max: usize,
    /// Suppression reports kept until [`crate::kmsg::KernelLogAssembler::drain_suppressed`].
    pub suppression_reports_max: usize,
    /// Problems waiting in the live assembler's output.
    pub output_problems_max: usize,
}

impl Default for KernelLogLimits {
    fn default() -> Self {
        KernelLogLimits {
            lines_per_problem_max: 600,
            line_bytes_max: 4096,
            header_lines_max: 60,
            oom_report_lines_max: 20_000,
            open_problems_max: 8,
            quiet_period_ms: 1_000,
            problems_per_signature_per_window_max: 5,
            rate_limit_window_ms: 60_000,
            signatures_tracked_max: 1_024,
            suppression_reports_max: 1_024,
            output_problems_max: 1_024,
        }
    }
}

/// How [`parse_kernel_log_with`] reads a whole log file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelLogOptions {
    /// Bounds on problem size (the rate limit is the live assembler's only).
    pub limits: KernelLogLimits,
    /// When set, syslog and journal lines of other hosts are ignored (a central syslog
    /// file holds many hosts). Matches the full name or its first label.
    pub hostname: Option<String>,
    /// When true, ABRT's marker line (`abrt: Kerneloops: Reported N kernel oopses to
    /// Abrt`) drops every problem above it: they were reported from this file already.
    pub honor_abrt_reported_marker: bool,
}

impl Default for KernelLogOptions {
    fn default() -> Self {
        KernelLogOptions {
            limits: KernelLogLimits::default(),
            hostname: None,
            honor_abrt_reported_marker: true,
        }
    }
}

/// One line of a kernel log file with its transport prefixes removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLine<'a> {
    /// A kernel message (from dmesg, or a syslog/journal line of the `kernel` ident).
    Kernel {
        /// The message without level, timestamp and caller prefixes.
        message: &'a str,
        /// The syslog host, when the line had one.
        host: Option<&'a str>,
    },
    /// A syslog or journal line of another program.
    Other {
        /// The syslog host, when the line had one.
        host: Option<&'a str>,
        /// The whole line.
        text: &'a str,
    },
}

static SYSLOG_DATE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?:[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d(?:\.\d+)?|\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?) +(.*)$",
    )
    .expect("valid regex")
});
static SYSLOG_HOST_IDENT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(\S+) ([^\s:\[]+)(?:\[\d+\])?: ?(.*)$").expect("valid regex"));
static JOURNAL_MONOTONIC: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\[\s*\d+\.\d+\] (\S+) kernel: ?(.*)$").expect("valid regex"));
static DMESG_TIMESTAMP: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\[\s*\d+\.\d+\] ?").expect("valid regex"));
static CALLER_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\[\s*[TC]\d+\] ?").expect("valid regex"));
static LEVEL_PREFIX: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^<\d{1,3}>").expect("valid regex"));

/// Removes the level, dmesg timestamp and caller id a kernel message may start with.
pub fn strip_kernel_message_prefixes(message: &str) -> &str {
    let mut message = message;
    if let Some(found) = LEVEL_PREFIX.find(message) {
        message = &message[found.end()..];
    }
    if let Some(found) = DMESG_TIMESTAMP.find(message) {
        message = &message[found.end()..];
    }
    if let Some(found) = CALLER_ID.find(message) {
        message = &message[found.end()..];
    }
    message
}

/// Classifies one line of a log file and strips its prefixes (syslog `Jan  1 00:00:00
/// host kernel: `, ISO-dated journal lines, `journalctl -o short-monotonic`, `<N>`
/// levels, dmesg timestamps). A line without any syslog prefix counts as a kernel line.
pub fn split_log_line(line: &str) -> LogLine<'_> {
    if let Some(captures) = SYSLOG_DATE.captures(line) {
        let rest = captures.get(1).map_or("", |m| m.as_str());
        if let Some(message) = rest.strip_prefix("kernel: ") {
            return LogLine::Kernel {
                message: strip_kernel_message_prefixes(message),
                host: None,
            };
        }
        if let Some(parts) = SYSLOG_HOST_IDENT.captures(rest) {
            let host = parts.get(1).map(|m| m.as_str());
            if parts.get(2).map(|m| m.as_str()) == Some("kernel") {
                let message = parts.get(3).map_or("", |m| m.as_str());
                return LogLine::Kernel {
                    message: strip_kernel_message_prefixes(message),
                    host,
                };
            }
            return LogLine::Other { host, text: line };
        }
        return LogLine::Other {
            host: None,
            text: line,
        };
    }
    if let Some(parts) = JOURNAL_MONOTONIC.captures(line) {
        return LogLine::Kernel {
            message: strip_kernel_message_prefixes(parts.get(2).map_or("", |m| m.as_str())),
            host: parts.get(1).map(|m| m.as_str()),
        };
    }
    LogLine::Kernel {
        message: strip_kernel_message_prefixes(line),
        host: None,
    }
}

fn host_matches(host: Option<&str>, wanted: Option<&str>) -> bool {
    let (Some(host), Some(wanted)) = (host, wanted) else {
        return true;
    };
    let first_label = |name: &str| name.split('.').next().unwrap_or(name).to_string();
    host.eq_ignore_ascii_case(wanted)
        || first_label(host).eq_ignore_ascii_case(&first_label(wanted))
}

/// Every problem in a kernel log (dmesg, syslog or journal text), in order.
pub fn parse_kernel_log(text: &str) -> Vec<Problem> {
    parse_kernel_log_with(text, &KernelLogOptions::default())
}

/// [`parse_kernel_log`] with explicit options.
pub fn parse_kernel_log_with(text: &str, options: &KernelLogOptions) -> Vec<Problem> {
    let mut extractor = ProblemExtractor::new(options.limits);
    let mut raw_problems = Vec::new();
    for line in crate::text::lines(text) {
        match split_log_line(line) {
            LogLine::Kernel { message, host } => {
                if host_matches(host, options.hostname.as_deref()) {
                    extractor.push_line(message, &mut raw_problems);
                }
            }
            LogLine::Other { host, text } => {
                // ABRT logs its marker without a host field on some systems, so the
                // marker is honoured whatever host the line names.
                let _ = host;
                if options.honor_abrt_reported_marker && text.contains("kernel oopses to Abrt") {
                    extractor = ProblemExtractor::new(options.limits);
                    raw_problems.clear();
                }
            }
        }
    }
    extractor.finish(&mut raw_problems);
    raw_problems.into_iter().map(analyze_raw_problem).collect()
}

// ---------------------------------------------------------------------------------------
// Triggers.

/// What a trigger line opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TriggerClass {
    /// A problem of this kind that is expected to carry a trace.
    WithTrace(ProblemKind),
    /// A problem of this kind that never has a trace.
    WithoutTrace(ProblemKind),
    /// `invoked oom-killer:`: a trace, then (after the memory report) `Killed process`.
    OomInvoked,
}

impl TriggerClass {
    fn kind(self) -> ProblemKind {
        match self {
            TriggerClass::WithTrace(kind) | TriggerClass::WithoutTrace(kind) => kind,
            TriggerClass::OomInvoked => ProblemKind::OomKill,
        }
    }
}

static USER_FAULT_HINT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?:traps: )?(?P<comm>.+?)\[(?P<pid>\d+)\]:? (?P<what>segfault at (?P<fault>[0-9a-fA-F]+)|trap [a-z0-9 ]+?|general protection fault|divide error|stack segment|alignment check|int3) ip[: ](?P<ip>[0-9a-fA-F]+) sp[: ](?P<sp>[0-9a-fA-F]+) error[: ](?P<error>[0-9a-fA-F]+)",
    )
    .expect("valid regex")
});
static HINT_MODULE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"in (?P<module>[^\[\s]+)\[(?:(?P<offset>[0-9a-fA-F]+),)?(?P<base>[0-9a-fA-F]+)\+(?P<size>[0-9a-fA-F]+)\]")
        .expect("valid regex")
});
static OOPS_COUNTER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\[#\d+\]").expect("valid regex"));
static LOCKDEP_TITLE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?:INFO|WARNING|BUG): (?:possible recursive locking detected|possible circular locking dependency detected|possible irq lock inversion dependency detected|inconsistent lock state|suspicious RCU usage|bad unlock balance detected|held lock freed|lock held when returning to user space|Nested lock was not taken|lock held at task exit time|bad contention detected|MAX_LOCKDEP_\w+ too low)",
    )
    .expect("valid regex")
});

/// True when `BUG:` appears as a word (so `DEBUG:` and `EDAC DEBUG:` do not count).
fn contains_bug_word(message: &str) -> bool {
    message.match_indices("BUG:").any(|(position, _)| {
        position == 0
            || !message.as_bytes()[position - 1].is_ascii_alphanumeric()
                && message.as_bytes()[position - 1] != b'_'
    })
}

fn is_oom_kill_line(message: &str) -> bool {
    message.contains("ut of memory: Kill")
}

fn classify_trigger(message: &str) -> Option<TriggerClass> {
    use ProblemKind::*;
    use TriggerClass::*;
    if message.is_empty() {
        return None;
    }
    if USER_FAULT_HINT.is_match(message) {
        return Some(WithoutTrace(SegfaultHint));
    }
    if message.contains("invoked oom-killer:") {
        return Some(OomInvoked);
    }
    if is_oom_kill_line(message) {
        return Some(WithoutTrace(OomKill));
    }
    if message.contains("Kernel panic - not syncing") {
        return Some(WithTrace(KernelPanic));
    }
    if message.contains("Machine Check Exception")
        || message.contains("Machine check events logged")
        || message.contains("[Hardware Error]:")
        || message.contains("Machine check from unknown source")
    {
        return Some(WithoutTrace(MachineCheck));
    }
    if LOCKDEP_TITLE.is_match(message) {
        return Some(WithTrace(Lockdep));
    }
    if message.contains("BUG: soft lockup")
        || message.contains("BUG: workqueue lockup")
        || message.contains("hard LOCKUP")
        || message.contains("detected stalls on CPU")
        || message.contains("detected stall on CPU")
        || message.contains("rcu_sched detected stalls")
        || message.contains("rcu_preempt detected stalls")
    {
        return Some(WithTrace(SoftLockup));
    }
    if message.contains("blocked for more than") && message.contains(" seconds") {
        return Some(WithTrace(HungTask));
    }
    if let Some(rest) = message.strip_prefix("WARNING:") {
        let rest = rest.trim_start();
        if rest.starts_with("at") || rest.starts_with("CPU:") || rest.contains(" at ") {
            return Some(WithTrace(KernelWarning));
        }
    }
    if message.starts_with("Badness at")
        || message.contains("page allocation failure: order:")
        || message.starts_with("NETDEV WATCHDOG")
        || message.contains(": nobody cared")
        || message.contains("IRQ handler type mismatch")
        || message.contains("RTNL: assertion failed")
        || message.contains("sysctl table check failed")
    {
        return Some(WithTrace(KernelWarning));
    }
    let oops_like = contains_bug_word(message)
        || message.contains("ernel BUG at")
        || message.contains("nable to handle kernel")
        || message.contains("eneral protection fault")
        || message.contains("Kernel stack is corrupted")
        || message.contains("do_IRQ: stack overflow:")
        || message.contains("ear stack overflow (cur:")
        || message.contains("eek! page_mapcount(page) went negative!")
        || message.contains("kernel tried to execute NX-protected page")
        || message.contains("unable to execute userspace code")
        || (OOPS_COUNTER.is_match(message)
            && [
                "Oops:",
                "Internal error: Oops",
                "invalid opcode:",
                "illegal operation:",
                "double fault:",
                "divide error:",
                "stack segment:",
                "alignment check:",
                "bounds:",
                "invalid TSS:",
                "segment not present:",
            ]
            .iter()
            .any(|title| message.contains(title)));
    if oops_like {
        return Some(WithTrace(KernelOops));
    }
    None
}

/// Panics that only restate the problem just before them.
fn is_consequence_panic(message: &str) -> bool {
    message.contains("Kernel panic - not syncing")
        && [
            "Fatal exception",
            "softlockup: hung tasks",
            "hung_task: blocked tasks",
            "Hard LOCKUP",
            "Fatal machine check",
        ]
        .iter()
        .any(|cause| message.contains(cause))
}

/// Lines after a problem within which a consequence panic is not a problem of its own.
const CONSEQUENCE_LINES_MAX: usize = 24;
/// Lines after `[ cut here ]` kept as the next problem's preamble.
const PREAMBLE_LINES_MAX: usize = 4;

fn is_end_marker(message: &str) -> bool {
    message.contains("---[ end trace") || message.contains("---[ end Kernel panic")
}

/// Lines that continue a problem without a trace.
fn continues_frameless_problem(kind: ProblemKind, message: &str) -> bool {
    match kind {
        ProblemKind::SegfaultHint => {
            (message.starts_with("in ") && message.contains('['))
                || message.starts_with("Code:")
                || message.starts_with("likely on CPU")
        }
        ProblemKind::MachineCheck => {
            !message.contains("Machine check events logged")
                && (message.contains("[Hardware Error]")
                    || message.starts_with("Bank ")
                    || message.contains("Machine Check Exception")
                    || message.starts_with("Kernel panic - not syncing")
                    || message.starts_with("TSC ")
                    || message.starts_with("PROCESSOR ")
                    || message.starts_with("RIP")
                    || message.starts_with("MCG")
                    || message.starts_with("ADDR ")
                    || message.starts_with("MISC "))
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------
// Line shapes inside a report.

static FRAME_BRACKETED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?P<paren>\()?\[<(?P<address>[0-9a-fA-F]+)>\]\s+(?P<unreliable>\?\s+)?(?P<symbol>[^\s\[\]()]+?)(?:\+0x(?P<offset>[0-9a-fA-F]+)/0x(?P<length>[0-9a-fA-F]+))?(?:\s+\[(?P<module>[^\]\s]+)(?:\s+(?P<build_id>[0-9a-fA-F]+))?\])?\)?$",
    )
    .expect("valid regex")
});
static FRAME_BARE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?P<unreliable>\?\s+)?(?P<symbol>[A-Za-z_.$][\w.$]*)\+0x(?P<offset>[0-9a-fA-F]+)/0x(?P<length>[0-9a-fA-F]+)(?:\s+\[(?P<module>[^\]\s]+)(?:\s+(?P<build_id>[0-9a-fA-F]+))?\])?$",
    )
    .expect("valid regex")
});
static FRAME_PPC64: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^\[(?P<stack_pointer>[0-9a-fA-F]+)\]\s+\[(?P<address>[0-9a-fA-F]+)\]\s+(?P<symbol>[^\s\[\]()]+?)(?:\+0x(?P<offset>[0-9a-fA-F]+)/0x(?P<length>[0-9a-fA-F]+))?(?:\s+\[(?P<module>[^\]\s]+)\])?(?P<unreliable>\s+\(unreliable\))?$",
    )
    .expect("valid regex")
});
static FRAME_ARM: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^\[<(?P<address>[0-9a-fA-F]+)>\]\s+\((?P<symbol>[^\s()+]+)(?:\+0x(?P<offset>[0-9a-fA-F]+)/0x(?P<length>[0-9a-fA-F]+))?(?:\s+\[(?P<module>[^\]\s]+)\])?\)\s+from\s+\[<(?P<from_address>[0-9a-fA-F]+)>\]\s+\((?P<from_symbol>[^\s()+]+)(?:\+0x(?P<from_offset>[0-9a-fA-F]+)/0x(?P<from_length>[0-9a-fA-F]+))?(?:\s+\[(?P<from_module>[^\]\s]+)\])?\)$",
    )
    .expect("valid regex")
});
static STACK_MARKER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^<{1,2}/?#?[A-Z_]+>{1,2}").expect("valid regex"));
static REGISTER_LINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:[A-Z][A-Z0-9_]{0,7}:\s*[0-9a-f]{2,}\b|r\d+\s?:\s?[0-9a-f]{8}|(?:x\d+|pc|lr|sp|ip|fp|psr)\s*:\s*[\[<]?[0-9a-f]{4,})")
        .expect("valid regex")
});
static HEX_DUMP_LINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:[0-9a-f]{3,}:\s+)?(?:[<(]?[0-9a-f]{2,16}[>)]?\.?\s*)+$").expect("valid regex")
});
static MODULE_LIST_LINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:(?:[A-Za-z0-9_\-]+(?:\([A-Z+\-]+\))*|\[last unloaded: [^\]]*\])\s*)+$")
        .expect("valid regex")
});

/// True for a line that is a frame of some architecture or a stack-section marker.
fn is_frame_line(message: &str) -> bool {
    let mut rest = message.trim();
    if let Some(marker) = STACK_MARKER.find(rest) {
        rest = rest[marker.end()..].trim();
        if rest.is_empty() {
            return true;
        }
    }
    FRAME_ARM.is_match(rest)
        || FRAME_PPC64.is_match(rest)
        || FRAME_BRACKETED.is_match(rest)
        || FRAME_BARE.is_match(rest)
}

/// True for a line that starts the trace part of a report.
fn starts_trace(message: &str) -> bool {
    let lower_start: String = message.chars().take(12).collect::<String>().to_lowercase();
    if lower_start.starts_with("call trace:") || message.starts_with("Backtrace:") {
        return true;
    }
    let mut rest = message;
    if let Some(marker) = STACK_MARKER.find(rest) {
        rest = rest[marker.end()..].trim();
        if rest.is_empty() {
            return true;
        }
    }
    FRAME_ARM.is_match(rest) || FRAME_PPC64.is_match(rest) || FRAME_BRACKETED.is_match(rest)
}

/// True for a non-frame line that still belongs to the trace part of a report.
fn continues_trace(message: &str, previous_line_was_modules: bool) -> bool {
    const PREFIXES: &[&str] = &[
        "Call Trace:",
        "Call trace:",
        "Backtrace:",
        "Code:",
        "RIP ",
        "RSP ",
        "EIP: ",
        "Instruction dump:",
        "Last Breaking-Event-Address:",
        "Stack:",
        "Exception stack(",
        "--- Exception",
        "--- interrupt:",
        "LR =",
        "Kernel Offset:",
        "irq event stamp:",
        "hardirqs last",
        "softirqs last",
        "Modules linked in:",
        "Krnl ",
        "Mem abort info:",
        "Data abort info:",
        "ESR = ",
        "NMI backtrace for cpu",
        "Sending NMI from CPU",
        "Hardware name:",
        "Comm:",
    ];
    if PREFIXES.iter().any(|prefix| message.starts_with(prefix)) {
        return true;
    }
    if message.starts_with("CPU: ") && message.contains("PID:") {
        return true;
    }
    if !message.is_empty() && message.bytes().all(|b| b == b'=') {
        return true;
    }
    if REGISTER_LINE.is_match(message) || HEX_DUMP_LINE.is_match(message) {
        return true;
    }
    previous_line_was_modules && MODULE_LIST_LINE.is_match(message)
}

/// True for the report lines that directly follow a trigger (kept when a problem closes
/// without a trace).
fn is_report_detail_line(message: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "Oops:",
        "IP:",
        "*pde",
        "*pdpt",
        "PGD",
        "#PF:",
        "CPU:",
        "CPU ",
        "Pid:",
        "Comm:",
        "Hardware name:",
        "Modules linked in",
        "Process ",
        "task:",
        "RIP",
        "EIP",
        "NIP",
        "LR",
        "Stack:",
        "Code:",
        "last sysfs file:",
        "Workqueue:",
        "Tainted:",
        "Not tainted",
        "Kernel panic",
        "Faulting instruction address",
        "Internal error:",
        "PC is at",
        "LR is at",
        "pc :",
        "lr :",
        "sp :",
        "SMP",
        "Kdump:",
        "in_atomic():",
        "Bank ",
        "TSC ",
        "Kernel Offset:",
        "Krnl ",
        "illegal operation",
        "invalid opcode",
        "general protection fault",
        "Preemption disabled at:",
        "INFO: lockdep is turned off",
        "\"echo 0 > /proc/sys/kernel/hung_task_timeout_secs\"",
    ];
    PREFIXES.iter().any(|prefix| message.starts_with(prefix))
        || message.contains("[Hardware Error]")
        || message.contains(" Tainted: ")
        || REGISTER_LINE.is_match(message)
        || HEX_DUMP_LINE.is_match(message)
}

// ---------------------------------------------------------------------------------------
// The extractor.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Header,
    Trace,
    AwaitingOomKill,
}

#[derive(Clone, Debug)]
struct OpenProblem {
    kind: ProblemKind,
    expects_trace: bool,
    awaits_oom_kill: bool,
    lines: Vec<String>,
    trigger_index: usize,
    trace_start: Option<usize>,
    phase: Phase,
    header_lines: usize,
    skipped_lines: usize,
    previous_line_was_modules: bool,
    truncated: bool,
    oom_kill_index: Option<usize>,
}

/// The lines of one problem, as the extractor closed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RawProblem {
    pub(crate) kind: ProblemKind,
    pub(crate) lines: Vec<String>,
    pub(crate) trigger_index: usize,
    pub(crate) trace_start: Option<usize>,
    pub(crate) truncated: bool,
    pub(crate) oom_kill_index: Option<usize>,
}

/// The line-by-line state machine that finds problems in kernel messages (see the module
/// docs). Feed messages with their prefixes stripped.
#[derive(Clone, Debug)]
pub(crate) struct ProblemExtractor {
    limits: KernelLogLimits,
    open: Option<OpenProblem>,
    preamble: Option<Vec<String>>,
    lines_since_close: Option<usize>,
}

enum Disposition {
    Consumed,
    NotConsumed,
}

impl ProblemExtractor {
    pub(crate) fn new(limits: KernelLogLimits) -> ProblemExtractor {
        ProblemExtractor {
            limits,
            open: None,
            preamble: None,
            lines_since_close: None,
        }
    }

    /// True while a problem is open.
    pub(crate) fn has_open_problem(&self) -> bool {
        self.open.is_some()
    }

    /// Feeds one message; closed problems are appended to `out`.
    pub(crate) fn push_line(&mut self, message: &str, out: &mut Vec<RawProblem>) {
        let message = truncate_to_bytes(message, self.limits.line_bytes_max);
        let trimmed = message.trim();
        if let Some(count) = self.lines_since_close.as_mut() {
            *count = count.saturating_add(1);
        }
        if is_end_marker(trimmed) {
            self.close(out);
            self.preamble = None;
            return;
        }
        if trimmed.contains("[ cut here") {
            self.close(out);
            self.preamble = Some(Vec::new());
            return;
        }
        if trimmed.starts_with("Linux version ") {
            self.close(out);
            self.preamble = None;
            return;
        }
        if let Disposition::Consumed = self.continue_open_problem(message, trimmed, out) {
            return;
        }
        self.start_problem_if_trigger(message, trimmed);
    }

    /// Closes the open problem, if any (end of input, quiet period, shutdown).
    pub(crate) fn finish(&mut self, out: &mut Vec<RawProblem>) {
        self.close(out);
        self.preamble = None;
    }

    fn continue_open_problem(
        &mut self,
        message: &str,
        trimmed: &str,
        out: &mut Vec<RawProblem>,
    ) -> Disposition {
        let lines_per_problem_max = self.limits.lines_per_problem_max;
        let header_lines_max = self.limits.header_lines_max;
        let oom_report_lines_max = self.limits.oom_report_lines_max;
        let Some(open) = self.open.as_mut() else {
            return Disposition::NotConsumed;
        };
        match open.phase {
            Phase::Header => {
                if !open.expects_trace {
                    if continues_frameless_problem(open.kind, trimmed) {
                        open.lines.push(message.to_string());
                        self.close_if_full(out);
                        return Disposition::Consumed;
                    }
                    self.close(out);
                    return Disposition::NotConsumed;
                }
                if open.awaits_oom_kill && is_oom_kill_line(trimmed) {
                    open.oom_kill_index = Some(open.lines.len());
                    open.lines.push(message.to_string());
                    self.close(out);
                    return Disposition::Consumed;
                }
                if let Some(trigger) = classify_trigger(trimmed) {
                    // `Oops: 0000 [#1]` after `BUG: unable to handle …`, and the watchdog's
                    // "hard LOCKUP" message after its `WARNING:` line, restate the open
                    // problem instead of starting one.
                    let restates_open_problem = (trigger.kind() == ProblemKind::KernelOops
                        && OOPS_COUNTER.is_match(trimmed)
                        && matches!(
                            open.kind,
                            ProblemKind::KernelOops
                                | ProblemKind::KernelWarning
                                | ProblemKind::SoftLockup
                        ))
                        || (open.kind == ProblemKind::KernelWarning
                            && trigger.kind() == ProblemKind::SoftLockup
                            && trimmed.contains("LOCKUP"));
                    if restates_open_problem {
                        open.lines.push(message.to_string());
                        self.close_if_full(out);
                        return Disposition::Consumed;
                    }
                    self.close(out);
                    return Disposition::NotConsumed;
                }
                if trimmed.is_empty() {
                    return Disposition::Consumed;
                }
                if starts_trace(trimmed) {
                    open.trace_start = Some(open.lines.len());
                    open.phase = Phase::Trace;
                    open.previous_line_was_modules = false;
                    open.lines.push(message.to_string());
                    self.close_if_full(out);
                    return Disposition::Consumed;
                }
                open.header_lines += 1;
                let header_limit = if open.kind == ProblemKind::Lockdep {
                    lines_per_problem_max
                } else {
                    header_lines_max
                };
                if open.header_lines > header_limit {
                    self.close(out);
                    return Disposition::Consumed;
                }
                open.lines.push(message.to_string());
                self.close_if_full(out);
                Disposition::Consumed
            }
            Phase::Trace => {
                if trimmed.is_empty() {
                    return Disposition::Consumed;
                }
                if is_frame_line(trimmed) {
                    open.previous_line_was_modules = false;
                    open.lines.push(message.to_string());
                    self.close_if_full(out);
                    return Disposition::Consumed;
                }
                if open.awaits_oom_kill && is_oom_kill_line(trimmed) {
                    open.oom_kill_index = Some(open.lines.len());
                    open.lines.push(message.to_string());
                    self.close(out);
                    return Disposition::Consumed;
                }
                if classify_trigger(trimmed).is_some() {
                    self.close(out);
                    return Disposition::NotConsumed;
                }
                if continues_trace(trimmed, open.previous_line_was_modules) {
                    open.previous_line_was_modules = trimmed.starts_with("Modules linked in:")
                        || (open.previous_line_was_modules && MODULE_LIST_LINE.is_match(trimmed));
                    open.lines.push(message.to_string());
                    self.close_if_full(out);
                    return Disposition::Consumed;
                }
                if open.awaits_oom_kill {
                    open.phase = Phase::AwaitingOomKill;
                    open.skipped_lines += 1;
                    return Disposition::Consumed;
                }
                self.close(out);
                Disposition::Consumed
            }
            Phase::AwaitingOomKill => {
                if is_oom_kill_line(trimmed) {
                    open.oom_kill_index = Some(open.lines.len());
                    open.lines.push(message.to_string());
                    self.close(out);
                    return Disposition::Consumed;
                }
                if classify_trigger(trimmed).is_some() {
                    self.close(out);
                    return Disposition::NotConsumed;
                }
                open.skipped_lines += 1;
                if open.skipped_lines > oom_report_lines_max {
                    self.close(out);
                }
                Disposition::Consumed
            }
        }
    }

    fn start_problem_if_trigger(&mut self, message: &str, trimmed: &str) {
        let Some(trigger) = classify_trigger(trimmed) else {
            if !trimmed.is_empty() {
                let keep =
                    matches!(&self.preamble, Some(lines) if lines.len() < PREAMBLE_LINES_MAX);
                match (&mut self.preamble, keep) {
                    (Some(lines), true) => lines.push(message.to_string()),
                    _ => self.preamble = None,
                }
            }
            return;
        };
        let follows_a_problem = self
            .lines_since_close
            .is_some_and(|count| count <= CONSEQUENCE_LINES_MAX);
        if follows_a_problem && is_consequence_panic(trimmed) {
            self.preamble = None;
            return;
        }
        let mut lines = self.preamble.take().unwrap_or_default();
        let trigger_index = lines.len();
        lines.push(message.to_string());
        let (expects_trace, awaits_oom_kill) = match trigger {
            TriggerClass::WithTrace(_) => (true, false),
            TriggerClass::WithoutTrace(_) => (false, false),
            TriggerClass::OomInvoked => (true, true),
        };
        self.open = Some(OpenProblem {
            kind: trigger.kind(),
            expects_trace,
            awaits_oom_kill,
            lines,
            trigger_index,
            trace_start: None,
            phase: Phase::Header,
            header_lines: 0,
            skipped_lines: 0,
            previous_line_was_modules: trimmed.starts_with("Modules linked in:"),
            truncated: false,
            oom_kill_index: None,
        });
    }

    fn close_if_full(&mut self, out: &mut Vec<RawProblem>) {
        if let Some(open) = self.open.as_mut()
            && open.lines.len() >= self.limits.lines_per_problem_max
        {
            open.truncated = true;
            self.close(out);
        }
    }

    fn close(&mut self, out: &mut Vec<RawProblem>) {
        let Some(mut open) = self.open.take() else {
            return;
        };
        self.lines_since_close = Some(0);
        if open.expects_trace && open.trace_start.is_none() && open.oom_kill_index.is_none() {
            // No trace came: keep the trigger and the report lines right after it, not
            // whatever unrelated messages followed.
            let mut keep = open.trigger_index + 1;
            while keep < open.lines.len() && is_report_detail_line(open.lines[keep].trim()) {
                keep += 1;
            }
            open.lines.truncate(keep);
        }
        debug_assert!(open.lines.len() <= self.limits.lines_per_problem_max.max(1));
        out.push(RawProblem {
            kind: open.kind,
            lines: open.lines,
            trigger_index: open.trigger_index,
            trace_start: open.trace_start,
            truncated: open.truncated,
            oom_kill_index: open.oom_kill_index,
        });
    }
}

// ---------------------------------------------------------------------------------------
// Analysis of a closed problem.

/// A user-space fault the kernel logged (`segfault at`, `traps: … trap invalid opcode`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegfaultHint {
    /// The process name (`comm`).
    pub process_name: String,
    /// The process id.
    pub pid: u32,
    /// What happened: `segfault`, `trap invalid opcode`, `general protection fault`, …
    pub fault: String,
    /// The faulting data address, for `segfault at`.
    pub fault_address: Option<u64>,
    /// The instruction pointer.
    pub instruction_pointer: u64,
    /// The stack pointer.
    pub stack_pointer: u64,
    /// The page-fault or trap error code.
    pub error_code: u64,
    /// The mapping the instruction pointer was in (`libc.so.6`), when the line names it.
    pub module: Option<String>,
    /// Where that mapping starts.
    pub module_base: Option<u64>,
    /// The instruction pointer's offset from the start of that mapping.
    pub module_offset: Option<u64>,
    /// The signal the process got for it.
    pub signal: i32,
}

/// Parses a user-space fault line (`comm[pid]: segfault at … ip … sp … error … in
/// lib[base+size]`, or `traps: comm[pid] trap … ip:… sp:… error:…`); the ` in lib[…]`
/// part may be on a continuation line joined to it.
pub fn parse_segfault_hint(text: &str) -> Option<SegfaultHint> {
    let captures = USER_FAULT_HINT.captures(text.trim())?;
    let what = captures.name("what")?.as_str();
    let fault = if what.starts_with("segfault") {
        "segfault".to_string()
    } else {
        what.to_string()
    };
    let signal = if what.starts_with("segfault") || what.contains("general protection") {
        11
    } else if what.contains("invalid opcode") {
        4
    } else if what.contains("divide error") {
        8
    } else if what.contains("int3") {
        5
    } else if what.contains("alignment") || what.contains("stack segment") {
        7
    } else {
        11
    };
    let instruction_pointer = parse_hex(captures.name("ip")?.as_str())?;
    let module_captures = HINT_MODULE.captures(&text[captures.get(0)?.end()..]);
    let module = module_captures
        .as_ref()
        .and_then(|m| m.name("module"))
        .map(|m| m.as_str().to_string());
    let module_base = module_captures
        .as_ref()
        .and_then(|m| m.name("base"))
        .and_then(|m| parse_hex(m.as_str()));
    let module_offset = module_captures
        .as_ref()
        .and_then(|m| m.name("offset"))
        .and_then(|m| parse_hex(m.as_str()))
        .or_else(|| module_base.and_then(|base| instruction_pointer.checked_sub(base)));
    Some(SegfaultHint {
        process_name: captures.name("comm")?.as_str().to_string(),
        pid: captures.name("pid")?.as_str().parse().ok()?,
        fault,
        fault_address: captures.name("fault").and_then(|m| parse_hex(m.as_str())),
        instruction_pointer,
        stack_pointer: parse_hex(captures.name("sp")?.as_str())?,
        error_code: parse_hex(captures.name("error")?.as_str())?,
        module,
        module_base,
        module_offset,
        signal,
    })
}

/// Cleans a symbol as a trace prints it: ppc64 ELFv1 dot symbols lose the dot, raw
/// addresses (`0xffffffffa018afff`) are no symbol, `:module:function` names its module.
fn clean_symbol(symbol: &str) -> (Option<String>, Option<String>) {
    if symbol.starts_with("0x") || symbol.chars().all(|c| c.is_ascii_hexdigit()) {
        return (None, None);
    }
    if let Some(rest) = symbol.strip_prefix(':')
        && let Some((module, function)) = rest.split_once(':')
    {
        return (Some(function.to_string()), Some(module.to_string()));
    }
    let symbol = match symbol.strip_prefix('.') {
        Some(rest) if !rest.is_empty() => rest,
        _ => symbol,
    };
    (Some(symbol.to_string()), None)
}

#[allow(clippy::too_many_arguments)] // One argument per captured field keeps the call sites plain.
fn text_frame(
    address: Option<&str>,
    symbol: Option<&str>,
    offset: Option<&str>,
    length: Option<&str>,
    module: Option<&str>,
    build_id: Option<&str>,
    reliable: bool,
    stack: &str,
) -> Frame {
    let (function, symbol_module) = symbol.map(clean_symbol).unwrap_or((None, None));
    let has_function = function.is_some();
    Frame {
        address: address.and_then(parse_hex),
        function,
        module: module.map(str::to_string).or(symbol_module),
        offset: if has_function {
            offset.and_then(parse_hex)
        } else {
            None
        },
        length: if has_function {
            length.and_then(parse_hex)
        } else {
            None
        },
        build_id: build_id.map(|id| id.to_ascii_lowercase()),
        file: None,
        line: None,
        code: None,
        reliable,
        found_by: Some(FrameSource::Text),
        stack: Some(stack.to_string()),
    }
}

fn stack_after_marker(marker: &str, current: &str) -> &'static str {
    match marker.trim_matches(|c| c == '<' || c == '>') {
        "IRQ" => "irq",
        "NMI" => "nmi",
        "SOFTIRQ" => "softirq",
        "#DF" | "#MC" | "#DB" | "#BP" | "#VC" | "#NMI" => "exception",
        "/SOFTIRQ" => "irq",
        "/IRQ" | "EOI" | "/NMI" | "EOE" | "TASK" | "/TASK" | "ENTRY_TRAMPOLINE" => "task",
        _ => match current {
            "irq" => "irq",
            "nmi" => "nmi",
            "softirq" => "softirq",
            "exception" => "exception",
            _ => "task",
        },
    }
}

/// Every frame of the trace lines (top first).
fn parse_trace_frames(lines: &[String]) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut stack: &'static str = "task";
    let mut after_breaking_event = false;
    let mut arm_frames_seen = false;
    for line in lines {
        let mut rest = line.trim();
        if rest.starts_with("Last Breaking-Event-Address:") {
            after_breaking_event = true;
            continue;
        }
        if rest.to_ascii_lowercase().starts_with("call trace:") {
            after_breaking_event = false;
            continue;
        }
        if after_breaking_event {
            continue;
        }
        while let Some(marker) = STACK_MARKER.find(rest) {
            stack = stack_after_marker(marker.as_str(), stack);
            rest = rest[marker.end()..].trim();
        }
        if rest.is_empty() {
            continue;
        }
        if let Some(c) = FRAME_ARM.captures(rest) {
            // `[<pc>] (function) from [<lr>] (caller+off/len)`: the left part repeats the
            // previous line's right part, except on the first line.
            if !arm_frames_seen {
                frames.push(text_frame(
                    c.name("address").map(|m| m.as_str()),
                    c.name("symbol").map(|m| m.as_str()),
                    c.name("offset").map(|m| m.as_str()),
                    c.name("length").map(|m| m.as_str()),
                    c.name("module").map(|m| m.as_str()),
                    None,
                    true,
                    stack,
                ));
                arm_frames_seen = true;
            }
            frames.push(text_frame(
                c.name("from_address").map(|m| m.as_str()),
                c.name("from_symbol").map(|m| m.as_str()),
                c.name("from_offset").map(|m| m.as_str()),
                c.name("from_length").map(|m| m.as_str()),
                c.name("from_module").map(|m| m.as_str()),
                None,
                true,
                stack,
            ));
            continue;
        }
        if let Some(c) = FRAME_PPC64.captures(rest) {
            frames.push(text_frame(
                c.name("address").map(|m| m.as_str()),
                c.name("symbol").map(|m| m.as_str()),
                c.name("offset").map(|m| m.as_str()),
                c.name("length").map(|m| m.as_str()),
                c.name("module").map(|m| m.as_str()),
                None,
                c.name("unreliable").is_none(),
                stack,
            ));
            continue;
        }
        if let Some(c) = FRAME_BRACKETED.captures(rest) {
            // s390's parenthesized first entry is the r14 guess, not a proven caller.
            let reliable = c.name("unreliable").is_none() && c.name("paren").is_none();
            frames.push(text_frame(
                c.name("address").map(|m| m.as_str()),
                c.name("symbol").map(|m| m.as_str()),
                c.name("offset").map(|m| m.as_str()),
                c.name("length").map(|m| m.as_str()),
                c.name("module").map(|m| m.as_str()),
                c.name("build_id").map(|m| m.as_str()),
                reliable,
                stack,
            ));
            continue;
        }
        if let Some(c) = FRAME_BARE.captures(rest) {
            frames.push(text_frame(
                None,
                c.name("symbol").map(|m| m.as_str()),
                c.name("offset").map(|m| m.as_str()),
                c.name("length").map(|m| m.as_str()),
                c.name("module").map(|m| m.as_str()),
                c.name("build_id").map(|m| m.as_str()),
                c.name("unreliable").is_none(),
                stack,
            ));
        }
    }
    frames
}

static INSTRUCTION_POINTER_LINES: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    const FUNCTION: &str = r"(?P<symbol>[^\s+()\[\]]+)\+0x(?P<offset>[0-9a-fA-F]+)/0x(?P<length>[0-9a-fA-F]+)(?:\s+\[(?P<module>[^\]\s]+)\])?";
    [
        format!(
            r"^RIP: [0-9a-f]{{4}}:(?:\[<(?P<address>[0-9a-fA-F]+)>\]\s+\[<[0-9a-fA-F]+>\]\s+)?{FUNCTION}"
        ),
        format!(r"^EIP is at {FUNCTION}"),
        format!(r"^NIP \[(?P<address>[0-9a-fA-F]+)\] {FUNCTION}"),
        format!(r"^PC is at {FUNCTION}"),
        format!(r"^pc : {FUNCTION}"),
        format!(r"^IP: \[<(?P<address>[0-9a-fA-F]+)>\] {FUNCTION}"),
        format!(r"^Krnl PSW : [0-9a-fA-F]+ (?P<address>[0-9a-fA-F]+) \({FUNCTION}\)"),
    ]
    .iter()
    .map(|pattern| Regex::new(pattern).expect("valid regex"))
    .collect()
});

/// Register lines that carry the faulting address without its symbol: i386's
/// `EIP: 0060:[<c022a7b5>] EFLAGS: …` (the symbol follows in `EIP is at …`) and old ARM's
/// `pc : [<c0123456>]    lr : …` (with `PC is at …`).
static INSTRUCTION_POINTER_ADDRESS_LINES: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    [
        r"^EIP:\s+[0-9a-fA-F]{4}:\[<(?P<address>[0-9a-fA-F]+)>\]",
        r"^pc : \[<(?P<address>[0-9a-fA-F]+)>\]",
    ]
    .iter()
    .map(|pattern| Regex::new(pattern).expect("valid regex"))
    .collect()
});

/// The faulting instruction as the register dump before the trace names it (`RIP:`,
/// `EIP is at`, `NIP`, `PC is at`, `pc :`, `IP:`, s390's `Krnl PSW`): frame 0. Its address
/// comes from the same line or, where the symbol line has none, from the register line.
fn instruction_pointer_frame(header: &[String]) -> Option<Frame> {
    let mut frame = instruction_pointer_symbol_frame(header)?;
    if frame.address.is_none() {
        frame.address = header.iter().find_map(|line| {
            INSTRUCTION_POINTER_ADDRESS_LINES
                .iter()
                .find_map(|pattern| {
                    let captures = pattern.captures(line.trim())?;
                    parse_hex(captures.name("address")?.as_str())
                })
        });
    }
    Some(frame)
}

fn instruction_pointer_symbol_frame(header: &[String]) -> Option<Frame> {
    for line in header {
        let trimmed = line.trim();
        for pattern in INSTRUCTION_POINTER_LINES.iter() {
            if let Some(c) = pattern.captures(trimmed) {
                let mut frame = text_frame(
                    c.name("address").map(|m| m.as_str()),
                    c.name("symbol").map(|m| m.as_str()),
                    c.name("offset").map(|m| m.as_str()),
                    c.name("length").map(|m| m.as_str()),
                    c.name("module").map(|m| m.as_str()),
                    None,
                    true,
                    "task",
                );
                if frame.function.is_none() {
                    continue;
                }
                frame.found_by = Some(FrameSource::Context);
                frame.stack = None;
                return Some(frame);
            }
        }
    }
    None
}

/// The module names of the first `Modules linked in:` list, flags and `[last unloaded:]`
/// left out.
fn parse_modules(lines: &[String]) -> Option<Vec<String>> {
    let start = lines
        .iter()
        .position(|line| line.trim().starts_with("Modules linked in:"))?;
    let mut joined = lines[start]
        .trim()
        .trim_start_matches("Modules linked in:")
        .to_string();
    let mut previous_length = lines[start].len();
    for line in &lines[start + 1..] {
        let trimmed = line.trim();
        if trimmed.is_empty() || !MODULE_LIST_LINE.is_match(trimmed) {
            break;
        }
        // A syslog daemon that wraps long lines cuts inside a name (`i2` + `c_core`); a
        // kernel that continues the list starts a new name on the next line.
        let wrapped_inside_a_name = previous_length >= 900
            && !line.starts_with(' ')
            && !joined.ends_with(' ')
            && !joined.ends_with(']');
        if !wrapped_inside_a_name {
            joined.push(' ');
        }
        joined.push_str(trimmed);
        previous_length = line.len();
    }
    let mut without_unloaded = String::with_capacity(joined.len());
    let mut rest = joined.as_str();
    while let Some(start) = rest.find("[last unloaded:") {
        without_unloaded.push_str(&rest[..start]);
        rest = rest[start..].split_once(']').map_or("", |(_, after)| after);
    }
    without_unloaded.push_str(rest);
    Some(
        without_unloaded
            .split_whitespace()
            .map(|token| token.split('(').next().unwrap_or(token).to_string())
            .filter(|name| !name.is_empty())
            .collect(),
    )
}

/// The taint flags that are set (`G` is the absence of `P`, so it is never one), `Some`
/// of an empty list for an untainted kernel, `None` when the report does not say.
fn parse_taint_flags(lines: &[String]) -> Option<Vec<String>> {
    for line in lines {
        if let Some(position) = line.find("Tainted: ") {
            if position >= 4 && line[..position].ends_with("Not ") {
                return Some(Vec::new());
            }
            let after = &line[position + "Tainted: ".len()..];
            let mut flags: Vec<String> = Vec::new();
            if after.starts_with('[') {
                // 6.x: `Tainted: [W]=WARN, [O]=OOT_MODULE`.
                for part in after.split('[').skip(1) {
                    if let Some((letter, _)) = part.split_once(']')
                        && letter.len() == 1
                        && letter != "G"
                        && !flags.iter().any(|f| f == letter)
                    {
                        flags.push(letter.to_string());
                    }
                }
                return Some(flags);
            }
            for character in after.chars() {
                if character.is_ascii_uppercase() {
                    let letter = character.to_string();
                    if character != 'G' && !flags.contains(&letter) {
                        flags.push(letter);
                    }
                } else if character != ' ' {
                    break;
                }
            }
            return Some(flags);
        }
        if line.contains("Not tainted") {
            return Some(Vec::new());
        }
    }
    None
}

static KERNEL_VERSION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:[ (]|kernel-)(\d+\.\d+(?:\.\d+)?(?:[.\-+_~][^\s)]*)?)\)? #\d")
        .expect("valid regex")
});

fn parse_kernel_version(lines: &[String]) -> Option<String> {
    lines
        .iter()
        .filter(|line| {
            [
                "Pid", "comm", "Comm", "CPU", "REGS", "EFLAGS", "Tainted", "tainted",
            ]
            .iter()
            .any(|word| line.contains(word))
        })
        .find_map(|line| KERNEL_VERSION.captures(line))
        .and_then(|c| c.get(1))
        .map(|m| m.as_str().to_string())
}

fn parse_hardware(lines: &[String]) -> Option<String> {
    lines.iter().find_map(|line| {
        let position = line.find("Hardware name: ")?;
        let hardware = line[position + "Hardware name: ".len()..].trim();
        (!hardware.is_empty()).then(|| hardware.to_string())
    })
}

static PROCESS_PATTERNS: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    [
        r"task (?P<comm>.+):(?P<pid>\d+) blocked for more than",
        r"Killed process (?P<pid>\d+) \((?P<comm>[^)]*)\)",
        r"Kill process (?P<pid>\d+) \((?P<comm>[^)]*)\)",
        r"stuck for \d+s! \[(?P<comm>.+):(?P<pid>\d+)\]",
        r"CPU: \d+ (?:UID: \d+ )?PID: (?P<pid>\d+) Comm: (?P<comm>.+?)(?: (?:Not tainted|Tainted:|Kdump:)|$)",
        r"Pid: (?P<pid>\d+), comm: (?P<comm>.+?)(?: (?:Not tainted|Tainted:)|$)",
        r"Process (?P<comm>\S+) \(pid: (?P<pid>\d+)",
        r"^(?P<comm>\S+) invoked oom-killer:",
    ]
    .iter()
    .map(|pattern| Regex::new(pattern).expect("valid regex"))
    .collect()
});

fn parse_process(lines: &[String]) -> Option<String> {
    for pattern in PROCESS_PATTERNS.iter() {
        for line in lines {
            if let Some(c) = pattern.captures(line.trim()) {
                let comm = c.name("comm").map_or("", |m| m.as_str().trim());
                return Some(match c.name("pid") {
                    Some(pid) => format!("{comm}[{}]", pid.as_str()),
                    None => comm.to_string(),
                });
            }
        }
    }
    None
}

const REASON_BYTES_MAX: usize = 300;

/// Turns the lines of one closed problem into a [`Problem`].
pub(crate) fn analyze_raw_problem(raw: RawProblem) -> Problem {
    let lines: Vec<String> = raw
        .lines
        .into_iter()
        .filter(|line| !line.trim().is_empty())
        .collect();
    let trigger_index = raw.trigger_index.min(lines.len().saturating_sub(1));
    let first_line = lines
        .get(trigger_index)
        .map(|line| line.trim().to_string())
        .unwrap_or_default();
    let mut kind = raw.kind;
    let text = lines.join("\n");
    if kind == ProblemKind::KernelWarning && text.contains("hard LOCKUP") {
        kind = ProblemKind::SoftLockup;
    }
    let reason_line = match raw.oom_kill_index {
        Some(index) => raw_line_trimmed(&lines, index, &first_line),
        None => first_line.clone(),
    };
    let mut problem = Problem::new(kind, truncate_to_bytes(&reason_line, REASON_BYTES_MAX));

    if kind == ProblemKind::SegfaultHint {
        let joined = lines
            .iter()
            .map(|line| line.trim())
            .collect::<Vec<_>>()
            .join(" ");
        if let Some(hint) = parse_segfault_hint(&joined) {
            problem.process = Some(format!("{}[{}]", hint.process_name, hint.pid));
            problem.signal = Some(hint.signal);
            problem.frames.push(Frame {
                address: Some(hint.instruction_pointer),
                module: hint.module.clone(),
                offset: hint.module_offset,
                reliable: true,
                found_by: Some(FrameSource::Context),
                ..Frame::default()
            });
            let location = match (&hint.module, hint.module_offset) {
                (Some(module), Some(offset)) => format!("{module}+{offset:#x}"),
                (Some(module), None) => module.clone(),
                _ => "unknown".to_string(),
            };
            let canonical = format!("{} {} in {location}", hint.process_name, hint.fault);
            problem.signature = kernel_signature(kind, &[], &canonical).0;
        } else {
            problem.signature = kernel_signature(kind, &[], &first_line).0;
        }
        problem.text = Some(text);
        return problem;
    }

    let (header, trace) = match raw.trace_start {
        Some(start) => {
            // `trace_start` counts the lines before blank ones were dropped; recount.
            let start = start.min(lines.len());
            (&lines[..start], &lines[start..])
        }
        None => (&lines[..], &lines[lines.len()..]),
    };
    let header_frame = instruction_pointer_frame(header);
    problem.frames = header_frame.into_iter().collect();
    problem.frames.extend(parse_trace_frames(trace));
    problem.modules = parse_modules(&lines);
    problem.taint_flags = parse_taint_flags(&lines);
    problem.version = parse_kernel_version(&lines);
    problem.hardware = parse_hardware(&lines);
    problem.process = parse_process(&lines);
    problem.signature = match kind {
        ProblemKind::OomKill => {
            let victim = lines
                .iter()
                .find_map(|line| {
                    PROCESS_PATTERNS[1]
                        .captures(line)
                        .or_else(|| PROCESS_PATTERNS[2].captures(line))
                })
                .and_then(|c| c.name("comm").map(|m| m.as_str().to_string()));
            match victim {
                Some(name) => {
                    kernel_signature(
                        kind,
                        &[],
                        &format!("Out of memory: Killed process ({name})"),
                    )
                    .0
                }
                None => kernel_signature(kind, &[], &first_line).0,
            }
        }
        ProblemKind::MachineCheck => kernel_signature(kind, &[], &first_line).0,
        _ => kernel_signature(kind, &problem.frames, &first_line).0,
    };
    if raw.truncated {
        problem.analysis_error =
            Some("the report was longer than the line limit; its end was not kept".to_string());
    }
    problem.text = Some(text);
    problem
}

fn raw_line_trimmed(lines: &[String], index: usize, fallback: &str) -> String {
    // `oom_kill_index` counts raw lines; blank lines never reach a problem in the
    // extractor, so the index is the same after filtering.
    lines
        .get(index)
        .map(|line| line.trim().to_string())
        .unwrap_or_else(|| fallback.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_stripped() {
        assert_eq!(
            split_log_line("Jan 12 19:08:41 myhost kernel: [  12.345678] BUG: x"),
            LogLine::Kernel {
                message: "BUG: x",
                host: Some("myhost")
            }
        );
        assert_eq!(
            split_log_line("<4>[  12.345678] WARNING: at foo"),
            LogLine::Kernel {
                message: "WARNING: at foo",
                host: None
            }
        );
        assert_eq!(
            split_log_line("[   12.345678] myhost kernel: Oops"),
            LogLine::Kernel {
                message: "Oops",
                host: Some("myhost")
            }
        );
        assert!(matches!(
            split_log_line("Nov  9 10:19:35 ohm openvpn[1118]: WARNING: Make sure"),
            LogLine::Other {
                host: Some("ohm"),
                ..
            }
        ));
        assert!(matches!(
            split_log_line("2024-01-02T03:04:05.123456+00:00 node1 kernel: BUG: x"),
            LogLine::Kernel {
                message: "BUG: x",
                host: Some("node1")
            }
        ));
        // A dmesg line whose message happens to look like `host ident: …` stays kernel.
        assert_eq!(
            split_log_line("[    1.000000] usb 1-1: new device"),
            LogLine::Kernel {
                message: "usb 1-1: new device",
                host: None
            }
        );
    }

    #[test]
    fn triggers_ignore_debug_and_user_space_noise() {
        assert_eq!(
            classify_trigger("EDAC DEBUG: edac_mc_sysfs_init: device mc created"),
            None
        );
        assert_eq!(
            classify_trigger("ODEBUG: 213 of 213 active objects replaced"),
            None
        );
        assert_eq!(classify_trigger("Oops: efitime: can't read time!"), None);
        assert_eq!(
            classify_trigger(
                "traps: chrome[2979] trap invalid opcode ip:55911b28dba3 sp:7ffea558a3e0 error:0"
            ),
            Some(TriggerClass::WithoutTrace(ProblemKind::SegfaultHint))
        );
        assert_eq!(
            classify_trigger("invalid opcode: 0000 [#1] SMP"),
            Some(TriggerClass::WithTrace(ProblemKind::KernelOops))
        );
        assert_eq!(
            classify_trigger("INFO: task kworker/0:1:123 blocked for more than 120 seconds."),
            Some(TriggerClass::WithTrace(ProblemKind::HungTask))
        );
    }

    #[test]
    fn segfault_hints_name_the_module_and_offset() {
        let hint = parse_segfault_hint(
            "crashme[4242]: segfault at 0 ip 00007f1c2a4b5c6d sp 00007ffd1e2f3a40 error 4 in libc.so.6[7f1c2a400000+195000] likely on CPU 3 (core 1, socket 0)",
        )
        .expect("a hint");
        assert_eq!(hint.process_name, "crashme");
        assert_eq!(hint.pid, 4242);
        assert_eq!(hint.fault_address, Some(0));
        assert_eq!(hint.instruction_pointer, 0x7f1c2a4b5c6d);
        assert_eq!(hint.stack_pointer, 0x7ffd1e2f3a40);
        assert_eq!(hint.error_code, 4);
        assert_eq!(hint.module.as_deref(), Some("libc.so.6"));
        assert_eq!(hint.module_offset, Some(0xb5c6d));
        assert_eq!(hint.signal, 11);
    }

    #[test]
    fn frames_of_every_architecture_parse() {
        let lines: Vec<String> = [
            "Call Trace:",
            " [<ffffffff8106dd1f>] warn_slowpath_common+0x7f/0xc0",
            " [<ffffffffa018b000>] ? 0xffffffffa018afff",
            " <IRQ>  [<ffffffffa01746ef>] ? lis3lv02d_get_pwron_wait+0x8f/0xa0 [lis3lv02d]",
            " <EOI>  ksys_write+0x5f/0xe0",
            "[c000000010f930b0] [c000000008068df8] .eeh_dev_check_failure+0x278/0x390 (unreliable)",
            "([<00000000027f8000>] 0x27f8000)",
            "[<c0014318>] (dump_backtrace_log_lvl) from [<c001457c>] (show_stack+0x24/0x2c)",
            "[<c0014558>] (show_stack) from [<c059798c>] (dump_stack+0x7c/0xc8)",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let frames = parse_trace_frames(&lines);
        let names: Vec<Option<&str>> = frames.iter().map(|f| f.function.as_deref()).collect();
        assert_eq!(
            names,
            [
                Some("warn_slowpath_common"),
                None,
                Some("lis3lv02d_get_pwron_wait"),
                Some("ksys_write"),
                Some("eeh_dev_check_failure"),
                None,
                Some("dump_backtrace_log_lvl"),
                Some("show_stack"),
                Some("dump_stack"),
            ]
        );
        assert_eq!(frames[0].address, Some(0xffffffff8106dd1f));
        assert_eq!(frames[0].offset, Some(0x7f));
        assert_eq!(frames[0].length, Some(0xc0));
        assert!(frames[0].reliable);
        assert!(!frames[1].reliable);
        assert_eq!(frames[2].stack.as_deref(), Some("irq"));
        assert_eq!(frames[2].module.as_deref(), Some("lis3lv02d"));
        assert!(!frames[2].reliable);
        assert_eq!(frames[3].stack.as_deref(), Some("task"));
        assert!(!frames[4].reliable);
        assert_eq!(frames[4].address, Some(0xc000000008068df8));
        assert!(!frames[5].reliable);
        assert_eq!(frames[7].offset, Some(0x24));
        assert_eq!(frames[7].address, Some(0xc001457c));
    }

    #[test]
    fn taint_flags_are_only_the_set_ones() {
        let flags = |line: &str| parse_taint_flags(&[line.to_string()]);
        assert_eq!(
            flags("Pid: 4008, comm: rm Tainted: G    B       2.6.38.6-27.fc15.i686 #1"),
            Some(vec!["B".to_string()])
        );
        assert_eq!(
            flags("CPU: 3 PID: 27 Comm: x Tainted: P           O    4.2.8 #1"),
            Some(vec!["P".to_string(), "O".to_string()])
        );
        assert_eq!(
            flags("Pid: 912, comm: X Tainted: G            3.1.0 #1"),
            Some(vec![])
        );
        assert_eq!(
            flags("CPU: 0 PID: 1 Comm: x Not tainted 5.4.0 #1"),
            Some(vec![])
        );
        assert_eq!(
            flags("Tainted: [W]=WARN, [O]=OOT_MODULE"),
            Some(vec!["W".to_string(), "O".to_string()])
        );
        assert_eq!(flags("no taint information"), None);
    }
}

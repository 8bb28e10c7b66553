//! QEMU/libvirt domain logs (`/var/log/libvirt/qemu/<domain>.log`): guest panics and
//! QEMU's own fatal errors.
//!
//! What the log shows:
//! - libvirt's record of a `GUEST_PANICKED` event with panic information: `panic
//!   hyper-v: arg1='0x3b', arg2=…` (a Windows bugcheck) or `panic s390: core='0' …
//!   reason='disabled-wait'`;
//! - the bare event or QEMU's guest-error log: `GUEST_PANICKED`, `guest-panicked`,
//!   `Guest crashed`, `guest panicked`;
//! - libvirt's `shutting down, reason=crashed` (the domain crashed; reported only when no
//!   panic line came first in the same run);
//! - QEMU's own fatal errors: `KVM internal error. Suberror: N` (with its register dump)
//!   and failed assertions.
//!
//! # Invariants
//! - At most one guest-panic problem per QEMU run (a run starts at libvirt's `starting
//!   up` line): the event, libvirt's panic line and the crash shutdown of one panic are
//!   one problem.
//! - The domain comes from the caller (it is the log file's name) and is part of the
//!   signature: the same VM panicking the same way again is the same problem.
//! - Bounded: at most [`VM_GUEST_PROBLEMS_MAX`] problems, [`VM_GUEST_DETAIL_LINES_MAX`]
//!   detail lines each, lines cut at [`VM_GUEST_LINE_BYTES_MAX`] bytes.

use std::sync::LazyLock;

use crashmesh_protocol::model::{Problem, ProblemKind};
use crashmesh_protocol::signature::{normalize_text_line, signature_from_parts};
use regex::Regex;

use crate::text::truncate_to_bytes;

/// Problems returned per log.
pub const VM_GUEST_PROBLEMS_MAX: usize = 1_000;
/// Detail lines kept after a problem's first line.
pub const VM_GUEST_DETAIL_LINES_MAX: usize = 40;
/// Bytes of one line considered.
pub const VM_GUEST_LINE_BYTES_MAX: usize = 4 * 1024;

static TIMESTAMP: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?:? ")
        .expect("valid regex")
});
static PROGRAM_PREFIX: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?P<program>qemu-system-[\w-]+|qemu-kvm|qemu): ").expect("valid regex")
});
static HYPERV_PANIC: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"panic hyper-v: arg1='(?P<arg1>0x[0-9a-fA-F]+)', arg2='(?P<arg2>0x[0-9a-fA-F]+)'")
        .expect("valid regex")
});
static S390_PANIC: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"panic s390: .*reason='(?P<reason>[^']*)'").expect("valid regex"));
static KVM_INTERNAL_ERROR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"KVM internal error\. Suberror: (?P<suberror>\d+)").expect("valid regex")
});
static QEMU_VERSION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"qemu version: (?P<version>[^,]+)").expect("valid regex"));
static QEMU_BINARY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?P<binary>/\S*/qemu-(?:system-[\w-]+|kvm))\b").expect("valid regex")
});

enum Finding {
    GuestPanic { canonical: String, reason: String },
    CrashShutdown,
    QemuError { canonical: String, reason: String },
}

fn classify(message: &str) -> Option<Finding> {
    if let Some(c) = HYPERV_PANIC.captures(message) {
        return Some(Finding::GuestPanic {
            canonical: format!("hyper-v bugcheck {}", c["arg1"].to_ascii_lowercase()),
            reason: format!(
                "guest panicked: hyper-v bugcheck {} ({})",
                &c["arg1"], &c["arg2"]
            ),
        });
    }
    if let Some(c) = S390_PANIC.captures(message) {
        return Some(Finding::GuestPanic {
            canonical: format!("s390 {}", &c["reason"]),
            reason: format!("guest panicked: s390 {}", &c["reason"]),
        });
    }
    let lower = message.to_ascii_lowercase();
    if message.contains("GUEST_PANICKED")
        || lower.contains("guest-panicked")
        || lower.contains("guest crashed")
        || lower.contains("guest panicked")
    {
        return Some(Finding::GuestPanic {
            canonical: "guest panicked".to_string(),
            reason: "guest panicked".to_string(),
        });
    }
    if message.contains("shutting down, reason=crashed") {
        return Some(Finding::CrashShutdown);
    }
    if let Some(c) = KVM_INTERNAL_ERROR.captures(message) {
        return Some(Finding::QemuError {
            canonical: format!("KVM internal error suberror {}", &c["suberror"]),
            reason: format!("QEMU: KVM internal error, suberror {}", &c["suberror"]),
        });
    }
    if message.contains("Assertion `") && message.contains("failed") {
        return Some(Finding::QemuError {
            canonical: normalize_text_line(message),
            reason: format!("QEMU: {message}"),
        });
    }
    None
}

/// Guest panics and QEMU failures in the log of libvirt domain `domain`.
pub fn parse_vm_guest_log(domain: &str, text: &str) -> Vec<Problem> {
    let mut problems: Vec<Problem> = Vec::new();
    let mut version: Option<String> = None;
    let mut executable: Option<String> = None;
    let mut panic_in_this_run = false;
    // The problem whose detail lines are still being collected, and how many it has.
    let mut collecting: Option<(usize, usize)> = None;
    for raw in crate::text::lines(text) {
        let raw = truncate_to_bytes(raw, VM_GUEST_LINE_BYTES_MAX);
        let has_timestamp = TIMESTAMP.is_match(raw);
        let mut message = TIMESTAMP.find(raw).map_or(raw, |m| &raw[m.end()..]);
        if let Some(m) = PROGRAM_PREFIX.captures(message) {
            executable.get_or_insert_with(|| m["program"].to_string());
            message = &message[m.get(0).map_or(0, |whole| whole.end())..];
        }
        if message.contains("starting up") {
            panic_in_this_run = false;
            collecting = None;
            if let Some(c) = QEMU_VERSION.captures(message) {
                version = Some(c["version"].trim().to_string());
            }
            continue;
        }
        if let Some(c) = QEMU_BINARY.captures(message) {
            executable = Some(c["binary"].to_string());
        }
        let finding = classify(message);
        if finding.is_none() {
            // Untimed lines after a finding are its details (QEMU's register dump).
            if let Some((index, count)) = collecting.as_mut()
                && !has_timestamp
                && !message.trim().is_empty()
                && *count < VM_GUEST_DETAIL_LINES_MAX
            {
                let problem = &mut problems[*index];
                let text = problem.text.get_or_insert_with(String::new);
                text.push('\n');
                text.push_str(raw);
                *count += 1;
                continue;
            }
            collecting = None;
            continue;
        }
        let (canonical, reason) = match finding.expect("checked above") {
            Finding::GuestPanic { canonical, reason } => {
                if panic_in_this_run {
                    // The same panic seen again (event and libvirt's record of it).
                    if let Some(last) = problems.last_mut() {
                        let text = last.text.get_or_insert_with(String::new);
                        text.push('\n');
                        text.push_str(raw);
                        if last.reason == "guest panicked" && reason != "guest panicked" {
                            last.reason = reason;
                            last.signature = signature_from_parts(
                                ProblemKind::VmGuestPanic,
                                &[domain.to_string(), canonical],
                            )
                            .0;
                        }
                    }
                    continue;
                }
                panic_in_this_run = true;
                (canonical, reason)
            }
            Finding::CrashShutdown => {
                if panic_in_this_run {
                    if let Some(last) = problems.last_mut() {
                        let text = last.text.get_or_insert_with(String::new);
                        text.push('\n');
                        text.push_str(raw);
                    }
                    continue;
                }
                panic_in_this_run = true;
                (
                    "domain crashed".to_string(),
                    "guest crashed (libvirt: shutting down, reason=crashed)".to_string(),
                )
            }
            Finding::QemuError { canonical, reason } => {
                // QEMU dying takes the guest with it: the crash shutdown that follows
                // is this problem, not another.
                panic_in_this_run = true;
                (canonical, reason)
            }
        };
        if problems.len() >= VM_GUEST_PROBLEMS_MAX {
            break;
        }
        let mut problem = Problem::new(ProblemKind::VmGuestPanic, truncate_to_bytes(&reason, 300));
        problem.signature =
            signature_from_parts(ProblemKind::VmGuestPanic, &[domain.to_string(), canonical]).0;
        problem.process = Some(domain.to_string());
        problem.text = Some(raw.to_string());
        problems.push(problem);
        collecting = Some((problems.len() - 1, 0));
    }
    for problem in &mut problems {
        problem.version = version.clone();
        problem.executable = executable.clone();
    }
    problems
}

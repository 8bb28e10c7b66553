//! The data model shared by every part: what a detector finds and what `analyze --json`,
//! the store and the wire carry.
//!
//! These types are serialized to JSON (CLI, endpoint) and to postcard (disk, wire), so
//! no field is ever skipped: absent values are `None`, printed as `null`.

use serde::{Deserialize, Serialize};

/// What kind of problem a detector found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A native process crashed and the kernel handed us its core.
    Core,
    /// `Oops`, `BUG:`, `general protection fault` and other kernel faults.
    KernelOops,
    /// `WARNING:` / `WARNING: at` from the kernel.
    KernelWarning,
    /// `Kernel panic - not syncing`, live or harvested after reboot (kdump, pstore).
    KernelPanic,
    /// `task … blocked for more than N seconds`.
    HungTask,
    /// `watchdog: BUG: soft lockup` and hard lockups.
    SoftLockup,
    /// `Out of memory: Killed process`.
    OomKill,
    /// `mce: [Hardware Error]`, `Machine check events logged`.
    MachineCheck,
    /// A lockdep report (`possible recursive locking detected`, …).
    Lockdep,
    /// A user-space `segfault at` line: a hint that points at the matching core.
    SegfaultHint,
    /// An uncaught Python exception.
    Python,
    /// A JVM fatal error (`hs_err_pid*.log`).
    Java,
    /// A virtual machine guest reported a panic.
    VmGuestPanic,
}

impl ProblemKind {
    /// The stable snake_case name used in JSON, the CLI and signatures.
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Core => "core",
            ProblemKind::KernelOops => "kernel_oops",
            ProblemKind::KernelWarning => "kernel_warning",
            ProblemKind::KernelPanic => "kernel_panic",
            ProblemKind::HungTask => "hung_task",
            ProblemKind::SoftLockup => "soft_lockup",
            ProblemKind::OomKill => "oom_kill",
            ProblemKind::MachineCheck => "machine_check",
            ProblemKind::Lockdep => "lockdep",
            ProblemKind::SegfaultHint => "segfault_hint",
            ProblemKind::Python => "python",
            ProblemKind::Java => "java",
            ProblemKind::VmGuestPanic => "vm_guest_panic",
        }
    }

    /// True for the kinds that come from the kernel log.
    pub fn is_kernel(self) -> bool {
        matches!(
            self,
            ProblemKind::KernelOops
                | ProblemKind::KernelWarning
                | ProblemKind::KernelPanic
                | ProblemKind::HungTask
                | ProblemKind::SoftLockup
                | ProblemKind::OomKill
                | ProblemKind::MachineCheck
                | ProblemKind::Lockdep
                | ProblemKind::SegfaultHint
        )
    }
}

impl std::fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a frame was found, from most to least trustworthy (breakpad's "trust").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameSource {
    /// Frame 0: the registers of the thread.
    Context,
    /// Unwound with call-frame information (`.eh_frame` / `.debug_frame`).
    Cfi,
    /// Unwound by following the frame-pointer chain.
    FramePointer,
    /// Found by scanning the stack for something that looks like a return address.
    Scan,
    /// Printed by the program or kernel itself (kernel call traces, Python tracebacks).
    Text,
}

/// One stack frame, top of the stack first in every list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// The instruction pointer for frame 0, the return address for callers (as gdb
    /// prints them). A hex string in JSON.
    #[serde(with = "hex_address")]
    pub address: Option<u64>,
    /// The function, demangled, when known.
    pub function: Option<String>,
    /// The module: a shared object's path, a kernel module's name, a Python file's module.
    pub module: Option<String>,
    /// Bytes from the start of `function` when it is known, otherwise from the start of
    /// `module` (its load bias), which is what a signature without symbols uses.
    pub offset: Option<u64>,
    /// The function's length, where the trace states it (`func+0x1a/0x90`).
    pub length: Option<u64>,
    /// The GNU build-id of `module`, lower-case hex.
    pub build_id: Option<String>,
    /// The source file, when debug information or the trace names it.
    pub file: Option<String>,
    /// The source line, with `file`.
    pub line: Option<u32>,
    /// The source line's text, where a traceback quotes it.
    pub code: Option<String>,
    /// False for frames a trace marks uncertain (`?` in kernel traces) or that were found
    /// by stack scanning.
    pub reliable: bool,
    /// How the frame was found.
    pub found_by: Option<FrameSource>,
    /// The stack a kernel frame was on (`task`, `irq`, `nmi`, `softirq`, `exception`).
    pub stack: Option<String>,
}

impl Frame {
    /// A reliable frame known by its function's name alone (synthetic traces, tests).
    pub fn named(function: &str) -> Frame {
        Frame {
            function: Some(function.to_string()),
            reliable: true,
            ..Frame::default()
        }
    }
}

/// The frames of one thread of a core.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadTrace {
    /// The thread's id (the kernel's pid of the task).
    pub tid: u32,
    /// The thread's name (`comm`), when the core says it.
    pub name: Option<String>,
    /// True for the thread that received the fatal signal.
    pub crashed: bool,
    /// Top first.
    pub frames: Vec<Frame>,
    /// Why unwinding stopped early, if it did.
    pub unwind_error: Option<String>,
}

/// One problem as a detector or `crashmesh analyze` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// One line a person can read: "SIGSEGV in strlen", "BUG: unable to handle …".
    pub reason: String,
    /// See [`crate::signature`]; equal signatures mean the same problem.
    pub signature: String,
    /// The frames of the crashing thread (or the kernel trace), top first.
    pub frames: Vec<Frame>,

    // Native crashes.
    /// The fatal signal's number.
    pub signal: Option<i32>,
    /// The executable's path.
    pub executable: Option<String>,
    /// The package that owns the executable (`name version`), when known.
    pub package: Option<String>,
    /// Every thread, the crashing one marked.
    pub threads: Option<Vec<ThreadTrace>>,

    // Kernel problems.
    /// Kernel modules linked in, as the report lists them.
    pub modules: Option<Vec<String>>,
    /// Only the taint flags that are set, each one letter (`P`, `O`, `E`, …).
    pub taint_flags: Option<Vec<String>>,
    /// The kernel (or program) version the report names.
    pub version: Option<String>,
    /// `Hardware name:` of a kernel report.
    pub hardware: Option<String>,
    /// The faulting process as the report names it (`comm` and pid).
    pub process: Option<String>,

    // Interpreters.
    /// The exception's type (`ValueError`, `java.lang.OutOfMemoryError`).
    pub exception_type: Option<String>,
    /// The exception's message.
    pub message: Option<String>,

    /// The problem's own text as extracted from its source (an oops, a traceback).
    pub text: Option<String>,
    /// Set when analysis could not finish; the raw evidence is kept regardless.
    pub analysis_error: Option<String>,
}

impl Problem {
    /// An empty problem of `kind`: every optional field unknown.
    pub fn new(kind: ProblemKind, reason: impl Into<String>) -> Problem {
        Problem {
            kind,
            reason: reason.into(),
            signature: String::new(),
            frames: Vec::new(),
            signal: None,
            executable: None,
            package: None,
            threads: None,
            modules: None,
            taint_flags: None,
            version: None,
            hardware: None,
            process: None,
            exception_type: None,
            message: None,
            text: None,
            analysis_error: None,
        }
    }

    /// The first frame with a function name: what `problems list` shows as the crash
    /// function.
    pub fn crash_function(&self) -> Option<&str> {
        self.frames
            .iter()
            .find_map(|frame| frame.function.as_deref())
    }
}

/// Frame addresses are hex strings in JSON ("0x7f12…"), numbers in postcard.
mod hex_address {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            match value {
                Some(address) => serializer.serialize_some(&format!("{address:#x}")),
                None => serializer.serialize_none(),
            }
        } else {
            serde::Serialize::serialize(value, serializer)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<u64>, D::Error> {
        if deserializer.is_human_readable() {
            let text: Option<String> = Option::deserialize(deserializer)?;
            match text {
                None => Ok(None),
                Some(text) => {
                    let digits = text.strip_prefix("0x").unwrap_or(&text);
                    u64::from_str_radix(digits, 16).map(Some).map_err(|_| {
                        serde::de::Error::custom(format!("not a hex address: {text:?}"))
                    })
                }
            }
        } else {
            Option::<u64>::deserialize(deserializer)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_is_hex_in_json_and_a_number_in_postcard() {
        let frame = Frame {
            address: Some(0x7f00_dead_beef),
            reliable: true,
            ..Frame::default()
        };
        let json = serde_json::to_value(&frame).unwrap();
        assert_eq!(json["address"], "0x7f00deadbeef");
        assert_eq!(json["function"], serde_json::Value::Null);
        let back: Frame = serde_json::from_value(json).unwrap();
        assert_eq!(back, frame);

        let bytes = postcard::to_allocvec(&frame).unwrap();
        let back: Frame = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, frame);
    }

    #[test]
    fn problem_round_trips_through_postcard() {
        let mut problem = Problem::new(ProblemKind::Core, "SIGSEGV in main");
        problem.signal = Some(11);
        problem.frames.push(Frame {
            function: Some("main".into()),
            ..Frame::default()
        });
        let bytes = postcard::to_allocvec(&problem).unwrap();
        assert_eq!(postcard::from_bytes::<Problem>(&bytes).unwrap(), problem);
        assert_eq!(problem.crash_function(), Some("main"));
    }
}

//! Frames must agree with gdb's physical frames on the same core.
//!
//! Each case compiles a small program, runs it under gdb until it dies, has gdb write a
//! core (`generate-core-file`: no machine-wide `core_pattern` is touched), then compares
//! every thread's frames with what gdb unwinds from that core: the same addresses, top
//! first (gdb's inline and tail-call frames are virtual and skipped), at most one frame
//! more or fewer at the bottom, and the same function names inside the program itself.
//!
//! gcc and gdb are installed in CI, where a missing one fails the test (`.ci/run` sets
//! `CI`); elsewhere the test says so and passes.

use std::path::{Path, PathBuf};
use std::process::Command;

use crashmesh_coredump::{AnalyzeOptions, analyze_core, analyze_core_bytes};
use crashmesh_protocol::FrameSource;

fn tool_missing(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "`{tool}` is not installed and CI is set: .ci/run installs it"
        );
        eprintln!("SKIPPED: `{tool}` is not installed, so this test cannot run here");
    }
    !found
}

struct Case {
    name: &'static str,
    compiler: &'static str,
    flags: &'static [&'static str],
    source: &'static str,
    signal: i32,
    /// Function names expected, in order, somewhere in the crashing thread.
    expected_functions: &'static [&'static str],
    /// How many threads the core must have.
    threads: usize,
    /// gdb commands before `run` (e.g. letting a signal through to the program's handler).
    gdb_setup: &'static [&'static str],
}

const CRASHY_C: &str = r#"
#include <string.h>
__attribute__((noinline)) int leaf(volatile int *p, int n) { int s = 0; for (int i = 0; i < n; i++) s += p[i]; *(volatile int*)0 = s; return s; }
__attribute__((noinline)) int middle(int n) { int buf[16]; memset(buf, 1, sizeof buf); return leaf(buf, n) + 1; }
__attribute__((noinline)) int outer(int n) { return middle(n * 2) + 2; }
int main(int argc, char **argv) { return outer(argc + 3); }
"#;

const ABORT_C: &str = r#"
#include <stdlib.h>
#include <stdio.h>
__attribute__((noinline)) void check_header(const char *h) { if (h[0] != 'X') { fflush(stdout); abort(); } }
__attribute__((noinline)) void parse(const char *h) { check_header(h); puts(h); }
int main(void) { parse("nope"); return 0; }
"#;

const THREADS_C: &str = r#"
#include <pthread.h>
#include <unistd.h>
static pthread_barrier_t barrier;
__attribute__((noinline)) void wait_forever(void) { for (;;) pause(); }
__attribute__((noinline)) void *worker(void *arg) { (void)arg; pthread_barrier_wait(&barrier); wait_forever(); return 0; }
__attribute__((noinline)) void crash_now(volatile int *p) { *p = 42; }
int main(void) {
    pthread_t threads[3];
    pthread_barrier_init(&barrier, 0, 4);
    for (int i = 0; i < 3; i++) pthread_create(&threads[i], 0, worker, 0);
    pthread_barrier_wait(&barrier);
    usleep(100000);
    crash_now(0);
    return 0;
}
"#;

const SIGNAL_HANDLER_C: &str = r#"
#include <signal.h>
#include <stdlib.h>
__attribute__((noinline)) void on_fault(int signal) { (void)signal; abort(); }
__attribute__((noinline)) int faulty(volatile int *p) { return *p + 1; }
int main(void) { signal(SIGSEGV, on_fault); return faulty((int *)16); }
"#;

const WIDGET_CPP: &str = r#"
#include <cstdlib>
namespace shop {
struct Widget {
    int size;
    __attribute__((noinline)) int explode(int times);
};
__attribute__((noinline)) int Widget::explode(int times) {
    if (times > size) std::abort();
    return times;
}
}
__attribute__((noinline)) int run(shop::Widget &w, int n) { return w.explode(n) + 1; }
int main(int argc, char **) { shop::Widget w{1}; return run(w, argc + 5); }
"#;

const CASES: &[Case] = &[
    Case {
        name: "c_omit_frame_pointer",
        compiler: "gcc",
        flags: &["-O2", "-fomit-frame-pointer"],
        source: CRASHY_C,
        signal: 11,
        expected_functions: &["leaf", "middle", "outer", "main"],
        threads: 1,
        gdb_setup: &[],
    },
    Case {
        name: "c_with_debug_info",
        compiler: "gcc",
        flags: &["-O2", "-fomit-frame-pointer", "-g"],
        source: CRASHY_C,
        signal: 11,
        expected_functions: &["leaf", "middle", "outer", "main"],
        threads: 1,
        gdb_setup: &[],
    },
    Case {
        name: "c_abort",
        compiler: "gcc",
        flags: &["-O2", "-g"],
        source: ABORT_C,
        signal: 6,
        expected_functions: &["check_header", "parse", "main"],
        threads: 1,
        gdb_setup: &[],
    },
    Case {
        name: "c_threads",
        compiler: "gcc",
        flags: &["-O2", "-pthread", "-g"],
        source: THREADS_C,
        signal: 11,
        expected_functions: &["crash_now", "main"],
        threads: 4,
        gdb_setup: &[],
    },
    Case {
        name: "c_signal_handler",
        compiler: "gcc",
        flags: &["-O1", "-g"],
        source: SIGNAL_HANDLER_C,
        signal: 6,
        expected_functions: &["on_fault", "faulty", "main"],
        threads: 1,
        gdb_setup: &["handle SIGSEGV nostop noprint pass"],
    },
    Case {
        name: "cpp_demangled",
        compiler: "g++",
        flags: &["-O2", "-g"],
        source: WIDGET_CPP,
        signal: 6,
        expected_functions: &[
            "shop::Widget::explode(int)",
            "run(shop::Widget&, int)",
            "main",
        ],
        threads: 1,
        gdb_setup: &[],
    },
];

/// gdb's physical frames per thread: (tid, [(pc, name)]).
type GdbThreads = Vec<(u32, Vec<(u64, Option<String>)>)>;

const GDB_FRAMES_SCRIPT: &str = r#"
import gdb
gdb.execute("set pagination off")
gdb.execute("set backtrace past-main on")
for thread in gdb.selected_inferior().threads():
    thread.switch()
    print("THREAD %d" % thread.ptid[1])
    frame = gdb.newest_frame()
    while frame is not None:
        if frame.type() not in (gdb.INLINE_FRAME, gdb.TAILCALL_FRAME):
            print("FRAME %x %s" % (frame.pc(), frame.name() or "??"))
        frame = frame.older()
"#;

fn gdb_threads(directory: &Path, executable: &Path, core: &Path) -> GdbThreads {
    let script = directory.join("frames.py");
    std::fs::write(&script, GDB_FRAMES_SCRIPT).unwrap();
    let output = Command::new("gdb")
        .args(["-nx", "-batch", "-x"])
        .arg(&script)
        .arg(executable)
        .arg(core)
        .output()
        .expect("gdb runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut threads: GdbThreads = Vec::new();
    for line in stdout.lines() {
        if let Some(tid) = line.strip_prefix("THREAD ") {
            threads.push((tid.trim().parse().unwrap(), Vec::new()));
        } else if let Some(frame) = line.strip_prefix("FRAME ") {
            let (pc, name) = frame.split_once(' ').unwrap();
            let name = (name != "??").then(|| name.to_string());
            threads
                .last_mut()
                .expect("a THREAD line first")
                .1
                .push((u64::from_str_radix(pc, 16).unwrap(), name));
        }
    }
    assert!(
        !threads.is_empty(),
        "gdb printed no threads:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    threads
}

/// Compile `case`, crash it under gdb, return (executable, core).
fn make_core(case: &Case, directory: &Path) -> (PathBuf, PathBuf) {
    let extension = match case.compiler {
        "g++" => "cpp",
        "rustc" => "rs",
        _ => "c",
    };
    let source = directory.join(format!("{}.{extension}", case.name));
    std::fs::write(&source, case.source).unwrap();
    let executable = directory.join(case.name);
    let status = Command::new(case.compiler)
        .args(case.flags)
        .arg("-o")
        .arg(&executable)
        .arg(&source)
        .status()
        .expect("the compiler runs");
    assert!(
        status.success(),
        "{} failed on {}",
        case.compiler,
        case.name
    );
    let core = directory.join(format!("core.{}", case.name));
    let mut gdb = Command::new("gdb");
    gdb.args(["-nx", "-batch", "-ex", "set startup-with-shell off"]);
    for command in case.gdb_setup {
        gdb.arg("-ex").arg(command);
    }
    let output = gdb
        .args(["-ex", "run"])
        .arg("-ex")
        .arg(format!("generate-core-file {}", core.display()))
        .arg(&executable)
        .output()
        .expect("gdb runs");
    assert!(
        core.exists(),
        "gdb wrote no core for {}:\n{}\n{}",
        case.name,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (executable, core)
}

fn check_against_gdb(case: &Case) {
    let directory = tempfile::tempdir().unwrap();
    let (executable, core) = make_core(case, directory.path());
    let analysis = analyze_core(&core, &AnalyzeOptions::default()).unwrap();
    let problem = &analysis.problem;
    assert_eq!(problem.signal, Some(case.signal), "{}: signal", case.name);
    assert_eq!(problem.analysis_error, None, "{}", case.name);
    assert_eq!(
        problem.executable.as_deref(),
        Some(executable.to_str().unwrap()),
        "{}: executable",
        case.name
    );
    let ours = problem.threads.as_ref().unwrap();
    assert_eq!(ours.len(), case.threads, "{}: thread count", case.name);
    assert_eq!(ours.iter().filter(|thread| thread.crashed).count(), 1);

    let gdb = gdb_threads(directory.path(), &executable, &core);
    assert_eq!(gdb.len(), ours.len(), "{}: gdb's thread count", case.name);
    for (tid, gdb_frames) in &gdb {
        let thread = ours
            .iter()
            .find(|thread| thread.tid == *tid)
            .unwrap_or_else(|| panic!("{}: no thread {tid} in our analysis", case.name));
        let our_addresses: Vec<u64> = thread.frames.iter().filter_map(|f| f.address).collect();
        let gdb_addresses: Vec<u64> = gdb_frames.iter().map(|(pc, _)| *pc).collect();
        let common = our_addresses.len().min(gdb_addresses.len());
        let describe = || {
            format!(
                "{} thread {tid}\n ours: {:x?}\n  gdb: {:x?}\n frames: {:#?}",
                case.name, our_addresses, gdb_addresses, thread.frames
            )
        };
        assert_eq!(
            our_addresses[..common],
            gdb_addresses[..common],
            "{}",
            describe()
        );
        assert!(
            our_addresses.len().abs_diff(gdb_addresses.len()) <= 1,
            "{}",
            describe()
        );
        assert_eq!(thread.frames[0].found_by, Some(FrameSource::Context));
        for (frame, (_, gdb_name)) in thread.frames.iter().zip(gdb_frames) {
            assert!(frame.reliable, "{}", describe());
            // Inside the program itself the names must be gdb's (C++: gdb leaves the
            // parameter list out of a DWARF function's name).
            if frame.module.as_deref() == executable.to_str()
                && let Some(gdb_name) = gdb_name
            {
                let ours = frame.function.as_deref().unwrap_or("??");
                let ours_without_parameters = ours.split('(').next().unwrap_or(ours);
                assert!(
                    ours == gdb_name || ours_without_parameters == gdb_name,
                    "{}: {ours} is {gdb_name} for gdb\n{}",
                    case.name,
                    describe()
                );
            }
        }
    }

    // The crashing thread names the expected functions, in order.
    let names: Vec<&str> = problem
        .frames
        .iter()
        .filter_map(|frame| frame.function.as_deref())
        .collect();
    let mut position = 0;
    for expected in case.expected_functions {
        match names[position..].iter().position(|name| name == expected) {
            Some(found) => position += found + 1,
            None => panic!(
                "{}: {expected} missing (in order) from {names:?}",
                case.name
            ),
        }
    }
    assert!(
        problem.reason.contains(if case.signal == 11 {
            "SIGSEGV"
        } else {
            "SIGABRT"
        }),
        "{}",
        problem.reason
    );
    assert!(problem.signature.starts_with("v2:"));
    // Every mapped module found its build-id in the core and the same one on disk.
    for module in &analysis.modules {
        if module.path != "[vdso]" {
            assert_eq!(module.build_id_matches, Some(true), "{module:?}");
        }
    }
}

#[test]
fn frames_agree_with_gdb() {
    if tool_missing("gcc") || tool_missing("gdb") {
        return;
    }
    let have_cplusplus = !tool_missing("g++");
    for case in CASES {
        if case.compiler == "g++" && !have_cplusplus {
            continue;
        }
        check_against_gdb(case);
    }
}

#[test]
fn debug_info_gives_file_and_line() {
    if tool_missing("gcc") || tool_missing("gdb") {
        return;
    }
    let case = &CASES[1];
    let directory = tempfile::tempdir().unwrap();
    let (_, core) = make_core(case, directory.path());
    let analysis = analyze_core(&core, &AnalyzeOptions::default()).unwrap();
    let top = &analysis.problem.frames[0];
    assert_eq!(top.function.as_deref(), Some("leaf"));
    assert!(
        top.file
            .as_deref()
            .is_some_and(|file| file.ends_with("c_with_debug_info.c")),
        "{top:?}"
    );
    assert_eq!(top.line, Some(3), "{top:?}");
    assert_eq!(analysis.fault_address, Some(0));
    assert_eq!(analysis.problem.reason, "SIGSEGV in leaf at 0x0");
}

const TERMINATE_CPP: &str = r#"
#include <stdexcept>
__attribute__((noinline)) void load_table(int n) { if (n > 1) throw std::runtime_error("bad table"); }
__attribute__((noinline)) void open_store(int n) { load_table(n + 1); }
int main(int argc, char **) { open_store(argc); return 0; }
"#;

const STRLEN_NULL_C: &str = r#"
#include <string.h>
__attribute__((noinline)) size_t measure(const char *name) { return strlen(name); }
int main(int argc, char **argv) { return (int)measure(argc > 5 ? argv[0] : 0); }
"#;

const MANY_THREADS_ABORT_C: &str = r#"
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
static pthread_barrier_t barrier;
__attribute__((noinline)) void *worker(void *arg) { (void)arg; pthread_barrier_wait(&barrier); for (;;) pause(); return 0; }
__attribute__((noinline)) void give_up(void) { abort(); }
int main(void) {
    pthread_t threads[200];
    pthread_barrier_init(&barrier, 0, 201);
    for (int i = 0; i < 200; i++) pthread_create(&threads[i], 0, worker, 0);
    pthread_barrier_wait(&barrier);
    give_up();
    return 0;
}
"#;

const PANIC_ABORT_RS: &str = r#"
fn handler<F: Fn(u32) -> u32>(f: F, x: u32) -> u32 { f(x) }
#[inline(never)]
fn parse(v: &[u32]) -> u32 { handler(|i| v[i as usize], 7) }
fn main() { let v = vec![1, 2, 3]; println!("{}", parse(&v)); }
"#;

/// Crashes whose signature once depended on the debug packages installed.
const STABILITY_CASES: &[Case] = &[
    Case {
        name: "c_abort_stable",
        compiler: "gcc",
        flags: &["-O1", "-g"],
        source: ABORT_C,
        signal: 6,
        expected_functions: &["check_header", "parse", "main"],
        threads: 1,
        gdb_setup: &[],
    },
    Case {
        name: "cpp_terminate",
        compiler: "g++",
        flags: &["-O1", "-g"],
        source: TERMINATE_CPP,
        signal: 6,
        expected_functions: &["load_table(int)", "open_store(int)", "main"],
        threads: 1,
        gdb_setup: &[],
    },
    Case {
        name: "c_strlen_null",
        compiler: "gcc",
        flags: &["-O1", "-g"],
        source: STRLEN_NULL_C,
        signal: 11,
        expected_functions: &["measure", "main"],
        threads: 1,
        gdb_setup: &[],
    },
    Case {
        name: "c_200_threads_abort",
        compiler: "gcc",
        flags: &["-O1", "-g", "-pthread"],
        source: MANY_THREADS_ABORT_C,
        signal: 6,
        expected_functions: &["give_up", "main"],
        threads: 201,
        gdb_setup: &[],
    },
    Case {
        name: "rust_panic_abort",
        compiler: "rustc",
        flags: &["-g", "-C", "panic=abort"],
        source: PANIC_ABORT_RS,
        signal: 6,
        expected_functions: &["rust_panic_abort::parse", "rust_panic_abort::main"],
        threads: 1,
        gdb_setup: &[],
    },
];

#[test]
fn one_bug_has_one_signature_with_or_without_debug_files_and_for_a_stripped_copy() {
    if tool_missing("gcc")
        || tool_missing("g++")
        || tool_missing("gdb")
        || tool_missing("rustc")
        || libc_debug_file_missing()
    {
        return;
    }
    let with_debug_files = AnalyzeOptions::default();
    let without = AnalyzeOptions {
        debug_dirs: Vec::new(),
        ..AnalyzeOptions::default()
    };
    for case in STABILITY_CASES {
        let directory = tempfile::tempdir().unwrap();
        let (executable, core) = make_core(case, directory.path());
        let rich = analyze_core(&core, &with_debug_files).unwrap();
        let poor = analyze_core(&core, &without).unwrap();
        assert_eq!(rich.problem.signal, Some(case.signal), "{}", case.name);
        assert!(rich.problem.signature.starts_with("v2:"), "{}", case.name);
        // The debug files did change what the frames are called…
        let libc_names = |analysis: &crashmesh_coredump::CoreAnalysis| -> Vec<Option<String>> {
            analysis
                .problem
                .frames
                .iter()
                .filter(|frame| {
                    frame
                        .module
                        .as_deref()
                        .is_some_and(|m| m.contains("/libc.so"))
                })
                .map(|frame| frame.function.clone())
                .collect()
        };
        assert_ne!(
            libc_names(&rich),
            libc_names(&poor),
            "{}: libc6-dbg named nothing",
            case.name
        );
        // … and not the signature.
        assert_eq!(
            rich.problem.signature, poor.problem.signature,
            "{}: with and without separate debug files\n{:#?}\n{:#?}",
            case.name, rich.problem.frames, poor.problem.frames
        );
        // The program itself is in the signature: its own functions, not only machinery.
        let names: Vec<&str> = rich
            .problem
            .frames
            .iter()
            .filter_map(|frame| frame.function.as_deref())
            .collect();
        for expected in case.expected_functions {
            assert!(
                names.iter().any(|name| name.starts_with(expected)),
                "{}: {names:?}",
                case.name
            );
        }
        if case.compiler == "rustc" {
            // A stripped Rust program cannot tell its standard library's panic path from
            // its own code (docs/signatures.md): its copy is not compared.
            continue;
        }
        // A stripped copy of the same build where the program was.
        let status = Command::new("strip")
            .arg(&executable)
            .status()
            .expect("strip runs");
        assert!(status.success());
        let stripped = analyze_core(&core, &with_debug_files).unwrap();
        assert_eq!(
            stripped.problem.signature, rich.problem.signature,
            "{}: a stripped copy\n{:#?}",
            case.name, stripped.problem.frames
        );
    }
}

#[test]
fn rust_frames_are_named_as_gdb_names_them() {
    if tool_missing("rustc") || tool_missing("gdb") {
        return;
    }
    let case = STABILITY_CASES
        .iter()
        .find(|case| case.compiler == "rustc")
        .unwrap();
    let directory = tempfile::tempdir().unwrap();
    let (executable, core) = make_core(case, directory.path());
    let analysis = analyze_core(&core, &AnalyzeOptions::default()).unwrap();
    let gdb = gdb_threads(directory.path(), &executable, &core);
    let crashed = analysis
        .problem
        .threads
        .as_ref()
        .unwrap()
        .iter()
        .find(|thread| thread.crashed)
        .unwrap();
    let (_, gdb_frames) = gdb.iter().find(|(tid, _)| *tid == crashed.tid).unwrap();
    let program = executable.to_str().unwrap();
    let mut compared = 0;
    for frame in &crashed.frames {
        if frame.module.as_deref() != Some(program) {
            continue;
        }
        let Some((_, Some(gdb_name))) =
            gdb_frames.iter().find(|(pc, _)| Some(*pc) == frame.address)
        else {
            continue;
        };
        // The standard library's paths, generics and closures, as gdb prints them.
        assert_eq!(
            frame.function.as_deref(),
            Some(gdb_name.as_str()),
            "{frame:#?}"
        );
        compared += 1;
    }
    assert!(
        compared >= 10,
        "{compared} frames compared: {:#?}",
        crashed.frames
    );
}

#[test]
fn two_bugs_in_one_program_have_two_signatures() {
    if tool_missing("gcc") || tool_missing("gdb") {
        return;
    }
    // The same abort machinery, reached from two different functions of one program.
    let two_aborts = r#"
#include <stdlib.h>
__attribute__((noinline)) void check_a(int n) { if (n > 0) abort(); }
__attribute__((noinline)) void check_b(int n) { if (n > 0) abort(); }
int main(int argc, char **argv) { (void)argv; if (argc > 1) check_b(argc); check_a(argc); return 0; }
"#;
    let case = Case {
        name: "two_aborts",
        compiler: "gcc",
        flags: &["-O1", "-g"],
        source: two_aborts,
        signal: 6,
        expected_functions: &[],
        threads: 1,
        gdb_setup: &[],
    };
    let directory = tempfile::tempdir().unwrap();
    let (_, core_a) = make_core(&case, directory.path());
    let other = tempfile::tempdir().unwrap();
    let case_b = Case {
        gdb_setup: &["set args b"],
        ..case
    };
    let (_, core_b) = make_core(&case_b, other.path());
    let a = analyze_core(&core_a, &AnalyzeOptions::default()).unwrap();
    let b = analyze_core(&core_b, &AnalyzeOptions::default()).unwrap();
    assert_ne!(
        a.problem.signature, b.problem.signature,
        "{:#?}\n{:#?}",
        a.problem.frames, b.problem.frames
    );
}

/// gdb's source lines of the crashing thread: (pc, file name, line) for every frame,
/// inline ones included (a physical frame's line may be any of its inlined calls').
const GDB_LINES_SCRIPT: &str = r#"
import gdb
gdb.execute("set pagination off")
gdb.execute("set backtrace past-main on")
frame = gdb.newest_frame()
while frame is not None:
    sal = frame.find_sal()
    if sal.symtab is not None and sal.line > 0:
        print("LINE %x %s %d" % (frame.pc(), sal.symtab.filename, sal.line))
    frame = frame.older()
"#;

fn gdb_lines(directory: &Path, executable: &Path, core: &Path) -> Vec<(u64, String, u32)> {
    let script = directory.join("lines.py");
    std::fs::write(&script, GDB_LINES_SCRIPT).unwrap();
    let output = Command::new("gdb")
        .args(["-nx", "-batch", "-x"])
        .arg(&script)
        .arg(executable)
        .arg(core)
        .output()
        .expect("gdb runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("LINE ")?.split(' ');
            let pc = u64::from_str_radix(words.next()?, 16).ok()?;
            let file = words.next()?.to_string();
            let line = words.next()?.parse().ok()?;
            Some((pc, file, line))
        })
        .collect()
}

/// True when libc's separate debug file is installed (Debian's libc6-dbg), which `.ci/run`
/// installs; elsewhere the test says so and passes.
fn libc_debug_file_missing() -> bool {
    let found = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "libc6-dbg"])
        .output()
        .is_ok_and(|output| {
            String::from_utf8_lossy(&output.stdout).contains("install ok installed")
        });
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "libc6-dbg is not installed and CI is set: .ci/run installs it"
        );
        eprintln!("SKIPPED: libc6-dbg is not installed, so libc has no lines to compare");
    }
    !found
}

#[test]
fn libc_frames_carry_gdbs_file_and_line() {
    if tool_missing("gcc") || tool_missing("gdb") || libc_debug_file_missing() {
        return;
    }
    let case = &CASES[2];
    let directory = tempfile::tempdir().unwrap();
    let (executable, core) = make_core(case, directory.path());
    let analysis = analyze_core(&core, &AnalyzeOptions::default()).unwrap();
    let gdb = gdb_lines(directory.path(), &executable, &core);
    let libc_frames: Vec<_> = analysis
        .problem
        .frames
        .iter()
        .filter(|frame| {
            frame
                .module
                .as_deref()
                .is_some_and(|module| module.contains("/libc.so"))
        })
        .collect();
    assert!(libc_frames.len() >= 2, "{:#?}", analysis.problem.frames);
    for frame in &libc_frames {
        let (Some(file), Some(line)) = (frame.file.as_deref(), frame.line) else {
            panic!("a libc frame without file:line: {frame:#?}");
        };
        let address = frame.address.unwrap();
        let agrees = gdb.iter().any(|(pc, gdb_file, gdb_line)| {
            *pc == address && *gdb_line == line && file.ends_with(gdb_file.trim_start_matches("./"))
        });
        assert!(
            agrees,
            "{:?} at {address:#x}: ours {file}:{line}, gdb's {:?}",
            frame.function,
            gdb.iter()
                .filter(|(pc, ..)| *pc == address)
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn a_replaced_executable_is_not_used_for_symbols() {
    if tool_missing("gcc") || tool_missing("gdb") {
        return;
    }
    let case = &CASES[0];
    let directory = tempfile::tempdir().unwrap();
    let (executable, core) = make_core(case, directory.path());
    // Rebuild the program with other code: a different build-id at the same path.
    let source = directory.path().join("other.c");
    std::fs::write(&source, "int main(void) { return 7; }\n").unwrap();
    let status = Command::new("gcc")
        .arg("-o")
        .arg(&executable)
        .arg(&source)
        .status()
        .unwrap();
    assert!(status.success());
    let analysis = analyze_core(&core, &AnalyzeOptions::default()).unwrap();
    let module = analysis
        .modules
        .iter()
        .find(|module| module.path == executable.to_str().unwrap())
        .unwrap();
    assert_eq!(module.build_id_matches, Some(false), "{module:?}");
    assert!(!module.file_used);
    let top = &analysis.problem.frames[0];
    assert_eq!(top.function, None, "{top:?}");
    assert_eq!(top.build_id, module.build_id);
    assert!(top.offset.is_some());
}

#[test]
fn truncated_and_mutated_cores_never_panic() {
    if tool_missing("gcc") || tool_missing("gdb") {
        return;
    }
    let case = &CASES[3];
    let directory = tempfile::tempdir().unwrap();
    let (_, core) = make_core(case, directory.path());
    let bytes = std::fs::read(&core).unwrap();
    let in_memory_only = AnalyzeOptions {
        read_module_files: false,
        ..AnalyzeOptions::default()
    };
    let with_files = AnalyzeOptions::default();

    // Truncated at many lengths, including inside the headers and the notes.
    let mut lengths: Vec<usize> = (0..4096).step_by(7).collect();
    lengths.extend((4096..bytes.len()).step_by(bytes.len() / 200 + 1));
    for (index, length) in lengths.into_iter().enumerate() {
        let options = if index % 10 == 0 {
            &with_files
        } else {
            &in_memory_only
        };
        let _ = analyze_core_bytes(&bytes[..length], options);
    }

    // Bytes flipped in the ELF header, the program headers and the notes.
    let note_start = note_segment_start(&bytes);
    let mut positions: Vec<usize> = (0..64 + 56 * 4).collect();
    positions.extend((note_start..(note_start + 8192).min(bytes.len())).step_by(3));
    let mut mutated = bytes.clone();
    for (index, position) in positions.into_iter().enumerate() {
        for value in [0x00u8, 0xff, 0x7f] {
            let original = mutated[position];
            mutated[position] = value;
            let options = if index % 16 == 0 {
                &with_files
            } else {
                &in_memory_only
            };
            if let Ok(analysis) = analyze_core_bytes(&mutated, options) {
                let threads = analysis.problem.threads.unwrap_or_default();
                assert!(threads.len() <= crashmesh_coredump::notes::CORE_THREADS_MAX);
            }
            mutated[position] = original;
        }
    }

    // Garbage after a valid header.
    let mut garbage = bytes[..64].to_vec();
    garbage.extend((0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    let _ = analyze_core_bytes(&garbage, &in_memory_only);
}

fn note_segment_start(core: &[u8]) -> usize {
    let table = u64::from_le_bytes(core[32..40].try_into().unwrap()) as usize;
    let count = u16::from_le_bytes(core[56..58].try_into().unwrap()) as usize;
    (0..count)
        .map(|index| table + index * 56)
        .find(|&header| u32::from_le_bytes(core[header..header + 4].try_into().unwrap()) == 4)
        .map(|header| {
            u64::from_le_bytes(core[header + 8..header + 16].try_into().unwrap()) as usize
        })
        .unwrap()
}

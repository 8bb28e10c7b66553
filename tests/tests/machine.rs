//! End-to-end: the real hook through the real kernel's core_pattern, real programs
//! crashing, the real daemon, gdb as the reference for frames.
//!
//! These tests change machine-wide state (core_pattern, core_pipe_limit): they need root,
//! run one at a time (.config/nextest.toml) and restore the settings even when they fail
//! (`KernelCoreSettings` puts them back on drop).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crashmesh_tests::*;
use serde_json::Value;

const CRASHY_C: &str = r#"
#include <string.h>
__attribute__((noinline)) int leaf(volatile int *p, int n) { int s = 0; for (int i = 0; i < n; i++) s += p[i]; *(volatile int *)0 = s; return s; }
__attribute__((noinline)) int middle(int n) { int buf[16]; memset(buf, 1, sizeof buf); return leaf(buf, n) + 1; }
__attribute__((noinline)) int outer(int n) { return middle(n * 2) + 2; }
int main(int argc, char **argv) { (void)argv; return outer(argc + 3); }
"#;

fn spool_entries(node: &NodeDir) -> usize {
    std::fs::read_dir(node.data_dir.join("spool/new"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

fn problems(node: &NodeDir) -> Vec<Value> {
    node.json(&["problems", "list"])["problems"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn problem_of<'a>(problems: &'a [Value], executable: &Path) -> &'a Value {
    let executable = executable
        .canonicalize()
        .unwrap_or_else(|_| executable.to_path_buf());
    problems
        .iter()
        .find(|problem| problem["executable"].as_str().map(Path::new) == Some(executable.as_path()))
        .unwrap_or_else(|| panic!("no problem for {}: {problems:#?}", executable.display()))
}

/// Our frames against gdb's physical frames on the same (exported) core.
fn assert_frames_agree_with_gdb(
    node: &NodeDir,
    problem_id: &str,
    executable: &Path,
    scratch: &Path,
) -> Vec<(u64, Option<String>)> {
    let core = scratch.join(format!("{problem_id}.core"));
    node.run(&[
        "problems",
        "core",
        problem_id,
        "--out",
        core.to_str().unwrap(),
    ]);
    let detail = node.json(&["problems", "show", problem_id]);
    let ours = json_frames(&detail["problem"]);
    let gdb = gdb_frames(executable, &core);
    assert!(!gdb.is_empty(), "gdb found no frames in {}", core.display());
    let common = ours.len().min(gdb.len());
    for index in 0..common {
        assert_eq!(
            ours[index].0,
            gdb[index].pc,
            "frame #{index} of {}: ours {:#x} {:?}, gdb {:#x} {:?}\nours: {ours:x?}\ngdb: {gdb:x?}",
            executable.display(),
            ours[index].0,
            ours[index].1,
            gdb[index].pc,
            gdb[index].function
        );
    }
    assert!(
        ours.len().abs_diff(gdb.len()) <= 1,
        "frame counts differ: ours {ours:x?}, gdb {gdb:x?}"
    );
    ours
}

fn python3() -> PathBuf {
    let output = Command::new("python3")
        .args([
            "-c",
            "import sys, os; print(os.path.realpath(sys.executable))",
        ])
        .output()
        .expect("python3");
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

#[test]
fn real_crashes_through_core_pattern_become_problems_with_gdbs_frames() {
    let kernel = KernelCoreSettings::save();
    let node = NodeDir::new("[node]\nname = \"e2e\"\n[capture]\nrepeat_window_secs = 0\n");
    let scratch = tempfile::tempdir().unwrap();
    let crashy = compile_c(
        scratch.path(),
        "crashy",
        CRASHY_C,
        &["-O2", "-fomit-frame-pointer", "-g"],
    );

    let installed = node.json(&["install"]);
    assert_eq!(installed["changes"][0]["changed"], true, "{installed}");
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    assert!(
        pattern.starts_with('|') && pattern.contains("crashmesh hook core"),
        "{pattern}"
    );
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/core_pipe_limit")
            .unwrap()
            .trim(),
        "0"
    );

    // The daemon is down: the hook alone must leave complete entries.
    assert_eq!(crash(&mut Command::new(&crashy)), libc::SIGSEGV);
    assert_eq!(crash(&mut Command::new(&crashy)), libc::SIGSEGV);
    assert_eq!(
        crash(Command::new("python3").args(["-c", "import ctypes; ctypes.string_at(0)"])),
        libc::SIGSEGV
    );
    assert_eq!(
        crash(Command::new("python3").args(["-c", "import os; os.abort()"])),
        libc::SIGABRT
    );
    let mut sleeper = Command::new("sleep");
    sleeper.arg("60");
    let sleeper_pid = {
        use std::os::unix::process::CommandExt;
        unsafe {
            sleeper.pre_exec(|| {
                let unlimited = libc::rlimit {
                    rlim_cur: libc::RLIM_INFINITY,
                    rlim_max: libc::RLIM_INFINITY,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &unlimited);
                Ok(())
            });
        }
        let mut child = sleeper.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        unsafe { libc::kill(child.id() as i32, libc::SIGSEGV) };
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGSEGV));
        child.id()
    };
    assert_eq!(
        crash(Command::new("bash").args(["-c", "kill -ABRT $$"])),
        libc::SIGABRT
    );

    assert!(
        wait_until(Duration::from_secs(20), || spool_entries(&node) >= 6),
        "only {} spool entries",
        spool_entries(&node)
    );
    let restored = node.json(&["uninstall"]);
    assert_eq!(restored["changes"][0]["changed"], true, "{restored}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern")
            .unwrap()
            .trim_end(),
        kernel.core_pattern()
    );

    // The daemon indexes everything it finds.
    node.run(&["node", "run", "--once"]);
    assert_eq!(spool_entries(&node), 0);
    let listed = problems(&node);

    let crashy_problem = problem_of(&listed, &crashy);
    assert_eq!(
        crashy_problem["count"], 2,
        "two alike crashes make one problem: {crashy_problem}"
    );
    assert_eq!(crashy_problem["crash_function"], "leaf");
    assert_eq!(crashy_problem["kind"], "core");
    let ours = assert_frames_agree_with_gdb(
        &node,
        crashy_problem["id"].as_str().unwrap(),
        &crashy,
        scratch.path(),
    );
    let names: Vec<_> = ours
        .iter()
        .take(4)
        .map(|(_, name)| name.clone().unwrap_or_default())
        .collect();
    assert_eq!(names, ["leaf", "middle", "outer", "main"]);

    let python = python3();
    let python_problems: Vec<&Value> = listed
        .iter()
        .filter(|problem| problem["executable"].as_str().map(Path::new) == Some(python.as_path()))
        .collect();
    assert_eq!(
        python_problems.len(),
        2,
        "ctypes crash and abort are two problems: {listed:#?}"
    );
    for problem in python_problems {
        assert_frames_agree_with_gdb(
            &node,
            problem["id"].as_str().unwrap(),
            &python,
            scratch.path(),
        );
    }

    let sleep_path = which("sleep");
    let sleep_problem = problem_of(&listed, &sleep_path);
    let detail = node.json(&["problems", "show", sleep_problem["id"].as_str().unwrap()]);
    assert_eq!(detail["incidents"][0]["pid"], sleeper_pid);
    assert_frames_agree_with_gdb(
        &node,
        sleep_problem["id"].as_str().unwrap(),
        &sleep_path,
        scratch.path(),
    );

    let bash_path = which("bash");
    let bash_problem = problem_of(&listed, &bash_path);
    assert_eq!(
        node.json(&["problems", "show", bash_problem["id"].as_str().unwrap()])["problem"]["signal"],
        libc::SIGABRT
    );
    assert_frames_agree_with_gdb(
        &node,
        bash_problem["id"].as_str().unwrap(),
        &bash_path,
        scratch.path(),
    );

    // The /proc snapshot came along with every incident.
    let attachments = &detail["incidents"][0]["attachments"];
    for name in [
        "proc/maps",
        "proc/environ",
        "proc/cmdline",
        "proc/links.json",
    ] {
        assert!(
            attachments
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["name"] == name),
            "{name} missing: {attachments}"
        );
    }
    let check = node.command(&["store", "check"]).output().unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

fn which(program: &str) -> PathBuf {
    let output = Command::new("bash")
        .args(["-c", &format!("readlink -f \"$(command -v {program})\"")])
        .output()
        .unwrap();
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

#[test]
fn a_crash_loop_counts_without_new_cores_and_the_live_daemon_sees_it() {
    let _kernel = KernelCoreSettings::save();
    let node = NodeDir::new("[node]\nname = \"loop\"\n[capture]\nrepeat_window_secs = 60\n");
    let scratch = tempfile::tempdir().unwrap();
    let crashy = compile_c(scratch.path(), "looping", CRASHY_C, &["-O2", "-g"]);
    node.run(&["install"]);
    let _daemon = node.start_daemon();
    for _ in 0..3 {
        assert_eq!(crash(&mut Command::new(&crashy)), libc::SIGSEGV);
    }
    let seen = wait_until(Duration::from_secs(30), || {
        node.command(&["problems", "list", "--json"])
            .output()
            .ok()
            .and_then(|output| serde_json::from_slice::<Value>(&output.stdout).ok())
            .and_then(|listed| {
                listed["problems"]
                    .as_array()?
                    .iter()
                    .find(|p| p["crash_function"] == "leaf")
                    .map(|p| p["count"] == 3)
            })
            .unwrap_or(false)
    });
    node.run(&["uninstall"]);
    assert!(
        seen,
        "the loop's three crashes were not counted as one problem: {}\n{}",
        String::from_utf8_lossy(&node.command(&["problems", "list"]).output().unwrap().stdout),
        node.daemon_log()
    );
    let listed = problems(&node);
    let looping = problem_of(&listed, &crashy);
    let detail = node.json(&["problems", "show", looping["id"].as_str().unwrap()]);
    let cores: Vec<_> = detail["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|incident| !incident["core"].is_null())
        .collect();
    assert_eq!(
        cores.len(),
        1,
        "inside the repeat window only the count grows: {detail:#}"
    );
}

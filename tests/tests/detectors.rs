//! End-to-end: the file-based detectors (kdump/pstore harvest, hs_err files, libvirt
//! logs) in the real daemon, every path pointed at temporary directories, and the offline
//! `crashmesh analyze oops|python|hs-err` on real texts. Nothing here touches
//! machine-wide state.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crashmesh_tests::*;
use serde_json::Value;

const CORPUS: &str = "parsers/tests/corpus/kernel/abrt-examples";

fn corpus(name: &str) -> PathBuf {
    workspace_root().join(CORPUS).join(name)
}

fn corpus_text(name: &str) -> String {
    std::fs::read_to_string(corpus(name)).expect("corpus file")
}

/// Where a test's detectors look, all inside the node's temporary directory.
struct Watched {
    crash: PathBuf,
    pstore: PathBuf,
    java: PathBuf,
    libvirt: PathBuf,
}

/// A node whose detectors look only at its own temporary directories (the kernel log
/// detector is off: it reads the machine's real /dev/kmsg).
fn node_with_watched_dirs() -> (NodeDir, Watched) {
    let node = NodeDir::new("");
    let root = node.root.path();
    let watched = Watched {
        crash: root.join("crash"),
        pstore: root.join("pstore"),
        java: root.join("java"),
        libvirt: root.join("libvirt"),
    };
    for dir in [
        &watched.crash,
        &watched.pstore,
        &watched.java,
        &watched.libvirt,
    ] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let config = format!(
        r#"
[node]
name = "detectors"
[store]
keep_free_percent = 0
[detect.kmsg]
enabled = false
[detect.kdump]
dirs = ["{crash}"]
[detect.pstore]
dirs = ["{pstore}"]
[detect.hs_err]
dirs = ["{java}"]
poll_interval_ms = 200
[detect.vm_guest]
globs = ["{libvirt}/*.log"]
poll_interval_ms = 200
quiet_ms = 300
"#,
        crash = watched.crash.display(),
        pstore = watched.pstore.display(),
        java = watched.java.display(),
        libvirt = watched.libvirt.display(),
    );
    std::fs::write(&node.config, config).unwrap();
    (node, watched)
}

fn problems(node: &NodeDir) -> Vec<Value> {
    node.try_problems().unwrap_or_default()
}

trait TryProblems {
    fn try_problems(&self) -> Option<Vec<Value>>;
}

impl TryProblems for NodeDir {
    /// `problems list`, or `None` while the daemon cannot answer yet.
    fn try_problems(&self) -> Option<Vec<Value>> {
        let output = self
            .command(&["problems", "list", "--json"])
            .output()
            .ok()?;
        if !output.status.success() {
            return None;
        }
        let value: Value = serde_json::from_slice(&output.stdout).ok()?;
        value["problems"].as_array().cloned()
    }
}

fn wait_for_problem(node: &NodeDir, kind: &str, timeout: Duration) -> Value {
    let mut found = None;
    let appeared = wait_until(timeout, || {
        found = problems(node)
            .into_iter()
            .find(|problem| problem["kind"] == kind);
        found.is_some()
    });
    assert!(
        appeared,
        "no {kind} problem within {timeout:?}: {:#?}\ndaemon log:\n{}",
        problems(node),
        node.daemon_log()
    );
    found.unwrap()
}

fn wait_for_log(node: &NodeDir, needle: &str) {
    assert!(
        wait_until(Duration::from_secs(20), || node
            .daemon_log()
            .contains(needle)),
        "the daemon never logged {needle:?}:\n{}",
        node.daemon_log()
    );
}

#[test]
fn a_kdump_crash_present_at_start_is_one_kernel_panic_across_restarts() {
    let (node, watched) = node_with_watched_dirs();
    let crash = watched.crash.join("127.0.0.1-2024-01-01-10:00:00");
    std::fs::create_dir(&crash).unwrap();
    let log = format!(
        "[    0.000000] Linux version 3.10.0-327.28.2.el7.x86_64 (mockbuild@example) #1 SMP\n{}{}[   72.000000] Kernel panic - not syncing: Fatal exception\n",
        corpus_text("1_oops.test"),
        corpus_text("debug_messages.test"),
    );
    std::fs::write(crash.join("vmcore-dmesg.txt"), &log).unwrap();
    std::fs::write(crash.join("vmcore"), vec![0x5a; 256 * 1024]).unwrap();

    let mut daemon = node.start_daemon();
    let problem = wait_for_problem(&node, "kernel_panic", Duration::from_secs(20));
    assert_eq!(
        problem["reason"],
        "BUG: unable to handle kernel NULL pointer dereference at virtual address 00000008"
    );
    assert_eq!(problem["crash_function"], "acpi_ns_internalize_name");
    let id = problem["id"].as_str().unwrap().to_string();
    let detail = node.json(&["problems", "show", &id]);
    assert_eq!(detail["problem"]["kind"], "kernel_panic");
    assert_eq!(
        detail["problem"]["frames"][1]["function"],
        "__sysfs_new_dirent"
    );
    let attachments: Vec<&str> = detail["incidents"][0]["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|evidence| evidence["name"].as_str().unwrap())
        .collect();
    assert!(
        attachments.contains(&"vmcore-dmesg.txt") && attachments.contains(&"vmcore.json"),
        "{attachments:?}"
    );
    assert!(!attachments.contains(&"vmcore"), "never copied by default");
    daemon.kill();

    // Two restarts: each harvests again and finds it known.
    for _ in 0..2 {
        let _daemon = node.start_daemon();
        wait_for_log(&node, "harvested kernel crashes of earlier boots");
        assert!(
            node.daemon_log().contains("known: 1"),
            "{}",
            node.daemon_log()
        );
        // The harvest spools before it logs: anything (wrongly) spooled is recorded once
        // the spool is empty.
        node.wait_for_empty_spool();
        let all = problems(&node);
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(all[0]["count"], 1, "{all:#?}");
    }
}

#[test]
fn pstore_records_present_at_start_become_a_kernel_panic() {
    let (node, watched) = node_with_watched_dirs();
    let log = corpus_text("kernel_panic_oom.test");
    let lines: Vec<&str> = log.lines().collect();
    let half = lines.len() / 2;
    // Part 1 holds the end of the log.
    std::fs::write(
        watched.pstore.join("dmesg-ramoops-0"),
        format!("Panic#1 Part1\n{}\n", lines[half..].join("\n")),
    )
    .unwrap();
    std::fs::write(
        watched.pstore.join("dmesg-ramoops-1"),
        format!("Panic#1 Part2\n{}\n", lines[..half].join("\n")),
    )
    .unwrap();
    let _daemon = node.start_daemon();
    let problem = wait_for_problem(&node, "kernel_panic", Duration::from_secs(20));
    assert_eq!(
        problem["reason"],
        "Kernel panic - not syncing: Out of memory: system-wide panic_on_oom is enabled"
    );
    assert_eq!(problem["crash_function"], "dump_stack");
}

const HS_ERR: &str = r#"#
# A fatal error has been detected by the Java Runtime Environment:
#
#  SIGSEGV (0xb) at pc=0x00007f3b8c4a1b2e, pid=12345, tid=12346
#
# JRE version: OpenJDK Runtime Environment (17.0.9+9) (build 17.0.9+9-Ubuntu-122.04)
# Java VM: OpenJDK 64-Bit Server VM (17.0.9+9-Ubuntu-122.04, mixed mode, sharing, tiered, compressed oops, compressed class ptrs, g1 gc, linux-amd64)
# Problematic frame:
# C  [libc.so.6+0x1a1b2e]  __memmove_avx_unaligned_erms+0x6e
#

---------------  S U M M A R Y ------------

Command Line: -Xmx1g -XX:+UseG1GC com.example.storage.Main --config /etc/app.conf

---------------  T H R E A D  ---------------

Native frames: (J=compiled Java code, j=interpreted, Vv=VM code, C=native code)
C  [libc.so.6+0x1a1b2e]  __memmove_avx_unaligned_erms+0x6e
C  [libstoragejni.so+0x1139]  Java_com_example_storage_Native_copy+0x39
j  com.example.storage.Native.copy([BJI)V+0
j  com.example.storage.Main.run()V+15
j  com.example.storage.Main.main([Ljava/lang/String;)V+9
v  ~StubRoutines::call_stub

Java frames: (J=compiled Java code, j=interpreted, Vv=VM code)
j  com.example.storage.Native.copy([BJI)V+0
j  com.example.storage.Main.run()V+15
j  com.example.storage.Main.main([Ljava/lang/String;)V+9

END.
"#;

#[test]
fn an_hs_err_file_dropped_into_a_watched_dir_is_a_java_problem() {
    let (node, watched) = node_with_watched_dirs();
    let _daemon = node.start_daemon();
    wait_for_log(&node, "crashmesh node running");
    // Written in two steps, as the JVM does; END. closes it.
    // Written in two steps by a live process (this test plays the JVM): the head alone
    // is not reported; HotSpot's closing END. line completes the file.
    let pid = std::process::id();
    let text = HS_ERR.replace("pid=12345", &format!("pid={pid}"));
    let path = watched.java.join(format!("hs_err_pid{pid}.log"));
    let (head, tail) = text.split_at(text.find("---------------  T H R E A D").unwrap());
    std::fs::write(&path, head).unwrap();
    node.wait_for_fresh_polls("hs_err");
    assert!(
        problems(&node).is_empty(),
        "reported before it was complete"
    );
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(tail.as_bytes()).unwrap();
    }
    let problem = wait_for_problem(&node, "java", Duration::from_secs(20));
    assert_eq!(
        problem["reason"],
        "SIGSEGV in __memmove_avx_unaligned_erms (libc.so.6)"
    );
    assert_eq!(problem["crash_function"], "__memmove_avx_unaligned_erms");
    let id = problem["id"].as_str().unwrap().to_string();
    let detail = node.json(&["problems", "show", &id]);
    let frames = detail["problem"]["frames"].as_array().unwrap();
    assert_eq!(frames[0]["module"], "libc.so.6");
    assert!(
        frames.iter().any(
            |frame| frame["function"] == "com.example.storage.Main.run()V"
                || frame["function"]
                    .as_str()
                    .is_some_and(|f| f.contains("com.example.storage.Main.run"))
        ),
        "{frames:#?}"
    );
    let incident = &detail["incidents"][0];
    assert_eq!(incident["pid"], pid);
    let name = format!("hs_err_pid{pid}.log");
    assert!(
        incident["attachments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|evidence| evidence["name"] == name.as_str()),
        "{incident:#?}"
    );
    // Only once, however long it stays there.
    node.wait_for_fresh_polls("hs_err");
    let all = problems(&node);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0]["count"], 1);
}

#[test]
fn a_guest_panic_appended_to_a_libvirt_log_is_a_vm_guest_panic_naming_the_domain() {
    let (node, watched) = node_with_watched_dirs();
    let log = watched.libvirt.join("win2019.log");
    // History from before the daemon: an old panic that must not be reported.
    std::fs::write(
        &log,
        "2024-01-01 08:00:00.000+0000: starting up libvirt version: 8.0.0, qemu version: 6.2.0Debian 1:6.2+dfsg-2ubuntu6.15, hostname: node3\n\
2024-01-01 09:00:00.000+0000: panic hyper-v: arg1='0x50', arg2='0x0', arg3='0x0', arg4='0x0', arg5='0x0'\n",
    )
    .unwrap();
    let _daemon = node.start_daemon();
    assert!(
        wait_until(Duration::from_secs(20), || node
            .data_dir
            .join("vm-guest-logs.json")
            .exists()),
        "the VM log detector never started: {}",
        node.daemon_log()
    );
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        file.write_all(
            b"2024-02-01 08:00:00.123+0000: starting up libvirt version: 8.0.0, qemu version: 6.2.0Debian 1:6.2+dfsg-2ubuntu6.15, hostname: node3\n\
LC_ALL=C PATH=/usr/bin /usr/bin/qemu-system-x86_64 -name guest=win2019 -device pvpanic,ioport=1285\n\
2024-02-01 09:13:37.456+0000: panic hyper-v: arg1='0x3b', arg2='0xc0000005', arg3='0xfffff80371a1b2c3', arg4='0xffffd0818e2fe920', arg5='0x0'\n\
2024-02-01 09:13:38.001+0000: shutting down, reason=crashed\n",
        )
        .unwrap();
    }
    let problem = wait_for_problem(&node, "vm_guest_panic", Duration::from_secs(20));
    assert_eq!(
        problem["reason"],
        "guest panicked: hyper-v bugcheck 0x3b (0xc0000005)"
    );
    assert_eq!(problem["executable"], "/usr/bin/qemu-system-x86_64");
    let id = problem["id"].as_str().unwrap().to_string();
    let detail = node.json(&["problems", "show", &id]);
    assert_eq!(detail["problem"]["process"], "win2019", "the domain");
    node.wait_for_fresh_polls("vm_guest");
    let all = problems(&node);
    assert_eq!(
        all.len(),
        1,
        "the old panic and the crash shutdown are not new: {all:#?}"
    );
    assert_eq!(all[0]["count"], 1);
}

/// `crashmesh analyze KIND FILE --json`, with no daemon and no data dir needed.
fn analyze(kind: &str, file: &Path) -> Vec<Value> {
    let node = NodeDir::new("");
    let output = node.json(&["analyze", kind, file.to_str().unwrap()]);
    let object = output.as_object().expect("a JSON object");
    assert_eq!(object.keys().collect::<Vec<_>>(), ["problems"]);
    output["problems"].as_array().unwrap().clone()
}

/// Every frame has the documented fields, with the documented types.
fn assert_frame_fields(problem: &Value) {
    for frame in problem["frames"].as_array().unwrap() {
        let address = &frame["address"];
        assert!(
            address.is_null()
                || address.as_str().is_some_and(
                    |a| a.starts_with("0x") && u64::from_str_radix(&a[2..], 16).is_ok()
                ),
            "{frame}"
        );
        for key in ["function", "module", "build_id", "file"] {
            assert!(
                frame[key].is_null() || frame[key].is_string(),
                "{key}: {frame}"
            );
        }
        for key in ["offset", "line"] {
            assert!(
                frame[key].is_null() || frame[key].is_u64(),
                "{key}: {frame}"
            );
        }
        assert!(frame["reliable"].is_boolean(), "{frame}");
    }
}

#[test]
fn analyze_oops_prints_frames_taint_flags_and_version() {
    let problems = analyze("oops", &corpus("debug_messages.test"));
    assert_eq!(problems.len(), 1);
    let oops = &problems[0];
    assert_frame_fields(oops);
    assert_eq!(oops["kind"], "kernel_oops");
    assert!(oops["signature"].as_str().unwrap().starts_with("v1:"));
    assert_eq!(oops["version"], "3.10.0-327.28.2.el7.x86_64");
    assert_eq!(oops["taint_flags"], serde_json::json!([]), "Not tainted");
    assert_eq!(oops["modules"][0], "thinkpad_acpi");
    // Frame 0 is the faulting instruction (EIP), then every trace frame, modules named.
    assert_eq!(oops["frames"][0]["function"], "acpi_ns_internalize_name");
    assert_eq!(oops["frames"][0]["address"], "0xc022a7b5");
    assert_eq!(oops["frames"][1]["address"], "0xc01c4390");
    assert_eq!(oops["frames"][1]["offset"], 0x20);
    assert_eq!(oops["frames"].as_array().unwrap().len(), 13);
    assert_eq!(oops["frames"][5]["function"], "drv_acpi_handle_init");
    assert_eq!(oops["frames"][5]["module"], "thinkpad_acpi");

    // Taint flags: only those set.
    let tainted = analyze("oops", &corpus("koops-tainted-bg1"));
    assert_eq!(tainted[0]["taint_flags"], serde_json::json!(["B"]));
    assert_eq!(tainted[0]["version"], "2.6.38.6-27.fc15.i686");

    // Unreliable (`?`) frames are listed and marked.
    let warning = analyze("oops", &corpus("oops5.test"));
    assert_frame_fields(&warning[0]);
    let frames = warning[0]["frames"].as_array().unwrap();
    assert!(frames.iter().any(|frame| frame["reliable"] == false));
    assert!(frames.iter().any(|frame| frame["reliable"] == true));

    // Many problems in one file, in order.
    let many = analyze("oops", &corpus("10_oopses.test"));
    assert_eq!(many.len(), 10);
    for problem in &many {
        assert_frame_fields(problem);
    }
    // Nothing in a file without problems.
    assert!(analyze("oops", &corpus("no_oops.test")).is_empty());
}

#[test]
fn analyze_python_reads_a_chained_traceback() {
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("traceback.txt");
    std::fs::write(
        &file,
        r#"Traceback (most recent call last):
  File "/opt/csd/replica.py", line 10, in fetch
    return self.peers[name]
           ~~~~~~~~~~^^^^^^
KeyError: 'osd.3'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/opt/csd/main.py", line 30, in <module>
    main()
  File "/opt/csd/main.py", line 25, in main
    replica.fetch("osd.3")
  File "/opt/csd/replica.py", line 12, in fetch
    raise ReplicaLost(name) from None
csd.errors.ReplicaLost: osd.3
"#,
    )
    .unwrap();
    let problems = analyze("python", &file);
    assert_eq!(problems.len(), 1, "one uncaught exception: {problems:#?}");
    let problem = &problems[0];
    assert_frame_fields(problem);
    assert_eq!(problem["kind"], "python");
    assert_eq!(problem["exception_type"], "csd.errors.ReplicaLost");
    assert_eq!(problem["message"], "osd.3");
    let frames = problem["frames"].as_array().unwrap();
    // Top first: the innermost frame of the exception that escaped.
    assert_eq!(frames[0]["function"], "fetch");
    assert_eq!(frames[0]["file"], "/opt/csd/replica.py");
    assert_eq!(frames[0]["line"], 12);
    assert_eq!(frames.last().unwrap()["function"], "<module>");
    // The chained exception is kept in the problem's text.
    assert!(
        problem["text"]
            .as_str()
            .unwrap()
            .contains("KeyError: 'osd.3'")
    );
}

#[test]
fn analyze_hs_err_prints_the_problematic_frame_and_the_java_frames() {
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("hs_err_pid12345.log");
    std::fs::write(&file, HS_ERR).unwrap();
    let problems = analyze("hs-err", &file);
    assert_eq!(problems.len(), 1);
    let problem = &problems[0];
    assert_frame_fields(problem);
    assert_eq!(problem["kind"], "java");
    assert_eq!(problem["signal"], 11);
    assert_eq!(problem["exception_type"], "SIGSEGV");
    assert_eq!(
        problem["frames"][0]["function"],
        "__memmove_avx_unaligned_erms"
    );
    assert_eq!(problem["frames"][0]["module"], "libc.so.6");
    assert!(
        problem["frames"]
            .as_array()
            .unwrap()
            .iter()
            .any(|frame| frame["function"]
                .as_str()
                .is_some_and(|f| f.contains("com.example.storage.Main.main"))),
        "{problem:#?}"
    );
    // Not an hs_err file: no problem, no failure.
    let other = scratch.path().join("other.log");
    std::fs::write(&other, "hello\n").unwrap();
    assert!(analyze("hs-err", &other).is_empty());
}

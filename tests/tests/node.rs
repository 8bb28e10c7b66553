//! End-to-end tests of one node that need no machine-wide state: spool entries made as
//! the hooks make them, the real daemon, the real CLI.

use std::time::Duration;

use crashmesh_tests::*;
use serde_json::Value;

fn iso(ms: u64) -> String {
    let secs = ms / 1000;
    let output = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn logs_around_a_problem_are_gathered_and_events_run_with_their_output_kept() {
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("csd.log");
    let now = now_ms();
    std::fs::write(
        &log,
        format!(
            "{} csd[7]: long before, cut\n{} csd[7]: replica 3 ERROR lost\n  detail line without time\n{} csd[7]: just before\n",
            iso(now - 3_600_000),
            iso(now - 60_000),
            iso(now - 1_000)
        ),
    )
    .unwrap();
    let marker = scratch.path().join("event-ran");
    let config = format!(
        r#"
[node]
name = "n1"
[detect.kmsg]
enabled = false
[gather]
after_secs = 1
[[gather.rules]]
kinds = ["python"]
files = ["{log}"]
[[events]]
on = "problem_created"
command = ["sh", "-c", "echo created $CRASHMESH_KIND $CRASHMESH_COUNT > {marker}; grep -o replica $CRASHMESH_PROBLEM_JSON | head -1; echo failing >&2; exit 7"]
timeout_secs = 10
"#,
        log = log.display(),
        marker = marker.display()
    );
    let node = NodeDir::new(&config);
    spool_python_entry(&node, &format!("{now:013}-4242-aaaa"), now);
    let _daemon = node.start_daemon();

    let mut detail = Value::Null;
    let complete = wait_until(Duration::from_secs(30), || {
        let Ok(output) = node.command(&["problems", "list", "--json"]).output() else {
            return false;
        };
        let Ok(listed) = serde_json::from_slice::<Value>(&output.stdout) else {
            return false;
        };
        let Some(id) = listed["problems"][0]["id"].as_str() else {
            return false;
        };
        let Ok(output) = node.command(&["problems", "show", id, "--json"]).output() else {
            return false;
        };
        detail = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        let names: Vec<String> = detail["incidents"][0]["attachments"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|a| a["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        names.iter().any(|n| n.ends_with("csd.log"))
            && names.iter().any(|n| n == "event/problem_created-0.txt")
    });
    assert!(
        complete,
        "logs or event output missing: {detail:#}\n{}",
        node.daemon_log()
    );
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        "created python 1"
    );
    let attachments = detail["incidents"][0]["attachments"].as_array().unwrap();
    let names: Vec<&str> = attachments
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert!(names.contains(&"gather/notes.txt"), "{names:?}");
    assert!(names.contains(&"traceback.txt"), "{names:?}");
    assert_eq!(detail["problem"]["exception_type"], "RuntimeError");
}

/// The same bytes the kernel would pipe: a real core of a small C program, taken by gdb
/// at its fault (`fault` writing through a null pointer).
fn fault_core(dir: &std::path::Path) -> std::path::PathBuf {
    let program = compile_c(
        dir,
        "fault",
        "__attribute__((noinline)) void fault(volatile int *p) { *p = 1; }\nint main(void) { fault(0); return 0; }\n",
        &["-O1", "-g"],
    );
    let core = dir.join("fault.core");
    let status = std::process::Command::new("gdb")
        .args(["-nx", "-batch", "-ex", "run", "-ex"])
        .arg(format!("generate-core-file {}", core.display()))
        .arg(&program)
        .output()
        .unwrap();
    assert!(
        core.exists(),
        "gdb made no core: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    core
}

/// Feeds `core` to the node's hook as the kernel's core_pattern pipe would.
fn feed_hook(node: &NodeDir, core: &std::path::Path) {
    let own_pid = std::process::id().to_string();
    let hook = node
        .command(&[
            "hook",
            "core",
            &own_pid,
            &own_pid,
            "1",
            "11",
            "0",
            "18446744073709551615",
            "0",
            "0",
            "host",
            "fault",
        ])
        .stdin(std::fs::File::open(core).unwrap())
        .output()
        .unwrap();
    assert!(
        hook.status.success(),
        "{}",
        String::from_utf8_lossy(&hook.stderr)
    );
}

#[test]
fn a_core_fed_to_the_hook_by_hand_is_analysed_by_the_daemon() {
    let scratch = tempfile::tempdir().unwrap();
    let core = fault_core(scratch.path());
    let node = NodeDir::new(
        "[node]\nname = \"n1\"\n[detect.kmsg]\nenabled = false\n[capture]\nmin_free_bytes = 0\n",
    );
    feed_hook(&node, &core);
    node.run(&["node", "run", "--once"]);
    let listed = node.json(&["problems", "list"]);
    let problem = &listed["problems"][0];
    assert_eq!(problem["kind"], "core");
    assert_eq!(problem["crash_function"], "fault", "{listed:#}");
    assert_eq!(problem["count"], 1);
    // `problems core` gives back exactly the bytes the hook was fed.
    let exported = scratch.path().join("exported.core");
    node.run(&[
        "problems",
        "core",
        problem["id"].as_str().unwrap(),
        "--out",
        exported.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(&exported).unwrap(),
        std::fs::read(&core).unwrap()
    );
    let check = node.json(&["store", "check"]);
    assert_eq!(check["unrepaired"], serde_json::json!([]), "{check:#}");
}

#[test]
fn a_corrupt_core_is_recorded_as_analysis_failed_with_its_bytes_kept() {
    let node = NodeDir::new(
        "[node]\nname = \"n1\"\n[detect.kmsg]\nenabled = false\n[capture]\nmin_free_bytes = 0\n",
    );
    let own_pid = std::process::id().to_string();
    // An ELF header that claims a core, then garbage: what a truncated or hostile core
    // looks like.
    let mut garbage =
        b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x04\x00\x3e\x00".to_vec();
    garbage.extend((0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    let mut hook = node
        .command(&[
            "hook",
            "core",
            &own_pid,
            &own_pid,
            "1",
            "11",
            "0",
            "18446744073709551615",
            "0",
            "0",
            "host",
            "garbage",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(hook.stdin.as_mut().unwrap(), &garbage).unwrap();
    drop(hook.stdin.take());
    assert!(hook.wait().unwrap().success());
    node.run(&["node", "run", "--once"]);
    let listed = node.json(&["problems", "list"]);
    let problem = &listed["problems"][0];
    assert!(
        problem["reason"]
            .as_str()
            .unwrap()
            .starts_with("analysis failed: "),
        "{listed:#}"
    );
    let scratch = tempfile::tempdir().unwrap();
    let exported = scratch.path().join("raw.core");
    node.run(&[
        "problems",
        "core",
        problem["id"].as_str().unwrap(),
        "--out",
        exported.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(&exported).unwrap(),
        garbage,
        "the raw evidence is kept"
    );
}

/// A daemon killed between recording an entry and removing it may leave the entry half
/// deleted: its `meta.json` naming a `core.zst` that is gone (the quota e2e test once hung
/// on exactly that). The next pass sees the incident is already in the index and removes
/// the entry: no error loop, no second incident, nothing stuck in the spool.
#[test]
fn an_entry_left_half_deleted_by_a_kill_is_not_recorded_twice() {
    let scratch = tempfile::tempdir().unwrap();
    let core = fault_core(scratch.path());
    let node = NodeDir::new(
        "[node]\nname = \"half\"\n[detect.kmsg]\nenabled = false\n[gather]\nenabled = false\n[capture]\nmin_free_bytes = 0\n",
    );
    feed_hook(&node, &core);
    let new_dir = node.data_dir.join("spool/new");
    let entry_name = std::fs::read_dir(&new_dir)
        .unwrap()
        .next()
        .expect("the hook made an entry")
        .unwrap()
        .file_name();
    let entry = new_dir.join(&entry_name);
    let meta = std::fs::read(entry.join("meta.json")).unwrap();
    assert!(String::from_utf8_lossy(&meta).contains("core.zst"));
    node.run(&["node", "run", "--once"]);
    assert!(!entry.exists());

    // What a kill in the middle of removing the entry leaves: the meta, not the core.
    std::fs::create_dir_all(&entry).unwrap();
    std::fs::write(entry.join("meta.json"), &meta).unwrap();
    let second = node.command(&["node", "run", "--once"]).output().unwrap();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(!entry.exists(), "the leftover entry stays in the spool");
    let listed = node.json(&["problems", "list"]);
    let problems = listed["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{listed:#}");
    assert_eq!(problems[0]["count"], 1, "{listed:#}");
    assert_eq!(problems[0]["crash_function"], "fault", "{listed:#}");
}

//! The cluster's reports leave it once: `crashmesh demo` runs the real endpoint and N real
//! nodes on loopback, crashes the same program on every node (a gdb-held SIGSEGV core fed
//! to each node's hook) plus one Python exception per node, and waits for the endpoint.
//! Checked here: the summary's documented fields, exactly one problem per bug at the
//! endpoint with every incident from every node, exactly one full report per problem
//! (through `crashmesh endpoint export`), and fewer bytes than per-node upload.

use std::process::Command;

use crashmesh_tests::*;
use serde_json::Value;

/// Runs `crashmesh demo --nodes N --once --json` in a fresh directory; gives the summary
/// and the directory (kept alive by the guard).
fn demo(nodes: usize) -> (Value, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("cm-demo-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let output = Command::new(crashmesh_binary())
        .args(["demo", "--nodes", &nodes.to_string(), "--once", "--json"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("run crashmesh demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "crashmesh demo failed ({}):\n{stdout}\n{stderr}\nnode logs in {}",
        output.status,
        dir.path().display()
    );
    let line = stdout.lines().last().expect("a summary line");
    let summary: Value = serde_json::from_str(line).expect("the summary is JSON");
    eprintln!("demo --nodes {nodes}: {summary}");
    (summary, dir)
}

#[test]
fn the_same_crash_on_three_nodes_is_one_problem_with_one_full_report() {
    let (summary, dir) = demo(3);
    for field in [
        "endpoint",
        "nodes",
        "problems",
        "incidents",
        "bytes_uploaded",
        "bytes_naive",
    ] {
        assert!(!summary[field].is_null(), "{field} missing in {summary}");
    }
    assert_eq!(summary["nodes"], 3);
    assert!(summary["endpoint"].as_str().unwrap().starts_with("http://"));
    let python = summary["python"] == true;
    let expected_problems = if python { 2 } else { 1 };
    assert_eq!(summary["problems"], expected_problems, "{summary}");
    assert_eq!(summary["incidents"], 3 * expected_problems, "{summary}");
    let problems = summary["problem_list"].as_array().unwrap();
    let core = problems
        .iter()
        .find(|problem| problem["kind"] == "core")
        .unwrap_or_else(|| panic!("no core problem in {summary}"));
    assert_eq!(core["count"], 3, "every node's incident: {core}");
    if let Some(nodes) = core["nodes"].as_u64() {
        assert_eq!(nodes, 3, "{core}");
    } else if let Some(nodes) = core["nodes"].as_array() {
        assert_eq!(nodes.len(), 3, "{core}");
    }
    let uploaded = summary["bytes_uploaded"].as_u64().unwrap();
    let naive = summary["bytes_naive"].as_u64().unwrap();
    assert!(
        uploaded > 0 && uploaded < naive,
        "bytes_uploaded {uploaded} must be under bytes_naive {naive}"
    );
    // The design's goal: at most 1/N + 5% of per-node upload.
    assert!(
        (uploaded as f64) <= (naive as f64) * (1.0 / 3.0 + 0.05),
        "bytes_uploaded {uploaded} over 1/3 + 5% of {naive}"
    );

    // Exactly one full report per problem reached the endpoint: the first incident's
    // core (or traceback) and its /proc snapshot.
    let out = dir.path().join("export");
    let output = Command::new(crashmesh_binary())
        .args(["endpoint", "export", "--json"])
        .arg("--data-dir")
        .arg(dir.path().join("endpoint"))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run endpoint export");
    assert!(output.status.success(), "{output:?}");
    let exported: Value = serde_json::from_slice(&output.stdout).expect("export JSON");
    assert_eq!(exported["reports"], expected_problems, "{exported}");
    assert_eq!(exported["problems"], expected_problems, "{exported}");
    let mut saw_core = false;
    for report in std::fs::read_dir(out.join("reports")).unwrap() {
        let report = report.unwrap().path();
        let stored: Value =
            serde_json::from_slice(&std::fs::read(report.join("report.json")).unwrap()).unwrap();
        let manifest = &stored["manifest"];
        let names: Vec<&str> = manifest["attachments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|attachment| attachment["name"].as_str().unwrap())
            .collect();
        assert!(
            names.iter().any(|name| name.ends_with("/report.json")),
            "{names:?}"
        );
        if manifest["kind"] == "core" {
            saw_core = true;
            let origin = manifest["incidents"][0]["node"].as_str().unwrap();
            let core_file = report.join("attachments").join(origin).join("core");
            let core = std::fs::read(&core_file).expect("the core is exported");
            assert_eq!(&core[..4], b"\x7fELF", "the exported core is an ELF file");
        }
    }
    assert!(saw_core);
}

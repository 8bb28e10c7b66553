//! The cluster's reports leave it once: `crashmesh demo` runs the real endpoint and N real
//! nodes on loopback, crashes the same program on every node (a gdb-held SIGSEGV core fed
//! to each node's hook) plus one Python exception per node, and waits for the endpoint.
//! Checked here: the summary's documented fields, exactly one problem per bug at the
//! endpoint with every incident from every node, exactly one full report per problem
//! (through `crashmesh endpoint export`) carrying every peer's logs of the window, the
//! endpoint's answer shown on every node, and fewer bytes than per-node upload.

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
    // The endpoint's answer reached every node, not only the aggregator.
    assert_eq!(summary["feedback_nodes"], 3, "{summary}");
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
            // Every peer's storage log of the window came along, cut to the window.
            for node in 1..=3 {
                let prefix = format!("node-{node}/peer-logs/log");
                let log = names
                    .iter()
                    .find(|name| name.starts_with(&prefix) && name.ends_with("storage.log"))
                    .unwrap_or_else(|| panic!("no storage log of node-{node} in {names:?}"));
                let text = std::fs::read_to_string(report.join("attachments").join(log))
                    .expect("the peer's log is exported");
                assert!(
                    text.contains(&format!("node-{node}: ERROR lost connection")),
                    "{text}"
                );
            }
            let origin = manifest["incidents"][0]["node"].as_str().unwrap();
            let core_file = report.join("attachments").join(origin).join("core");
            let core = std::fs::read(&core_file).expect("the core is exported");
            assert_eq!(&core[..4], b"\x7fELF", "the exported core is an ELF file");
        }
    }
    assert!(saw_core);
}

/// The C program the fault test crashes (the same bug on every node).
const CRASHER: &str = r#"#include <stdio.h>
__attribute__((noinline)) static void store_reading(volatile int *slot) { *slot = 1; }
int main(void) { volatile int *table = NULL; store_reading(table); return 0; }
"#;

/// `GET path` on `127.0.0.1:port` (HTTP/1.0, no client library needed); the body as JSON.
/// A GET of the endpoint's API with `token` (the cluster's sees its own problems).
fn http_get_json(port: u16, path: &str, token: &str) -> Option<Value> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    serde_json::from_str(body).ok()
}

/// Crashes `crasher` under gdb and, while gdb holds the process, feeds its core to the
/// node's `crashmesh hook core` on stdin, as the kernel's pipe would.
fn crash_into(node: &NodeDir, crasher: &std::path::Path) {
    let core = node.root.path().join("core");
    let hook_args = |pid: &str| {
        format!(
            "[\"{exe}\", \"--data-dir\", \"{data}\", \"--config\", \"{config}\", \"hook\", \"core\", {pid}, {pid}, {pid}, \"11\", str(int(time.time())), \"18446744073709551615\", \"0\", \"0\", \"test\", \"crasher\"]",
            exe = crashmesh_binary().display(),
            data = node.data_dir.display(),
            config = node.config.display(),
        )
    };
    let script = format!(
        "run\npython\nimport gdb, subprocess, time\npid = str(gdb.selected_inferior().pid)\ngdb.execute(\"generate-core-file {core}\", to_string=True)\nwith open(\"{core}\", \"rb\") as f:\n    print(\"HOOK_EXIT\", subprocess.run({args}, stdin=f).returncode)\nend\nkill\n",
        core = core.display(),
        args = hook_args("pid"),
    );
    let script_path = node.root.path().join("crash.gdb");
    std::fs::write(&script_path, script).unwrap();
    let output = Command::new("gdb")
        .args(["-nx", "-batch", "-ex", "set debuginfod enabled off", "-x"])
        .arg(&script_path)
        .arg(crasher)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run gdb");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("HOOK_EXIT 0"),
        "the hook did not take the core:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn kill_9_of_the_aggregator_mid_upload_still_gives_one_problem_and_every_incident() {
    use std::time::Duration;
    let work = tempfile::Builder::new()
        .prefix("cm-fault-")
        .tempdir_in("/var/tmp")
        .unwrap();
    // The endpoint, with a token for the cluster.
    let endpoint = NodeDir::new("");
    let token = endpoint.json(&["endpoint", "token", "create", "fault-test"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let endpoint_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut endpoint_process = Daemon {
        child: Command::new(crashmesh_binary())
            .arg("--data-dir")
            .arg(&endpoint.data_dir)
            .args([
                "endpoint",
                "run",
                "--listen",
                &format!("127.0.0.1:{endpoint_port}"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::from(
                std::fs::File::create(work.path().join("endpoint.log")).unwrap(),
            ))
            .spawn()
            .unwrap(),
    };
    assert!(wait_until(Duration::from_secs(30), || http_get_json(
        endpoint_port,
        "/api/v1/problems",
        &token
    )
    .is_some()));

    // Three nodes of one CA, uploading to it.
    let ca = NodeDir::new("");
    ca.json(&["cluster", "init", "--cluster-id", "fault-test"]);
    let ports = free_udp_ports(3);
    let names: Vec<String> = (1..=3).map(|index| format!("node-{index}")).collect();
    let members: Vec<(String, String)> = names
        .iter()
        .zip(&ports)
        .map(|(name, port)| (name.clone(), format!("127.0.0.1:{port}")))
        .collect();
    let nodes: Vec<NodeDir> = names
        .iter()
        .zip(&ports)
        .map(|(name, port)| {
            let issued = ca.json(&["cluster", "issue", name]);
            NodeDir::new(
                &MeshNodeConfig {
                    name,
                    listen: format!("127.0.0.1:{port}"),
                    members: members.clone(),
                    ca_data_dir: &ca.data_dir,
                    issued: &issued,
                    cluster_extra: "",
                    upload: Some((format!("http://127.0.0.1:{endpoint_port}"), token.clone())),
                }
                .to_toml(),
            )
        })
        .collect();
    let mut daemons: Vec<Option<Daemon>> =
        nodes.iter().map(|node| Some(node.start_daemon())).collect();
    let aggregator_of = |node: &NodeDir| -> Option<String> {
        node.try_json(&["status"])?["cluster"]["aggregator"]
            .as_str()
            .map(str::to_string)
    };
    let mut aggregator = None;
    assert!(
        wait_until(Duration::from_secs(30), || {
            let seen: Vec<Option<String>> = nodes.iter().map(aggregator_of).collect();
            aggregator = seen[0].clone();
            aggregator.is_some() && seen.iter().all(|name| *name == aggregator)
        }),
        "no aggregator elected"
    );
    let aggregator = aggregator.unwrap();
    let aggregator_index = names.iter().position(|name| *name == aggregator).unwrap();
    eprintln!("aggregator: {aggregator}");

    // The endpoint stops answering (SIGSTOP): the upload hangs mid-way.
    let endpoint_pid = endpoint_process.child.id() as libc::pid_t;
    unsafe { libc::kill(endpoint_pid, libc::SIGSTOP) };
    let crasher = compile_c(work.path(), "crasher", CRASHER, &["-g", "-O0"]);
    for node in &nodes {
        crash_into(node, &crasher);
    }
    // The aggregator has the problem (its upload is waiting on the stopped endpoint).
    let holds_problem = wait_until(Duration::from_secs(30), || {
        nodes[aggregator_index]
            .try_json(&["status"])
            .is_some_and(|status| {
                status["cluster"]["problems"]
                    .as_array()
                    .is_some_and(|problems| !problems.is_empty())
            })
    });
    assert!(holds_problem, "the aggregator never held the problem");
    // Its upload has begun: it holds a connection to the stopped endpoint (the kernel
    // accepts it; nobody answers).
    let aggregator_pid = daemons[aggregator_index].as_ref().unwrap().child.id();
    assert!(
        wait_until(Duration::from_secs(30), || {
            tcp_connections_to(aggregator_pid, endpoint_port) > 0
        }),
        "the aggregator never connected to the endpoint: {}",
        nodes[aggregator_index].daemon_log()
    );
    // kill -9 of the aggregator mid-upload; the endpoint comes back.
    daemons[aggregator_index].take().unwrap().kill();
    unsafe { libc::kill(endpoint_pid, libc::SIGCONT) };
    // The dead node comes back once the others have seen it gone: its incident waits in
    // its spool until then.
    let witness = &nodes[(aggregator_index + 1) % nodes.len()];
    let seen_gone = wait_until(Duration::from_secs(60), || {
        witness.try_json(&["status"]).is_some_and(|status| {
            status["cluster"]["members"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|member| {
                    member["name"] == aggregator.as_str()
                        && (member["state"] == "suspect" || member["state"] == "down")
                })
        })
    });
    assert!(
        seen_gone,
        "no node saw the aggregator go: {}",
        witness.daemon_log()
    );
    daemons[aggregator_index] = Some(nodes[aggregator_index].start_daemon());

    let mut last = Value::Null;
    let done = wait_until(Duration::from_secs(90), || {
        last = http_get_json(endpoint_port, "/api/v1/problems", &token).unwrap_or(Value::Null);
        last["problems"]
            .as_array()
            .is_some_and(|problems| problems.iter().any(|p| p["count"] == 3))
    });
    let logs: Vec<String> = nodes.iter().map(|node| node.daemon_log()).collect();
    assert!(
        done,
        "the endpoint never had all 3 incidents: {last}\nlogs:\n{}",
        logs.join("\n----\n")
    );
    let problems = last["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "exactly one problem: {last}");
    assert_eq!(
        problems[0]["count"], 3,
        "no incident lost or counted twice: {last}"
    );
    // Nothing more arrives later (no duplicate upload): once no node has anything left to
    // send, the endpoint still counts 3.
    let mut statuses = Vec::new();
    let settled = wait_until(Duration::from_secs(90), || {
        statuses = nodes
            .iter()
            .map(|node| node.try_json(&["status"]))
            .collect();
        statuses.iter().all(|status| {
            status.as_ref().is_some_and(|status| {
                let cluster = &status["cluster"];
                cluster["pending_incidents"] == 0
                    && cluster["problems"].as_array().is_some_and(|problems| {
                        problems.iter().all(|problem| {
                            problem["pending_incidents"] == 0 && problem["at_endpoint"] == true
                        })
                    })
            })
        })
    });
    assert!(settled, "the nodes never settled: {statuses:#?}");
    let after = http_get_json(endpoint_port, "/api/v1/problems", &token).unwrap();
    assert_eq!(after["problems"].as_array().unwrap().len(), 1, "{after}");
    assert_eq!(after["problems"][0]["count"], 3, "{after}");
    drop(daemons);
    endpoint_process.kill();
}

//! The endpoint's CLI beside a running `crashmesh endpoint run` (real processes): the
//! server holds the database as its only user (no other process may open it, not even to
//! read), so every CLI request, reads (`bug list`, `bug show`, `export`) as well as
//! changes (`token create`, `bug set`), goes through the server's socket and the server
//! answers it; with the server stopped, the CLI opens the database itself.

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crashmesh_endpoint_client::{ChunkData, chunk_blob};
use crashmesh_tests::{CoreManifest, crashmesh_binary};
use serde_json::{Value, json};

/// `crashmesh endpoint ARGS` on `data_dir`, in the working directory `cwd`.
fn run_cli(cwd: &Path, data_dir: &Path, args: &[&str]) -> Output {
    Command::new(crashmesh_binary())
        .current_dir(cwd)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("endpoint")
        .args(args)
        .output()
        .expect("run crashmesh endpoint")
}

/// `crashmesh --json endpoint ARGS`, expected to succeed: its JSON.
fn cli(data_dir: &Path, args: &[&str]) -> Value {
    cli_in(Path::new("."), data_dir, args)
}

/// `crashmesh --json endpoint ARGS` in the working directory `cwd`.
fn cli_in(cwd: &Path, data_dir: &Path, args: &[&str]) -> Value {
    let output = Command::new(crashmesh_binary())
        .current_dir(cwd)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--json")
        .args(["endpoint"])
        .args(args)
        .output()
        .expect("run crashmesh endpoint");
    assert!(output.status.success(), "{args:?}: {output:?}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| panic!("{args:?}: {error}"))
}

/// `crashmesh endpoint ARGS` (human output), expected to succeed: its stdout.
fn cli_text(data_dir: &Path, args: &[&str]) -> String {
    let output = run_cli(Path::new("."), data_dir, args);
    assert!(output.status.success(), "{args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// A report of a new problem with one attachment, as an aggregator of cluster `c1`
/// uploads it.
fn report_manifest(attachment: &[u8]) -> (Value, Vec<ChunkData>) {
    let (blob, chunks) = chunk_blob(attachment);
    let manifest = CoreManifest {
        report_id: &format!("{:064x}", 1),
        cluster: "c1",
        signature: "v1:core:endpoint_cli",
        reason: "SIGSEGV in endpoint_cli",
        executable: "/usr/bin/endpoint-cli",
        frames: json!([]),
        incidents: json!([{
            "node": "node-1",
            "time_ms": 1_790_000_000_000u64,
            "report_id": "node-1:crash-1",
            "version": "1.0",
            "labels": {},
        }]),
        attachments: json!([{ "name": "node-1/journal.log", "blob": blob }]),
    }
    .json();
    (manifest, chunks)
}

/// Kills the server when the test ends, whatever happens.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_cli_writes_and_reads_through_a_running_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("endpoint");
    let mut server = Server(
        Command::new(crashmesh_binary())
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--json", "endpoint", "run", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start crashmesh endpoint run"),
    );
    let mut line = String::new();
    std::io::BufReader::new(server.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = serde_json::from_str::<Value>(&line).unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();

    // A token made by the CLI while the server runs is one the server knows.
    let made = cli(&data_dir, &["token", "create", "c1"]);
    let token = made["token"].as_str().unwrap();
    let client = crashmesh_endpoint_client::Client::new(&url, token);
    let known = client.post("/api/v1/reports", b"{}").unwrap();
    assert_eq!(known.status, 400, "a known token, a bad body: {known:?}");
    let unknown = crashmesh_endpoint_client::Client::new(&url, "cmt_00")
        .post("/api/v1/reports", b"{}")
        .unwrap();
    assert_eq!(unknown.status, 401);

    // A refusal reads the same as without a server.
    let output = run_cli(
        Path::new("."),
        &data_dir,
        &["bug", "set", "7", "--status", "closed"],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bug 7"), "{stderr}");

    // Reads go through the socket too, and see what the server has.
    assert_eq!(
        cli(&data_dir, &["bug", "list"])["bugs"],
        Value::Array(vec![])
    );
    let attachment = b"a journal line\n".repeat(20_000);
    let (manifest, chunks) = report_manifest(&attachment);
    let reply = client
        .upload(&serde_json::from_value(manifest.clone()).unwrap(), &chunks)
        .unwrap();
    let bug_id = reply.bug.expect("a new problem's bug").id;
    let bug = bug_id.to_string();
    let bugs = cli(&data_dir, &["bug", "list"]);
    assert_eq!(bugs["bugs"].as_array().unwrap().len(), 1, "{bugs}");
    assert_eq!(bugs["bugs"][0]["id"], bug_id, "{bugs}");
    let changed = cli(
        &data_dir,
        &["bug", "set", &bug, "--workaround", "restart it"],
    );
    assert_eq!(changed["workaround"], "restart it", "{changed}");
    let shown = cli(&data_dir, &["bug", "show", &bug]);
    assert_eq!(shown["id"], bug_id, "{shown}");
    assert_eq!(shown["problem_id"], reply.problem_id.as_str(), "{shown}");
    assert!(
        shown["comments"].as_array().unwrap().len() >= 2,
        "the new bug's comment and the change's: {shown}"
    );
    let human = cli_text(&data_dir, &["bug", "show", &bug]);
    assert!(
        human.starts_with(&format!("bug {bug_id} [")) && human.contains("workaround: restart it"),
        "{human}"
    );
    let human = cli_text(&data_dir, &["bug", "list"]);
    assert!(human.trim_start().starts_with(&bug), "{human}");
    let output = run_cli(Path::new("."), &data_dir, &["bug", "show", "999"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no bug 999"), "{stderr}");

    // The server writes the export, under the directory the CLI named relative to its
    // own working directory.
    let exported = cli_in(dir.path(), &data_dir, &["export", "--out", "export"]);
    assert_eq!(
        [
            &exported["reports"],
            &exported["attachments"],
            &exported["problems"]
        ],
        [&json!(1), &json!(1), &json!(1)],
        "{exported}"
    );
    let report_dir = dir
        .path()
        .join("export/reports")
        .join(manifest["report_id"].as_str().unwrap());
    assert_eq!(
        std::fs::read(report_dir.join("attachments/node-1/journal.log")).unwrap(),
        attachment
    );

    // Stopped, the server leaves no socket, and the CLI writes and reads on its own.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGINT) };
    assert!(server.0.wait().unwrap().success());
    assert!(!data_dir.join("endpoint.sock").exists());
    let made = cli(&data_dir, &["token", "create", "c2"]);
    assert!(made["token"].as_str().unwrap().starts_with("cmt_"));
    assert_eq!(cli(&data_dir, &["bug", "show", &bug]), shown);
    let out = dir.path().join("export-alone");
    let exported = cli(&data_dir, &["export", "--out", out.to_str().unwrap()]);
    assert_eq!(
        exported,
        json!({"reports": 1, "attachments": 1, "bytes": attachment.len(), "problems": 1})
    );
}

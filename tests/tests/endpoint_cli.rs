//! The endpoint's CLI beside a running `crashmesh endpoint run` (real processes): the
//! server holds the database as its one writer, so the CLI's writes go through the
//! server's socket and its reads open the database beside it; with the server stopped,
//! the CLI opens the database itself.

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};

use crashmesh_tests::crashmesh_binary;
use serde_json::Value;

fn cli(data_dir: &Path, args: &[&str]) -> Value {
    let output = Command::new(crashmesh_binary())
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

/// Kills the server when the test ends, whatever happens.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_cli_writes_through_a_running_endpoint_and_reads_beside_it() {
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
    let client = crashmesh_endpoint::client::Client::new(&url, token);
    let known = client.post("/api/v1/reports", b"{}").unwrap();
    assert_eq!(known.status, 400, "a known token, a bad body: {known:?}");
    let unknown = crashmesh_endpoint::client::Client::new(&url, "cmt_00")
        .post("/api/v1/reports", b"{}")
        .unwrap();
    assert_eq!(unknown.status, 401);

    // A refusal reads the same as without a server.
    let output = Command::new(crashmesh_binary())
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["endpoint", "bug", "set", "7", "--status", "closed"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bug 7"), "{stderr}");

    // Reads open the database beside the writer.
    assert_eq!(
        cli(&data_dir, &["bug", "list"])["bugs"],
        Value::Array(vec![])
    );
    let out = dir.path().join("export");
    let exported = cli(&data_dir, &["export", "--out", out.to_str().unwrap()]);
    assert_eq!(exported["reports"], 0, "{exported}");

    // Stopped, the server leaves no socket, and the CLI writes on its own.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGINT) };
    assert!(server.0.wait().unwrap().success());
    assert!(!data_dir.join("endpoint.sock").exists());
    let made = cli(&data_dir, &["token", "create", "c2"]);
    assert!(made["token"].as_str().unwrap().starts_with("cmt_"));
}

//! The node's trust boundaries, probed as an attacker would: an unprivileged local user
//! (made with `useradd`, run with `setpriv`) talking to the root daemon's Python socket
//! and reading its files, and crash-controlled text and paths (terminal escapes, a FIFO
//! where an executable was, a symlink where a core is to be written). Nothing here
//! changes machine-wide state, so these run in parallel with the rest.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crashmesh_tests::*;
use serde_json::Value;

/// The distribution's interpreter, which every user can run (root's PATH may lead to
/// one in root's home).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

const CONFIG: &str = "[node]\nname = \"n1\"\n[detect.kmsg]\nenabled = false\n";

/// A Python client that sends one report to the socket (argv: socket, pid or "self",
/// uid, time_ms) and prints the daemon's answer.
const FORGING_CLIENT: &str = r#"
import json, os, socket, sys
path, pid, uid, time_ms = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
message = {
    "format_version": 1, "time_ms": time_ms,
    "pid": os.getpid() if pid == "self" else int(pid), "uid": uid,
    "executable": "/usr/sbin/sshd", "argv": ["sshd", "-D"],
    "exception_type": "RuntimeError", "message": "forged",
    "traceback": "Traceback (most recent call last):\n  File \"/opt/forged.py\", line 1, in <module>\nRuntimeError: forged\n",
}
connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
connection.settimeout(60)
connection.connect(path)
connection.sendall(json.dumps(message).encode() + b"\n")
print(connection.recv(4096).decode().strip())
"#;

/// Opens `count` connections and sends each one byte every half second, never a whole
/// report, for `trickle_secs`; prints `open` once they are open and, at the end, how many
/// the daemon closed meanwhile (argv: socket, count, trickle_secs).
const TRICKLING_CLIENT: &str = r#"
import socket, sys, time
path, count, trickle_secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
connections = []
for _ in range(count):
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.connect(path)
    connection.setblocking(False)
    connections.append(connection)
print("open", flush=True)
closed = set()
deadline = time.time() + trickle_secs
while time.time() < deadline:
    for index, connection in enumerate(connections):
        if index in closed:
            continue
        try:
            if connection.recv(64) == b"":
                closed.add(index)
                continue
        except BlockingIOError:
            pass
        except OSError:
            closed.add(index)
            continue
        try:
            connection.send(b" ")
        except BlockingIOError:
            pass
        except OSError:
            closed.add(index)
    time.sleep(0.5)
print("closed", len(closed), flush=True)
"#;

fn probe_python(code: &str, args: &[&str]) -> std::process::Output {
    Probe::user()
        .command(SYSTEM_PYTHON)
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("python3 as the probe user")
}

fn started_node(config: &str) -> (NodeDir, Daemon) {
    let node = NodeDir::new(config);
    node.let_others_walk_in();
    let daemon = node.start_daemon();
    assert!(
        wait_until(Duration::from_secs(30), || node.python_socket().exists()
            && node.try_json(&["status"]).is_some()),
        "the daemon did not start: {}",
        node.daemon_log()
    );
    (node, daemon)
}

fn problems(node: &NodeDir) -> Vec<Value> {
    node.try_json(&["problems", "list"])
        .and_then(|listed| listed["problems"].as_array().cloned())
        .unwrap_or_default()
}

fn incidents_of(node: &NodeDir, id: &str) -> Vec<Value> {
    node.json(&["problems", "show", id])["incidents"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn python_sock_takes_the_sender_from_the_kernel_not_from_the_message() {
    let (node, daemon) = started_node(CONFIG);
    let socket = node.python_socket().to_string_lossy().into_owned();
    let probe = Probe::user();

    // A report naming a root process (the daemon itself) as uid 0 is refused: the daemon
    // would have stored that process's environment and memory map under it.
    let root_pid = daemon.child.id().to_string();
    let output = probe_python(FORGING_CLIENT, &[&socket, &root_pid, "0", "1"]);
    let answer = String::from_utf8_lossy(&output.stdout);
    assert!(
        answer.starts_with("refused") && answer.contains(&format!("names pid {root_pid}")),
        "answer {answer:?}, stderr {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The probe's own report, claiming uid 0, another executable and a time in 1970, is
    // stored as what the kernel says: the probe's uid, its real executable, now.
    let before_ms = now_ms();
    let output = probe_python(FORGING_CLIENT, &[&socket, "self", "0", "1"]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut listed = Vec::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            listed = problems(&node);
            !listed.is_empty()
        }),
        "{}",
        node.daemon_log()
    );
    assert_eq!(listed.len(), 1, "only the probe's own report: {listed:?}");
    let incidents = incidents_of(&node, listed[0]["id"].as_str().unwrap());
    assert_eq!(incidents.len(), 1);
    let incident = &incidents[0];
    assert_eq!(incident["uid"], probe.uid, "{incident}");
    assert_ne!(incident["pid"].to_string(), root_pid);
    let time_ms = incident["time_ms"].as_u64().unwrap();
    assert!(time_ms >= before_ms && time_ms <= now_ms(), "{incident}");
    let python = std::fs::canonicalize(SYSTEM_PYTHON).unwrap();
    assert_eq!(
        incident["executable"].as_str().map(PathBuf::from),
        Some(python),
        "{incident}"
    );
}

#[test]
fn evidence_is_root_s_alone_and_an_older_readable_data_dir_is_tightened() {
    let node = NodeDir::new(CONFIG);
    node.let_others_walk_in();
    // What an older version left: a readable data dir with a readable file in it.
    std::fs::create_dir_all(node.data_dir.join("spool/new")).unwrap();
    for dir in [node.data_dir.clone(), node.data_dir.join("spool")] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let old = node.data_dir.join("old-evidence");
    std::fs::write(&old, "root's secret\n").unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(
        probe_cat(&old).status.success(),
        "the probe must read it before, or this test shows nothing"
    );

    let _daemon = node.start_daemon();
    assert!(wait_until(Duration::from_secs(30), || node
        .python_socket()
        .exists()));
    // Evidence to look at: a Python report of the probe's, stored by the daemon.
    let socket = node.python_socket().to_string_lossy().into_owned();
    let output = probe_python(FORGING_CLIENT, &[&socket, "self", "0", "1"]);
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ok");
    assert!(wait_until(Duration::from_secs(30), || !problems(&node).is_empty()));

    let mut checked = 0;
    let mut pending = vec![node.data_dir.clone()];
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(
            metadata.mode() & 0o077,
            0,
            "{} is mode {:o}",
            path.display(),
            metadata.mode() & 0o7777
        );
        checked += 1;
        if metadata.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    assert!(checked > 5, "only {checked} paths in the data dir");
    for secret in [old, node.data_dir.join("index.redb")] {
        let output = probe_cat(&secret);
        assert!(
            !output.status.success() && output.stdout.is_empty(),
            "the probe read {}",
            secret.display()
        );
    }
    let listing = Probe::user()
        .command("ls")
        .arg(&node.data_dir)
        .output()
        .unwrap();
    assert!(!listing.status.success());
    // The one public place: a root-owned directory nobody else can write, and the socket.
    let public = node.python_socket().parent().unwrap().to_path_buf();
    let public = std::fs::metadata(public).unwrap();
    assert_eq!((public.uid(), public.mode() & 0o777), (0, 0o755));
    assert_eq!(
        std::fs::metadata(node.python_socket()).unwrap().mode() & 0o777,
        0o666
    );
}

fn probe_cat(path: &Path) -> std::process::Output {
    Probe::user().command("cat").arg(path).output().unwrap()
}

#[test]
fn a_user_trickling_bytes_holds_neither_the_daemon_nor_the_cli() {
    let (node, _daemon) = started_node(CONFIG);
    let socket = node.python_socket().to_string_lossy().into_owned();
    // More connections than the daemon's blocking threads (512), each fed a byte at a
    // time so that no per-read timeout ever fires.
    let mut trickler = Probe::user()
        .command(SYSTEM_PYTHON)
        .arg("-c")
        .arg(TRICKLING_CLIENT)
        .args([&socket, "600", "30"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(trickler.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "open");

    // While the probe trickles: root's report is answered and stored, and the CLI gets
    // its answer, both before the probe is done.
    let output = Command::new(SYSTEM_PYTHON)
        .arg("-c")
        .arg(FORGING_CLIENT)
        .args([&socket, "self", "0", "1"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "ok",
        "{}",
        node.daemon_log()
    );
    assert!(node.json(&["status"]).is_object());
    assert!(
        trickler.try_wait().unwrap().is_none(),
        "the daemon answered only once the probe stopped trickling"
    );
    assert!(wait_until(Duration::from_secs(30), || !problems(&node).is_empty()));

    // Every one of the probe's connections was closed while it trickled: those beyond its
    // share at once, the rest at their deadline.
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "closed 600", "{}", node.daemon_log());
    trickler.wait().unwrap();
}

/// A spool entry as a writer leaves it (the hook, or a Python exception with the daemon
/// down), with `files` in it.
fn spool_entry(node: &NodeDir, id: &str, meta: Value, files: &[(&str, &[u8])]) {
    let dir = node.data_dir.join("spool/new").join(id);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    std::fs::write(dir.join("meta.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
}

#[test]
fn crash_controlled_text_reaches_the_terminal_escaped() {
    let node = NodeDir::new(CONFIG);
    let now = now_ms();
    let traceback = "Traceback (most recent call last):\n  File \"/opt/\x1b]0;owned\x07evil.py\", line 1, in <module>\nRuntimeError: \x1b[2J\x1b[1;1Hall is well\u{202e}\n";
    spool_entry(
        &node,
        &format!("{now:013}-77-esc"),
        serde_json::json!({
            "format_version": 1, "id": format!("{now:013}-77-esc"), "source": "python",
            "time_ms": now, "pid": 77, "executable": "/usr/bin/\x1b[31mpython3",
            "proc_files": ["traceback.txt"],
        }),
        &[("traceback.txt", traceback.as_bytes())],
    );
    node.run(&["node", "run", "--once"]);
    let list = node.run(&["problems", "list"]).stdout;
    let id = problems(&node)[0]["id"].as_str().unwrap().to_string();
    let show = node.run(&["problems", "show", &id]).stdout;
    for (what, output) in [("list", &list), ("show", &show)] {
        let text = String::from_utf8_lossy(output);
        assert!(
            !output.iter().any(|&byte| byte == 0x1b || byte == 0x07),
            "problems {what} printed a terminal control: {text:?}"
        );
        assert!(text.contains("\\x1b"), "problems {what}: {text}");
    }
    assert!(String::from_utf8_lossy(&show).contains("\\u{202e}"));
    // JSON keeps the text exactly (escaped by JSON itself).
    let json = node.json(&["problems", "show", &id]);
    assert!(json["problem"]["reason"].as_str().unwrap().contains('\x1b'));
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    let mut child = Command::new("zstd")
        .args(["-q", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("zstd");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    child.wait_with_output().unwrap().stdout
}

#[test]
fn a_fifo_where_the_executable_was_blocks_nothing_and_a_core_export_never_follows_a_link() {
    let node = NodeDir::new(CONFIG);
    let scratch = tempfile::tempdir().unwrap();
    // The crashed program's path, now a FIFO nobody writes: opening it for reading would
    // wait forever.
    let fifo = scratch.path().join("server");
    let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o666) }, 0);
    let now = now_ms();
    let core = b"not an ELF core, but a core all the same".repeat(100);
    let compressed = zstd(&core);
    let core_id = format!("{now:013}-88-core");
    spool_entry(
        &node,
        &core_id,
        serde_json::json!({
            "format_version": 1, "id": core_id, "source": "core", "time_ms": now,
            "pid": 88, "signal": 11, "executable": fifo, "comm": "server",
            "core": { "file": "core.zst", "bytes_raw": core.len(), "bytes_stored": compressed.len() },
        }),
        &[("core.zst", &compressed)],
    );
    spool_python_entry(&node, &format!("{:013}-89-after", now + 1), now + 1);
    let mut run = node
        .command(&["node", "run", "--once"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let finished = wait_until(Duration::from_secs(120), || {
        run.try_wait().unwrap().is_some()
    });
    if !finished {
        let _ = run.kill();
    }
    assert!(finished, "ingest hung on the FIFO");
    assert!(run.wait().unwrap().success());
    let listed = problems(&node);
    assert_eq!(listed.len(), 2, "{listed:?}");

    let core_problem = listed
        .iter()
        .find(|problem| problem["kind"] == "core")
        .expect("the core's problem");
    let id = core_problem["id"].as_str().unwrap();
    let victim = scratch.path().join("victim");
    std::fs::write(&victim, "keep me\n").unwrap();
    let planted = scratch.path().join("planted");
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    let refused = node
        .command(&["problems", "core", id, "--out"])
        .arg(&planted)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me\n");
    let refused = node
        .command(&["problems", "core", id, "--out"])
        .arg(&victim)
        .output()
        .unwrap();
    assert!(!refused.status.success(), "an existing file was replaced");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me\n");

    let out = scratch.path().join("core");
    node.command(&["problems", "core", id, "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), core);
    assert_eq!(std::fs::metadata(&out).unwrap().mode() & 0o777, 0o600);
}

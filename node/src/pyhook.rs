//! The Python detector: `crashmesh install` puts a small module and a `.pth` file that
//! imports it into the site-packages of each configured interpreter; on an uncaught
//! exception the module sends the traceback to the daemon's `python.sock`, which
//! snapshots `/proc/<pid>` while the process still lives and writes a spool entry. When
//! the daemon is down the module writes the spool entry itself.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::procsnap;
use crate::spool::{self, EntryMeta, SPOOL_FORMAT_VERSION, Spool};

/// The module's source; `@SOCKET@` and `@SPOOL@` are filled in at install time.
pub const HOOK_MODULE: &str = include_str!("crashmesh_hook.py");
/// The module's file name in site-packages.
pub const MODULE_FILE: &str = "crashmesh_hook.py";
/// The `.pth` file that imports the module at interpreter start.
pub const PTH_FILE: &str = "crashmesh-hook.pth";
/// The largest message the daemon reads from the Python hook.
pub const MESSAGE_BYTES_MAX: u64 = 2 * 1024 * 1024;

/// The socket the hook talks to.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("python.sock")
}

/// What the Python hook sends.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PythonReport {
    pub format_version: u32,
    pub time_ms: u64,
    pub pid: u32,
    pub uid: Option<u32>,
    pub executable: Option<String>,
    pub argv: Vec<String>,
    pub exception_type: String,
    pub message: String,
    pub traceback: String,
}

/// The interpreters to hook: the configured ones, or every `python3` on PATH.
pub fn interpreters(configured: &[PathBuf]) -> Vec<PathBuf> {
    if !configured.is_empty() {
        return configured.to_vec();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut found: Vec<PathBuf> = Vec::new();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("python3");
        if candidate.is_file() && !found.contains(&candidate) {
            found.push(candidate);
        }
    }
    found
}

/// The directory where an interpreter loads `.pth` files from.
pub fn site_packages(interpreter: &Path) -> Option<PathBuf> {
    let output = Command::new(interpreter)
        .args([
            "-S",
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (output.status.success() && !text.is_empty()).then(|| PathBuf::from(text))
}

/// Write the module and the `.pth` file into each interpreter's site-packages; gives back
/// the files written (remembered for uninstall).
pub fn install(interpreters: &[PathBuf], data_dir: &Path) -> Vec<(PathBuf, Result<(), String>)> {
    let module = HOOK_MODULE
        .replace("@SOCKET@", &socket_path(data_dir).to_string_lossy())
        .replace("@SPOOL@", &Spool::new(data_dir).root.to_string_lossy());
    let mut done: Vec<(PathBuf, Result<(), String>)> = Vec::new();
    for interpreter in interpreters {
        let Some(site) = site_packages(interpreter) else {
            done.push((
                interpreter.clone(),
                Err("cannot ask it for its site-packages".into()),
            ));
            continue;
        };
        if done.iter().any(|(path, _)| path == &site) {
            continue;
        }
        let result = std::fs::create_dir_all(&site)
            .and_then(|_| std::fs::write(site.join(MODULE_FILE), &module))
            .and_then(|_| std::fs::write(site.join(PTH_FILE), "import crashmesh_hook\n"))
            .map_err(|error| error.to_string());
        done.push((site, result));
    }
    done
}

/// Remove the module and `.pth` file from each site-packages directory.
pub fn uninstall(site_dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for site in site_dirs {
        for name in [PTH_FILE, MODULE_FILE] {
            let path = site.join(name);
            if std::fs::remove_file(&path).is_ok() {
                removed.push(path);
            }
        }
        let _ = std::fs::remove_dir_all(
            site.join("__pycache__")
                .join("crashmesh_hook.cpython-311.pyc"),
        );
    }
    removed
}

/// Handle one connection from the Python hook: read the report, snapshot the process,
/// write a spool entry, answer `ok`.
pub fn handle_connection(
    stream: &mut std::os::unix::net::UnixStream,
    data_dir: &Path,
    proc_file_bytes_max: u64,
) -> Result<String, String> {
    let mut line = Vec::new();
    BufReader::new((&mut *stream).take(MESSAGE_BYTES_MAX))
        .read_until(b'\n', &mut line)
        .map_err(|error| format!("reading the report: {error}"))?;
    let report: PythonReport =
        serde_json::from_slice(&line).map_err(|error| format!("malformed report: {error}"))?;
    let entry =
        write_entry(&report, data_dir, proc_file_bytes_max).map_err(|error| error.to_string())?;
    let _ = stream.write_all(b"ok\n");
    Ok(entry)
}

fn write_entry(
    report: &PythonReport,
    data_dir: &Path,
    proc_file_bytes_max: u64,
) -> Result<String, spool::SpoolError> {
    let spool = Spool::new(data_dir);
    let id = spool::new_entry_id(report.time_ms, report.pid);
    let writer = spool.begin(&id)?;
    let mut meta = EntryMeta {
        format_version: SPOOL_FORMAT_VERSION,
        id: id.clone(),
        source: "python".into(),
        time_ms: report.time_ms,
        pid: Some(report.pid),
        uid: report.uid,
        executable: report.executable.clone(),
        comm: report
            .executable
            .as_deref()
            .map(|exe| exe.rsplit('/').next().unwrap_or(exe).to_string()),
        ..EntryMeta::default()
    };
    writer.write_file("traceback.txt", report.traceback.as_bytes())?;
    writer.write_file(
        "python/argv.json",
        &serde_json::to_vec(&report.argv).expect("argv serializes"),
    )?;
    meta.proc_files = vec!["traceback.txt".into(), "python/argv.json".into()];
    // The process is waiting for our answer, so its /proc is still there.
    let snapshot = procsnap::snapshot(report.pid, &writer, proc_file_bytes_max)?;
    meta.proc_files.extend(snapshot.files);
    meta.notes.extend(snapshot.notes);
    writer.commit(&meta)?;
    Ok(id)
}

/// The problem of a Python spool entry, parsed from its traceback.
pub fn problem_of_entry(dir: &Path, meta: &EntryMeta) -> Option<crashmesh_protocol::Problem> {
    let text = std::fs::read_to_string(dir.join("traceback.txt")).ok()?;
    let mut problem = crashmesh_parsers::python::parse_python_tracebacks(&text).pop()?;
    problem.executable = meta.executable.clone();
    Some(problem)
}

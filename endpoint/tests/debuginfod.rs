//! Debug files from a real debuginfod server (elfutils' `debuginfod`, started here over a
//! directory holding a program's split-off debug file). At the endpoint: a problem
//! uploaded by a node that had no names gets names and file:line; two reports of one crash
//! whose scheme 1 signatures differed only by the names their nodes had become one
//! problem; with the server gone, uploads go on unnamed. On a node: `crashmesh analyze
//! core` (what the daemon's analysis runs) fetches the file into its data dir and names
//! the frames itself.
//!
//! gcc, gdb, binutils and debuginfod are installed in CI (`.ci/run`), where a missing one
//! fails the test; elsewhere the test says so and passes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use crashmesh_coredump::{AnalyzeOptions, analyze_core};
use crashmesh_protocol::signature::native_signature;

const T0: u64 = 1_790_000_000_000;

const CRASHY_C: &str = r#"
#include <string.h>
__attribute__((noinline)) int leaf(volatile int *p, int n) { int s = 0; for (int i = 0; i < n; i++) s += p[i]; *(volatile int*)0 = s; return s; }
__attribute__((noinline)) int middle(int n) { int buf[16]; memset(buf, 1, sizeof buf); return leaf(buf, n) + 1; }
int main(int argc, char **argv) { (void)argv; return middle(argc + 3); }
"#;

fn tool_missing(tool: &str, version_flag: &str) -> bool {
    let found = Command::new(tool)
        .arg(version_flag)
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

fn run(command: &mut Command) {
    let output = command.output().expect("the tool runs");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A debuginfod server over `dir`, killed on drop.
struct Debuginfod {
    child: Child,
    url: String,
}

impl Drop for Debuginfod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_debuginfod(scan: &Path, work: &Path) -> Debuginfod {
    let port = free_port();
    let child = Command::new("debuginfod")
        .arg("-F")
        .arg(scan)
        .arg("-d")
        .arg(work.join("debuginfod.sqlite"))
        .arg("-p")
        .arg(port.to_string())
        .arg("-t")
        .arg("1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join("debuginfod.log")).unwrap())
        .spawn()
        .expect("debuginfod starts");
    Debuginfod {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// The program built with debug information, its debug file split off into `debug/`, and
/// the program stripped of every name; (program, build-id).
fn build_split_program(work: &Path) -> (PathBuf, String) {
    let source = work.join("crashy.c");
    std::fs::write(&source, CRASHY_C).unwrap();
    let program = work.join("crashy");
    run(Command::new("gcc")
        .args(["-O1", "-g", "-Wl,--build-id", "-o"])
        .arg(&program)
        .arg(&source));
    let debug_dir = work.join("debug");
    std::fs::create_dir_all(&debug_dir).unwrap();
    let debug_file = debug_dir.join("crashy.debug");
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&program)
        .arg(&debug_file));
    run(Command::new("strip").arg("--strip-all").arg(&program));
    let output = Command::new("readelf")
        .arg("-n")
        .arg(&program)
        .output()
        .unwrap();
    let notes = String::from_utf8_lossy(&output.stdout);
    let build_id = notes
        .lines()
        .find_map(|line| line.trim().strip_prefix("Build ID: "))
        .expect("a build-id")
        .trim()
        .to_string();
    (program, build_id)
}

/// A core of `program` crashing, written by gdb.
fn crash(program: &Path, work: &Path) -> PathBuf {
    let core = work.join("core.crashy");
    run(Command::new("gdb")
        .args([
            "-nx",
            "-batch",
            "-ex",
            "set startup-with-shell off",
            "-ex",
            "run",
        ])
        .arg("-ex")
        .arg(format!("generate-core-file {}", core.display()))
        .arg(program));
    assert!(core.exists());
    core
}

/// A stripped program's core, and a debuginfod server that has its debug file.
struct World {
    work: tempfile::TempDir,
    build_id: String,
    core: PathBuf,
    server: Debuginfod,
}

/// `None` (the test passes, saying so) where a tool is missing outside CI.
fn world() -> Option<World> {
    if tool_missing("gcc", "--version")
        || tool_missing("gdb", "--version")
        || tool_missing("objcopy", "--version")
        || tool_missing("debuginfod", "--version")
    {
        return None;
    }
    let work = tempfile::tempdir().unwrap();
    let (program, build_id) = build_split_program(work.path());
    let core = crash(&program, work.path());
    let server = start_debuginfod(&work.path().join("debug"), work.path());
    let served = wait_until(Duration::from_secs(60), || {
        ureq::get(format!("{}/buildid/{build_id}/debuginfo", server.url))
            .call()
            .is_ok()
    });
    assert!(
        served,
        "debuginfod never served the debug file: {}",
        std::fs::read_to_string(work.path().join("debuginfod.log")).unwrap_or_default()
    );
    Some(World {
        work,
        build_id,
        core,
        server,
    })
}

#[test]
fn a_node_fetches_the_debug_files_its_core_lacks_and_names_the_frames() {
    let Some(world) = world() else { return };
    let data_dir = world.work.path().join("node");
    let config = world.work.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[analysis]\ndebuginfod_urls = [\"{}\"]\ndebuginfod_timeout_secs = 20\n",
            world.server.url
        ),
    )
    .unwrap();
    let analyze = |config: &Path| {
        let output = Command::new(crashmesh_tests::crashmesh_binary())
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--config")
            .arg(config)
            .args(["analyze", "core", "--json"])
            .arg(&world.core)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        answer["problems"][0].clone()
    };
    let problem = analyze(&config);
    assert_eq!(problem["frames"][0]["function"], "leaf", "{problem:#}");
    assert!(
        problem["frames"][0]["file"]
            .as_str()
            .is_some_and(|file| file.ends_with("crashy.c")),
        "{problem:#}"
    );
    let cached = data_dir
        .join("debuginfod/.build-id")
        .join(&world.build_id[..2])
        .join(format!("{}.debug", &world.build_id[2..]));
    assert!(cached.is_file());
    // Without servers the same core stays unnamed, under the same scheme 2 signature.
    let plain = world.work.path().join("plain.toml");
    std::fs::write(&plain, "[analysis]\ndebuginfod_urls = []\n").unwrap();
    let without = analyze(&plain);
    assert!(without["frames"][0]["function"].is_null(), "{without:#}");
    assert_eq!(without["signature"], problem["signature"]);
}

#[test]
fn a_problem_without_names_gets_them_from_debuginfod_and_split_reports_become_one() {
    let Some(world) = world() else { return };
    let (build_id, server) = (&world.build_id, &world.server);
    // The node had only the stripped program: its own frames have no names.
    let unnamed = analyze_core(&world.core, &AnalyzeOptions::default())
        .unwrap()
        .problem;
    let top = &unnamed.frames[0];
    assert_eq!(top.function, None, "{top:#?}");
    assert_eq!(top.build_id.as_deref(), Some(build_id.as_str()));

    let url = server.url.clone();
    let harness = Harness::start_with(|config| config.symbols.debuginfod_urls = vec![url]);
    let client = harness.client("c1");

    // A node without names, scheme 1: a signature of module offsets.
    let mut poor = unnamed.clone();
    poor.signature = native_signature(&poor.frames, poor.signal).0;
    let (manifest, chunks) = report(
        "c1",
        1,
        "poor",
        poor,
        vec![incident("n1", "e1", T0, None)],
        b"a\n",
    );
    let id = client.upload(&manifest, &chunks).unwrap().problem_id;
    let shown = harness
        .admin()
        .get(&format!("/api/v1/problems/{id}"))
        .unwrap()
        .json();
    let frames = shown["problem"]["frames"].as_array().unwrap();
    assert_eq!(frames[0]["function"], "leaf", "{shown:#}");
    assert_eq!(frames[1]["function"], "middle", "{shown:#}");
    for frame in &frames[..2] {
        assert!(
            frame["file"]
                .as_str()
                .is_some_and(|file| file.ends_with("crashy.c")),
            "{frame:#}"
        );
        assert!(
            frame["line"].as_u64().is_some_and(|line| line > 0),
            "{frame:#}"
        );
    }
    // The debug file is in the endpoint's cache now.
    let cached = harness
        .dir
        .path()
        .join("endpoint/debuginfod/.build-id")
        .join(&build_id[..2])
        .join(format!("{}.debug", &build_id[2..]));
    assert!(cached.is_file());

    // A node that had the names: its scheme 1 signature is of the names; the endpoint's
    // named frames made the same one, so it is the same problem.
    let mut named = unnamed.clone();
    for (frame, function) in named.frames.iter_mut().zip(["leaf", "middle", "main"]) {
        frame.function = Some(function.to_string());
    }
    named.signature = native_signature(&named.frames, named.signal).0;
    assert_ne!(
        named.signature, manifest.signature,
        "the nodes' signatures differ"
    );
    let (manifest, chunks) = report(
        "c1",
        1,
        "named",
        named,
        vec![incident("n2", "e2", T0, None)],
        b"b\n",
    );
    assert_eq!(client.upload(&manifest, &chunks).unwrap().problem_id, id);
    let problems = harness.problems("");
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0]["count"], 2);

    // The server gone: uploads go on, unnamed.
    drop(world);
    let dead = harness_with_dead_debuginfod();
    let mut other = unnamed.clone();
    other.frames[0].build_id = Some("00112233445566778899aabbccddeeff00112233".into());
    let (manifest, chunks) = report(
        "c1",
        1,
        "dead",
        other,
        vec![incident("n3", "e3", T0, None)],
        b"c\n",
    );
    let client = dead.client("c1");
    let id = client.upload(&manifest, &chunks).unwrap().problem_id;
    let shown = dead
        .admin()
        .get(&format!("/api/v1/problems/{id}"))
        .unwrap()
        .json();
    assert!(
        shown["problem"]["frames"][0]["function"].is_null(),
        "{shown:#}"
    );
}

fn harness_with_dead_debuginfod() -> Harness {
    let port = free_port();
    Harness::start_with(|config| {
        config.symbols.debuginfod_urls = vec![format!("http://127.0.0.1:{port}")];
        config.symbols.timeout_ms = 2_000;
    })
}

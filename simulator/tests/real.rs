//! Real-process mode, short: 3 `crashmesh` daemons and the endpoint on loopback, problems
//! written into their spools while they are killed (-9), stopped and continued; then every
//! incident must be at the endpoint once.

use std::path::{Path, PathBuf};
use std::process::Command;

use crashmesh_simulator::real::{self, RealConfig};

/// The `crashmesh` binary of this build (`CRASHMESH_BIN` overrides), built if needed so
/// that the test never runs a stale daemon.
fn crashmesh_binary() -> PathBuf {
    if let Some(binary) = std::env::var_os("CRASHMESH_BIN") {
        return PathBuf::from(binary);
    }
    let test_binary = std::env::current_exe().expect("current exe");
    let profile_dir = test_binary
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build
        .current_dir(workspace)
        .args(["build", "--quiet", "-p", "crashmesh", "--bin", "crashmesh"])
        .env(
            "CARGO_TARGET_DIR",
            profile_dir.parent().expect("target dir"),
        );
    if profile_dir
        .file_name()
        .is_some_and(|name| name == "release")
    {
        build.arg("--release");
    }
    assert!(build.status().expect("run cargo build").success());
    profile_dir.join("crashmesh")
}

#[test]
fn three_real_nodes_killed_and_paused_lose_and_duplicate_nothing() {
    let outcome = real::run(&RealConfig {
        nodes: 3,
        duration_secs: 15,
        seed: 3,
        crashmesh: crashmesh_binary(),
        data_dir: None,
    })
    .expect("the real cluster ran");
    print!("{}", outcome.table());
    println!("{}", serde_json::to_string(&outcome).unwrap());
    assert!(outcome.incidents_written >= 10, "{outcome:?}");
    assert!(
        outcome.kills + outcome.pauses >= 1,
        "no fault injected: {outcome:?}"
    );
    assert_eq!(outcome.lost_reports, 0, "{outcome:?}");
    assert_eq!(outcome.duplicate_problems, 0, "{outcome:?}");
    assert_eq!(outcome.incidents_at_endpoint, outcome.incidents_written);
    assert!(outcome.passed());
}

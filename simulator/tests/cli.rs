//! The command line: `run --seed S --json` twice gives the same final line (trace_hash
//! included), its documented keys are there, a bad sabotage is refused with a message,
//! and `scale` prints its table, JSON rows and a plot.

use std::process::Command;

use serde_json::Value;

fn simulator(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_crashmesh-simulator"))
        .args(args)
        .output()
        .expect("run crashmesh-simulator")
}

fn last_json_line(output: &std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().expect("output")).expect("a JSON last line")
}

#[test]
fn one_seed_twice_prints_the_same_summary_with_the_documented_keys() {
    let first = simulator(&["run", "--seed", "7", "--nodes", "3", "--json"]);
    let second = simulator(&["run", "--seed", "7", "--nodes", "3", "--json"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let (first, second) = (last_json_line(&first), last_json_line(&second));
    assert_eq!(first, second);
    for key in [
        "seeds",
        "nodes",
        "failed",
        "lost_reports",
        "duplicate_problems",
        "stale_term_accepted",
        "faults",
        "trace_hash",
    ] {
        assert!(!first[key].is_null(), "{key} missing: {first}");
    }
    assert_eq!(first["seeds"], 1);
    assert_eq!(first["nodes"], 3);
    assert_eq!(first["trace_hash"].as_str().unwrap().len(), 64);
    let other = last_json_line(&simulator(&[
        "run", "--seed", "8", "--nodes", "3", "--json",
    ]));
    assert_ne!(first["trace_hash"], other["trace_hash"]);
}

#[test]
fn an_unknown_sabotage_is_refused() {
    let output = simulator(&["run", "--seed", "1", "--sabotage", "no-brakes"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown --sabotage"));
}

#[test]
fn scale_prints_a_row_per_size_and_writes_the_plot() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("scale.svg");
    let output = simulator(&[
        "scale",
        "--nodes",
        "5,20",
        "--duration",
        "4",
        "--svg",
        svg.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let rows: Vec<Value> = stdout
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    for (row, nodes) in rows.iter().zip([5, 20]) {
        assert_eq!(row["nodes"], nodes);
        assert!(row["messages_per_node_per_sec"].as_f64().unwrap() > 0.0);
        assert!(
            row["first_election_ms"].as_u64().is_some(),
            "no election: {row}"
        );
        assert!(row["peak_rss_bytes"].as_u64().unwrap() > 0);
    }
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.matches("<circle").count() == 6);
}

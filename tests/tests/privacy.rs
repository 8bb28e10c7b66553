//! Customer mode end to end: `crashmesh demo --privacy customer` runs the real endpoint and
//! three real nodes in customer mode; the crashing programs (a gdb-held SIGSEGV and a
//! Python exception per node) carry planted secrets in their environment and command
//! line. Checked here, on what the endpoint stored (`crashmesh endpoint export`): no
//! planted secret and no node name anywhere, no core; the same signatures and grouping as
//! an internal-mode run; node names replaced by the pseudonyms the cluster's key gives
//! (stable: every incident of every problem names the same three); the scrub summary and
//! the customer at the endpoint.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crashmesh_privacy::{NameClass, PseudonymKey};
use crashmesh_tests::*;
use serde_json::Value;

/// The secrets `crashmesh demo --privacy customer` plants (see `DEMO_CANARIES`).
const CANARIES: &[&str] = &["canary-env-0d5e1f", "canary-cli-7b2c9a"];

fn demo(dir: &Path, nodes: usize, privacy: &str) -> Value {
    let output = Command::new(crashmesh_binary())
        .args(["demo", "--nodes", &nodes.to_string(), "--once", "--json"])
        .args(["--privacy", privacy])
        .arg("--data-dir")
        .arg(dir)
        .output()
        .expect("run crashmesh demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "crashmesh demo --privacy {privacy} failed:\n{stdout}\n{}\nlogs in {}",
        String::from_utf8_lossy(&output.stderr),
        dir.display()
    );
    serde_json::from_str(stdout.lines().last().expect("a summary")).expect("summary JSON")
}

fn signatures(summary: &Value) -> BTreeSet<String> {
    summary["problem_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|problem| problem["signature"].as_str().unwrap().to_string())
        .collect()
}

/// Every file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn customer_mode_leaves_no_planted_secret_or_node_name_and_keeps_grouping() {
    let work = tempfile::Builder::new()
        .prefix("cm-privacy-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let internal = demo(&work.path().join("internal"), 1, "internal");
    assert_eq!(internal["privacy"], "internal");
    assert!(internal["scrub"].is_null(), "{internal}");

    let root = work.path().join("customer");
    let customer = demo(&root, 3, "customer");
    eprintln!("customer mode: {customer}");
    assert_eq!(customer["privacy"], "customer");
    assert_eq!(customer["customer_id"], "demo-customer");

    // Grouping unchanged: the same signatures, one problem each, every incident.
    assert_eq!(signatures(&customer), signatures(&internal));
    assert_eq!(customer["problems"], internal["problems"]);
    let expected_incidents = 3 * customer["problems"].as_u64().unwrap();
    assert_eq!(customer["incidents"], expected_incidents, "{customer}");

    // Node names are the pseudonyms of the cluster's key, the same in every problem.
    let key = PseudonymKey::from_hex(
        &std::fs::read_to_string(root.join("cluster").join("privacy.key")).unwrap(),
    )
    .unwrap();
    let expected_nodes: BTreeSet<String> = (1..=3)
        .map(|index| key.pseudonym(NameClass::Host, &format!("node-{index}")))
        .collect();
    for problem in customer["problem_list"].as_array().unwrap() {
        let nodes: BTreeSet<String> = problem["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|node| node.as_str().unwrap().to_string())
            .collect();
        assert_eq!(nodes, expected_nodes, "{problem}");
    }

    // What was scrubbed is counted: environment values and the planted password.
    let scrub = &customer["scrub"];
    let rules = &scrub["rules"];
    assert!(rules["env_value"].as_u64().unwrap_or(0) > 0, "{scrub}");
    let password_rules = rules["secret_argument"].as_u64().unwrap_or(0)
        + rules["secret_option"].as_u64().unwrap_or(0);
    assert!(password_rules > 0, "{scrub}");
    assert!(
        scrub["dropped_attachments"].as_u64().unwrap() >= 1,
        "the core is withheld: {scrub}"
    );

    // Everything the endpoint stored, read back through export.
    let out = root.join("export");
    let output = Command::new(crashmesh_binary())
        .args(["endpoint", "export", "--json"])
        .arg("--data-dir")
        .arg(root.join("endpoint"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let mut all = Vec::new();
    files(&out, &mut all);
    assert!(all.len() > 10, "the export has the reports' files: {all:?}");
    let names = ["node-1", "node-2", "node-3"];
    let mut scanned_bytes = 0;
    for path in &all {
        let bytes = std::fs::read(path).unwrap();
        scanned_bytes += bytes.len();
        let text = String::from_utf8_lossy(&bytes);
        for needle in CANARIES.iter().chain(names.iter()) {
            assert!(
                !text.contains(needle) && !path.to_string_lossy().contains(needle),
                "{needle} reached the endpoint in {}",
                path.display()
            );
        }
        assert!(
            !bytes.starts_with(b"\x7fELF"),
            "a core left the cluster: {}",
            path.display()
        );
        if path.file_name().is_some_and(|name| name == "report.json")
            && path
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|name| name.len() == 64)
        {
            let stored: Value = serde_json::from_slice(&bytes).unwrap();
            let manifest = &stored["manifest"];
            assert_eq!(manifest["customer_id"], "demo-customer");
            assert_eq!(manifest["scrub"]["mode"], "customer");
            assert_eq!(manifest["scrub"]["cores"], "never");
        }
    }
    eprintln!(
        "scanned {} files, {scanned_bytes} bytes at the endpoint",
        all.len()
    );

    // The node still holds the secrets (else this test would prove nothing), and
    // `privacy preview` shows its report as it leaves: scrubbed under the node's config,
    // whole under the same config in internal mode.
    let node = root.join("node-1");
    let config = node.join("config.toml");
    let crashmesh = |config: &Path, args: &[&str]| -> Value {
        let output = Command::new(crashmesh_binary())
            .arg("--data-dir")
            .arg(&node)
            .arg("--config")
            .arg(config)
            .arg("--json")
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let internal_config = node.join("internal.toml");
    std::fs::write(
        &internal_config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("mode = \"customer\"", "mode = \"internal\""),
    )
    .unwrap();
    let problems = crashmesh(&config, &["problems", "list"]);
    let core_problem = problems["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|problem| problem["kind"] == "core")
        .expect("node-1 has the core problem");
    let id = core_problem["id"].as_str().unwrap();
    let scrubbed = crashmesh(&config, &["privacy", "preview", id]).to_string();
    let whole = crashmesh(&internal_config, &["privacy", "preview", id]).to_string();
    for canary in CANARIES {
        assert!(whole.contains(canary), "the node captured {canary}");
        assert!(
            !scrubbed.contains(canary),
            "{canary} in the customer preview"
        );
    }
    assert!(whole.contains("node-1") && !scrubbed.contains("node-1"));
    assert!(scrubbed.contains(&key.pseudonym(NameClass::Host, "node-1")));

    // The vendor asks for a core of the problem (endpoint stopped: its CLI), and stops.
    let endpoint_cli = |args: &[&str]| -> Value {
        let output = Command::new(crashmesh_binary())
            .arg("--data-dir")
            .arg(root.join("endpoint"))
            .args(["--json", "endpoint", "core-request"])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let core_problem_id = customer["problem_list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|problem| problem["kind"] == "core")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(endpoint_cli(&[&core_problem_id])["core_requested"], true);
    assert_eq!(
        endpoint_cli(&[&core_problem_id, "--off"])["core_requested"],
        false
    );
}

//! The mesh's certificates through the real CLI: `crashmesh cluster init` and
//! `crashmesh cluster issue NODE`. (The QUIC transport itself is tested in
//! `node/src/transport.rs` against certificates made by the same code.)

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use crashmesh_tests::*;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Runs a command that must fail; returns its stderr.
fn fails(node: &NodeDir, args: &[&str]) -> String {
    let output = node.command(args).output().expect("run crashmesh");
    assert!(
        !output.status.success(),
        "crashmesh {args:?} succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// openssl's view of a certificate, when openssl is installed (a second opinion on what
/// rcgen wrote; the transport tests already read the same fields with webpki).
fn openssl_text(cert: &Path) -> Option<String> {
    let output = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(cert)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn cluster_init_and_issue_write_a_ca_and_node_certificates_and_never_overwrite() {
    let node = NodeDir::new("");
    let init = node.json(&["cluster", "init", "--cluster-id", "prod-7"]);
    assert_eq!(init["cluster_id"], "prod-7");
    let cluster_dir = node.data_dir.join("cluster");
    let ca_cert = cluster_dir.join("ca.pem");
    let ca_key = cluster_dir.join("ca.key");
    assert_eq!(init["ca_cert"], ca_cert.to_str().unwrap());
    assert_eq!(init["ca_key"], ca_key.to_str().unwrap());
    assert!(init["not_after"].as_str().unwrap().len() == "2056-01-01".len());
    assert_eq!(mode(&ca_key), 0o600);
    assert_eq!(mode(&cluster_dir), 0o700);
    let cluster_file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cluster_dir.join("cluster.json")).unwrap()).unwrap();
    assert_eq!(cluster_file["cluster_id"], "prod-7");
    assert_eq!(cluster_file["format_version"], 1);

    // A second init refuses, with or without an id, and leaves the CA as it was.
    let ca_before = std::fs::read(&ca_cert).unwrap();
    let key_before = std::fs::read(&ca_key).unwrap();
    assert!(fails(&node, &["cluster", "init"]).contains("refusing to overwrite"));
    assert!(
        fails(&node, &["cluster", "init", "--cluster-id", "other"])
            .contains("refusing to overwrite")
    );
    assert_eq!(std::fs::read(&ca_cert).unwrap(), ca_before);
    assert_eq!(std::fs::read(&ca_key).unwrap(), key_before);

    let issued = node.json(&["cluster", "issue", "node-1"]);
    assert_eq!(issued["node"], "node-1");
    assert_eq!(issued["cluster_id"], "prod-7");
    let cert = cluster_dir.join("nodes/node-1.pem");
    let key = cluster_dir.join("nodes/node-1.key");
    assert_eq!(issued["cert"], cert.to_str().unwrap());
    assert_eq!(issued["key"], key.to_str().unwrap());
    assert_eq!(issued["ca_cert"], ca_cert.to_str().unwrap());
    assert_eq!(mode(&key), 0o600);
    assert!(
        std::fs::read_to_string(&key)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    if let Some(text) = openssl_text(&cert) {
        assert!(text.contains("DNS:node-1"), "{text}");
        assert!(
            text.contains("O = prod-7") || text.contains("O=prod-7"),
            "{text}"
        );
        assert!(text.contains("TLS Web Client Authentication"), "{text}");
        assert!(text.contains("TLS Web Server Authentication"), "{text}");
        assert!(
            text.contains("prime256v1") || text.contains("P-256"),
            "{text}"
        );
    }

    // Issuing the same node again refuses and keeps the first key.
    let key_before = std::fs::read(&key).unwrap();
    assert!(fails(&node, &["cluster", "issue", "node-1"]).contains("refusing to overwrite"));
    assert_eq!(std::fs::read(&key).unwrap(), key_before);

    // --out puts them elsewhere (made private if new).
    let out = node.root.path().join("elsewhere");
    let issued = node.json(&["cluster", "issue", "node-2", "--out", out.to_str().unwrap()]);
    assert_eq!(issued["cert"], out.join("node-2.pem").to_str().unwrap());
    assert_eq!(mode(&out.join("node-2.key")), 0o600);
    assert_eq!(mode(&out), 0o700);

    // Names that are not plain lower-case DNS names are refused before anything is written.
    for bad in ["Node-3", "node 3", "10.0.0.3", "../node-3", ".node"] {
        assert!(
            fails(&node, &["cluster", "issue", bad]).contains("invalid node name"),
            "{bad}"
        );
    }
}

#[test]
fn cluster_init_makes_a_random_id_and_issue_needs_a_ca() {
    let node = NodeDir::new("");
    assert!(fails(&node, &["cluster", "issue", "node-1"]).contains("cluster init"));
    let init = node.json(&["cluster", "init"]);
    let id = init["cluster_id"].as_str().unwrap();
    assert!(
        id.len() >= 16 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{id}"
    );
    let other = NodeDir::new("");
    assert_ne!(other.json(&["cluster", "init"])["cluster_id"], id);
    let fresh = NodeDir::new("");
    assert!(
        fails(&fresh, &["cluster", "init", "--cluster-id", "bad/id"])
            .contains("invalid cluster id")
    );
    assert!(!fresh.data_dir.join("cluster/ca.key").exists());
    // Human output names the files.
    let output = node.run(&["cluster", "issue", "node-1"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("node-1.pem") && text.contains(id), "{text}");
}

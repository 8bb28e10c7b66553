//! Architecture invariant: the client knows the endpoint by its protocol alone. It links
//! neither the endpoint's server nor an HTTP server, so the node, which uploads through it,
//! does not carry the server it uploads to.

const SERVER_CRATES: &[&str] = &["crashmesh-endpoint", "actix-web", "actix-http", "actix-rt"];

#[test]
fn the_manifest_names_no_server_crate() {
    let manifest = include_str!("../Cargo.toml");
    let dependencies: Vec<&str> = manifest
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#') && !line.starts_with('['))
        .filter_map(|line| line.split(['=', '.']).next())
        .map(str::trim)
        .collect();
    assert!(
        dependencies.contains(&"crashmesh-protocol"),
        "{dependencies:?}"
    );
    for server in SERVER_CRATES {
        assert!(
            !dependencies.contains(server),
            "the client depends on `{server}`, a server's crate"
        );
    }
}

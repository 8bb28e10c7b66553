//! Architecture invariant: `protocol` does no I/O, reads no clock, starts no thread.
//! This test fails when the crate gains a runtime or network dependency, or its sources
//! reach for the file system, sockets, the clock, threads or ambient randomness.

use std::path::Path;

const FORBIDDEN_DEPENDENCIES: &[&str] = &[
    "tokio",
    "actix",
    "actix-rt",
    "actix-web",
    "quinn",
    "quinn-proto",
    "rustls",
    "async-std",
    "smol",
    "mio",
    "reqwest",
    "hyper",
    "redb",
    "rand",
    "getrandom",
    "libc",
    "nix",
    "tracing-subscriber",
    "crossbeam",
    "rayon",
    "memmap2",
    "tempfile",
];

const FORBIDDEN_SOURCE: &[&str] = &[
    "std::fs",
    "std::net",
    "std::thread",
    "std::process",
    "std::env",
    "SystemTime::now",
    "Instant::now",
    "UNIX_EPOCH",
    "thread_rng",
    "OsRng",
    "getrandom",
    "tokio",
    "std::io::stdin",
];

fn dependency_names(manifest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_dependencies = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_dependencies = line.contains("dependencies");
            // A `[dependencies.NAME]` table names the dependency in its header.
            if let Some(name) = line
                .strip_prefix("[dependencies.")
                .or_else(|| line.strip_prefix("[dev-dependencies."))
            {
                names.push(name.trim_end_matches(']').to_string());
            }
            continue;
        }
        if in_dependencies
            && !line.starts_with('#')
            && let Some((name, _)) = line.split_once('=')
        {
            let name = name.trim().trim_matches('"');
            names.push(name.split('.').next().unwrap().to_string());
        }
    }
    names
}

/// The line without its comment and without the insides of string literals (signature
/// rules name functions like `std::process::abort` as data, not as calls).
fn code_only(line: &str) -> String {
    let mut code = String::new();
    let mut in_string = false;
    let mut previous = ' ';
    for character in line.chars() {
        if !in_string && character == '/' && previous == '/' {
            code.pop();
            break;
        }
        if character == '"' && previous != '\\' {
            in_string = !in_string;
        } else if !in_string {
            code.push(character);
        }
        previous = character;
    }
    code
}

#[test]
fn the_manifest_has_no_runtime_network_or_os_dependency() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let names = dependency_names(&manifest);
    assert!(
        names.iter().any(|name| name == "postcard"),
        "the parser found no dependency: {names:?}"
    );
    for name in &names {
        assert!(
            !FORBIDDEN_DEPENDENCIES.contains(&name.as_str()),
            "protocol must stay sans-IO but depends on `{name}`"
        );
    }
}

#[test]
fn the_sources_touch_no_file_socket_clock_thread_or_ambient_randomness() {
    let source_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = 0;
    for entry in std::fs::read_dir(&source_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|extension| extension != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (number, line) in text.lines().enumerate() {
            let code = code_only(line);
            for forbidden in FORBIDDEN_SOURCE {
                assert!(
                    !code.contains(forbidden),
                    "{}:{}: `{forbidden}` in protocol, which must stay sans-IO: {line}",
                    path.display(),
                    number + 1
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 5, "found only {checked} source files");
}

#[test]
fn the_checks_would_catch_a_forbidden_dependency() {
    let manifest = "[dependencies]\nserde.workspace = true\ntokio = { version = \"1\" }\n[dependencies.quinn]\nversion = \"0.11\"\n";
    let names = dependency_names(manifest);
    assert!(
        names.contains(&"tokio".to_string()) && names.contains(&"quinn".to_string()),
        "{names:?}"
    );
    assert_eq!(
        code_only("let f = std::fs::read(p); // std::net"),
        "let f = std::fs::read(p); "
    );
    assert_eq!(code_only("    \"std::process::abort\","), "    ,");
}

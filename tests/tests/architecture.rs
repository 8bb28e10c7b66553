//! The architecture's invariants as tests, like rust-analyzer's tidy tests. They read the
//! sources and manifests (comments and strings left out) and fail when:
//!
//! - a crate depends on a crate the map in ARCHITECTURE.md forbids (the rooms of the node
//!   point one way: capture ← detect, gather ← mesh ← daemon ← the binary; nothing of the
//!   node links the endpoint's server but the binary; `protocol` and `untrusted` depend on
//!   no other crate of ours; the endpoint not on the node's store);
//! - two modules of a crate use each other, even through others (no module cycle in any
//!   crate);
//! - in the endpoint, a module uses a layer above its own (the top — `server`, `local`,
//!   `export`, `config` — over `http/` over `recording/` over `storage/`, with `error`,
//!   `time` and `version` below them all), or something below `http/` names actix-web;
//! - a file names a path outside the repository.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layers, lowest first: a module's layer is that of the longest prefix of its path
/// listed here. Every module must be listed, so a new one gets a place on purpose.
const LAYERS: &[(&str, Layer)] = &[
    ("error", Layer::Base),
    ("time", Layer::Base),
    ("version", Layer::Base),
    ("storage", Layer::Storage),
    ("recording", Layer::Recording),
    ("http", Layer::Http),
    ("", Layer::Top),
    ("config", Layer::Top),
    ("export", Layer::Top),
    ("local", Layer::Top),
    ("server", Layer::Top),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Layer {
    /// Below every layer, using no other module of the crate.
    Base,
    Storage,
    Recording,
    Http,
    /// Puts the layers together; nothing uses it.
    Top,
}

/// Crates the layers below HTTP must not name.
const HTTP_ONLY_CRATES: &[&str] = &["actix_web", "actix_http", "actix_rt"];

/// A module's path (`storage::db`; the crate root is ``).
type ModulePath = String;

/// The crate's sources: module path → code (comments and string contents removed).
struct Sources {
    code: BTreeMap<ModulePath, String>,
    /// Whether the module is a `mod.rs` or `lib.rs` (its children are modules).
    parents: BTreeSet<ModulePath>,
}

impl Sources {
    fn read(source_dir: &Path) -> Sources {
        let mut files = BTreeMap::new();
        read_dir(source_dir, source_dir, &mut files);
        Sources::from_files(&files)
    }

    /// From (path relative to `src`, text) pairs.
    fn from_files(files: &BTreeMap<String, String>) -> Sources {
        let mut code = BTreeMap::new();
        let mut parents = BTreeSet::new();
        for (path, text) in files {
            if path.starts_with("bin/") {
                continue;
            }
            let module = path.trim_end_matches(".rs");
            let module = if module == "lib" {
                parents.insert(String::new());
                String::new()
            } else if let Some(parent) = module.strip_suffix("/mod") {
                parents.insert(parent.replace('/', "::"));
                parent.replace('/', "::")
            } else {
                module.replace('/', "::")
            };
            code.insert(module, code_only(text));
        }
        Sources { code, parents }
    }

    /// The module a path names: its longest prefix that is a module, or what a parent
    /// module re-exports under its next segment (`pub use child::{Name, …}`).
    fn resolve(&self, segments: &[String]) -> ModulePath {
        let mut module = String::new();
        for segment in segments {
            let child = join(&module, segment);
            if self.code.contains_key(&child) {
                module = child;
                continue;
            }
            if let Some(reexported) = self.reexport(&module, segment) {
                module = reexported;
            }
            break;
        }
        module
    }

    /// The child module a parent's `pub use child::…` takes `name` from.
    fn reexport(&self, parent: &str, name: &str) -> Option<ModulePath> {
        let code = self.code.get(parent)?;
        for statement in code.split(';') {
            let Some(tree) = statement.trim().strip_prefix("pub use ") else {
                continue;
            };
            for path in expand_use_tree(tree) {
                if path.last().map(String::as_str) == Some(name) && path.len() > 1 {
                    let child = join(parent, &path[0]);
                    if self.code.contains_key(&child) {
                        return Some(child);
                    }
                }
            }
        }
        None
    }

    /// Every module each module uses (`crate::…`, `super::…`, `self::…` paths), itself
    /// left out.
    fn uses(&self) -> BTreeMap<ModulePath, BTreeSet<ModulePath>> {
        let mut graph = BTreeMap::new();
        for (module, code) in &self.code {
            let mut used = BTreeSet::new();
            for (scope, path) in paths(code) {
                let file_module: Vec<String> = if module.is_empty() {
                    Vec::new()
                } else {
                    module.split("::").map(str::to_string).collect()
                };
                // Inline modules (`mod tests { … }`) nest below the file's module; a
                // `super` from inside one first climbs out of them.
                let mut base: Vec<String> = file_module.iter().cloned().chain(scope).collect();
                let mut segments = path.into_iter().peekable();
                match segments.peek().map(String::as_str) {
                    Some("crate") => {
                        segments.next();
                        base.clear();
                    }
                    Some("self") => {
                        segments.next();
                    }
                    _ => {}
                }
                while segments.peek().map(String::as_str) == Some("super") {
                    segments.next();
                    base.pop();
                }
                let mut full = base;
                full.extend(segments);
                // A path into the file's own inline modules resolves to the file.
                let target = self.resolve(&full);
                if &target != module {
                    used.insert(target);
                }
            }
            graph.insert(module.clone(), used);
        }
        graph
    }
}

fn join(module: &str, segment: &str) -> String {
    if module.is_empty() {
        segment.to_string()
    } else {
        format!("{module}::{segment}")
    }
}

fn read_dir(root: &Path, dir: &Path, files: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            read_dir(root, &path, files);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            files.insert(relative, std::fs::read_to_string(&path).unwrap());
        }
    }
}

fn layer_of(module: &str) -> Option<Layer> {
    let first = module.split("::").next().unwrap_or("");
    LAYERS
        .iter()
        .find(|(name, _)| *name == first)
        .map(|(_, layer)| *layer)
}

/// The text without comments and without the insides of string and character literals
/// (a string may well say `crate::http`); lifetimes are kept as they are.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut index = 0;
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    while index < chars.len() {
        let character = chars[index];
        let next = chars.get(index + 1).copied();
        if character == '/' && next == Some('/') {
            while index < chars.len() && chars[index] != '\n' {
                index += 1;
            }
            continue;
        }
        if character == '/' && next == Some('*') {
            let mut depth = 0;
            while index < chars.len() {
                if chars[index] == '/' && chars.get(index + 1) == Some(&'*') {
                    depth += 1;
                    index += 2;
                } else if chars[index] == '*' && chars.get(index + 1) == Some(&'/') {
                    depth -= 1;
                    index += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    index += 1;
                }
            }
            out.push(' ');
            continue;
        }
        let starts_word = index == 0 || !ident(chars[index - 1]);
        // Raw strings: r"…", r#"…"#, br"…".
        let raw_start = match (character, next) {
            ('r', Some('"' | '#')) if starts_word => Some(index + 1),
            ('b', Some('r')) if starts_word && matches!(chars.get(index + 2), Some('"' | '#')) => {
                Some(index + 2)
            }
            _ => None,
        };
        if let Some(mut at) = raw_start {
            let mut hashes = 0;
            while chars.get(at) == Some(&'#') {
                hashes += 1;
                at += 1;
            }
            if chars.get(at) == Some(&'"') {
                at += 1;
                loop {
                    match chars.get(at) {
                        None => break,
                        Some('"')
                            if (1..=hashes).all(|offset| chars.get(at + offset) == Some(&'#')) =>
                        {
                            at += 1 + hashes;
                            break;
                        }
                        Some(_) => at += 1,
                    }
                }
                out.push_str("\"\"");
                index = at;
                continue;
            }
        }
        if character == '"' {
            index += 1;
            while index < chars.len() && chars[index] != '"' {
                index += if chars[index] == '\\' { 2 } else { 1 };
            }
            index += 1;
            out.push_str("\"\"");
            continue;
        }
        if character == '\'' {
            // A character literal ('x', '\n', '\u{1F600}'), else a lifetime.
            if next == Some('\\') {
                index += 2;
                while index < chars.len() && chars[index] != '\'' {
                    index += 1;
                }
                index += 1;
                out.push_str("' '");
                continue;
            }
            if chars.get(index + 2) == Some(&'\'') {
                index += 3;
                out.push_str("' '");
                continue;
            }
        }
        out.push(character);
        index += 1;
    }
    out
}

/// A use tree (`a::{b, c::d as e}`) as the paths it names.
fn expand_use_tree(tree: &str) -> Vec<Vec<String>> {
    let tokens = tokens(tree);
    let mut position = 0;
    let mut out = Vec::new();
    parse_tree(&tokens, &mut position, Vec::new(), &mut out);
    out
}

fn tokens(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut index = 0;
    while index < chars.len() {
        let character = chars[index];
        if character.is_alphanumeric() || character == '_' {
            word.push(character);
            index += 1;
            continue;
        }
        if !word.is_empty() {
            tokens.push(std::mem::take(&mut word));
        }
        if character == ':' && chars.get(index + 1) == Some(&':') {
            tokens.push("::".into());
            index += 2;
            continue;
        }
        if !character.is_whitespace() {
            tokens.push(character.to_string());
        }
        index += 1;
    }
    if !word.is_empty() {
        tokens.push(word);
    }
    tokens
}

/// Parses one tree at `position`: a path, then `::{…}` or `as name` or nothing.
fn parse_tree(
    tokens: &[String],
    position: &mut usize,
    prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) {
    let mut path = prefix;
    loop {
        match tokens.get(*position).map(String::as_str) {
            Some("{") => {
                *position += 1;
                loop {
                    match tokens.get(*position).map(String::as_str) {
                        Some("}") => {
                            *position += 1;
                            return;
                        }
                        Some(",") => *position += 1,
                        None => return,
                        _ => parse_tree(tokens, position, path.clone(), out),
                    }
                }
            }
            Some(word) if word.chars().all(|c| c.is_alphanumeric() || c == '_') || word == "*" => {
                path.push(word.to_string());
                *position += 1;
                if tokens.get(*position).map(String::as_str) == Some("::") {
                    *position += 1;
                    continue;
                }
                if tokens.get(*position).map(String::as_str) == Some("as") {
                    *position += 2;
                }
                out.push(path);
                return;
            }
            _ => {
                out.push(path);
                return;
            }
        }
    }
}

/// Every path that starts with `crate`, `super` or `self` in the code, each with the
/// inline modules (`mod name { … }`) it stands in.
fn paths(code: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let tokens = tokens(code);
    let mut found = Vec::new();
    // The inline modules open here, with the brace depth each closes at.
    let mut scope: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut index = 0;
    while index < tokens.len() {
        let token = tokens[index].as_str();
        match token {
            "mod" if tokens.get(index + 2).map(String::as_str) == Some("{") => {
                scope.push((tokens[index + 1].clone(), depth));
                depth += 1;
                index += 3;
                continue;
            }
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if scope.last().is_some_and(|(_, at)| *at == depth) {
                    scope.pop();
                }
            }
            "crate" | "super" | "self"
                if tokens.get(index + 1).map(String::as_str) == Some("::")
                    && (index == 0 || tokens[index - 1] != "::") =>
            {
                let mut position = index;
                let mut trees = Vec::new();
                parse_tree(&tokens, &mut position, Vec::new(), &mut trees);
                let names: Vec<String> = scope.iter().map(|(name, _)| name.clone()).collect();
                for tree in trees {
                    found.push((names.clone(), tree));
                }
                // The tree's own braces were read by `parse_tree`.
                index = position.max(index + 1);
                continue;
            }
            _ => {}
        }
        index += 1;
    }
    found
}

/// Every use that points to a higher layer, or from the base to any layer, as text.
fn upward_uses(sources: &Sources) -> Vec<String> {
    let mut found = Vec::new();
    for (module, used) in sources.uses() {
        let layer = layer_of(&module).unwrap_or_else(|| {
            panic!(
                "module `{module}` has no layer: add it to LAYERS in tests/tests/architecture.rs"
            )
        });
        for target in used {
            let target_layer = layer_of(&target).unwrap_or(Layer::Top);
            let allowed = if layer == Layer::Base {
                target_layer == Layer::Base
            } else {
                target_layer <= layer
            };
            if !allowed {
                found.push(format!(
                    "`{module}` ({layer:?}) uses `{target}` ({target_layer:?})"
                ));
            }
        }
    }
    found
}

/// A cycle of modules, if there is one.
fn cycle(graph: &BTreeMap<ModulePath, BTreeSet<ModulePath>>) -> Option<Vec<ModulePath>> {
    fn visit(
        module: &ModulePath,
        graph: &BTreeMap<ModulePath, BTreeSet<ModulePath>>,
        done: &mut BTreeSet<ModulePath>,
        stack: &mut Vec<ModulePath>,
    ) -> Option<Vec<ModulePath>> {
        if let Some(start) = stack.iter().position(|on_stack| on_stack == module) {
            let mut found = stack[start..].to_vec();
            found.push(module.clone());
            return Some(found);
        }
        if done.contains(module) {
            return None;
        }
        stack.push(module.clone());
        for next in graph.get(module).into_iter().flatten() {
            if let Some(found) = visit(next, graph, done, stack) {
                return Some(found);
            }
        }
        stack.pop();
        done.insert(module.clone());
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(found) = visit(module, graph, &mut done, &mut Vec::new()) {
            return Some(found);
        }
    }
    None
}

/// Modules below HTTP that name a crate of HTTP's.
fn http_crates_below_http(sources: &Sources) -> Vec<String> {
    let mut found = Vec::new();
    for (module, code) in &sources.code {
        if layer_of(module).is_some_and(|layer| layer < Layer::Http) {
            for name in HTTP_ONLY_CRATES {
                if tokens(code).iter().any(|token| token == name) {
                    found.push(format!("`{module}` names `{name}`"));
                }
            }
        }
    }
    found
}

fn endpoint_sources() -> Sources {
    Sources::read(&crashmesh_tests::workspace_root().join("endpoint/src"))
}

#[test]
fn no_endpoint_module_uses_a_layer_above_its_own() {
    let sources = endpoint_sources();
    assert!(
        sources.code.len() >= 30 && sources.parents.len() == 4,
        "found {} modules, {} of them parents",
        sources.code.len(),
        sources.parents.len()
    );
    let upward = upward_uses(&sources);
    assert!(
        upward.is_empty(),
        "uses pointing up:\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_two_endpoint_modules_use_each_other() {
    let graph = endpoint_sources().uses();
    assert!(
        graph["recording::ingest"].contains("recording::record")
            && graph["http::upload"].contains("storage::blobs"),
        "the use graph misses known edges: {graph:?}"
    );
    if let Some(found) = cycle(&graph) {
        panic!("a cycle: {}", found.join(" → "));
    }
}

#[test]
fn nothing_below_http_names_actix() {
    let found = http_crates_below_http(&endpoint_sources());
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_checks_would_catch_a_use_pointing_up_and_a_cycle() {
    let files: BTreeMap<String, String> = [
        ("lib.rs", "pub mod storage; pub mod http; pub mod time;"),
        (
            "storage/mod.rs",
            "pub mod db; pub mod packs; pub use db::Db;",
        ),
        (
            "storage/db.rs",
            "// use crate::http::AppState;\nconst HELP: &str = \"crate::http\";\n\
             use crate::{storage::packs::Location, http::state::AppState};\n\
             fn f<'a>(x: &'a str) -> char { 'c' }",
        ),
        (
            "storage/packs.rs",
            "use crate::storage::Db; fn g() { super::super::http::routes(); }",
        ),
        ("http/mod.rs", "pub mod state; pub mod routes;"),
        ("http/state.rs", "pub struct AppState;"),
        ("http/routes.rs", ""),
        (
            "time.rs",
            "pub fn now() {}\n#[cfg(test)]\nmod tests {\n    use super::*;\n}",
        ),
    ]
    .into_iter()
    .map(|(path, text)| (path.to_string(), text.to_string()))
    .collect();
    let sources = Sources::from_files(&files);
    let graph = sources.uses();
    assert_eq!(
        graph["storage::db"],
        BTreeSet::from(["storage::packs".to_string(), "http::state".to_string()]),
        "comments and strings are not code; a brace group names each path"
    );
    assert_eq!(
        graph["storage::packs"],
        BTreeSet::from(["storage::db".to_string(), "http::routes".to_string()]),
        "a re-export is its child; `super` climbs from the file's module"
    );
    assert!(
        graph["time"].is_empty(),
        "a test module's `super` is its file"
    );
    let upward = upward_uses(&sources);
    assert_eq!(upward.len(), 2, "{upward:?}");
    assert_eq!(
        cycle(&graph),
        Some(vec![
            "storage::db".to_string(),
            "storage::packs".to_string(),
            "storage::db".to_string()
        ])
    );
    let with_actix = Sources::from_files(&BTreeMap::from([(
        "storage/blobs.rs".to_string(),
        "use actix_web::web;".to_string(),
    )]));
    assert_eq!(http_crates_below_http(&with_actix).len(), 1);
}

/// The workspace's crates: directory → package name.
const CRATES: &[(&str, &str)] = &[
    ("protocol", "crashmesh-protocol"),
    ("untrusted", "crashmesh-untrusted"),
    ("debuginfod", "crashmesh-debuginfod"),
    ("store", "crashmesh-store"),
    ("coredump", "crashmesh-coredump"),
    ("parsers", "crashmesh-parsers"),
    ("privacy", "crashmesh-privacy"),
    ("capture", "crashmesh-capture"),
    ("detect", "crashmesh-detect"),
    ("gather", "crashmesh-gather"),
    ("mesh", "crashmesh-mesh"),
    ("daemon", "crashmesh-daemon"),
    ("endpoint-client", "crashmesh-endpoint-client"),
    ("endpoint", "crashmesh-endpoint"),
    ("node", "crashmesh"),
    ("simulator", "crashmesh-simulator"),
    ("tests", "crashmesh-tests"),
];

/// Which of our crates each crate may depend on (its `[dependencies]`; tests may use more
/// through `[dev-dependencies]`). This is ARCHITECTURE.md's code map as data.
const ALLOWED: &[(&str, &[&str])] = &[
    ("crashmesh-protocol", &[]),
    ("crashmesh-untrusted", &[]),
    ("crashmesh-debuginfod", &[]),
    ("crashmesh-store", &["crashmesh-protocol"]),
    (
        "crashmesh-coredump",
        &["crashmesh-protocol", "crashmesh-untrusted"],
    ),
    ("crashmesh-parsers", &["crashmesh-protocol"]),
    ("crashmesh-privacy", &["crashmesh-protocol"]),
    (
        "crashmesh-capture",
        &["crashmesh-protocol", "crashmesh-store"],
    ),
    (
        "crashmesh-detect",
        &[
            "crashmesh-protocol",
            "crashmesh-parsers",
            "crashmesh-store",
            "crashmesh-untrusted",
            "crashmesh-capture",
        ],
    ),
    (
        "crashmesh-gather",
        &[
            "crashmesh-protocol",
            "crashmesh-store",
            "crashmesh-untrusted",
            "crashmesh-capture",
        ],
    ),
    (
        "crashmesh-mesh",
        &[
            "crashmesh-protocol",
            "crashmesh-store",
            "crashmesh-privacy",
            "crashmesh-capture",
            "crashmesh-gather",
            "crashmesh-endpoint-client",
        ],
    ),
    (
        "crashmesh-daemon",
        &[
            "crashmesh-protocol",
            "crashmesh-store",
            "crashmesh-coredump",
            "crashmesh-debuginfod",
            "crashmesh-parsers",
            "crashmesh-untrusted",
            "crashmesh-capture",
            "crashmesh-detect",
            "crashmesh-gather",
            "crashmesh-mesh",
        ],
    ),
    ("crashmesh-endpoint-client", &["crashmesh-protocol"]),
    (
        "crashmesh-endpoint",
        &[
            "crashmesh-protocol",
            "crashmesh-untrusted",
            "crashmesh-coredump",
            "crashmesh-debuginfod",
            "crashmesh-endpoint-client",
        ],
    ),
    (
        "crashmesh",
        &[
            "crashmesh-protocol",
            "crashmesh-store",
            "crashmesh-coredump",
            "crashmesh-parsers",
            "crashmesh-privacy",
            "crashmesh-untrusted",
            "crashmesh-capture",
            "crashmesh-detect",
            "crashmesh-gather",
            "crashmesh-mesh",
            "crashmesh-daemon",
            "crashmesh-endpoint",
            "crashmesh-endpoint-client",
        ],
    ),
    (
        "crashmesh-simulator",
        &[
            "crashmesh-protocol",
            "crashmesh-store",
            "crashmesh-endpoint-client",
        ],
    ),
    (
        "crashmesh-tests",
        &["crashmesh-privacy", "crashmesh-endpoint-client"],
    ),
];

/// The names under `[dependencies]` of a manifest that are crates of ours.
fn our_dependencies(manifest: &str) -> Vec<String> {
    let mut section = String::new();
    let mut found = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        if section != "[dependencies]" || line.starts_with('#') {
            continue;
        }
        let name = line
            .split(['=', '.', ' '])
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        if name.starts_with("crashmesh") {
            found.push(name);
        }
    }
    found
}

/// Every dependency on a crate of ours that the map does not allow, as text.
fn forbidden_dependencies(manifests: &[(&str, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (package, manifest) in manifests {
        let allowed = ALLOWED
            .iter()
            .find(|(name, _)| name == package)
            .map(|(_, allowed)| *allowed)
            .unwrap_or_else(|| panic!("{package} is not in ALLOWED: give it a place on the map"));
        for dependency in our_dependencies(manifest) {
            if !allowed.contains(&dependency.as_str()) {
                found.push(format!("{package} depends on {dependency}"));
            }
        }
    }
    found
}

#[test]
fn every_crate_depends_only_on_what_the_map_allows() {
    let root = crashmesh_tests::workspace_root();
    let workspace = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let manifests: Vec<(&str, String)> = CRATES
        .iter()
        .map(|(dir, package)| {
            let manifest = std::fs::read_to_string(root.join(dir).join("Cargo.toml"))
                .unwrap_or_else(|error| panic!("{dir}/Cargo.toml: {error}"));
            assert!(
                manifest.contains(&format!("name = \"{package}\"")),
                "{dir}/Cargo.toml is not {package}"
            );
            assert!(
                workspace.contains(&format!("\"{dir}\"")),
                "{dir} is not a workspace member"
            );
            (*package, manifest)
        })
        .collect();
    let found = forbidden_dependencies(&manifests);
    assert!(
        found.is_empty(),
        "against ARCHITECTURE.md's map:\n{}",
        found.join("\n")
    );
    // The node's rooms do link what the map says they do (the check reads real manifests).
    let daemon = &manifests
        .iter()
        .find(|(name, _)| *name == "crashmesh-daemon")
        .unwrap()
        .1;
    assert!(our_dependencies(daemon).contains(&"crashmesh-mesh".to_string()));
}

#[test]
fn the_dependency_check_would_catch_a_room_reaching_up() {
    let manifests = vec![
        (
            "crashmesh-mesh",
            "[dependencies]\ncrashmesh-daemon.workspace = true\n# crashmesh-endpoint = 1\n[dev-dependencies]\ncrashmesh-endpoint.workspace = true\n".to_string(),
        ),
        (
            "crashmesh-protocol",
            "[dependencies]\ncrashmesh-store = { path = \"../store\" }\n".to_string(),
        ),
    ];
    assert_eq!(
        forbidden_dependencies(&manifests),
        [
            "crashmesh-mesh depends on crashmesh-daemon",
            "crashmesh-protocol depends on crashmesh-store"
        ]
    );
}

#[test]
fn no_crate_has_a_module_cycle() {
    let root = crashmesh_tests::workspace_root();
    let mut checked = 0;
    for (dir, _) in CRATES {
        let source_dir = root.join(dir).join("src");
        if !source_dir.is_dir() {
            continue;
        }
        let graph = Sources::read(&source_dir).uses();
        checked += graph.len();
        if let Some(found) = cycle(&graph) {
            panic!("a module cycle in {dir}: {}", found.join(" → "));
        }
    }
    assert!(checked > 100, "only {checked} modules read");
}

/// Text files the repository tracks.
fn tracked_text_files() -> Vec<std::path::PathBuf> {
    let root = crashmesh_tests::workspace_root();
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["ls-files", "-z"])
        .output()
        .expect("git ls-files");
    assert!(output.status.success());
    output
        .stdout
        .split(|&byte| byte == 0)
        .filter(|name| !name.is_empty())
        .map(|name| root.join(String::from_utf8_lossy(name).as_ref()))
        .filter(|path| {
            let name = path.to_string_lossy();
            [".rs", ".toml", ".md", ".py", ".sh", ".yml"]
                .iter()
                .any(|extension| name.ends_with(extension))
                || name.ends_with("/run")
                || name.ends_with("/test")
        })
        .collect()
}

/// Paths in `text` (a file at `file`) that lead out of the repository at `root`: in Rust,
/// the paths joined to `CARGO_MANIFEST_DIR` or the workspace root and the files
/// `include_str!`/`include_bytes!` read; in Markdown, link targets; anywhere, the
/// sibling folders the project started from and absolute paths of this machine. (Paths
/// in test inputs — a traversal an attacker tries — are data, not places.)
fn paths_outside(root: &Path, file: &Path, text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let crate_dir = file
        .ancestors()
        .skip(1)
        .find(|dir| dir.join("Cargo.toml").is_file() && dir.starts_with(root))
        .unwrap_or(root);
    let file_dir = file.parent().unwrap_or(root);
    let depth_of = |dir: &Path| {
        dir.strip_prefix(root)
            .map_or(0, |relative| relative.components().count()) as i64
    };
    let climbs_out = |base: &Path, path: &str| {
        let mut depth = depth_of(base);
        for component in path.split('/') {
            match component {
                ".." => depth -= 1,
                "" | "." => {}
                _ => depth += 1,
            }
            if depth < 0 {
                return true;
            }
        }
        false
    };
    let is_rust = file.extension().is_some_and(|extension| extension == "rs");
    let is_markdown = file.extension().is_some_and(|extension| extension == "md");
    for line in text.lines() {
        if is_rust {
            let rooted = line.contains("workspace_root");
            let places = line.contains("CARGO_MANIFEST_DIR")
                || rooted
                || line.contains("include_str!")
                || line.contains("include_bytes!");
            if !places {
                continue;
            }
            for literal in line.split('"').skip(1).step_by(2) {
                let base = if rooted {
                    root
                } else if line.contains("CARGO_MANIFEST_DIR") {
                    crate_dir
                } else {
                    file_dir
                };
                if literal.contains("..") && climbs_out(base, literal.trim_start_matches('/')) {
                    found.push(literal.to_string());
                }
            }
        } else if is_markdown {
            for target in line.split("](").skip(1) {
                let target = target.split([')', '#']).next().unwrap_or("");
                if !target.contains("://") && climbs_out(file_dir, target) {
                    found.push(target.to_string());
                }
            }
        }
    }
    for absolute in ["/work/", "shared/corpus", "shared/DESIGN", "shared/STYLE"] {
        if text.contains(absolute) {
            found.push(absolute.to_string());
        }
    }
    found
}

#[test]
fn no_file_names_a_path_outside_the_repository() {
    let root = crashmesh_tests::workspace_root();
    let files = tracked_text_files();
    assert!(files.len() > 100, "only {} files", files.len());
    let mut found = Vec::new();
    for file in &files {
        if file.ends_with("tests/tests/architecture.rs") {
            continue; // names the forbidden paths to look for them
        }
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for path in paths_outside(&root, file, &text) {
            found.push(format!(
                "{}: {path}",
                file.strip_prefix(&root).unwrap().display()
            ));
        }
    }
    assert!(
        found.is_empty(),
        "paths outside the repository:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_path_check_would_catch_the_old_corpus_path() {
    let root = crashmesh_tests::workspace_root();
    let file = root.join("parsers/tests/kernel_corpus.rs");
    assert_eq!(
        paths_outside(
            &root,
            &file,
            "const CORPUS: &str = concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/../../shared/corpus/x\");"
        ),
        ["/../../shared/corpus/x", "shared/corpus"]
    );
    assert!(
        paths_outside(
            &root,
            &file,
            "concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/tests/corpus\");\nlet bad = \"../../../etc/passwd\";"
        )
        .is_empty()
    );
    let readme = root.join("docs/node.md");
    assert_eq!(
        paths_outside(
            &root,
            &readme,
            "see [the design](../../shared/DESIGN.md) and [map](../ARCHITECTURE.md)"
        ),
        ["../../shared/DESIGN.md", "shared/DESIGN"]
    );
}

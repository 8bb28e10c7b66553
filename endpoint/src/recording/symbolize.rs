//! Server-side re-symbolization: frames the node could not name (a build-id and an offset
//! from the module's load bias, no function) get a name and file:line from the module's
//! debug file, read as the node reads one (`crashmesh_coredump::symbols`: symbol tables
//! and DWARF, compressed or not). Debug files come from a local directory in the
//! debuginfod layout (`<dir>/buildid/<build-id>/debuginfo`) and from debuginfod servers
//! through `crashmesh-debuginfod` (a cache bounded in bytes, a timeout per fetch).
//!
//! Invariants: a build-id is used in a path or a URL only when it is plain lower-case hex
//! (`crashmesh_debuginfod::is_build_id`); no file over [`SYMBOL_FILE_BYTES_MAX`] is read;
//! a server that does not answer costs one problem its names, never an upload (the
//! committer waits on no server: names are looked up before the job is queued, on a
//! blocking thread); a build-id nobody had is not asked for again until the in-memory
//! table turns over ([`CACHED_FILES_MAX`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crashmesh_coredump::symbols::{DebugStore, Symbolizer as FileSymbolizer};
use crashmesh_protocol::{Frame, Problem};
use serde::{Deserialize, Serialize};

/// The largest debug file read or kept.
pub const SYMBOL_FILE_BYTES_MAX: u64 = 2 << 30;
/// Debug files kept open in memory (mapped).
pub const CACHED_FILES_MAX: usize = 64;

/// Debug files from debuginfod servers: `[symbols]` of the configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SymbolsConfig {
    /// A local directory in the debuginfod layout, read first.
    pub dir: Option<PathBuf>,
    /// debuginfod servers, tried in order; default: `DEBUGINFOD_URLS` (space-separated),
    /// as elfutils and gdb read it.
    pub debuginfod_urls: Vec<String>,
    /// Where fetched files are kept; default `DATA_DIR/debuginfod`.
    pub cache_dir: Option<PathBuf>,
    /// The cache's size; past it, the least recently used files go.
    pub cache_bytes_max: u64,
    /// Time allowed for one fetch, the whole file included.
    pub timeout_ms: u64,
}

impl Default for SymbolsConfig {
    fn default() -> SymbolsConfig {
        SymbolsConfig {
            dir: None,
            debuginfod_urls: crashmesh_debuginfod::urls_from_environment(),
            cache_dir: None,
            cache_bytes_max: 8 << 30,
            timeout_ms: 30_000,
        }
    }
}

impl SymbolsConfig {
    /// True when there is anywhere to look.
    pub fn enabled(&self) -> bool {
        self.dir.is_some() || !self.debuginfod_urls.is_empty()
    }
}

/// A mapped debug file, ready to build a symbolizer from.
struct DebugFile {
    store: DebugStore,
}

/// Names frames from debug files found by build-id.
pub struct Symbolizer {
    dir: Option<PathBuf>,
    debuginfod: Option<crashmesh_debuginfod::Client>,
    files: Mutex<HashMap<String, Option<Arc<DebugFile>>>>,
}

/// A debug file mapped read-only, through the reader the node's analysis uses (a regular
/// file only, at most [`SYMBOL_FILE_BYTES_MAX`]); the paths are this server's own (its
/// cache, the admin's directory), so links in them are followed.
fn map(path: &Path) -> Option<memmap2::Mmap> {
    let candidate = crashmesh_coredump::modules::Candidate {
        root: None,
        path: path.to_path_buf(),
        trusted: true,
    };
    crashmesh_coredump::modules::map_regular_file(&candidate, SYMBOL_FILE_BYTES_MAX)
        .map_err(|error| tracing::warn!(path = %path.display(), %error, "debug file skipped"))
        .ok()
}

impl Symbolizer {
    /// A symbolizer for `config`; fetched files go under `data_dir` unless configured.
    pub fn new(config: SymbolsConfig, data_dir: &Path) -> Symbolizer {
        let debuginfod = (!config.debuginfod_urls.is_empty()).then(|| {
            crashmesh_debuginfod::Client::new(
                config.debuginfod_urls.clone(),
                config
                    .cache_dir
                    .clone()
                    .unwrap_or_else(|| data_dir.join("debuginfod")),
                config.cache_bytes_max,
                Duration::from_millis(config.timeout_ms),
            )
        });
        Symbolizer {
            dir: config.dir,
            debuginfod,
            files: Mutex::new(HashMap::new()),
        }
    }

    fn debug_file(&self, build_id: &str) -> Option<Arc<DebugFile>> {
        if let Some(known) = self.files.lock().unwrap().get(build_id) {
            return known.clone();
        }
        let found = self.find(build_id).and_then(|path| {
            let map = map(&path)?;
            Some(Arc::new(DebugFile {
                store: DebugStore::of_debug_file(path, map, true),
            }))
        });
        let mut files = self.files.lock().unwrap();
        if files.len() >= CACHED_FILES_MAX {
            files.clear();
        }
        files.insert(build_id.to_string(), found.clone());
        found
    }

    /// The local file, else the cached or fetched one.
    fn find(&self, build_id: &str) -> Option<PathBuf> {
        if let Some(dir) = &self.dir {
            let path = dir.join("buildid").join(build_id).join("debuginfo");
            if path.is_file() {
                return Some(path);
            }
        }
        self.debuginfod.as_ref()?.debuginfo(build_id)
    }

    /// Names what it can in the problem's frames and threads (name, offset in the
    /// function, file:line); returns how many frames.
    pub fn problem(&self, problem: &mut Problem) -> usize {
        let mut named = 0;
        let mut frames: Vec<&mut Frame> = problem.frames.iter_mut().collect();
        for thread in problem.threads.iter_mut().flatten() {
            frames.extend(thread.frames.iter_mut());
        }
        let mut by_build_id: HashMap<String, Vec<&mut Frame>> = HashMap::new();
        for frame in frames {
            if let (None, Some(build_id), Some(_)) =
                (&frame.function, frame.build_id.as_deref(), frame.offset)
                && crashmesh_debuginfod::is_build_id(build_id)
            {
                by_build_id
                    .entry(build_id.to_string())
                    .or_default()
                    .push(frame);
            }
        }
        for (build_id, frames) in by_build_id {
            let Some(file) = self.debug_file(&build_id) else {
                continue;
            };
            let symbolizer = FileSymbolizer::new(None, &file.store);
            for frame in frames {
                let offset = frame.offset.expect("selected with an offset");
                let hit = symbolizer.lookup(offset);
                let Some(function) = hit.function else {
                    continue;
                };
                frame.function = Some(function);
                if let Some(start) = hit.function_start {
                    frame.offset = Some(offset.wrapping_sub(start));
                }
                frame.file = hit.file;
                frame.line = hit.line;
                named += 1;
            }
        }
        named
    }
}

/// True when some frame could be named by a symbolizer.
pub fn wants_symbols(problem: &Problem) -> bool {
    let wants = |frame: &Frame| {
        frame.function.is_none() && frame.build_id.is_some() && frame.offset.is_some()
    };
    problem.frames.iter().any(wants)
        || problem
            .threads
            .iter()
            .flatten()
            .any(|thread| thread.frames.iter().any(wants))
}

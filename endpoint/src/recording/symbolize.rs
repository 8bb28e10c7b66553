//! Server-side re-symbolization: frames the node could not name (a build-id and an offset
//! from the module's load bias, no function) get a name and file:line from the module's
//! debug file, read as the node reads one (`crashmesh_coredump::symbols`: symbol tables
//! and DWARF, compressed or not). Debug files come from a local directory in the
//! debuginfod layout (`<dir>/buildid/<build-id>/debuginfo`) and from debuginfod servers
//! (`GET <url>/buildid/<build-id>/debuginfo`), whose answers are kept in a cache
//! directory bounded in bytes (the least recently used go first).
//!
//! Invariants: a build-id is used in a path or a URL only when it is 2 to 128 lower-case
//! hex digits; no file over [`SYMBOL_FILE_BYTES_MAX`] is read or kept; every request to a
//! server has a timeout, and a server that does not answer costs one problem its names,
//! never an upload (the committer waits on no server: names are looked up before the job
//! is queued, on a blocking thread); a build-id nobody had is not asked for again until
//! the in-memory table turns over ([`CACHED_FILES_MAX`]).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

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
            debuginfod_urls: std::env::var("DEBUGINFOD_URLS")
                .map(|urls| urls.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
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
    config: SymbolsConfig,
    cache_dir: PathBuf,
    agent: ureq::Agent,
    files: Mutex<HashMap<String, Option<Arc<DebugFile>>>>,
}

fn is_build_id(text: &str) -> bool {
    (2..=128).contains(&text.len()) && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn map(path: &Path) -> Option<memmap2::Mmap> {
    let file = std::fs::File::open(path).ok()?;
    let size = file.metadata().ok()?.len();
    if size > SYMBOL_FILE_BYTES_MAX {
        tracing::warn!(path = %path.display(), size, "debug file too large; skipped");
        return None;
    }
    // SAFETY: a read-only private map of a file only this server writes (its cache, by
    // rename) or the admin's symbol directory.
    unsafe { memmap2::Mmap::map(&file) }.ok()
}

impl Symbolizer {
    /// A symbolizer for `config`; fetched files go under `data_dir` unless configured.
    pub fn new(config: SymbolsConfig, data_dir: &Path) -> Symbolizer {
        let cache_dir = config
            .cache_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("debuginfod"));
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(config.timeout_ms.max(1))))
            .http_status_as_error(false)
            .build()
            .into();
        Symbolizer {
            config,
            cache_dir,
            agent,
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

    /// The local file, the cached one, or one fetched now.
    fn find(&self, build_id: &str) -> Option<PathBuf> {
        let relative = Path::new("buildid").join(build_id).join("debuginfo");
        if let Some(dir) = &self.config.dir {
            let path = dir.join(&relative);
            if path.is_file() {
                return Some(path);
            }
        }
        let cached = self.cache_dir.join(build_id).join("debuginfo");
        if cached.is_file() {
            // Recently used: the cache's eviction goes by modification time.
            if let Ok(file) = std::fs::File::options().write(true).open(&cached) {
                let _ = file.set_modified(SystemTime::now());
            }
            return Some(cached);
        }
        for url in &self.config.debuginfod_urls {
            match self.fetch(url, build_id, &cached) {
                Ok(true) => return Some(cached),
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(url, build_id, %error, "debuginfod fetch failed");
                }
            }
        }
        None
    }

    /// Downloads one debug file into the cache (true), or learns the server has none
    /// (false).
    fn fetch(&self, url: &str, build_id: &str, into: &Path) -> Result<bool, String> {
        let address = format!("{}/buildid/{build_id}/debuginfo", url.trim_end_matches('/'));
        let mut answer = self
            .agent
            .get(&address)
            .call()
            .map_err(|error| error.to_string())?;
        match answer.status().as_u16() {
            200 => {}
            404 => return Ok(false),
            status => return Err(format!("{address}: status {status}")),
        }
        let directory = into.parent().expect("a cache path has a parent");
        std::fs::create_dir_all(directory).map_err(|error| error.to_string())?;
        let temporary = directory.join(format!("debuginfo.{}.part", std::process::id()));
        let written = (|| -> std::io::Result<u64> {
            let mut file = std::fs::File::create(&temporary)?;
            let mut body = answer
                .body_mut()
                .as_reader()
                .take(SYMBOL_FILE_BYTES_MAX + 1);
            let written = std::io::copy(&mut body, &mut file)?;
            file.flush()?;
            Ok(written)
        })();
        let written = match written {
            Ok(written) if written <= SYMBOL_FILE_BYTES_MAX => written,
            Ok(_) => {
                let _ = std::fs::remove_file(&temporary);
                return Err(format!(
                    "{address}: more than {SYMBOL_FILE_BYTES_MAX} bytes"
                ));
            }
            Err(error) => {
                let _ = std::fs::remove_file(&temporary);
                return Err(format!("{address}: {error}"));
            }
        };
        std::fs::rename(&temporary, into).map_err(|error| error.to_string())?;
        tracing::info!(
            build_id,
            bytes = written,
            "fetched a debug file from debuginfod"
        );
        self.evict();
        Ok(true)
    }

    /// Removes the least recently used files until the cache fits its bound.
    fn evict(&self) {
        let Ok(entries) = std::fs::read_dir(&self.cache_dir) else {
            return;
        };
        let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
            .filter_map(|entry| {
                let path = entry.ok()?.path().join("debuginfo");
                let metadata = std::fs::metadata(&path).ok()?;
                Some((metadata.modified().ok()?, metadata.len(), path))
            })
            .collect();
        let mut total: u64 = files.iter().map(|file| file.1).sum();
        files.sort();
        for (_, size, path) in files {
            if total <= self.config.cache_bytes_max {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= size;
                let _ = std::fs::remove_dir(path.parent().expect("under the cache"));
            }
        }
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
                && is_build_id(build_id)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_build_ids_reach_a_path_or_a_url() {
        assert!(!is_build_id("../../etc"));
        assert!(!is_build_id("ABCD"));
        assert!(!is_build_id("a"));
        assert!(is_build_id("0123abcd"));
    }

    #[test]
    fn the_cache_keeps_the_most_recently_used_files_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let config = SymbolsConfig {
            cache_bytes_max: 250,
            debuginfod_urls: Vec::new(),
            ..SymbolsConfig::default()
        };
        let symbolizer = Symbolizer::new(config, dir.path());
        let cache = dir.path().join("debuginfod");
        for (index, id) in ["aa", "bb", "cc"].iter().enumerate() {
            let path = cache.join(id).join("debuginfo");
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, vec![0u8; 100]).unwrap();
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1000 + index as u64))
                .unwrap();
        }
        // "aa" is used again: it becomes the newest.
        assert_eq!(
            symbolizer.find("aa"),
            Some(cache.join("aa").join("debuginfo"))
        );
        symbolizer.evict();
        assert!(cache.join("aa").join("debuginfo").exists());
        assert!(!cache.join("bb").exists(), "the least recently used went");
        assert!(cache.join("cc").join("debuginfo").exists());
    }
}

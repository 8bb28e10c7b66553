//! Server-side re-symbolization: frames the node could not name (a build-id and an offset
//! from the module's load bias, no function) are named from a symbol directory in the
//! debuginfod layout, `<dir>/buildid/<build-id>/debuginfo`, through the ELF symbol table.
//!
//! Invariants: a build-id is used in a path only when it is 2 to 128 lower-case hex digits;
//! files over [`SYMBOL_FILE_BYTES_MAX`] are skipped; parsed tables are cached (at most
//! [`CACHED_FILES_MAX`]) and a missing file is not looked up again until the cache turns over.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crashmesh_protocol::{Frame, Problem};
use object::{Object, ObjectSymbol, SymbolKind};

/// The largest symbol file read.
pub const SYMBOL_FILE_BYTES_MAX: u64 = 2 << 30;
/// Symbol tables kept in memory.
pub const CACHED_FILES_MAX: usize = 64;

/// A sorted symbol table: (start, size, demangled name).
type Symbols = Vec<(u64, u64, String)>;

/// Names frames from a symbol directory.
pub struct Symbolizer {
    dir: PathBuf,
    cache: Mutex<HashMap<String, Option<Arc<Symbols>>>>,
}

fn is_build_id(text: &str) -> bool {
    (2..=128).contains(&text.len()) && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn demangle(name: &str) -> String {
    if let Ok(demangled) = rustc_demangle::try_demangle(name) {
        return format!("{demangled:#}");
    }
    if name.starts_with("_Z")
        && let Ok(symbol) = cpp_demangle::Symbol::new(name)
        && let Ok(text) = symbol.demangle(&Default::default())
    {
        return text;
    }
    name.to_string()
}

fn load(path: &Path) -> Option<Symbols> {
    let size = std::fs::metadata(path).ok()?.len();
    if size > SYMBOL_FILE_BYTES_MAX {
        tracing::warn!(path = %path.display(), size, "symbol file too large; skipped");
        return None;
    }
    let data = std::fs::read(path).ok()?;
    let file = match object::File::parse(&*data) {
        Ok(file) => file,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "symbol file does not parse");
            return None;
        }
    };
    let mut symbols: Symbols = file
        .symbols()
        .chain(file.dynamic_symbols())
        .filter(|symbol| symbol.kind() == SymbolKind::Text && symbol.address() != 0)
        .filter_map(|symbol| {
            let name = symbol.name().ok()?;
            (!name.is_empty()).then(|| (symbol.address(), symbol.size(), demangle(name)))
        })
        .collect();
    symbols.sort_by_key(|symbol| (symbol.0, std::cmp::Reverse(symbol.1)));
    symbols.dedup_by_key(|symbol| symbol.0);
    Some(symbols)
}

/// The symbol containing `address`: the last one starting at or before it, if its size
/// covers it (a size of 0 covers up to the next symbol).
fn lookup(symbols: &Symbols, address: u64) -> Option<(&str, u64)> {
    let index = symbols.partition_point(|symbol| symbol.0 <= address);
    let (start, size, name) = symbols.get(index.checked_sub(1)?)?;
    let next = symbols.get(index).map_or(u64::MAX, |symbol| symbol.0);
    let end = if *size > 0 { start + size } else { next };
    (address < end).then(|| (name.as_str(), address - start))
}

impl Symbolizer {
    /// A symbolizer over `dir`.
    pub fn new(dir: PathBuf) -> Symbolizer {
        Symbolizer {
            dir,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn symbols(&self, build_id: &str) -> Option<Arc<Symbols>> {
        if let Some(cached) = self.cache.lock().unwrap().get(build_id) {
            return cached.clone();
        }
        let path = self.dir.join("buildid").join(build_id).join("debuginfo");
        let loaded = load(&path).map(Arc::new);
        let mut cache = self.cache.lock().unwrap();
        if cache.len() >= CACHED_FILES_MAX {
            cache.clear();
        }
        cache.insert(build_id.to_string(), loaded.clone());
        loaded
    }

    fn frame(&self, frame: &mut Frame) -> bool {
        let (None, Some(build_id), Some(offset)) =
            (&frame.function, frame.build_id.as_deref(), frame.offset)
        else {
            return false;
        };
        if !is_build_id(build_id) {
            return false;
        }
        let Some(symbols) = self.symbols(build_id) else {
            return false;
        };
        let Some((name, from_start)) = lookup(&symbols, offset) else {
            return false;
        };
        frame.function = Some(name.to_string());
        frame.offset = Some(from_start);
        true
    }

    /// Names what it can in the problem's frames and threads; returns how many frames.
    pub fn problem(&self, problem: &mut Problem) -> usize {
        let mut named = 0;
        for frame in &mut problem.frames {
            named += usize::from(self.frame(frame));
        }
        for thread in problem.threads.iter_mut().flatten() {
            for frame in &mut thread.frames {
                named += usize::from(self.frame(frame));
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
    fn lookup_finds_the_containing_symbol() {
        let symbols = vec![
            (0x1000, 0x10, "a".to_string()),
            (0x1010, 0, "b".to_string()),
            (0x1100, 0x20, "c".to_string()),
        ];
        assert_eq!(lookup(&symbols, 0x1004), Some(("a", 4)));
        assert_eq!(lookup(&symbols, 0x10ff), Some(("b", 0xef)));
        assert_eq!(lookup(&symbols, 0x1120), None);
        assert_eq!(lookup(&symbols, 0xfff), None);
        assert!(!is_build_id("../../etc"));
        assert!(is_build_id("0123abcd"));
    }
}

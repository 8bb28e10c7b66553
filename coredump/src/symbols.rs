//! Names for addresses: ELF symbol tables (`.symtab`, `.dynsym`, and the `.symtab` of a
//! separate debug file) and DWARF (function names and file:line) from
//! the module itself or its separate debug file (see [`crate::dwarf`]).
//!
//! Separate debug files are looked for, in order, at
//! `<debug dir>/.build-id/xx/yyyy.debug` (container root first, then the host), then by
//! `.gnu_debuglink` beside the object, in its `.debug/` subdirectory and under
//! `<debug dir>/<object's directory>/`. A debug file with a build-id that differs from the
//! module's is not used.
//!
//! Invariants:
//! - Everything is per module and lazy: a module's tables are read the first time one of
//!   its addresses is symbolized, then kept for the rest of the analysis.
//! - Addresses given here are stated (file) addresses: the caller removes the load bias.
//! - Compressed DWARF (`SHF_COMPRESSED`, as Debian's and Fedora's debug files are, or GNU
//!   `.zdebug_*`) is decompressed when `decompress_debug_info` is set (the default), at
//!   most `DECOMPRESSED_BYTES_MAX` per module; without it, names come from the debug
//!   file's `.symtab` and there is no file:line for that module.
//! - Physical frames only: the name is that of the outermost (non-inlined) function at the
//!   address, with its file:line (the call site of the inlined code, as gdb's physical
//!   frame shows it).

use std::path::{Path, PathBuf};

use gimli::{EndianSlice, RunTimeEndian};
use object::read::elf::ElfFile64;
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

use crate::dwarf::DwarfIndex;
use crate::elf_header;
use crate::modules::{Candidate, ModuleFile, candidate_paths, map_regular_file};

/// The DWARF sections the lookup reads.
const DWARF_SECTIONS: &[gimli::SectionId] = &[
    gimli::SectionId::DebugAbbrev,
    gimli::SectionId::DebugAddr,
    gimli::SectionId::DebugAranges,
    gimli::SectionId::DebugInfo,
    gimli::SectionId::DebugLine,
    gimli::SectionId::DebugLineStr,
    gimli::SectionId::DebugRanges,
    gimli::SectionId::DebugRngLists,
    gimli::SectionId::DebugStr,
    gimli::SectionId::DebugStrOffsets,
];
/// Decompressed DWARF beyond this many bytes per module is not kept.
const DECOMPRESSED_BYTES_MAX: u64 = 1 << 30;
/// At most this many symbols are kept per module.
const SYMBOLS_MAX: usize = 4 << 20;

/// Where to look for separate debug files.
pub struct DebugSearch<'o> {
    /// The container root, tried before the host.
    pub root: Option<&'o Path>,
    /// Debug directories (`/usr/lib/debug`).
    pub debug_dirs: &'o [PathBuf],
    /// The largest debug file mapped.
    pub file_bytes_max: u64,
    /// Whether compressed DWARF is decompressed (costly: ~20 ms for glibc's).
    pub decompress_debug_info: bool,
}

/// What a module's symbolization needs that must be owned: its separate debug file and
/// any DWARF section that had to be decompressed.
#[derive(Default)]
pub struct DebugStore {
    /// The separate debug file, when one was found.
    pub debug_file: Option<(PathBuf, memmap2::Mmap)>,
    /// True when DWARF is read from the debug file rather than the module.
    pub dwarf_in_debug_file: bool,
    /// True when there is any DWARF at all.
    pub has_dwarf: bool,
    /// Compressed sections, decompressed.
    decompressed: Vec<(gimli::SectionId, Vec<u8>)>,
}

fn has_section(elf: &ElfFile64<'_>, name: &str) -> bool {
    elf.section_by_name(name)
        .is_some_and(|section| section.size() > 0)
}

fn debug_file_matches(bytes: &[u8], build_id: Option<&[u8]>) -> bool {
    match (build_id, elf_header::build_id_of_file(bytes)) {
        (Some(expected), Some(found)) => expected == found.as_slice(),
        _ => elf_header::is_elf64_le(bytes),
    }
}

/// Find the separate debug file of a module.
fn find_debug_file(
    elf: &ElfFile64<'_>,
    resolved: Option<&Candidate>,
    recorded_path: &str,
    build_id: Option<&[u8]>,
    search: &DebugSearch<'_>,
) -> Option<(PathBuf, memmap2::Mmap)> {
    let mut candidates: Vec<Candidate> = Vec::new();
    if let Some(build_id) = build_id.filter(|id| id.len() >= 2) {
        let hex = elf_header::hex(build_id);
        for debug_dir in search.debug_dirs {
            let relative = format!(
                "{}/.build-id/{}/{}.debug",
                debug_dir.display(),
                &hex[..2],
                &hex[2..]
            );
            // The host's debug directories are root's: their build-id links are followed.
            candidates.extend(candidate_paths(search.root, &relative, true));
        }
    }
    if let Ok(Some((link, _crc))) = elf.gnu_debuglink() {
        let link = String::from_utf8_lossy(link).into_owned();
        if !link.is_empty() && !link.contains('/') {
            if let Some(resolved) = resolved
                && let Some(directory) = resolved.path.parent()
            {
                candidates.push(resolved.sibling(directory.join(&link)));
                candidates.push(resolved.sibling(directory.join(".debug").join(&link)));
            }
            let recorded_directory = Path::new(recorded_path)
                .parent()
                .map(|directory| directory.to_string_lossy().into_owned())
                .unwrap_or_default();
            for debug_dir in search.debug_dirs {
                let relative = format!(
                    "{}/{}/{link}",
                    debug_dir.display(),
                    recorded_directory.trim_start_matches('/')
                );
                candidates.extend(candidate_paths(search.root, &relative, true));
            }
        }
    }
    for candidate in candidates {
        // The object itself can be its own debuglink target; skip it.
        if Some(&candidate) == resolved {
            continue;
        }
        if let Ok(map) = map_regular_file(&candidate, search.file_bytes_max)
            && debug_file_matches(&map, build_id)
        {
            let shown = candidate.shown();
            tracing::debug!(debug_file = %shown.display(), "found a separate debug file");
            return Some((shown, map));
        }
    }
    None
}

impl DebugStore {
    /// Find a module's debug file and decompress what must be.
    pub fn load(
        module_file: &ModuleFile<'_>,
        recorded_path: &str,
        build_id: Option<&[u8]>,
        search: &DebugSearch<'_>,
    ) -> DebugStore {
        let mut store = DebugStore::default();
        let Some(elf) = module_file.elf() else {
            return store;
        };
        let main_has_dwarf = has_section(&elf, ".debug_info");
        let main_has_symtab = elf.symbols().next().is_some();
        if !main_has_dwarf || !main_has_symtab {
            store.debug_file = find_debug_file(
                &elf,
                module_file.resolved.as_ref(),
                recorded_path,
                build_id,
                search,
            );
        }
        let debug_elf = store
            .debug_file
            .as_ref()
            .and_then(|(_, map)| ElfFile64::parse(&map[..]).ok());
        let dwarf_elf = if main_has_dwarf {
            Some(&elf)
        } else if let Some(debug_elf) = debug_elf.as_ref().filter(|e| has_section(e, ".debug_info"))
        {
            store.dwarf_in_debug_file = true;
            Some(debug_elf)
        } else {
            None
        };
        if let Some(dwarf_elf) = dwarf_elf {
            let (has_dwarf, decompressed) =
                decompress_dwarf(dwarf_elf, search.decompress_debug_info, recorded_path);
            store.has_dwarf = has_dwarf;
            store.decompressed = decompressed;
        }
        store
    }

    /// A store over one debug file alone (a file fetched by build-id: its own symbol
    /// tables and DWARF, nothing else to find).
    pub fn of_debug_file(path: PathBuf, map: memmap2::Mmap, decompress: bool) -> DebugStore {
        let mut store = DebugStore::default();
        if let Ok(elf) = ElfFile64::parse(&map[..])
            && has_section(&elf, ".debug_info")
        {
            let shown = path.display().to_string();
            let (has_dwarf, decompressed) = decompress_dwarf(&elf, decompress, &shown);
            store.has_dwarf = has_dwarf;
            store.decompressed = decompressed;
            store.dwarf_in_debug_file = true;
        }
        store.debug_file = Some((path, map));
        store
    }
}

/// The DWARF sections of `elf` that are compressed, decompressed (bounded by
/// [`DECOMPRESSED_BYTES_MAX`]); false when there is compressed DWARF and `decompress` is off.
fn decompress_dwarf(
    elf: &ElfFile64<'_>,
    decompress: bool,
    label: &str,
) -> (bool, Vec<(gimli::SectionId, Vec<u8>)>) {
    let mut decompressed = Vec::new();
    let mut decompressed_bytes = 0u64;
    for &id in DWARF_SECTIONS {
        let Some(section) = elf.section_by_name(id.name()) else {
            continue;
        };
        let Ok(range) = section.compressed_file_range() else {
            continue;
        };
        if range.format == object::CompressionFormat::None {
            continue;
        }
        if !decompress {
            tracing::debug!(
                module = label,
                "compressed DWARF left alone (decompress_debug_info is off)"
            );
            return (false, Vec::new());
        }
        decompressed_bytes = decompressed_bytes.saturating_add(range.uncompressed_size);
        if decompressed_bytes > DECOMPRESSED_BYTES_MAX {
            tracing::warn!(module = label, "decompressed DWARF too large, skipped");
            continue;
        }
        match section.uncompressed_data() {
            Ok(data) => decompressed.push((id, data.into_owned())),
            Err(error) => tracing::debug!(module = label, %error, "cannot decompress"),
        }
    }
    (true, decompressed)
}

/// One function symbol.
struct FunctionSymbol<'a> {
    address: u64,
    size: u64,
    name: &'a str,
    /// Lower is preferred among aliases: global, weak, local.
    preference: u8,
}

/// What is known about one address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SymbolHit {
    /// The function, demangled.
    pub function: Option<String>,
    /// The function's stated start address, when a symbol gives it.
    pub function_start: Option<u64>,
    /// The source file.
    pub file: Option<String>,
    /// The source line.
    pub line: Option<u32>,
}

type DwarfReader<'a> = EndianSlice<'a, RunTimeEndian>;

/// A module's symbol tables and DWARF, ready for lookups.
pub struct Symbolizer<'a> {
    symbols: Vec<FunctionSymbol<'a>>,
    dwarf: Option<DwarfIndex<'a>>,
    /// True when any symbol table had function symbols.
    pub has_symbols: bool,
    /// True when DWARF was loaded.
    pub has_debug_info: bool,
}

fn collect_symbols<'a: 'file, 'file>(
    symbols: impl Iterator<Item = object::read::elf::ElfSymbol64<'a, 'file>>,
    into: &mut Vec<FunctionSymbol<'a>>,
) {
    for symbol in symbols {
        if into.len() >= SYMBOLS_MAX {
            break;
        }
        if symbol.kind() != SymbolKind::Text || symbol.is_undefined() || symbol.address() == 0 {
            continue;
        }
        let Ok(name) = symbol.name() else { continue };
        // `__libc_start_main@@GLIBC_2.34`: the version is not part of the function's name.
        let name = name.split('@').next().unwrap_or(name);
        if name.is_empty() {
            continue;
        }
        let preference = if symbol.is_global() && !symbol.is_weak() {
            0
        } else if symbol.is_weak() {
            1
        } else {
            2
        };
        into.push(FunctionSymbol {
            address: symbol.address(),
            size: symbol.size(),
            name,
            preference,
        });
    }
}

impl<'a> Symbolizer<'a> {
    /// Build the tables of one module from its bytes and its debug store.
    pub fn new(module_bytes: Option<&'a [u8]>, store: &'a DebugStore) -> Symbolizer<'a> {
        let main = module_bytes.and_then(|bytes| ElfFile64::<'a>::parse(bytes).ok());
        let debug = store
            .debug_file
            .as_ref()
            .and_then(|(_, map)| ElfFile64::<'a>::parse(&map[..]).ok());
        let mut symbols = Vec::new();
        if let Some(main) = &main {
            collect_symbols(main.symbols(), &mut symbols);
        }
        if symbols.is_empty()
            && let Some(debug) = &debug
        {
            collect_symbols(debug.symbols(), &mut symbols);
        }
        if let Some(main) = &main {
            collect_symbols(main.dynamic_symbols(), &mut symbols);
        }
        symbols.sort_by_key(|symbol| (symbol.address, symbol.preference));
        let dwarf_elf = if store.dwarf_in_debug_file {
            debug.as_ref()
        } else {
            main.as_ref()
        };
        let dwarf = dwarf_elf
            .filter(|_| store.has_dwarf)
            .and_then(|elf| load_dwarf(elf, store));
        Symbolizer {
            has_symbols: !symbols.is_empty(),
            has_debug_info: dwarf.is_some(),
            symbols,
            dwarf,
        }
    }

    /// The symbol whose range holds `address` (a stated address).
    fn symbol_at(&self, address: u64) -> Option<&FunctionSymbol<'a>> {
        let end = self
            .symbols
            .partition_point(|symbol| symbol.address <= address);
        let last = self.symbols.get(end.checked_sub(1)?)?;
        // The first of the aliases at that address is the preferred one.
        let first = self.symbols[..end].partition_point(|symbol| symbol.address < last.address);
        let symbol = &self.symbols[first];
        // Like gdb, a symbol with a size does not cover addresses past its end.
        let covered = symbol.size == 0 || address < symbol.address.saturating_add(symbol.size);
        covered.then_some(symbol)
    }

    /// Everything known about a stated address.
    pub fn lookup(&self, address: u64) -> SymbolHit {
        let mut hit = SymbolHit::default();
        if let Some(symbol) = self.symbol_at(address) {
            hit.function = Some(demangle(symbol.name));
            hit.function_start = Some(symbol.address);
        }
        if let Some(dwarf) = &self.dwarf {
            let found = dwarf.lookup(address);
            if let Some(name) = found.function {
                hit.function = Some(demangle(&name));
            }
            hit.file = found.file;
            hit.line = found.line;
        }
        hit
    }
}

fn load_dwarf<'a>(elf: &ElfFile64<'a>, store: &'a DebugStore) -> Option<DwarfIndex<'a>> {
    let endian = if elf.is_little_endian() {
        RunTimeEndian::Little
    } else {
        RunTimeEndian::Big
    };
    let load = |id: gimli::SectionId| -> Result<DwarfReader<'a>, gimli::Error> {
        if let Some((_, bytes)) = store.decompressed.iter().find(|(owned, _)| *owned == id) {
            return Ok(EndianSlice::new(bytes, endian));
        }
        let data = elf
            .section_by_name(id.name())
            .and_then(|section| section.data().ok())
            .unwrap_or(&[]);
        Ok(EndianSlice::new(data, endian))
    };
    let dwarf = gimli::Dwarf::load(load).ok()?;
    Some(DwarfIndex::new(dwarf))
}

/// Demangle a Rust or C++ symbol; other names come back as they are.
pub fn demangle(name: &str) -> String {
    if let Ok(demangled) = rustc_demangle::try_demangle(name) {
        return format!("{demangled:#}");
    }
    if name.starts_with("_Z")
        && let Ok(symbol) = cpp_demangle::Symbol::new(name)
        && let Ok(demangled) = symbol.demangle(&cpp_demangle::DemangleOptions::default())
    {
        return demangled;
    }
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_demangle() {
        for (mangled, expected) in [
            ("_ZN3foo3barEv", "foo::bar()"),
            ("_Z4leafPVii", "leaf(int volatile*, int)"),
            (
                "_ZN4core9panicking5panic17h0123456789abcdefE",
                "core::panicking::panic",
            ),
            ("main", "main"),
            ("_Zgarbage", "_Zgarbage"),
        ] {
            assert_eq!(demangle(mangled), expected, "{mangled}");
        }
    }
}

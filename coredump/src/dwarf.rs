//! A small, lazy DWARF lookup: for one address, the physical (non-inlined) function's
//! name and the file:line gdb shows for that physical frame.
//!
//! Why not addr2line's `Context`: it parses every unit's header and abbreviations up
//! front and every function of a unit on first use, which costs ~10 ms on a Python core
//! (libpython alone has 9 MB of `.debug_info`). A crash report needs a dozen addresses;
//! this reads only the units they fall in, found through `.debug_aranges` (or, without
//! aranges, through each unit's root DIE once), which is what elfutils does too.
//!
//! Invariants:
//! - Bounded: the DIE walk descends at most `DIE_DEPTH_MAX` levels, name references
//!   are followed at most `REFERENCE_HOPS_MAX` times, line programs at most
//!   `LINE_ROWS_MAX` rows; malformed DWARF gives "unknown", never a panic.
//! - The file:line of a physical frame whose address is inside inlined code is the call
//!   site of the outermost inlined call (gdb's physical frame line); otherwise the line
//!   table's row for the address.

use std::cell::RefCell;
use std::collections::HashMap;

use gimli::{EndianSlice, RunTimeEndian};

type Reader<'a> = EndianSlice<'a, RunTimeEndian>;
type UnitOffset = gimli::DebugInfoOffset<usize>;
type SharedUnit<'a> = std::rc::Rc<gimli::Unit<Reader<'a>>>;
/// `[start, end)` of addresses and the unit that holds them.
type UnitRange = (u64, u64, UnitOffset);

/// DIE nesting deeper than this is not searched.
const DIE_DEPTH_MAX: usize = 64;
/// `DW_AT_abstract_origin` / `DW_AT_specification` hops followed for a name.
const REFERENCE_HOPS_MAX: usize = 8;
/// Line table rows read per lookup.
const LINE_ROWS_MAX: usize = 4 << 20;

/// What DWARF says about one address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DwarfHit {
    /// The physical function's name (linkage name when there is one, raw).
    pub function: Option<String>,
    /// Its source file.
    pub file: Option<String>,
    /// Its source line.
    pub line: Option<u32>,
}

struct Search {
    address: u64,
    function_found: bool,
    call_site: Option<(u64, u64)>,
    /// The unit is Rust's: a function is named as gdb names it, by the path of the DIEs
    /// around it (`std::rt::__rust_abort`, `p::handler<p::parse::{closure_env#0}>`), not
    /// by its symbol (`__rustc::__rust_abort`, generics and closures lost).
    rust: bool,
    /// The names of the namespaces and types the walk is inside.
    path: Vec<String>,
}

/// Lazy DWARF of one module.
pub struct DwarfIndex<'a> {
    dwarf: gimli::Dwarf<Reader<'a>>,
    /// Units already parsed, by offset.
    units: RefCell<HashMap<UnitOffset, Option<SharedUnit<'a>>>>,
    /// (range, unit) from `.debug_aranges`, or from root DIEs when there are no aranges.
    unit_ranges: RefCell<Option<Vec<UnitRange>>>,
}

impl<'a> DwarfIndex<'a> {
    /// Wrap loaded sections.
    pub fn new(dwarf: gimli::Dwarf<Reader<'a>>) -> DwarfIndex<'a> {
        DwarfIndex {
            dwarf,
            units: RefCell::new(HashMap::new()),
            unit_ranges: RefCell::new(None),
        }
    }

    fn build_unit_ranges(&self) -> Vec<UnitRange> {
        let mut ranges = Vec::new();
        let mut headers = self.dwarf.debug_aranges.headers();
        while let Ok(Some(header)) = headers.next() {
            let offset = header.debug_info_offset();
            let mut entries = header.entries();
            while let Ok(Some(entry)) = entries.next() {
                let range = entry.range();
                if range.end > range.begin {
                    ranges.push((range.begin, range.end, offset));
                }
            }
        }
        if ranges.is_empty() {
            // No aranges (clang's default): every unit's root DIE, once.
            let mut units = self.dwarf.units();
            while let Ok(Some(header)) = units.next() {
                let Some(offset) = header.offset().as_debug_info_offset() else {
                    continue;
                };
                let Ok(unit) = self.dwarf.unit(header) else {
                    continue;
                };
                let mut cursor = unit.entries();
                let Ok(Some((_, root))) = cursor.next_dfs() else {
                    continue;
                };
                if let Ok(mut die_ranges) = self.dwarf.die_ranges(&unit, root) {
                    while let Ok(Some(range)) = die_ranges.next() {
                        if range.end > range.begin {
                            ranges.push((range.begin, range.end, offset));
                        }
                    }
                }
            }
        }
        ranges.sort_unstable();
        ranges
    }

    fn unit_for(&self, address: u64) -> Option<SharedUnit<'a>> {
        let offset = {
            let mut cached = self.unit_ranges.borrow_mut();
            let ranges = cached.get_or_insert_with(|| self.build_unit_ranges());
            let end = ranges.partition_point(|range| range.0 <= address);
            // Ranges can nest or overlap; look back over the few that start below.
            ranges[..end]
                .iter()
                .rev()
                .take(64)
                .find(|range| address < range.1)
                .map(|range| range.2)?
        };
        let mut units = self.units.borrow_mut();
        units
            .entry(offset)
            .or_insert_with(|| {
                let header = self.dwarf.debug_info.header_from_offset(offset).ok()?;
                self.dwarf.unit(header).ok().map(std::rc::Rc::new)
            })
            .clone()
    }

    fn contains(
        &self,
        unit: &gimli::Unit<Reader<'a>>,
        entry: &gimli::DebuggingInformationEntry<Reader<'a>>,
        address: u64,
    ) -> bool {
        let Ok(mut ranges) = self.dwarf.die_ranges(unit, entry) else {
            return false;
        };
        while let Ok(Some(range)) = ranges.next() {
            if range.begin <= address && address < range.end {
                return true;
            }
        }
        false
    }

    /// An entry's linkage name, else its name (through its abstract origin or
    /// specification).
    fn name_of(
        &self,
        unit: &gimli::Unit<Reader<'a>>,
        entry: &gimli::DebuggingInformationEntry<Reader<'a>>,
    ) -> Option<String> {
        self.first_name(
            unit,
            entry,
            &[
                gimli::DW_AT_linkage_name,
                gimli::DW_AT_MIPS_linkage_name,
                gimli::DW_AT_name,
            ],
        )
    }

    /// An entry's own `DW_AT_name` (through its abstract origin or specification).
    fn plain_name_of(
        &self,
        unit: &gimli::Unit<Reader<'a>>,
        entry: &gimli::DebuggingInformationEntry<Reader<'a>>,
    ) -> Option<String> {
        self.first_name(unit, entry, &[gimli::DW_AT_name])
    }

    /// The first of `attributes` an entry has as a string, following its abstract origin
    /// or specification at most `REFERENCE_HOPS_MAX` times.
    fn first_name(
        &self,
        unit: &gimli::Unit<Reader<'a>>,
        entry: &gimli::DebuggingInformationEntry<Reader<'a>>,
        attributes: &[gimli::DwAt],
    ) -> Option<String> {
        let mut offset = entry.offset();
        for _ in 0..REFERENCE_HOPS_MAX {
            let entry = unit.entry(offset).ok()?;
            for &attribute in attributes {
                if let Ok(Some(value)) = entry.attr_value(attribute)
                    && let Ok(name) = self.dwarf.attr_string(unit, value)
                {
                    return Some(name.to_string_lossy().into_owned());
                }
            }
            offset = [gimli::DW_AT_abstract_origin, gimli::DW_AT_specification]
                .iter()
                .find_map(|&attribute| match entry.attr_value(attribute) {
                    Ok(Some(gimli::AttributeValue::UnitRef(next))) => Some(next),
                    _ => None,
                })?;
        }
        None
    }

    fn file_name(
        &self,
        unit: &gimli::Unit<Reader<'a>>,
        header: &gimli::LineProgramHeader<Reader<'a>>,
        file_index: u64,
    ) -> Option<String> {
        let file = header.file(file_index)?;
        let name = self.dwarf.attr_string(unit, file.path_name()).ok()?;
        let name = name.to_string_lossy().into_owned();
        if name.starts_with('/') {
            return Some(name);
        }
        let mut path = String::new();
        if let Some(directory) = file.directory(header)
            && let Ok(directory) = self.dwarf.attr_string(unit, directory)
        {
            let directory = directory.to_string_lossy();
            path.push_str(&directory);
        }
        // DWARF 5's directory 0 is the compilation directory itself: do not add it twice.
        if !path.starts_with('/')
            && let Some(compilation_directory) = unit.comp_dir
            && compilation_directory.slice() != path.as_bytes()
        {
            let compilation_directory = compilation_directory.to_string_lossy();
            path = if path.is_empty() {
                compilation_directory.into_owned()
            } else {
                format!("{compilation_directory}/{path}")
            };
        }
        if path.is_empty() {
            Some(name)
        } else {
            Some(format!("{}/{name}", path.trim_end_matches('/')))
        }
    }

    /// The line table's file and line for `address`.
    fn line_for(&self, unit: &gimli::Unit<Reader<'a>>, address: u64) -> Option<(String, u32)> {
        let program = unit.line_program.clone()?;
        let mut rows = program.rows();
        let mut previous: Option<(u64, u64, u64)> = None;
        for _ in 0..LINE_ROWS_MAX {
            let (_, row) = rows.next_row().ok()??;
            if let Some((start, file, line)) = previous
                && start <= address
                && address < row.address()
            {
                let header = rows.header();
                return Some((self.file_name(unit, header, file)?, line as u32));
            }
            previous = if row.end_sequence() {
                None
            } else {
                Some((
                    row.address(),
                    row.file_index(),
                    row.line().map(|line| line.get()).unwrap_or(0),
                ))
            };
        }
        None
    }

    /// Walk `node`'s children, stepping into the one that holds the address. Returns
    /// true when the search is over.
    fn search_children(
        &self,
        unit: &gimli::Unit<Reader<'a>>,
        node: gimli::EntriesTreeNode<'_, '_, '_, Reader<'a>>,
        search: &mut Search,
        hit: &mut DwarfHit,
        depth: usize,
    ) -> bool {
        if depth >= DIE_DEPTH_MAX {
            return true;
        }
        let address = search.address;
        let mut children = node.children();
        loop {
            let child = match children.next() {
                Ok(Some(child)) => child,
                _ => return false,
            };
            let entry = child.entry();
            let descend = match entry.tag() {
                gimli::DW_TAG_namespace
                | gimli::DW_TAG_module
                | gimli::DW_TAG_class_type
                | gimli::DW_TAG_structure_type => !search.function_found,
                gimli::DW_TAG_subprogram
                    if !search.function_found && self.contains(unit, entry, address) =>
                {
                    search.function_found = true;
                    hit.function = if search.rust {
                        self.plain_name_of(unit, entry).map(|name| {
                            let mut path = search.path.clone();
                            path.push(name);
                            path.join("::")
                        })
                    } else {
                        None
                    }
                    .or_else(|| self.name_of(unit, entry));
                    true
                }
                gimli::DW_TAG_lexical_block if search.function_found => {
                    self.contains(unit, entry, address)
                }
                gimli::DW_TAG_inlined_subroutine if search.function_found => {
                    if self.contains(unit, entry, address) {
                        let file = match entry.attr_value(gimli::DW_AT_call_file) {
                            Ok(Some(gimli::AttributeValue::FileIndex(file))) => Some(file),
                            Ok(Some(gimli::AttributeValue::Udata(file))) => Some(file),
                            _ => None,
                        };
                        let line = match entry.attr_value(gimli::DW_AT_call_line) {
                            Ok(Some(gimli::AttributeValue::Udata(line))) => Some(line),
                            _ => None,
                        };
                        if let (Some(file), Some(line)) = (file, line) {
                            search.call_site = Some((file, line));
                        }
                        // The outermost inlined call is the physical frame's line.
                        return true;
                    }
                    false
                }
                _ => false,
            };
            let scope = matches!(
                entry.tag(),
                gimli::DW_TAG_namespace
                    | gimli::DW_TAG_module
                    | gimli::DW_TAG_class_type
                    | gimli::DW_TAG_structure_type
            );
            if descend {
                let named_scope = scope && {
                    match self.plain_name_of(unit, entry) {
                        Some(name) => {
                            search.path.push(name);
                            true
                        }
                        None => false,
                    }
                };
                let over = self.search_children(unit, child, search, hit, depth + 1);
                if named_scope {
                    search.path.pop();
                }
                if over {
                    return true;
                }
                // Inside the function (or one of its blocks) but not in inlined code.
                if search.function_found {
                    return true;
                }
            }
        }
    }

    /// Name and location of the physical function at `address` (a stated address).
    pub fn lookup(&self, address: u64) -> DwarfHit {
        let mut hit = DwarfHit::default();
        let Some(unit) = self.unit_for(address) else {
            return hit;
        };
        let Ok(mut tree) = unit.entries_tree(None) else {
            return hit;
        };
        let Ok(root) = tree.root() else {
            return hit;
        };
        let rust = matches!(
            root.entry().attr_value(gimli::DW_AT_language),
            Ok(Some(gimli::AttributeValue::Language(gimli::DW_LANG_Rust)))
        );
        let mut search = Search {
            address,
            function_found: false,
            call_site: None,
            rust,
            path: Vec::new(),
        };
        self.search_children(&unit, root, &mut search, &mut hit, 0);
        let call_site = search.call_site;
        match call_site {
            Some((file, line)) => {
                if let Some(program) = &unit.line_program {
                    hit.file = self.file_name(&unit, program.header(), file);
                    hit.line = u32::try_from(line).ok();
                }
            }
            None => {
                if let Some((file, line)) = self.line_for(&unit, address) {
                    hit.file = Some(file);
                    hit.line = Some(line).filter(|&line| line != 0);
                }
            }
        }
        hit
    }
}

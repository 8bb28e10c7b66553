//! What names a frame's function the same way on every machine that ran the same build,
//! whatever debug packages it has: signature scheme 2's input
//! (`crashmesh_protocol::signature::native_signature_v2`).
//!
//! A function is identified by its module's build-id and its start as the module's own
//! unwind table gives it (the `.eh_frame` entry that covers the address: every copy of a
//! build has it, stripped or not, since unwinding needs it), and named only by the
//! dynamic symbol table (`.dynsym`, which `strip` keeps) when a symbol starts exactly
//! there. Separate debug files, DWARF and `.symtab` never change a key. Whether a frame is
//! crash machinery (`abort`, `std::terminate`, Rust's panic path) is read from the same
//! exported names, and, in the crashed executable alone, from its own `.symtab` (a Rust
//! program's standard library is linked into it): the one place a stripped copy may
//! decide differently from an unstripped one.
//!
//! Invariants: lazy and per module (tables are read for modules a frame of the crashing
//! thread falls in, once); addresses are stated (file) addresses; bounded by the
//! tables' own sizes; malformed tables give no start, never a panic.

use std::collections::HashMap;

use gimli::{BaseAddresses, EhFrame, EhFrameHdr, LittleEndian, UnwindSection};
use object::read::elf::ElfFile64;
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

/// Symbols read from one table at most.
const SYMBOLS_MAX: usize = 1 << 20;

/// One module's stable tables, borrowing its file's unwind sections.
#[derive(Default)]
pub struct StableTables<'data> {
    /// Exported function starts → their name (the first by name among aliases).
    exported: HashMap<u64, String>,
    /// Exported functions as ranges `(start, end, name)`, sorted: for an address no
    /// unwind entry covers.
    exported_ranges: Vec<(u64, u64, String)>,
    /// The executable's own `.symtab` functions `(start, end, name)`, sorted (empty for
    /// libraries and stripped executables).
    own_ranges: Vec<(u64, u64, String)>,
    eh_frame: Option<(u64, &'data [u8])>,
    eh_frame_hdr: Option<(u64, &'data [u8])>,
}

/// What the tables say about one address.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StableHit {
    /// The start of the unwind entry that covers the address.
    pub start: Option<u64>,
    /// An exported name starting there (or, without an entry, covering the address).
    pub exported: Option<String>,
    /// The name crash machinery is recognized by: the exported name, or in the
    /// executable its own `.symtab`'s; raw (mangled).
    pub machinery_name: Option<String>,
}

fn function_ranges<'data, S: ObjectSymbol<'data>>(
    symbols: impl Iterator<Item = S>,
) -> Vec<(u64, u64, String)> {
    let mut ranges: Vec<(u64, u64, String)> = symbols
        .take(SYMBOLS_MAX)
        .filter(|symbol| symbol.kind() == SymbolKind::Text && symbol.is_definition())
        .filter(|symbol| symbol.address() != 0)
        .filter_map(|symbol| {
            let name = symbol.name().ok()?.to_string();
            let end = symbol.address().checked_add(symbol.size().max(1))?;
            Some((symbol.address(), end, name))
        })
        .collect();
    // One name per start, the same on every machine: the shortest, then by bytes.
    ranges.sort_by(|a, b| (a.0, a.2.len(), &a.2).cmp(&(b.0, b.2.len(), &b.2)));
    ranges.dedup_by(|later, earlier| later.0 == earlier.0);
    ranges
}

fn covering(ranges: &[(u64, u64, String)], address: u64) -> Option<&str> {
    let index = ranges
        .partition_point(|range| range.0 <= address)
        .checked_sub(1)?;
    let (start, end, name) = &ranges[index];
    (*start <= address && address < *end).then_some(name.as_str())
}

impl<'data> StableTables<'data> {
    /// The tables of one module's file; `executable` also reads its `.symtab`.
    pub fn load(elf: &ElfFile64<'data>, executable: bool) -> StableTables<'data> {
        let section = |name: &str| {
            let section = elf.section_by_name(name)?;
            let data = section.data().ok().filter(|data| !data.is_empty())?;
            Some((section.address(), data))
        };
        let exported_ranges = function_ranges(elf.dynamic_symbols());
        let exported = exported_ranges
            .iter()
            .map(|(start, _, name)| (*start, name.clone()))
            .collect();
        StableTables {
            exported,
            exported_ranges,
            own_ranges: if executable {
                function_ranges(elf.symbols())
            } else {
                Vec::new()
            },
            eh_frame: section(".eh_frame"),
            eh_frame_hdr: section(".eh_frame_hdr"),
        }
    }

    /// The start of the `.eh_frame` entry covering `address` (a stated address).
    fn unwind_start(&self, address: u64) -> Option<u64> {
        let (eh_frame_address, eh_frame_bytes) = self.eh_frame?;
        let eh_frame = EhFrame::new(eh_frame_bytes, LittleEndian);
        let mut bases = BaseAddresses::default().set_eh_frame(eh_frame_address);
        if let Some((hdr_address, hdr_bytes)) = self.eh_frame_hdr {
            bases = bases.set_eh_frame_hdr(hdr_address);
            let hdr = EhFrameHdr::new(hdr_bytes, LittleEndian)
                .parse(&bases, 8)
                .ok()?;
            if let Some(table) = hdr.table() {
                return table
                    .fde_for_address(&eh_frame, &bases, address, EhFrame::cie_from_offset)
                    .ok()
                    .map(|fde| fde.initial_address());
            }
        }
        eh_frame
            .fde_for_address(&bases, address, EhFrame::cie_from_offset)
            .ok()
            .map(|fde| fde.initial_address())
    }

    /// What identifies the function at `address` (a stated address).
    pub fn lookup(&self, address: u64) -> StableHit {
        let start = self.unwind_start(address);
        let exported = match start {
            Some(start) => self.exported.get(&start).cloned(),
            None => covering(&self.exported_ranges, address).map(str::to_string),
        };
        let machinery_name = exported
            .clone()
            .or_else(|| covering(&self.own_ranges, address).map(str::to_string));
        StableHit {
            start,
            exported,
            machinery_name,
        }
    }
}

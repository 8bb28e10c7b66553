//! The ELF objects mapped into the crashed process: which they are (from `NT_FILE` and the
//! vdso's `AT_SYSINFO_EHDR`), where they were loaded, their build-ids as the core
//! remembers them, and the files on disk that should be those objects.
//!
//! Invariants:
//! - A module's on-disk file is used (for unwind tables, text and symbols) only when it is
//!   the same build as the one that ran: when the core's build-id and the file's differ,
//!   or the core has one and the file has none, the file is not used
//!   ([`ModuleFile::usable`] is false).
//! - Only regular files are opened (a hostile core could name a FIFO or a device), each
//!   at most `module_file_bytes_max` bytes, and at most [`MODULES_MAX`] modules are kept.
//! - Files are mapped, never read whole; sections are parsed only for the modules a
//!   trace touches (see [`ModuleFile::elf`]).

use std::path::{Path, PathBuf};

use object::read::elf::ElfFile64;

use crate::elf_header::{self, PT_NOTE};
use crate::memory::CoreImage;
use crate::notes::{CoreNotes, auxv};

/// At most this many modules are described and opened.
pub const MODULES_MAX: usize = 8192;
/// Bytes of a module's header page read from the core.
const HEADER_BYTES_MAX: usize = 64 * 1024;

/// Where a module came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleKind {
    /// A file named by `NT_FILE`.
    File,
    /// The kernel's vdso, whose whole image is in the core.
    Vdso,
    /// An ELF object found in the core's own memory when `NT_FILE` is missing or damaged,
    /// with no file name the dynamic linker's list could give it: its build-id and load
    /// address are known, no file is opened.
    Memory,
}

/// One mapped ELF object as the core describes it.
#[derive(Clone, Debug)]
pub struct ModuleDescriptor {
    /// The path the kernel recorded (`[vdso]` for the vdso).
    pub path: String,
    /// Lowest mapped address.
    pub start: u64,
    /// One past the highest mapped address.
    pub end: u64,
    /// Where the first mapping (file offset 0) starts.
    pub base: u64,
    /// Actual minus stated addresses; known from the header page in the core or, failing
    /// that, from the file.
    pub load_bias: Option<u64>,
    /// The build-id from the core's own memory.
    pub build_id_in_core: Option<Vec<u8>>,
    /// File or vdso.
    pub kind: ModuleKind,
    /// True when the core holds the object's ELF header (so it is surely ELF).
    pub header_in_core: bool,
}

/// The page size the process ran with.
pub fn page_bytes(notes: &CoreNotes) -> u64 {
    notes
        .auxv_value(auxv::AT_PAGESZ)
        .or(notes.file_page_size_bytes)
        .filter(|size| size.is_power_of_two() && *size >= 4096 && *size <= 1 << 21)
        .unwrap_or(4096)
}

/// What the core's memory says about an ELF object whose header is at `base`.
struct HeaderFacts {
    load_bias: Option<u64>,
    build_id: Option<Vec<u8>>,
    is_elf: bool,
}

fn header_facts(image: &CoreImage<'_>, base: u64, page_bytes: u64) -> Option<HeaderFacts> {
    let header_bytes = image.read(base, HEADER_BYTES_MAX)?;
    if header_bytes.len() < 64 {
        return None;
    }
    if !elf_header::is_elf64_le(header_bytes) {
        return Some(HeaderFacts {
            load_bias: None,
            build_id: None,
            is_elf: false,
        });
    }
    let headers = elf_header::program_headers(header_bytes).unwrap_or_default();
    let load_bias =
        elf_header::first_load_address(&headers, page_bytes).map(|first| base.wrapping_sub(first));
    let build_id = load_bias.and_then(|bias| {
        headers
            .iter()
            .filter(|header| header.segment_type == PT_NOTE && header.file_bytes <= 1 << 16)
            .find_map(|header| {
                let notes = image.read_exact(
                    bias.wrapping_add(header.address),
                    header.file_bytes as usize,
                )?;
                elf_header::build_id_in_notes(notes, header.alignment)
            })
    });
    Some(HeaderFacts {
        load_bias,
        build_id,
        is_elf: true,
    })
}

/// `PT_DYNAMIC`.
const PT_DYNAMIC: u32 = 2;
/// `DT_DEBUG`: the dynamic entry the dynamic linker points at its `r_debug`.
const DT_DEBUG: u64 = 21;
/// Dynamic entries read from an executable's `PT_DYNAMIC`.
const DYNAMIC_ENTRIES_MAX: usize = 1024;
/// The longest library path read from the dynamic linker's list.
const LINK_MAP_NAME_BYTES_MAX: usize = 4096;

/// The modules of a core, sorted by start address. Without `NT_FILE` (missing, or damaged
/// and skipped), they come from the core's own memory ([`modules_from_memory`]).
pub fn discover_modules(image: &CoreImage<'_>, notes: &CoreNotes) -> Vec<ModuleDescriptor> {
    let page_bytes = page_bytes(notes);
    let mut modules: Vec<ModuleDescriptor> = if notes.file_mappings.is_empty() {
        modules_from_memory(image, notes, page_bytes)
    } else {
        Vec::new()
    };
    let mut index_by_path: std::collections::HashMap<&str, usize> = Default::default();
    for mapping in &notes.file_mappings {
        match index_by_path.get(mapping.path.as_str()) {
            Some(&index) => {
                let module = &mut modules[index];
                module.start = module.start.min(mapping.start);
                module.end = module.end.max(mapping.end);
                if mapping.file_offset == 0 && mapping.start < module.base {
                    module.base = mapping.start;
                }
            }
            None => {
                if modules.len() >= MODULES_MAX {
                    continue;
                }
                index_by_path.insert(&mapping.path, modules.len());
                modules.push(ModuleDescriptor {
                    path: mapping.path.clone(),
                    start: mapping.start,
                    end: mapping.end,
                    // A module without an offset-0 mapping has no header to read.
                    base: if mapping.file_offset == 0 {
                        mapping.start
                    } else {
                        u64::MAX
                    },
                    load_bias: None,
                    build_id_in_core: None,
                    kind: ModuleKind::File,
                    header_in_core: false,
                });
            }
        }
    }
    modules.retain_mut(|module| {
        if module.base == u64::MAX {
            return false;
        }
        match header_facts(image, module.base, page_bytes) {
            Some(facts) if !facts.is_elf => false,
            Some(facts) => {
                module.load_bias = facts.load_bias;
                module.build_id_in_core = facts.build_id;
                module.header_in_core = true;
                true
            }
            // Not dumped: the file on disk will tell whether it is ELF.
            None => true,
        }
    });
    if let Some(vdso) = notes.auxv_value(auxv::AT_SYSINFO_EHDR)
        && let Some(segment) = image.segment_at(vdso)
        && let Some(facts) = header_facts(image, vdso, page_bytes)
        && facts.is_elf
    {
        modules.push(ModuleDescriptor {
            path: "[vdso]".to_string(),
            start: segment.start.max(vdso),
            end: segment.end,
            base: vdso,
            load_bias: facts.load_bias,
            build_id_in_core: facts.build_id,
            kind: ModuleKind::Vdso,
            header_in_core: true,
        });
    }
    modules.sort_by_key(|module| (module.start, module.end));
    modules
}

/// The ELF objects of a core without `NT_FILE`: every segment that starts with an ELF
/// header is an object loaded there (its build-id and extent from its headers, read from
/// the core), named from the dynamic linker's list (`DT_DEBUG` → `r_debug` → `link_map`,
/// as gdb finds shared libraries) and, for the executable, from `AT_EXECFN`. An object
/// the list does not name is kept as [`ModuleKind::Memory`].
pub fn modules_from_memory(
    image: &CoreImage<'_>,
    notes: &CoreNotes,
    page_bytes: u64,
) -> Vec<ModuleDescriptor> {
    let vdso = notes.auxv_value(auxv::AT_SYSINFO_EHDR);
    let mut modules = Vec::new();
    for segment in &image.segments {
        if modules.len() >= MODULES_MAX {
            break;
        }
        if Some(segment.start) == vdso {
            continue;
        }
        let Some(header_bytes) = image.read(segment.start, HEADER_BYTES_MAX) else {
            continue;
        };
        if !elf_header::is_elf64_le(header_bytes) {
            continue;
        }
        let Some(facts) = header_facts(image, segment.start, page_bytes) else {
            continue;
        };
        let Some(bias) = facts.load_bias else {
            continue;
        };
        let headers = elf_header::program_headers(header_bytes).unwrap_or_default();
        let end = headers
            .iter()
            .filter(|header| header.segment_type == elf_header::PT_LOAD)
            .filter_map(|header| header.address.checked_add(header.memory_bytes))
            .max()
            .map_or(segment.end, |end| bias.wrapping_add(end).max(segment.end));
        modules.push(ModuleDescriptor {
            path: format!("[elf at {:#x}]", segment.start),
            start: segment.start,
            end,
            base: segment.start,
            load_bias: Some(bias),
            build_id_in_core: facts.build_id,
            kind: ModuleKind::Memory,
            header_in_core: true,
        });
    }
    // Names: the executable holds AT_ENTRY; libraries are in the linker's list.
    let entry = notes.auxv_value(auxv::AT_ENTRY);
    let executable = entry.and_then(|entry| {
        modules
            .iter()
            .position(|module| module.start <= entry && entry < module.end)
    });
    if let Some(index) = executable {
        if let Some(name) = notes
            .auxv_value(auxv::AT_EXECFN)
            .and_then(|address| image.read_c_string(address, LINK_MAP_NAME_BYTES_MAX))
            .filter(|name| name.starts_with('/'))
        {
            modules[index].path = name;
            modules[index].kind = ModuleKind::File;
        }
        for (bias, name) in link_map(image, &modules[index]) {
            if let Some(module) = modules
                .iter_mut()
                .find(|module| module.kind == ModuleKind::Memory && module.load_bias == Some(bias))
            {
                module.path = name;
                module.kind = ModuleKind::File;
            }
        }
    }
    modules
}

/// The dynamic linker's list of loaded objects, `(l_addr, l_name)`, read from the core
/// through the executable's `DT_DEBUG`; empty when any link is missing. Bounded by
/// [`MODULES_MAX`] entries and stops at a loop.
fn link_map(image: &CoreImage<'_>, executable: &ModuleDescriptor) -> Vec<(u64, String)> {
    let mut found = Vec::new();
    let Some(bias) = executable.load_bias else {
        return found;
    };
    let Some(header_bytes) = image.read(executable.base, HEADER_BYTES_MAX) else {
        return found;
    };
    let headers = elf_header::program_headers(header_bytes).unwrap_or_default();
    let Some(dynamic) = headers
        .iter()
        .find(|header| header.segment_type == PT_DYNAMIC)
    else {
        return found;
    };
    let dynamic_start = bias.wrapping_add(dynamic.address);
    let entries = (dynamic.memory_bytes / 16).min(DYNAMIC_ENTRIES_MAX as u64);
    let r_debug = (0..entries)
        .map_while(|index| {
            let at = dynamic_start.checked_add(index * 16)?;
            Some((image.read_u64(at)?, image.read_u64(at.checked_add(8)?)?))
        })
        .take_while(|(tag, _)| *tag != 0)
        .find(|(tag, _)| *tag == DT_DEBUG)
        .map(|(_, value)| value)
        .filter(|&address| address != 0);
    let Some(r_debug) = r_debug else {
        return found;
    };
    // struct r_debug { int r_version; struct link_map *r_map; ... }
    let mut next = image.read_u64(r_debug.wrapping_add(8)).unwrap_or(0);
    let mut seen = std::collections::HashSet::new();
    // struct link_map { l_addr; char *l_name; l_ld; l_next; l_prev; }
    while next != 0 && found.len() < MODULES_MAX && seen.insert(next) {
        let (Some(l_addr), Some(l_name)) =
            (image.read_u64(next), image.read_u64(next.wrapping_add(8)))
        else {
            break;
        };
        if let Some(name) = image
            .read_c_string(l_name, LINK_MAP_NAME_BYTES_MAX)
            .filter(|name| name.starts_with('/'))
        {
            found.push((l_addr, name));
        }
        next = image.read_u64(next.wrapping_add(24)).unwrap_or(0);
    }
    found
}

/// The index of the module whose range holds `address`.
pub fn module_at(modules: &[ModuleDescriptor], address: u64) -> Option<usize> {
    let index = modules
        .partition_point(|module| module.start <= address)
        .checked_sub(1)?;
    (address < modules[index].end).then_some(index)
}

/// The bytes of one module's object: a mapped file, or the vdso's image in the core.
pub enum ModuleBytes<'data> {
    /// A file on disk, mapped read-only.
    Mapped(memmap2::Mmap),
    /// Bytes inside the core (the vdso).
    Core(&'data [u8]),
}

impl ModuleBytes<'_> {
    /// The object's bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            ModuleBytes::Mapped(map) => map,
            ModuleBytes::Core(bytes) => bytes,
        }
    }
}

/// A module's object as found on disk (or in the core, for the vdso).
pub struct ModuleFile<'data> {
    /// The file that was opened, if one was.
    pub resolved: Option<Candidate>,
    /// Its bytes.
    pub bytes: Option<ModuleBytes<'data>>,
    /// The build-id the file itself carries.
    pub build_id_on_disk: Option<Vec<u8>>,
    /// True when the file may be used for unwinding and symbols (see the module docs).
    pub usable: bool,
    /// Why the file is missing or unusable.
    pub problem: Option<String>,
}

impl<'data> ModuleFile<'data> {
    /// The object's bytes, only when the file is usable.
    pub fn usable_bytes(&self) -> Option<&[u8]> {
        if self.usable {
            self.bytes.as_ref().map(ModuleBytes::bytes)
        } else {
            None
        }
    }

    /// Parse the object's section headers (done lazily, only for modules that matter).
    pub fn elf(&self) -> Option<ElfFile64<'_>> {
        ElfFile64::parse(self.usable_bytes()?).ok()
    }
}

/// A place to look for a file a core names, and how far its path is trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The container root the path resolves in (as if it were `/`), if any.
    pub root: Option<PathBuf>,
    /// The path: inside `root` when there is one, else on the host.
    pub path: PathBuf,
    /// The path comes from root's configuration (a host debug directory), so symlinks
    /// in it are followed. Paths the crashed process chose are resolved without any.
    pub trusted: bool,
}

impl Candidate {
    /// Where it is, for people: the host path (the root joined with the path).
    pub fn shown(&self) -> PathBuf {
        match &self.root {
            Some(root) => root.join(self.path.strip_prefix("/").unwrap_or(&self.path)),
            None => self.path.clone(),
        }
    }

    /// Another file in the same place, trusted the same way (a debuglink beside its
    /// binary).
    pub fn sibling(&self, path: PathBuf) -> Candidate {
        Candidate {
            root: self.root.clone(),
            path,
            trusted: self.trusted,
        }
    }
}

/// The candidates for a path recorded in the core: under the container root first, then
/// on the host. `trusted` says the path is root's own (a debug directory), not the
/// crashed process's.
pub fn candidate_paths(root: Option<&Path>, recorded: &str, trusted: bool) -> Vec<Candidate> {
    let mut recorded_paths = vec![recorded];
    if let Some(live) = recorded.strip_suffix(" (deleted)") {
        recorded_paths.push(live);
    }
    let mut candidates = Vec::new();
    for path in recorded_paths {
        if let Some(root) = root {
            candidates.push(Candidate {
                root: Some(root.to_path_buf()),
                path: PathBuf::from(path),
                trusted: false,
            });
        }
        candidates.push(Candidate {
            root: None,
            path: PathBuf::from(path),
            trusted,
        });
    }
    candidates
}

/// Map a regular file of at most `bytes_max` bytes. The file is opened as one the
/// crashed process may have replaced (`crashmesh_untrusted`): no symlink followed in a
/// path it chose, symlinks inside a container root kept inside it, never a FIFO or a
/// device.
pub fn map_regular_file(candidate: &Candidate, bytes_max: u64) -> Result<memmap2::Mmap, String> {
    use crashmesh_untrusted::{Resolve, Rules};
    let resolve = match (&candidate.root, candidate.trusted) {
        (Some(root), _) => Resolve::InRoot(root),
        (None, true) => Resolve::FollowSymlinks,
        // The process named the path (NT_FILE, or the linker's list in its memory): only
        // the system's own links (`/lib → usr/lib`) are followed.
        (None, false) => Resolve::RootOwnedSymlinks,
    };
    let opened = crashmesh_untrusted::open_file(&candidate.path, resolve, Rules::REGULAR)
        .map_err(|error| error.to_string())?;
    if opened.metadata.len() > bytes_max {
        return Err(format!(
            "{} bytes, more than the limit of {bytes_max}",
            opened.metadata.len()
        ));
    }
    // SAFETY: the map is read-only and private to this analysis. If another process
    // truncates the file while it is mapped, reads past the new end fault; that is the
    // accepted cost of not copying libraries (as every debugger does).
    unsafe { memmap2::Mmap::map(&opened.file) }.map_err(|error| error.to_string())
}

/// Open the file behind a module and decide whether it is the build that ran.
pub fn open_module_file<'data>(
    image: &CoreImage<'data>,
    module: &mut ModuleDescriptor,
    root: Option<&Path>,
    read_files: bool,
    file_bytes_max: u64,
    page_bytes: u64,
) -> ModuleFile<'data> {
    let mut file = ModuleFile {
        resolved: None,
        bytes: None,
        build_id_on_disk: None,
        usable: false,
        problem: None,
    };
    match module.kind {
        ModuleKind::Vdso => {
            if let Some(bytes) = image.read(module.base, (module.end - module.base) as usize) {
                file.build_id_on_disk = elf_header::build_id_of_file(bytes);
                file.bytes = Some(ModuleBytes::Core(bytes));
                file.usable = true;
            }
            return file;
        }
        ModuleKind::Memory => {
            file.problem = Some(
                "no file name: NT_FILE is missing or damaged and the dynamic linker's list \
                 does not name it"
                    .to_string(),
            );
            return file;
        }
        ModuleKind::File if !read_files => {
            file.problem = Some("reading module files is switched off".to_string());
            return file;
        }
        ModuleKind::File => {}
    }
    let mut errors = Vec::new();
    for candidate in candidate_paths(root, &module.path, false) {
        match map_regular_file(&candidate, file_bytes_max) {
            Ok(map) => {
                file.resolved = Some(candidate);
                file.bytes = Some(ModuleBytes::Mapped(map));
                break;
            }
            Err(error) => errors.push(format!("{}: {error}", candidate.shown().display())),
        }
    }
    let Some(bytes) = file.bytes.as_ref().map(ModuleBytes::bytes) else {
        file.problem = Some(format!("not found ({})", errors.join("; ")));
        return file;
    };
    if !elf_header::is_elf64_le(bytes) {
        file.problem = Some("not a 64-bit ELF file".to_string());
        return file;
    }
    file.build_id_on_disk = elf_header::build_id_of_file(bytes);
    if module.load_bias.is_none() {
        let headers = elf_header::program_headers(bytes).unwrap_or_default();
        module.load_bias = elf_header::first_load_address(&headers, page_bytes)
            .map(|first| module.base.wrapping_sub(first));
    }
    match (&module.build_id_in_core, &file.build_id_on_disk) {
        (Some(in_core), Some(on_disk)) if in_core != on_disk => {
            file.problem = Some(format!(
                "the file on disk is another build ({}, the process ran {})",
                elf_header::hex(on_disk),
                elf_header::hex(in_core)
            ));
        }
        (Some(_), None) => {
            file.problem = Some("the file on disk has no build-id; the process's had one".into());
        }
        _ => file.usable = true,
    }
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_a_core_names_are_opened_without_following_the_process_s_links() {
        let host = tempfile::tempdir().unwrap();
        let secret = host.path().join("secret.so");
        std::fs::write(&secret, b"\x7fELF host file").unwrap();
        let root = host.path().join("container");
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::write(root.join("usr/lib/libreal.so"), b"\x7fELF container file").unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink(&secret, root.join("usr/lib/libescape.so")).unwrap();
        // A user's link, and root's own link in a directory anyone can write (as /tmp).
        std::os::unix::fs::symlink(&secret, host.path().join("planted.so")).unwrap();
        std::os::unix::fs::lchown(host.path().join("planted.so"), Some(65534), Some(65534))
            .unwrap();
        let shared = host.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(
            &shared,
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        )
        .unwrap();
        std::os::unix::fs::symlink(&secret, shared.join("planted.so")).unwrap();

        let in_root = |path: &str| Candidate {
            root: Some(root.clone()),
            path: PathBuf::from(path),
            trusted: false,
        };
        // A container's own links resolve inside it; one pointing out finds nothing.
        assert_eq!(
            &map_regular_file(&in_root("/lib/libreal.so"), 1 << 20).unwrap()[..],
            b"\x7fELF container file"
        );
        assert!(map_regular_file(&in_root("/usr/lib/libescape.so"), 1 << 20).is_err());
        // On the host, a link where the process's file was is refused, unless the path is
        // root's own (a debug directory).
        let planted = |trusted| Candidate {
            root: None,
            path: host.path().join("planted.so"),
            trusted,
        };
        let error = map_regular_file(&planted(false), 1 << 20).unwrap_err();
        assert!(error.contains("symbolic link"), "{error}");
        let in_shared = Candidate {
            root: None,
            path: shared.join("planted.so"),
            trusted: false,
        };
        let error = map_regular_file(&in_shared, 1 << 20).unwrap_err();
        assert!(error.contains("symbolic link"), "{error}");
        assert!(map_regular_file(&planted(true), 1 << 20).is_ok());
        assert_eq!(
            in_root("/lib/libreal.so").shown(),
            root.join("lib/libreal.so")
        );
    }
}

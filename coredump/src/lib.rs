//! Reads ELF core files: threads, registers, signal, mappings and build-ids from the
//! notes; unwinds every thread (CFI through framehop, frame pointers, stack scanning);
//! symbolizes frames from symbol tables and DWARF, with separate debug files.
//!
//! The entry points are [`analyze_core`] (a core file on disk, mapped) and
//! [`analyze_core_bytes`] (a core already in memory); [`notes::parse_notes`] is the pure
//! note decoder underneath.
//!
//! Invariants:
//! - Hostile input (truncated, corrupt, crafted cores) gives a [`CoreError`] or a partial
//!   analysis with `problem.analysis_error` set; never a panic and never an allocation
//!   sized by an unchecked count. Every list has a limit ([`AnalyzeOptions`], and the
//!   `*_MAX` constants of each module).
//! - Frames are physical frames, top first, with gdb's addresses: the pc for frame 0 and
//!   for a frame a signal interrupted, the return address for callers.
//! - A library is read from disk only when its build-id matches the one the core
//!   remembers; otherwise its frames keep module, offset and build-id but no names.
//! - Work is lazy and per module: section headers, unwind tables, symbol tables, debug
//!   files and DWARF are read only for modules that a frame falls in, once each.
//! - The core's bytes are not copied; files are mapped, not read.

pub mod arch;
pub mod dwarf;
mod elf_header;
pub mod error;
pub mod memory;
pub mod modules;
pub mod notes;
pub mod stable;
pub mod symbols;
pub mod unwind;

use std::cell::OnceCell;
use std::path::{Path, PathBuf};

use crashmesh_protocol::signature::{StableFrame, StableFunction};
use crashmesh_protocol::{Frame, FrameSource, Problem, ProblemKind, ThreadTrace};
use object::{Object, ObjectSection};

pub use crate::arch::Architecture;
pub use crate::error::CoreError;
use crate::memory::CoreImage;
use crate::modules::{ModuleDescriptor, ModuleFile};
pub use crate::notes::{CoreNotes, parse_notes};
use crate::symbols::{DebugSearch, DebugStore, Symbolizer};
use crate::unwind::{ProcessUnwinder, ProcessView, UnwindSections, UnwoundFrame};

/// How to analyse a core, with a limit on everything.
#[derive(Clone, Debug)]
pub struct AnalyzeOptions {
    /// The crashed process's root (`/proc/<pid>/root` or a container's root): a path the
    /// core names is tried under it first, then on the host.
    pub root: Option<PathBuf>,
    /// Where separate debug files live, tried in order.
    pub debug_dirs: Vec<PathBuf>,
    /// At most this many threads are unwound (the crashing thread always is).
    pub threads_max: usize,
    /// At most this many frames per thread.
    pub frames_max: usize,
    /// Cores larger than this are refused.
    pub core_bytes_max: u64,
    /// Module and debug files larger than this are not mapped.
    pub module_file_bytes_max: u64,
    /// When false, no file on disk is opened: only the core's own memory is used (for
    /// fuzzing, and for cores from other machines).
    pub read_module_files: bool,
    /// When true (the default), compressed DWARF (`SHF_COMPRESSED`, `.zdebug_*`) is
    /// decompressed for function names and file:line, up to a bound of decompressed
    /// bytes; when false, such modules are named from their symbol tables only.
    /// Uncompressed DWARF is always used.
    pub decompress_debug_info: bool,
}

impl Default for AnalyzeOptions {
    fn default() -> Self {
        AnalyzeOptions {
            root: None,
            debug_dirs: vec![PathBuf::from("/usr/lib/debug")],
            threads_max: 1024,
            frames_max: 256,
            core_bytes_max: 64 << 30,
            module_file_bytes_max: 8 << 30,
            read_module_files: true,
            decompress_debug_info: true,
        }
    }
}

/// One file-backed mapping of the process.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MappingInfo {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Offset in the file, in bytes.
    pub file_offset: u64,
    /// The file's path as recorded.
    pub path: String,
    /// True when the mapping was executable.
    pub executable: bool,
}

/// One ELF object mapped into the process.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ModuleInfo {
    /// The path as recorded in the core (`[vdso]` for the vdso).
    pub path: String,
    /// The file that was opened for it, if any.
    pub resolved_path: Option<String>,
    /// Lowest mapped address.
    pub start: u64,
    /// One past the highest mapped address.
    pub end: u64,
    /// Actual minus stated addresses.
    pub load_bias: Option<u64>,
    /// The build-id the core's memory holds, hex.
    pub build_id: Option<String>,
    /// The build-id of the file on disk, hex.
    pub build_id_on_disk: Option<String>,
    /// True when both are known and equal, false when both are known and differ.
    pub build_id_matches: Option<bool>,
    /// True when the file on disk was used.
    pub file_used: bool,
    /// True when a symbol table was read (only for modules with frames).
    pub symbols_found: bool,
    /// True when DWARF was read (only for modules with frames).
    pub debug_info_found: bool,
    /// The separate debug file used, if any.
    pub debug_file: Option<String>,
    /// Why the file is missing or was not used.
    pub problem: Option<String>,
}

/// Everything an analysis found.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CoreAnalysis {
    /// The problem as the rest of crashmesh sees it (kind `core`).
    pub problem: Problem,
    /// The process id.
    pub pid: Option<u32>,
    /// The command name (`comm`).
    pub process_name: Option<String>,
    /// The start of the command line (`pr_psargs`).
    pub arguments: Option<String>,
    /// `x86_64` or `aarch64`.
    pub architecture: String,
    /// `si_code` of the fatal signal.
    pub signal_code: Option<i32>,
    /// `si_addr` of the fatal signal, where it has one.
    pub fault_address: Option<u64>,
    /// File-backed mappings.
    pub mappings: Vec<MappingInfo>,
    /// Mapped ELF objects.
    pub modules: Vec<ModuleInfo>,
}

/// Analyse a core file: map it and read it (see [`analyze_core_bytes`]).
pub fn analyze_core(path: &Path, options: &AnalyzeOptions) -> Result<CoreAnalysis, CoreError> {
    let io_error = |source| CoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_error)?;
    let size_bytes = file.metadata().map_err(io_error)?.len();
    if size_bytes > options.core_bytes_max {
        return Err(CoreError::TooLarge {
            size_bytes,
            limit_bytes: options.core_bytes_max,
        });
    }
    // SAFETY: read-only private map; the core is ours (spooled by the hook) and is not
    // modified while it is analysed.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_error)?;
    analyze_core_bytes(&map, options)
}

/// One unwound frame as signature scheme 2 reads it (see [`stable`]).
fn stable_frame<'a>(
    frame: &UnwoundFrame,
    modules: &[ModuleDescriptor],
    files: &'a [ModuleFile<'_>],
    tables: &'a [OnceCell<stable::StableTables<'a>>],
    executable_module: Option<usize>,
) -> StableFrame {
    let lookup = if frame.is_return_address {
        frame.address.wrapping_sub(1)
    } else {
        frame.address
    };
    let outside = StableFrame {
        module: None,
        function: StableFunction::Address(frame.address),
        in_executable: false,
        machinery_name: None,
    };
    let Some(index) = modules::module_at(modules, lookup) else {
        return outside;
    };
    let descriptor = &modules[index];
    let module = descriptor
        .build_id_in_core
        .as_deref()
        .or(files[index].build_id_on_disk.as_deref())
        .map(elf_header::hex)
        .unwrap_or_else(|| {
            let path = descriptor.path.as_str();
            path.rsplit('/').next().unwrap_or(path).to_string()
        });
    let in_executable = Some(index) == executable_module;
    let Some(bias) = descriptor.load_bias else {
        return StableFrame {
            module: Some(module),
            in_executable,
            ..outside
        };
    };
    let stated = lookup.wrapping_sub(bias);
    let hit = match files[index].elf() {
        Some(elf) => tables[index]
            .get_or_init(|| stable::StableTables::load(&elf, in_executable))
            .lookup(stated),
        None => stable::StableHit::default(),
    };
    let function = match (hit.exported, hit.start) {
        (Some(name), _) => StableFunction::Exported(name),
        (None, Some(start)) => StableFunction::Start(start),
        (None, None) => StableFunction::Address(stated),
    };
    StableFrame {
        module: Some(module),
        function,
        in_executable,
        machinery_name: hit.machinery_name.as_deref().map(symbols::demangle),
    }
}

/// The name of a Linux signal.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        16 => "SIGSTKFLT",
        17 => "SIGCHLD",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        31 => "SIGSYS",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}

/// The analysis's view of the process: core memory, modules, and their files.
struct Process<'a> {
    image: &'a CoreImage<'a>,
    modules: &'a [ModuleDescriptor],
    files: &'a [ModuleFile<'a>],
    /// NT_FILE mappings with their module, sorted by start: where code not in the core
    /// is read from.
    file_ranges: Vec<(u64, u64, u64, usize)>,
}

impl<'a> Process<'a> {
    fn code_from_file(&self, address: u64, length: usize) -> Option<&'a [u8]> {
        let index = self
            .file_ranges
            .partition_point(|range| range.0 <= address)
            .checked_sub(1)?;
        let (start, end, file_offset, module) = self.files_range(index)?;
        if address >= end || address.checked_add(length as u64)? > end {
            return None;
        }
        let bytes = self.files.get(module)?.usable_bytes()?;
        let offset = usize::try_from(file_offset.checked_add(address - start)?).ok()?;
        bytes.get(offset..offset.checked_add(length)?)
    }

    fn files_range(&self, index: usize) -> Option<(u64, u64, u64, usize)> {
        self.file_ranges.get(index).copied()
    }
}

impl<'a> ProcessView<'a> for Process<'a> {
    fn read_u64(&self, address: u64) -> Option<u64> {
        self.image.read_u64(address)
    }

    fn code_at(&self, address: u64, length: usize) -> Option<&'a [u8]> {
        self.image
            .read_exact(address, length)
            .or_else(|| self.code_from_file(address, length))
    }

    fn code_before(&self, address: u64, length: usize) -> Option<&'a [u8]> {
        self.code_at(address.checked_sub(length as u64)?, length)
    }

    fn is_executable(&self, address: u64) -> bool {
        if let Some(segment) = self.image.segment_at(address) {
            return segment.is_executable();
        }
        // Cores written by gdb leave out read-only file mappings (text among them): ask
        // the module's own program headers.
        let Some(module) = modules::module_at(self.modules, address) else {
            return false;
        };
        let (Some(bias), Some(bytes)) = (
            self.modules[module].load_bias,
            self.files.get(module).and_then(ModuleFile::usable_bytes),
        ) else {
            return false;
        };
        let stated = address.wrapping_sub(bias);
        elf_header::program_headers(bytes)
            .unwrap_or_default()
            .iter()
            .any(|header| {
                header.segment_type == elf_header::PT_LOAD
                    && header.flags & memory::PF_X != 0
                    && header.address <= stated
                    && stated - header.address < header.memory_bytes
            })
    }

    fn module_index(&self, address: u64) -> Option<usize> {
        modules::module_at(self.modules, address)
    }

    fn unwind_sections(&self, module: usize) -> Option<(&'a str, UnwindSections<'a>)> {
        let descriptor = self.modules.get(module)?;
        let elf = self.files.get(module)?.elf()?;
        let bias = descriptor.load_bias?;
        let range = |name: &str| {
            let section = elf.section_by_name(name)?;
            Some(section.address()..section.address().checked_add(section.size())?)
        };
        let with_data = |name: &str| {
            let section = elf.section_by_name(name)?;
            let data = section.data().ok().filter(|data| !data.is_empty())?;
            Some((
                section.address()..section.address().checked_add(section.size())?,
                data,
            ))
        };
        let sections = UnwindSections {
            avma_range: descriptor.start..descriptor.end,
            bias,
            text_svma: range(".text"),
            got_svma: range(".got"),
            eh_frame: with_data(".eh_frame"),
            eh_frame_hdr: with_data(".eh_frame_hdr"),
            // Compressed .debug_frame (rare) is not used: framehop wants it in place.
            debug_frame: elf
                .section_by_name(".debug_frame")
                .filter(|section| {
                    section
                        .compressed_file_range()
                        .is_ok_and(|range| range.format == object::CompressionFormat::None)
                })
                .and_then(|section| section.data().ok())
                .filter(|data| !data.is_empty()),
        };
        Some((descriptor.path.as_str(), sections))
    }
}

/// Analyse a core that is already in memory.
pub fn analyze_core_bytes(
    data: &[u8],
    options: &AnalyzeOptions,
) -> Result<CoreAnalysis, CoreError> {
    if data.len() as u64 > options.core_bytes_max {
        return Err(CoreError::TooLarge {
            size_bytes: data.len() as u64,
            limit_bytes: options.core_bytes_max,
        });
    }
    let image = CoreImage::parse(data)?;
    let mut analysis_errors: Vec<String> = Vec::new();
    let mut notes = CoreNotes::default();
    for segment in &image.note_segments {
        notes.merge(parse_notes(segment));
    }
    analysis_errors.extend(notes.damage.iter().cloned());
    if image.note_segments.is_empty() {
        analysis_errors.push("the core has no notes".to_string());
    }
    if image.stated_bytes > data.len() as u64 {
        analysis_errors.push(format!(
            "truncated core: it holds {} of the {} bytes its headers describe; analysed as \
             far as its bytes go",
            data.len(),
            image.stated_bytes
        ));
    }

    let mut module_descriptors = modules::discover_modules(&image, &notes);
    let page_bytes = modules::page_bytes(&notes);
    let files: Vec<ModuleFile<'_>> = module_descriptors
        .iter_mut()
        .map(|module| {
            modules::open_module_file(
                &image,
                module,
                options.root.as_deref(),
                options.read_module_files,
                options.module_file_bytes_max,
                page_bytes,
            )
        })
        .collect();
    let module_descriptors = module_descriptors;
    let mut file_ranges: Vec<(u64, u64, u64, usize)> = notes
        .file_mappings
        .iter()
        .filter_map(|mapping| {
            let module = modules::module_at(&module_descriptors, mapping.start)?;
            (module_descriptors[module].path == mapping.path).then_some((
                mapping.start,
                mapping.end,
                mapping.file_offset,
                module,
            ))
        })
        .collect();
    file_ranges.sort_unstable();
    let process = Process {
        image: &image,
        modules: &module_descriptors,
        files: &files,
        file_ranges,
    };

    // Unwind: the crashing thread first, then the others up to threads_max.
    let signal = notes.signal_info.map(|info| info.signal).or_else(|| {
        notes
            .threads
            .iter()
            .find(|thread| thread.current_signal != 0)
            .map(|thread| i32::from(thread.current_signal))
    });
    let crashed_index = notes
        .threads
        .iter()
        .position(|thread| signal.is_some_and(|s| i32::from(thread.current_signal) == s))
        .unwrap_or(0);
    let mut unwinder = ProcessUnwinder::new(image.architecture);
    let mut unwound: Vec<Option<unwind::UnwoundThread>> = vec![None; notes.threads.len()];
    let mut order: Vec<usize> = (0..notes.threads.len()).collect();
    if !order.is_empty() {
        order.swap(0, crashed_index);
    }
    for &index in order.iter().take(options.threads_max.max(1)) {
        let thread = &notes.threads[index];
        unwound[index] = Some(
            match image.architecture.unwind_registers(&thread.registers) {
                Some(start) => unwinder.unwind(&process, start, options.frames_max),
                None => unwind::UnwoundThread {
                    frames: Vec::new(),
                    error: Some("the thread's registers are incomplete".to_string()),
                },
            },
        );
    }

    // Symbolize, lazily per module.
    let search = DebugSearch {
        root: options.root.as_deref(),
        debug_dirs: &options.debug_dirs,
        file_bytes_max: options.module_file_bytes_max,
        decompress_debug_info: options.decompress_debug_info,
    };
    let debug_stores: Vec<OnceCell<DebugStore>> =
        module_descriptors.iter().map(|_| OnceCell::new()).collect();
    let symbolizers: Vec<OnceCell<Symbolizer<'_>>> =
        module_descriptors.iter().map(|_| OnceCell::new()).collect();
    let symbolizer_for = |module: usize| -> &Symbolizer<'_> {
        symbolizers[module].get_or_init(|| {
            let descriptor = &module_descriptors[module];
            let file = &files[module];
            let build_id = descriptor
                .build_id_in_core
                .as_deref()
                .or(file.build_id_on_disk.as_deref());
            let store = debug_stores[module].get_or_init(|| {
                if file.usable_bytes().is_none() {
                    return DebugStore::default();
                }
                DebugStore::load(file, &descriptor.path, build_id, &search)
            });
            Symbolizer::new(file.usable_bytes(), store)
        })
    };
    let describe = |frame: &UnwoundFrame| -> Frame {
        let lookup = if frame.is_return_address {
            frame.address.wrapping_sub(1)
        } else {
            frame.address
        };
        let mut described = Frame {
            address: Some(frame.address),
            reliable: frame.found_by != FrameSource::Scan,
            found_by: Some(frame.found_by),
            ..Frame::default()
        };
        let Some(module) = modules::module_at(&module_descriptors, lookup) else {
            return described;
        };
        let descriptor = &module_descriptors[module];
        described.module = Some(descriptor.path.clone());
        described.build_id = descriptor
            .build_id_in_core
            .as_deref()
            .or(files[module].build_id_on_disk.as_deref())
            .map(elf_header::hex);
        let Some(bias) = descriptor.load_bias else {
            return described;
        };
        described.offset = Some(frame.address.wrapping_sub(bias));
        let hit = symbolizer_for(module).lookup(lookup.wrapping_sub(bias));
        if let Some(start) = hit.function_start {
            described.offset = Some(frame.address.wrapping_sub(start.wrapping_add(bias)));
        }
        described.function = hit.function;
        described.file = hit.file;
        described.line = hit.line;
        described
    };

    let mut threads = Vec::with_capacity(notes.threads.len());
    for (index, thread) in notes.threads.iter().enumerate() {
        let (frames, unwind_error) = match &unwound[index] {
            Some(unwound) => (
                unwound.frames.iter().map(&describe).collect(),
                unwound.error.clone(),
            ),
            None => (
                Vec::new(),
                Some(format!(
                    "not unwound: more than {} threads",
                    options.threads_max
                )),
            ),
        };
        threads.push(ThreadTrace {
            tid: thread.tid,
            name: None,
            crashed: index == crashed_index,
            frames,
            unwind_error,
        });
    }

    let crashing_frames: Vec<Frame> = threads
        .get(crashed_index)
        .map(|thread| thread.frames.clone())
        .unwrap_or_default();
    if notes.threads.is_empty() {
        analysis_errors.push("the core has no threads".to_string());
    }
    let fault_address = notes.signal_info.and_then(|info| info.fault_address);
    let crash_function = crashing_frames
        .first()
        .and_then(|frame| frame.function.clone())
        .unwrap_or_else(|| "??".to_string());
    let mut reason = match signal {
        Some(signal) => format!("{} in {crash_function}", signal_name(signal)),
        None => format!("crash in {crash_function}"),
    };
    if let (Some(7 | 11), Some(address)) = (signal, fault_address) {
        reason.push_str(&format!(" at {address:#x}"));
    }

    let executable = executable_path(&image, &notes, &module_descriptors);
    // Scheme 2: what every copy of the build identifies the crashing thread's frames by.
    let executable_module = notes
        .auxv_value(notes::auxv::AT_ENTRY)
        .and_then(|entry| modules::module_at(&module_descriptors, entry));
    let stable_tables: Vec<OnceCell<stable::StableTables<'_>>> =
        module_descriptors.iter().map(|_| OnceCell::new()).collect();
    let stable_frames: Vec<StableFrame> = unwound
        .get(crashed_index)
        .and_then(Option::as_ref)
        .map(|thread| {
            thread
                .frames
                .iter()
                .map(|frame| {
                    stable_frame(
                        frame,
                        &module_descriptors,
                        &files,
                        &stable_tables,
                        executable_module,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut problem = Problem::new(ProblemKind::Core, reason);
    problem.signature =
        crashmesh_protocol::signature::native_signature_v2(&stable_frames, signal).0;
    problem.frames = crashing_frames;
    problem.signal = signal;
    problem.executable = executable;
    problem.process = notes
        .process
        .as_ref()
        .map(|process| format!("{} [{}]", process.name, process.pid));
    problem.threads = Some(threads);
    if !analysis_errors.is_empty() {
        problem.analysis_error = Some(analysis_errors.join("; "));
    }

    let mappings = notes
        .file_mappings
        .iter()
        .map(|mapping| MappingInfo {
            start: mapping.start,
            end: mapping.end,
            file_offset: mapping.file_offset,
            path: mapping.path.clone(),
            executable: image
                .segment_at(mapping.start)
                .is_some_and(|segment| segment.is_executable()),
        })
        .collect();
    let module_infos = module_descriptors
        .iter()
        .zip(&files)
        .enumerate()
        .map(|(index, (descriptor, file))| {
            let symbolizer = symbolizers[index].get();
            let store = debug_stores[index].get();
            ModuleInfo {
                path: descriptor.path.clone(),
                resolved_path: file
                    .resolved
                    .as_ref()
                    .map(|candidate| candidate.shown().display().to_string()),
                start: descriptor.start,
                end: descriptor.end,
                load_bias: descriptor.load_bias,
                build_id: descriptor.build_id_in_core.as_deref().map(elf_header::hex),
                build_id_on_disk: file.build_id_on_disk.as_deref().map(elf_header::hex),
                build_id_matches: match (&descriptor.build_id_in_core, &file.build_id_on_disk) {
                    (Some(in_core), Some(on_disk)) => Some(in_core == on_disk),
                    _ => None,
                },
                file_used: file.usable,
                symbols_found: symbolizer.is_some_and(|s| s.has_symbols),
                debug_info_found: symbolizer.is_some_and(|s| s.has_debug_info),
                debug_file: store
                    .and_then(|store| store.debug_file.as_ref())
                    .map(|(path, _)| path.display().to_string()),
                problem: file.problem.clone(),
            }
        })
        .collect();

    Ok(CoreAnalysis {
        problem,
        pid: notes
            .process
            .as_ref()
            .map(|process| process.pid)
            .or_else(|| notes.threads.get(crashed_index).map(|thread| thread.tid)),
        process_name: notes.process.as_ref().map(|process| process.name.clone()),
        arguments: notes
            .process
            .as_ref()
            .map(|process| process.arguments.clone()),
        architecture: image.architecture.name().to_string(),
        signal_code: notes.signal_info.map(|info| info.code),
        fault_address,
        mappings,
        modules: module_infos,
    })
}

/// The executable: the module holding `AT_PHDR` (or `AT_ENTRY`), else `AT_EXECFN`, else
/// the first word of the command line.
fn executable_path(
    image: &CoreImage<'_>,
    notes: &CoreNotes,
    modules: &[ModuleDescriptor],
) -> Option<String> {
    [notes::auxv::AT_PHDR, notes::auxv::AT_ENTRY]
        .iter()
        .filter_map(|&key| notes.auxv_value(key))
        .filter_map(|address| modules::module_at(modules, address))
        .map(|index| modules[index].path.clone())
        .find(|path| path != "[vdso]")
        .or_else(|| {
            let address = notes.auxv_value(notes::auxv::AT_EXECFN)?;
            image.read_c_string(address, 4096)
        })
        .or_else(|| {
            let process = notes.process.as_ref()?;
            process
                .arguments
                .split_whitespace()
                .next()
                .map(str::to_string)
        })
}

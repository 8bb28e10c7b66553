//! Stack unwinding of one thread: CFI (`.eh_frame` / `.eh_frame_hdr`, `.debug_frame`)
//! through framehop, frame pointers where there is no CFI, and stack scanning when both
//! fail.
//!
//! Invariants:
//! - Bounded: at most `frames_max` frames, at most [`SCAN_WORDS_MAX`] words scanned per
//!   frame, and every caller frame must move the stack pointer up or change the
//!   (pc, sp) pair, so a hostile stack cannot loop.
//! - Frame 0 is the thread's pc (`Context`). A caller's address is its return address,
//!   as gdb prints it; the symbolizer looks up `address - 1`.
//! - A scanned frame is only a word on the stack that points into executable memory just
//!   after a call instruction; it is marked `Scan` (unreliable).
//! - A signal frame (`__restore_rt` on x86-64) is unwound from the saved `ucontext`, and
//!   the interrupted frame's pc is reported exactly, as gdb does.
//! - Modules are handed to framehop lazily, the first time an address falls in them.

use framehop::{FrameAddress, Unwinder};

use crate::arch::{Architecture, UnwindStart};
use crashmesh_protocol::FrameSource;

/// How many stack words are scanned, per frame, for a return address.
pub const SCAN_WORDS_MAX: u64 = 1024;

/// The unwind sections of one module, as stated addresses and bytes.
#[derive(Clone, Default)]
pub struct UnwindSections<'a> {
    /// The module's mapped range.
    pub avma_range: std::ops::Range<u64>,
    /// Its load bias.
    pub bias: u64,
    /// `.text`'s stated range.
    pub text_svma: Option<std::ops::Range<u64>>,
    /// `.got`'s stated range.
    pub got_svma: Option<std::ops::Range<u64>>,
    /// `.eh_frame`.
    pub eh_frame: Option<(std::ops::Range<u64>, &'a [u8])>,
    /// `.eh_frame_hdr`.
    pub eh_frame_hdr: Option<(std::ops::Range<u64>, &'a [u8])>,
    /// `.debug_frame`.
    pub debug_frame: Option<&'a [u8]>,
}

impl<'a> UnwindSections<'a> {
    /// True when CFI describes the stated address (an FDE covers it).
    fn covers(&self, svma: u64) -> bool {
        use gimli::UnwindSection;
        let (Some((eh_frame_svma, eh_frame)), Some((hdr_svma, hdr))) =
            (&self.eh_frame, &self.eh_frame_hdr)
        else {
            return self.eh_frame.is_some() || self.debug_frame.is_some();
        };
        let mut bases = gimli::BaseAddresses::default()
            .set_eh_frame(eh_frame_svma.start)
            .set_eh_frame_hdr(hdr_svma.start);
        if let Some(text) = &self.text_svma {
            bases = bases.set_text(text.start);
        }
        if let Some(got) = &self.got_svma {
            bases = bases.set_got(got.start);
        }
        let header = gimli::EhFrameHdr::new(hdr, gimli::LittleEndian);
        let Ok(parsed) = header.parse(&bases, 8) else {
            return false;
        };
        let Some(table) = parsed.table() else {
            return false;
        };
        let mut eh_frame = gimli::EhFrame::new(eh_frame, gimli::LittleEndian);
        eh_frame.set_address_size(8);
        table
            .fde_for_address(&eh_frame, &bases, svma, gimli::EhFrame::cie_from_offset)
            .is_ok()
    }

    fn framehop_module(&self, name: &str) -> framehop::Module<&'a [u8]> {
        let info = framehop::ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: self.text_svma.clone(),
            got_svma: self.got_svma.clone(),
            eh_frame_svma: self.eh_frame.as_ref().map(|(range, _)| range.clone()),
            eh_frame: self.eh_frame.as_ref().map(|(_, bytes)| *bytes),
            eh_frame_hdr_svma: self.eh_frame_hdr.as_ref().map(|(range, _)| range.clone()),
            eh_frame_hdr: self.eh_frame_hdr.as_ref().map(|(_, bytes)| *bytes),
            debug_frame: self.debug_frame,
            ..Default::default()
        };
        framehop::Module::new(name.to_string(), self.avma_range.clone(), self.bias, info)
    }
}

/// What the unwinder needs from the process.
pub trait ProcessView<'a> {
    /// A word of memory (stack, data) from the core.
    fn read_u64(&self, address: u64) -> Option<u64>;
    /// Code bytes ending just before `address` (from the core, or the mapped file).
    fn code_before(&self, address: u64, length: usize) -> Option<&'a [u8]>;
    /// Code bytes at `address`.
    fn code_at(&self, address: u64, length: usize) -> Option<&'a [u8]>;
    /// True when `address` was in executable memory.
    fn is_executable(&self, address: u64) -> bool;
    /// The module holding `address`.
    fn module_index(&self, address: u64) -> Option<usize>;
    /// A module's name and unwind sections (read the first time they are asked for).
    fn unwind_sections(&self, module: usize) -> Option<(&'a str, UnwindSections<'a>)>;
}

/// One unwound frame, before symbolization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnwoundFrame {
    /// The pc for frame 0 and interrupted frames, the return address for callers.
    pub address: u64,
    /// True when `address` is a return address (look up `address - 1`).
    pub is_return_address: bool,
    /// How the frame was found.
    pub found_by: FrameSource,
}

/// One thread's frames and why unwinding stopped early, if it did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnwoundThread {
    /// Top first.
    pub frames: Vec<UnwoundFrame>,
    /// Why unwinding stopped before the end of the stack.
    pub error: Option<String>,
}

/// The per-architecture glue around framehop's register types.
trait ArchGlue {
    type Regs: Copy;
    type Unwinder<'a>: framehop::Unwinder<
            Module = framehop::Module<&'a [u8]>,
            UnwindRegs = Self::Regs,
            Cache = Self::Cache,
        > + Default;
    type Cache: Default;
    const ARCHITECTURE: Architecture;
    fn registers(start: UnwindStart) -> Self::Regs;
    fn sp(regs: &Self::Regs) -> u64;
    /// Registers after a scanned return address found in the word at `slot`.
    fn after_scan(regs: &mut Self::Regs, slot: u64, return_address: u64);
    /// The registers of the frame a signal interrupted, when `pc` is the signal
    /// trampoline (x86-64's `__restore_rt`).
    fn signal_frame<'a>(
        view: &dyn ProcessView<'a>,
        pc: u64,
        regs: &Self::Regs,
    ) -> Option<(u64, Self::Regs)>;
}

struct X86_64Glue;

/// `mov $0xf, %rax; syscall`: the whole of glibc's and musl's `__restore_rt`.
const X86_64_RESTORE_RT: [u8; 9] = [0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];
/// Where `ucontext.uc_mcontext` starts from the stack pointer in `__restore_rt`.
const X86_64_MCONTEXT_OFFSET: u64 = 40;

impl ArchGlue for X86_64Glue {
    type Regs = framehop::x86_64::UnwindRegsX86_64;
    type Unwinder<'a> = framehop::x86_64::UnwinderX86_64<&'a [u8]>;
    type Cache = framehop::x86_64::CacheX86_64;
    const ARCHITECTURE: Architecture = Architecture::X86_64;

    fn registers(start: UnwindStart) -> Self::Regs {
        framehop::x86_64::UnwindRegsX86_64::new(start.pc, start.sp, start.fp)
    }
    fn sp(regs: &Self::Regs) -> u64 {
        regs.sp()
    }
    fn after_scan(regs: &mut Self::Regs, slot: u64, return_address: u64) {
        regs.set_sp(slot.saturating_add(8));
        regs.set_ip(return_address);
    }
    fn signal_frame<'a>(
        view: &dyn ProcessView<'a>,
        pc: u64,
        regs: &Self::Regs,
    ) -> Option<(u64, Self::Regs)> {
        if view.code_at(pc, X86_64_RESTORE_RT.len())? != X86_64_RESTORE_RT {
            return None;
        }
        // struct sigcontext: r8..r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip.
        let mcontext = regs.sp().checked_add(X86_64_MCONTEXT_OFFSET)?;
        let rbp = view.read_u64(mcontext + 10 * 8)?;
        let rsp = view.read_u64(mcontext + 15 * 8)?;
        let rip = view.read_u64(mcontext + 16 * 8)?;
        Some((rip, framehop::x86_64::UnwindRegsX86_64::new(rip, rsp, rbp)))
    }
}

struct Aarch64Glue;

impl ArchGlue for Aarch64Glue {
    type Regs = framehop::aarch64::UnwindRegsAarch64;
    type Unwinder<'a> = framehop::aarch64::UnwinderAarch64<&'a [u8]>;
    type Cache = framehop::aarch64::CacheAarch64;
    const ARCHITECTURE: Architecture = Architecture::Aarch64;

    fn registers(start: UnwindStart) -> Self::Regs {
        framehop::aarch64::UnwindRegsAarch64::new(start.lr.unwrap_or(0), start.sp, start.fp)
    }
    fn sp(regs: &Self::Regs) -> u64 {
        regs.sp()
    }
    fn after_scan(regs: &mut Self::Regs, slot: u64, return_address: u64) {
        regs.set_sp(slot.saturating_add(8));
        regs.set_lr(return_address);
    }
    fn signal_frame<'a>(
        _view: &dyn ProcessView<'a>,
        _pc: u64,
        _regs: &Self::Regs,
    ) -> Option<(u64, Self::Regs)> {
        // FIXME: aarch64 signal frames (`__kernel_rt_sigreturn` in the vdso) are not
        // special-cased yet; framehop's CFI for the vdso handles the common case.
        None
    }
}

/// Unwinds the threads of one process, keeping framehop's state (modules, rule cache)
/// across threads.
pub struct ProcessUnwinder<'a> {
    inner: ArchUnwinder<'a>,
}

enum ArchUnwinder<'a> {
    X86_64(GenericUnwinder<'a, X86_64Glue>),
    Aarch64(GenericUnwinder<'a, Aarch64Glue>),
}

struct GenericUnwinder<'a, G: ArchGlue> {
    unwinder: G::Unwinder<'a>,
    cache: G::Cache,
    /// Per module: None until looked at, then the sections (if any).
    modules: std::collections::HashMap<usize, Option<UnwindSections<'a>>>,
}

impl<'a> ProcessUnwinder<'a> {
    /// An unwinder for a process of the given architecture.
    pub fn new(architecture: Architecture) -> ProcessUnwinder<'a> {
        let inner = match architecture {
            Architecture::X86_64 => ArchUnwinder::X86_64(GenericUnwinder::new()),
            Architecture::Aarch64 => ArchUnwinder::Aarch64(GenericUnwinder::new()),
        };
        ProcessUnwinder { inner }
    }

    /// Unwind one thread from its registers.
    pub fn unwind(
        &mut self,
        view: &dyn ProcessView<'a>,
        start: UnwindStart,
        frames_max: usize,
    ) -> UnwoundThread {
        match &mut self.inner {
            ArchUnwinder::X86_64(unwinder) => unwinder.unwind(view, start, frames_max),
            ArchUnwinder::Aarch64(unwinder) => unwinder.unwind(view, start, frames_max),
        }
    }
}

impl<'a, G: ArchGlue> GenericUnwinder<'a, G> {
    fn new() -> Self {
        GenericUnwinder {
            unwinder: G::Unwinder::default(),
            cache: G::Cache::default(),
            modules: Default::default(),
        }
    }

    /// Make sure the module holding `address` is known to framehop; its sections.
    fn sections_for(
        &mut self,
        view: &dyn ProcessView<'a>,
        address: u64,
    ) -> Option<&UnwindSections<'a>> {
        let index = view.module_index(address)?;
        let unwinder = &mut self.unwinder;
        self.modules
            .entry(index)
            .or_insert_with(|| {
                let (name, sections) = view.unwind_sections(index)?;
                unwinder.add_module(sections.framehop_module(name));
                Some(sections)
            })
            .as_ref()
    }

    /// A return address found by scanning up from `sp`, and the slot it was in.
    fn scan(&self, view: &dyn ProcessView<'a>, sp: u64) -> Option<(u64, u64)> {
        let call_bytes_max = G::ARCHITECTURE.call_instruction_bytes_max();
        for index in 0..SCAN_WORDS_MAX {
            let slot = sp.checked_add(index * 8)?;
            let Some(candidate) = view.read_u64(slot) else {
                // The end of the stack mapping.
                return None;
            };
            if candidate < call_bytes_max as u64 || !view.is_executable(candidate) {
                continue;
            }
            if view.module_index(candidate).is_none() {
                continue;
            }
            if let Some(before) = view.code_before(candidate, call_bytes_max)
                && G::ARCHITECTURE.ends_with_call(before)
            {
                return Some((candidate, slot));
            }
        }
        None
    }

    fn unwind(
        &mut self,
        view: &dyn ProcessView<'a>,
        start: UnwindStart,
        frames_max: usize,
    ) -> UnwoundThread {
        let mut thread = UnwoundThread::default();
        if frames_max == 0 {
            return thread;
        }
        thread.frames.push(UnwoundFrame {
            address: start.pc,
            is_return_address: false,
            found_by: FrameSource::Context,
        });
        let mut regs = G::registers(start);
        let mut address = FrameAddress::from_instruction_pointer(start.pc);
        let mut seen = std::collections::HashSet::new();
        let mut ended = false;
        while thread.frames.len() < frames_max {
            let lookup = address.address_for_lookup();
            let sp = G::sp(&regs);
            if !seen.insert((address.address(), sp)) {
                thread.error = Some(format!(
                    "unwinding looped at {:#x} with sp {sp:#x}",
                    address.address()
                ));
                break;
            }
            if let Some((pc, interrupted)) = G::signal_frame(view, address.address(), &regs) {
                regs = interrupted;
                address = FrameAddress::from_instruction_pointer(pc);
                thread.frames.push(UnwoundFrame {
                    address: pc,
                    is_return_address: false,
                    found_by: FrameSource::Cfi,
                });
                continue;
            }
            let in_code = view.is_executable(lookup);
            let covered = match self.sections_for(view, lookup) {
                Some(sections) => sections.covers(lookup.wrapping_sub(sections.bias)),
                None => false,
            };
            let before = regs;
            // A pc outside any code (a call through a bad pointer) has no CFI and no
            // frame set up: like gdb, take the return address from the stack first.
            let outcome = if !in_code && !address.is_return_address() {
                Err("the pc is not in executable memory".to_string())
            } else {
                match self
                    .unwinder
                    .unwind_frame(address, &mut regs, &mut self.cache, &mut |at| {
                        view.read_u64(at).ok_or(())
                    }) {
                    Ok(None) => {
                        ended = true;
                        break;
                    }
                    Ok(Some(return_address)) => {
                        let moved_up = G::sp(&regs) > sp
                            || (G::sp(&regs) == sp && return_address != address.address());
                        if return_address == 0 {
                            // A zero return address is how the outermost frame ends.
                            ended = true;
                            break;
                        } else if !view.is_executable(return_address) {
                            Err(format!(
                                "return address {return_address:#x} is not in executable memory"
                            ))
                        } else if !moved_up {
                            Err("the stack pointer did not move up".to_string())
                        } else {
                            Ok(return_address)
                        }
                    }
                    Err(error) => Err(error.to_string()),
                }
            };
            match outcome {
                Ok(return_address) => {
                    thread.frames.push(UnwoundFrame {
                        address: return_address,
                        is_return_address: true,
                        found_by: if covered {
                            FrameSource::Cfi
                        } else {
                            FrameSource::FramePointer
                        },
                    });
                    match FrameAddress::from_return_address(return_address) {
                        Some(next) => address = next,
                        None => break,
                    }
                }
                Err(reason) => {
                    regs = before;
                    match self.scan(view, sp) {
                        Some((return_address, slot)) => {
                            G::after_scan(&mut regs, slot, return_address);
                            thread.frames.push(UnwoundFrame {
                                address: return_address,
                                is_return_address: true,
                                found_by: FrameSource::Scan,
                            });
                            match FrameAddress::from_return_address(return_address) {
                                Some(next) => address = next,
                                None => break,
                            }
                        }
                        None => {
                            thread.error = Some(reason);
                            break;
                        }
                    }
                }
            }
        }
        if thread.frames.len() >= frames_max && thread.error.is_none() && !ended {
            thread.error = Some(format!("stopped at the limit of {frames_max} frames"));
        }
        thread
    }
}

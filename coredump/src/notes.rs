//! The decoder of an ELF core's notes (`PT_NOTE`): threads and their registers
//! (`NT_PRSTATUS`), the fatal signal (`NT_SIGINFO`), the process (`NT_PRPSINFO`), the
//! file mappings (`NT_FILE`) and the auxiliary vector (`NT_AUXV`).
//!
//! Invariants:
//! - [`parse_notes`] is a pure function of its bytes: no I/O, no global state.
//! - It never panics and never allocates from a count it has not checked against the
//!   bytes that are actually there; every list has a hard cap ([`CORE_THREADS_MAX`],
//!   [`CORE_FILE_MAPPINGS_MAX`], [`CORE_FILE_NAME_BYTES_MAX`], [`AUXV_ENTRIES_MAX`],
//!   [`NOTES_MAX`]).
//! - Only the 64-bit little-endian layouts Linux writes are decoded (x86-64 and aarch64
//!   share them: the register block starts at byte 112 of `NT_PRSTATUS` on both). The
//!   registers are kept as raw words; [`crate::arch::Architecture`] says which is which.
//! - Notes of unknown types or owners are skipped, not rejected; a known note whose
//!   contents contradict its size is an error ([`CoreError::BadNote`]).

use crate::error::CoreError;

/// `NT_PRSTATUS`: one per thread, with its registers.
pub const NT_PRSTATUS: u32 = 1;
/// `NT_PRPSINFO`: the process's name and arguments.
pub const NT_PRPSINFO: u32 = 3;
/// `NT_AUXV`: the auxiliary vector.
pub const NT_AUXV: u32 = 6;
/// `NT_SIGINFO`: the `siginfo_t` of the fatal signal.
pub const NT_SIGINFO: u32 = 0x5349_4749;
/// `NT_FILE`: the file-backed mappings.
pub const NT_FILE: u32 = 0x4649_4c45;

/// At most this many threads are accepted.
pub const CORE_THREADS_MAX: usize = 4096;
/// At most this many `NT_FILE` mappings are accepted.
pub const CORE_FILE_MAPPINGS_MAX: usize = 65_536;
/// At most this many bytes of `NT_FILE` path names are accepted.
pub const CORE_FILE_NAME_BYTES_MAX: usize = 16 * 1024 * 1024;
/// At most this many auxiliary vector entries are kept.
pub const AUXV_ENTRIES_MAX: usize = 1024;
/// At most this many notes are walked, whatever their type.
pub const NOTES_MAX: usize = 3 * CORE_THREADS_MAX + 1024;
/// At most this many register words are kept per thread.
pub const REGISTER_WORDS_MAX: usize = 64;

/// Where the register block (`pr_reg`) starts in `NT_PRSTATUS`.
const PRSTATUS_REGISTERS_OFFSET: usize = 112;
/// `pr_fpvalid` and its padding after the register block.
const PRSTATUS_TRAILER_BYTES: usize = 8;
/// `pr_fname` in `NT_PRPSINFO`.
const PRPSINFO_NAME_OFFSET: usize = 40;
const PRPSINFO_NAME_BYTES: usize = 16;
const PRPSINFO_ARGUMENTS_BYTES: usize = 80;

/// Auxiliary vector keys this crate uses.
pub mod auxv {
    /// The program headers of the executable.
    pub const AT_PHDR: u64 = 3;
    /// The page size.
    pub const AT_PAGESZ: u64 = 6;
    /// The interpreter's load address.
    pub const AT_BASE: u64 = 7;
    /// The executable's entry point.
    pub const AT_ENTRY: u64 = 9;
    /// The address of the executable's file name string.
    pub const AT_EXECFN: u64 = 31;
    /// The vdso's ELF header.
    pub const AT_SYSINFO_EHDR: u64 = 33;
}

/// Everything the notes of a core say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoreNotes {
    /// One per `NT_PRSTATUS`, in the core's order (Linux puts the dumping thread first).
    pub threads: Vec<ThreadNote>,
    /// The fatal signal, from the first `NT_SIGINFO`.
    pub signal_info: Option<SignalInfo>,
    /// The process, from `NT_PRPSINFO`.
    pub process: Option<ProcessInfo>,
    /// The file mappings, from `NT_FILE`, in the core's order.
    pub file_mappings: Vec<FileMapping>,
    /// The page size `NT_FILE` states.
    pub file_page_size_bytes: Option<u64>,
    /// The auxiliary vector's `(key, value)` pairs, up to `AT_NULL`.
    pub auxv: Vec<(u64, u64)>,
    /// How many notes were skipped because of their type or owner.
    pub notes_skipped: usize,
    /// `NT_PRSTATUS` notes past [`CORE_THREADS_MAX`], not decoded.
    pub threads_dropped: usize,
    /// What did not decode, one line each (a damaged note is skipped, the others kept).
    pub damage: Vec<String>,
}

impl CoreNotes {
    /// The value of an auxiliary vector entry.
    pub fn auxv_value(&self, key: u64) -> Option<u64> {
        self.auxv.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

/// One thread's `NT_PRSTATUS`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThreadNote {
    /// `pr_pid`: the thread's id.
    pub tid: u32,
    /// `pr_cursig`: the signal the thread was stopped by (0 for none).
    pub current_signal: u16,
    /// `pr_reg` as raw words, in the architecture's `user_regs_struct` order.
    pub registers: Vec<u64>,
}

/// The fatal signal's `siginfo_t`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalInfo {
    /// `si_signo`.
    pub signal: i32,
    /// `si_errno`.
    pub errno: i32,
    /// `si_code`.
    pub code: i32,
    /// `si_addr` for the signals that carry a fault address (SIGSEGV, SIGBUS, SIGILL,
    /// SIGFPE, SIGTRAP).
    pub fault_address: Option<u64>,
    /// `si_pid` for signals sent by a process (`si_code` ≤ 0).
    pub sender_pid: Option<u32>,
}

/// The process's `NT_PRPSINFO`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    /// `pr_pid`.
    pub pid: u32,
    /// `pr_ppid`.
    pub parent_pid: u32,
    /// `pr_uid`.
    pub uid: u32,
    /// `pr_gid`.
    pub gid: u32,
    /// `pr_fname`: the command name (`comm`), at most 15 bytes.
    pub name: String,
    /// `pr_psargs`: the first 80 bytes of the command line, arguments space-separated.
    pub arguments: String,
}

/// One `NT_FILE` entry: a file mapped into the process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileMapping {
    /// First address of the mapping.
    pub start: u64,
    /// One past its last address.
    pub end: u64,
    /// Where in the file the mapping starts, in bytes.
    pub file_offset: u64,
    /// The file's path as the kernel saw it (`(deleted)` suffix included).
    pub path: String,
}

/// A bounds-checked little-endian reader over one note's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u16_at(&self, offset: usize) -> Option<u16> {
        let bytes = self.bytes.get(offset..offset.checked_add(2)?)?;
        Some(u16::from_le_bytes(bytes.try_into().ok()?))
    }
    fn u32_at(&self, offset: usize) -> Option<u32> {
        let bytes = self.bytes.get(offset..offset.checked_add(4)?)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?))
    }
    fn i32_at(&self, offset: usize) -> Option<i32> {
        self.u32_at(offset).map(|value| value as i32)
    }
    fn u64_at(&self, offset: usize) -> Option<u64> {
        let bytes = self.bytes.get(offset..offset.checked_add(8)?)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }
}

fn align4(value: usize) -> Option<usize> {
    value.checked_add(3).map(|v| v & !3)
}

/// A C string from a fixed-size field: up to the first NUL, lossy UTF-8.
fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Decode the notes of one `PT_NOTE` segment (several segments: call once per segment
/// and [`CoreNotes::merge`] the results).
///
/// Damage costs only what it carries: a note that does not decode is skipped and named in
/// [`CoreNotes::damage`], and the notes after it are still read (a bad `NT_FILE` keeps the
/// threads, registers and signal). Only a note whose size runs past the segment ends the
/// segment's reading, since the next note's start is then unknown; what came before it is
/// kept.
pub fn parse_notes(data: &[u8]) -> CoreNotes {
    let mut notes = CoreNotes::default();
    let mut offset = 0usize;
    let mut notes_seen = 0usize;
    // Trailing padding shorter than a note header is ignored, as readelf does.
    while data.len().saturating_sub(offset) >= 12 {
        notes_seen += 1;
        if notes_seen > NOTES_MAX {
            notes.damage.push(
                CoreError::TooMany {
                    what: "notes",
                    count: notes_seen as u64,
                    limit: NOTES_MAX as u64,
                }
                .to_string(),
            );
            break;
        }
        let header = Reader {
            bytes: &data[offset..],
        };
        let note_offset = offset;
        let bad = move |reason: String| {
            CoreError::BadNote {
                offset: note_offset,
                reason,
            }
            .to_string()
        };
        let name_bytes = header.u32_at(0).unwrap_or(0) as usize;
        let description_bytes = header.u32_at(4).unwrap_or(0) as usize;
        let note_type = header.u32_at(8).unwrap_or(0);
        let name_start = offset + 12;
        let Some(name_end) = name_start
            .checked_add(name_bytes)
            .filter(|&end| end <= data.len())
        else {
            notes
                .damage
                .push(bad(format!("name of {name_bytes} bytes runs past the end")));
            break;
        };
        let Some(description_start) = align4(name_end).filter(|&start| start <= data.len()) else {
            notes
                .damage
                .push(bad("name padding runs past the end".to_string()));
            break;
        };
        let Some(description_end) = description_start
            .checked_add(description_bytes)
            .filter(|&end| end <= data.len())
        else {
            notes.damage.push(bad(format!(
                "description of {description_bytes} bytes runs past the end"
            )));
            break;
        };
        let name = &data[name_start..name_end];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        let description = &data[description_start..description_end];
        offset = align4(description_end)
            .unwrap_or(data.len())
            .min(data.len());

        if name != b"CORE" {
            notes.notes_skipped += 1;
            continue;
        }
        match note_type {
            NT_PRSTATUS => {
                if notes.threads.len() >= CORE_THREADS_MAX {
                    notes.threads_dropped += 1;
                    continue;
                }
                match parse_prstatus(description) {
                    Ok(thread) => notes.threads.push(thread),
                    Err(reason) => notes.damage.push(bad(reason)),
                }
            }
            NT_SIGINFO => {
                // The kernel writes one, for the dumping thread; gdb writes one per
                // thread, the signalled thread's first. The first one is the crash.
                match parse_siginfo(description) {
                    Ok(signal_info) => {
                        notes.signal_info.get_or_insert(signal_info);
                    }
                    Err(reason) => notes.damage.push(bad(reason)),
                }
            }
            NT_PRPSINFO => match parse_prpsinfo(description) {
                Ok(process) => notes.process = Some(process),
                Err(reason) => notes.damage.push(bad(reason)),
            },
            NT_FILE => match parse_file_note(description) {
                Ok((page_size, mappings)) => {
                    notes.file_page_size_bytes = Some(page_size);
                    notes.file_mappings = mappings;
                }
                Err(FileNoteError::Bad(reason)) => notes.damage.push(bad(reason)),
                Err(FileNoteError::TooMany(count)) => notes.damage.push(
                    CoreError::TooMany {
                        what: "file mappings",
                        count,
                        limit: CORE_FILE_MAPPINGS_MAX as u64,
                    }
                    .to_string(),
                ),
            },
            NT_AUXV => notes.auxv = parse_auxv(description),
            _ => notes.notes_skipped += 1,
        }
    }
    if notes.threads_dropped > 0 {
        notes.damage.push(
            CoreError::TooMany {
                what: "threads",
                count: (notes.threads.len() + notes.threads_dropped) as u64,
                limit: CORE_THREADS_MAX as u64,
            }
            .to_string()
                + "; the first ones are kept",
        );
    }
    notes
}

impl CoreNotes {
    /// Add the notes of another `PT_NOTE` segment: threads append (up to
    /// [`CORE_THREADS_MAX`]), single notes are kept from the first segment that has them.
    pub fn merge(&mut self, other: CoreNotes) {
        let room = CORE_THREADS_MAX.saturating_sub(self.threads.len());
        let dropped = other.threads.len().saturating_sub(room);
        if dropped > 0 {
            self.damage.push(format!(
                "too many threads in the core: more than {CORE_THREADS_MAX}; the first ones are kept"
            ));
        }
        self.threads.extend(other.threads.into_iter().take(room));
        self.threads_dropped += other.threads_dropped + dropped;
        self.signal_info = self.signal_info.or(other.signal_info);
        if self.process.is_none() {
            self.process = other.process;
        }
        if self.file_mappings.is_empty() {
            self.file_mappings = other.file_mappings;
            self.file_page_size_bytes = other.file_page_size_bytes;
        }
        if self.auxv.is_empty() {
            self.auxv = other.auxv;
        }
        self.notes_skipped += other.notes_skipped;
        self.damage.extend(other.damage);
    }
}

fn parse_prstatus(description: &[u8]) -> Result<ThreadNote, String> {
    let reader = Reader { bytes: description };
    // The register block must hold at least the 27 words of x86-64's user_regs_struct
    // or the 34 of aarch64's; anything shorter is not a Linux prstatus.
    let register_bytes = description
        .len()
        .checked_sub(PRSTATUS_REGISTERS_OFFSET + PRSTATUS_TRAILER_BYTES)
        .filter(|&bytes| bytes >= 8 * 17)
        .ok_or_else(|| format!("NT_PRSTATUS of {} bytes is too short", description.len()))?;
    let word_count = (register_bytes / 8).min(REGISTER_WORDS_MAX);
    let registers = (0..word_count)
        .filter_map(|index| reader.u64_at(PRSTATUS_REGISTERS_OFFSET + index * 8))
        .collect();
    Ok(ThreadNote {
        tid: reader.u32_at(32).unwrap_or(0),
        current_signal: reader.u16_at(12).unwrap_or(0),
        registers,
    })
}

fn parse_siginfo(description: &[u8]) -> Result<SignalInfo, String> {
    let reader = Reader { bytes: description };
    let too_short = || format!("NT_SIGINFO of {} bytes is too short", description.len());
    let signal = reader.i32_at(0).ok_or_else(too_short)?;
    let errno = reader.i32_at(4).ok_or_else(too_short)?;
    let code = reader.i32_at(8).ok_or_else(too_short)?;
    // SIGILL 4, SIGTRAP 5, SIGBUS 7, SIGFPE 8, SIGSEGV 11 carry si_addr at byte 16 when
    // the kernel raised them (si_code > 0); signals sent by a process carry si_pid there.
    let fault_address = if code > 0 && matches!(signal, 4 | 5 | 7 | 8 | 11) {
        reader.u64_at(16)
    } else {
        None
    };
    let sender_pid = if code <= 0 { reader.u32_at(16) } else { None };
    Ok(SignalInfo {
        signal,
        errno,
        code,
        fault_address,
        sender_pid,
    })
}

fn parse_prpsinfo(description: &[u8]) -> Result<ProcessInfo, String> {
    let reader = Reader { bytes: description };
    let name_end = PRPSINFO_NAME_OFFSET + PRPSINFO_NAME_BYTES;
    if description.len() < name_end {
        return Err(format!(
            "NT_PRPSINFO of {} bytes is too short",
            description.len()
        ));
    }
    let arguments_end = (name_end + PRPSINFO_ARGUMENTS_BYTES).min(description.len());
    Ok(ProcessInfo {
        uid: reader.u32_at(16).unwrap_or(0),
        gid: reader.u32_at(20).unwrap_or(0),
        pid: reader.u32_at(24).unwrap_or(0),
        parent_pid: reader.u32_at(28).unwrap_or(0),
        name: c_string(&description[PRPSINFO_NAME_OFFSET..name_end]),
        arguments: c_string(&description[name_end..arguments_end])
            .trim_end()
            .to_string(),
    })
}

enum FileNoteError {
    Bad(String),
    TooMany(u64),
}

fn parse_file_note(description: &[u8]) -> Result<(u64, Vec<FileMapping>), FileNoteError> {
    let reader = Reader { bytes: description };
    let count = reader
        .u64_at(0)
        .ok_or_else(|| FileNoteError::Bad("NT_FILE has no count".into()))?;
    let page_size = reader
        .u64_at(8)
        .ok_or_else(|| FileNoteError::Bad("NT_FILE has no page size".into()))?;
    if count > CORE_FILE_MAPPINGS_MAX as u64 {
        return Err(FileNoteError::TooMany(count));
    }
    let count = count as usize;
    // Checked against the bytes before anything is allocated from it.
    let names_start = 16 + count * 24;
    if names_start > description.len() {
        return Err(FileNoteError::Bad(format!(
            "NT_FILE claims {count} mappings but has {} bytes",
            description.len()
        )));
    }
    let names = &description[names_start..];
    if names.len() > CORE_FILE_NAME_BYTES_MAX {
        return Err(FileNoteError::Bad(format!(
            "NT_FILE has {} bytes of names, the limit is {CORE_FILE_NAME_BYTES_MAX}",
            names.len()
        )));
    }
    let mut name_iter = names.split(|&b| b == 0);
    let mut mappings = Vec::with_capacity(count);
    for index in 0..count {
        let entry = 16 + index * 24;
        let start = reader.u64_at(entry).unwrap_or(0);
        let end = reader.u64_at(entry + 8).unwrap_or(0);
        let page_offset = reader.u64_at(entry + 16).unwrap_or(0);
        let name = name_iter.next().ok_or_else(|| {
            FileNoteError::Bad(format!("NT_FILE has fewer names than its {count} mappings"))
        })?;
        if end < start {
            return Err(FileNoteError::Bad(format!(
                "NT_FILE mapping {index} ends ({end:#x}) before it starts ({start:#x})"
            )));
        }
        mappings.push(FileMapping {
            start,
            end,
            file_offset: page_offset.saturating_mul(page_size),
            path: String::from_utf8_lossy(name).into_owned(),
        });
    }
    Ok((page_size, mappings))
}

fn parse_auxv(description: &[u8]) -> Vec<(u64, u64)> {
    let reader = Reader { bytes: description };
    let mut entries = Vec::new();
    for index in 0..(description.len() / 16).min(AUXV_ENTRIES_MAX) {
        let key = reader.u64_at(index * 16).unwrap_or(0);
        let value = reader.u64_at(index * 16 + 8).unwrap_or(0);
        if key == 0 {
            break;
        }
        entries.push((key, value));
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a note segment the way the kernel writes it.
    pub(crate) fn note(name: &[u8], note_type: u32, description: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
        bytes.extend_from_slice(&(description.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&note_type.to_le_bytes());
        bytes.extend_from_slice(name);
        bytes.push(0);
        while bytes.len() % 4 != 0 {
            bytes.push(0);
        }
        bytes.extend_from_slice(description);
        while bytes.len() % 4 != 0 {
            bytes.push(0);
        }
        bytes
    }

    fn prstatus(tid: u32, signal: u16, rip: u64, rsp: u64) -> Vec<u8> {
        let mut description = vec![0u8; 336];
        description[12..14].copy_from_slice(&signal.to_le_bytes());
        description[32..36].copy_from_slice(&tid.to_le_bytes());
        description[112 + 16 * 8..112 + 17 * 8].copy_from_slice(&rip.to_le_bytes());
        description[112 + 19 * 8..112 + 20 * 8].copy_from_slice(&rsp.to_le_bytes());
        description
    }

    fn file_note(entries: &[(u64, u64, u64, &str)]) -> Vec<u8> {
        let mut description = Vec::new();
        description.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        description.extend_from_slice(&4096u64.to_le_bytes());
        for (start, end, page_offset, _) in entries {
            for value in [start, end, page_offset] {
                description.extend_from_slice(&value.to_le_bytes());
            }
        }
        for (_, _, _, name) in entries {
            description.extend_from_slice(name.as_bytes());
            description.push(0);
        }
        description
    }

    fn sample_segment() -> Vec<u8> {
        let mut segment = Vec::new();
        segment.extend(note(
            b"CORE",
            NT_PRSTATUS,
            &prstatus(42, 11, 0x1234, 0x7ff0),
        ));
        segment.extend(note(b"CORE", NT_PRSTATUS, &prstatus(43, 0, 0x5678, 0x6ff0)));
        let mut siginfo = vec![0u8; 128];
        siginfo[0..4].copy_from_slice(&11i32.to_le_bytes());
        siginfo[8..12].copy_from_slice(&1i32.to_le_bytes());
        siginfo[16..24].copy_from_slice(&0xdeadu64.to_le_bytes());
        segment.extend(note(b"CORE", NT_SIGINFO, &siginfo));
        let mut prpsinfo = vec![0u8; 136];
        prpsinfo[24..28].copy_from_slice(&42u32.to_le_bytes());
        prpsinfo[40..46].copy_from_slice(b"crashy");
        prpsinfo[56..70].copy_from_slice(b"./crashy --now");
        segment.extend(note(b"CORE", NT_PRPSINFO, &prpsinfo));
        segment.extend(note(
            b"CORE",
            NT_FILE,
            &file_note(&[
                (0x1000, 0x2000, 0, "/bin/crashy"),
                (0x2000, 0x4000, 1, "/bin/crashy"),
            ]),
        ));
        let mut auxv = Vec::new();
        for (key, value) in [(auxv::AT_ENTRY, 0x1040u64), (auxv::AT_PAGESZ, 4096), (0, 0)] {
            auxv.extend_from_slice(&key.to_le_bytes());
            auxv.extend_from_slice(&value.to_le_bytes());
        }
        segment.extend(note(b"CORE", NT_AUXV, &auxv));
        segment.extend(note(b"LINUX", 0x202, &[1, 2, 3]));
        segment
    }

    #[test]
    fn decodes_every_note_kind() {
        let notes = parse_notes(&sample_segment());
        assert!(notes.damage.is_empty(), "{:?}", notes.damage);
        assert_eq!(notes.threads.len(), 2);
        assert_eq!(notes.threads[0].tid, 42);
        assert_eq!(notes.threads[0].current_signal, 11);
        assert_eq!(notes.threads[0].registers.len(), 27);
        assert_eq!(notes.threads[0].registers[16], 0x1234);
        assert_eq!(notes.threads[1].registers[19], 0x6ff0);
        let signal = notes.signal_info.unwrap();
        assert_eq!((signal.signal, signal.code), (11, 1));
        assert_eq!(signal.fault_address, Some(0xdead));
        let process = notes.process.clone().unwrap();
        assert_eq!(process.pid, 42);
        assert_eq!(process.name, "crashy");
        assert_eq!(process.arguments, "./crashy --now");
        assert_eq!(notes.file_mappings.len(), 2);
        assert_eq!(notes.file_mappings[1].file_offset, 4096);
        assert_eq!(notes.file_mappings[1].path, "/bin/crashy");
        assert_eq!(notes.auxv_value(auxv::AT_ENTRY), Some(0x1040));
        assert_eq!(notes.notes_skipped, 1);
    }

    /// One helper for every hostile input: its damage is named, never a panic.
    fn check_damaged(data: &[u8], expected_fragment: &str) -> CoreNotes {
        let notes = parse_notes(data);
        assert!(
            notes
                .damage
                .iter()
                .any(|damage| damage.contains(expected_fragment)),
            "{:?} does not mention {expected_fragment:?}",
            notes.damage
        );
        notes
    }

    #[test]
    fn hostile_notes_are_named_as_damage() {
        let mut huge_name = note(b"CORE", NT_AUXV, &[]);
        huge_name[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        check_damaged(&huge_name, "name of");

        let mut huge_description = note(b"CORE", NT_AUXV, &[0; 16]);
        huge_description[4..8].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        check_damaged(&huge_description, "description of");

        let mut too_many_files = file_note(&[(0, 1, 0, "a")]);
        too_many_files[0..8].copy_from_slice(&u64::MAX.to_le_bytes());
        check_damaged(&note(b"CORE", NT_FILE, &too_many_files), "file mappings");

        let mut more_files_than_bytes = file_note(&[(0, 1, 0, "a")]);
        more_files_than_bytes[0..8].copy_from_slice(&1000u64.to_le_bytes());
        check_damaged(
            &note(b"CORE", NT_FILE, &more_files_than_bytes),
            "claims 1000",
        );

        let missing_names = file_note(&[(0, 1, 0, "a")]);
        let mut two_mappings_one_name = missing_names.clone();
        two_mappings_one_name[0..8].copy_from_slice(&2u64.to_le_bytes());
        two_mappings_one_name.truncate(16 + 24);
        check_damaged(&note(b"CORE", NT_FILE, &two_mappings_one_name), "claims 2");

        check_damaged(
            &note(b"CORE", NT_FILE, &file_note(&[(0x2000, 0x1000, 0, "a")])),
            "ends",
        );
        check_damaged(&note(b"CORE", NT_PRSTATUS, &[0; 100]), "too short");
        check_damaged(&note(b"CORE", NT_PRPSINFO, &[0; 20]), "too short");
        check_damaged(&note(b"CORE", NT_SIGINFO, &[0; 6]), "too short");

        let mut many_threads = Vec::new();
        for _ in 0..=CORE_THREADS_MAX {
            many_threads.extend(note(b"CORE", NT_PRSTATUS, &prstatus(1, 0, 0, 0)));
        }
        let notes = check_damaged(&many_threads, "threads");
        assert_eq!(
            notes.threads.len(),
            CORE_THREADS_MAX,
            "the first ones are kept"
        );
        assert_eq!(notes.threads_dropped, 1);
    }

    #[test]
    fn a_damaged_note_costs_only_what_it_carries() {
        // The sample segment with its NT_FILE claiming an absurd count of mappings.
        let mut segment = Vec::new();
        segment.extend(note(
            b"CORE",
            NT_PRSTATUS,
            &prstatus(42, 11, 0x1234, 0x7ff0),
        ));
        let mut absurd = file_note(&[(0x1000, 0x2000, 0, "/bin/crashy")]);
        absurd[0..8].copy_from_slice(&0x0fff_ffff_ffffu64.to_le_bytes());
        segment.extend(note(b"CORE", NT_FILE, &absurd));
        let mut siginfo = vec![0u8; 128];
        siginfo[0..4].copy_from_slice(&11i32.to_le_bytes());
        segment.extend(note(b"CORE", NT_SIGINFO, &siginfo));
        segment.extend(note(b"CORE", NT_PRSTATUS, &prstatus(43, 0, 0x5678, 0x6ff0)));
        let notes = parse_notes(&segment);
        assert_eq!(
            notes.threads.len(),
            2,
            "threads before and after the bad note"
        );
        assert_eq!(notes.threads[0].registers[16], 0x1234);
        assert_eq!(notes.signal_info.map(|info| info.signal), Some(11));
        assert!(notes.file_mappings.is_empty());
        assert_eq!(notes.damage.len(), 1, "{:?}", notes.damage);
        assert!(
            notes.damage[0].contains("file mappings"),
            "{:?}",
            notes.damage
        );
    }

    #[test]
    fn merged_segments_keep_at_most_the_thread_limit() {
        let mut first = CoreNotes {
            threads: vec![ThreadNote::default(); CORE_THREADS_MAX - 1],
            ..CoreNotes::default()
        };
        let second = CoreNotes {
            threads: vec![ThreadNote::default(); 3],
            ..CoreNotes::default()
        };
        first.merge(second);
        assert_eq!(first.threads.len(), CORE_THREADS_MAX);
        assert_eq!(first.threads_dropped, 2);
        assert_eq!(first.damage.len(), 1);
    }

    #[test]
    fn every_truncation_and_byte_flip_decodes_or_names_damage() {
        let segment = sample_segment();
        for length in 0..segment.len() {
            parse_notes(&segment[..length]);
        }
        for position in 0..segment.len() {
            for value in [0x00, 0xff, 0x80, 0x7f] {
                let mut mutated = segment.clone();
                mutated[position] = value;
                parse_notes(&mutated);
            }
        }
    }

    #[test]
    fn empty_and_padding_only_segments_have_no_notes() {
        assert_eq!(parse_notes(&[]), CoreNotes::default());
        assert_eq!(parse_notes(&[0; 11]), CoreNotes::default());
    }
}

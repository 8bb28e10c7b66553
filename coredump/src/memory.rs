//! The core file as an address space: its ELF header, its `PT_LOAD` segments (the
//! process's memory) and its `PT_NOTE` bytes.
//!
//! Invariants:
//! - Every read is bounds-checked against both the segment and the bytes of the core
//!   that are actually present (a truncated core just has less memory).
//! - Segments are sorted by address; overlapping segments (hostile cores) resolve to the
//!   one that starts last at or below the address, never to a panic.
//! - Only 64-bit little-endian cores are accepted.

use crate::arch::Architecture;
use crate::error::CoreError;

/// `PT_LOAD`.
const PT_LOAD: u32 = 1;
/// `PT_NOTE`.
const PT_NOTE: u32 = 4;
/// `PF_X`: the segment was executable.
pub const PF_X: u32 = 1;
/// `PF_W`.
pub const PF_W: u32 = 2;
/// `PF_R`.
pub const PF_R: u32 = 4;
/// At most this many program headers are read.
pub const CORE_SEGMENTS_MAX: usize = 1 << 20;

/// One `PT_LOAD` segment: a range of the process's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// First address.
    pub start: u64,
    /// One past the last address (`p_vaddr + p_memsz`).
    pub end: u64,
    /// Where its bytes start in the core.
    pub file_offset: u64,
    /// How many bytes the core holds (`p_filesz`, cut to the core's real size).
    pub file_bytes: u64,
    /// `PF_R | PF_W | PF_X`.
    pub flags: u32,
}

impl Segment {
    /// True for memory that was executable.
    pub fn is_executable(&self) -> bool {
        self.flags & PF_X != 0
    }
}

/// A parsed core: header facts, segments, and the raw note bytes.
pub struct CoreImage<'data> {
    /// The core's bytes.
    pub data: &'data [u8],
    /// Its machine.
    pub architecture: Architecture,
    /// `PT_LOAD` segments sorted by start address.
    pub segments: Vec<Segment>,
    /// The bytes of each `PT_NOTE` segment (cut to what the core holds).
    pub note_segments: Vec<&'data [u8]>,
    /// How long the core should be: the end of the furthest segment its program headers
    /// describe. More than `data.len()` means the core was cut short.
    pub stated_bytes: u64,
}

fn u16_at(data: &[u8], offset: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        data.get(offset..offset.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn u32_at(data: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        data.get(offset..offset.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(data: &[u8], offset: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        data.get(offset..offset.checked_add(8)?)?.try_into().ok()?,
    ))
}

impl<'data> CoreImage<'data> {
    /// Read the ELF header and program headers of a core.
    pub fn parse(data: &'data [u8]) -> Result<CoreImage<'data>, CoreError> {
        let not_core = |reason: &str| CoreError::NotACore(reason.to_string());
        if data.len() < 64 || &data[0..4] != b"\x7fELF" {
            return Err(not_core("no ELF header"));
        }
        if data[4] != 2 {
            return Err(not_core("not a 64-bit ELF file"));
        }
        if data[5] != 1 {
            return Err(not_core("not a little-endian ELF file"));
        }
        let file_type = u16_at(data, 16).unwrap_or(0);
        if file_type != 4 {
            return Err(CoreError::NotACore(format!(
                "ELF type {file_type}, not ET_CORE (4)"
            )));
        }
        let machine = u16_at(data, 18).unwrap_or(0);
        let architecture = Architecture::from_elf_machine(machine)
            .ok_or(CoreError::UnsupportedArchitecture(machine))?;
        let program_headers_offset = u64_at(data, 32).unwrap_or(0);
        let section_headers_offset = u64_at(data, 40).unwrap_or(0);
        let program_header_bytes = u16_at(data, 54).unwrap_or(0) as usize;
        let mut program_header_count = u16_at(data, 56).unwrap_or(0) as u64;
        if program_header_bytes < 56 {
            return Err(CoreError::NotACore(format!(
                "program headers of {program_header_bytes} bytes"
            )));
        }
        // PN_XNUM: the real count is in section header 0's sh_info.
        if program_header_count == 0xffff {
            program_header_count = usize::try_from(section_headers_offset)
                .ok()
                .and_then(|offset| u32_at(data, offset.checked_add(44)?))
                .ok_or_else(|| not_core("PN_XNUM without a section header 0"))?
                as u64;
        }
        if program_header_count > CORE_SEGMENTS_MAX as u64 {
            return Err(CoreError::TooMany {
                what: "program headers",
                count: program_header_count,
                limit: CORE_SEGMENTS_MAX as u64,
            });
        }
        let table_bytes = program_header_count * program_header_bytes as u64;
        let table_start = usize::try_from(program_headers_offset)
            .ok()
            .filter(|&start| {
                (start as u64)
                    .checked_add(table_bytes)
                    .is_some_and(|end| end <= data.len() as u64)
            })
            .ok_or_else(|| not_core("program headers run past the end of the core"))?;

        let mut segments = Vec::new();
        let mut note_segments = Vec::new();
        let mut stated_bytes = table_start as u64 + table_bytes;
        for index in 0..program_header_count as usize {
            let header = table_start + index * program_header_bytes;
            let segment_type = u32_at(data, header).unwrap_or(0);
            let flags = u32_at(data, header + 4).unwrap_or(0);
            let offset = u64_at(data, header + 8).unwrap_or(0);
            let address = u64_at(data, header + 16).unwrap_or(0);
            let file_bytes = u64_at(data, header + 32).unwrap_or(0);
            let memory_bytes = u64_at(data, header + 40).unwrap_or(0);
            // What the core really holds of the segment: truncated cores hold less.
            let present_bytes = (data.len() as u64).saturating_sub(offset).min(file_bytes);
            if matches!(segment_type, PT_LOAD | PT_NOTE) {
                stated_bytes = stated_bytes.max(offset.saturating_add(file_bytes));
            }
            match segment_type {
                PT_LOAD => {
                    let Some(end) = address.checked_add(memory_bytes) else {
                        continue;
                    };
                    segments.push(Segment {
                        start: address,
                        end,
                        file_offset: offset,
                        file_bytes: present_bytes.min(memory_bytes),
                        flags,
                    });
                }
                PT_NOTE if present_bytes > 0 => {
                    let start = offset as usize;
                    note_segments.push(&data[start..start + present_bytes as usize]);
                }
                _ => {}
            }
        }
        segments.sort_by_key(|segment| (segment.start, segment.end));
        Ok(CoreImage {
            data,
            architecture,
            segments,
            note_segments,
            stated_bytes,
        })
    }

    /// The segment that holds `address`.
    pub fn segment_at(&self, address: u64) -> Option<&Segment> {
        let index = self
            .segments
            .partition_point(|segment| segment.start <= address)
            .checked_sub(1)?;
        let segment = &self.segments[index];
        (address < segment.end).then_some(segment)
    }

    /// Up to `length` bytes at `address` from the core, as many as are contiguous in one
    /// segment and present in the file; None when not even one byte is.
    pub fn read(&self, address: u64, length: usize) -> Option<&'data [u8]> {
        let segment = self.segment_at(address)?;
        let within = address - segment.start;
        if within >= segment.file_bytes {
            return None;
        }
        let available = (segment.file_bytes - within).min(length as u64) as usize;
        let start = usize::try_from(segment.file_offset.checked_add(within)?).ok()?;
        self.data.get(start..start.checked_add(available)?)
    }

    /// Exactly `length` bytes at `address`, or None.
    pub fn read_exact(&self, address: u64, length: usize) -> Option<&'data [u8]> {
        self.read(address, length)
            .filter(|bytes| bytes.len() == length)
    }

    /// A little-endian word at `address`.
    pub fn read_u64(&self, address: u64) -> Option<u64> {
        Some(u64::from_le_bytes(
            self.read_exact(address, 8)?.try_into().ok()?,
        ))
    }

    /// A NUL-terminated string of at most `length_max` bytes at `address`.
    pub fn read_c_string(&self, address: u64, length_max: usize) -> Option<String> {
        let bytes = self.read(address, length_max)?;
        let end = bytes.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
    }
}

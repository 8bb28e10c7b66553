//! Minimal, bounds-checked reading of an ELF object's header, program headers and GNU
//! build-id note, from whatever bytes are at hand: the header page the kernel dumped into
//! the core, or the start of a file on disk.
//!
//! Invariant: only the first page-ish of bytes is needed; nothing here parses section
//! headers (that is `object`'s job, and only for modules that appear in a trace).

/// `PT_LOAD`.
pub const PT_LOAD: u32 = 1;
/// `PT_NOTE`.
pub const PT_NOTE: u32 = 4;
/// `NT_GNU_BUILD_ID`.
const NT_GNU_BUILD_ID: u32 = 3;
/// Program headers beyond this count are ignored.
const PROGRAM_HEADERS_MAX: usize = 512;
/// Build-ids longer than this are not build-ids.
const BUILD_ID_BYTES_MAX: usize = 64;

/// One program header of a 64-bit ELF object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramHeader {
    /// `p_type`.
    pub segment_type: u32,
    /// `p_flags`.
    pub flags: u32,
    /// `p_offset`.
    pub file_offset: u64,
    /// `p_vaddr`.
    pub address: u64,
    /// `p_filesz`.
    pub file_bytes: u64,
    /// `p_memsz`.
    pub memory_bytes: u64,
    /// `p_align`.
    pub alignment: u64,
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

/// True when `bytes` start with a 64-bit little-endian ELF header.
pub fn is_elf64_le(bytes: &[u8]) -> bool {
    bytes.len() >= 64 && &bytes[0..4] == b"\x7fELF" && bytes[4] == 2 && bytes[5] == 1
}

/// The program headers of a 64-bit little-endian ELF object whose first bytes are
/// `bytes`, or None when the header or its table is not all there.
pub fn program_headers(bytes: &[u8]) -> Option<Vec<ProgramHeader>> {
    if !is_elf64_le(bytes) {
        return None;
    }
    let table_offset = usize::try_from(u64_at(bytes, 32)?).ok()?;
    let entry_bytes = u16_at(bytes, 54)? as usize;
    let count = (u16_at(bytes, 56)? as usize).min(PROGRAM_HEADERS_MAX);
    if entry_bytes < 56 {
        return None;
    }
    let mut headers = Vec::with_capacity(count);
    for index in 0..count {
        let at = table_offset.checked_add(index.checked_mul(entry_bytes)?)?;
        headers.push(ProgramHeader {
            segment_type: u32_at(bytes, at)?,
            flags: u32_at(bytes, at + 4)?,
            file_offset: u64_at(bytes, at + 8)?,
            address: u64_at(bytes, at + 16)?,
            file_bytes: u64_at(bytes, at + 32)?,
            memory_bytes: u64_at(bytes, at + 40)?,
            alignment: u64_at(bytes, at + 48)?,
        });
    }
    Some(headers)
}

/// The lowest `PT_LOAD` address, page-aligned down: what the first mapping of the file
/// (file offset 0) corresponds to.
pub fn first_load_address(headers: &[ProgramHeader], page_bytes: u64) -> Option<u64> {
    let page_mask = !(page_bytes.max(1) - 1);
    headers
        .iter()
        .filter(|header| header.segment_type == PT_LOAD)
        .map(|header| {
            header
                .address
                .saturating_sub(header.file_offset % page_bytes.max(1))
        })
        .min()
        .map(|address| address & page_mask)
}

/// The GNU build-id in a run of ELF notes with the given alignment (4 or 8).
pub fn build_id_in_notes(notes: &[u8], alignment: u64) -> Option<Vec<u8>> {
    let align = if alignment == 8 { 8usize } else { 4usize };
    let round = |value: usize| value.checked_add(align - 1).map(|v| v & !(align - 1));
    let mut offset = 0usize;
    while notes.len().saturating_sub(offset) >= 12 {
        let name_bytes = u32_at(notes, offset)? as usize;
        let description_bytes = u32_at(notes, offset + 4)? as usize;
        let note_type = u32_at(notes, offset + 8)?;
        let name_start = offset + 12;
        let name_end = name_start.checked_add(name_bytes)?;
        let description_start = round(name_end)?;
        let description_end = description_start.checked_add(description_bytes)?;
        if description_end > notes.len() {
            return None;
        }
        let name = &notes[name_start..name_end];
        if note_type == NT_GNU_BUILD_ID
            && name.strip_suffix(b"\0").unwrap_or(name) == b"GNU"
            && (1..=BUILD_ID_BYTES_MAX).contains(&description_bytes)
        {
            return Some(notes[description_start..description_end].to_vec());
        }
        offset = round(description_end)?;
    }
    None
}

/// Lower-case hex of a build-id.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The build-id of an ELF file from its bytes (notes found through program headers).
pub fn build_id_of_file(file: &[u8]) -> Option<Vec<u8>> {
    let headers = program_headers(file)?;
    headers
        .iter()
        .filter(|header| header.segment_type == PT_NOTE)
        .find_map(|header| {
            let start = usize::try_from(header.file_offset).ok()?;
            let end = start.checked_add(usize::try_from(header.file_bytes).ok()?)?;
            build_id_in_notes(file.get(start..end)?, header.alignment)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_id_is_found_among_other_notes() {
        let mut notes = Vec::new();
        // A .note.ABI-tag first.
        notes.extend_from_slice(&4u32.to_le_bytes());
        notes.extend_from_slice(&16u32.to_le_bytes());
        notes.extend_from_slice(&1u32.to_le_bytes());
        notes.extend_from_slice(b"GNU\0");
        notes.extend_from_slice(&[0; 16]);
        notes.extend_from_slice(&4u32.to_le_bytes());
        notes.extend_from_slice(&4u32.to_le_bytes());
        notes.extend_from_slice(&3u32.to_le_bytes());
        notes.extend_from_slice(b"GNU\0");
        notes.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(
            build_id_in_notes(&notes, 4).map(|id| hex(&id)),
            Some("deadbeef".to_string())
        );
        for length in 0..notes.len() {
            let _ = build_id_in_notes(&notes[..length], 4);
            let _ = build_id_in_notes(&notes[..length], 8);
        }
    }

    #[test]
    fn this_test_binary_has_program_headers() {
        let path = std::env::current_exe().unwrap();
        let bytes = std::fs::read(path).unwrap();
        let headers = program_headers(&bytes).unwrap();
        assert!(headers.iter().any(|header| header.segment_type == PT_LOAD));
        for length in [0, 10, 63, 64, 100, 1000] {
            let _ = program_headers(&bytes[..length]);
        }
    }
}

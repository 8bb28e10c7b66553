//! What differs between CPU architectures: which `pr_reg` word is which register, and
//! what a call instruction looks like (for stack scanning).
//!
//! Invariant: everything architecture-specific outside the unwinder's register types
//! lives here, so adding an architecture means adding a variant and its arms.

/// The ELF machine of a core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// `EM_X86_64`.
    X86_64,
    /// `EM_AARCH64`.
    Aarch64,
}

/// `EM_X86_64`.
pub const EM_X86_64: u16 = 62;
/// `EM_AARCH64`.
pub const EM_AARCH64: u16 = 183;

impl Architecture {
    /// The architecture of an ELF machine number, if this crate decodes it.
    pub fn from_elf_machine(machine: u16) -> Option<Architecture> {
        match machine {
            EM_X86_64 => Some(Architecture::X86_64),
            EM_AARCH64 => Some(Architecture::Aarch64),
            _ => None,
        }
    }

    /// A short lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::X86_64 => "x86_64",
            Architecture::Aarch64 => "aarch64",
        }
    }

    /// Index of the instruction pointer in `pr_reg` (`user_regs_struct` / `user_pt_regs`).
    fn pc_index(self) -> usize {
        match self {
            Architecture::X86_64 => 16,
            Architecture::Aarch64 => 32,
        }
    }

    /// Index of the stack pointer in `pr_reg`.
    fn sp_index(self) -> usize {
        match self {
            Architecture::X86_64 => 19,
            Architecture::Aarch64 => 31,
        }
    }

    /// Index of the frame pointer (`rbp` / `x29`) in `pr_reg`.
    fn fp_index(self) -> usize {
        match self {
            Architecture::X86_64 => 4,
            Architecture::Aarch64 => 29,
        }
    }

    /// Index of the link register (`x30`) in `pr_reg`, where there is one.
    fn lr_index(self) -> Option<usize> {
        match self {
            Architecture::X86_64 => None,
            Architecture::Aarch64 => Some(30),
        }
    }

    /// The registers an unwinder starts from, if `pr_reg` holds them.
    pub fn unwind_registers(self, registers: &[u64]) -> Option<UnwindStart> {
        Some(UnwindStart {
            pc: *registers.get(self.pc_index())?,
            sp: *registers.get(self.sp_index())?,
            fp: *registers.get(self.fp_index())?,
            lr: match self.lr_index() {
                Some(index) => Some(*registers.get(index)?),
                None => None,
            },
        })
    }

    /// How many bytes before a return address the longest call instruction starts.
    pub fn call_instruction_bytes_max(self) -> usize {
        match self {
            Architecture::X86_64 => 8,
            Architecture::Aarch64 => 4,
        }
    }

    /// True when `before` (the bytes that end just before a candidate return address)
    /// ends with a call instruction. Used only to vet stack-scanning candidates.
    pub fn ends_with_call(self, before: &[u8]) -> bool {
        match self {
            Architecture::X86_64 => x86_64_ends_with_call(before),
            Architecture::Aarch64 => {
                let Some(word) = before
                    .len()
                    .checked_sub(4)
                    .and_then(|start| before.get(start..))
                    .and_then(|bytes| <[u8; 4]>::try_from(bytes).ok())
                    .map(u32::from_le_bytes)
                else {
                    return false;
                };
                // BL imm26, or BLR / BLRAA / BLRAB Xn.
                word & 0xfc00_0000 == 0x9400_0000
                    || word & 0xffff_fc1f == 0xd63f_0000
                    || word & 0xfeff_f800 == 0xd63f_0800
            }
        }
    }
}

/// The registers an unwinder needs for frame 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnwindStart {
    /// The instruction pointer.
    pub pc: u64,
    /// The stack pointer.
    pub sp: u64,
    /// The frame pointer.
    pub fp: u64,
    /// The link register (aarch64).
    pub lr: Option<u64>,
}

/// Length of an x86-64 instruction `FF /2` (call r/m64) from its ModRM byte on, or None
/// when the ModRM byte is not a call's.
fn x86_64_indirect_call_length(modrm: u8, sib: Option<u8>) -> Option<usize> {
    if (modrm >> 3) & 7 != 2 {
        return None;
    }
    let mode = modrm >> 6;
    let rm = modrm & 7;
    // Counting the 0xFF opcode and the ModRM byte.
    let length = match (mode, rm) {
        (3, _) => 2,
        (0, 5) => 6,
        (0, 4) => {
            let base_is_absolute = sib.map(|sib| sib & 7 == 5)?;
            if base_is_absolute { 7 } else { 3 }
        }
        (0, _) => 2,
        (1, 4) => 4,
        (1, _) => 3,
        (2, 4) => 7,
        (2, _) => 6,
        _ => return None,
    };
    Some(length)
}

fn x86_64_ends_with_call(before: &[u8]) -> bool {
    let length = before.len();
    // call rel32: E8 xx xx xx xx.
    if length >= 5 && before[length - 5] == 0xe8 {
        return true;
    }
    // call r/m64: [REX] FF ModRM [SIB] [disp].
    for instruction_length in 2..=7usize {
        let Some(start) = length.checked_sub(instruction_length) else {
            break;
        };
        if before[start] != 0xff {
            continue;
        }
        let Some(&modrm) = before.get(start + 1) else {
            continue;
        };
        let sib = before.get(start + 2).copied();
        if x86_64_indirect_call_length(modrm, sib) == Some(instruction_length) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_call(bytes: &[u8], expected: bool) {
        assert_eq!(
            Architecture::X86_64.ends_with_call(bytes),
            expected,
            "{bytes:02x?}"
        );
    }

    #[test]
    fn x86_64_call_instructions_are_recognized() {
        check_call(&[0x90, 0xe8, 1, 2, 3, 4], true); // call rel32
        check_call(&[0x90, 0xff, 0xd0], true); // call *%rax
        check_call(&[0x41, 0xff, 0xd4], true); // call *%r12
        check_call(&[0xff, 0x55, 0x08], true); // call *0x8(%rbp)
        check_call(&[0xff, 0x15, 1, 2, 3, 4], true); // call *rip+disp32
        check_call(&[0xff, 0x14, 0x25, 1, 2, 3, 4], true); // call *abs32 via SIB
        check_call(&[0x90, 0x90, 0x90], false);
        check_call(&[0xff, 0xe0], false); // jmp *%rax
        check_call(&[], false);
    }

    #[test]
    fn aarch64_calls_are_recognized() {
        let bl = 0x9400_0010u32.to_le_bytes();
        let blr_x1 = 0xd63f_0020u32.to_le_bytes();
        let ret = 0xd65f_03c0u32.to_le_bytes();
        assert!(Architecture::Aarch64.ends_with_call(&bl));
        assert!(Architecture::Aarch64.ends_with_call(&blr_x1));
        assert!(!Architecture::Aarch64.ends_with_call(&ret));
    }

    #[test]
    fn registers_come_from_their_documented_slots() {
        let mut words = vec![0u64; 27];
        words[16] = 0x10;
        words[19] = 0x20;
        words[4] = 0x30;
        let start = Architecture::X86_64.unwind_registers(&words).unwrap();
        assert_eq!((start.pc, start.sp, start.fp), (0x10, 0x20, 0x30));
        assert!(Architecture::Aarch64.unwind_registers(&words).is_none());
    }
}

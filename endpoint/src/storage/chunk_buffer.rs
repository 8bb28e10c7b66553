//! A chunk's body, read from the request straight into the buffer its pack record is
//! written from.
//!
//! ```text
//! | record header (RECORD_HEADER_BYTES) | zstd frame (the body) | zeros to the block |
//! ^ aligned to BUFFER_ALIGN_BYTES
//! ```
//! The allocation is aligned to the file system's block, so a pack opened `O_DIRECT` takes
//! the record as it is: the body is copied once, from the socket's buffers, and the page
//! cache never holds it. Freed buffers are kept for reuse (`IDLE_BUFFERS_MAX`), so a
//! chunk costs no allocation and no fresh pages.

use std::alloc::Layout;
use std::sync::Mutex;

/// The record header in front of the frame: magic, length, chunk id.
pub(crate) const RECORD_HEADER_BYTES: usize = 4 + 4 + 32;
/// The file system's block, and the page cache's page, as the pack files assume them.
pub(crate) const DISK_BLOCK_BYTES: usize = 4096;
/// The alignment of a buffer and the multiple of its padded length: the file system's
/// block, which `O_DIRECT` writes must keep to.
pub(crate) const BUFFER_ALIGN_BYTES: usize = DISK_BLOCK_BYTES;
/// Freed buffers kept for the next chunks.
const IDLE_BUFFERS_MAX: usize = 64;

/// One aligned allocation.
struct Aligned {
    pointer: std::ptr::NonNull<u8>,
    capacity_bytes: usize,
}

// SAFETY: `Aligned` owns its allocation alone, like a `Box<[u8]>`: it is written only
// through `&mut self` and read through `&self`.
unsafe impl Send for Aligned {}
// SAFETY: as for `Send`.
unsafe impl Sync for Aligned {}

impl Aligned {
    fn layout(capacity_bytes: usize) -> Layout {
        Layout::from_size_align(capacity_bytes, BUFFER_ALIGN_BYTES).expect("a valid layout")
    }

    /// `capacity_bytes` (a positive multiple of the alignment) of zeros.
    fn zeroed(capacity_bytes: usize) -> Aligned {
        let layout = Self::layout(capacity_bytes);
        // SAFETY: the size is not zero (callers ask for at least a header's block).
        let pointer = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(pointer) = std::ptr::NonNull::new(pointer) else {
            std::alloc::handle_alloc_error(layout)
        };
        Aligned {
            pointer,
            capacity_bytes,
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the allocation holds `capacity_bytes` initialized bytes (zeroed at first,
        // written through this slice since), owned by `self`.
        unsafe { std::slice::from_raw_parts_mut(self.pointer.as_ptr(), self.capacity_bytes) }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: as in `bytes_mut`.
        unsafe { std::slice::from_raw_parts(self.pointer.as_ptr(), self.capacity_bytes) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { std::alloc::dealloc(self.pointer.as_ptr(), Self::layout(self.capacity_bytes)) }
    }
}

/// Freed buffers.
static IDLE: Mutex<Vec<Aligned>> = Mutex::new(Vec::new());

/// A chunk's frame with room for its record header in front (see the module docs).
pub struct ChunkBuffer {
    aligned: Option<Aligned>,
    frame_bytes: usize,
    frame_bytes_max: usize,
}

/// The body is longer than the buffer's limit.
#[derive(Debug)]
pub struct FrameTooLong {
    pub limit_bytes: usize,
}

impl ChunkBuffer {
    /// An empty buffer for a frame of at most `frame_bytes_max`, from the freed buffers
    /// when one is large enough.
    pub fn with_limit(frame_bytes_max: usize) -> ChunkBuffer {
        let capacity_bytes =
            (RECORD_HEADER_BYTES + frame_bytes_max).next_multiple_of(BUFFER_ALIGN_BYTES);
        let reused = {
            let mut idle = IDLE.lock().unwrap();
            idle.iter()
                .position(|aligned| aligned.capacity_bytes >= capacity_bytes)
                .map(|position| idle.swap_remove(position))
        };
        ChunkBuffer {
            aligned: Some(reused.unwrap_or_else(|| Aligned::zeroed(capacity_bytes))),
            frame_bytes: 0,
            frame_bytes_max,
        }
    }

    /// A buffer holding `frame`.
    pub fn from_frame(frame: &[u8]) -> ChunkBuffer {
        let mut buffer = ChunkBuffer::with_limit(frame.len());
        buffer.extend(frame).expect("sized for the frame");
        buffer
    }

    fn aligned(&self) -> &Aligned {
        self.aligned.as_ref().expect("held until dropped")
    }

    fn aligned_mut(&mut self) -> &mut Aligned {
        self.aligned.as_mut().expect("held until dropped")
    }

    /// Appends a piece of the body.
    pub fn extend(&mut self, piece: &[u8]) -> Result<(), FrameTooLong> {
        let end = self.frame_bytes + piece.len();
        if end > self.frame_bytes_max {
            return Err(FrameTooLong {
                limit_bytes: self.frame_bytes_max,
            });
        }
        let start = RECORD_HEADER_BYTES + self.frame_bytes;
        self.aligned_mut().bytes_mut()[start..start + piece.len()].copy_from_slice(piece);
        self.frame_bytes = end;
        Ok(())
    }

    /// The body so far.
    pub fn frame(&self) -> &[u8] {
        &self.aligned().bytes()[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + self.frame_bytes]
    }

    /// Writes the record header in front of the frame and zeros after it, up to the next
    /// multiple of [`BUFFER_ALIGN_BYTES`].
    pub(crate) fn seal(&mut self, header: &[u8; RECORD_HEADER_BYTES]) {
        let end = RECORD_HEADER_BYTES + self.frame_bytes;
        let padded = end.next_multiple_of(BUFFER_ALIGN_BYTES);
        let bytes = self.aligned_mut().bytes_mut();
        bytes[..RECORD_HEADER_BYTES].copy_from_slice(header);
        bytes[end..padded].fill(0);
    }

    /// Header and frame.
    pub(crate) fn record(&self) -> &[u8] {
        &self.aligned().bytes()[..RECORD_HEADER_BYTES + self.frame_bytes]
    }

    /// Header, frame and zeros up to the next multiple of [`BUFFER_ALIGN_BYTES`] (as
    /// [`ChunkBuffer::seal`] left them): what a pack opened `O_DIRECT` is written.
    pub(crate) fn padded_record(&self) -> &[u8] {
        let padded = (RECORD_HEADER_BYTES + self.frame_bytes).next_multiple_of(BUFFER_ALIGN_BYTES);
        &self.aligned().bytes()[..padded]
    }
}

impl Drop for ChunkBuffer {
    /// Gives the allocation back for reuse (or frees it when enough are kept).
    fn drop(&mut self) {
        let Some(aligned) = self.aligned.take() else {
            return;
        };
        let mut idle = IDLE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < IDLE_BUFFERS_MAX {
            idle.push(aligned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_the_header_the_frame_and_zeros_to_the_block_on_an_aligned_address() {
        let mut buffer = ChunkBuffer::with_limit(10_000);
        buffer.extend(&[7u8; 5000]).unwrap();
        buffer.extend(&[8u8; 1000]).unwrap();
        assert_eq!(buffer.frame().len(), 6000);
        assert!(buffer.frame()[..5000].iter().all(|byte| *byte == 7));
        buffer.seal(&[1u8; RECORD_HEADER_BYTES]);
        assert_eq!(buffer.record().len(), RECORD_HEADER_BYTES + 6000);
        let padded = buffer.padded_record();
        assert_eq!(padded.as_ptr() as usize % BUFFER_ALIGN_BYTES, 0);
        assert_eq!(padded.len(), 8192);
        assert_eq!(padded[..RECORD_HEADER_BYTES], [1u8; RECORD_HEADER_BYTES]);
        assert!(
            padded[RECORD_HEADER_BYTES + 6000..]
                .iter()
                .all(|byte| *byte == 0)
        );
    }

    #[test]
    fn a_body_past_the_limit_is_refused_and_a_reused_buffer_pads_with_zeros_again() {
        let mut buffer = ChunkBuffer::with_limit(100);
        buffer.extend(&[9u8; 60]).unwrap();
        let refused = buffer.extend(&[9u8; 41]).unwrap_err();
        assert_eq!(refused.limit_bytes, 100);
        assert_eq!(buffer.frame().len(), 60, "a refused piece adds nothing");
        buffer.extend(&[9u8; 40]).unwrap();
        buffer.seal(&[1u8; RECORD_HEADER_BYTES]);
        drop(buffer);
        // An allocation comes back dirty past its frame; sealed, the padding is zeros.
        let mut again = ChunkBuffer::with_limit(100);
        again.extend(&[5u8; 10]).unwrap();
        again.seal(&[1u8; RECORD_HEADER_BYTES]);
        let padded = again.padded_record();
        assert!(
            padded[RECORD_HEADER_BYTES + 10..]
                .iter()
                .all(|byte| *byte == 0)
        );
    }
}

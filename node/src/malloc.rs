//! The allocator's settings for a process that moves evidence in buffers of 64 KiB to
//! 1 MiB (QUIC datagrams and messages, chunks, HTTP bodies).
//!
//! glibc's malloc, left alone, maps every allocation of 128 KiB or more afresh and
//! returns freed memory at the top of a heap to the kernel at once; with buffers this
//! size nearly every one then costs page faults and zeroing, and on a virtual machine a
//! fault into the host as well. Measured with `bench/run --only quic_fetch` on the 2-core
//! VM (before the transfer's other fixes): a log's transfer as chunk messages ran at
//! 1.1-1.8 GiB/s with the defaults and 1.9 GiB/s with these settings; a trim threshold of
//! 64 MiB measured the same as 16. The cost is memory kept after a peak: at most
//! [`TRIM_THRESHOLD_BYTES`] per heap stays mapped for reuse.

/// Allocations at least this large are mapped on their own; smaller ones, such as the
/// store's 4 MiB read buffers, come from the heap and are reused.
pub const MMAP_THRESHOLD_BYTES: i32 = 8 << 20;
/// Free memory at a heap's top beyond this is returned to the kernel.
pub const TRIM_THRESHOLD_BYTES: i32 = 16 << 20;

/// Applies the settings; call first thing in `main`, before other threads start.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes two tunables of glibc's allocator; it is called before
    // the process starts other threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
    }
}

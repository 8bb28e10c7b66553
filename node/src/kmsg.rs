//! The kernel log detector's I/O: reading `/dev/kmsg` record by record and remembering
//! where we were, so that nothing is missed or repeated across daemon restarts.
//!
//! The cursor is (boot id, sequence number): sequence numbers restart with each boot, so
//! a cursor of another boot means "read from the start of the buffer". The cursor is
//! saved only up to records whose problems are safely in the spool (see `KmsgActor`).
//! A ring-buffer overrun (EPIPE from read) is noted and reading continues from the
//! oldest record still there.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One /dev/kmsg record is at most this long (the kernel's limit is 8 KiB with dict).
pub const RECORD_BYTES_MAX: usize = 16 * 1024;

/// Where reading stopped, persisted as `kmsg-cursor.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KmsgCursor {
    pub boot_id: String,
    /// The last sequence number whose problems are all safely spooled.
    pub sequence: u64,
}

/// The current boot's id.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_string())
        .unwrap_or_default()
}

pub fn cursor_path(data_dir: &Path) -> PathBuf {
    data_dir.join("kmsg-cursor.json")
}

/// The saved cursor, if it belongs to this boot.
pub fn load_cursor(data_dir: &Path, boot_id: &str) -> Option<KmsgCursor> {
    let bytes = std::fs::read(cursor_path(data_dir)).ok()?;
    let cursor: KmsgCursor = serde_json::from_slice(&bytes).ok()?;
    (cursor.boot_id == boot_id).then_some(cursor)
}

/// Save the cursor durably (temp + fsync + rename + directory fsync).
pub fn save_cursor(data_dir: &Path, cursor: &KmsgCursor) -> io::Result<()> {
    let path = cursor_path(data_dir);
    let temporary = path.with_extension("json.tmp");
    {
        let mut file = File::create(&temporary)?;
        io::Write::write_all(
            &mut file,
            &serde_json::to_vec(cursor).expect("cursor serializes"),
        )?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, &path)?;
    File::open(data_dir)?.sync_all()
}

/// What one read gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Read1 {
    Record(Vec<u8>),
    /// No record now.
    Empty,
    /// The ring buffer overwrote records we had not read yet.
    Overrun,
}

/// `/dev/kmsg` opened for non-blocking reads from the oldest record still in the buffer.
pub struct KmsgReader {
    file: File,
    buffer: Vec<u8>,
}

impl KmsgReader {
    pub fn open(path: &Path) -> io::Result<KmsgReader> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        Ok(KmsgReader {
            file,
            buffer: vec![0; RECORD_BYTES_MAX],
        })
    }

    /// Read one record (each read of /dev/kmsg returns exactly one).
    pub fn read(&mut self) -> io::Result<Read1> {
        loop {
            match self.file.read(&mut self.buffer) {
                Ok(0) => return Ok(Read1::Empty),
                Ok(length) => return Ok(Read1::Record(self.buffer[..length].to_vec())),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(Read1::Empty),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) if error.raw_os_error() == Some(libc::EPIPE) => {
                    return Ok(Read1::Overrun);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Wait up to `timeout_ms` for a record to be readable.
    pub fn wait(&self, timeout_ms: i32) -> bool {
        let mut poll_fd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut poll_fd, 1, timeout_ms) > 0 }
    }
}

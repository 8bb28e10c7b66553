//! The file system behind a small trait, so that tests (and the simulator) can inject
//! faults: [`RealFs`] is the operating system, [`crate::FaultyFs`] a simulated disk that
//! loses what was not synced at a crash.
//!
//! Every method is one system call's worth of work (or a documented few), so that a fault
//! injected into one of them is a fault a real disk could produce at that point.

use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::path::Path;

/// The mode of every directory the store creates: its evidence (cores, environments,
/// logs) is its owner's alone (see [`crate::permissions`]).
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// The mode of every file the store creates.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Total and free bytes of the file system that holds a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsSpace {
    /// The file system's size.
    pub total_bytes: u64,
    /// Bytes an unprivileged writer may still use.
    pub free_bytes: u64,
}

/// The file system operations the store needs.
pub trait Fs: Debug + Send + Sync + 'static {
    /// Creates a directory and its parents (no sync).
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Creates or truncates `path` and writes `data` into it (no sync).
    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Appends `data` to `path`, creating it if needed (no sync).
    fn append_file(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Reads exactly `len` bytes at `offset`; a file too short is `UnexpectedEof`.
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Makes a file's content durable (`fsync`).
    fn sync_file(&self, path: &Path) -> io::Result<()>;
    /// Makes a directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Makes everything written on the file system that holds `path` durable (`syncfs`).
    fn sync_filesystem(&self, path: &Path) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to` atomically.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Reads a whole file.
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// The names of a directory's entries, sorted.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// A file's length.
    fn file_len(&self, path: &Path) -> io::Result<u64>;
    /// The space of the file system that holds `path` (`statvfs`).
    fn space(&self, path: &Path) -> io::Result<FsSpace>;
    /// Opens (creating if needed) the file redb keeps its index in, as a redb backend.
    fn open_database(&self, path: &Path) -> io::Result<Box<dyn redb::StorageBackend>>;
}

fn cstring(path: &Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// The operating system's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl Fs for RealFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR_MODE)
            .create(path)
    }

    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(PRIVATE_FILE_MODE)
            .open(path)?
            .write_all(data)
    }

    fn append_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(PRIVATE_FILE_MODE)
            .open(path)?
            .write_all(data)
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut out = vec![0u8; len];
        std::fs::File::open(path)?.read_exact_at(&mut out, offset)?;
        Ok(out)
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        std::fs::File::open(path)?.sync_all()
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::File::open(path)?.sync_all()
    }

    fn sync_filesystem(&self, path: &Path) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let directory = std::fs::File::open(path)?;
        // SAFETY: the descriptor is open for the duration of the call.
        let result = unsafe { libc::syncfs(directory.as_raw_fd()) };
        if result == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }

    fn space(&self, path: &Path) -> io::Result<FsSpace> {
        let path = cstring(path)?;
        // SAFETY: statvfs only writes into the zeroed struct we pass.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        let result = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
        let fragment_bytes = stat.f_frsize as u64;
        Ok(FsSpace {
            total_bytes: (stat.f_blocks as u64).saturating_mul(fragment_bytes),
            free_bytes: (stat.f_bavail as u64).saturating_mul(fragment_bytes),
        })
    }

    fn open_database(&self, path: &Path) -> io::Result<Box<dyn redb::StorageBackend>> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(PRIVATE_FILE_MODE)
            .open(path)?;
        // FileBackend takes an advisory lock, so two stores never share one index.
        let backend = redb::backends::FileBackend::new(file).map_err(io::Error::other)?;
        Ok(Box::new(backend))
    }
}

/// A boxed backend as a backend, so that [`Fs::open_database`] can stay object-safe.
#[derive(Debug)]
pub(crate) struct BoxedBackend(pub Box<dyn redb::StorageBackend>);

impl redb::StorageBackend for BoxedBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> Result<(), io::Error> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.0.write(offset, data)
    }
    fn close(&self) -> Result<(), io::Error> {
        self.0.close()
    }
    fn try_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.0.try_lock_range(start, end)
    }
    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.0.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.0.lock_range(start, end)
    }
    fn lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        self.0.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.0.unlock_range(start, end)
    }
    fn query_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.0.query_lock_range(start, end)
    }
}

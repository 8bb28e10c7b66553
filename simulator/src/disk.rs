//! A node's simulated disk: the store's [`FaultyFs`] (lost unsynced writes at a crash, EIO,
//! torn writes) plus a "disk full" switch the simulator can turn on and off, which
//! `FaultyFs` cannot (its capacity is fixed at creation).
//!
//! While full, every write (file or index page) and every growth fails with ENOSPC, as a
//! file system shared with customer data does when a VM image grows.

use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crashmesh_store::{FaultConfig, FaultyFs, Fs, FsSpace};

/// The disk of one simulated node.
#[derive(Debug, Clone)]
pub struct SimDisk {
    inner: FaultyFs,
    full: Arc<AtomicBool>,
    no_space_errors: Arc<AtomicU64>,
}

impl SimDisk {
    /// A new empty disk drawing its faults from `seed`.
    pub fn new(seed: u64, error_ppm: u32, capacity_bytes: u64) -> SimDisk {
        SimDisk {
            inner: FaultyFs::new(FaultConfig {
                seed,
                error_ppm,
                capacity_bytes,
            }),
            full: Arc::new(AtomicBool::new(false)),
            no_space_errors: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The fault-injecting file system underneath.
    pub fn faulty(&self) -> &FaultyFs {
        &self.inner
    }

    /// Fills (or frees) the disk.
    pub fn set_full(&self, full: bool) {
        self.full.store(full, Ordering::SeqCst);
    }

    /// Faults injected so far: EIO, torn writes, ENOSPC (full or over capacity).
    pub fn fault_count(&self) -> u64 {
        let counts = self.inner.counts();
        counts.io_errors
            + counts.torn_writes
            + counts.no_space
            + self.no_space_errors.load(Ordering::SeqCst)
    }

    fn refuse_if_full(full: &AtomicBool, errors: &AtomicU64) -> io::Result<()> {
        if full.load(Ordering::SeqCst) {
            errors.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    fn check(&self) -> io::Result<()> {
        SimDisk::refuse_if_full(&self.full, &self.no_space_errors)
    }
}

impl Fs for SimDisk {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.check()?;
        self.inner.write_file(path, data)
    }
    fn append_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.check()?;
        self.inner.append_file(path, data)
    }
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.inner.read_at(path, offset, len)
    }
    fn sync_file(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_file(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path)
    }
    fn sync_filesystem(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_filesystem(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.inner.read_file(path)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn file_len(&self, path: &Path) -> io::Result<u64> {
        self.inner.file_len(path)
    }
    fn space(&self, path: &Path) -> io::Result<FsSpace> {
        let space = self.inner.space(path)?;
        if self.full.load(Ordering::SeqCst) {
            return Ok(FsSpace {
                total_bytes: space.total_bytes,
                free_bytes: 0,
            });
        }
        Ok(space)
    }
    fn open_database(&self, path: &Path) -> io::Result<Box<dyn redb::StorageBackend>> {
        let backend = self.inner.open_database(path)?;
        Ok(Box::new(FullableBackend {
            inner: backend,
            full: self.full.clone(),
            no_space_errors: self.no_space_errors.clone(),
        }))
    }
}

/// redb's file, refusing writes while the disk is full.
#[derive(Debug)]
struct FullableBackend {
    inner: Box<dyn redb::StorageBackend>,
    full: Arc<AtomicBool>,
    no_space_errors: Arc<AtomicU64>,
}

impl redb::StorageBackend for FullableBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        if len > self.inner.len()? {
            SimDisk::refuse_if_full(&self.full, &self.no_space_errors)?;
        }
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), io::Error> {
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        SimDisk::refuse_if_full(&self.full, &self.no_space_errors)?;
        self.inner.write(offset, data)
    }
    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }
    fn try_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_range(start, end)
    }
    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.lock_range(start, end)
    }
    fn lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        self.inner.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.unlock_range(start, end)
    }
    fn query_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

//! A simulated disk that injects faults: errors (EIO, ENOSPC), torn writes, and crashes
//! that lose whatever was not synced.
//!
//! The model:
//! - Files are inodes with a `current` content (what reads see) and a `durable` content
//!   (what survives a crash). `sync_file` (and redb's `sync_data`) make `current`
//!   durable; `sync_filesystem` makes every inode and every name durable.
//! - Names (creations, renames, removals) are a log of operations applied to the current
//!   namespace at once and to the durable namespace in order: `sync_dir(d)` makes the
//!   log durable up to the last operation that touched `d`, as a journaling file system
//!   commits its metadata in order. A rename is atomic.
//! - `crash()` freezes the disk: every later operation fails. `restart()` then keeps a
//!   random prefix of the unsynced namespace log, and tears every file whose content was
//!   not synced: each 4 KiB page comes from either the synced or the unsynced content,
//!   and the length from either. (Pages are the unit of atomicity, as redb assumes.)
//! - With faults on, any operation may fail with EIO; a write may write a random prefix
//!   and then fail (torn); a write that would exceed the capacity fails with ENOSPC.
//!   A failed sync makes nothing durable.
//! - Handles from before a restart (redb's backend) fail: the process that held them died.
//!
//! Everything is drawn from the seed, so a failing seed replays exactly.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::fs::{Fs, FsSpace};

/// The unit of atomicity of the simulated disk.
const PAGE_BYTES: usize = 4096;

/// Which faults to inject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultConfig {
    /// The seed every random choice is drawn from.
    pub seed: u64,
    /// Chance per operation of an injected error, in parts per million.
    pub error_ppm: u32,
    /// The disk's size; writes beyond it fail with ENOSPC.
    pub capacity_bytes: u64,
}

impl Default for FaultConfig {
    fn default() -> FaultConfig {
        FaultConfig {
            seed: 0,
            error_ppm: 0,
            capacity_bytes: 1 << 30,
        }
    }
}

/// How many faults were injected, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Operations failed with EIO.
    pub io_errors: u64,
    /// Writes that wrote a prefix and then failed.
    pub torn_writes: u64,
    /// Writes refused for lack of space.
    pub no_space: u64,
    /// Crashes.
    pub crashes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    Dir,
    File(u64),
}

#[derive(Clone, Debug)]
enum NameOp {
    Set(PathBuf, Entry),
    Remove(PathBuf),
    Rename(PathBuf, PathBuf),
}

impl NameOp {
    fn touches_dir(&self, dir: &Path) -> bool {
        let parent_is = |path: &PathBuf| path.parent() == Some(dir) || path == dir;
        match self {
            NameOp::Set(path, _) | NameOp::Remove(path) => parent_is(path),
            NameOp::Rename(from, to) => parent_is(from) || parent_is(to),
        }
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, Entry>) {
        match self {
            NameOp::Set(path, entry) => {
                names.insert(path.clone(), *entry);
            }
            NameOp::Remove(path) => {
                names.remove(path);
            }
            NameOp::Rename(from, to) => {
                if let Some(entry) = names.remove(from) {
                    names.insert(to.clone(), entry);
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct Inode {
    current: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug)]
struct State {
    config: FaultConfig,
    rng: u64,
    faults_on: bool,
    crashed: bool,
    ops_until_crash: Option<u64>,
    epoch: u64,
    next_inode: u64,
    inodes: HashMap<u64, Inode>,
    names: BTreeMap<PathBuf, Entry>,
    durable_names: BTreeMap<PathBuf, Entry>,
    name_log: Vec<NameOp>,
    counts: FaultCounts,
}

fn error(kind: io::ErrorKind, message: &str) -> io::Error {
    io::Error::new(kind, message.to_string())
}

fn eio(message: &str) -> io::Error {
    io::Error::other(format!("EIO (injected): {message}"))
}

impl State {
    fn next_random(&mut self) -> u64 {
        // xorshift64*: small, fast, and all we need for reproducible choices.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.next_random() % bound
        }
    }

    /// Every operation starts here: a crashed disk refuses, a scheduled crash happens,
    /// and an error may be injected.
    fn step(&mut self, what: &str) -> io::Result<()> {
        if self.crashed {
            return Err(eio("the disk crashed"));
        }
        if let Some(left) = self.ops_until_crash.as_mut() {
            if *left == 0 {
                self.crashed = true;
                self.counts.crashes += 1;
                return Err(eio("the disk crashed"));
            }
            *left -= 1;
        }
        if self.faults_on && self.below(1_000_000) < u64::from(self.config.error_ppm) {
            self.counts.io_errors += 1;
            return Err(eio(what));
        }
        Ok(())
    }

    fn used_bytes(&self) -> u64 {
        self.inodes
            .values()
            .map(|inode| (inode.current.len().div_ceil(PAGE_BYTES) * PAGE_BYTES) as u64)
            .sum()
    }

    fn check_space(&mut self, growth: u64) -> io::Result<()> {
        if self.used_bytes() + growth > self.config.capacity_bytes {
            self.counts.no_space += 1;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    fn log(&mut self, op: NameOp) {
        op.apply(&mut self.names);
        self.name_log.push(op);
    }

    fn file(&self, path: &Path) -> io::Result<u64> {
        match self.names.get(path) {
            Some(Entry::File(inode)) => Ok(*inode),
            Some(Entry::Dir) => Err(error(io::ErrorKind::IsADirectory, "is a directory")),
            None => Err(error(io::ErrorKind::NotFound, "no such file")),
        }
    }

    fn require_dir(&self, path: &Path) -> io::Result<()> {
        match self.names.get(path) {
            Some(Entry::Dir) => Ok(()),
            _ => Err(error(io::ErrorKind::NotFound, "no such directory")),
        }
    }

    /// The inode of `path`, created (empty, not yet durable) if it does not exist.
    fn open_for_write(&mut self, path: &Path) -> io::Result<u64> {
        self.require_dir(path.parent().unwrap_or(Path::new("/")))?;
        match self.names.get(path) {
            Some(Entry::File(inode)) => Ok(*inode),
            Some(Entry::Dir) => Err(error(io::ErrorKind::IsADirectory, "directory")),
            None => {
                let inode = self.new_inode();
                self.log(NameOp::Set(path.to_path_buf(), Entry::File(inode)));
                Ok(inode)
            }
        }
    }

    fn new_inode(&mut self) -> u64 {
        self.next_inode += 1;
        self.inodes.insert(self.next_inode, Inode::default());
        self.next_inode
    }

    /// Writes `data` at `offset`, maybe only a prefix of it (a torn write).
    fn write_at(&mut self, inode: u64, offset: usize, data: &[u8]) -> io::Result<()> {
        let current_len = self.inodes[&inode].current.len();
        let growth = (offset + data.len()).saturating_sub(current_len) as u64;
        self.check_space(growth)?;
        let torn = self.faults_on
            && !data.is_empty()
            && self.below(1_000_000) < u64::from(self.config.error_ppm);
        let written = if torn {
            self.counts.torn_writes += 1;
            self.below(data.len() as u64) as usize
        } else {
            data.len()
        };
        let content = &mut self.inodes.get_mut(&inode).expect("inode exists").current;
        if content.len() < offset + written {
            content.resize(offset + written, 0);
        }
        content[offset..offset + written].copy_from_slice(&data[..written]);
        if torn {
            return Err(eio("torn write"));
        }
        Ok(())
    }

    fn make_durable_through(&mut self, last: usize) {
        for op in self.name_log.drain(..=last) {
            op.apply(&mut self.durable_names);
        }
    }

    fn restart(&mut self) {
        let keep = self.below(self.name_log.len() as u64 + 1) as usize;
        let log: Vec<NameOp> = self.name_log.drain(..).collect();
        for op in &log[..keep] {
            op.apply(&mut self.durable_names);
        }
        self.names = self.durable_names.clone();
        let reachable: std::collections::HashSet<u64> = self
            .names
            .values()
            .filter_map(|entry| match entry {
                Entry::File(inode) => Some(*inode),
                Entry::Dir => None,
            })
            .collect();
        self.inodes.retain(|inode, _| reachable.contains(inode));
        let mut inodes: Vec<u64> = self.inodes.keys().copied().collect();
        inodes.sort();
        for number in inodes {
            let (current, durable) = {
                let inode = &self.inodes[&number];
                (inode.current.clone(), inode.durable.clone())
            };
            if current == durable {
                continue;
            }
            let len = if self.below(2) == 0 {
                current.len()
            } else {
                durable.len()
            };
            let mut torn = vec![0u8; len];
            for start in (0..len).step_by(PAGE_BYTES) {
                let end = (start + PAGE_BYTES).min(len);
                let source = if self.below(2) == 0 {
                    &current
                } else {
                    &durable
                };
                for (index, byte) in torn[start..end].iter_mut().enumerate() {
                    *byte = source.get(start + index).copied().unwrap_or(0);
                }
            }
            let inode = self.inodes.get_mut(&number).expect("listed above");
            inode.current = torn.clone();
            inode.durable = torn;
        }
        self.crashed = false;
        self.ops_until_crash = None;
        self.epoch += 1;
    }
}

/// A simulated disk (see the module documentation).
#[derive(Debug, Clone)]
pub struct FaultyFs {
    state: Arc<Mutex<State>>,
}

impl FaultyFs {
    /// A new, empty disk whose root directory `/` exists; faults start switched off.
    pub fn new(config: FaultConfig) -> FaultyFs {
        let mut names = BTreeMap::new();
        names.insert(PathBuf::from("/"), Entry::Dir);
        let rng = config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        FaultyFs {
            state: Arc::new(Mutex::new(State {
                config,
                rng,
                faults_on: false,
                crashed: false,
                ops_until_crash: None,
                epoch: 0,
                next_inode: 0,
                inodes: HashMap::new(),
                durable_names: names.clone(),
                names,
                name_log: Vec::new(),
                counts: FaultCounts::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Switches injected errors and torn writes on or off (crashes and ENOSPC stay).
    pub fn set_faults(&self, on: bool) {
        self.lock().faults_on = on;
    }

    /// Crashes the disk after `ops` more operations.
    pub fn crash_after(&self, ops: u64) {
        self.lock().ops_until_crash = Some(ops);
    }

    /// Crashes the disk now: every later operation fails until `restart`.
    pub fn crash(&self) {
        let mut state = self.lock();
        if !state.crashed {
            state.crashed = true;
            state.counts.crashes += 1;
        }
    }

    /// True once the disk crashed (and until `restart`).
    pub fn is_crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Brings the disk back as a crash left it: unsynced names and content may be lost
    /// or torn. Crashes first if it had not.
    pub fn restart(&self) {
        self.crash();
        self.lock().restart();
    }

    /// The faults injected so far.
    pub fn counts(&self) -> FaultCounts {
        self.lock().counts.clone()
    }

    /// Overwrites part of a file's content, durably: bit rot, for `check` tests.
    pub fn corrupt(&self, path: &Path, offset: usize, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.lock();
        let inode = state.file(path)?;
        let inode = state.inodes.get_mut(&inode).expect("named inodes exist");
        for (index, byte) in bytes.iter().enumerate() {
            if let Some(slot) = inode.current.get_mut(offset + index) {
                *slot = *byte;
            }
        }
        inode.durable = inode.current.clone();
        Ok(())
    }
}

impl Fs for FaultyFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.step("mkdir")?;
        let mut missing = Vec::new();
        let mut cursor = Some(path);
        while let Some(dir) = cursor {
            match state.names.get(dir) {
                Some(Entry::Dir) => break,
                Some(Entry::File(_)) => {
                    return Err(error(io::ErrorKind::AlreadyExists, "a file is in the way"));
                }
                None => missing.push(dir.to_path_buf()),
            }
            cursor = dir.parent();
        }
        for dir in missing.into_iter().rev() {
            state.log(NameOp::Set(dir, Entry::Dir));
        }
        Ok(())
    }

    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut state = self.lock();
        state.step("write")?;
        let inode = state.open_for_write(path)?;
        state
            .inodes
            .get_mut(&inode)
            .expect("exists")
            .current
            .clear();
        state.write_at(inode, 0, data)
    }

    fn append_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut state = self.lock();
        state.step("append")?;
        let inode = state.open_for_write(path)?;
        let end = state.inodes[&inode].current.len();
        state.write_at(inode, end, data)
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut state = self.lock();
        state.step("pread")?;
        let inode = state.file(path)?;
        let content = &state.inodes[&inode].current;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start.checked_add(len) {
            Some(end) if end <= content.len() => Ok(content[start..end].to_vec()),
            _ => Err(error(
                io::ErrorKind::UnexpectedEof,
                "file shorter than the read",
            )),
        }
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.step("fsync")?;
        let inode = state.file(path)?;
        let inode = state.inodes.get_mut(&inode).expect("exists");
        inode.durable = inode.current.clone();
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.step("fsync directory")?;
        state.require_dir(path)?;
        if let Some(last) = state.name_log.iter().rposition(|op| op.touches_dir(path)) {
            state.make_durable_through(last);
        }
        Ok(())
    }

    fn sync_filesystem(&self, _path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.step("syncfs")?;
        if !state.name_log.is_empty() {
            let last = state.name_log.len() - 1;
            state.make_durable_through(last);
        }
        for inode in state.inodes.values_mut() {
            inode.durable = inode.current.clone();
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.step("rename")?;
        state.file(from)?;
        state.require_dir(to.parent().unwrap_or(Path::new("/")))?;
        state.log(NameOp::Rename(from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut state = self.lock();
        state.step("read")?;
        let inode = state.file(path)?;
        Ok(state.inodes[&inode].current.clone())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.step("unlink")?;
        state.file(path)?;
        state.log(NameOp::Remove(path.to_path_buf()));
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut state = self.lock();
        state.step("readdir")?;
        state.require_dir(path)?;
        Ok(state
            .names
            .keys()
            .filter(|name| name.parent() == Some(path))
            .filter_map(|name| name.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        let mut state = self.lock();
        state.step("stat")?;
        let inode = state.file(path)?;
        Ok(state.inodes[&inode].current.len() as u64)
    }

    fn space(&self, _path: &Path) -> io::Result<FsSpace> {
        let mut state = self.lock();
        state.step("statvfs")?;
        let used = state.used_bytes();
        Ok(FsSpace {
            total_bytes: state.config.capacity_bytes,
            free_bytes: state.config.capacity_bytes.saturating_sub(used),
        })
    }

    fn open_database(&self, path: &Path) -> io::Result<Box<dyn redb::StorageBackend>> {
        let mut state = self.lock();
        state.step("open")?;
        let inode = match state.names.get(path) {
            Some(Entry::File(inode)) => *inode,
            Some(Entry::Dir) => return Err(error(io::ErrorKind::IsADirectory, "directory")),
            None => {
                state.require_dir(path.parent().unwrap_or(Path::new("/")))?;
                let inode = state.new_inode();
                state.log(NameOp::Set(path.to_path_buf(), Entry::File(inode)));
                inode
            }
        };
        Ok(Box::new(FaultyBackend {
            state: self.state.clone(),
            inode,
            epoch: state.epoch,
        }))
    }
}

/// redb's file on the simulated disk.
#[derive(Debug)]
struct FaultyBackend {
    state: Arc<Mutex<State>>,
    inode: u64,
    epoch: u64,
}

impl FaultyBackend {
    fn lock(&self, what: &str) -> io::Result<MutexGuard<'_, State>> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.epoch != self.epoch || !state.inodes.contains_key(&self.inode) {
            return Err(eio("handle from before a crash"));
        }
        state.step(what)?;
        Ok(state)
    }
}

impl redb::StorageBackend for FaultyBackend {
    fn len(&self) -> Result<u64, io::Error> {
        let state = self.lock("stat")?;
        Ok(state.inodes[&self.inode].current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let state = self.lock("pread")?;
        let content = &state.inodes[&self.inode].current;
        let start = offset as usize;
        let Some(bytes) = content.get(start..start + out.len()) else {
            return Err(error(io::ErrorKind::UnexpectedEof, "read past the end"));
        };
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut state = self.lock("ftruncate")?;
        let current_len = state.inodes[&self.inode].current.len() as u64;
        state.check_space(len.saturating_sub(current_len))?;
        let inode = state.inodes.get_mut(&self.inode).expect("checked");
        inode.current.resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut state = self.lock("fdatasync")?;
        let inode = state.inodes.get_mut(&self.inode).expect("checked");
        inode.durable = inode.current.clone();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut state = self.lock("pwrite")?;
        state.write_at(self.inode, offset as usize, data)
    }
}

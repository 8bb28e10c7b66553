//! The spool: where the core_pattern hook (and later other detectors) leave complete
//! problem entries for the daemon, which works even when the daemon is down.
//!
//! Layout under the data dir:
//! - `spool/tmp/<id>/` — an entry being written; never read; removed at daemon start.
//! - `spool/new/<id>/` — complete entries, waiting to be indexed.
//! - `spool/repeat/<exe hash>` — last full capture time per executable (crash loops).
//!
//! Invariant: an entry appears in `new/` only complete and durable. The writer fills a
//! directory in `tmp/`, fsyncs every file and the directory, renames it into `new/` and
//! fsyncs `new/`. A reader that sees `new/<id>/meta.json` sees every file of the entry.
//! The daemon deletes an entry only after the index commit that records it.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The spool format's version, written into every `meta.json`.
pub const SPOOL_FORMAT_VERSION: u32 = 1;
/// The largest `meta.json` a reader accepts.
pub const META_BYTES_MAX: u64 = 1024 * 1024;

/// An entry [`Spool::list`] found: complete, or the directory of one whose meta cannot
/// be read, with why.
pub type Listed = Result<Entry, (PathBuf, SpoolError)>;

/// Paths of the spool inside a data dir.
#[derive(Clone, Debug)]
pub struct Spool {
    pub root: PathBuf,
}

/// What produced a spool entry, written in `meta.json` as its snake_case name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The core_pattern hook: a native crash, with its core.
    Core,
    /// The Python hook's exception report.
    Python,
    /// The kernel log (`/dev/kmsg`): oopses, panics, hung tasks, OOM kills, machine checks.
    Kmsg,
    /// A kdump dump directory left by a crashed kernel.
    Kdump,
    /// The kernel's persistent store of its last words.
    Pstore,
    /// A JVM's fatal error log.
    HsErr,
    /// A virtual machine's guest panic.
    VmGuest,
    /// A name this version does not know (written by a newer writer); such an entry is
    /// recorded from the problem its writer analysed.
    #[default]
    #[serde(other)]
    Unknown,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Core => "core",
            Source::Python => "python",
            Source::Kmsg => "kmsg",
            Source::Kdump => "kdump",
            Source::Pstore => "pstore",
            Source::HsErr => "hs_err",
            Source::VmGuest => "vm_guest",
            Source::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// What the hook knew about a crash, written as `meta.json`. Writers in other languages
/// (the Python hook) may leave out any field but `format_version`, `id` and `source`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EntryMeta {
    pub format_version: u32,
    pub id: String,
    /// What produced the entry.
    pub source: Source,
    /// The time of the crash, unix milliseconds.
    pub time_ms: u64,
    /// The crashed process's pid in the initial pid namespace (`%P`).
    pub pid: Option<u32>,
    /// The crashing thread (`%I`).
    pub tid: Option<u32>,
    pub signal: Option<i32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// `%e`: the process's command name.
    pub comm: Option<String>,
    /// The executable's path from `/proc/<pid>/exe`.
    pub executable: Option<String>,
    /// The host name as the crashing process saw it (`%h`, its UTS namespace).
    pub hostname: Option<String>,
    /// The container id from the process's cgroup, when it ran in one.
    pub container_id: Option<String>,
    /// The process's root directory (`/proc/<pid>/root`) when it was not `/`.
    pub root: Option<String>,
    /// The core as stored in the entry, when there is one.
    pub core: Option<CoreFile>,
    /// Why there is no core, when there is none (repeat, low disk, ignored…).
    pub core_dropped: Option<String>,
    /// True when this crash fell inside the crash-loop window of its executable.
    pub repeat: bool,
    /// The entry of the capture this crash repeats (it holds the core and the frames).
    pub repeat_of: Option<String>,
    /// Files of the /proc snapshot, relative to the entry.
    pub proc_files: Vec<String>,
    /// Notes the capture made on the way (what failed, what was cut).
    pub notes: Vec<String>,
    /// How long the capture took, milliseconds.
    pub capture_ms: u64,
    /// A problem already analysed by the writer (Python hook, kernel log).
    pub problem: Option<crashmesh_protocol::Problem>,
    /// More occurrences of `problem` that a rate limit held back (a kernel log flood):
    /// counted, not recorded one by one.
    #[serde(default)]
    pub suppressed_count: Option<u64>,
}

/// A core inside a spool entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CoreFile {
    /// The file name inside the entry (`core.zst`).
    pub file: String,
    /// Bytes of core read from the kernel.
    pub bytes_raw: u64,
    /// Bytes written (compressed).
    pub bytes_stored: u64,
    /// Why the core is incomplete, when it is.
    pub truncated: Option<String>,
}

/// One complete entry found in `spool/new/`.
#[derive(Clone, Debug)]
pub struct Entry {
    pub dir: PathBuf,
    pub meta: EntryMeta,
}

/// Why an entry could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: invalid meta.json: {message}")]
    Meta { path: PathBuf, message: String },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Spool {
    /// The spool of a data dir (nothing is created yet).
    pub fn new(data_dir: &Path) -> Spool {
        Spool {
            root: data_dir.join("spool"),
        }
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn new_dir(&self) -> PathBuf {
        self.root.join("new")
    }

    pub fn repeat_dir(&self) -> PathBuf {
        self.root.join("repeat")
    }

    /// Create the spool's directories (owner only, like everything in the data dir).
    pub fn create_dirs(&self) -> Result<(), SpoolError> {
        for dir in [self.tmp_dir(), self.new_dir(), self.repeat_dir()] {
            private_dir_builder(true)
                .create(&dir)
                .map_err(io_error(&dir))?;
        }
        Ok(())
    }

    /// Start a new entry in `tmp/`.
    pub fn begin(&self, id: &str) -> Result<EntryWriter, SpoolError> {
        self.create_dirs()?;
        let dir = self.tmp_dir().join(id);
        private_dir_builder(false)
            .create(&dir)
            .map_err(io_error(&dir))?;
        Ok(EntryWriter {
            dir,
            final_dir: self.new_dir().join(id),
            new_dir: self.new_dir(),
        })
    }

    /// Complete entries, oldest id first. Entries whose meta cannot be read are returned
    /// as errors so the caller can set them aside rather than loop on them.
    pub fn list(&self) -> Result<Vec<Listed>, SpoolError> {
        let new_dir = self.new_dir();
        let mut names: Vec<_> = match fs::read_dir(&new_dir) {
            Ok(entries) => entries
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.path())
                .collect(),
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(SpoolError::Io {
                    path: new_dir,
                    source,
                });
            }
        };
        names.sort();
        Ok(names
            .into_iter()
            .map(|dir| match read_meta(&dir) {
                Ok(meta) => Ok(Entry { dir, meta }),
                Err(error) => Err((dir, error)),
            })
            .collect())
    }

    /// Remove what a writer that died left in `tmp/` (never visible, never acknowledged):
    /// entries in which nothing was written for `idle_for`. A live writer (a hook still
    /// streaming a core) keeps touching its files, and no writer outlives its time limit.
    pub fn clean_tmp(&self, idle_for: std::time::Duration) -> Result<usize, SpoolError> {
        let tmp = self.tmp_dir();
        let Ok(entries) = fs::read_dir(&tmp) else {
            return Ok(0);
        };
        let now = std::time::SystemTime::now();
        let mut removed = 0;
        for entry in entries.filter_map(|entry| entry.ok()) {
            let path = entry.path();
            let idle =
                newest_modification(&path).and_then(|newest| now.duration_since(newest).ok());
            if idle.is_some_and(|idle| idle >= idle_for) {
                fs::remove_dir_all(&path).map_err(io_error(&path))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The latest modification time of a directory and everything in it.
fn newest_modification(path: &Path) -> Option<std::time::SystemTime> {
    let mut newest = fs::metadata(path).ok()?.modified().ok()?;
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.filter_map(|entry| entry.ok()) {
            let child = if entry.file_type().ok()?.is_dir() {
                newest_modification(&entry.path())
            } else {
                entry.metadata().ok()?.modified().ok()
            };
            newest = newest.max(child.unwrap_or(newest));
        }
    }
    Some(newest)
}

/// Read and check an entry's `meta.json`.
pub fn read_meta(dir: &Path) -> Result<EntryMeta, SpoolError> {
    let path = dir.join("meta.json");
    let file = File::open(&path).map_err(io_error(&path))?;
    let length = file.metadata().map_err(io_error(&path))?.len();
    if length > META_BYTES_MAX {
        return Err(SpoolError::Meta {
            path,
            message: format!("{length} bytes, more than {META_BYTES_MAX}"),
        });
    }
    let meta: EntryMeta =
        serde_json::from_reader(io::BufReader::new(file)).map_err(|error| SpoolError::Meta {
            path: path.clone(),
            message: error.to_string(),
        })?;
    if meta.format_version != SPOOL_FORMAT_VERSION {
        return Err(SpoolError::Meta {
            path,
            message: format!("unknown format version {}", meta.format_version),
        });
    }
    Ok(meta)
}

/// An entry being written in `tmp/`. Dropped without `commit`, it stays in `tmp/` and
/// is removed at the next daemon start.
pub struct EntryWriter {
    dir: PathBuf,
    final_dir: PathBuf,
    new_dir: PathBuf,
}

impl EntryWriter {
    /// The entry's directory while it is being written.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Create a file in the entry (parent directories included), owner only.
    pub fn create(&self, relative: &str) -> Result<File, SpoolError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.join(relative);
        if let Some(parent) = path.parent() {
            private_dir_builder(true)
                .create(parent)
                .map_err(io_error(parent))?;
        }
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(crashmesh_store::PRIVATE_FILE_MODE)
            .open(&path)
            .map_err(io_error(&path))
    }

    /// Write a whole small file into the entry.
    pub fn write_file(&self, relative: &str, bytes: &[u8]) -> Result<(), SpoolError> {
        let path = self.dir.join(relative);
        let mut file = self.create(relative)?;
        file.write_all(bytes).map_err(io_error(&path))
    }

    /// Write `meta.json`, make everything durable and move the entry into `new/`.
    pub fn commit(self, meta: &EntryMeta) -> Result<PathBuf, SpoolError> {
        let bytes = serde_json::to_vec_pretty(meta).expect("meta serializes");
        self.write_file("meta.json", &bytes)?;
        sync_tree(&self.dir)?;
        fs::rename(&self.dir, &self.final_dir).map_err(io_error(&self.final_dir))?;
        sync_dir(&self.new_dir)?;
        Ok(self.final_dir)
    }
}

/// A builder of directories only their owner may enter (the spool holds cores and
/// environments).
fn private_dir_builder(recursive: bool) -> fs::DirBuilder {
    use std::os::unix::fs::DirBuilderExt;
    let mut builder = fs::DirBuilder::new();
    builder
        .recursive(recursive)
        .mode(crashmesh_store::PRIVATE_DIR_MODE);
    builder
}

/// fsync every file and directory below `dir`, then `dir` itself.
fn sync_tree(dir: &Path) -> Result<(), SpoolError> {
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(io_error(&path))?;
        if file_type.is_dir() {
            sync_tree(&path)?;
        } else if file_type.is_file() {
            File::open(&path)
                .and_then(|file| file.sync_all())
                .map_err(io_error(&path))?;
        }
    }
    sync_dir(dir)
}

/// fsync a directory so that renames and creations in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(io_error(dir))
}

/// One file of a spooled entry.
pub enum Attachment<'a> {
    /// Bytes already in memory.
    Bytes(&'a [u8]),
    /// The first `bytes_max` bytes of a file already opened (see `crashmesh_untrusted`:
    /// never by a path a user could swap between a check and the copy); `path` names it
    /// in notes.
    File {
        file: std::fs::File,
        path: &'a Path,
        bytes_max: u64,
    },
}

/// A problem a detector found, with what to keep beside it: what every detector hands the
/// one spool writer, [`write_found`].
pub struct Found<'a> {
    /// Derived from what was found, never from the time (see the module's invariants).
    pub entry_id: String,
    pub source: Source,
    /// When the problem happened, unix milliseconds.
    pub time_ms: u64,
    pub problem: crashmesh_protocol::Problem,
    pub pid: Option<u32>,
    /// The user the problem belongs to, from the kernel (the owner of the file it was
    /// found in, by `fstat`), when there is one.
    pub uid: Option<u32>,
    pub comm: Option<String>,
    /// Files of the entry, by name inside it (listed in `proc_files`, so they are kept).
    pub attachments: Vec<(String, Attachment<'a>)>,
    pub notes: Vec<String>,
    /// More occurrences that a rate limit held back (a kernel log flood), counted.
    pub suppressed_count: Option<u64>,
}

/// Write a found problem as a complete spool entry. Returns false when an entry of that
/// id is already waiting in the spool (nothing is written twice).
pub fn write_found(data_dir: &Path, found: Found<'_>) -> Result<bool, SpoolError> {
    let spool = Spool::new(data_dir);
    if spool.new_dir().join(&found.entry_id).exists() {
        return Ok(false);
    }
    // A writer that died half-way left this; it was never visible.
    let stale = spool.tmp_dir().join(&found.entry_id);
    if stale.exists() {
        let _ = std::fs::remove_dir_all(&stale);
    }
    let writer = spool.begin(&found.entry_id)?;
    let mut proc_files = Vec::new();
    let mut notes = found.notes;
    for (name, attachment) in &found.attachments {
        match attachment {
            Attachment::Bytes(bytes) => writer.write_file(name, bytes)?,
            Attachment::File {
                file,
                path,
                bytes_max,
            } => {
                let mut target = writer.create(name)?;
                let copied = file.metadata().and_then(|metadata| {
                    let copied = io::copy(&mut file.take(*bytes_max), &mut target)?;
                    Ok((metadata.len(), copied))
                });
                match copied {
                    Ok((length, copied)) if length > copied => {
                        notes.push(format!("{name}: cut at {copied} of {length} bytes"));
                    }
                    Ok(_) => {}
                    Err(error) => {
                        notes.push(format!("{name}: cannot copy {}: {error}", path.display()));
                        continue;
                    }
                }
            }
        }
        proc_files.push(name.clone());
    }
    let meta = EntryMeta {
        format_version: SPOOL_FORMAT_VERSION,
        id: found.entry_id,
        source: found.source,
        time_ms: found.time_ms,
        pid: found.pid,
        uid: found.uid,
        comm: found.comm,
        proc_files,
        notes,
        suppressed_count: found.suppressed_count,
        problem: Some(found.problem),
        ..EntryMeta::default()
    };
    writer.commit(&meta)?;
    Ok(true)
}

/// A stable entry id: `prefix-` and 24 hex digits of the blake3 hash of `parts`.
pub fn stable_entry_id(prefix: &str, parts: &[&[u8]]) -> String {
    let mut hasher = blake3::Hasher::new();
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    format!("{prefix}-{}", &hasher.finalize().to_hex()[..24])
}

/// A new entry id: sortable by time, unique across processes.
pub fn new_entry_id(time_ms: u64, pid: u32) -> String {
    let mut random = [0u8; 6];
    if File::open("/dev/urandom")
        .and_then(|mut file| io::Read::read_exact(&mut file, &mut random))
        .is_err()
    {
        random = (std::process::id() as u64 ^ time_ms).to_le_bytes()[..6]
            .try_into()
            .expect("6 bytes");
    }
    let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{time_ms:013}-{pid}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_visible_only_after_commit() {
        let data = tempfile::tempdir().unwrap();
        let spool = Spool::new(data.path());
        let writer = spool.begin("0001-1-aa").unwrap();
        writer.write_file("proc/status", b"Name: x\n").unwrap();
        assert!(spool.list().unwrap().is_empty());
        let meta = EntryMeta {
            format_version: SPOOL_FORMAT_VERSION,
            id: "0001-1-aa".into(),
            ..EntryMeta::default()
        };
        writer.commit(&meta).unwrap();
        let entries = spool.list().unwrap();
        assert_eq!(entries.len(), 1);
        let entry = entries.into_iter().next().unwrap().unwrap();
        assert_eq!(entry.meta, meta);
        assert!(entry.dir.join("proc/status").exists());
    }

    #[test]
    fn a_meta_with_only_the_required_fields_reads() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("meta.json"),
            br#"{"format_version":1,"id":"x","source":"python"}"#,
        )
        .unwrap();
        let meta = read_meta(dir.path()).unwrap();
        assert_eq!(meta.source, Source::Python);
        assert!(!meta.repeat && meta.notes.is_empty());
    }

    #[test]
    fn sources_are_written_by_name_and_an_unknown_name_still_reads() {
        for source in [
            Source::Core,
            Source::Python,
            Source::Kmsg,
            Source::Kdump,
            Source::Pstore,
            Source::HsErr,
            Source::VmGuest,
        ] {
            let json = serde_json::to_string(&source).unwrap();
            assert_eq!(json, format!("\"{source}\""));
            assert_eq!(serde_json::from_str::<Source>(&json).unwrap(), source);
        }
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("meta.json"),
            br#"{"format_version":1,"id":"x","source":"written_by_a_newer_hook"}"#,
        )
        .unwrap();
        assert_eq!(read_meta(dir.path()).unwrap().source, Source::Unknown);
    }

    #[test]
    fn abandoned_entries_are_cleaned_and_bad_meta_is_reported() {
        let data = tempfile::tempdir().unwrap();
        let spool = Spool::new(data.path());
        drop(spool.begin("0002-1-bb").unwrap());
        // A writer that may still be alive is left alone.
        assert_eq!(
            spool.clean_tmp(std::time::Duration::from_secs(60)).unwrap(),
            0
        );
        assert_eq!(spool.clean_tmp(std::time::Duration::ZERO).unwrap(), 1);
        fs::create_dir_all(spool.new_dir().join("bad")).unwrap();
        fs::write(spool.new_dir().join("bad/meta.json"), b"{not json").unwrap();
        let entries = spool.list().unwrap();
        assert!(matches!(&entries[0], Err((_, SpoolError::Meta { .. }))));
    }

    #[test]
    fn a_found_problem_is_spooled_once_with_its_attachments() {
        let data = tempfile::tempdir().unwrap();
        let source = data.path().join("source.txt");
        std::fs::write(&source, b"0123456789").unwrap();
        let found = || Found {
            entry_id: stable_entry_id("test", &[b"x"]),
            source: Source::Kdump,
            time_ms: 5,
            problem: crashmesh_protocol::Problem::new(
                crashmesh_protocol::ProblemKind::KernelPanic,
                "panic",
            ),
            pid: None,
            uid: None,
            comm: None,
            attachments: vec![
                ("a.txt".to_string(), Attachment::Bytes(b"abc")),
                (
                    "dir/b.txt".to_string(),
                    Attachment::File {
                        file: File::open(&source).unwrap(),
                        path: &source,
                        bytes_max: 4,
                    },
                ),
            ],
            notes: Vec::new(),
            suppressed_count: None,
        };
        assert!(write_found(data.path(), found()).unwrap());
        assert!(!write_found(data.path(), found()).unwrap());
        let entries = Spool::new(data.path()).list().unwrap();
        assert_eq!(entries.len(), 1);
        let entry = entries.into_iter().next().unwrap().unwrap();
        assert_eq!(entry.meta.source, Source::Kdump);
        assert_eq!(entry.meta.proc_files, ["a.txt", "dir/b.txt"]);
        assert_eq!(std::fs::read(entry.dir.join("dir/b.txt")).unwrap(), b"0123");
        assert_eq!(entry.meta.notes, ["dir/b.txt: cut at 4 of 10 bytes"]);
    }
}

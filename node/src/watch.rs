//! What the file-based detectors share (kdump/pstore harvest, hs_err files, VM guest
//! logs): small durable state files, spooling a problem parsed from a file, and a thin
//! actor that runs a poller on the blocking pool.
//!
//! # Invariants
//! - A state file is replaced whole and durably (temp + fsync + rename + directory
//!   fsync): after a crash it holds the old state or the new one, never a mix.
//! - A detector spools a problem *before* it saves the state that says "done", and the
//!   entry id is derived from what was found (never from the time), so a crash in between
//!   replays the same entry id, which the store records once (report ids are idempotent).
//! - A poller never runs on an actor's thread and never runs twice at once.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crashmesh_protocol::Problem;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crashmesh_capture::spool::{EntryMeta, SPOOL_FORMAT_VERSION, Spool, SpoolError};

/// The largest state file a detector reads back.
pub const STATE_FILE_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Why a state file could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Read a JSON state file; `None` when it is missing. A damaged or oversized file is
/// logged and treated as missing (the detector then starts over, which the idempotent
/// entry ids make harmless).
pub fn load_state<T: DeserializeOwned>(path: &Path) -> Option<T> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read a detector state file");
            return None;
        }
    };
    let mut bytes = Vec::new();
    if let Err(error) = file.take(STATE_FILE_BYTES_MAX + 1).read_to_end(&mut bytes) {
        tracing::warn!(path = %path.display(), %error, "cannot read a detector state file");
        return None;
    }
    if bytes.len() as u64 > STATE_FILE_BYTES_MAX {
        tracing::warn!(path = %path.display(), "detector state file too large; starting over");
        return None;
    }
    match serde_json::from_slice(&bytes) {
        Ok(state) => Some(state),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "damaged detector state file; starting over");
            None
        }
    }
}

/// Replace a JSON state file durably.
pub fn save_state<T: Serialize>(path: &Path, state: &T) -> Result<(), StateError> {
    let io_error = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = serde_json::to_vec(state).expect("state serializes");
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    {
        let mut file = File::create(&temporary).map_err(io_error)?;
        file.write_all(&bytes).map_err(io_error)?;
        file.sync_all().map_err(io_error)?;
    }
    std::fs::rename(&temporary, path).map_err(io_error)?;
    let directory = path.parent().unwrap_or(Path::new("."));
    File::open(directory)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error)
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

/// A problem a file detector found, with what to keep beside it.
pub struct FoundProblem<'a> {
    /// Derived from what was found, never from the time (see the module's invariants).
    pub entry_id: String,
    /// `kdump`, `pstore`, `hs_err`, `vm_guest`.
    pub source: &'static str,
    /// When the problem happened, unix milliseconds.
    pub time_ms: u64,
    pub problem: Problem,
    pub pid: Option<u32>,
    /// The user the problem belongs to, from the kernel (the owner of the file it was
    /// found in, by `fstat`), when there is one.
    pub uid: Option<u32>,
    pub comm: Option<String>,
    /// Files of the entry, by name inside it (listed in `proc_files`, so they are kept).
    pub attachments: Vec<(String, Attachment<'a>)>,
    pub notes: Vec<String>,
}

/// Write a found problem as a complete spool entry. Returns false when an entry of that
/// id is already waiting in the spool (nothing is written twice).
pub fn spool_found(data_dir: &Path, found: FoundProblem<'_>) -> Result<bool, SpoolError> {
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
        source: found.source.to_string(),
        time_ms: found.time_ms,
        pid: found.pid,
        uid: found.uid,
        comm: found.comm,
        proc_files,
        notes,
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

/// A file's modification time, unix milliseconds (0 when unknown).
pub fn modified_ms(metadata: &std::fs::Metadata) -> u64 {
    metadata
        .modified()
        .ok()
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |duration| duration.as_millis() as u64)
}

/// Expand glob patterns into existing paths, sorted; a bad pattern is logged and skipped.
pub fn expand_globs(patterns: &[String]) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for pattern in patterns {
        match glob::glob(pattern) {
            Ok(found) => paths.extend(found.filter_map(|path| path.ok())),
            Err(error) => tracing::warn!(pattern, %error, "bad glob pattern in the configuration"),
        }
    }
    paths.sort();
    paths.dedup();
    paths
}

/// A detector whose work is a periodic look at the file system.
pub trait Poller: Send + Unpin + 'static {
    /// The detector's name in logs.
    const NAME: &'static str;
    /// Look once; `now_ms` is the wall clock.
    fn poll(&mut self, now_ms: u64);
}

/// A thin actor that runs a [`Poller`] every `interval` on the blocking pool, one poll at
/// a time (the poller travels to the pool and back, so it needs no lock).
pub struct PollActor<P: Poller> {
    poller: Option<P>,
    interval: std::time::Duration,
}

impl<P: Poller> PollActor<P> {
    pub fn new(poller: P, interval: std::time::Duration) -> PollActor<P> {
        PollActor {
            poller: Some(poller),
            interval,
        }
    }

    fn tick(&mut self, context: &mut actix::Context<Self>) {
        use actix::{ActorFutureExt, AsyncContext};
        let Some(mut poller) = self.poller.take() else {
            return; // The previous poll is still running.
        };
        let pass = tokio::task::spawn_blocking(move || {
            poller.poll(crate::commands::now_ms());
            poller
        });
        context.spawn(
            actix::fut::wrap_future(pass).map(|result, actor: &mut PollActor<P>, context| {
                match result {
                    Ok(poller) => actor.poller = Some(poller),
                    Err(error) => {
                        tracing::error!(detector = P::NAME, %error, "detector poll panicked; the detector stops");
                        use actix::ActorContext;
                        context.stop();
                    }
                }
            }),
        );
    }
}

impl<P: Poller> actix::Actor for PollActor<P> {
    type Context = actix::Context<Self>;

    fn started(&mut self, context: &mut Self::Context) {
        use actix::AsyncContext;
        self.tick(context);
        context.run_interval(self.interval, |actor, context| actor.tick(context));
    }
}

/// Start the file-based detectors the configuration enables: the kdump/pstore harvest
/// once on the blocking pool, and the hs_err and VM log watchers as [`PollActor`]s. Must
/// run inside the daemon's actix system.
pub fn start_file_detectors(data_dir: &Path, detect: &crate::config::DetectConfig) {
    use actix::Actor;
    if detect.kdump.enabled || detect.pstore.enabled {
        let data_dir = data_dir.to_path_buf();
        let (kdump, pstore) = (detect.kdump.clone(), detect.pstore.clone());
        tokio::task::spawn_blocking(move || {
            let summary =
                crate::harvest::harvest(&data_dir, &kdump, &pstore, crate::commands::now_ms());
            tracing::info!(?summary, "harvested kernel crashes of earlier boots");
        });
    }
    if detect.hs_err.enabled {
        let interval = std::time::Duration::from_millis(detect.hs_err.poll_interval_ms.max(100));
        let watcher = crate::jvm::HsErrWatcher::new(data_dir, detect.hs_err.clone());
        PollActor::new(watcher, interval).start();
    }
    if detect.vm_guest.enabled {
        let interval = std::time::Duration::from_millis(detect.vm_guest.poll_interval_ms.max(100));
        let watcher = crate::vmguest::VmGuestWatcher::new(data_dir, detect.vm_guest.clone());
        PollActor::new(watcher, interval).start();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_round_trip_and_damage_reads_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(load_state::<Vec<String>>(&path), None);
        save_state(&path, &vec!["a".to_string()]).unwrap();
        assert_eq!(
            load_state::<Vec<String>>(&path),
            Some(vec!["a".to_string()])
        );
        assert!(!dir.path().join("state.json.tmp").exists());
        std::fs::write(&path, b"{damaged").unwrap();
        assert_eq!(load_state::<Vec<String>>(&path), None);
    }

    #[test]
    fn a_found_problem_is_spooled_once_with_its_attachments() {
        let data = tempfile::tempdir().unwrap();
        let source = data.path().join("source.txt");
        std::fs::write(&source, b"0123456789").unwrap();
        let found = || FoundProblem {
            entry_id: stable_entry_id("test", &[b"x"]),
            source: "kdump",
            time_ms: 5,
            problem: Problem::new(crashmesh_protocol::ProblemKind::KernelPanic, "panic"),
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
        };
        assert!(spool_found(data.path(), found()).unwrap());
        assert!(!spool_found(data.path(), found()).unwrap());
        let entries = Spool::new(data.path()).list().unwrap();
        assert_eq!(entries.len(), 1);
        let entry = entries.into_iter().next().unwrap().unwrap();
        assert_eq!(entry.meta.source, "kdump");
        assert_eq!(entry.meta.proc_files, ["a.txt", "dir/b.txt"]);
        assert_eq!(std::fs::read(entry.dir.join("dir/b.txt")).unwrap(), b"0123");
        assert_eq!(entry.meta.notes, ["dir/b.txt: cut at 4 of 10 bytes"]);
    }
}

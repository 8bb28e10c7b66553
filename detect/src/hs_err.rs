//! JVM fatal errors: `hs_err_pid<pid>.log` files that HotSpot writes when it dies, found
//! by listing the configured directories (`[detect.hs_err] dirs`, glob patterns allowed)
//! every `poll_interval_ms`.
//!
//! # Invariants
//! - A file is read only once it is complete: it ends with HotSpot's closing `END.` line,
//!   or its JVM is gone (no `/proc/<pid>`) and it has not changed for
//!   [`GONE_QUIET_MS`], or it has not changed for `quiet_secs`. (The pid in the name is
//!   the JVM's in its own pid namespace: a containerized JVM may look gone while it
//!   writes, hence a quiet period even then.)
//! - No file is reported twice. A file is known by its path, device, inode and birth
//!   time (where the file system records one), remembered in `hs-err-seen.json` in the
//!   data dir; a file that keeps growing after it was reported is not reported again.
//!   Entries of files that disappeared are forgotten, at most [`SEEN_FILES_MAX`] kept.
//! - The watched directories are usually world-writable: a file is opened without
//!   following symlinks, must be a regular file with one link, is read once up to
//!   `file_bytes_max`, and what is attached is exactly what was parsed. A file that does
//!   not parse as an hs_err report is remembered and never attached.
//! - Files already older than `file_age_days_max` when first seen are remembered, not
//!   reported (a first start does not report last year's crashes).

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::HsErrConfig;
use crate::detector;
use crashmesh_capture::spool::{Attachment, Source};

/// How long the file of a JVM that looks gone must not change to count as complete.
pub const GONE_QUIET_MS: u64 = 2_000;
/// Files remembered as seen.
pub const SEEN_FILES_MAX: usize = 10_000;
/// Candidate files looked at per poll.
pub const FILES_PER_POLL_MAX: usize = 1024;
/// The state file's name in the data dir.
pub const STATE_FILE: &str = "hs-err-seen.json";
const STATE_FORMAT_VERSION: u32 = 1;

/// Files already handled, persisted as `hs-err-seen.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SeenState {
    pub format_version: u32,
    pub files: Vec<SeenFile>,
}

/// One handled file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenFile {
    pub path: PathBuf,
    pub device: u64,
    pub inode: u64,
    /// Birth time in unix milliseconds, 0 where the file system records none.
    pub born_ms: u64,
    /// Its size when it was handled.
    pub bytes: u64,
    /// True when it was spooled as a problem (false: too old or not an hs_err report).
    pub reported: bool,
}

/// The identity of a file on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileIdentity {
    device: u64,
    inode: u64,
    born_ms: u64,
}

fn identity(metadata: &std::fs::Metadata) -> FileIdentity {
    let born_ms = metadata
        .created()
        .ok()
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |duration| duration.as_millis() as u64);
    FileIdentity {
        device: metadata.dev(),
        inode: metadata.ino(),
        born_ms,
    }
}

/// A file waiting to be complete.
#[derive(Clone, Copy, Debug)]
struct Pending {
    identity: FileIdentity,
    bytes: u64,
    /// When this size was first observed.
    since_ms: u64,
}

/// The hs_err detector's state between polls.
pub struct HsErrWatcher {
    data_dir: PathBuf,
    config: HsErrConfig,
    seen: SeenState,
    pending: HashMap<PathBuf, Pending>,
}

/// What one poll did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PollSummary {
    pub reported: usize,
    /// Files remembered without a report (too old, or not an hs_err report).
    pub ignored: usize,
    /// Files still being written.
    pub waiting: usize,
}

impl HsErrWatcher {
    pub fn new(data_dir: &Path, config: HsErrConfig) -> HsErrWatcher {
        let seen = detector::load_state(&data_dir.join(STATE_FILE)).unwrap_or_default();
        HsErrWatcher {
            data_dir: data_dir.to_path_buf(),
            config,
            seen,
            pending: HashMap::new(),
        }
    }

    /// `hs_err_pid*.log` files in the configured directories.
    fn candidates(&self) -> Vec<(PathBuf, std::fs::Metadata)> {
        let mut found = Vec::new();
        for dir in detector::expand_globs(&self.config.dirs) {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.filter_map(|entry| entry.ok()) {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if !(name.starts_with("hs_err_pid") && name.ends_with(".log")) {
                    continue;
                }
                // Not following symlinks: a link to another file is never read.
                match std::fs::symlink_metadata(entry.path()) {
                    Ok(metadata) if metadata.is_file() => found.push((entry.path(), metadata)),
                    _ => {}
                }
                if found.len() >= FILES_PER_POLL_MAX {
                    return found;
                }
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }

    fn is_seen(&self, path: &Path, identity: FileIdentity) -> bool {
        self.seen.files.iter().any(|file| {
            file.path == path
                && file.device == identity.device
                && file.inode == identity.inode
                && file.born_ms == identity.born_ms
        })
    }

    /// Look once: report every complete new file.
    pub fn poll_once(&mut self, now_ms: u64) -> PollSummary {
        let mut summary = PollSummary::default();
        let candidates = self.candidates();
        let mut changed = self.forget_vanished();
        let mut still_pending = HashMap::new();
        for (path, metadata) in candidates {
            let identity = identity(&metadata);
            if self.is_seen(&path, identity) {
                continue;
            }
            let modified_ms = detector::modified_ms(&metadata);
            let age_max_ms = self.config.file_age_days_max.saturating_mul(86_400_000);
            let first_sight = !self.pending.contains_key(&path);
            if first_sight && now_ms.saturating_sub(modified_ms) > age_max_ms {
                self.remember(&path, identity, metadata.len(), false);
                summary.ignored += 1;
                changed = true;
                continue;
            }
            let pending = match self.pending.get(&path) {
                Some(pending)
                    if pending.identity == identity && pending.bytes == metadata.len() =>
                {
                    *pending
                }
                _ => Pending {
                    identity,
                    bytes: metadata.len(),
                    since_ms: now_ms,
                },
            };
            if !self.is_complete(&path, &pending, modified_ms, now_ms) {
                still_pending.insert(path, pending);
                summary.waiting += 1;
                continue;
            }
            match self.report(&path, modified_ms) {
                Ok(Some(bytes)) => {
                    self.remember(&path, identity, bytes, true);
                    summary.reported += 1;
                    changed = true;
                }
                Ok(None) => {
                    self.remember(&path, identity, metadata.len(), false);
                    summary.ignored += 1;
                    changed = true;
                }
                Err(error) => {
                    // Retried at the next poll.
                    tracing::warn!(file = %path.display(), %error, "cannot report an hs_err file");
                    still_pending.insert(path, pending);
                }
            }
        }
        self.pending = still_pending;
        if changed {
            self.seen.format_version = STATE_FORMAT_VERSION;
            if let Err(error) = detector::save_state(&self.data_dir.join(STATE_FILE), &self.seen) {
                tracing::error!(%error, "cannot save the hs_err files seen; they may be reported again");
            }
        }
        summary
    }

    fn is_complete(&self, path: &Path, pending: &Pending, modified_ms: u64, now_ms: u64) -> bool {
        let quiet_ms = self.config.quiet_secs.saturating_mul(1000);
        let unchanged_ms = now_ms
            .saturating_sub(pending.since_ms)
            .max(now_ms.saturating_sub(modified_ms));
        if unchanged_ms >= quiet_ms || ends_with_end_marker(path) {
            return true;
        }
        unchanged_ms >= GONE_QUIET_MS
            && pid_of(path).is_some_and(|pid| !Path::new("/proc").join(pid.to_string()).exists())
    }

    /// Parse and spool one file: its size when it was reported, `None` when it is not an
    /// hs_err report.
    fn report(&self, path: &Path, modified_ms: u64) -> Result<Option<u64>, HsErrError> {
        let io_error = |source| HsErrError::Io {
            path: path.to_path_buf(),
            source,
        };
        let crashmesh_untrusted::Opened { file, metadata } = match open_hs_err(path) {
            Ok(opened) => opened,
            Err(error) if error.is_not_found() => {
                return Err(io_error(std::io::ErrorKind::NotFound.into()));
            }
            Err(error) => {
                tracing::warn!(%error, "not a plain hs_err file; ignored");
                return Ok(None);
            }
        };
        let bytes_max = self.config.file_bytes_max.0;
        let mut bytes = Vec::new();
        file.take(bytes_max)
            .read_to_end(&mut bytes)
            .map_err(io_error)?;
        let text = String::from_utf8_lossy(&bytes);
        let Some(problem) = crashmesh_parsers::parse_hs_err(&text) else {
            tracing::info!(file = %path.display(), "not an hs_err report; ignored");
            return Ok(None);
        };
        let identity = identity(&metadata);
        let mut notes = vec![format!("hs_err file {}", path.display())];
        if metadata.len() > bytes.len() as u64 {
            notes.push(format!(
                "hs_err file cut at {} of {} bytes",
                bytes.len(),
                metadata.len()
            ));
        }
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "hs_err.log".to_string());
        let path_text = path.to_string_lossy();
        let entry_id = crashmesh_capture::spool::stable_entry_id(
            "hs_err",
            &[
                path_text.as_bytes(),
                &identity.device.to_le_bytes(),
                &identity.inode.to_le_bytes(),
                &identity.born_ms.to_le_bytes(),
            ],
        );
        let spooled = crashmesh_capture::spool::write_found(
            &self.data_dir,
            crashmesh_capture::spool::Found {
                entry_id,
                source: Source::HsErr,
                time_ms: modified_ms,
                pid: pid_of(path),
                // The JVM writes its report as the user it runs as.
                uid: Some(metadata.uid()),
                comm: Some("java".to_string()),
                problem,
                attachments: vec![(name, Attachment::Bytes(&bytes))],
                notes,
                suppressed_count: None,
            },
        )?;
        if spooled {
            tracing::info!(file = %path.display(), "JVM fatal error spooled");
        }
        Ok(Some(metadata.len()))
    }

    fn remember(&mut self, path: &Path, identity: FileIdentity, bytes: u64, reported: bool) {
        self.seen.files.push(SeenFile {
            path: path.to_path_buf(),
            device: identity.device,
            inode: identity.inode,
            born_ms: identity.born_ms,
            bytes,
            reported,
        });
        let excess = self.seen.files.len().saturating_sub(SEEN_FILES_MAX);
        self.seen.files.drain(..excess);
    }

    /// Forget files that are gone (or replaced); true when something was forgotten.
    fn forget_vanished(&mut self) -> bool {
        let before = self.seen.files.len();
        // Only a file known to be gone is forgotten: one that cannot be looked at for
        // another reason (permissions) must not become new again.
        self.seen
            .files
            .retain(|file| match std::fs::symlink_metadata(&file.path) {
                Ok(metadata) => {
                    let now = identity(&metadata);
                    now.device == file.device
                        && now.inode == file.inode
                        && now.born_ms == file.born_ms
                }
                Err(error) => error.kind() != std::io::ErrorKind::NotFound,
            });
        before != self.seen.files.len()
    }
}

impl detector::Detector for HsErrWatcher {
    const NAME: &'static str = "hs_err";

    fn poll(&mut self, now_ms: u64) {
        let summary = self.poll_once(now_ms);
        if summary.reported + summary.ignored > 0 {
            tracing::debug!(?summary, "hs_err poll");
        }
    }
}

/// Why an hs_err file could not be reported.
#[derive(Debug, thiserror::Error)]
pub enum HsErrError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Spool(#[from] crashmesh_capture::spool::SpoolError),
}

/// The pid in `hs_err_pid<pid>.log`.
pub fn pid_of(path: &Path) -> Option<u32> {
    path.file_name()?
        .to_str()?
        .strip_prefix("hs_err_pid")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// Opens an hs_err file as one a user wrote: never a symlink, a FIFO or a hard link to
/// someone else's file; its owner comes with it.
fn open_hs_err(path: &Path) -> Result<crashmesh_untrusted::Opened, crashmesh_untrusted::OpenError> {
    crashmesh_untrusted::open_in_dir(path, crashmesh_untrusted::Rules::ANY_SINGLE_LINK)
}

/// Does the file end with HotSpot's closing `END.` line?
fn ends_with_end_marker(path: &Path) -> bool {
    use std::io::{Seek, SeekFrom};
    let Ok(crashmesh_untrusted::Opened { mut file, metadata }) = open_hs_err(path) else {
        return false;
    };
    let length = metadata.len();
    if file
        .seek(SeekFrom::Start(length.saturating_sub(16)))
        .is_err()
    {
        return false;
    }
    let mut tail = Vec::new();
    if file.take(16).read_to_end(&mut tail).is_err() {
        return false;
    }
    String::from_utf8_lossy(&tail)
        .trim_end()
        .ends_with("\nEND.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crashmesh_capture::spool::{Entry, Spool};
    use crashmesh_protocol::ProblemKind;

    /// The head of a HotSpot report: enough for the problematic frame.
    const HS_ERR_HEAD: &str = r#"#
# A fatal error has been detected by the Java Runtime Environment:
#
#  SIGSEGV (0xb) at pc=0x00007f3b8c4a1b2e, pid=12345, tid=12346
#
# JRE version: OpenJDK Runtime Environment (17.0.9+9) (build 17.0.9+9-Ubuntu-122.04)
# Java VM: OpenJDK 64-Bit Server VM (17.0.9+9-Ubuntu-122.04, mixed mode, sharing, tiered, compressed oops, compressed class ptrs, g1 gc, linux-amd64)
# Problematic frame:
# C  [libc.so.6+0x1a1b2e]  __memmove_avx_unaligned_erms+0x6e
#
"#;

    /// The rest, as HotSpot writes it later (it may take seconds).
    const HS_ERR_TAIL: &str = r#"
---------------  T H R E A D  ---------------

Native frames: (J=compiled Java code, j=interpreted, Vv=VM code, C=native code)
C  [libc.so.6+0x1a1b2e]  __memmove_avx_unaligned_erms+0x6e
C  [libstoragejni.so+0x1139]  Java_com_example_storage_Native_copy+0x39
j  com.example.storage.Native.copy([BJI)V+0
j  com.example.storage.Main.main([Ljava/lang/String;)V+9

END.
"#;

    fn entries(data_dir: &Path) -> Vec<Entry> {
        Spool::new(data_dir)
            .list()
            .unwrap()
            .into_iter()
            .map(|entry| entry.unwrap())
            .collect()
    }

    fn config(dir: &Path) -> HsErrConfig {
        HsErrConfig {
            dirs: vec![dir.to_string_lossy().into_owned()],
            ..HsErrConfig::default()
        }
    }

    fn append(path: &Path, text: &str) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn a_file_written_in_parts_is_reported_once_when_complete() {
        let data = tempfile::tempdir().unwrap();
        let watched = tempfile::tempdir().unwrap();
        // This test's own pid: the JVM "is alive" while the file is being written.
        let path = watched
            .path()
            .join(format!("hs_err_pid{}.log", std::process::id()));
        append(&path, HS_ERR_HEAD);
        let mut watcher = HsErrWatcher::new(data.path(), config(watched.path()));
        let now = crashmesh_capture::clock::now_ms();
        assert_eq!(watcher.poll_once(now).waiting, 1);
        assert_eq!(
            watcher.poll_once(now + 2_000).waiting,
            1,
            "alive and not quiet yet"
        );
        assert!(entries(data.path()).is_empty());

        append(&path, HS_ERR_TAIL);
        let summary = watcher.poll_once(now + 4_000);
        assert_eq!(summary.reported, 1, "{summary:?}");
        let listed = entries(data.path());
        assert_eq!(listed.len(), 1);
        let meta = &listed[0].meta;
        assert_eq!(meta.source, Source::HsErr);
        assert_eq!(meta.pid, Some(std::process::id()));
        let problem = meta.problem.as_ref().unwrap();
        assert_eq!(problem.kind, ProblemKind::Java);
        assert_eq!(
            problem.reason,
            "SIGSEGV in __memmove_avx_unaligned_erms (libc.so.6)"
        );
        assert_eq!(
            problem.frames[0].function.as_deref(),
            Some("__memmove_avx_unaligned_erms")
        );
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(meta.proc_files, [name]);
        assert_eq!(
            std::fs::read_to_string(listed[0].dir.join(name)).unwrap(),
            format!("{HS_ERR_HEAD}{HS_ERR_TAIL}")
        );

        // Never twice: not at the next poll, not after a restart, not when it grows.
        std::fs::remove_dir_all(&listed[0].dir).unwrap();
        assert_eq!(watcher.poll_once(now + 6_000), PollSummary::default());
        append(&path, "\n");
        let mut restarted = HsErrWatcher::new(data.path(), config(watched.path()));
        assert_eq!(restarted.poll_once(now + 60_000), PollSummary::default());
        assert!(entries(data.path()).is_empty());
    }

    #[test]
    fn a_file_of_a_gone_jvm_is_complete_once_it_holds_still() {
        let data = tempfile::tempdir().unwrap();
        let watched = tempfile::tempdir().unwrap();
        // No such pid (above the kernel's pid_max).
        let path = watched.path().join("hs_err_pid999999999.log");
        append(&path, HS_ERR_HEAD);
        let mut watcher = HsErrWatcher::new(data.path(), config(watched.path()));
        let now = crashmesh_capture::clock::now_ms();
        assert_eq!(
            watcher.poll_once(now).waiting,
            1,
            "first look: may still grow"
        );
        assert_eq!(
            watcher.poll_once(now + 500).waiting,
            1,
            "not quiet long enough"
        );
        assert_eq!(watcher.poll_once(now + GONE_QUIET_MS + 500).reported, 1);
        assert_eq!(entries(data.path())[0].meta.pid, Some(999_999_999));
    }

    #[test]
    fn quiet_files_complete_while_old_files_links_and_other_texts_are_not_reported() {
        let data = tempfile::tempdir().unwrap();
        let watched = tempfile::tempdir().unwrap();
        let quiet = watched
            .path()
            .join(format!("hs_err_pid{}.log", std::process::id()));
        append(&quiet, HS_ERR_HEAD);
        let old = watched.path().join("hs_err_pid1.log");
        append(&old, HS_ERR_HEAD);
        let month_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(30 * 86_400);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(month_ago)
            .unwrap();
        append(&watched.path().join("hs_err_pid2.log"), "just some text\n");
        let secret = watched.path().join("secret");
        append(&secret, HS_ERR_HEAD);
        std::os::unix::fs::symlink(&secret, watched.path().join("hs_err_pid3.log")).unwrap();
        std::fs::hard_link(&secret, watched.path().join("hs_err_pid4.log")).unwrap();
        append(&watched.path().join("other.log"), HS_ERR_HEAD);
        // A FIFO nobody writes, where a report would be: never opened, never waited on.
        let fifo = watched.path().join("hs_err_pid5.log");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o666) }, 0);

        let mut watcher = HsErrWatcher::new(data.path(), config(watched.path()));
        let now = crashmesh_capture::clock::now_ms();
        let first = watcher.poll_once(now);
        assert_eq!(first.reported, 0, "{first:?}");
        assert_eq!(first.ignored, 1, "the old file: {first:?}");
        // Quiet for quiet_secs although the pid is alive.
        let later = watcher.poll_once(now + 11_000);
        assert_eq!(later.reported, 1, "{later:?}");
        // The text and the hard link are remembered unreported; the symlink never looked at.
        assert_eq!(later.ignored, 2, "{later:?}");
        let listed = entries(data.path());
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].meta.pid, Some(std::process::id()));
        // The user is the file's owner, from the kernel.
        assert_eq!(
            listed[0].meta.uid,
            Some(std::fs::metadata(&quiet).unwrap().uid())
        );
        let state: SeenState = detector::load_state(&data.path().join(STATE_FILE)).unwrap();
        assert_eq!(state.files.len(), 4);
        assert_eq!(state.files.iter().filter(|file| file.reported).count(), 1);

        // A reported file deleted and written again (a new JVM with the same pid) is new.
        std::fs::remove_file(&quiet).unwrap();
        assert_eq!(watcher.poll_once(now + 12_000).reported, 0);
        append(&quiet, HS_ERR_HEAD);
        append(&quiet, HS_ERR_TAIL);
        assert_eq!(watcher.poll_once(now + 13_000).reported, 1);
    }

    #[test]
    fn the_pid_comes_from_the_file_name() {
        assert_eq!(pid_of(Path::new("/tmp/hs_err_pid4242.log")), Some(4242));
        assert_eq!(pid_of(Path::new("/tmp/hs_err_pidx.log")), None);
        assert_eq!(pid_of(Path::new("/tmp/replay_pid4242.log")), None);
    }
}

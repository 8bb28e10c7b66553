//! VM guest panics: follows QEMU/libvirt domain logs (`[detect.vm_guest] globs`, by
//! default `/var/log/libvirt/qemu/*.log`; the domain is the file name without `.log`) and
//! reports what `crashmesh_parsers::parse_vm_guest_log` finds in the appended text.
//!
//! # How a log is followed
//! Per log the detector remembers (in `vm-guest-logs.json` in the data dir) its device and
//! inode, the offset read up to, and a few *context lines* of the current QEMU run: its
//! `starting up` line, the QEMU command line, and the first line of the run's last
//! problem. New text is parsed after the context; the problems the context alone gives
//! were reported before and are skipped. This is what keeps libvirt's record of a panic
//! that arrives a poll after the panic event, or the `shutting down, reason=crashed` that
//! follows it, from becoming a second problem, and what keeps the QEMU version and binary.
//!
//! # Invariants
//! - Appended text is read once the log has been quiet for `quiet_ms` (libvirt writes a
//!   panic's lines together), at most `read_bytes_max` per log per poll, and only up to
//!   the last complete line (unless a single line fills the whole read).
//! - Rotation (a new inode at the path) first finishes the old file where it now lies in
//!   the same directory (`win.log.0`), then reads the new one from its start; truncation
//!   (a smaller size, same inode: copytruncate) reads from the start. The run's context
//!   survives both: rotation happens in the middle of a run.
//! - At the very first start (no state file) existing logs are taken from their end: the
//!   history before crashmesh was installed is not reported. A log that appears later is
//!   read whole.
//! - Problems are spooled before the offset that covers them is saved, with entry ids
//!   derived from the log's identity, the chunk's offset and the problem's index: a crash
//!   in between replays the same ids, which the store records once.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crashmesh_protocol::Problem;
use serde::{Deserialize, Serialize};

use crate::config::VmGuestConfig;
use crate::detector;
use crashmesh_capture::spool::{Attachment, Source};

/// The state file's name in the data dir.
pub const STATE_FILE: &str = "vm-guest-logs.json";
const STATE_FORMAT_VERSION: u32 = 1;
/// Logs followed at once.
pub const LOGS_MAX: usize = 4096;
/// Bytes of one context line kept.
pub const CONTEXT_LINE_BYTES_MAX: usize = 4096;
/// Bytes of a log's start remembered to notice truncation.
pub const HEAD_BYTES_MAX: usize = 64;
/// Reads of a rotated file's rest, each up to `read_bytes_max`.
const ROTATED_READS_MAX: usize = 8;
/// A log that is never quiet is read anyway after this many quiet periods.
const QUIET_PERIODS_WAITED_MAX: u64 = 10;

/// Where each log was read up to, persisted as `vm-guest-logs.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VmGuestState {
    pub format_version: u32,
    pub logs: BTreeMap<PathBuf, LogState>,
}

/// One followed log.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LogState {
    pub device: u64,
    pub inode: u64,
    /// Bytes read and handled.
    pub offset: u64,
    /// The current run's context lines (see the module's docs).
    pub context: Vec<String>,
    /// The log's first bytes (up to [`HEAD_BYTES_MAX`], hex): a log truncated and written
    /// again past the old offset between two looks starts differently.
    #[serde(default)]
    pub head_hex: String,
}

/// The VM guest detector's state between polls.
pub struct VmGuestWatcher {
    data_dir: PathBuf,
    config: VmGuestConfig,
    state: VmGuestState,
    /// False until the first poll of a data dir that had no state file.
    baselined: bool,
    /// Since when each log has had unread text.
    unread_since: HashMap<PathBuf, u64>,
}

/// What one poll did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PollSummary {
    pub reported: usize,
    pub bytes_read: u64,
}

/// Why a log could not be followed.
#[derive(Debug, thiserror::Error)]
pub enum VmGuestError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Spool(#[from] crashmesh_capture::spool::SpoolError),
    /// Not a plain log file (a symlink, a FIFO, a hard link).
    #[error(transparent)]
    Refused(Box<crashmesh_untrusted::OpenError>),
}

/// The domain a log belongs to: its file name without `.log`.
pub fn domain_of(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_suffix(".log").unwrap_or(&name).to_string()
}

impl VmGuestWatcher {
    pub fn new(data_dir: &Path, config: VmGuestConfig) -> VmGuestWatcher {
        let loaded: Option<VmGuestState> = detector::load_state(&data_dir.join(STATE_FILE));
        VmGuestWatcher {
            data_dir: data_dir.to_path_buf(),
            config,
            baselined: loaded.is_some(),
            state: loaded.unwrap_or_default(),
            unread_since: HashMap::new(),
        }
    }

    fn logs(&self) -> Vec<(PathBuf, std::fs::Metadata)> {
        let mut logs: Vec<(PathBuf, std::fs::Metadata)> =
            detector::expand_globs(&self.config.globs)
                .into_iter()
                .filter_map(|path| {
                    // A log that is a symlink is not followed (see `read_range`).
                    let metadata = std::fs::symlink_metadata(&path).ok()?;
                    metadata.is_file().then_some((path, metadata))
                })
                .collect();
        if logs.len() > LOGS_MAX {
            tracing::warn!(
                count = logs.len(),
                "too many VM logs; following the first {LOGS_MAX}"
            );
            logs.truncate(LOGS_MAX);
        }
        logs
    }

    /// Look once at every log.
    pub fn poll_once(&mut self, now_ms: u64) -> PollSummary {
        let mut summary = PollSummary::default();
        let logs = self.logs();
        let mut changed = false;
        if !self.baselined {
            for (path, metadata) in &logs {
                let bytes_max = self.config.read_bytes_max.0;
                let start = metadata.len().saturating_sub(bytes_max);
                let context = match read_range(path, start, bytes_max) {
                    Ok(bytes) => {
                        let text = String::from_utf8_lossy(&bytes);
                        // Begin at a whole line.
                        let text = match start {
                            0 => &text[..],
                            _ => text.split_once('\n').map_or("", |(_, rest)| rest),
                        };
                        let problems =
                            crashmesh_parsers::parse_vm_guest_log(&domain_of(path), text);
                        context_lines(text, &problems)
                    }
                    Err(_) => Vec::new(),
                };
                self.state.logs.insert(
                    path.clone(),
                    LogState {
                        device: metadata.dev(),
                        inode: metadata.ino(),
                        offset: metadata.len(),
                        context,
                        head_hex: read_head_hex(path, metadata.len()),
                    },
                );
            }
            self.baselined = true;
            self.save();
            return summary;
        }
        let before = self.state.logs.len();
        self.state
            .logs
            .retain(|path, _| logs.iter().any(|(listed, _)| listed == path));
        changed |= before != self.state.logs.len();
        self.unread_since
            .retain(|path, _| logs.iter().any(|(listed, _)| listed == path));
        for (path, metadata) in &logs {
            match self.follow(path, metadata, now_ms, &mut summary) {
                Ok(log_changed) => changed |= log_changed,
                Err(error) => tracing::warn!(%error, "cannot follow a VM log"),
            }
        }
        if changed {
            self.save();
        }
        summary
    }

    fn save(&mut self) {
        self.state.format_version = STATE_FORMAT_VERSION;
        if let Err(error) = detector::save_state(&self.data_dir.join(STATE_FILE), &self.state) {
            tracing::error!(%error, "cannot save where the VM logs were read up to");
        }
    }

    /// Read what was appended to one log; true when its state changed.
    fn follow(
        &mut self,
        path: &Path,
        metadata: &std::fs::Metadata,
        now_ms: u64,
        summary: &mut PollSummary,
    ) -> Result<bool, VmGuestError> {
        let mut changed = false;
        let mut log = match self.state.logs.get(path) {
            Some(log) => log.clone(),
            None => {
                changed = true;
                LogState {
                    device: metadata.dev(),
                    inode: metadata.ino(),
                    offset: 0,
                    context: Vec::new(),
                    head_hex: String::new(),
                }
            }
        };
        if (log.device, log.inode) != (metadata.dev(), metadata.ino()) {
            self.finish_rotated(path, &mut log, summary)?;
            tracing::info!(log = %path.display(), "VM log rotated");
            log.device = metadata.dev();
            log.inode = metadata.ino();
            log.offset = 0;
            log.head_hex.clear();
            changed = true;
        } else if metadata.len() < log.offset
            || (metadata.len() > log.offset && !head_matches(path, &log.head_hex))
        {
            tracing::info!(log = %path.display(), "VM log truncated; reading it from the start");
            log.offset = 0;
            log.head_hex.clear();
            changed = true;
        }
        let unread = metadata.len().saturating_sub(log.offset);
        if unread == 0 {
            self.unread_since.remove(path);
            if changed {
                self.state.logs.insert(path.to_path_buf(), log);
            }
            return Ok(changed);
        }
        let since = *self
            .unread_since
            .entry(path.to_path_buf())
            .or_insert(now_ms);
        let quiet_ms = self.config.quiet_ms;
        let quiet = now_ms.saturating_sub(detector::modified_ms(metadata)) >= quiet_ms;
        let waited_long =
            now_ms.saturating_sub(since) >= quiet_ms.saturating_mul(QUIET_PERIODS_WAITED_MAX);
        if !(quiet || waited_long || unread >= self.config.read_bytes_max.0) {
            if changed {
                self.state.logs.insert(path.to_path_buf(), log);
            }
            return Ok(changed);
        }
        let consumed = self.read_chunk(path, &mut log, summary)?;
        if consumed > 0 {
            changed = true;
        }
        if log.offset >= metadata.len() {
            self.unread_since.remove(path);
        }
        self.state.logs.insert(path.to_path_buf(), log);
        Ok(changed)
    }

    /// Read and handle one chunk at `log.offset`; gives back the bytes consumed.
    fn read_chunk(
        &self,
        path: &Path,
        log: &mut LogState,
        summary: &mut PollSummary,
    ) -> Result<u64, VmGuestError> {
        let bytes_max = self.config.read_bytes_max.0;
        let bytes = read_range(path, log.offset, bytes_max)?;
        let consumed = match bytes.iter().rposition(|&byte| byte == b'\n') {
            Some(newline) => newline + 1,
            None if bytes.len() as u64 >= bytes_max => bytes.len(),
            None => 0,
        };
        if consumed == 0 {
            return Ok(0);
        }
        let chunk = String::from_utf8_lossy(&bytes[..consumed]);
        let domain = domain_of(path);
        self.handle_text(path, &domain, log, &chunk, summary)?;
        log.offset += consumed as u64;
        summary.bytes_read += consumed as u64;
        if log.head_hex.len() < HEAD_BYTES_MAX * 2 {
            log.head_hex = read_head_hex(path, log.offset);
        }
        Ok(consumed as u64)
    }

    /// Parse `chunk` after the log's context, spool the new problems, move the context.
    fn handle_text(
        &self,
        path: &Path,
        domain: &str,
        log: &mut LogState,
        chunk: &str,
        summary: &mut PollSummary,
    ) -> Result<(), VmGuestError> {
        let mut combined = String::new();
        for line in &log.context {
            combined.push_str(line);
            combined.push('\n');
        }
        let already = crashmesh_parsers::parse_vm_guest_log(domain, &combined).len();
        combined.push_str(chunk);
        let problems = crashmesh_parsers::parse_vm_guest_log(domain, &combined);
        let time_ms = std::fs::metadata(path)
            .map(|metadata| detector::modified_ms(&metadata))
            .unwrap_or_else(|_| crashmesh_capture::clock::now_ms());
        let path_text = path.to_string_lossy();
        for (index, problem) in problems.iter().enumerate().skip(already) {
            let entry_id = crashmesh_capture::spool::stable_entry_id(
                "vm_guest",
                &[
                    path_text.as_bytes(),
                    &log.device.to_le_bytes(),
                    &log.inode.to_le_bytes(),
                    &log.offset.to_le_bytes(),
                    &(index as u64).to_le_bytes(),
                ],
            );
            let spooled = crashmesh_capture::spool::write_found(
                &self.data_dir,
                crashmesh_capture::spool::Found {
                    entry_id,
                    source: Source::VmGuest,
                    time_ms,
                    pid: None,
                    uid: None,
                    comm: Some(domain.to_string()),
                    problem: problem.clone(),
                    attachments: vec![(
                        format!("{domain}.log"),
                        Attachment::Bytes(combined.as_bytes()),
                    )],
                    notes: vec![format!(
                        "domain {domain}, log {} from byte {}",
                        path.display(),
                        log.offset
                    )],
                    suppressed_count: None,
                },
            )?;
            if spooled {
                tracing::info!(domain, reason = %problem.reason, "VM guest problem spooled");
            }
            summary.reported += 1;
        }
        log.context = context_lines(&combined, &problems);
        Ok(())
    }

    /// A log was replaced at its path: read the rest of the old file where it now lies.
    fn finish_rotated(
        &self,
        path: &Path,
        log: &mut LogState,
        summary: &mut PollSummary,
    ) -> Result<(), VmGuestError> {
        let Some(directory) = path.parent() else {
            return Ok(());
        };
        let Ok(entries) = std::fs::read_dir(directory) else {
            return Ok(());
        };
        let rotated = entries.filter_map(|entry| entry.ok()).find(|entry| {
            entry.metadata().is_ok_and(|metadata| {
                metadata.is_file() && (metadata.dev(), metadata.ino()) == (log.device, log.inode)
            })
        });
        let Some(rotated) = rotated else {
            return Ok(());
        };
        for _ in 0..ROTATED_READS_MAX {
            if self.read_chunk(&rotated.path(), log, summary)? == 0 {
                break;
            }
        }
        Ok(())
    }
}

impl detector::Detector for VmGuestWatcher {
    const NAME: &'static str = "vm_guest";

    fn poll(&mut self, now_ms: u64) {
        let summary = self.poll_once(now_ms);
        if summary.reported > 0 {
            tracing::debug!(?summary, "VM log poll");
        }
    }
}

/// The first bytes of a file (up to [`HEAD_BYTES_MAX`] and `length`), hex.
fn read_head_hex(path: &Path, length: u64) -> String {
    let bytes_max = length.min(HEAD_BYTES_MAX as u64);
    read_range(path, 0, bytes_max)
        .map(|bytes| bytes.iter().map(|byte| format!("{byte:02x}")).collect())
        .unwrap_or_default()
}

/// Does the file still start with the remembered bytes?
fn head_matches(path: &Path, head_hex: &str) -> bool {
    let length = (head_hex.len() / 2) as u64;
    length == 0 || read_head_hex(path, length) == head_hex
}

/// Up to `bytes_max` bytes of a file from `offset`.
fn read_range(path: &Path, offset: u64, bytes_max: u64) -> Result<Vec<u8>, VmGuestError> {
    let io_error = |source| VmGuestError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file =
        crashmesh_untrusted::open_in_dir(path, crashmesh_untrusted::Rules::ANY_SINGLE_LINK)
            .map_err(|error| VmGuestError::Refused(Box::new(error)))?
            .file;
    file.seek(SeekFrom::Start(offset)).map_err(io_error)?;
    let mut bytes = Vec::new();
    file.take(bytes_max)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    Ok(bytes)
}

/// The context lines of the last run in `text` (see the module's docs): its `starting up`
/// line, the first QEMU command line after it, and the first line of its last problem.
pub fn context_lines(text: &str, problems: &[Problem]) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let run_start = lines.iter().rposition(|line| line.contains("starting up"));
    let from = run_start.unwrap_or(0);
    let mut keep: Vec<usize> = run_start.into_iter().collect();
    if let Some(command) = lines[from..]
        .iter()
        .position(|line| line.contains("/qemu-system-") || line.contains("/qemu-kvm"))
    {
        keep.push(from + command);
    }
    let last_problem_line = problems
        .last()
        .and_then(|problem| problem.text.as_deref())
        .and_then(|text| text.lines().next());
    if let Some(first_line) = last_problem_line
        && let Some(found) = lines[from..]
            .iter()
            .rposition(|line| !first_line.is_empty() && line.starts_with(first_line))
    {
        keep.push(from + found);
    }
    keep.sort_unstable();
    keep.dedup();
    keep.into_iter()
        .map(|index| {
            let line = lines[index];
            let mut end = line.len().min(CONTEXT_LINE_BYTES_MAX);
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line[..end].to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crashmesh_capture::spool::{Entry, Spool};
    use crashmesh_protocol::ProblemKind;

    const STARTING_UP: &str = "2024-02-01 08:00:00.123+0000: starting up libvirt version: 8.0.0, package: 1ubuntu7.8 (Ubuntu), qemu version: 6.2.0Debian 1:6.2+dfsg-2ubuntu6.15, kernel: 5.15.0-91-generic, hostname: node3\n";
    const COMMAND_LINE: &str = "LC_ALL=C PATH=/usr/local/sbin:/usr/bin HOME=/var/lib/libvirt/qemu/domain-4-win2019 /usr/bin/qemu-system-x86_64 -name guest=win2019,debug-threads=on -S -device pvpanic,ioport=1285\n";
    const EVENT: &str = "2024-02-01 09:13:37.456+0000: event GUEST_PANICKED received\n";
    const HYPERV: &str = "2024-02-01 09:13:37.500+0000: panic hyper-v: arg1='0x3b', arg2='0xc0000005', arg3='0xfffff80371a1b2c3', arg4='0xffffd0818e2fe920', arg5='0x0'\n";
    const CRASHED: &str = "2024-02-01 09:13:38.001+0000: shutting down, reason=crashed\n";

    fn entries(data_dir: &Path) -> Vec<Entry> {
        Spool::new(data_dir)
            .list()
            .unwrap()
            .into_iter()
            .map(|entry| entry.unwrap())
            .collect()
    }

    fn problems(data_dir: &Path) -> Vec<Problem> {
        entries(data_dir)
            .into_iter()
            .map(|entry| entry.meta.problem.unwrap())
            .collect()
    }

    fn config(dir: &Path) -> VmGuestConfig {
        VmGuestConfig {
            globs: vec![format!("{}/*.log", dir.display())],
            ..VmGuestConfig::default()
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

    /// Well after every write: the logs are quiet.
    fn later() -> u64 {
        crashmesh_capture::clock::now_ms() + 60_000
    }

    #[test]
    fn appended_panics_are_reported_once_with_their_domain_and_history_is_not() {
        let data = tempfile::tempdir().unwrap();
        let logs = tempfile::tempdir().unwrap();
        let log = logs.path().join("win2019.log");
        // History from before crashmesh: not reported.
        append(
            &log,
            &format!("{STARTING_UP}{COMMAND_LINE}{HYPERV}{CRASHED}"),
        );
        let mut watcher = VmGuestWatcher::new(data.path(), config(logs.path()));
        assert_eq!(watcher.poll_once(later()).reported, 0);
        assert!(data.path().join(STATE_FILE).exists());

        // A new run, whose panic event comes first and libvirt's details a poll later.
        append(&log, &format!("{STARTING_UP}{COMMAND_LINE}{EVENT}"));
        assert_eq!(watcher.poll_once(later()).reported, 1);
        append(&log, &format!("{HYPERV}{CRASHED}"));
        assert_eq!(watcher.poll_once(later()).reported, 0, "the same panic");
        let found = problems(data.path());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].kind, ProblemKind::VmGuestPanic);
        assert_eq!(found[0].process.as_deref(), Some("win2019"));
        assert_eq!(
            found[0].version.as_deref(),
            Some("6.2.0Debian 1:6.2+dfsg-2ubuntu6.15")
        );
        assert_eq!(
            found[0].executable.as_deref(),
            Some("/usr/bin/qemu-system-x86_64")
        );
        let entry = &entries(data.path())[0];
        assert_eq!(entry.meta.source, Source::VmGuest);
        assert_eq!(entry.meta.comm.as_deref(), Some("win2019"));
        assert!(entry.dir.join("win2019.log").is_file());
        // Known limit: details that arrive more than a quiet period after the event do
        // not refine the problem already reported (libvirt writes them together).
        assert_eq!(found[0].reason, "guest panicked");

        // After a restart nothing is read twice; the next run's panic is new.
        let mut restarted = VmGuestWatcher::new(data.path(), config(logs.path()));
        assert_eq!(restarted.poll_once(later()).reported, 0);
        append(&log, &format!("{STARTING_UP}{COMMAND_LINE}{HYPERV}"));
        assert_eq!(restarted.poll_once(later()).reported, 1);
        let mut reasons: Vec<String> = problems(data.path())
            .into_iter()
            .map(|problem| problem.reason)
            .collect();
        reasons.sort();
        assert_eq!(
            reasons,
            [
                "guest panicked",
                "guest panicked: hyper-v bugcheck 0x3b (0xc0000005)"
            ]
        );
    }

    #[test]
    fn a_log_is_read_when_quiet_and_whole_lines_only() {
        let data = tempfile::tempdir().unwrap();
        let logs = tempfile::tempdir().unwrap();
        let mut watcher = VmGuestWatcher::new(data.path(), config(logs.path()));
        watcher.poll_once(later());
        let log = logs.path().join("db1.log");
        append(&log, &format!("{STARTING_UP}{EVENT}"));
        // Just written: not yet.
        assert_eq!(
            watcher
                .poll_once(crashmesh_capture::clock::now_ms())
                .bytes_read,
            0
        );
        // A half-written line waits for its end.
        append(&log, "2024-02-01 09:13:38.001+0000: shutting do");
        let summary = watcher.poll_once(later());
        assert_eq!(
            summary.reported, 1,
            "a log that appears later is read whole"
        );
        assert_eq!(summary.bytes_read, (STARTING_UP.len() + EVENT.len()) as u64);
        append(&log, "wn, reason=crashed\n");
        assert_eq!(watcher.poll_once(later()).reported, 0);
        assert_eq!(problems(data.path())[0].process.as_deref(), Some("db1"));
    }

    #[test]
    fn rotation_finishes_the_old_file_and_truncation_starts_over() {
        let data = tempfile::tempdir().unwrap();
        let logs = tempfile::tempdir().unwrap();
        let log = logs.path().join("web.log");
        append(&log, &format!("{STARTING_UP}{COMMAND_LINE}"));
        let mut watcher = VmGuestWatcher::new(data.path(), config(logs.path()));
        watcher.poll_once(later());

        // virtlogd renames the full log and starts a new one; a panic was written to the
        // old file after our last read, and the run goes on in the new file.
        std::fs::rename(&log, logs.path().join("web.log.0")).unwrap();
        append(&logs.path().join("web.log.0"), EVENT);
        append(&log, CRASHED);
        let summary = watcher.poll_once(later());
        assert_eq!(summary.reported, 1, "{summary:?}");
        let found = problems(data.path());
        assert_eq!(
            found.len(),
            1,
            "the crash shutdown in the new file is the same panic"
        );
        assert_eq!(
            found[0].version.as_deref(),
            Some("6.2.0Debian 1:6.2+dfsg-2ubuntu6.15")
        );

        // copytruncate: same inode, smaller size.
        std::fs::write(&log, "").unwrap();
        append(&log, &format!("{STARTING_UP}{HYPERV}"));
        assert_eq!(watcher.poll_once(later()).reported, 1);
        assert_eq!(problems(data.path()).len(), 2);
    }

    #[test]
    fn context_keeps_the_run_start_the_command_and_the_last_problem() {
        let text = format!(
            "{STARTING_UP}{COMMAND_LINE}{HYPERV}{CRASHED}{STARTING_UP}{COMMAND_LINE}{EVENT}2024-02-01 10:00:00.000+0000: some other line\n"
        );
        let problems = crashmesh_parsers::parse_vm_guest_log("d", &text);
        let context = context_lines(&text, &problems);
        assert_eq!(
            context,
            [
                STARTING_UP.trim_end(),
                COMMAND_LINE.trim_end(),
                EVENT.trim_end()
            ]
        );
        // The context alone gives exactly the problems reported in its run.
        assert_eq!(
            crashmesh_parsers::parse_vm_guest_log("d", &context.join("\n")).len(),
            1
        );
        assert_eq!(
            domain_of(Path::new("/var/log/libvirt/qemu/win2019.log")),
            "win2019"
        );
    }
}

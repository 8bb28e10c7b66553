//! Kernel crashes of earlier boots, harvested once at daemon start: kdump's crash
//! directories (`/var/crash/<crash>/vmcore-dmesg.txt` and the `vmcore`) and pstore's dmesg
//! records (`/sys/fs/pstore/dmesg-<backend>-<id>`, one dump split in parts).
//!
//! # Invariants
//! - Nothing is harvested twice. Every crash has a stable key — kdump: the path, size and
//!   modification time of its log (or of its vmcore when there is no log); pstore: the
//!   blake3 hash of the reassembled dump, so a record that systemd-pstore moved from
//!   `/sys/fs/pstore` into `/var/lib/systemd/pstore` keeps its key. Keys are remembered in
//!   `harvested.json` in the data dir (at most [`HARVESTED_KEYS_MAX`], oldest dropped),
//!   saved durably after each crash is spooled; the entry id is derived from the key, so
//!   a crash between the two replays an entry the store records once.
//! - A vmcore is never read whole into memory and never copied unless
//!   `vmcore_attach_bytes_max` allows it; it is hashed (streaming) only up to
//!   `vmcore_hash_bytes_max`, otherwise identified by path, size and modification time.
//! - Reading is bounded: a crash's kernel log up to `dmesg_bytes_max` (its end kept), a
//!   pstore record up to [`PSTORE_RECORD_BYTES_MAX`], [`PSTORE_RECORDS_MAX`] records.
//!
//! The problem: the crash is the last problem the log shows at or before the first
//! `Kernel panic - not syncing` line (a panic's own trace follows its line), or the last
//! problem when the log never says it panicked (with kdump loaded the kernel jumps to the
//! crash kernel from the oops, before printing a panic). Its kind becomes `kernel_panic`
//! — the machine went down — and its signature is recomputed for that kind. A pstore dump
//! becomes a problem when it is a `Panic` dump or its text panicked (a `kernel_panic`), or
//! an `Oops` dump (the machine may have lived on: the kind stays the oops's); dumps of a
//! clean restart or power-off (`printk.always_kmsg_dump`) are remembered, not reported.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crashmesh_parsers::KernelLogOptions;
use crashmesh_protocol::signature::kernel_signature;
use crashmesh_protocol::{Problem, ProblemKind};
use serde::{Deserialize, Serialize};

use crate::config::{KdumpConfig, PstoreConfig};
use crate::detector;
use crashmesh_capture::spool::{Attachment, Source};

/// Keys of harvested crashes remembered; the oldest are forgotten beyond it.
pub const HARVESTED_KEYS_MAX: usize = 4096;
/// Bytes read of one pstore record (records are a few KiB).
pub const PSTORE_RECORD_BYTES_MAX: u64 = 1024 * 1024;
/// pstore records looked at per start.
pub const PSTORE_RECORDS_MAX: usize = 4096;
/// Crash directories looked at per kdump directory per start.
pub const KDUMP_CRASHES_MAX: usize = 1024;
/// Lines of the log kept as the text of a crash in which no problem was found.
pub const UNRECOGNIZED_TAIL_LINES_MAX: usize = 80;
/// Seconds between two parts of one pstore dump at most (they are written together).
const PSTORE_PARTS_SECONDS_APART_MAX: u64 = 60;

/// The state file's name in the data dir.
pub const STATE_FILE: &str = "harvested.json";
const STATE_FORMAT_VERSION: u32 = 1;

/// What was harvested already, persisted as `harvested.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HarvestedState {
    pub format_version: u32,
    /// Oldest first.
    pub harvested: Vec<HarvestedCrash>,
}

/// One harvested crash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HarvestedCrash {
    pub key: String,
    /// Where it was found (for people; the key decides).
    pub path: PathBuf,
    pub harvested_ms: u64,
}

impl HarvestedState {
    fn contains(&self, key: &str) -> bool {
        self.harvested.iter().any(|crash| crash.key == key)
    }

    fn insert(&mut self, key: String, path: PathBuf, now_ms: u64) {
        self.harvested.push(HarvestedCrash {
            key,
            path,
            harvested_ms: now_ms,
        });
        let excess = self.harvested.len().saturating_sub(HARVESTED_KEYS_MAX);
        self.harvested.drain(..excess);
    }
}

/// What a harvest did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HarvestSummary {
    /// Crashes spooled as problems.
    pub spooled: usize,
    /// Crashes skipped because they were harvested before.
    pub known: usize,
    /// Records remembered without a problem (pstore dumps of a clean restart).
    pub not_problems: usize,
    /// Crashes that could not be read or spooled (logged; retried at the next start).
    pub failed: usize,
}

/// The vmcore of a kdump crash, as recorded in the report (`vmcore.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmcoreInfo {
    pub path: PathBuf,
    pub bytes: u64,
    pub modified_ms: u64,
    /// blake3 of the whole file, when it is at most `vmcore_hash_bytes_max`.
    pub blake3: Option<String>,
    /// kdump did not finish writing it (`vmcore-incomplete`).
    pub incomplete: bool,
    /// The vmcore itself is in the report (`vmcore`).
    pub attached: bool,
}

/// Harvest kdump and pstore crashes of earlier boots into the spool. Runs on the blocking
/// pool; errors are logged per crash and never stop the others.
pub fn harvest(
    data_dir: &Path,
    kdump: &KdumpConfig,
    pstore: &PstoreConfig,
    now_ms: u64,
) -> HarvestSummary {
    let state_path = data_dir.join(STATE_FILE);
    let mut state: HarvestedState = detector::load_state(&state_path).unwrap_or_default();
    state.format_version = STATE_FORMAT_VERSION;
    let mut summary = HarvestSummary::default();
    let remember = |state: &mut HarvestedState, key: String, path: PathBuf| {
        state.insert(key, path, now_ms);
        if let Err(error) = detector::save_state(&state_path, state) {
            tracing::error!(%error, "cannot save what was harvested; it may be harvested again");
        }
    };
    if kdump.enabled {
        for crash in find_kdump_crashes(&kdump.dirs) {
            if state.contains(&crash.key) {
                summary.known += 1;
                continue;
            }
            match spool_kdump_crash(data_dir, &crash, kdump) {
                Ok(()) => {
                    tracing::info!(crash = %crash.dir.display(), "harvested a kdump crash");
                    summary.spooled += 1;
                    remember(&mut state, crash.key.clone(), crash.dir.clone());
                }
                Err(error) => {
                    tracing::error!(crash = %crash.dir.display(), %error, "cannot harvest a kdump crash");
                    summary.failed += 1;
                }
            }
        }
    }
    if pstore.enabled {
        for dump in find_pstore_dumps(&pstore.dirs) {
            let key = dump.key();
            if state.contains(&key) {
                summary.known += 1;
                continue;
            }
            let path = dump.parts[0].path.clone();
            match spool_pstore_dump(data_dir, &dump, &key) {
                Ok(true) => {
                    tracing::info!(record = %path.display(), "harvested a pstore dump");
                    summary.spooled += 1;
                    remember(&mut state, key, path);
                }
                Ok(false) => {
                    summary.not_problems += 1;
                    remember(&mut state, key, path);
                }
                Err(error) => {
                    tracing::error!(record = %path.display(), %error, "cannot harvest a pstore dump");
                    summary.failed += 1;
                }
            }
        }
    }
    summary
}

/// The harvest as a [`crate::detector::Detector`]: its first look harvests, and it is then
/// finished (crashes of earlier boots do not appear while the machine runs).
pub struct HarvestDetector {
    data_dir: PathBuf,
    kdump: KdumpConfig,
    pstore: PstoreConfig,
    done: bool,
}

impl HarvestDetector {
    pub fn new(data_dir: &Path, kdump: KdumpConfig, pstore: PstoreConfig) -> HarvestDetector {
        HarvestDetector {
            data_dir: data_dir.to_path_buf(),
            kdump,
            pstore,
            done: false,
        }
    }
}

impl crate::detector::Detector for HarvestDetector {
    const NAME: &'static str = "harvest";

    fn poll(&mut self, now_ms: u64) {
        let summary = harvest(&self.data_dir, &self.kdump, &self.pstore, now_ms);
        tracing::info!(?summary, "harvested kernel crashes of earlier boots");
        self.done = true;
    }

    fn finished(&self) -> bool {
        self.done
    }
}

/// Why one crash could not be harvested.
#[derive(Debug, thiserror::Error)]
pub enum HarvestError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Spool(#[from] crashmesh_capture::spool::SpoolError),
    /// A file that is not what kdump or pstore write: a symlink, a FIFO, a hard link, a
    /// file of another owner (planted in a directory others can write).
    #[error(transparent)]
    Refused(#[from] crashmesh_untrusted::OpenError),
}

/// Opens a file below a configured kdump or pstore directory the way a file others may
/// have planted is opened: through the directory's descriptor, no symlink below it, and
/// only a regular file owned by root with one link (kdump and the kernel write as root;
/// `/var/crash` is world-writable on some distributions).
fn open_crash_file(base: &Path, path: &Path) -> Result<crashmesh_untrusted::Opened, HarvestError> {
    let relative = path.strip_prefix(base).unwrap_or(path);
    Ok(crashmesh_untrusted::Directory::open(base)?
        .open_file(relative, crashmesh_untrusted::Rules::ROOT_SINGLE_LINK)?)
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> HarvestError + '_ {
    move |source| HarvestError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One kdump crash directory.
#[derive(Clone, Debug, PartialEq)]
pub struct KdumpCrash {
    /// The configured kdump directory it was found in.
    pub base: PathBuf,
    pub dir: PathBuf,
    /// `vmcore-dmesg.txt` (RHEL, Fedora, SUSE) or `dmesg.<stamp>` (Debian, Ubuntu).
    pub dmesg: Option<PathBuf>,
    /// `vmcore`, `vmcore.flat`, `dump.<stamp>` or `vmcore-incomplete`.
    pub vmcore: Option<PathBuf>,
    pub key: String,
}

/// Crash directories under each kdump directory, oldest name first. Only real
/// directories count (a symlink planted in `/var/crash` is not one).
pub fn find_kdump_crashes(dirs: &[PathBuf]) -> Vec<KdumpCrash> {
    use crashmesh_untrusted::{Directory, EntryKind};
    let mut crashes = Vec::new();
    for dir in dirs {
        let listed = Directory::open(dir).and_then(|directory| {
            let names = directory.entries()?;
            Ok((directory, names))
        });
        let (directory, entries) = match listed {
            Ok(listed) => listed,
            Err(error) if error.is_not_found() => continue,
            Err(error) => {
                tracing::warn!(%error, "cannot list a kdump directory");
                continue;
            }
        };
        let mut subdirs: Vec<String> = entries
            .into_iter()
            .filter(|(_, kind)| *kind == EntryKind::Directory)
            .map(|(name, _)| name)
            .collect();
        if subdirs.len() > KDUMP_CRASHES_MAX {
            tracing::warn!(dir = %dir.display(), count = subdirs.len(), "too many kdump crashes; the newest are harvested");
            subdirs.drain(..subdirs.len() - KDUMP_CRASHES_MAX);
        }
        crashes.extend(
            subdirs
                .into_iter()
                .filter_map(|name| kdump_crash(&directory, &name)),
        );
    }
    crashes
}

fn kdump_crash(base: &crashmesh_untrusted::Directory, name: &str) -> Option<KdumpCrash> {
    use crashmesh_untrusted::EntryKind;
    let crash = match base.open_dir(Path::new(name)) {
        Ok(crash) => crash,
        Err(error) => {
            tracing::warn!(%error, "a kdump crash directory is not opened");
            return None;
        }
    };
    let names: Vec<String> = crash
        .entries()
        .ok()?
        .into_iter()
        .filter(|(_, kind)| *kind == EntryKind::File)
        .map(|(name, _)| name)
        .collect();
    let dir = crash.path().to_path_buf();
    let find = |exact: &[&str], prefix: &str| {
        exact
            .iter()
            .find(|name| names.iter().any(|n| n == *name))
            .map(|name| name.to_string())
            .or_else(|| names.iter().find(|n| n.starts_with(prefix)).cloned())
            .map(|name| dir.join(name))
    };
    let dmesg = find(&["vmcore-dmesg.txt"], "dmesg.");
    let vmcore = find(&["vmcore", "vmcore.flat", "vmcore-incomplete"], "dump.");
    let identity = dmesg.as_ref().or(vmcore.as_ref())?;
    let metadata = match open_crash_file(base.path(), identity) {
        Ok(opened) => opened.metadata,
        Err(error) => {
            tracing::warn!(%error, "a kdump crash is not harvested");
            return None;
        }
    };
    let key = format!(
        "kdump:{}:{}:{}",
        identity.display(),
        metadata.len(),
        detector::modified_ms(&metadata)
    );
    Some(KdumpCrash {
        base: base.path().to_path_buf(),
        dir,
        dmesg,
        vmcore,
        key,
    })
}

/// The last `bytes_max` bytes of a crash's file, as text (lossy), its modification time
/// and its length.
fn read_tail(base: &Path, path: &Path, bytes_max: u64) -> Result<(String, u64, u64), HarvestError> {
    let crashmesh_untrusted::Opened { mut file, metadata } = open_crash_file(base, path)?;
    let start = metadata.len().saturating_sub(bytes_max);
    file.seek(SeekFrom::Start(start)).map_err(io_error(path))?;
    let mut bytes = Vec::new();
    file.take(bytes_max)
        .read_to_end(&mut bytes)
        .map_err(io_error(path))?;
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if start > 0 {
        // Start at a whole line.
        if let Some(newline) = text.find('\n') {
            text.drain(..=newline);
        }
    }
    Ok((text, detector::modified_ms(&metadata), metadata.len()))
}

fn spool_kdump_crash(
    data_dir: &Path,
    crash: &KdumpCrash,
    config: &KdumpConfig,
) -> Result<(), HarvestError> {
    let mut notes = vec![format!("harvested from kdump: {}", crash.dir.display())];
    let (text, time_ms) = match &crash.dmesg {
        Some(path) => {
            let (text, modified_ms, length) =
                read_tail(&crash.base, path, config.dmesg_bytes_max.0)?;
            if length > config.dmesg_bytes_max.0 {
                notes.push(format!(
                    "{}: only its last {} of {length} bytes were read",
                    path.display(),
                    config.dmesg_bytes_max.0
                ));
            }
            (Some(text), modified_ms)
        }
        None => (None, 0),
    };
    let vmcore = match &crash.vmcore {
        Some(path) => Some(vmcore_info(&crash.base, path, config)?),
        None => None,
    };
    let time_ms = match (&vmcore, time_ms) {
        (_, time) if time > 0 => time,
        (Some(vmcore), _) => vmcore.modified_ms,
        _ => crashmesh_capture::clock::now_ms(),
    };
    let mut problem = match &text {
        Some(text) => crash_problem(text, true),
        None => {
            let mut problem = Problem::new(
                ProblemKind::KernelPanic,
                "kernel crash (kdump saved a vmcore but no kernel log)",
            );
            problem.signature = kernel_signature(ProblemKind::KernelPanic, &[], &problem.reason).0;
            problem
        }
    };
    if let Some(vmcore) = &vmcore {
        notes.push(match &vmcore.blake3 {
            Some(hash) => format!(
                "vmcore {} ({} bytes, blake3 {hash})",
                vmcore.path.display(),
                vmcore.bytes
            ),
            None => format!(
                "vmcore {} ({} bytes, modified {} ms; larger than vmcore_hash_bytes_max, not hashed)",
                vmcore.path.display(),
                vmcore.bytes,
                vmcore.modified_ms
            ),
        });
        if vmcore.incomplete {
            notes.push("kdump did not finish writing the vmcore".to_string());
            problem
                .analysis_error
                .get_or_insert_with(|| "the vmcore is incomplete".to_string());
        }
    }
    let vmcore_json = vmcore
        .as_ref()
        .map(|vmcore| serde_json::to_vec_pretty(vmcore).expect("vmcore info serializes"));
    let mut attachments = Vec::new();
    if let Some(text) = &text {
        attachments.push((
            "vmcore-dmesg.txt".to_string(),
            Attachment::Bytes(text.as_bytes()),
        ));
    }
    if let Some(json) = &vmcore_json {
        attachments.push(("vmcore.json".to_string(), Attachment::Bytes(json)));
    }
    if let Some(vmcore) = vmcore.as_ref().filter(|vmcore| vmcore.attached) {
        attachments.push((
            "vmcore".to_string(),
            Attachment::File {
                file: open_crash_file(&crash.base, &vmcore.path)?.file,
                path: &vmcore.path,
                bytes_max: vmcore.bytes,
            },
        ));
    }
    crashmesh_capture::spool::write_found(
        data_dir,
        crashmesh_capture::spool::Found {
            entry_id: crashmesh_capture::spool::stable_entry_id("kdump", &[crash.key.as_bytes()]),
            source: Source::Kdump,
            time_ms,
            comm: problem.process.clone(),
            problem,
            pid: None,
            uid: Some(0),
            attachments,
            notes,
            suppressed_count: None,
        },
    )?;
    Ok(())
}

/// Size, time and (when small enough) the blake3 hash of a vmcore, read streaming.
pub fn vmcore_info(
    base: &Path,
    path: &Path,
    config: &KdumpConfig,
) -> Result<VmcoreInfo, HarvestError> {
    let crashmesh_untrusted::Opened { file, metadata } = open_crash_file(base, path)?;
    let bytes = metadata.len();
    let blake3 = if bytes <= config.vmcore_hash_bytes_max.0 {
        let mut hasher = blake3::Hasher::new();
        // A 1 MiB buffer: constant memory whatever the vmcore's size.
        let mut reader = std::io::BufReader::with_capacity(1024 * 1024, file);
        hasher.update_reader(&mut reader).map_err(io_error(path))?;
        Some(hasher.finalize().to_hex().to_string())
    } else {
        None
    };
    let attach_max = config.vmcore_attach_bytes_max.0;
    Ok(VmcoreInfo {
        path: path.to_path_buf(),
        bytes,
        modified_ms: detector::modified_ms(&metadata),
        blake3,
        incomplete: path
            .file_name()
            .is_some_and(|name| name == "vmcore-incomplete"),
        attached: attach_max > 0 && bytes <= attach_max,
    })
}

/// The problem of a crashed kernel's log (see the module's docs). `crashed` says the
/// machine is known to have gone down (kdump ran, or pstore says `Panic`), so the problem
/// becomes a `kernel_panic` even when the log never printed a panic line.
pub fn crash_problem(log: &str, crashed: bool) -> Problem {
    let options = KernelLogOptions {
        // ABRT's marker belongs to the live system; the crash comes after it anyway.
        honor_abrt_reported_marker: false,
        ..KernelLogOptions::default()
    };
    let problems: Vec<Problem> = crashmesh_parsers::parse_kernel_log_with(log, &options)
        .into_iter()
        .filter(|problem| problem.kind != ProblemKind::SegfaultHint)
        .collect();
    let panic_at = log.find("Kernel panic - not syncing");
    // Where each problem starts in the log, searched in order so repeats line up.
    let mut cursor = 0;
    let mut positions = Vec::with_capacity(problems.len());
    for problem in &problems {
        let first_line = problem
            .text
            .as_deref()
            .and_then(|text| text.lines().next())
            .unwrap_or(&problem.reason)
            .trim();
        let position = log
            .get(cursor..)
            .and_then(|rest| rest.find(first_line))
            .map_or(cursor, |found| cursor + found);
        positions.push(position);
        cursor = position + 1;
    }
    let chosen = match panic_at {
        Some(panic_at) => positions
            .iter()
            .rposition(|&position| position <= panic_at)
            .or_else(|| (!problems.is_empty()).then_some(0)),
        None => problems.len().checked_sub(1),
    };
    let panicked = crashed || panic_at.is_some();
    let mut problem = match chosen {
        Some(index) => problems[index].clone(),
        None => {
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .take(UNRECOGNIZED_TAIL_LINES_MAX)
                .collect();
            let text: Vec<&str> = tail.into_iter().rev().collect();
            let mut problem = Problem::new(
                ProblemKind::KernelPanic,
                match panic_at {
                    Some(_) => "kernel panic (its report was not recognized)",
                    None => "kernel crash (no problem found in its log)",
                },
            );
            problem.text = Some(text.join("\n"));
            problem.version = linux_version(log);
            problem.signature = kernel_signature(ProblemKind::KernelPanic, &[], &problem.reason).0;
            return problem;
        }
    };
    if panicked && problem.kind != ProblemKind::KernelPanic {
        problem.kind = ProblemKind::KernelPanic;
        problem.signature =
            kernel_signature(ProblemKind::KernelPanic, &problem.frames, &problem.reason).0;
    }
    if problem.version.is_none() {
        problem.version = linux_version(log);
    }
    problem
}

/// The kernel version from a log's `Linux version X` line.
fn linux_version(log: &str) -> Option<String> {
    let start = log.find("Linux version ")? + "Linux version ".len();
    let version = log[start..].split_whitespace().next()?;
    Some(version.to_string())
}

/// One pstore record file.
#[derive(Clone, Debug, PartialEq)]
pub struct PstoreRecord {
    /// The configured pstore directory it was found in.
    pub base: PathBuf,
    pub path: PathBuf,
    /// `ramoops`, `efi`, … (from `dmesg-<backend>-<id>`).
    pub backend: String,
    /// `Panic`, `Oops`, `Emergency`, `Restart`, … from the `Oops#1 Part1` header.
    pub reason: String,
    /// The `#N` of the header: the dump's number in its boot.
    pub count: u32,
    /// The `PartN` of the header: part 1 holds the end of the log.
    pub part: u32,
    pub modified_ms: u64,
    /// The record's text without its header line.
    pub text: String,
}

/// One kernel log dump, its parts in log order (oldest text first).
#[derive(Clone, Debug, PartialEq)]
pub struct PstoreDump {
    pub parts: Vec<PstoreRecord>,
}

impl PstoreDump {
    /// The dump's text, parts joined in log order.
    pub fn text(&self) -> String {
        let mut text = String::new();
        for part in &self.parts {
            text.push_str(&part.text);
            if !text.ends_with('\n') {
                text.push('\n');
            }
        }
        text
    }

    /// The stable key: the hash of the dump's text, wherever its files are.
    pub fn key(&self) -> String {
        format!("pstore:{}", blake3::hash(self.text().as_bytes()).to_hex())
    }

    pub fn reason(&self) -> &str {
        &self.parts[0].reason
    }

    /// Did the kernel die (a `Panic` dump, or a panic line in its text)?
    pub fn panicked(&self) -> bool {
        self.reason() == "Panic"
            || self
                .parts
                .iter()
                .any(|part| part.text.contains("Kernel panic - not syncing"))
    }
}

/// `Oops#1 Part2` → (`Oops`, 1, 2).
fn parse_pstore_header(line: &str) -> Option<(String, u32, u32)> {
    let (reason, rest) = line.trim_end().split_once('#')?;
    let (count, part) = rest.split_once(" Part")?;
    if reason.is_empty() || !reason.chars().all(|c| c.is_ascii_alphabetic()) {
        return None;
    }
    Some((reason.to_string(), count.parse().ok()?, part.parse().ok()?))
}

/// Read one `dmesg-<backend>-<id>` record below the pstore directory `base`.
pub fn read_pstore_record(base: &Path, path: &Path) -> Result<PstoreRecord, HarvestError> {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let backend = name
        .strip_prefix("dmesg-")
        .and_then(|rest| rest.split('-').next())
        .unwrap_or("unknown")
        .to_string();
    let crashmesh_untrusted::Opened { file, metadata } = open_crash_file(base, path)?;
    let mut bytes = Vec::new();
    file.take(PSTORE_RECORD_BYTES_MAX)
        .read_to_end(&mut bytes)
        .map_err(io_error(path))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (first_line, rest) = text.split_once('\n').unwrap_or((text.as_str(), ""));
    let (reason, count, part, text) = match parse_pstore_header(first_line) {
        Some((reason, count, part)) => (reason, count, part, rest.to_string()),
        None => ("Unknown".to_string(), 0, 1, text.clone()),
    };
    Ok(PstoreRecord {
        base: base.to_path_buf(),
        path: path.to_path_buf(),
        backend,
        reason,
        count,
        part,
        modified_ms: detector::modified_ms(&metadata),
        text,
    })
}

/// The dmesg record files directly in `dirs` and one level below (systemd-pstore's
/// per-boot directories), each with the configured directory it is in. Only real
/// directories and regular files count.
fn pstore_record_paths(dirs: &[PathBuf]) -> Vec<(PathBuf, PathBuf)> {
    use crashmesh_untrusted::{Directory, EntryKind};
    let mut paths = Vec::new();
    let look = |directory: &Directory, base: &Path, paths: &mut Vec<(PathBuf, PathBuf)>| {
        let mut subdirs = Vec::new();
        for (name, kind) in directory.entries().unwrap_or_default() {
            if kind == EntryKind::Directory {
                subdirs.push(name);
            } else if kind == EntryKind::File && name.starts_with("dmesg-") {
                if name.ends_with(".enc.z") {
                    // The kernel could not decompress it; there is no text to read.
                    tracing::debug!(record = %directory.path().join(&name).display(), "compressed pstore record skipped");
                    continue;
                }
                paths.push((base.to_path_buf(), directory.path().join(name)));
            }
        }
        subdirs
    };
    for dir in dirs {
        let Ok(directory) = Directory::open(dir) else {
            continue;
        };
        for subdir in look(&directory, dir, &mut paths) {
            if let Ok(below) = directory.open_dir(Path::new(&subdir)) {
                look(&below, dir, &mut paths);
            }
        }
    }
    paths.sort();
    paths.dedup();
    paths.truncate(PSTORE_RECORDS_MAX);
    paths
}

/// Every dump the pstore directories hold: records grouped by directory, backend, reason
/// and dump number, split where a part number repeats or the parts are far apart in time
/// (two boots' `Panic#1`), parts put in log order.
pub fn find_pstore_dumps(dirs: &[PathBuf]) -> Vec<PstoreDump> {
    let mut groups: BTreeMap<(PathBuf, String, String, u32), Vec<PstoreRecord>> = BTreeMap::new();
    for (base, path) in pstore_record_paths(dirs) {
        match read_pstore_record(&base, &path) {
            Ok(record) => {
                let parent = path.parent().unwrap_or(Path::new("")).to_path_buf();
                groups
                    .entry((
                        parent,
                        record.backend.clone(),
                        record.reason.clone(),
                        record.count,
                    ))
                    .or_default()
                    .push(record);
            }
            Err(error) => tracing::warn!(%error, "cannot read a pstore record"),
        }
    }
    let mut dumps = Vec::new();
    for (_, mut records) in groups {
        records.sort_by_key(|record| (record.modified_ms, record.part));
        let mut current: Vec<PstoreRecord> = Vec::new();
        for record in records {
            let apart = current.last().is_some_and(|last| {
                record.modified_ms.abs_diff(last.modified_ms)
                    > PSTORE_PARTS_SECONDS_APART_MAX * 1000
            });
            let repeated = current.iter().any(|part| part.part == record.part);
            if apart || repeated {
                dumps.push(finish_dump(std::mem::take(&mut current)));
            }
            current.push(record);
        }
        if !current.is_empty() {
            dumps.push(finish_dump(current));
        }
    }
    dumps.sort_by_key(|dump| dump.parts[0].modified_ms);
    dumps
}

fn finish_dump(mut parts: Vec<PstoreRecord>) -> PstoreDump {
    // Part 1 is the end of the log: the highest part is its oldest text.
    parts.sort_by_key(|part| std::cmp::Reverse(part.part));
    PstoreDump { parts }
}

/// Spool a pstore dump; false when it holds no problem (a dump of a clean restart).
fn spool_pstore_dump(data_dir: &Path, dump: &PstoreDump, key: &str) -> Result<bool, HarvestError> {
    let text = dump.text();
    let panicked = dump.panicked();
    // A dump of a clean restart or power-off (printk.always_kmsg_dump) is no problem.
    if !panicked && dump.reason() != "Oops" {
        return Ok(false);
    }
    let problem = crash_problem(&text, panicked);
    let mut notes = vec![format!(
        "harvested from pstore: {} {}#{} in {} part(s)",
        dump.parts[0].backend,
        dump.reason(),
        dump.parts[0].count,
        dump.parts.len()
    )];
    let mut attachments = vec![(
        "pstore-dmesg.txt".to_string(),
        Attachment::Bytes(text.as_bytes()),
    )];
    for part in &dump.parts {
        let name = part
            .path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        attachments.push((
            format!("pstore/{name}"),
            Attachment::File {
                file: open_crash_file(&part.base, &part.path)?.file,
                path: &part.path,
                bytes_max: PSTORE_RECORD_BYTES_MAX,
            },
        ));
        notes.push(format!("record {}", part.path.display()));
    }
    let time_ms = dump
        .parts
        .iter()
        .map(|part| part.modified_ms)
        .min()
        .unwrap_or(0);
    crashmesh_capture::spool::write_found(
        data_dir,
        crashmesh_capture::spool::Found {
            entry_id: crashmesh_capture::spool::stable_entry_id("pstore", &[key.as_bytes()]),
            source: Source::Pstore,
            time_ms,
            comm: problem.process.clone(),
            problem,
            pid: None,
            uid: Some(0),
            attachments,
            notes,
            suppressed_count: None,
        },
    )?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crashmesh_capture::config::ByteSize;
    use crashmesh_capture::spool::{Entry, Spool};

    const CORPUS: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../parsers/tests/corpus/kernel/abrt-examples"
    );

    fn corpus(name: &str) -> String {
        std::fs::read_to_string(format!("{CORPUS}/{name}")).expect("corpus file")
    }

    fn entries(data_dir: &Path) -> Vec<Entry> {
        Spool::new(data_dir)
            .list()
            .unwrap()
            .into_iter()
            .map(|entry| entry.unwrap())
            .collect()
    }

    fn kdump_config(dir: &Path) -> KdumpConfig {
        KdumpConfig {
            dirs: vec![dir.to_path_buf()],
            ..KdumpConfig::default()
        }
    }

    fn no_pstore() -> PstoreConfig {
        PstoreConfig {
            enabled: false,
            dirs: Vec::new(),
        }
    }

    /// A crashed boot's log: a warning long before, the fatal oops, the panic it caused,
    /// and a warning printed while the kernel was going down.
    fn crashed_boot_log() -> String {
        format!(
            "[    0.000000] Linux version 3.10.0-test.x86_64 (builder@example) #1 SMP\n{}{}[   72.000000] Kernel panic - not syncing: Fatal exception\n{}",
            corpus("1_oops.test"),
            corpus("debug_messages.test"),
            corpus("cut_here.test"),
        )
    }

    #[test]
    fn a_kdump_crash_becomes_one_kernel_panic_with_its_oops_and_vmcore_hash() {
        let data = tempfile::tempdir().unwrap();
        let crash_root = tempfile::tempdir().unwrap();
        let crash_dir = crash_root.path().join("127.0.0.1-2024-01-01-10:00:00");
        std::fs::create_dir(&crash_dir).unwrap();
        std::fs::write(crash_dir.join("vmcore-dmesg.txt"), crashed_boot_log()).unwrap();
        let vmcore: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(crash_dir.join("vmcore"), &vmcore).unwrap();
        let config = kdump_config(crash_root.path());

        let summary = harvest(data.path(), &config, &no_pstore(), 1_000);
        assert_eq!(summary.spooled, 1, "{summary:?}");
        let listed = entries(data.path());
        assert_eq!(listed.len(), 1);
        let meta = &listed[0].meta;
        assert_eq!(meta.source, Source::Kdump);
        let problem = meta.problem.as_ref().unwrap();
        // The fatal oops, not the earlier warning nor the one printed while going down.
        let oops = &crashmesh_parsers::parse_kernel_log(&corpus("debug_messages.test"))[0];
        assert_eq!(problem.kind, ProblemKind::KernelPanic);
        assert_eq!(problem.reason, oops.reason);
        assert_eq!(problem.frames, oops.frames);
        assert_eq!(problem.text, oops.text);
        assert_eq!(
            problem.signature,
            kernel_signature(ProblemKind::KernelPanic, &oops.frames, &oops.reason).0
        );
        assert_ne!(problem.signature, oops.signature, "the kind is part of it");
        assert_eq!(meta.proc_files, ["vmcore-dmesg.txt", "vmcore.json"]);
        let dmesg = std::fs::read_to_string(listed[0].dir.join("vmcore-dmesg.txt")).unwrap();
        assert_eq!(dmesg, crashed_boot_log());
        let info: VmcoreInfo =
            serde_json::from_slice(&std::fs::read(listed[0].dir.join("vmcore.json")).unwrap())
                .unwrap();
        let hash = blake3::hash(&vmcore).to_hex().to_string();
        assert_eq!(info.blake3.as_deref(), Some(hash.as_str()));
        assert_eq!(info.bytes, vmcore.len() as u64);
        assert!(!info.attached && !listed[0].dir.join("vmcore").exists());
        assert!(
            meta.notes.iter().any(|note| note.contains(&hash)),
            "{:?}",
            meta.notes
        );

        // Never twice: not while the entry waits, not after it was indexed and removed.
        assert_eq!(harvest(data.path(), &config, &no_pstore(), 2_000).known, 1);
        std::fs::remove_dir_all(&listed[0].dir).unwrap();
        let again = harvest(data.path(), &config, &no_pstore(), 3_000);
        assert_eq!((again.spooled, again.known), (0, 1));
        assert!(entries(data.path()).is_empty());
        // A new crash is harvested; the old one still is not.
        let second = crash_root.path().join("127.0.0.1-2024-02-01-10:00:00");
        std::fs::create_dir(&second).unwrap();
        std::fs::write(
            second.join("vmcore-dmesg.txt"),
            corpus("oops-without-addrs.test"),
        )
        .unwrap();
        let third = harvest(data.path(), &config, &no_pstore(), 4_000);
        assert_eq!((third.spooled, third.known), (1, 1));
        let problem = entries(data.path())[0].meta.problem.clone().unwrap();
        assert_eq!(
            problem.reason,
            "Kernel panic - not syncing: sysrq triggered crash"
        );
        let state: HarvestedState = detector::load_state(&data.path().join(STATE_FILE)).unwrap();
        assert_eq!(state.harvested.len(), 2);
    }

    /// `/var/crash` is world-writable (3777) on Ubuntu: what a local user can plant there
    /// must not make root read another file into the store, nor block the harvest.
    #[test]
    fn what_a_user_plants_in_the_kdump_directory_is_not_harvested() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("shadow");
        std::fs::write(&secret, "root:$6$secret-hash:19000:0:99999:7:::\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let crash_root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(crash_root.path(), std::fs::Permissions::from_mode(0o3777))
            .unwrap();
        let plant = |name: &str| {
            let dir = crash_root.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            dir.join("vmcore-dmesg.txt")
        };
        // A link to a root-only file, in place of the log.
        symlink(&secret, plant("1-symlink")).unwrap();
        // A hard link to it (possible where protected_hardlinks is off).
        std::fs::hard_link(&secret, plant("2-hardlink")).unwrap();
        // A FIFO nobody writes: a plain open would wait forever.
        let fifo = plant("3-fifo");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o666) }, 0);
        // A whole crash directory that is a link to one elsewhere.
        let elsewhere = outside.path().join("crash");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::hard_link(&secret, elsewhere.join("vmcore-dmesg.txt")).unwrap();
        symlink(&elsewhere, crash_root.path().join("4-linked-dir")).unwrap();
        // A log a user wrote themselves: a made-up panic is not root's kdump.
        let forged = plant("5-users-own");
        std::fs::write(&forged, crashed_boot_log()).unwrap();
        std::os::unix::fs::chown(&forged, Some(4242), Some(4242)).unwrap();
        // And one real crash, so the harvest is seen to run.
        std::fs::write(plant("6-real"), crashed_boot_log()).unwrap();

        let data = tempfile::tempdir().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        let (data_dir, config) = (data.path().to_path_buf(), kdump_config(crash_root.path()));
        std::thread::spawn(move || {
            sender
                .send(harvest(&data_dir, &config, &no_pstore(), 1_000))
                .unwrap()
        });
        let summary = receiver
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the harvest blocked");
        assert_eq!(summary.spooled, 1, "{summary:?}");
        let listed = entries(data.path());
        assert_eq!(listed.len(), 1);
        assert!(
            listed[0].meta.notes[0].ends_with("6-real"),
            "{:?}",
            listed[0].meta.notes
        );
        let mut stored = String::new();
        for entry in &listed {
            for file in &entry.meta.proc_files {
                stored.push_str(&std::fs::read_to_string(entry.dir.join(file)).unwrap());
            }
        }
        assert!(!stored.contains("secret-hash"));
    }

    #[test]
    fn a_big_vmcore_is_not_hashed_and_a_small_one_is_attached_only_when_allowed() {
        let crash_root = tempfile::tempdir().unwrap();
        let crash_dir = crash_root.path().join("202401011000");
        std::fs::create_dir(&crash_dir).unwrap();
        // Debian and Ubuntu name the files dmesg.<stamp> and dump.<stamp>.
        std::fs::write(
            crash_dir.join("dmesg.202401011000"),
            corpus("oops9_ppc64.test"),
        )
        .unwrap();
        std::fs::write(crash_dir.join("dump.202401011000"), vec![7u8; 4096]).unwrap();

        let data = tempfile::tempdir().unwrap();
        let config = KdumpConfig {
            vmcore_hash_bytes_max: ByteSize(4095),
            ..kdump_config(crash_root.path())
        };
        assert_eq!(harvest(data.path(), &config, &no_pstore(), 1).spooled, 1);
        let entry = &entries(data.path())[0];
        let info: VmcoreInfo =
            serde_json::from_slice(&std::fs::read(entry.dir.join("vmcore.json")).unwrap()).unwrap();
        assert_eq!(
            (info.blake3, info.bytes, info.attached),
            (None, 4096, false)
        );
        assert!(info.modified_ms > 0);
        assert!(
            entry
                .meta
                .notes
                .iter()
                .any(|note| note.contains("not hashed"))
        );
        assert_eq!(
            entry.meta.problem.as_ref().unwrap().kind,
            ProblemKind::KernelPanic,
            "kdump ran, so the kernel died, even without a panic line"
        );

        let data = tempfile::tempdir().unwrap();
        let config = KdumpConfig {
            vmcore_attach_bytes_max: ByteSize(4096),
            ..kdump_config(crash_root.path())
        };
        assert_eq!(harvest(data.path(), &config, &no_pstore(), 1).spooled, 1);
        let entry = &entries(data.path())[0];
        assert_eq!(
            std::fs::read(entry.dir.join("vmcore")).unwrap(),
            vec![7u8; 4096]
        );
        assert!(entry.meta.proc_files.contains(&"vmcore".to_string()));
    }

    #[test]
    fn the_crash_is_the_last_problem_up_to_the_panic() {
        // A panic with its own trace (sysrq) after many other lines.
        let problem = crash_problem(&corpus("oops-without-addrs.test"), false);
        assert_eq!(problem.kind, ProblemKind::KernelPanic);
        assert!(!problem.frames.is_empty());
        // An oops without a panic line (kdump jumps from the oops): kept as the oops when
        // nothing says the machine died, marked a panic when it did.
        let log = corpus("oops10_s390x.test");
        let oops = crash_problem(&log, false);
        assert_eq!(oops.kind, ProblemKind::KernelOops);
        assert_eq!(oops.reason, "kernel BUG at drivers/scsi/scsi_lib.c:660!");
        assert_eq!(crash_problem(&log, true).kind, ProblemKind::KernelPanic);
        // Nothing recognizable: still a problem, with the log's end and its version.
        let unknown = crash_problem(
            "[    0.000000] Linux version 6.1.0-9-amd64 (debian-kernel@lists.debian.org)\n[    1.0] hello\n",
            true,
        );
        assert_eq!(unknown.kind, ProblemKind::KernelPanic);
        assert_eq!(unknown.version.as_deref(), Some("6.1.0-9-amd64"));
        assert!(unknown.text.as_deref().unwrap().ends_with("hello"));
        assert!(!unknown.signature.is_empty());
    }

    fn write_record(dir: &Path, name: &str, header: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("{header}\n{body}")).unwrap();
        path
    }

    fn set_modified_secs_ago(path: &Path, secs: u64) {
        let time = std::time::SystemTime::now() - std::time::Duration::from_secs(secs);
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(time)
            .unwrap();
    }

    #[test]
    fn pstore_parts_are_reassembled_harvested_once_and_followed_when_moved() {
        let pstore = tempfile::tempdir().unwrap();
        let log = format!(
            "{}[   72.000000] Kernel panic - not syncing: Fatal exception\n",
            corpus("debug_messages.test")
        );
        let lines: Vec<&str> = log.lines().collect();
        let third = lines.len() / 3;
        let chunk = |range: std::ops::Range<usize>| lines[range].join("\n") + "\n";
        // Part 1 is the end of the log; ramoops numbers its files in writing order.
        write_record(
            pstore.path(),
            "dmesg-ramoops-0",
            "Panic#1 Part1",
            &chunk(2 * third..lines.len()),
        );
        write_record(
            pstore.path(),
            "dmesg-ramoops-1",
            "Panic#1 Part2",
            &chunk(third..2 * third),
        );
        write_record(
            pstore.path(),
            "dmesg-ramoops-2",
            "Panic#1 Part3",
            &chunk(0..third),
        );
        // A clean reboot's dump (printk.always_kmsg_dump) and another boot's panic.
        write_record(
            pstore.path(),
            "dmesg-ramoops-3",
            "Restart#1 Part1",
            "[ 1.0] reboot: Restarting system\n",
        );
        let older = write_record(
            pstore.path(),
            "dmesg-efi-150000000001001",
            "Panic#1 Part1",
            &corpus("kernel_panic_oom.test"),
        );
        set_modified_secs_ago(&older, 86_400);
        std::fs::write(
            pstore.path().join("console-ramoops-0"),
            "not a dmesg record",
        )
        .unwrap();
        std::fs::write(pstore.path().join("dmesg-ramoops-9.enc.z"), [0x78, 0x9c, 0]).unwrap();

        let dumps = find_pstore_dumps(&[pstore.path().to_path_buf()]);
        assert_eq!(dumps.len(), 3, "{dumps:#?}");
        let panic = dumps
            .iter()
            .find(|dump| dump.parts.len() == 3)
            .expect("the split dump");
        assert_eq!(panic.text(), log);
        assert_eq!(
            panic.parts.iter().map(|part| part.part).collect::<Vec<_>>(),
            [3, 2, 1]
        );

        let data = tempfile::tempdir().unwrap();
        let config = PstoreConfig {
            enabled: true,
            dirs: vec![pstore.path().to_path_buf()],
        };
        let no_kdump = KdumpConfig {
            enabled: false,
            ..KdumpConfig::default()
        };
        let summary = harvest(data.path(), &no_kdump, &config, 1);
        assert_eq!(
            (summary.spooled, summary.not_problems),
            (2, 1),
            "{summary:?}"
        );
        let listed = entries(data.path());
        let problems: Vec<_> = listed
            .iter()
            .map(|entry| entry.meta.problem.clone().unwrap())
            .collect();
        assert!(
            listed
                .iter()
                .all(|entry| entry.meta.source == Source::Pstore)
        );
        let oops = &crashmesh_parsers::parse_kernel_log(&corpus("debug_messages.test"))[0];
        let from_parts = problems
            .iter()
            .find(|problem| problem.reason == oops.reason)
            .expect("the oops from the parts");
        assert_eq!(from_parts.kind, ProblemKind::KernelPanic);
        assert_eq!(from_parts.frames, oops.frames);
        let oom = problems
            .iter()
            .find(|problem| problem.reason.contains("panic_on_oom"))
            .expect("the other boot's panic");
        assert_eq!(oom.kind, ProblemKind::KernelPanic);
        let with_parts = listed
            .iter()
            .find(|entry| entry.meta.proc_files.len() == 4)
            .expect("the text and three parts");
        assert_eq!(
            std::fs::read_to_string(with_parts.dir.join("pstore-dmesg.txt")).unwrap(),
            log
        );
        assert!(with_parts.dir.join("pstore/dmesg-ramoops-2").is_file());

        // systemd-pstore moves the records into /var/lib/systemd/pstore/<id>/: still known.
        let archive = tempfile::tempdir().unwrap();
        let moved = archive.path().join("1700000000");
        std::fs::create_dir(&moved).unwrap();
        for entry in std::fs::read_dir(pstore.path()).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), moved.join(entry.file_name())).unwrap();
            std::fs::remove_file(entry.path()).unwrap();
        }
        let config = PstoreConfig {
            enabled: true,
            dirs: vec![pstore.path().to_path_buf(), archive.path().to_path_buf()],
        };
        let again = harvest(data.path(), &no_kdump, &config, 2);
        assert_eq!((again.spooled, again.known), (0, 3), "{again:?}");
    }

    #[test]
    fn pstore_headers_parse() {
        assert_eq!(
            parse_pstore_header("Oops#1 Part1"),
            Some(("Oops".into(), 1, 1))
        );
        assert_eq!(
            parse_pstore_header("Panic#12 Part3\r"),
            Some(("Panic".into(), 12, 3))
        );
        assert_eq!(parse_pstore_header("[ 1.0] Oops#1 Part1"), None);
        assert_eq!(parse_pstore_header("Oops#x Part1"), None);
    }
}

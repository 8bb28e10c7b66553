//! The kernel log detector's I/O: reading `/dev/kmsg` record by record and remembering
//! where we were, so that nothing is missed or repeated across daemon restarts.
//!
//! The cursor is (boot id, sequence number): sequence numbers restart with each boot, so
//! a cursor of another boot means "read from the start of the buffer". The cursor is
//! saved only up to records whose problems are safely in the spool (see [`KmsgDetector`]).
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

/// Records read per batch handed to the detector.
pub const RECORDS_PER_BATCH_MAX: usize = 256;
/// Batches the reader may queue ahead of the detector; a flood waits in the kernel's ring
/// buffer rather than in our memory.
pub const BATCHES_QUEUED_MAX: usize = 64;
/// How often the detector takes what the reader queued and closes problems that went
/// quiet.
pub const POLL_INTERVAL_MS: u64 = 250;

/// A batch of raw records from the reader thread.
pub struct RawRecords {
    pub records: Vec<Vec<u8>>,
    pub overruns: u64,
}

/// The kernel log detector: owns the (pure) assembler, takes the batches the reader
/// thread queued, spools every problem it closes, and keeps the cursor.
pub struct KmsgDetector {
    /// What the reader thread read ([`start_reader`]).
    records: Option<std::sync::mpsc::Receiver<RawRecords>>,
    assembler: crashmesh_parsers::KernelLogAssembler,
    data_dir: PathBuf,
    trust_user_records: bool,
    boot_id: String,
    /// Records up to here were pushed already (from the saved cursor at start).
    skip_through: Option<u64>,
    last_pushed: Option<u64>,
    /// The first record pushed since the assembler last had nothing open.
    pending_since: Option<u64>,
    saved: Option<u64>,
    garbage_records: u64,
    /// `segfault at` lines waiting for their cores (see [`crate::hints`]).
    hints: crate::hints::Hints,
    /// Where the hints look for cores already indexed.
    store: Option<std::sync::Arc<crashmesh_store::Store>>,
    /// `[capture] ignore_paths`, which ignore hints too (by process name).
    ignore_paths: Vec<String>,
}

impl KmsgDetector {
    /// A detector of the records `records` brings (`None`: fed by [`KmsgDetector::receive`]
    /// alone, as the tests do).
    pub fn new(
        data_dir: &Path,
        trust_user_records: bool,
        store: Option<std::sync::Arc<crashmesh_store::Store>>,
        ignore_paths: Vec<String>,
        records: Option<std::sync::mpsc::Receiver<RawRecords>>,
    ) -> KmsgDetector {
        let boot_id = boot_id();
        let skip_through = load_cursor(data_dir, &boot_id).map(|cursor| cursor.sequence);
        KmsgDetector {
            records,
            assembler: crashmesh_parsers::KernelLogAssembler::new(Default::default()),
            data_dir: data_dir.to_path_buf(),
            trust_user_records,
            boot_id,
            skip_through,
            last_pushed: None,
            pending_since: None,
            saved: skip_through,
            garbage_records: 0,
            hints: crate::hints::Hints::default(),
            store,
            ignore_paths,
        }
    }

    fn spool(&mut self, problems: Vec<crashmesh_protocol::Problem>, now_ms: u64) {
        // A user-space `segfault at` line waits for the core it echoes (crate::hints).
        let (hints, problems): (Vec<_>, Vec<_>) = problems
            .into_iter()
            .partition(|problem| problem.kind == crashmesh_protocol::ProblemKind::SegfaultHint);
        let hold_sequence = self.pending_since.or(self.last_pushed).unwrap_or(0);
        for hint in hints {
            if let Some(decide_now) = self.hints.hold(hint, hold_sequence, now_ms) {
                self.decide_hint(decide_now, now_ms);
            }
        }
        for (index, problem) in problems.into_iter().enumerate() {
            if let Err(error) = spool_kernel_problem(
                &self.data_dir,
                &self.boot_id,
                self.last_pushed,
                index,
                problem,
                None,
                now_ms,
            ) {
                tracing::error!(%error, "cannot spool a kernel problem");
            }
        }
    }

    /// Decides the hints whose wait is over.
    fn decide_due_hints(&mut self, now_ms: u64) {
        for hint in self.hints.due(now_ms) {
            self.decide_hint(hint, now_ms);
        }
    }

    /// Drops a hint whose crash the hook captured; spools it as a problem otherwise.
    fn decide_hint(&self, hint: crate::hints::PendingHint, now_ms: u64) {
        // The patterns first: they need no look into the spool or the store.
        if let Some(pattern) = crate::hints::ignored_by(&hint.comm, &self.ignore_paths) {
            tracing::debug!(comm = %hint.comm, %pattern, "a fault line of an ignored executable");
            return;
        }
        if hint.pid != 0
            && crate::hints::core_seen(&self.data_dir, self.store.as_deref(), &hint, now_ms)
        {
            tracing::info!(comm = %hint.comm, pid = hint.pid, "the kernel's fault line matches a captured crash");
            return;
        }
        tracing::info!(comm = %hint.comm, pid = hint.pid, "a process faulted and no core came; reporting the kernel's line");
        // Named by its text alone (it has the pid and addresses): deciding it again after
        // a restart spools it once.
        if let Err(error) = spool_kernel_problem(
            &self.data_dir,
            &self.boot_id,
            None,
            0,
            hint.problem,
            None,
            now_ms,
        ) {
            tracing::error!(%error, "cannot spool a kernel fault line");
        }
    }

    /// After problems are spooled: move the cursor as far as nothing open depends on.
    fn settle(&mut self, now_ms: u64) {
        let suppressed = self.assembler.drain_suppressed();
        for report in suppressed {
            let mut problem = crashmesh_protocol::Problem::new(report.kind, report.reason.clone());
            problem.signature = report.signature.clone();
            let result = spool_kernel_problem(
                &self.data_dir,
                &self.boot_id,
                self.last_pushed,
                usize::MAX,
                problem,
                Some(report.suppressed_count),
                now_ms,
            );
            if let Err(error) = result {
                tracing::error!(%error, "cannot spool a suppressed-problems count");
            }
        }
        let idle = self.assembler.next_deadline_ms().is_none();
        if idle {
            self.pending_since = None;
        }
        let safe = match (idle, self.pending_since, self.last_pushed) {
            (true, _, Some(last)) => Some(last),
            (false, Some(first), _) => first.checked_sub(1),
            _ => None,
        };
        // Not past a hint still waiting for its core.
        let safe = match (safe, self.hints.oldest_hold()) {
            (Some(safe), Some(hold)) => hold.checked_sub(1).map(|before| safe.min(before)),
            (safe, _) => safe,
        };
        if let Some(safe) = safe
            && self.saved.is_none_or(|saved| safe > saved)
        {
            let cursor = KmsgCursor {
                boot_id: self.boot_id.clone(),
                sequence: safe,
            };
            match save_cursor(&self.data_dir, &cursor) {
                Ok(()) => self.saved = Some(safe),
                Err(error) => tracing::warn!(%error, "cannot save the kernel log cursor"),
            }
        }
    }
}

/// Write one kernel problem as a spool entry. The entry id is derived from the boot, the
/// record that closed it and its text, so a replay after a restart makes the same id (and
/// the same report id, which the store records once).
fn spool_kernel_problem(
    data_dir: &Path,
    boot_id: &str,
    closing_sequence: Option<u64>,
    index: usize,
    problem: crashmesh_protocol::Problem,
    suppressed_count: Option<u64>,
    now_ms: u64,
) -> Result<(), crashmesh_capture::spool::SpoolError> {
    use crashmesh_capture::spool::{Attachment, Found, Source, write_found};
    let mut hasher = blake3::Hasher::new();
    hasher.update(boot_id.as_bytes());
    hasher.update(&closing_sequence.unwrap_or(0).to_le_bytes());
    hasher.update(&(index as u64).to_le_bytes());
    hasher.update(problem.signature.as_bytes());
    hasher.update(problem.text.as_deref().unwrap_or("").as_bytes());
    // No time in the id: a replay after a restart must make the same one.
    let entry_id = format!("kmsg-{}", &hasher.finalize().to_hex()[..24]);
    let text = problem.text.clone();
    let attachments = text
        .as_deref()
        .map(|text| ("kernel.txt".to_string(), Attachment::Bytes(text.as_bytes())))
        .into_iter()
        .collect();
    write_found(
        data_dir,
        Found {
            entry_id,
            source: Source::Kmsg,
            time_ms: now_ms,
            pid: None,
            uid: None,
            comm: problem.process.clone(),
            problem,
            attachments,
            notes: Vec::new(),
            suppressed_count,
        },
    )?;
    Ok(())
}

impl crate::detector::Detector for KmsgDetector {
    const NAME: &'static str = "kmsg";

    fn poll(&mut self, now_ms: u64) {
        let mut batches = Vec::new();
        if let Some(records) = &self.records {
            while let Ok(batch) = records.try_recv() {
                batches.push(batch);
            }
        }
        for batch in batches {
            self.receive(batch, now_ms);
        }
        self.tick(now_ms);
    }
}

impl KmsgDetector {
    /// Every `POLL_INTERVAL_MS`: closes problems that went quiet, decides hints whose wait
    /// is over, moves the cursor.
    pub fn tick(&mut self, now_ms: u64) {
        let problems = self.assembler.poll(now_ms);
        self.spool(problems, now_ms);
        self.decide_due_hints(now_ms);
        self.settle(now_ms);
    }

    /// A batch of records from the reader.
    pub fn receive(&mut self, batch: RawRecords, now_ms: u64) {
        if batch.overruns > 0 {
            tracing::warn!(
                overruns = batch.overruns,
                "the kernel log ring buffer overwrote records before we read them"
            );
        }
        let mut problems = Vec::new();
        for raw in batch.records {
            let record = match crashmesh_parsers::parse_kmsg_record(&raw) {
                Ok(record) => record,
                Err(error) => {
                    self.garbage_records += 1;
                    if self.garbage_records.is_power_of_two() {
                        tracing::warn!(%error, count = self.garbage_records, "unreadable kernel log record skipped");
                    }
                    continue;
                }
            };
            if self
                .skip_through
                .is_some_and(|through| record.sequence <= through)
            {
                continue;
            }
            self.last_pushed = Some(record.sequence);
            if !record.is_kernel_facility() && !self.trust_user_records {
                continue;
            }
            self.pending_since.get_or_insert(record.sequence);
            problems.extend(self.assembler.push(record, now_ms));
        }
        self.spool(problems, now_ms);
        self.settle(now_ms);
    }
}

/// Read `/dev/kmsg` on a thread of its own and queue batches for the detector (at most
/// [`BATCHES_QUEUED_MAX`]: the reader waits while the detector is behind). The thread
/// ends when the detector is gone.
pub fn start_reader(
    path: PathBuf,
    batches: std::sync::mpsc::SyncSender<RawRecords>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let mut reader = KmsgReader::open(&path)?;
    std::thread::Builder::new().name("kmsg-reader".into()).spawn(move || loop {
        if !reader.wait(500) {
            continue;
        }
        let mut batch = RawRecords { records: Vec::new(), overruns: 0 };
        while batch.records.len() < RECORDS_PER_BATCH_MAX {
            match reader.read() {
                Ok(Read1::Record(record)) => batch.records.push(record),
                Ok(Read1::Overrun) => batch.overruns += 1,
                Ok(Read1::Empty) => break,
                Err(error) => {
                    tracing::error!(%error, "reading the kernel log failed; the kernel log detector stops");
                    return;
                }
            }
        }
        if batch.records.is_empty() && batch.overruns == 0 {
            continue;
        }
        if batches.send(batch).is_err() {
            return;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(lines: &[(u64, &str)]) -> RawRecords {
        RawRecords {
            records: lines
                .iter()
                .map(|(sequence, text)| {
                    format!("6,{sequence},{},-;{text}", sequence * 1000).into_bytes()
                })
                .collect(),
            overruns: 0,
        }
    }

    fn spooled_hints(data_dir: &Path) -> Vec<String> {
        let spool = crashmesh_capture::spool::Spool::new(data_dir);
        std::fs::read_dir(spool.new_dir())
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|entry| {
                        std::fs::read_to_string(entry.path().join("meta.json"))
                            .is_ok_and(|meta| meta.contains("segfault_hint"))
                    })
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn a_waiting_hint_holds_the_cursor_and_is_decided_once_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let boot = boot_id();
        let lines = [
            (1, "usb 1-1: new high-speed USB device"),
            (
                2,
                "crasher[4242]: segfault at 0 ip 0000559f1a2b3c4d sp 00007ffc1234abcd error 6 in crasher[559f1a2b3000+2000]",
            ),
            (3, "EXT4-fs (vda): mounted filesystem"),
        ];
        let now = 1_790_000_000_000;
        let mut actor = KmsgDetector::new(dir.path(), false, None, Vec::new(), None);
        actor.receive(records(&lines), now);
        actor.tick(now + 1_500);
        assert_eq!(actor.hints.len(), 1, "the hint waits for its core");
        let cursor = load_cursor(dir.path(), &boot).map(|cursor| cursor.sequence);
        assert!(
            cursor.is_none_or(|sequence| sequence < 2),
            "cursor {cursor:?} passed the waiting hint"
        );
        assert!(spooled_hints(dir.path()).is_empty());

        // The daemon stops before the hint is decided; the next one reads it again.
        drop(actor);
        let mut actor = KmsgDetector::new(dir.path(), false, None, Vec::new(), None);
        actor.receive(records(&lines), now + 2_000);
        actor.tick(now + 3_500);
        assert_eq!(actor.hints.len(), 1);
        actor.tick(now + 3_500 + crate::hints::HINT_CORE_WAIT_MS);
        assert!(actor.hints.is_empty());
        let spooled = spooled_hints(dir.path());
        assert_eq!(spooled.len(), 1, "no core came: the hint is a problem");
        assert_eq!(
            load_cursor(dir.path(), &boot).map(|cursor| cursor.sequence),
            Some(3)
        );

        // Deciding it again (a replay) spools nothing new.
        let mut actor = KmsgDetector::new(dir.path(), false, None, Vec::new(), None);
        actor.skip_through = None;
        actor.receive(records(&lines), now + 40_000);
        actor.tick(now + 41_500 + crate::hints::HINT_CORE_WAIT_MS);
        assert_eq!(spooled_hints(dir.path()), spooled);
    }
}

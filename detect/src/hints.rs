//! The kernel's lines about user processes that faulted (`comm[pid]: segfault at … in
//! lib[…]`, `traps: comm[pid] trap invalid opcode …`), which the kernel log detector
//! parses into problems of kind `segfault_hint`.
//!
//! Such a line echoes a crash whose core the hook normally captures, and the core's
//! analysis says all the line says and more. But a crash can come without a core: a
//! process that is not dumpable (setuid, `prctl(PR_SET_DUMPABLE, 0)`), a core_pattern that
//! is not ours, a hook that failed. Then the line is the only trace, and dropping it loses
//! the crash. So a hint is held [`HINT_CORE_WAIT_MS`] for its core; it is dropped when
//! one arrived, spooled as a problem of its own otherwise. Its core is a spool entry of
//! the same pid (being written or waiting to be indexed: the hook names entries
//! `TIME-PID-RANDOM`) or an incident in the store of the same pid and process name from
//! the last [`HINT_MATCH_WINDOW_MS`].
//!
//! The kernel log cursor is held before a pending hint, so a hint pending when the
//! daemon stops is read again and decided after the restart (the spooled hint's entry id
//! is derived from its text alone, so deciding twice spools it once).

use std::collections::VecDeque;
use std::path::Path;

use crashmesh_protocol::Problem;
use crashmesh_store::Store;

/// How long a hint waits for the hook's entry of its crash. The kernel logs the line as
/// it delivers the signal and starts the hook when the process dumps, a moment later; the
/// entry exists (in the spool's `tmp/`) from the hook's first step.
pub const HINT_CORE_WAIT_MS: u64 = 15_000;
/// How far back an incident of the same pid and process name counts as the hint's core
/// (a hint read again after a restart is decided long after its crash; pids are reused
/// only after the pid space wraps).
pub const HINT_MATCH_WINDOW_MS: u64 = 24 * 3600 * 1000;
/// Hints held at once; past this the oldest is decided at once.
pub const HINTS_PENDING_MAX: usize = 64;
/// The kernel cuts a process name (`comm`) to this many bytes.
const COMM_BYTES_MAX: usize = 15;

/// A hint waiting for its core.
#[derive(Debug)]
pub struct PendingHint {
    pub problem: Problem,
    /// The process name and pid the kernel named.
    pub comm: String,
    pub pid: u32,
    /// The first kernel log record the cursor must not pass while the hint waits.
    pub hold_sequence: u64,
    pub due_ms: u64,
}

/// The hints waiting for their cores, oldest first.
#[derive(Debug, Default)]
pub struct Hints {
    pending: VecDeque<PendingHint>,
}

impl Hints {
    /// Holds a hint until `now_ms + HINT_CORE_WAIT_MS`. Gives back the hint to decide
    /// now: the oldest one when the queue is full, or this one when it names no pid.
    pub fn hold(
        &mut self,
        problem: Problem,
        hold_sequence: u64,
        now_ms: u64,
    ) -> Option<PendingHint> {
        let Some((comm, pid)) = problem.process.as_deref().and_then(comm_and_pid) else {
            return Some(PendingHint {
                problem,
                comm: String::new(),
                pid: 0,
                hold_sequence,
                due_ms: now_ms,
            });
        };
        self.pending.push_back(PendingHint {
            problem,
            comm,
            pid,
            hold_sequence,
            due_ms: now_ms + HINT_CORE_WAIT_MS,
        });
        if self.pending.len() > HINTS_PENDING_MAX {
            return self.pending.pop_front();
        }
        None
    }

    /// The hints whose wait is over.
    pub fn due(&mut self, now_ms: u64) -> Vec<PendingHint> {
        let mut due = Vec::new();
        while self
            .pending
            .front()
            .is_some_and(|hint| hint.due_ms <= now_ms)
        {
            due.extend(self.pending.pop_front());
        }
        due
    }

    /// The oldest record a waiting hint came from.
    pub fn oldest_hold(&self) -> Option<u64> {
        self.pending.iter().map(|hint| hint.hold_sequence).min()
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// `comm[pid]` → (comm, pid).
pub fn comm_and_pid(process: &str) -> Option<(String, u32)> {
    let (comm, rest) = process.rsplit_once('[')?;
    let pid = rest.strip_suffix(']')?.parse().ok()?;
    Some((comm.to_string(), pid))
}

/// The `[capture] ignore_paths` pattern that ignores a hint's process: the hook ignores
/// executables by path, and the kernel's line names only the process (`comm`), so a hint
/// is matched against each pattern's file-name part (`/usr/bin/sleep` → `sleep`, `/**` →
/// anything).
pub fn ignored_by(comm: &str, patterns: &[String]) -> Option<String> {
    patterns.iter().find_map(|pattern| {
        let name = pattern.rsplit('/').next().unwrap_or(pattern);
        glob::Pattern::new(name)
            .is_ok_and(|glob| glob.matches(comm))
            .then(|| pattern.clone())
    })
}

/// Did the hook see this crash: an entry of the pid in the spool, or an incident of the
/// pid and process name in the store since `now_ms - HINT_MATCH_WINDOW_MS`?
pub fn core_seen(data_dir: &Path, store: Option<&Store>, hint: &PendingHint, now_ms: u64) -> bool {
    spool_has_pid(data_dir, hint.pid) || store.is_some_and(|store| store_has(store, hint, now_ms))
}

/// A spool entry (complete or being written) whose id names `pid`.
fn spool_has_pid(data_dir: &Path, pid: u32) -> bool {
    let spool = crashmesh_capture::spool::Spool::new(data_dir);
    [spool.tmp_dir(), spool.new_dir()].iter().any(|dir| {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.flatten().any(|entry| {
                entry
                    .file_name()
                    .to_str()
                    .and_then(entry_pid)
                    .is_some_and(|entry_pid| entry_pid == pid)
            })
        })
    })
}

/// The pid in a hook entry's id (`TIME-PID-RANDOM`).
fn entry_pid(id: &str) -> Option<u32> {
    let mut parts = id.split('-');
    let time = parts.next()?;
    let pid = parts.next()?;
    parts.next()?;
    if time.is_empty() || !time.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// An incident of the hint's pid and process name in the store, recent enough.
fn store_has(store: &Store, hint: &PendingHint, now_ms: u64) -> bool {
    let since_ms = now_ms.saturating_sub(HINT_MATCH_WINDOW_MS);
    let problems = match store.problems() {
        Ok(problems) => problems,
        Err(error) => {
            tracing::warn!(%error, "cannot list problems to match a segfault line to its core");
            return false;
        }
    };
    problems
        .iter()
        .filter(|summary| summary.last_seen >= since_ms)
        .any(|summary| {
            let Ok(Some(detail)) = store.problem(&summary.id) else {
                return false;
            };
            detail.incidents.iter().any(|incident| {
                incident.pid == Some(hint.pid)
                    && incident.time_ms >= since_ms
                    && incident
                        .executable
                        .as_deref()
                        .is_none_or(|executable| comm_matches(&hint.comm, executable))
            })
        })
}

/// Is `comm` the kernel's name for a process running `executable` (its file name, cut
/// to 15 bytes)?
fn comm_matches(comm: &str, executable: &str) -> bool {
    let name = executable.rsplit('/').next().unwrap_or(executable);
    let cut = name
        .char_indices()
        .map(|(index, c)| index + c.len_utf8())
        .take_while(|end| *end <= COMM_BYTES_MAX)
        .last()
        .unwrap_or(0);
    comm == &name[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crashmesh_protocol::ProblemKind;

    fn hint(process: &str) -> Problem {
        let mut problem = Problem::new(ProblemKind::SegfaultHint, "segfault");
        problem.process = Some(process.to_string());
        problem
    }

    #[test]
    fn hints_wait_their_time_in_order_and_hold_the_cursor() {
        let mut hints = Hints::default();
        assert!(hints.hold(hint("a.out[10]"), 5, 1_000).is_none());
        assert!(hints.hold(hint("b.out[11]"), 7, 2_000).is_none());
        assert_eq!(hints.oldest_hold(), Some(5));
        assert!(hints.due(1_000 + HINT_CORE_WAIT_MS - 1).is_empty());
        let due = hints.due(1_000 + HINT_CORE_WAIT_MS);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].comm.as_str(), due[0].pid), ("a.out", 10));
        assert_eq!(hints.oldest_hold(), Some(7));
        // A hint naming no pid is decided at once.
        let now = hints.hold(hint("swapper"), 9, 3_000).expect("decided now");
        assert_eq!(now.due_ms, 3_000);
        assert_eq!(hints.len(), 1);
    }

    #[test]
    fn a_full_queue_decides_its_oldest_hint_at_once() {
        let mut hints = Hints::default();
        for pid in 0..HINTS_PENDING_MAX as u32 {
            assert!(
                hints
                    .hold(hint(&format!("p[{pid}]")), pid as u64, 0)
                    .is_none()
            );
        }
        let oldest = hints.hold(hint("p[999]"), 999, 0).expect("the oldest");
        assert_eq!(oldest.pid, 0);
        assert_eq!(hints.len(), HINTS_PENDING_MAX);
    }

    #[test]
    fn names_pids_and_entry_ids_are_read_as_the_kernel_and_the_hook_write_them() {
        assert_eq!(comm_and_pid("my prog[42]"), Some(("my prog".into(), 42)));
        assert_eq!(comm_and_pid("a[b][7]"), Some(("a[b]".into(), 7)));
        assert_eq!(comm_and_pid("nopid"), None);
        assert_eq!(comm_and_pid("x[notanumber]"), None);
        assert_eq!(entry_pid("1790000000000-4242-a1b2c3d4e5f6"), Some(4242));
        assert_eq!(entry_pid("kmsg-0123456789abcdef01234567"), None);
        assert_eq!(entry_pid("1790000000000-4242"), None);
        assert!(comm_matches("python3", "/usr/bin/python3"));
        assert!(comm_matches(
            "storage-daemon-",
            "/opt/x/storage-daemon-worker"
        ));
        assert!(!comm_matches("bash", "/usr/bin/python3"));
    }

    #[test]
    fn ignore_patterns_ignore_hints_by_their_file_name_part() {
        let patterns = vec!["/usr/bin/sleep".to_string(), "/opt/*/worker-*".to_string()];
        assert_eq!(
            ignored_by("sleep", &patterns),
            Some("/usr/bin/sleep".into())
        );
        assert_eq!(
            ignored_by("worker-7", &patterns),
            Some("/opt/*/worker-*".into())
        );
        assert_eq!(ignored_by("python3", &patterns), None);
        assert!(ignored_by("anything", &["/**".to_string()]).is_some());
        assert_eq!(ignored_by("sleep", &[]), None);
    }

    #[test]
    fn a_spool_entry_of_the_pid_is_the_hints_core() {
        let dir = tempfile::tempdir().unwrap();
        let spool = crashmesh_capture::spool::Spool::new(dir.path());
        spool.create_dirs().unwrap();
        let mut pending = Hints::default();
        pending.hold(hint("crasher[4242]"), 1, 0);
        let hint = pending.due(HINT_CORE_WAIT_MS).pop().unwrap();
        assert!(!core_seen(dir.path(), None, &hint, HINT_CORE_WAIT_MS));
        // The hook's entry, still being written.
        std::fs::create_dir(spool.tmp_dir().join("1790000000000-4242-a1b2c3d4e5f6")).unwrap();
        assert!(core_seen(dir.path(), None, &hint, HINT_CORE_WAIT_MS));
        // Another pid's entry is not.
        std::fs::remove_dir(spool.tmp_dir().join("1790000000000-4242-a1b2c3d4e5f6")).unwrap();
        std::fs::create_dir(spool.new_dir().join("1790000000000-4243-a1b2c3d4e5f6")).unwrap();
        assert!(!core_seen(dir.path(), None, &hint, HINT_CORE_WAIT_MS));
    }

    #[test]
    fn an_incident_of_the_pid_and_name_in_the_store_is_the_hints_core() {
        let dir = tempfile::tempdir().unwrap();
        let config = crashmesh_store::StoreConfig {
            keep_free_percent: 0,
            ..Default::default()
        };
        let store = Store::open(dir.path(), config).unwrap();
        let now_ms = 1_790_000_000_000;
        let record = |report_id: &str, pid: u32, executable: &str, time_ms: u64| {
            let mut problem = Problem::new(ProblemKind::Core, "SIGSEGV");
            problem.signature = format!("v1:core:{executable}");
            store
                .record_incident(crashmesh_store::NewIncident {
                    report_id: report_id.into(),
                    time_ms,
                    node: "n1".into(),
                    problem,
                    executable: Some(executable.into()),
                    pid: Some(pid),
                    uid: None,
                    signal: Some(11),
                    core: None,
                    core_truncated: false,
                    attachments: Vec::new(),
                    labels: Default::default(),
                })
                .unwrap();
        };
        let mut pending = Hints::default();
        pending.hold(hint("storage-daemon-[4242]"), 1, now_ms);
        let hint = pending.due(now_ms + HINT_CORE_WAIT_MS).pop().unwrap();
        let seen = |store: &Store| core_seen(dir.path(), Some(store), &hint, now_ms);
        // The same pid, another program; the same program, another pid; too long ago.
        record("n1:a", 4242, "/usr/bin/python3", now_ms);
        record("n1:b", 4243, "/opt/x/storage-daemon-worker", now_ms);
        record(
            "n1:c",
            4242,
            "/opt/x/storage-daemon-worker",
            now_ms - HINT_MATCH_WINDOW_MS - 1,
        );
        assert!(!seen(&store));
        record("n1:d", 4242, "/opt/x/storage-daemon-worker", now_ms - 1_000);
        assert!(seen(&store));
    }
}

//! The Python detector's socket: every user's interpreter hook (`crashmesh_capture::python`)
//! sends its uncaught exception here, and the daemon, as root, spools it with a snapshot
//! of the sender's `/proc` taken while it waits for the answer. Nothing in the message is
//! believed about who sent it (see [`spool_report`] and docs/security.md).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crashmesh_capture::procsnap;
use crashmesh_capture::spool::{self, EntryMeta, SPOOL_FORMAT_VERSION, Source, Spool};

/// The largest message the daemon reads from the Python hook.
pub const MESSAGE_BYTES_MAX: u64 = 2 * 1024 * 1024;

/// The largest number of reports being read or spooled at once, all users together.
pub const CONNECTIONS_MAX: usize = 64;
/// The largest number of one user's reports being read or spooled at once: one user
/// cannot take the daemon's threads from the others.
pub const CONNECTIONS_PER_UID_MAX: usize = 4;
/// How long one connection may take to send its whole report, however it trickles.
pub const READ_DEADLINE_MS: u64 = 5_000;

/// Makes the socket's directory: created `0755` when missing; an existing one must be a
/// directory (not a symlink) owned by this process's user that nobody else can write,
/// else the socket is not put there (a directory another user controls could swap the
/// socket for their own and read every user's tracebacks).
pub fn prepare_socket_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if let Err(error) = std::fs::DirBuilder::new().mode(0o755).create(dir)
        && error.kind() != std::io::ErrorKind::AlreadyExists
    {
        return Err(format!("{}: {error}", dir.display()));
    }
    let metadata =
        std::fs::symlink_metadata(dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    // SAFETY: a plain getter.
    let own_uid = unsafe { libc::geteuid() };
    if !metadata.file_type().is_dir() || metadata.uid() != own_uid {
        return Err(format!(
            "{} is not a directory owned by uid {own_uid}; the Python socket is not put there",
            dir.display()
        ));
    }
    // Others may enter it and connect, not create or remove anything in it.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|error| format!("{}: {error}", dir.display()))
}

/// What the Python hook sends. Only the exception is taken from it: the pid must be the
/// sender's own, and the user, the time, the executable and the process's files come
/// from the kernel (see [`spool_report`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PythonReport {
    pub format_version: u32,
    pub time_ms: u64,
    pub pid: u32,
    pub uid: Option<u32>,
    pub executable: Option<String>,
    pub argv: Vec<String>,
    pub exception_type: String,
    pub message: String,
    pub traceback: String,
}

/// The connections being served, counted per user: a connection is taken only while
/// its user has fewer than `per_uid_max` and everyone fewer than `total_max`.
#[derive(Clone)]
pub struct ConnectionSlots {
    inner: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u32, usize>>>,
    total_max: usize,
    per_uid_max: usize,
}

/// One connection's place in [`ConnectionSlots`], given back when dropped.
pub struct ConnectionSlot {
    slots: ConnectionSlots,
    uid: u32,
}

impl ConnectionSlots {
    pub fn new(total_max: usize, per_uid_max: usize) -> ConnectionSlots {
        ConnectionSlots {
            inner: Default::default(),
            total_max,
            per_uid_max,
        }
    }

    /// A slot for a connection of `uid`, or `None` when that user or everyone is at the
    /// limit.
    pub fn take(&self, uid: u32) -> Option<ConnectionSlot> {
        let mut counts = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let total: usize = counts.values().sum();
        let own = counts.get(&uid).copied().unwrap_or(0);
        if total >= self.total_max || own >= self.per_uid_max {
            return None;
        }
        counts.insert(uid, own + 1);
        Some(ConnectionSlot {
            slots: self.clone(),
            uid,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self
            .slots
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = counts.get_mut(&self.uid) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.uid);
            }
        }
    }
}

/// Who is on the other end of `python.sock`, as the kernel says (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCredentials {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Why a report from the socket was not spooled.
#[derive(Debug, thiserror::Error)]
pub enum ReportRefused {
    #[error("malformed report: {0}")]
    Malformed(String),
    #[error("the report names pid {named}, but the connection is from pid {peer} (uid {uid})")]
    OtherProcess { named: u32, peer: u32, uid: u32 },
    #[error("pid {pid} cannot be read: {error}")]
    Gone { pid: u32, error: std::io::Error },
    #[error("pid {pid} runs as uid {found}, not as the connecting uid {peer_uid}")]
    CredentialsDiffer { pid: u32, found: u32, peer_uid: u32 },
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
}

/// Spool one report that arrived on `python.sock`. Nothing in the message is believed
/// about who sent it: the process is the connecting one (`peer`), a report naming
/// another pid is refused unless the peer is root, the /proc snapshot is taken through a
/// descriptor whose process must run as the peer's uid, and the time is `now_ms`, the
/// daemon's clock (it also chooses the window of logs gathered). The sender is waiting
/// for the answer, so its /proc is still there.
pub fn spool_report(
    message: &[u8],
    peer: PeerCredentials,
    now_ms: u64,
    data_dir: &Path,
    proc_file_bytes_max: u64,
) -> Result<String, ReportRefused> {
    let report: PythonReport = serde_json::from_slice(message)
        .map_err(|error| ReportRefused::Malformed(error.to_string()))?;
    if report.format_version != 1 {
        return Err(ReportRefused::Malformed(format!(
            "unknown format version {}",
            report.format_version
        )));
    }
    let pid = if peer.uid == 0 { report.pid } else { peer.pid };
    if report.pid != pid {
        return Err(ReportRefused::OtherProcess {
            named: report.pid,
            peer: peer.pid,
            uid: peer.uid,
        });
    }
    let gone = |error| ReportRefused::Gone { pid, error };
    let proc_dir = procsnap::ProcDir::open(pid).map_err(gone)?;
    let ids = proc_dir.ids().map_err(gone)?;
    if peer.uid != 0 && ids.euid != peer.uid {
        // The pid was reused by another user's process since the connection was made.
        return Err(ReportRefused::CredentialsDiffer {
            pid,
            found: ids.euid,
            peer_uid: peer.uid,
        });
    }
    let (uid, gid) = if pid == peer.pid {
        (peer.uid, peer.gid)
    } else {
        (ids.euid, ids.egid)
    };

    let spool = Spool::new(data_dir);
    let id = spool::new_entry_id(now_ms, pid);
    let writer = spool.begin(&id)?;
    writer.write_file("traceback.txt", report.traceback.as_bytes())?;
    writer.write_file(
        "python/argv.json",
        &serde_json::to_vec(&report.argv).expect("argv serializes"),
    )?;
    let snapshot = procsnap::snapshot(&proc_dir, &writer, proc_file_bytes_max)?;
    // Checked again after the snapshot: the descriptor cannot change process, but the
    // process may have changed its credentials (setuid) while it was read.
    match proc_dir.ids() {
        Ok(after) if peer.uid == 0 || after.euid == peer.uid => {}
        Ok(after) => {
            return Err(ReportRefused::CredentialsDiffer {
                pid,
                found: after.euid,
                peer_uid: peer.uid,
            });
        }
        Err(error) => return Err(gone(error)),
    }
    let executable = snapshot.links.exe.clone();
    let comm = proc_dir
        .read_capped("comm", 64)
        .ok()
        .map(|comm| String::from_utf8_lossy(&comm).trim_end().to_string());
    let mut meta = EntryMeta {
        format_version: SPOOL_FORMAT_VERSION,
        id: id.clone(),
        source: Source::Python,
        time_ms: now_ms,
        pid: Some(pid),
        uid: Some(uid),
        gid: Some(gid),
        executable,
        comm,
        proc_files: vec!["traceback.txt".into(), "python/argv.json".into()],
        ..EntryMeta::default()
    };
    meta.proc_files.extend(snapshot.files);
    meta.notes.extend(snapshot.notes);
    writer.commit(&meta)?;
    Ok(id)
}

/// Binds the Python socket in its public directory (see `crate::prepare_socket_dir`):
/// any user may connect; who they are comes from the kernel.
pub fn listen(socket: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = socket.parent() {
        prepare_socket_dir(dir).map_err(std::io::Error::other)?;
    }
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// Take reports from the Python hook. Each connection's sender is known from
/// `SO_PEERCRED`; it has [`READ_DEADLINE_MS`] for its whole report (at
/// most [`MESSAGE_BYTES_MAX`]), read without a thread, and holds one of
/// its user's [`CONNECTIONS_PER_UID_MAX`] slots until answered; the
/// snapshot and the spool entry are written on the blocking pool.
pub async fn serve(
    listener: tokio::net::UnixListener,
    data_dir: std::path::PathBuf,
    proc_file_bytes_max: u64,
    clock: std::sync::Arc<dyn crashmesh_capture::clock::Clock>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let slots = ConnectionSlots::new(CONNECTIONS_MAX, CONNECTIONS_PER_UID_MAX);
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "python socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let peer = match stream.peer_cred() {
            Ok(credentials) => match credentials.pid() {
                Some(pid) if pid > 0 => PeerCredentials {
                    pid: pid as u32,
                    uid: credentials.uid(),
                    gid: credentials.gid(),
                },
                _ => continue,
            },
            Err(error) => {
                tracing::warn!(%error, "python socket: no peer credentials");
                continue;
            }
        };
        let Some(slot) = slots.take(peer.uid) else {
            tracing::warn!(
                uid = peer.uid,
                pid = peer.pid,
                "python socket: too many connections of this user; refused"
            );
            continue;
        };
        let data_dir = data_dir.clone();
        let clock = clock.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut message = Vec::new();
            let read = tokio::time::timeout(
                Duration::from_millis(READ_DEADLINE_MS),
                tokio::io::BufReader::new((&mut stream).take(MESSAGE_BYTES_MAX))
                    .read_until(b'\n', &mut message),
            )
            .await;
            match read {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    return tracing::warn!(uid = peer.uid, pid = peer.pid, %error, "python report not read");
                }
                Err(_) => {
                    return tracing::warn!(
                        uid = peer.uid,
                        pid = peer.pid,
                        "python report not complete within {} ms; dropped",
                        READ_DEADLINE_MS
                    );
                }
            }
            let spooled = tokio::task::spawn_blocking(move || {
                spool_report(
                    &message,
                    peer,
                    clock.now_ms(),
                    &data_dir,
                    proc_file_bytes_max,
                )
            })
            .await;
            let answer = match spooled {
                Ok(Ok(entry)) => {
                    tracing::info!(%entry, uid = peer.uid, pid = peer.pid, "python exception spooled");
                    "ok\n".to_string()
                }
                Ok(Err(refused)) => {
                    tracing::warn!(uid = peer.uid, pid = peer.pid, %refused, "python report refused");
                    format!("refused: {refused}\n")
                }
                Err(error) => {
                    tracing::error!(%error, "python report panicked");
                    "refused: internal error\n".to_string()
                }
            };
            let _ = tokio::time::timeout(
                Duration::from_millis(READ_DEADLINE_MS),
                stream.write_all(answer.as_bytes()),
            )
            .await;
        });
    }
}

/// The problem of a Python spool entry, parsed from its traceback.
pub fn problem_of_entry(dir: &Path, meta: &EntryMeta) -> Option<crashmesh_protocol::Problem> {
    let text = std::fs::read_to_string(dir.join("traceback.txt")).ok()?;
    let mut problem = crashmesh_parsers::python::parse_python_tracebacks(&text).pop()?;
    problem.executable = meta.executable.clone();
    Some(problem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_user_cannot_take_every_connection() {
        let slots = ConnectionSlots::new(3, 2);
        let first = slots.take(1000).unwrap();
        let _second = slots.take(1000).unwrap();
        assert!(slots.take(1000).is_none(), "a third of one user's");
        let root = slots.take(0).unwrap();
        assert!(slots.take(0).is_none(), "everyone's limit");
        drop(first);
        assert!(slots.take(1000).is_some());
        drop(root);
    }
}

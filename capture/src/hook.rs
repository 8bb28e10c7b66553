//! `crashmesh hook core …`: the kernel's core_pattern handler.
//!
//! The kernel starts it as root with the core on stdin, holding the crashed process until
//! it exits (when core_pipe_limit > 0), so it must be quick, bounded and self-contained:
//! it never talks to the daemon and writes a complete, durable spool entry by itself.
//!
//! Order of work: guards that need no core (own crash, ignored path, crash loop), the
//! /proc snapshot while the process is still held, then the core, streamed through zstd
//! with a fixed buffer (memory stays at a few MiB whatever the core size), stopped by
//! the size cap, the free-space floor or the time limit, each of which marks the core
//! truncated instead of failing.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::clock::now_ms;
use crate::config::CaptureConfig;
use crate::procsnap;
use crate::spool::{self, CoreFile, EntryMeta, SPOOL_FORMAT_VERSION, Source, Spool};

/// The core_pattern arguments after `hook core`, in this order. `%e` goes last because
/// older kernels split a command name with spaces into several arguments.
pub const CORE_PATTERN_SPECIFIERS: &str = "%P %I %i %s %t %c %u %g %h %e";
/// Bytes read from the kernel per read call.
pub const READ_BUFFER_BYTES: usize = 1024 * 1024;
/// How often (in core bytes) the free space is looked at again while streaming.
pub const FREE_SPACE_CHECK_BYTES: u64 = 64 * 1024 * 1024;

/// What the kernel told us about the crash.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CoreArgs {
    pub pid: u32,
    pub tid: Option<u32>,
    pub namespace_tid: Option<u32>,
    pub signal: Option<i32>,
    pub time_secs: Option<u64>,
    pub core_limit: Option<u64>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub hostname: Option<String>,
    pub comm: Option<String>,
}

/// Why the hook could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("usage: crashmesh hook core {CORE_PATTERN_SPECIFIERS} (got {0:?})")]
    Usage(Vec<String>),
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl CoreArgs {
    /// Parse the arguments in [`CORE_PATTERN_SPECIFIERS`] order.
    pub fn parse(args: &[String]) -> Result<CoreArgs, HookError> {
        let usage = || HookError::Usage(args.to_vec());
        if args.len() < 9 {
            return Err(usage());
        }
        let number = |text: &str| text.parse::<u64>().ok();
        let comm = if args.len() > 9 {
            Some(args[9..].join(" "))
        } else {
            None
        };
        Ok(CoreArgs {
            pid: args[0].parse().map_err(|_| usage())?,
            tid: number(&args[1]).map(|n| n as u32),
            namespace_tid: number(&args[2]).map(|n| n as u32),
            signal: args[3].parse().ok(),
            time_secs: number(&args[4]),
            core_limit: number(&args[5]),
            uid: number(&args[6]).map(|n| n as u32),
            gid: number(&args[7]).map(|n| n as u32),
            hostname: Some(args[8].clone()),
            comm,
        })
    }
}

/// What the hook did, for its log line and the tests.
#[derive(Debug, PartialEq)]
pub enum HookOutcome {
    /// A spool entry was written.
    Captured {
        entry: PathBuf,
        core_bytes: u64,
        truncated: Option<String>,
    },
    /// Nothing was written, on purpose.
    Skipped(String),
}

/// Free bytes for unprivileged users on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stat a valid out pointer.
    let result = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    (result == 0).then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Make sure a crash of the hook itself produces no core (and so no recursion).
fn refuse_own_core() {
    // SAFETY: plain syscalls with constant arguments.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &zero);
    }
}

/// True when `pid` is itself a crashmesh hook: its crash must not re-enter the hook.
fn is_own_hook(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.len() >= 3
        && args[0].ends_with(b"crashmesh")
        && args.iter().any(|arg| *arg == b"hook")
        && args.iter().any(|arg| *arg == b"core")
}

fn is_ignored(executable: &str, patterns: &[String]) -> Option<String> {
    patterns
        .iter()
        .find_map(|pattern| match glob::Pattern::new(pattern) {
            Ok(glob) if glob.matches(executable) => Some(pattern.clone()),
            _ => None,
        })
}

/// The crash-loop guard. When `executable` had a full capture less than `window_secs`
/// ago, gives back that capture's entry id (the repeat is counted on its problem).
/// Otherwise records `entry_id` at `now_ms` as the executable's last full capture.
fn repeat_of(
    spool: &Spool,
    executable: &str,
    entry_id: &str,
    now_ms: u64,
    window_secs: u64,
) -> Option<String> {
    if window_secs == 0 {
        return None;
    }
    let key = blake3::hash(executable.as_bytes()).to_hex();
    let path = spool.repeat_dir().join(&key.as_str()[..32]);
    let last = std::fs::read_to_string(&path).ok().and_then(|text| {
        let (time, id) = text.trim().split_once(' ')?;
        Some((time.parse::<u64>().ok()?, id.to_string()))
    });
    if let Some((last_ms, last_id)) = last
        && now_ms >= last_ms
        && now_ms - last_ms < window_secs * 1000
    {
        return Some(last_id);
    }
    let temporary = path.with_extension(format!("{}.tmp", std::process::id()));
    let written = std::fs::write(&temporary, format!("{now_ms} {entry_id}"))
        .and_then(|_| std::fs::rename(&temporary, &path));
    if let Err(error) = written {
        tracing::warn!(%error, "cannot record the crash-loop window");
    }
    None
}

/// Run the hook: `input` is the core (stdin when the kernel runs us).
pub fn run(
    config: &CaptureConfig,
    data_dir: &Path,
    args: &CoreArgs,
    input: &mut impl Read,
) -> Result<HookOutcome, HookError> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(config.time_limit_secs);
    refuse_own_core();
    if is_own_hook(args.pid) {
        return Ok(HookOutcome::Skipped(
            "the crashed process is a crashmesh hook".into(),
        ));
    }
    // Opened once: while the kernel holds the process this is its /proc, and no later
    // process of the same pid can be read through it.
    let proc_dir = procsnap::ProcDir::open(args.pid);
    let executable = proc_dir
        .as_ref()
        .ok()
        .and_then(|proc_dir| proc_dir.read_link("exe"));
    if let Some(pattern) = executable
        .as_deref()
        .and_then(|exe| is_ignored(exe, &config.ignore_paths))
    {
        return Ok(HookOutcome::Skipped(format!(
            "executable matches ignore pattern {pattern:?}"
        )));
    }

    // The kernel's %t has whole seconds; our clock orders crashes within a second too
    // (entry ids sort by it).
    let time_ms = now_ms();
    let spool = Spool::new(data_dir);
    spool.create_dirs()?;
    let id = spool::new_entry_id(time_ms, args.pid);
    let writer = spool.begin(&id)?;
    let repeat_key = executable.clone().or(args.comm.clone()).unwrap_or_default();
    let repeat_of = repeat_of(
        &spool,
        &repeat_key,
        &id,
        now_ms(),
        config.repeat_window_secs,
    );

    let mut meta = EntryMeta {
        format_version: SPOOL_FORMAT_VERSION,
        id,
        source: Source::Core,
        time_ms,
        pid: Some(args.pid),
        tid: args.tid,
        signal: args.signal,
        uid: args.uid,
        gid: args.gid,
        comm: args.comm.clone(),
        executable,
        hostname: args.hostname.clone(),
        repeat: repeat_of.is_some(),
        repeat_of: repeat_of.clone(),
        ..EntryMeta::default()
    };

    // The snapshot first: it is small and only possible while the process is held.
    match &proc_dir {
        Ok(proc_dir) => {
            let snapshot = procsnap::snapshot(proc_dir, &writer, config.proc_file_bytes_max.0)?;
            meta.proc_files = snapshot.files;
            meta.notes.extend(snapshot.notes);
            if let Ok(cgroup) = proc_dir.read_capped("cgroup", 1024 * 1024) {
                meta.container_id =
                    procsnap::container_id_from_cgroup(&String::from_utf8_lossy(&cgroup));
            }
            meta.root = snapshot.links.root.filter(|root| root != "/");
        }
        Err(error) => meta
            .notes
            .push(format!("/proc/{}: {error}; no snapshot", args.pid)),
    }

    let free = free_bytes(data_dir);
    if repeat_of.is_some() {
        meta.core_dropped = Some(format!(
            "crash loop: a core of this executable was captured less than {} s ago",
            config.repeat_window_secs
        ));
    } else if free.is_some_and(|free| free < config.min_free_bytes.0) {
        meta.core_dropped = Some(format!(
            "low disk: {} bytes free, less than capture.min_free_bytes ({})",
            free.unwrap_or(0),
            config.min_free_bytes.0
        ));
    } else if args.core_limit == Some(0) {
        meta.core_dropped = Some("the process's RLIMIT_CORE is 0".into());
    } else {
        // A full or failing disk costs the core, never the crash's record.
        let streamed = writer
            .create("core.zst")
            .map_err(HookError::from)
            .and_then(|file| stream_core(input, file, config, data_dir, deadline));
        match streamed {
            Ok(core) => meta.core = Some(core),
            Err(error) => {
                let _ = std::fs::remove_file(writer.dir().join("core.zst"));
                meta.core_dropped = Some(format!("writing the core failed: {error}"));
            }
        }
    }

    meta.capture_ms = started.elapsed().as_millis() as u64;
    let (core_bytes, truncated) = meta
        .core
        .as_ref()
        .map(|core| (core.bytes_raw, core.truncated.clone()))
        .unwrap_or((0, meta.core_dropped.clone()));
    let entry = writer.commit(&meta)?;
    Ok(HookOutcome::Captured {
        entry,
        core_bytes,
        truncated,
    })
}

/// Wait until `input` has bytes or the deadline passes. Only file descriptors that can
/// be polled are waited on; anything else (a regular file in tests) is always ready.
fn wait_readable(fd: i32, deadline: Instant) -> bool {
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return false;
    }
    let mut poll_fd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout_ms = remaining.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd for the duration of the call.
    let ready = unsafe { libc::poll(&mut poll_fd, 1, timeout_ms) };
    ready != 0
}

/// Stream the core into `file` through zstd, within the configured limits.
fn stream_core(
    input: &mut impl Read,
    file: File,
    config: &CaptureConfig,
    data_dir: &Path,
    deadline: Instant,
) -> Result<CoreFile, HookError> {
    let fd = io::stdin().as_raw_fd();
    let poll_stdin = is_pipe(fd);
    if poll_stdin {
        // A 1 MiB pipe lets the kernel hand over the core in fewer, larger pieces. It may
        // refuse (pipe-max-size); the default size works too.
        // SAFETY: fcntl on our own stdin with an integer argument.
        unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, READ_BUFFER_BYTES as libc::c_int) };
    }
    let mut encoder = zstd::stream::write::Encoder::new(
        BufWriter::with_capacity(READ_BUFFER_BYTES, file),
        config.compression_level,
    )?;
    encoder.include_checksum(true)?;
    // One zstd worker: compression runs beside our reads, as the zstd CLI overlaps its
    // I/O; memory stays bounded by the worker's job size (a few MiB at level 1).
    encoder.multithread(1)?;
    let mut buffer = vec![0u8; READ_BUFFER_BYTES];
    let cap = config.core_bytes_max.0;
    let mut bytes_raw = 0u64;
    let mut next_free_check = FREE_SPACE_CHECK_BYTES;
    let mut truncated = None;
    loop {
        if poll_stdin && !wait_readable(fd, deadline) {
            truncated = Some(format!(
                "time limit: capture.time_limit_secs = {}",
                config.time_limit_secs
            ));
            break;
        }
        let wanted = (cap - bytes_raw).min(buffer.len() as u64) as usize;
        if wanted == 0 {
            // Is there more? One byte tells.
            let mut probe = [0u8; 1];
            if read_retrying(input, &mut probe)? > 0 {
                truncated = Some(format!("size cap: capture.core_bytes_max = {cap}"));
            }
            break;
        }
        let read = read_retrying(input, &mut buffer[..wanted])?;
        if read == 0 {
            break;
        }
        encoder.write_all(&buffer[..read])?;
        bytes_raw += read as u64;
        if bytes_raw >= next_free_check {
            next_free_check += FREE_SPACE_CHECK_BYTES;
            if free_bytes(data_dir).is_some_and(|free| free < config.min_free_bytes.0) {
                truncated = Some("low disk while writing: capture.min_free_bytes reached".into());
                break;
            }
        }
    }
    let writer = encoder.finish()?;
    let file = writer.into_inner().map_err(|error| error.into_error())?;
    let bytes_stored = file.metadata()?.len();
    Ok(CoreFile {
        file: "core.zst".into(),
        bytes_raw,
        bytes_stored,
        truncated,
    })
}

fn read_retrying(input: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    loop {
        match input.read(buffer) {
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn is_pipe(fd: i32) -> bool {
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a descriptor with a valid out pointer.
    let result = unsafe { libc::fstat(fd, &mut stat) };
    result == 0 && (stat.st_mode & libc::S_IFMT) == libc::S_IFIFO
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arguments_parse_in_pattern_order_and_join_split_names() {
        let parsed = CoreArgs::parse(&args(&[
            "42",
            "43",
            "1",
            "11",
            "1700000000",
            "18446744073709551615",
            "0",
            "0",
            "node1",
            "Web",
            "Content",
        ]))
        .unwrap();
        assert_eq!(parsed.pid, 42);
        assert_eq!(parsed.signal, Some(11));
        assert_eq!(parsed.comm.as_deref(), Some("Web Content"));
        assert!(CoreArgs::parse(&args(&["42"])).is_err());
        assert!(CoreArgs::parse(&args(&["x", "43", "1", "11", "1", "1", "0", "0", "h"])).is_err());
    }

    fn run_on(config: &CaptureConfig, data: &Path, core: &[u8]) -> HookOutcome {
        let own_pid = std::process::id();
        let core_args = CoreArgs {
            pid: own_pid,
            signal: Some(11),
            time_secs: Some(1_700_000_000),
            comm: Some("t".into()),
            ..CoreArgs::default()
        };
        run(
            config,
            data,
            &core_args,
            &mut io::Cursor::new(core.to_vec()),
        )
        .unwrap()
    }

    #[test]
    fn a_core_is_compressed_into_a_complete_entry_and_a_repeat_keeps_metadata_only() {
        let data = tempfile::tempdir().unwrap();
        let mut config = CaptureConfig::default();
        config.min_free_bytes = crate::config::ByteSize(0);
        let core: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let HookOutcome::Captured {
            entry,
            core_bytes,
            truncated,
        } = run_on(&config, data.path(), &core)
        else {
            panic!()
        };
        assert_eq!(core_bytes, core.len() as u64);
        assert_eq!(truncated, None);
        let meta = spool::read_meta(&entry).unwrap();
        let stored = std::fs::read(entry.join("core.zst")).unwrap();
        assert_eq!(zstd::decode_all(&stored[..]).unwrap(), core);
        assert!(meta.proc_files.iter().any(|f| f == "proc/maps"));
        assert!(!meta.repeat);

        let HookOutcome::Captured {
            entry, core_bytes, ..
        } = run_on(&config, data.path(), &core)
        else {
            panic!()
        };
        let meta = spool::read_meta(&entry).unwrap();
        assert!(meta.repeat);
        assert_eq!(core_bytes, 0);
        assert!(meta.core.is_none());
        assert!(meta.core_dropped.unwrap().starts_with("crash loop"));
    }

    #[test]
    fn the_size_cap_truncates_and_marks_the_core() {
        let data = tempfile::tempdir().unwrap();
        let mut config = CaptureConfig::default();
        config.min_free_bytes = crate::config::ByteSize(0);
        config.core_bytes_max = crate::config::ByteSize(1000);
        let HookOutcome::Captured {
            entry,
            core_bytes,
            truncated,
        } = run_on(&config, data.path(), &[7u8; 5000])
        else {
            panic!()
        };
        assert_eq!(core_bytes, 1000);
        assert!(truncated.unwrap().starts_with("size cap"));
        assert_eq!(
            zstd::decode_all(&std::fs::read(entry.join("core.zst")).unwrap()[..])
                .unwrap()
                .len(),
            1000
        );
    }

    #[test]
    fn low_disk_keeps_metadata_and_drops_the_core() {
        let data = tempfile::tempdir().unwrap();
        let mut config = CaptureConfig::default();
        config.min_free_bytes = crate::config::ByteSize(u64::MAX);
        let HookOutcome::Captured {
            entry,
            core_bytes,
            truncated,
        } = run_on(&config, data.path(), &[1u8; 100])
        else {
            panic!()
        };
        assert_eq!(core_bytes, 0);
        assert!(truncated.unwrap().starts_with("low disk"));
        assert!(!entry.join("core.zst").exists());
        assert!(entry.join("proc/status").exists());
    }

    #[test]
    fn a_failing_core_write_keeps_the_metadata() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(libc::EIO))
            }
        }
        let data = tempfile::tempdir().unwrap();
        let mut config = CaptureConfig::default();
        config.min_free_bytes = crate::config::ByteSize(0);
        let core_args = CoreArgs {
            pid: std::process::id(),
            signal: Some(6),
            ..CoreArgs::default()
        };
        let HookOutcome::Captured {
            entry,
            core_bytes,
            truncated,
        } = run(&config, data.path(), &core_args, &mut Failing).unwrap()
        else {
            panic!()
        };
        assert_eq!(core_bytes, 0);
        assert!(truncated.unwrap().starts_with("writing the core failed"));
        assert!(!entry.join("core.zst").exists());
        assert_eq!(spool::read_meta(&entry).unwrap().signal, Some(6));
    }

    #[test]
    fn ignored_executables_write_nothing() {
        let data = tempfile::tempdir().unwrap();
        let config = CaptureConfig {
            ignore_paths: vec!["/**".into()],
            ..CaptureConfig::default()
        };
        assert!(matches!(
            run_on(&config, data.path(), b"x"),
            HookOutcome::Skipped(_)
        ));
        assert!(Spool::new(data.path()).list().unwrap().is_empty());
    }
}

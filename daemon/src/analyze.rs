//! Analysis of one piece of evidence: offline (`crashmesh analyze …`) and for the daemon,
//! which runs core analysis in a child process with memory and time limits so that a
//! hostile core cannot take the daemon down.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crashmesh_protocol::{Problem, ProblemKind, signature};
use serde::{Deserialize, Serialize};

use crate::config::AnalysisConfig;

/// The four zstd magic bytes: a spool core is compressed, a core from elsewhere is not.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// The analysis child's JSON answer is refused beyond this size.
pub const ANALYSIS_OUTPUT_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// `analyze … --json` prints this.
#[derive(Debug, Serialize, Deserialize)]
pub struct AnalysisOutput {
    pub problems: Vec<Problem>,
}

/// What the caller knows about the core beyond its bytes.
#[derive(Clone, Debug, Default)]
pub struct CoreContext {
    /// The crashed process's root (a container's file system), to find its binaries.
    pub root: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Core(String),
    #[error("analysis process: {0}")]
    Child(String),
    #[error(
        "the core decompresses to more than {bytes_max} bytes, all the store's quota and free-space floor leave; not analysed"
    )]
    ScratchFull { bytes_max: u64 },
}

/// A plain core file to analyse: the file itself, or a decompressed temporary copy of a
/// zstd one (removed on drop).
pub struct PlainCore {
    pub path: PathBuf,
    _temporary: Option<tempfile::TempPath>,
}

/// Where a compressed core is decompressed, and how large it may grow there.
#[derive(Clone, Debug)]
pub struct Scratch {
    pub dir: PathBuf,
    /// The daemon's scratch is inside its data dir, so a core decompressed there counts
    /// against the store's quota; this is what the quota and the free-space floor leave.
    pub bytes_max: u64,
}

/// Give back a path to the plain core, decompressing `.zst` cores into the scratch
/// directory, refusing one that would grow beyond its `bytes_max`.
pub fn plain_core(path: &Path, scratch: &Scratch) -> Result<PlainCore, AnalyzeError> {
    let scratch_dir = &scratch.dir;
    let io_error = |source| AnalyzeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io_error)?;
    let mut magic = [0u8; 4];
    let is_zstd = file.read_exact(&mut magic).is_ok() && magic == ZSTD_MAGIC;
    if !is_zstd {
        return Ok(PlainCore {
            path: path.to_path_buf(),
            _temporary: None,
        });
    }
    std::fs::create_dir_all(scratch_dir).map_err(io_error)?;
    let compressed = std::fs::File::open(path).map_err(io_error)?;
    let mut temporary = tempfile::Builder::new()
        .prefix("core-")
        .tempfile_in(scratch_dir)
        .map_err(io_error)?;
    let decoder = zstd::stream::read::Decoder::new(compressed).map_err(io_error)?;
    // A truncated stream still gives the bytes before the cut: keep them.
    let mut limited = decoder.take(scratch.bytes_max.saturating_add(1));
    match io::copy(&mut limited, temporary.as_file_mut()) {
        Ok(written) if written > scratch.bytes_max => {
            return Err(AnalyzeError::ScratchFull {
                bytes_max: scratch.bytes_max,
            });
        }
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "compressed core is damaged; analysing what decompressed");
        }
    }
    let temporary_path = temporary.into_temp_path();
    Ok(PlainCore {
        path: temporary_path.to_path_buf(),
        _temporary: Some(temporary_path),
    })
}

/// Analyse a core in this process. A core that cannot be analysed still gives a
/// problem, marked "analysis failed: …", so that the incident is never lost.
///
/// With debuginfod servers configured and a cache directory given, modules whose frames
/// have no source lines get their debug files fetched (within
/// `debuginfod_timeout_secs` for them all) and the core is analysed again with the cache
/// as one more debug directory. A server that is down costs the lines, nothing else.
pub fn analyze_core_here(
    path: &Path,
    context: &CoreContext,
    config: &AnalysisConfig,
    scratch: &Scratch,
    debuginfod_cache: Option<&Path>,
) -> Problem {
    let analysis = plain_core(path, scratch)
        .map_err(|error| error.to_string())
        .and_then(|plain| {
            let mut options = crashmesh_coredump::AnalyzeOptions {
                root: context.root.clone(),
                debug_dirs: config.debug_dirs.clone(),
                threads_max: config.threads_max,
                frames_max: config.frames_max,
                decompress_debug_info: config.decompress_debug_info,
                ..crashmesh_coredump::AnalyzeOptions::default()
            };
            let first = crashmesh_coredump::analyze_core(&plain.path, &options)
                .map_err(|error| error.to_string())?;
            let Some(cache) = debuginfod_cache.filter(|_| !config.debuginfod_urls.is_empty())
            else {
                return Ok(first);
            };
            if fetch_debug_files(&first.problem, config, cache) == 0 {
                return Ok(first);
            }
            options.debug_dirs.push(cache.to_path_buf());
            crashmesh_coredump::analyze_core(&plain.path, &options)
                .map_err(|error| error.to_string())
        });
    match analysis {
        Ok(analysis) => analysis.problem,
        Err(reason) => failed_core_problem(&reason, None, None),
    }
}

/// Build-ids asked of debuginfod for one core at most.
const DEBUGINFOD_BUILD_IDS_MAX: usize = 32;

/// Fetches the debug files of the modules whose frames (any thread's) have no source
/// line; gives how many it has now.
fn fetch_debug_files(problem: &Problem, config: &AnalysisConfig, cache: &Path) -> usize {
    let frames = problem.frames.iter().chain(
        problem
            .threads
            .iter()
            .flatten()
            .flat_map(|thread| &thread.frames),
    );
    let mut wanted: Vec<&str> = Vec::new();
    for frame in frames {
        if let (None, Some(build_id)) = (frame.line, frame.build_id.as_deref())
            && !wanted.contains(&build_id)
            && wanted.len() < DEBUGINFOD_BUILD_IDS_MAX
        {
            wanted.push(build_id);
        }
    }
    let budget = std::time::Duration::from_secs(config.debuginfod_timeout_secs);
    let started = std::time::Instant::now();
    let mut found = 0;
    for build_id in wanted {
        let left = budget.saturating_sub(started.elapsed());
        if left.is_zero() {
            tracing::warn!("debuginfod: out of time for this core's debug files");
            break;
        }
        let client = crashmesh_debuginfod::Client::new(
            config.debuginfod_urls.clone(),
            cache.to_path_buf(),
            config.debuginfod_cache_bytes_max.0,
            left,
        );
        if client.debuginfo(build_id).is_some() {
            found += 1;
        }
    }
    found
}

/// The problem recorded for a core that could not be analysed: its signature comes from
/// what the hook knew (executable and signal), so repeats still group.
pub fn failed_core_problem(reason: &str, executable: Option<&str>, signal: Option<i32>) -> Problem {
    let mut problem = Problem::new(ProblemKind::Core, format!("analysis failed: {reason}"));
    problem.analysis_error = Some(reason.to_string());
    problem.executable = executable.map(str::to_string);
    problem.signal = signal;
    let parts = vec![
        "analysis failed".to_string(),
        executable.unwrap_or("?").to_string(),
        signal.map(|s| s.to_string()).unwrap_or_default(),
    ];
    problem.signature = signature::signature_from_parts(ProblemKind::Core, &parts).0;
    problem
}

/// The problem recorded when a text problem could not be parsed: grouped by kind and
/// executable.
pub fn failed_problem(kind: ProblemKind, reason: &str, executable: Option<&str>) -> Problem {
    let mut problem = Problem::new(kind, format!("analysis failed: {reason}"));
    problem.analysis_error = Some(reason.to_string());
    problem.executable = executable.map(str::to_string);
    let parts = vec![
        "analysis failed".to_string(),
        executable.unwrap_or("?").to_string(),
    ];
    problem.signature = signature::signature_from_parts(kind, &parts).0;
    problem
}

/// Analyse a core in a child process (`crashmesh analyze core --json`) with an
/// address-space limit and a wall-clock limit.
pub fn analyze_core_isolated(
    binary: &Path,
    core: &Path,
    context: &CoreContext,
    config_file: Option<&Path>,
    config: &AnalysisConfig,
    scratch: &Scratch,
    debuginfod_cache: &Path,
) -> Result<Problem, AnalyzeError> {
    let mut command = Command::new(binary);
    if let Some(config_file) = config_file {
        command.arg("--config").arg(config_file);
    }
    command
        .args(["analyze", "core", "--json"])
        .arg(core)
        .arg("--scratch-dir")
        .arg(&scratch.dir)
        .arg("--scratch-bytes-max")
        .arg(scratch.bytes_max.to_string())
        .arg("--debuginfod-cache")
        .arg(debuginfod_cache);
    if let Some(root) = &context.root {
        command.arg("--root").arg(root);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let memory_bytes_max = config.memory_bytes_max.0;
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: memory_bytes_max,
                rlim_max: memory_bytes_max,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(io::Error::last_os_error());
            }
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|error| {
        AnalyzeError::Child(format!("cannot start {}: {error}", binary.display()))
    })?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let result = (&mut stdout)
            .take(ANALYSIS_OUTPUT_BYTES_MAX)
            .read_to_end(&mut bytes);
        result.map(|_| bytes)
    });
    let error_reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    });
    let deadline = Instant::now() + Duration::from_secs(config.time_limit_secs);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(AnalyzeError::Child(format!(
                    "time limit of {} s reached",
                    config.time_limit_secs
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(error) => return Err(AnalyzeError::Child(error.to_string())),
        }
    };
    let stdout = reader
        .join()
        .map_err(|_| AnalyzeError::Child("reader panicked".into()))?;
    let stderr = error_reader.join().unwrap_or_default();
    if !status.success() {
        let last_line = stderr.lines().last().unwrap_or("").to_string();
        return Err(AnalyzeError::Child(format!("{status}: {last_line}")));
    }
    let stdout = stdout.map_err(|error| AnalyzeError::Child(error.to_string()))?;
    let output: AnalysisOutput = serde_json::from_slice(&stdout)
        .map_err(|error| AnalyzeError::Child(format!("bad output: {error}")))?;
    output
        .problems
        .into_iter()
        .next()
        .ok_or_else(|| AnalyzeError::Child("no problem in output".into()))
}

/// The kinds of text `crashmesh analyze` reads.
#[derive(Clone, Copy, Debug)]
pub enum TextKind {
    KernelLog,
    Python,
    HsErr,
}

/// Every problem in a text, in order.
pub fn analyze_text(kind: TextKind, text: &str) -> Vec<Problem> {
    match kind {
        TextKind::KernelLog => crashmesh_parsers::kernel::parse_kernel_log(text),
        TextKind::Python => crashmesh_parsers::python::parse_python_tracebacks(text),
        TextKind::HsErr => crashmesh_parsers::hs_err::parse_hs_err(text)
            .into_iter()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_decompresses_only_within_its_scratch_allowance() {
        let dir = tempfile::tempdir().unwrap();
        let core = dir.path().join("core.zst");
        let plain = vec![0x5au8; 4 << 20];
        std::fs::write(&core, zstd::encode_all(&plain[..], 1).unwrap()).unwrap();
        let scratch_dir = dir.path().join("scratch");
        let tight = Scratch {
            dir: scratch_dir.clone(),
            bytes_max: 1 << 20,
        };
        match plain_core(&core, &tight) {
            Err(AnalyzeError::ScratchFull { bytes_max }) => assert_eq!(bytes_max, 1 << 20),
            Err(error) => panic!("{error}"),
            Ok(_) => panic!("a 4 MiB core decompressed into a 1 MiB allowance"),
        }
        assert_eq!(std::fs::read_dir(&scratch_dir).unwrap().count(), 0);
        let roomy = Scratch {
            dir: scratch_dir.clone(),
            bytes_max: 4 << 20,
        };
        let decompressed = plain_core(&core, &roomy).unwrap();
        assert!(decompressed.path.starts_with(&scratch_dir));
        assert_eq!(std::fs::read(&decompressed.path).unwrap(), plain);
        drop(decompressed);
        assert_eq!(std::fs::read_dir(&scratch_dir).unwrap().count(), 0);
    }
}

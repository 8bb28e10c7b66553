//! The gatherer: the node's own logs around the moment of a problem, by rules per problem
//! kind and executable, within a byte budget per report.
//!
//! A rule names sources: files by glob, the journal (`journalctl -o export` for the
//! window) and commands (with a time limit and an output cap). File sources are cut to the
//! window around the problem (default 10 minutes before to 1 minute after): each line's
//! timestamp is parsed (RFC 3339, ISO 8601, syslog, dmesg), and a line without one belongs
//! to the line before it (a multi-line record). When the kept records exceed the budget,
//! records with error/warn/fail go first, then the records nearest the problem; every cut
//! is recorded in `gather/notes.txt` beside the logs. Unreadable, binary or vanished files
//! are skipped with a note, never an error.
//!
//! Gathering runs after the problem is recorded (the window reaches past it), from a
//! durable job file in `<data dir>/gather/`, so a daemon restart does not lose it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{Datelike, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crashmesh_capture::config::ByteSize;

/// Bytes read from the end of one log file at most.
pub const FILE_TAIL_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// Files one glob may match before the rest are skipped.
pub const FILES_PER_GLOB_MAX: usize = 64;
/// Lines of one file looked at, at most.
pub const LINES_PER_FILE_MAX: usize = 4_000_000;

/// `[gather]`: windows, budget and rules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatherConfig {
    pub enabled: bool,
    /// Seconds of log before the problem.
    pub before_secs: u64,
    /// Seconds of log after the problem (gathering waits for them).
    pub after_secs: u64,
    /// All gathered sources of one report together.
    pub report_bytes_max: ByteSize,
    pub rules: Vec<GatherRule>,
}

impl Default for GatherConfig {
    fn default() -> GatherConfig {
        GatherConfig {
            enabled: true,
            before_secs: 600,
            after_secs: 60,
            report_bytes_max: ByteSize(16 * 1024 * 1024),
            rules: vec![GatherRule {
                kinds: Vec::new(),
                executable: None,
                files: vec![
                    "/var/log/syslog".into(),
                    "/var/log/messages".into(),
                    "/var/log/kern.log".into(),
                ],
                journal: true,
                commands: Vec::new(),
            }],
        }
    }
}

/// One rule: for problems of these kinds and this executable, these sources.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatherRule {
    /// Problem kinds (`core`, `kernel_oops`, `python`, …); empty means every kind.
    pub kinds: Vec<String>,
    /// A glob on the executable's path; none means any.
    pub executable: Option<String>,
    /// Globs of log files, cut to the window.
    pub files: Vec<String>,
    /// The journal of the window, when `journalctl` exists.
    pub journal: bool,
    /// Commands whose output is kept as it is.
    pub commands: Vec<CommandSource>,
}

/// A command run for a report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSource {
    /// The attachment's name (`cmd/<name>`).
    pub name: String,
    /// Program and arguments (no shell).
    pub command: Vec<String>,
    #[serde(default = "default_command_secs")]
    pub timeout_secs: u64,
    #[serde(default = "default_command_bytes")]
    pub output_bytes_max: ByteSize,
}

fn default_command_secs() -> u64 {
    10
}

fn default_command_bytes() -> ByteSize {
    ByteSize(1024 * 1024)
}

/// A gathering waiting for its window to end, persisted as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GatherJob {
    pub report_id: String,
    pub kind: String,
    pub executable: Option<String>,
    pub time_ms: u64,
    /// When the window has ended and gathering may run.
    pub due_ms: u64,
}

/// The directory of pending jobs.
pub fn jobs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("gather")
}

fn job_file_name(report_id: &str) -> String {
    format!(
        "{}.json",
        &blake3::hash(report_id.as_bytes()).to_hex()[..32]
    )
}

/// Persist a job (temp + fsync + rename).
pub fn queue_job(data_dir: &Path, job: &GatherJob) -> std::io::Result<()> {
    let dir = jobs_dir(data_dir);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(job_file_name(&job.report_id));
    let temporary = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&temporary)?;
        std::io::Write::write_all(&mut file, &serde_json::to_vec(job).expect("job serializes"))?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, &path)?;
    std::fs::File::open(&dir)?.sync_all()
}

/// Jobs whose window has ended, with their files.
pub fn due_jobs(data_dir: &Path, now_ms: u64) -> Vec<(PathBuf, GatherJob)> {
    let Ok(entries) = std::fs::read_dir(jobs_dir(data_dir)) else {
        return Vec::new();
    };
    let mut due = Vec::new();
    for entry in entries.filter_map(|entry| entry.ok()) {
        let path = entry.path();
        if path.extension().is_none_or(|extension| extension != "json") {
            continue;
        }
        match std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<GatherJob>(&bytes).ok())
        {
            Some(job) if job.due_ms <= now_ms => due.push((path, job)),
            Some(_) => {}
            None => {
                tracing::warn!(path = %path.display(), "unreadable gather job dropped");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    due
}

/// What gathering produced: named attachments and the notes on what was cut or skipped.
#[derive(Debug, Default)]
pub struct Gathered {
    pub attachments: Vec<(String, Vec<u8>)>,
    pub notes: Vec<String>,
}

/// One log record: a timestamped line and the lines without a timestamp after it.
#[derive(Clone, Debug)]
struct Record {
    source: usize,
    index: usize,
    time_ms: Option<u64>,
    text: String,
    important: bool,
}

fn is_important(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    [
        "error", "warn", "fail", "fatal", "panic", "critical", "oops", "bug:",
    ]
    .iter()
    .any(|word| lower.contains(word))
}

/// The time of a log line, when it starts with one. `year` completes syslog stamps (which
/// have none); `boot_ms` turns dmesg's seconds since boot into wall time. Times without a
/// zone are taken as UTC.
pub fn line_time_ms(line: &str, year: i32, boot_ms: Option<u64>) -> Option<u64> {
    let line = line.trim_start();
    // dmesg: "[  123.456789] …"
    if let Some(rest) = line.strip_prefix('[')
        && let Some((seconds, _)) = rest.split_once(']')
        && let (Ok(seconds), Some(boot_ms)) = (seconds.trim().parse::<f64>(), boot_ms)
    {
        return Some(boot_ms + (seconds * 1000.0) as u64);
    }
    let first = line.split_whitespace().next()?;
    // RFC 3339 in one word: 2026-11-26T15:40:46.123+01:00 / …Z
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(first) {
        return u64::try_from(time.timestamp_millis()).ok();
    }
    // ISO 8601 with a space: 2026-11-26 15:40:46[.,]123
    if first.len() == 10 && first.as_bytes()[4] == b'-' {
        let second = line.split_whitespace().nth(1)?.replace(',', ".");
        let text = format!("{first} {second}");
        for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M:%S"] {
            if let Ok(time) = NaiveDateTime::parse_from_str(&text, format) {
                return u64::try_from(Utc.from_utc_datetime(&time).timestamp_millis()).ok();
            }
        }
        return None;
    }
    // syslog: "Nov 26 15:40:46 host prog: …"
    let mut words = line.split_whitespace();
    let (month, day, clock) = (words.next()?, words.next()?, words.next()?);
    if month.len() == 3 && clock.len() >= 8 && clock.as_bytes()[2] == b':' {
        let text = format!("{year} {month} {day} {}", &clock[..8]);
        if let Ok(time) = NaiveDateTime::parse_from_str(&text, "%Y %b %d %H:%M:%S") {
            return u64::try_from(Utc.from_utc_datetime(&time).timestamp_millis()).ok();
        }
    }
    None
}

/// Split a log into records and keep those in `[from_ms, to_ms]`. A log with no
/// timestamps at all is kept whole (the budget cuts it from the start, keeping its end).
fn records_in_window(
    source: usize,
    text: &str,
    window: Window,
    year: i32,
    boot_ms: Option<u64>,
    notes: &mut Vec<String>,
    name: &str,
) -> Vec<Record> {
    let mut records: Vec<Record> = Vec::new();
    let mut timestamps = 0usize;
    for (index, line) in text.lines().take(LINES_PER_FILE_MAX).enumerate() {
        match line_time_ms(line, year, boot_ms) {
            Some(time_ms) => {
                timestamps += 1;
                records.push(Record {
                    source,
                    index,
                    time_ms: Some(time_ms),
                    text: line.to_string(),
                    important: is_important(line),
                });
            }
            None => match records.last_mut() {
                Some(previous) => {
                    previous.text.push('\n');
                    previous.text.push_str(line);
                    previous.important |= is_important(line);
                }
                None => records.push(Record {
                    source,
                    index,
                    time_ms: None,
                    text: line.to_string(),
                    important: is_important(line),
                }),
            },
        }
    }
    if timestamps == 0 {
        notes.push(format!(
            "{name}: no timestamps found; kept whole, subject to the budget"
        ));
        return records;
    }
    let total = records.len();
    let kept: Vec<Record> = records
        .into_iter()
        .filter(|record| {
            record
                .time_ms
                .is_some_and(|time| time >= window.from_ms && time <= window.to_ms)
        })
        .collect();
    if kept.len() < total {
        notes.push(format!(
            "{name}: {} of {total} records outside the window were cut",
            total - kept.len()
        ));
    }
    kept
}

/// Keep records within `budget_bytes`: important ones first, then nearest the problem;
/// gives them back in their original order.
fn fit_budget(
    mut records: Vec<Record>,
    problem_ms: u64,
    budget_bytes: u64,
    notes: &mut Vec<String>,
) -> Vec<Record> {
    let total_bytes: u64 = records
        .iter()
        .map(|record| record.text.len() as u64 + 1)
        .sum();
    if total_bytes <= budget_bytes {
        return records;
    }
    records.sort_by_key(|record| {
        let distance = record
            .time_ms
            .map(|time| time.abs_diff(problem_ms))
            .unwrap_or(u64::MAX - record.index as u64);
        (!record.important, distance)
    });
    let mut used = 0u64;
    let total = records.len();
    let mut kept: Vec<Record> = records
        .into_iter()
        .filter(|record| {
            let size = record.text.len() as u64 + 1;
            if used + size <= budget_bytes {
                used += size;
                true
            } else {
                false
            }
        })
        .collect();
    notes.push(format!(
        "budget of {budget_bytes} bytes: kept {} of {total} records ({used} of {total_bytes} bytes), errors and warnings first, then nearest the problem",
        kept.len()
    ));
    kept.sort_by_key(|record| (record.source, record.index));
    kept
}

fn looks_binary(bytes: &[u8]) -> bool {
    let sample = &bytes[..bytes.len().min(4096)];
    let odd = sample
        .iter()
        .filter(|&&b| b == 0 || (b < 0x09) || (0x0e..0x20).contains(&b) && b != 0x1b)
        .count();
    !sample.is_empty() && odd * 10 > sample.len()
}

/// Read the end of a log file, at most [`FILE_TAIL_BYTES_MAX`]. Log directories are
/// often the application's to write, so the file is opened as one its user may have
/// swapped: never through a symlink, never a FIFO or a hard link to another file.
fn read_tail(path: &Path, notes: &mut Vec<String>) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let (mut file, length) =
        match crashmesh_untrusted::open_in_dir(path, crashmesh_untrusted::Rules::ANY_SINGLE_LINK) {
            Ok(opened) => (opened.file, opened.metadata.len()),
            Err(error) => {
                notes.push(format!("skipped: {error}"));
                return None;
            }
        };
    if length > FILE_TAIL_BYTES_MAX {
        notes.push(format!(
            "{}: {length} bytes; read the last {FILE_TAIL_BYTES_MAX}",
            path.display()
        ));
        let _ = file.seek(SeekFrom::Start(length - FILE_TAIL_BYTES_MAX));
    }
    let mut bytes = Vec::new();
    if let Err(error) = file.take(FILE_TAIL_BYTES_MAX).read_to_end(&mut bytes) {
        notes.push(format!("{}: skipped: {error}", path.display()));
        return None;
    }
    if looks_binary(&bytes) {
        notes.push(format!("{}: skipped: binary content", path.display()));
        return None;
    }
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Run a command with a time limit and an output cap (stdout and stderr together).
pub fn run_capped(
    command: &[String],
    timeout: Duration,
    bytes_max: u64,
) -> Result<(Vec<u8>, String), String> {
    use std::io::Read;
    let Some((program, arguments)) = command.split_first() else {
        return Err("empty command".into());
    };
    let mut child = Command::new(program)
        .args(arguments)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot run {program}: {error}"))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = (&mut stdout).take(bytes_max).read_to_end(&mut bytes);
        // Keep draining so the child never blocks on a full pipe.
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        bytes
    });
    let err_reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut bytes);
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        bytes
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.to_string(),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break format!("killed after the time limit of {} s", timeout.as_secs());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(error) => return Err(error.to_string()),
        }
    };
    let mut output = out_reader.join().unwrap_or_default();
    let errors = err_reader.join().unwrap_or_default();
    if !errors.is_empty() {
        output.extend_from_slice(b"\n--- stderr ---\n");
        output.extend_from_slice(&errors);
    }
    Ok((output, status))
}

/// The wall-clock time the machine booted, for dmesg timestamps.
pub fn boot_time_ms(now_ms: u64) -> Option<u64> {
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let seconds: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    now_ms.checked_sub((seconds * 1000.0) as u64)
}

/// The rules that apply to a problem.
pub fn matching_rules<'a>(
    config: &'a GatherConfig,
    kind: &str,
    executable: Option<&str>,
) -> Vec<&'a GatherRule> {
    config
        .rules
        .iter()
        .filter(|rule| rule.kinds.is_empty() || rule.kinds.iter().any(|k| k == kind))
        .filter(|rule| match (&rule.executable, executable) {
            (None, _) => true,
            (Some(pattern), Some(executable)) => {
                glob::Pattern::new(pattern).is_ok_and(|glob| glob.matches(executable))
            }
            (Some(_), None) => false,
        })
        .collect()
}

/// Gather every source the rules name for a problem at `time_ms`.
pub fn gather(config: &GatherConfig, job: &GatherJob, now_ms: u64) -> Gathered {
    let window = Window {
        from_ms: job.time_ms.saturating_sub(config.before_secs * 1000),
        to_ms: job.time_ms + config.after_secs * 1000,
        problem_ms: job.time_ms,
    };
    gather_window(config, &job.kind, job.executable.as_deref(), window, now_ms)
}

/// A time window around a problem (unix ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub from_ms: u64,
    pub to_ms: u64,
    /// The moment the budget keeps the nearest lines of.
    pub problem_ms: u64,
}

/// Gather every source the rules for `kind` and `executable` name, cut to `window` — a
/// problem of this node, or a peer's problem the aggregator asks this node's logs of.
pub fn gather_window(
    config: &GatherConfig,
    kind: &str,
    executable: Option<&str>,
    window: Window,
    now_ms: u64,
) -> Gathered {
    let mut gathered = Gathered::default();
    let Window {
        from_ms,
        to_ms,
        problem_ms,
    } = window;
    let year = Utc
        .timestamp_millis_opt(problem_ms as i64)
        .single()
        .map(|t| t.year())
        .unwrap_or(1970);
    let boot_ms = boot_time_ms(now_ms);
    let rules = matching_rules(config, kind, executable);
    let mut names: Vec<String> = Vec::new();
    let mut records: Vec<Record> = Vec::new();
    let mut seen_files: Vec<PathBuf> = Vec::new();
    for rule in &rules {
        for pattern in &rule.files {
            let paths = match glob::glob(pattern) {
                Ok(paths) => paths.filter_map(|path| path.ok()).collect::<Vec<_>>(),
                Err(error) => {
                    gathered.notes.push(format!("{pattern}: bad glob: {error}"));
                    continue;
                }
            };
            if paths.len() > FILES_PER_GLOB_MAX {
                gathered.notes.push(format!(
                    "{pattern}: {} files; only the first {FILES_PER_GLOB_MAX} read",
                    paths.len()
                ));
            }
            for path in paths.into_iter().take(FILES_PER_GLOB_MAX) {
                let is_directory = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
                if seen_files.contains(&path) || is_directory {
                    continue;
                }
                seen_files.push(path.clone());
                let Some(text) = read_tail(&path, &mut gathered.notes) else {
                    continue;
                };
                let name = format!("log{}", path.display());
                let source = names.len();
                records.extend(records_in_window(
                    source,
                    &text,
                    window,
                    year,
                    boot_ms,
                    &mut gathered.notes,
                    &name,
                ));
                names.push(name);
            }
        }
    }
    let kept = fit_budget(
        records,
        problem_ms,
        config.report_bytes_max.0,
        &mut gathered.notes,
    );
    for (source, name) in names.iter().enumerate() {
        let text: Vec<&str> = kept
            .iter()
            .filter(|record| record.source == source)
            .map(|record| record.text.as_str())
            .collect();
        if !text.is_empty() {
            let mut bytes = text.join("\n").into_bytes();
            bytes.push(b'\n');
            gathered.attachments.push((name.clone(), bytes));
        }
    }

    let mut remaining = config.report_bytes_max.0.saturating_sub(
        gathered
            .attachments
            .iter()
            .map(|(_, b)| b.len() as u64)
            .sum(),
    );
    if rules.iter().any(|rule| rule.journal) {
        let command = vec![
            "journalctl".to_string(),
            "--no-pager".into(),
            "-o".into(),
            "export".into(),
            "--since".into(),
            format!("@{}", from_ms / 1000),
            "--until".into(),
            format!("@{}", to_ms.div_ceil(1000)),
        ];
        match run_capped(&command, Duration::from_secs(30), remaining) {
            Ok((output, _)) if !output.is_empty() => {
                remaining = remaining.saturating_sub(output.len() as u64);
                gathered.attachments.push(("journal.export".into(), output));
            }
            Ok(_) => gathered.notes.push("journal: empty for the window".into()),
            Err(error) => gathered.notes.push(format!("journal: {error}")),
        }
    }
    for rule in &rules {
        for source in &rule.commands {
            let cap = source.output_bytes_max.0.min(remaining);
            match run_capped(
                &source.command,
                Duration::from_secs(source.timeout_secs),
                cap,
            ) {
                Ok((output, status)) => {
                    remaining = remaining.saturating_sub(output.len() as u64);
                    gathered
                        .notes
                        .push(format!("cmd/{}: {status}", source.name));
                    gathered
                        .attachments
                        .push((format!("cmd/{}", source.name), output));
                }
                Err(error) => gathered.notes.push(format!("cmd/{}: {error}", source.name)),
            }
        }
    }
    gathered
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBLEM_MS: u64 = 1_795_700_000_000; // 2026-11-26T…Z

    fn iso(ms: u64) -> String {
        Utc.timestamp_millis_opt(ms as i64)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string()
    }

    #[test]
    fn timestamps_of_the_common_formats_parse() {
        let year = 2026;
        let expected = Utc
            .with_ymd_and_hms(2026, 11, 26, 15, 40, 46)
            .unwrap()
            .timestamp_millis() as u64;
        for line in [
            "2026-11-26T15:40:46Z csd[12]: chunk ok",
            "2026-11-26T16:40:46+01:00 csd[12]: chunk ok",
            "2026-11-26 15:40:46 INFO chunk ok",
            "2026-11-26 15:40:46,000 INFO chunk ok",
            "Nov 26 15:40:46 node1 csd[12]: chunk ok",
        ] {
            assert_eq!(line_time_ms(line, year, None), Some(expected), "{line}");
        }
        assert_eq!(
            line_time_ms("[   12.500000] usb 1-1: new device", year, Some(1000)),
            Some(13_500)
        );
        assert_eq!(
            line_time_ms("    at java.lang.Thread.run", year, None),
            None
        );
    }

    #[test]
    fn a_log_is_cut_to_the_window_with_continuation_lines_kept() {
        let mut text = String::new();
        for minutes in [-30i64, -5, 0, 2, 30] {
            let ms = (PROBLEM_MS as i64 + minutes * 60_000) as u64;
            text.push_str(&format!(
                "{} csd: event at {minutes} min\n  continued {minutes}\n",
                iso(ms)
            ));
        }
        let mut notes = Vec::new();
        let window = Window {
            from_ms: PROBLEM_MS - 600_000,
            to_ms: PROBLEM_MS + 60_000,
            problem_ms: PROBLEM_MS,
        };
        let kept = records_in_window(0, &text, window, 2026, None, &mut notes, "log");
        let texts: Vec<&str> = kept.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert!(texts[0].contains("event at -5 min\n  continued -5"));
        assert!(texts[1].contains("event at 0 min"));
        assert!(
            notes[0].contains("3 of 5 records outside the window"),
            "{notes:?}"
        );
    }

    #[test]
    fn the_budget_keeps_errors_and_the_nearest_lines_first() {
        let mut records = Vec::new();
        for (index, (offset, text)) in [
            (-500_000i64, "old info"),
            (-400_000, "old ERROR disk failed"),
            (-1000, "near info"),
            (-300_000, "middle info"),
        ]
        .iter()
        .enumerate()
        {
            records.push(Record {
                source: 0,
                index,
                time_ms: Some((PROBLEM_MS as i64 + offset) as u64),
                text: text.to_string(),
                important: is_important(text),
            });
        }
        let mut notes = Vec::new();
        let kept = fit_budget(records, PROBLEM_MS, 35, &mut notes);
        let texts: Vec<&str> = kept.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(texts, ["old ERROR disk failed", "near info"]);
        assert!(
            notes[0].starts_with("budget of 35 bytes: kept 2 of 4 records"),
            "{notes:?}"
        );
    }

    #[test]
    fn gathering_follows_rules_and_skips_what_it_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("csd.log");
        std::fs::write(
            &log,
            format!(
                "{} csd: replication failed\n{} csd: far away\n",
                iso(PROBLEM_MS - 1000),
                iso(PROBLEM_MS - 7_200_000)
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("binary.log"),
            [0u8, 1, 2, 3, 0, 0, 0, 9].repeat(100),
        )
        .unwrap();
        // What the application's user can plant in its log directory: a link to a file
        // only root reads, and a FIFO nobody writes.
        let secret = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            secret.path(),
            format!("{} root secret\n", iso(PROBLEM_MS - 500)),
        )
        .unwrap();
        std::os::unix::fs::symlink(secret.path(), dir.path().join("planted.log")).unwrap();
        let fifo = dir.path().join("fifo.log");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o666) }, 0);
        let config = GatherConfig {
            rules: vec![
                GatherRule {
                    kinds: vec!["core".into()],
                    executable: Some("/usr/bin/vstorage*".into()),
                    files: vec![format!("{}/*.log", dir.path().display())],
                    commands: vec![CommandSource {
                        name: "echo".into(),
                        command: vec!["echo".into(), "hello".into()],
                        timeout_secs: 5,
                        output_bytes_max: ByteSize(1024),
                    }],
                    ..GatherRule::default()
                },
                GatherRule {
                    kinds: vec!["python".into()],
                    files: vec!["/nonexistent/*.log".into()],
                    ..GatherRule::default()
                },
            ],
            ..GatherConfig::default()
        };
        let job = GatherJob {
            report_id: "r".into(),
            kind: "core".into(),
            executable: Some("/usr/bin/vstorage-csd".into()),
            time_ms: PROBLEM_MS,
            due_ms: 0,
        };
        let gathered = gather(&config, &job, PROBLEM_MS + 60_000);
        let names: Vec<&str> = gathered
            .attachments
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        assert!(
            names.contains(&format!("log{}", log.display()).as_str()),
            "{names:?}"
        );
        assert!(names.contains(&"cmd/echo"), "{names:?}");
        assert!(
            !names
                .iter()
                .any(|name| name.contains("planted") || name.contains("fifo")),
            "{names:?}"
        );
        for note in [
            "planted.log: a symbolic link",
            "fifo.log: not a regular file",
        ] {
            assert!(
                gathered.notes.iter().any(|n| n.contains(note)),
                "{note}: {:?}",
                gathered.notes
            );
        }
        let (_, csd) = gathered
            .attachments
            .iter()
            .find(|(name, _)| name.ends_with("csd.log"))
            .unwrap();
        assert_eq!(String::from_utf8_lossy(csd).lines().count(), 1);
        assert!(
            gathered
                .notes
                .iter()
                .any(|note| note.contains("binary.log: skipped: binary")),
            "{:?}",
            gathered.notes
        );

        let other = GatherJob {
            executable: Some("/usr/bin/other".into()),
            ..job
        };
        assert!(gather(&config, &other, PROBLEM_MS).attachments.is_empty());
    }

    #[test]
    fn commands_are_cut_and_killed_at_their_limits() {
        let (output, status) = run_capped(&["yes".into()], Duration::from_secs(1), 1000).unwrap();
        assert_eq!(output.len(), 1000);
        assert!(
            status.contains("killed") || status.contains("signal"),
            "{status}"
        );
        let (_, status) = run_capped(
            &["sleep".into(), "5".into()],
            Duration::from_millis(200),
            10,
        )
        .unwrap();
        assert!(status.contains("killed after the time limit"), "{status}");
        assert!(run_capped(&["/nonexistent/program".into()], Duration::from_secs(1), 10).is_err());
    }
}

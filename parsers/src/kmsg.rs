//! The live kernel log: `/dev/kmsg` records in, problems out, with a quiet-period close
//! and a per-signature rate limit. Sans-IO: the daemon reads the records and the clock and
//! passes both in.
//!
//! # Invariants
//! - Memory is bounded by [`KernelLogLimits`]: at most `open_problems_max` open problems
//!   (one per printk caller, so that reports of two CPUs that interleave stay apart), each
//!   of at most `lines_per_problem_max` lines of at most `line_bytes_max` bytes; at most
//!   `signatures_tracked_max` rate-limit windows; at most `suppression_reports_max`
//!   undrained suppression reports; at most `output_problems_max` problems per call.
//! - Every record pushed is either part of a problem, or not part of any; a problem is
//!   emitted once, when it closes: on an end marker, on the next unrelated line, when a
//!   record arrives more than `quiet_period_ms` after its last line (by the records' own
//!   timestamps), or when [`KernelLogAssembler::poll`] sees `quiet_period_ms` pass.
//! - Per signature, at most `problems_per_signature_per_window_max` problems are emitted per
//!   `rate_limit_window_ms`; the rest are counted, never silently lost: each window that
//!   suppressed anything yields one [`SuppressedProblems`] report.

use std::collections::HashMap;

use crashmesh_protocol::model::{Problem, ProblemKind};
use thiserror::Error;

use crate::kernel::{
    KernelLogLimits, ProblemExtractor, RawProblem, analyze_raw_problem,
    strip_kernel_message_prefixes,
};
use crate::text::truncate_to_bytes;

/// The syslog facility of kernel messages.
pub const KERNEL_FACILITY: u8 = 0;
/// Bytes of one raw `/dev/kmsg` record accepted by [`parse_kmsg_record`].
pub const KMSG_RECORD_BYTES_MAX: usize = 64 * 1024;
/// `KEY=value` dictionary entries kept of one record.
pub const KMSG_DICTIONARY_ENTRIES_MAX: usize = 16;

/// One `/dev/kmsg` record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KmsgRecord {
    /// The record's sequence number (gaps mean the ring buffer overwrote records).
    pub sequence: u64,
    /// Microseconds since boot (`CLOCK_MONOTONIC`) when the kernel logged it.
    pub timestamp_usecs: u64,
    /// The syslog facility: 0 for the kernel, 1 for user records written into
    /// `/dev/kmsg`, … Keep only [`KERNEL_FACILITY`] unless told otherwise.
    pub facility: u8,
    /// The log level, 0 (emergency) to 7 (debug).
    pub level: u8,
    /// The `c` flag of older kernels: this record continues the previous one.
    pub continuation: bool,
    /// The printk caller (`T123` for a task, `C2` for a CPU) when the kernel reports it.
    pub caller: Option<String>,
    /// The message, with the kernel's `\xNN` escapes kept as they are.
    pub message: String,
    /// The record's `KEY=value` continuation lines (`SUBSYSTEM=pci`, `DEVICE=+pci:…`).
    pub dictionary: Vec<(String, String)>,
}

impl KmsgRecord {
    /// A kernel-facility record with this message, for tests and replays.
    pub fn kernel(sequence: u64, timestamp_usecs: u64, message: impl Into<String>) -> KmsgRecord {
        KmsgRecord {
            sequence,
            timestamp_usecs,
            facility: KERNEL_FACILITY,
            level: 4,
            message: message.into(),
            ..KmsgRecord::default()
        }
    }

    /// True for records the kernel itself logged (facility 0).
    pub fn is_kernel_facility(&self) -> bool {
        self.facility == KERNEL_FACILITY
    }
}

/// Why a raw `/dev/kmsg` record could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum KmsgRecordError {
    /// The record is longer than [`KMSG_RECORD_BYTES_MAX`].
    #[error("record of {bytes} bytes is longer than the {KMSG_RECORD_BYTES_MAX}-byte limit")]
    TooLong {
        /// The record's length.
        bytes: usize,
    },
    /// The record is not UTF-8 (the kernel escapes every non-printable byte, so a real
    /// record always is).
    #[error("record is not UTF-8")]
    NotUtf8,
    /// No `;` separates the prefix from the message.
    #[error("record has no ';' between its prefix and its message")]
    MissingMessageSeparator,
    /// The prefix has fewer than the four fields `pri,seq,ts,flags`.
    #[error("record prefix {prefix:?} has fewer than 4 fields")]
    MissingPrefixField {
        /// The prefix as read.
        prefix: String,
    },
    /// A numeric prefix field is not a number.
    #[error("record prefix field {field} is not a number: {value:?}")]
    BadNumber {
        /// Which field: `priority`, `sequence` or `timestamp`.
        field: &'static str,
        /// The text found.
        value: String,
    },
}

/// Parses one raw `/dev/kmsg` record: `pri,seq,ts,flags[,key=value…];message` followed by
/// optional ` KEY=value` lines.
pub fn parse_kmsg_record(raw: &[u8]) -> Result<KmsgRecord, KmsgRecordError> {
    if raw.len() > KMSG_RECORD_BYTES_MAX {
        return Err(KmsgRecordError::TooLong { bytes: raw.len() });
    }
    let text = std::str::from_utf8(raw).map_err(|_| KmsgRecordError::NotUtf8)?;
    let (prefix, rest) = text
        .split_once(';')
        .ok_or(KmsgRecordError::MissingMessageSeparator)?;
    let fields: Vec<&str> = prefix.split(',').collect();
    if fields.len() < 4 {
        return Err(KmsgRecordError::MissingPrefixField {
            prefix: truncate_to_bytes(prefix, 64).to_string(),
        });
    }
    let number = |field: &'static str, value: &str| -> Result<u64, KmsgRecordError> {
        value
            .trim()
            .parse::<u64>()
            .map_err(|_| KmsgRecordError::BadNumber {
                field,
                value: truncate_to_bytes(value, 64).to_string(),
            })
    };
    let priority = number("priority", fields[0])?;
    let sequence = number("sequence", fields[1])?;
    let timestamp_usecs = number("timestamp", fields[2])?;
    let continuation = fields[3].trim() == "c";
    let caller = fields[4..]
        .iter()
        .find_map(|field| field.strip_prefix("caller="))
        .map(|caller| truncate_to_bytes(caller, 32).to_string());

    let mut parts = rest.split('\n');
    let message = parts.next().unwrap_or("").to_string();
    let mut dictionary = Vec::new();
    for line in parts {
        let Some(entry) = line.strip_prefix(' ') else {
            continue;
        };
        if dictionary.len() >= KMSG_DICTIONARY_ENTRIES_MAX {
            break;
        }
        if let Some((key, value)) = entry.split_once('=') {
            dictionary.push((key.to_string(), value.to_string()));
        }
    }
    Ok(KmsgRecord {
        sequence,
        timestamp_usecs,
        facility: u8::try_from(priority >> 3).unwrap_or(u8::MAX),
        level: (priority & 7) as u8,
        continuation,
        caller,
        message,
        dictionary,
    })
}

/// What one rate-limit window held back for one signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuppressedProblems {
    /// The signature of the problems held back.
    pub signature: String,
    /// Their kind.
    pub kind: ProblemKind,
    /// The reason of the first problem of the window, for people.
    pub reason: String,
    /// How many problems of the window were not emitted.
    pub suppressed_count: u64,
    /// When the window started (`now_ms` of its first problem).
    pub window_start_ms: u64,
}

/// Counters over the assembler's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AssemblerStats {
    /// Records pushed.
    pub records: u64,
    /// Problems emitted.
    pub problems_emitted: u64,
    /// Problems held back by the rate limit.
    pub problems_suppressed: u64,
    /// Open problems closed early because `open_problems_max` callers were open.
    pub problems_closed_for_room: u64,
    /// Problems dropped because one call's output was full.
    pub problems_dropped_output_full: u64,
    /// Suppression reports dropped because `suppression_reports_max` were undrained.
    pub suppression_reports_dropped: u64,
}

struct CallerStream {
    caller: Option<String>,
    extractor: ProblemExtractor,
    last_line_arrival_ms: u64,
    last_line_timestamp_usecs: u64,
}

struct RateWindow {
    kind: ProblemKind,
    reason: String,
    window_start_ms: u64,
    emitted: u32,
    suppressed: u64,
}

/// Assembles problems from a live `/dev/kmsg` stream (see the module docs).
pub struct KernelLogAssembler {
    limits: KernelLogLimits,
    streams: Vec<CallerStream>,
    windows: HashMap<String, RateWindow>,
    suppressed: Vec<SuppressedProblems>,
    stats: AssemblerStats,
}

impl KernelLogAssembler {
    /// An assembler with these limits.
    pub fn new(limits: KernelLogLimits) -> KernelLogAssembler {
        assert!(
            limits.open_problems_max >= 1,
            "open_problems_max must be at least 1"
        );
        assert!(
            limits.lines_per_problem_max >= 1,
            "lines_per_problem_max must be at least 1"
        );
        KernelLogAssembler {
            limits,
            streams: Vec::new(),
            windows: HashMap::new(),
            suppressed: Vec::new(),
            stats: AssemblerStats::default(),
        }
    }

    /// Feeds one record (the caller filters by facility); returns the problems it closed.
    pub fn push(&mut self, record: KmsgRecord, now_ms: u64) -> Vec<Problem> {
        self.stats.records += 1;
        let mut raw_problems = Vec::new();
        let index = self.stream_index(record.caller.as_deref(), now_ms, &mut raw_problems);
        let quiet_period_usecs = self.limits.quiet_period_ms.saturating_mul(1000);
        let stream = &mut self.streams[index];
        if stream.extractor.has_open_problem()
            && record
                .timestamp_usecs
                .saturating_sub(stream.last_line_timestamp_usecs)
                >= quiet_period_usecs
        {
            stream.extractor.finish(&mut raw_problems);
        }
        let message = truncate_to_bytes(&record.message, self.limits.line_bytes_max);
        // A multi-line printk arrives with its newlines escaped as `\x0a`; like the
        // whole-file parser (and dmesg), the record stays one line.
        stream
            .extractor
            .push_line(strip_kernel_message_prefixes(message), &mut raw_problems);
        stream.last_line_arrival_ms = now_ms;
        stream.last_line_timestamp_usecs = record.timestamp_usecs;
        self.emit(raw_problems, now_ms)
    }

    /// Closes problems quiet for `quiet_period_ms` and ends expired rate-limit windows.
    pub fn poll(&mut self, now_ms: u64) -> Vec<Problem> {
        let mut raw_problems = Vec::new();
        for stream in &mut self.streams {
            if stream.extractor.has_open_problem()
                && now_ms.saturating_sub(stream.last_line_arrival_ms) >= self.limits.quiet_period_ms
            {
                stream.extractor.finish(&mut raw_problems);
            }
        }
        self.streams
            .retain(|stream| stream.extractor.has_open_problem() || stream.caller.is_none());
        let problems = self.emit(raw_problems, now_ms);
        self.expire_windows(now_ms, false);
        problems
    }

    /// Closes every open problem (shutdown, or the end of a replayed log).
    pub fn flush(&mut self, now_ms: u64) -> Vec<Problem> {
        let mut raw_problems = Vec::new();
        for stream in &mut self.streams {
            stream.extractor.finish(&mut raw_problems);
        }
        self.streams.clear();
        self.emit(raw_problems, now_ms)
    }

    /// When [`KernelLogAssembler::poll`] should run next, if anything is waiting.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let quiet = self
            .streams
            .iter()
            .filter(|stream| stream.extractor.has_open_problem())
            .map(|stream| {
                stream
                    .last_line_arrival_ms
                    .saturating_add(self.limits.quiet_period_ms)
            });
        let windows = self
            .windows
            .values()
            .filter(|window| window.suppressed > 0)
            .map(|window| {
                window
                    .window_start_ms
                    .saturating_add(self.limits.rate_limit_window_ms)
            });
        quiet.chain(windows).min()
    }

    /// Takes the reports of rate-limit windows that ended having held problems back.
    pub fn drain_suppressed(&mut self) -> Vec<SuppressedProblems> {
        std::mem::take(&mut self.suppressed)
    }

    /// Counters since the assembler was made.
    pub fn stats(&self) -> AssemblerStats {
        self.stats
    }

    fn stream_index(
        &mut self,
        caller: Option<&str>,
        now_ms: u64,
        raw_problems: &mut Vec<RawProblem>,
    ) -> usize {
        if let Some(index) = self
            .streams
            .iter()
            .position(|stream| stream.caller.as_deref() == caller)
        {
            return index;
        }
        if self.streams.len() >= self.limits.open_problems_max {
            // Make room: close the stream that was quiet longest.
            let oldest = self
                .streams
                .iter()
                .enumerate()
                .min_by_key(|(_, stream)| stream.last_line_arrival_ms)
                .map(|(index, _)| index)
                .expect("streams is not empty");
            let mut stream = self.streams.remove(oldest);
            if stream.extractor.has_open_problem() {
                self.stats.problems_closed_for_room += 1;
            }
            stream.extractor.finish(raw_problems);
        }
        self.streams.push(CallerStream {
            caller: caller.map(str::to_string),
            extractor: ProblemExtractor::new(self.limits),
            last_line_arrival_ms: now_ms,
            last_line_timestamp_usecs: 0,
        });
        debug_assert!(self.streams.len() <= self.limits.open_problems_max);
        self.streams.len() - 1
    }

    fn emit(&mut self, raw_problems: Vec<RawProblem>, now_ms: u64) -> Vec<Problem> {
        let mut problems = Vec::new();
        for raw in raw_problems {
            let problem = analyze_raw_problem(raw);
            if !self.admit(&problem, now_ms) {
                continue;
            }
            if problems.len() >= self.limits.output_problems_max {
                self.stats.problems_dropped_output_full += 1;
                continue;
            }
            self.stats.problems_emitted += 1;
            problems.push(problem);
        }
        problems
    }

    /// The rate limit: true when `problem` may be emitted now.
    fn admit(&mut self, problem: &Problem, now_ms: u64) -> bool {
        let window_ms = self.limits.rate_limit_window_ms;
        if let Some(window) = self.windows.get(&problem.signature)
            && now_ms.saturating_sub(window.window_start_ms) >= window_ms
        {
            let window = self
                .windows
                .remove(&problem.signature)
                .expect("window exists");
            self.report_suppressed(problem.signature.clone(), window);
        }
        if !self.windows.contains_key(&problem.signature)
            && self.windows.len() >= self.limits.signatures_tracked_max
        {
            self.expire_windows(now_ms, false);
            if self.windows.len() >= self.limits.signatures_tracked_max {
                self.expire_windows(now_ms, true);
            }
        }
        let limit = self.limits.problems_per_signature_per_window_max;
        let window = self
            .windows
            .entry(problem.signature.clone())
            .or_insert_with(|| RateWindow {
                kind: problem.kind,
                reason: problem.reason.clone(),
                window_start_ms: now_ms,
                emitted: 0,
                suppressed: 0,
            });
        if window.emitted < limit {
            window.emitted += 1;
            true
        } else {
            window.suppressed += 1;
            self.stats.problems_suppressed += 1;
            false
        }
    }

    /// Ends windows older than `rate_limit_window_ms`; with `evict_oldest`, also the
    /// oldest one (to make room).
    fn expire_windows(&mut self, now_ms: u64, evict_oldest: bool) {
        let window_ms = self.limits.rate_limit_window_ms;
        let mut expired: Vec<String> = self
            .windows
            .iter()
            .filter(|(_, window)| now_ms.saturating_sub(window.window_start_ms) >= window_ms)
            .map(|(signature, _)| signature.clone())
            .collect();
        if evict_oldest
            && expired.is_empty()
            && let Some((signature, _)) = self
                .windows
                .iter()
                .min_by_key(|(signature, window)| (window.window_start_ms, (*signature).clone()))
        {
            expired.push(signature.clone());
        }
        expired.sort();
        for signature in expired {
            if let Some(window) = self.windows.remove(&signature) {
                self.report_suppressed(signature, window);
            }
        }
    }

    fn report_suppressed(&mut self, signature: String, window: RateWindow) {
        if window.suppressed == 0 {
            return;
        }
        if self.suppressed.len() >= self.limits.suppression_reports_max {
            self.stats.suppression_reports_dropped += 1;
            return;
        }
        self.suppressed.push(SuppressedProblems {
            signature,
            kind: window.kind,
            reason: window.reason,
            suppressed_count: window.suppressed,
            window_start_ms: window.window_start_ms,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_with_dictionary_and_caller() {
        let record = parse_kmsg_record(
            b"6,339,5140900,-,caller=T1;NET: Registered protocol family 10\n SUBSYSTEM=net\n DEVICE=n1\n",
        )
        .expect("valid record");
        assert_eq!(record.facility, 0);
        assert_eq!(record.level, 6);
        assert_eq!(record.sequence, 339);
        assert_eq!(record.timestamp_usecs, 5_140_900);
        assert_eq!(record.caller.as_deref(), Some("T1"));
        assert_eq!(record.message, "NET: Registered protocol family 10");
        assert_eq!(
            record.dictionary,
            vec![
                ("SUBSYSTEM".to_string(), "net".to_string()),
                ("DEVICE".to_string(), "n1".to_string())
            ]
        );
        let user = parse_kmsg_record(b"12,1,2,-;hello").expect("valid record");
        assert_eq!(user.facility, 1);
        assert_eq!(user.level, 4);
        assert!(!user.is_kernel_facility());
    }

    #[test]
    fn garbage_records_are_typed_errors() {
        assert_eq!(
            parse_kmsg_record(b"no separator"),
            Err(KmsgRecordError::MissingMessageSeparator)
        );
        assert!(matches!(
            parse_kmsg_record(b"1,2;x"),
            Err(KmsgRecordError::MissingPrefixField { .. })
        ));
        assert!(matches!(
            parse_kmsg_record(b"x,2,3,-;x"),
            Err(KmsgRecordError::BadNumber {
                field: "priority",
                ..
            })
        ));
        assert_eq!(
            parse_kmsg_record(b"\xff\xfe;"),
            Err(KmsgRecordError::NotUtf8)
        );
        assert!(matches!(
            parse_kmsg_record(&vec![b'a'; KMSG_RECORD_BYTES_MAX + 1]),
            Err(KmsgRecordError::TooLong { .. })
        ));
    }
}

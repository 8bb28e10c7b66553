//! Saved Python tracebacks: `Traceback (most recent call last):`, its `File "…", line N,
//! in func` frames with their code lines, the final `ExcType: message` (dotted types,
//! multi-line messages), chained exceptions (`During handling of the above exception,
//! another exception occurred:` / `The above exception was the direct cause of the
//! following exception:`), and bare `SyntaxError` blocks.
//!
//! # Invariants
//! - A chain is one problem: the last (outermost) exception, the one that ended the
//!   program. Its causes stay in `text` (the whole chain) and in `reason`.
//! - Frames are top first, i.e. innermost first (the reverse of the traceback's order);
//!   Python 3.11+ caret lines (`~~~^^^`) and `[Previous line repeated N more times]` are
//!   not frames.
//! - Lines that carry a log prefix (`app[123]: Traceback …`) keep being read while they
//!   carry the same prefix; the prefix is not part of the text.
//! - Bounded by [`PythonLimits`]: frames, chain length, message lines, text bytes and the
//!   number of tracebacks per input all have a maximum.

use std::sync::LazyLock;

use crashmesh_protocol::model::{Frame, FrameSource, Problem, ProblemKind};
use crashmesh_protocol::signature::python_signature;
use regex::Regex;

use crate::text::truncate_to_bytes;

/// Limits that bound what the traceback parser holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PythonLimits {
    /// Tracebacks returned per input.
    pub tracebacks_max: usize,
    /// Frames kept per exception (the innermost ones are kept).
    pub frames_per_exception_max: usize,
    /// Exceptions kept per chain (the outermost ones are kept).
    pub chain_exceptions_max: usize,
    /// Lines of one exception message.
    pub message_lines_max: usize,
    /// Bytes of one line.
    pub line_bytes_max: usize,
    /// Bytes of one traceback's text.
    pub text_bytes_max: usize,
}

impl Default for PythonLimits {
    fn default() -> Self {
        PythonLimits {
            tracebacks_max: 1_000,
            frames_per_exception_max: 256,
            chain_exceptions_max: 16,
            message_lines_max: 64,
            line_bytes_max: 4_096,
            text_bytes_max: 256 * 1024,
        }
    }
}

/// How an exception of a chain relates to the one after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainRelation {
    /// `raise … from …`: "The above exception was the direct cause of the following
    /// exception".
    DirectCause,
    /// "During handling of the above exception, another exception occurred".
    DuringHandling,
}

/// One exception of a chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PythonException {
    /// `ValueError`, `requests.exceptions.ConnectionError`, …
    pub exception_type: String,
    /// The message, lines joined with `\n`; `None` for a bare `KeyboardInterrupt`.
    pub message: Option<String>,
    /// Innermost first.
    pub frames: Vec<Frame>,
    /// How this exception leads to the next one of the chain (`None` for the last).
    pub relation_to_next: Option<ChainRelation>,
}

/// One traceback: a chain of exceptions, causes first, the one that escaped last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PythonTraceback {
    /// Causes first; the last one is the exception that escaped.
    pub chain: Vec<PythonException>,
    /// The traceback as printed (without log prefixes).
    pub text: String,
}

const REASON_BYTES_MAX: usize = 300;

impl PythonTraceback {
    /// The traceback as a problem: the outermost exception, its causes in `reason`.
    pub fn to_problem(&self) -> Problem {
        let last = self.chain.last().expect("a traceback has an exception");
        let headline = |exception: &PythonException| match &exception.message {
            Some(message) if !message.is_empty() => format!(
                "{}: {}",
                exception.exception_type,
                message.lines().next().unwrap_or("")
            ),
            _ => exception.exception_type.clone(),
        };
        let mut reason = headline(last);
        let causes: Vec<String> = self.chain[..self.chain.len() - 1]
            .iter()
            .rev()
            .map(|cause| match cause.relation_to_next {
                Some(ChainRelation::DirectCause) => format!("caused by {}", headline(cause)),
                _ => format!("while handling {}", headline(cause)),
            })
            .collect();
        if !causes.is_empty() {
            reason = format!("{reason} ({})", causes.join(", "));
        }
        let mut problem = Problem::new(
            ProblemKind::Python,
            truncate_to_bytes(&reason, REASON_BYTES_MAX),
        );
        problem.signature = python_signature(&last.exception_type, &last.frames).0;
        problem.frames = last.frames.clone();
        problem.exception_type = Some(last.exception_type.clone());
        problem.message = last.message.clone();
        problem.text = Some(self.text.clone());
        // The script: the outermost frame of the escaping exception that is a real file.
        problem.executable = last
            .frames
            .iter()
            .rev()
            .filter_map(|frame| frame.file.as_deref())
            .find(|file| !file.starts_with('<'))
            .map(str::to_string);
        problem.version = self
            .chain
            .iter()
            .flat_map(|exception| exception.frames.iter())
            .filter_map(|frame| frame.file.as_deref())
            .find_map(|file| PYTHON_VERSION_IN_PATH.captures(file))
            .and_then(|captures| captures.get(1))
            .map(|m| m.as_str().to_string());
        problem
    }
}

static FRAME_LINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"^ {2}File "(?P<file>[^"]*)", line (?P<line>\d+)(?:, in (?P<function>.+))?$"#)
        .expect("valid regex")
});
static CARET_LINE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\s*[~^]+\s*$").expect("valid regex"));
static EXCEPTION_LINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?P<type>[A-Za-z_][\w.]*)(?::(?: ?(?P<message>.*))?)?$").expect("valid regex")
});
static PYTHON_VERSION_IN_PATH: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"python(\d+\.\d+)").expect("valid regex"));
static LOG_RECORD_START: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:\d{4}-\d\d-\d\d[ T]\d|[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d|\[\s*\d+\.\d+\]|(?:INFO|ERROR|WARNING|DEBUG|CRITICAL)[: ])")
        .expect("valid regex")
});

const TRACEBACK_HEADER: &str = "Traceback (most recent call last):";
const DURING_HANDLING: &str = "During handling of the above exception, another exception occurred:";
const DIRECT_CAUSE: &str = "The above exception was the direct cause of the following exception:";
const SYNTAX_ERRORS: &[&str] = &["SyntaxError", "IndentationError", "TabError"];

/// Every traceback in `text`, as problems.
pub fn parse_python_tracebacks(text: &str) -> Vec<Problem> {
    parse_python_tracebacks_detailed(text, &PythonLimits::default())
        .iter()
        .map(PythonTraceback::to_problem)
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Outside a traceback.
    Idle,
    /// Reading frames.
    Frames,
    /// After the exception line: its message may go on.
    Message,
    /// After a blank line that followed an exception.
    AfterBlank,
    /// After a chain marker, waiting for the next `Traceback` line.
    AwaitingTraceback,
}

struct Builder {
    limits: PythonLimits,
    prefix: String,
    chain: Vec<PythonException>,
    frames: Vec<Frame>,
    frames_dropped: bool,
    text: String,
    pending_relation: Option<ChainRelation>,
}

impl Builder {
    fn new(limits: PythonLimits, prefix: &str) -> Builder {
        Builder {
            limits,
            prefix: prefix.to_string(),
            chain: Vec::new(),
            frames: Vec::new(),
            frames_dropped: false,
            text: String::new(),
            pending_relation: None,
        }
    }

    fn push_text(&mut self, line: &str) {
        if self.text.len() + line.len() + 1 > self.limits.text_bytes_max {
            return;
        }
        if !self.text.is_empty() {
            self.text.push('\n');
        }
        self.text.push_str(line);
    }

    /// The line without this traceback's log prefix, or `None` if it lacks the prefix.
    fn strip_prefix<'a>(&self, line: &'a str) -> Option<&'a str> {
        if self.prefix.is_empty() {
            return Some(line);
        }
        if let Some(rest) = line.strip_prefix(self.prefix.as_str()) {
            return Some(rest);
        }
        // Syslog and journal prefixes carry a changing time: match on `ident[pid]: `.
        let ident = self.prefix.trim_end().rsplit(' ').next().unwrap_or("");
        if ident.ends_with(':') && ident.len() > 1 {
            let marker = format!("{ident} ");
            if let Some(position) = line.find(&marker) {
                return Some(&line[position + marker.len()..]);
            }
        }
        None
    }

    fn add_frame(&mut self, frame: Frame) {
        if self.frames.len() >= self.limits.frames_per_exception_max {
            // Keep the innermost frames: drop the oldest (outermost) one.
            self.frames.remove(0);
            self.frames_dropped = true;
        }
        self.frames.push(frame);
    }

    fn finish_exception(&mut self, exception_type: &str, message: Option<String>) {
        let mut frames = std::mem::take(&mut self.frames);
        frames.reverse();
        if let Some(previous) = self.chain.last_mut() {
            previous.relation_to_next = self.pending_relation.take();
        }
        if self.chain.len() >= self.limits.chain_exceptions_max {
            self.chain.remove(0);
        }
        self.chain.push(PythonException {
            exception_type: exception_type.to_string(),
            message,
            frames,
            relation_to_next: None,
        });
        self.frames_dropped = false;
    }

    fn append_message_line(&mut self, line: &str) -> bool {
        let message_lines_max = self.limits.message_lines_max;
        let Some(last) = self.chain.last_mut() else {
            return false;
        };
        let message = last.message.get_or_insert_with(String::new);
        if message.lines().count() >= message_lines_max {
            return false;
        }
        message.push('\n');
        message.push_str(line);
        true
    }

    fn build(self) -> Option<PythonTraceback> {
        if self.chain.is_empty() {
            return None;
        }
        Some(PythonTraceback {
            chain: self.chain,
            text: self.text,
        })
    }
}

fn parse_exception_line(line: &str) -> (String, Option<String>) {
    match EXCEPTION_LINE.captures(line) {
        Some(captures) => (
            captures["type"].to_string(),
            captures.name("message").map(|m| m.as_str().to_string()),
        ),
        // Not `Type: message`: keep the whole line as the message of an unknown type.
        None => ("UnknownException".to_string(), Some(line.to_string())),
    }
}

fn python_frame(captures: &regex::Captures<'_>) -> Frame {
    Frame {
        function: captures.name("function").map(|m| m.as_str().to_string()),
        file: Some(captures["file"].to_string()),
        line: captures["line"].parse().ok(),
        reliable: true,
        found_by: Some(FrameSource::Text),
        ..Frame::default()
    }
}

/// Every traceback in `text`, with the whole chain of each.
pub fn parse_python_tracebacks_detailed(text: &str, limits: &PythonLimits) -> Vec<PythonTraceback> {
    let lines: Vec<&str> = crate::text::lines(text)
        .map(|line| truncate_to_bytes(line, limits.line_bytes_max))
        .collect();
    let mut tracebacks = Vec::new();
    let mut state = State::Idle;
    let mut builder: Option<Builder> = None;
    let mut index = 0;
    while index < lines.len() {
        if tracebacks.len() >= limits.tracebacks_max {
            break;
        }
        let raw = lines[index];
        if state == State::Idle {
            if let Some(position) = raw.find(TRACEBACK_HEADER) {
                let mut new_builder = Builder::new(*limits, &raw[..position]);
                new_builder.push_text(TRACEBACK_HEADER);
                builder = Some(new_builder);
                state = State::Frames;
            } else if let Some(syntax_error) = bare_syntax_error(&lines[index..], limits) {
                index += syntax_error.text.lines().count();
                tracebacks.push(syntax_error);
                continue;
            }
            index += 1;
            continue;
        }
        let current = builder.as_mut().expect("a builder outside Idle");
        let Some(line) = current.strip_prefix(raw) else {
            // The log prefix changed: this traceback ended (maybe without its exception).
            if let Some(traceback) = builder.take().and_then(Builder::build) {
                tracebacks.push(traceback);
            }
            state = State::Idle;
            continue;
        };
        let trimmed = line.trim();
        match state {
            State::Idle => unreachable!("handled above"),
            State::Frames => {
                if let Some(captures) = FRAME_LINE.captures(line) {
                    let frame = python_frame(&captures);
                    current.add_frame(frame);
                    current.push_text(line);
                } else if line.starts_with("    ") || line.starts_with('\t') {
                    if !CARET_LINE.is_match(line)
                        && !trimmed.starts_with("[Previous line repeated")
                        && let Some(frame) = current.frames.last_mut()
                        && frame.code.is_none()
                        && !trimmed.is_empty()
                    {
                        frame.code = Some(trimmed.to_string());
                    }
                    current.push_text(line);
                } else if trimmed.starts_with("[Previous line repeated") || trimmed.is_empty() {
                    current.push_text(line);
                } else if trimmed == TRACEBACK_HEADER {
                    // A header without an exception line: start over.
                    current.frames.clear();
                    current.push_text(line);
                } else {
                    let (exception_type, message) = parse_exception_line(trimmed);
                    current.finish_exception(&exception_type, message);
                    current.push_text(line);
                    state = State::Message;
                }
            }
            State::Message => {
                if trimmed.is_empty() {
                    state = State::AfterBlank;
                } else if trimmed == DURING_HANDLING || trimmed == DIRECT_CAUSE {
                    current.pending_relation = Some(if trimmed == DIRECT_CAUSE {
                        ChainRelation::DirectCause
                    } else {
                        ChainRelation::DuringHandling
                    });
                    current.push_text("");
                    current.push_text(trimmed);
                    state = State::AwaitingTraceback;
                } else if line.contains(TRACEBACK_HEADER) || LOG_RECORD_START.is_match(line) {
                    if let Some(traceback) = builder.take().and_then(Builder::build) {
                        tracebacks.push(traceback);
                    }
                    state = State::Idle;
                    continue;
                } else if current.append_message_line(line) {
                    current.push_text(line);
                } else {
                    if let Some(traceback) = builder.take().and_then(Builder::build) {
                        tracebacks.push(traceback);
                    }
                    state = State::Idle;
                    continue;
                }
            }
            State::AfterBlank => {
                if trimmed.is_empty() {
                    // Stay: chained exceptions are separated by blank lines.
                } else if trimmed == DURING_HANDLING || trimmed == DIRECT_CAUSE {
                    current.pending_relation = Some(if trimmed == DIRECT_CAUSE {
                        ChainRelation::DirectCause
                    } else {
                        ChainRelation::DuringHandling
                    });
                    current.push_text("");
                    current.push_text(trimmed);
                    state = State::AwaitingTraceback;
                } else {
                    if let Some(traceback) = builder.take().and_then(Builder::build) {
                        tracebacks.push(traceback);
                    }
                    state = State::Idle;
                    continue;
                }
            }
            State::AwaitingTraceback => {
                if trimmed.is_empty() {
                } else if trimmed == TRACEBACK_HEADER {
                    current.push_text("");
                    current.push_text(TRACEBACK_HEADER);
                    state = State::Frames;
                } else {
                    if let Some(traceback) = builder.take().and_then(Builder::build) {
                        tracebacks.push(traceback);
                    }
                    state = State::Idle;
                    continue;
                }
            }
        }
        index += 1;
    }
    if tracebacks.len() < limits.tracebacks_max
        && let Some(traceback) = builder.take().and_then(Builder::build)
    {
        tracebacks.push(traceback);
    }
    tracebacks
}

/// A `SyntaxError` printed without a `Traceback` header (the script itself did not
/// compile): `  File "x.py", line N`, the code, a caret line, `SyntaxError: …`.
fn bare_syntax_error(lines: &[&str], limits: &PythonLimits) -> Option<PythonTraceback> {
    let captures = FRAME_LINE.captures(lines.first()?)?;
    if captures.name("function").is_some() {
        return None;
    }
    let mut frame = python_frame(&captures);
    for (offset, line) in lines.iter().enumerate().skip(1).take(4) {
        let trimmed = line.trim();
        if line.starts_with("    ") {
            if frame.code.is_none() && !CARET_LINE.is_match(line) && !trimmed.is_empty() {
                frame.code = Some(trimmed.to_string());
            }
            continue;
        }
        let (exception_type, message) = parse_exception_line(trimmed);
        if !SYNTAX_ERRORS.contains(&exception_type.as_str()) {
            return None;
        }
        let text = lines[..=offset].join("\n");
        return Some(PythonTraceback {
            chain: vec![PythonException {
                exception_type,
                message,
                frames: vec![frame],
                relation_to_next: None,
            }],
            text: truncate_to_bytes(&text, limits.text_bytes_max).to_string(),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exception_lines_split_type_and_message() {
        assert_eq!(
            parse_exception_line("requests.exceptions.ConnectionError: boom: twice"),
            (
                "requests.exceptions.ConnectionError".to_string(),
                Some("boom: twice".to_string())
            )
        );
        assert_eq!(
            parse_exception_line("KeyboardInterrupt"),
            ("KeyboardInterrupt".to_string(), None)
        );
        assert_eq!(
            parse_exception_line("ValueError:"),
            ("ValueError".to_string(), Some(String::new()))
        );
    }
}

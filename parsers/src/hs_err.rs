//! JVM fatal error logs (`hs_err_pid*.log`): signals in native or VM code (`SIGSEGV (0xb)
//! at pc=…`), internal errors (`Internal Error (file.cpp:N)` with its `guarantee(…)
//! failed` / `fatal error:` line), and out-of-memory exits.
//!
//! # Invariants
//! - One file is at most one problem of kind [`ProblemKind::Java`].
//! - Frames are the `Native frames:` section when the file has one (it shows the whole
//!   mixed stack: `C` native, `V` VM, `j` interpreted, `J` compiled, `v` stubs), otherwise
//!   the `Java frames:` section; top first, as the file lists them.
//! - The signature is the error kind, the problematic frame and the top
//!   [`HS_ERR_SIGNATURE_FRAMES_MAX`] frames, without addresses, offsets, bytecode indexes
//!   or source line numbers, so the same crash on another JVM build or node hashes alike.
//! - `text` holds the `#` header and the two frame sections only (the rest of the file —
//!   memory maps, environment, heap — is evidence the node attaches whole), bounded by
//!   [`HS_ERR_TEXT_BYTES_MAX`].

use std::sync::LazyLock;

use crashmesh_protocol::model::{Frame, FrameSource, Problem, ProblemKind};
use crashmesh_protocol::signature::{normalize_text_line, signature_from_parts};
use regex::Regex;

use crate::text::{parse_hex, truncate_to_bytes};

/// Frames of the stack that go into a signature after the problematic frame.
pub const HS_ERR_SIGNATURE_FRAMES_MAX: usize = 5;
/// Frames kept from one section.
pub const HS_ERR_FRAMES_MAX: usize = 256;
/// Bytes of `text` kept.
pub const HS_ERR_TEXT_BYTES_MAX: usize = 64 * 1024;
/// Bytes of one line considered.
pub const HS_ERR_LINE_BYTES_MAX: usize = 4 * 1024;

static SIGNAL_LINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^#\s+(?P<name>[A-Z][A-Z0-9_]+) \(0x(?P<number>[0-9a-fA-F]+)\) at pc=0x(?P<pc>[0-9a-fA-F]+), pid=(?P<pid>\d+), tid=(?P<tid>\d+)")
        .expect("valid regex")
});
static INTERNAL_ERROR_LINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^#\s+(?P<kind>Internal Error|Out of Memory Error) \((?P<location>[^)]*)\), pid=(?P<pid>\d+), tid=(?P<tid>\d+)")
        .expect("valid regex")
});
static JAVA_EXCEPTION_LINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^#\s+(?P<type>java\.lang\.[A-Za-z]+Error)(?::\s*(?P<message>.*))?$")
        .expect("valid regex")
});
static NATIVE_FRAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?P<type>[CV])\s+\[(?P<library>[^\]+]+)\+0x(?P<library_offset>[0-9a-fA-F]+)\]\s*(?P<rest>.*)$")
        .expect("valid regex")
});
static INTERPRETED_FRAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^j\s+(?P<method>\S+?)\+(?P<bci>\d+)(?:\s+(?P<module>\S+))?$").expect("valid regex")
});
static COMPILED_FRAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[JA]\s+(?:\d+%?\s+)?(?:[cC][12]\s+|jvmci\s+|%\s+)?(?P<method>\S+\(\S*)(?:\s+(?P<module>\S+@\S+))?(?:.*?@\s+0x(?P<address>[0-9a-fA-F]+))?")
        .expect("valid regex")
});
static STUB_FRAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^v\s+(?P<stub>\S.*)$").expect("valid regex"));
static FUNCTION_OFFSET: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?P<function>.+?)\+0x(?P<offset>[0-9a-fA-F]+)$").expect("valid regex")
});

/// One frame line of an hs_err file (`C  [libc.so.6+0x1a1b2e]  memmove+0x6e`, `j
/// com.Foo.bar()V+5`, `J 12 c2 com.Foo.baz()V (45 bytes) @ 0x…`, `v  ~StubRoutines::…`).
pub fn parse_hs_err_frame(line: &str) -> Option<Frame> {
    let line = line.trim();
    let text_frame = |function: Option<String>,
                      module: Option<String>,
                      offset: Option<u64>,
                      address: Option<u64>| Frame {
        address,
        function,
        module,
        offset,
        reliable: true,
        found_by: Some(FrameSource::Text),
        ..Frame::default()
    };
    if let Some(c) = NATIVE_FRAME.captures(line) {
        let library = c["library"].to_string();
        let rest = c["rest"].trim();
        if rest.is_empty() {
            // No symbol: the offset is from the start of the library.
            return Some(text_frame(
                None,
                Some(library),
                parse_hex(&c["library_offset"]),
                None,
            ));
        }
        return Some(match FUNCTION_OFFSET.captures(rest) {
            Some(f) => text_frame(
                Some(f["function"].trim().to_string()),
                Some(library),
                parse_hex(&f["offset"]),
                None,
            ),
            None => text_frame(Some(rest.to_string()), Some(library), None, None),
        });
    }
    if let Some(c) = INTERPRETED_FRAME.captures(line) {
        return Some(text_frame(
            Some(c["method"].to_string()),
            c.name("module").map(|m| m.as_str().to_string()),
            c["bci"].parse().ok(),
            None,
        ));
    }
    if let Some(c) = COMPILED_FRAME.captures(line) {
        return Some(text_frame(
            Some(c["method"].to_string()),
            c.name("module").map(|m| m.as_str().to_string()),
            None,
            c.name("address").and_then(|m| parse_hex(m.as_str())),
        ));
    }
    if let Some(c) = STUB_FRAME.captures(line) {
        return Some(text_frame(
            Some(c["stub"].trim().to_string()),
            None,
            None,
            None,
        ));
    }
    None
}

/// The part of a frame that goes into a signature: no offsets, addresses or indexes.
fn signature_part(frame: &Frame) -> String {
    let module = frame
        .module
        .as_deref()
        .map(|module| module.rsplit('/').next().unwrap_or(module));
    match (&frame.function, module) {
        (Some(function), Some(module))
            if module.contains(".so") || module.contains(".dll") || module.contains(".dylib") =>
        {
            format!("{module}!{function}")
        }
        (Some(function), _) => function.clone(),
        (None, Some(module)) => format!("{module}+{:#x}", frame.offset.unwrap_or(0)),
        (None, None) => "?".to_string(),
    }
}

fn section_frames(lines: &[&str], title: &str) -> (Vec<Frame>, Vec<String>) {
    let mut frames = Vec::new();
    let mut text = Vec::new();
    let Some(start) = lines.iter().position(|line| line.starts_with(title)) else {
        return (frames, text);
    };
    text.push(lines[start].to_string());
    for line in &lines[start + 1..] {
        if line.trim().is_empty() {
            break;
        }
        text.push(line.to_string());
        if frames.len() < HS_ERR_FRAMES_MAX
            && let Some(frame) = parse_hs_err_frame(line)
        {
            frames.push(frame);
        }
    }
    (frames, text)
}

/// The problem an hs_err file reports, or `None` when the text is not one.
pub fn parse_hs_err(text: &str) -> Option<Problem> {
    let lines: Vec<&str> = crate::text::lines(text)
        .map(|line| truncate_to_bytes(line, HS_ERR_LINE_BYTES_MAX))
        .collect();
    let is_hs_err = lines.iter().take(64).any(|line| {
        line.contains("A fatal error has been detected by the Java Runtime Environment")
            || line.contains("There is insufficient memory for the Java Runtime Environment")
    });
    if !is_hs_err {
        return None;
    }
    let header: Vec<&str> = lines
        .iter()
        .skip_while(|line| !line.starts_with('#'))
        .take_while(|line| line.starts_with('#'))
        .copied()
        .collect();

    let mut exception_type: Option<String> = None;
    let mut message: Option<String> = None;
    let mut signal: Option<i32> = None;
    let mut pid: Option<String> = None;
    let mut error_parts: Vec<String> = Vec::new();
    let mut problematic: Option<Frame> = None;
    let mut version: Option<String> = None;
    for (index, line) in header.iter().enumerate() {
        if let Some(c) = SIGNAL_LINE.captures(line) {
            exception_type = Some(c["name"].to_string());
            signal = i32::from_str_radix(&c["number"], 16).ok();
            pid = Some(c["pid"].to_string());
            message = Some(line.trim_start_matches('#').trim().to_string());
            error_parts.push(c["name"].to_string());
        } else if let Some(c) = INTERNAL_ERROR_LINE.captures(line) {
            if exception_type.as_deref() == Some("Out of Memory Error") {
                // The native allocation failure above already said what ran out.
                pid = Some(c["pid"].to_string());
                continue;
            }
            let location = c["location"].to_string();
            let file = location.split(':').next().unwrap_or(&location).to_string();
            exception_type = Some(c["kind"].to_string());
            pid = Some(c["pid"].to_string());
            error_parts.push(format!("{} ({file})", &c["kind"]));
            // The next header lines say what failed (`guarantee(…) failed: …`).
            let detail: Vec<&str> = header[index + 1..]
                .iter()
                .map(|line| line.trim_start_matches('#').trim())
                .take_while(|line| !line.is_empty())
                .collect();
            if !detail.is_empty() {
                error_parts.push(normalize_text_line(detail[0]));
                message = Some(detail.join("\n"));
            } else {
                message = Some(location);
            }
        } else if let Some(c) = JAVA_EXCEPTION_LINE.captures(line) {
            if exception_type.is_none() || exception_type.as_deref() == Some("Out of Memory Error")
            {
                exception_type = Some(c["type"].to_string());
                message = c.name("message").map(|m| m.as_str().to_string());
                error_parts.push(c["type"].to_string());
            }
        } else if line.contains("Native memory allocation") && exception_type.is_none() {
            exception_type = Some("Out of Memory Error".to_string());
            message = Some(line.trim_start_matches('#').trim().to_string());
            error_parts.push("Out of Memory Error (native)".to_string());
        } else if let Some(rest) = line
            .trim_start_matches('#')
            .trim()
            .strip_prefix("JRE version:")
        {
            version = Some(rest.trim().to_string());
        } else if line.contains("Problematic frame:") {
            problematic = header
                .get(index + 1)
                .and_then(|next| parse_hs_err_frame(next.trim_start_matches('#')));
        }
    }

    let (native_frames, native_text) = section_frames(&lines, "Native frames:");
    let (java_frames, java_text) = section_frames(&lines, "Java frames:");
    let frames = if native_frames.is_empty() {
        java_frames
    } else {
        native_frames
    };

    let exception_type = exception_type.unwrap_or_else(|| "Fatal error".to_string());
    let crash_frame = problematic.as_ref().or(frames.first());
    let reason = match (signal, crash_frame) {
        (Some(_), Some(frame)) => match (&frame.function, &frame.module) {
            (Some(function), Some(module)) => format!("{exception_type} in {function} ({module})"),
            (Some(function), None) => format!("{exception_type} in {function}"),
            (None, Some(module)) => format!("{exception_type} in {module}"),
            (None, None) => exception_type.clone(),
        },
        _ => match &message {
            Some(message) => format!("{exception_type}: {}", message.lines().next().unwrap_or("")),
            None => exception_type.clone(),
        },
    };
    let mut problem = Problem::new(ProblemKind::Java, truncate_to_bytes(&reason, 300));

    let mut parts = error_parts;
    if parts.is_empty() {
        parts.push(exception_type.clone());
    }
    if let Some(frame) = &problematic {
        parts.push(format!("problematic {}", signature_part(frame)));
    }
    parts.extend(
        frames
            .iter()
            .take(HS_ERR_SIGNATURE_FRAMES_MAX)
            .map(signature_part),
    );
    problem.signature = signature_from_parts(ProblemKind::Java, &parts).0;

    problem.frames = frames;
    if problem.frames.is_empty() {
        problem.frames.extend(problematic);
    }
    problem.signal = signal;
    problem.exception_type = Some(exception_type);
    problem.message = message;
    problem.version = version;
    problem.process = pid.map(|pid| format!("java[{pid}]"));
    problem.executable = lines
        .iter()
        .find_map(|line| line.strip_prefix("Command Line:"))
        .and_then(|command| {
            command
                .split_whitespace()
                .find(|word| !word.starts_with('-'))
        })
        .map(str::to_string);

    let mut text = header.join("\n");
    for section in [native_text, java_text] {
        if !section.is_empty() {
            text.push_str("\n\n");
            text.push_str(&section.join("\n"));
        }
    }
    problem.text = Some(truncate_to_bytes(&text, HS_ERR_TEXT_BYTES_MAX).to_string());
    Some(problem)
}

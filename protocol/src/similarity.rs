//! How alike two problems are: the same bug reached through different callers, or with a
//! frame of difference, gets different signatures but a small distance.
//!
//! A problem's *frame keys* are its crashing thread's function names, top first, with the
//! leading machinery its signature drops (`abort`, `raise`, `dump_stack` …; see
//! [`crate::signature`]) dropped here too, names normalized the same way, at most
//! [`SIMILAR_FRAMES_MAX`]. A frame without a name is `<build-id>+<offset>`. The distance
//! of two problems is an edit distance of their key sequences, as FAF (ABRT's server)
//! clusters crash reports with Levenshtein's, but weighted by depth as a person reads a
//! backtrace: an edit at the k-th frame from the top costs `1/(k+1)` (a substitution the
//! larger of its two frames' weights), and the sum is divided by the heavier sequence's
//! total weight, so 0 is the same frames and 1 nothing in common. Two bugs that share
//! their callers but not where they crash stay apart; one bug reached through another
//! caller, or with a frame more or less deep down, stays close. Problems of different
//! kinds are never similar.
//!
//! Finding candidates must not cost all pairs: each problem is indexed under its first
//! [`INDEX_KEYS`] keys ([`index_keys`]), and only problems sharing one of those are
//! measured. Two problems whose top frames all differ are not found similar, which is
//! what a person looking at them would say too.

use crate::model::{Frame, Problem, ProblemKind};
use crate::signature::{
    KERNEL_MACHINERY, NATIVE_MACHINERY, normalize_kernel_function, normalize_native_function,
};

/// Frames of a problem that count for similarity.
pub const SIMILAR_FRAMES_MAX: usize = 16;
/// Keys a problem is indexed under (its top frames after the machinery).
pub const INDEX_KEYS: usize = 3;
/// The largest distance shown as similar by default.
pub const SIMILAR_DISTANCE_MAX: f64 = 0.35;

/// A problem's frame keys (see the module docs).
pub fn frame_keys(problem: &Problem) -> Vec<String> {
    let keys: Vec<String> = match problem.kind {
        ProblemKind::Core | ProblemKind::SegfaultHint | ProblemKind::Java => {
            problem.frames.iter().filter_map(native_key).collect()
        }
        ProblemKind::Python => problem
            .frames
            .iter()
            .map(|frame| {
                let file = frame.file.as_deref().unwrap_or("?");
                let file_name = file.rsplit('/').next().unwrap_or(file);
                format!("{file_name}:{}", frame.function.as_deref().unwrap_or("?"))
            })
            .collect(),
        _ => {
            let any_reliable = problem.frames.iter().any(|frame| frame.reliable);
            problem
                .frames
                .iter()
                .filter(|frame| frame.reliable || !any_reliable)
                .filter_map(|frame| frame.function.as_deref())
                .map(normalize_kernel_function)
                .collect()
        }
    };
    let machinery: &[&str] = match problem.kind {
        ProblemKind::Core | ProblemKind::SegfaultHint => NATIVE_MACHINERY,
        ProblemKind::Python | ProblemKind::Java => &[],
        _ => KERNEL_MACHINERY,
    };
    let first_kept = keys
        .iter()
        .position(|key| !machinery.contains(&key.as_str()))
        .unwrap_or(keys.len());
    let mut kept: Vec<String> = Vec::with_capacity(SIMILAR_FRAMES_MAX);
    for key in keys.into_iter().skip(first_kept) {
        // Recursion counts once, as in signatures.
        if kept.last() != Some(&key) {
            kept.push(key);
        }
        if kept.len() == SIMILAR_FRAMES_MAX {
            break;
        }
    }
    kept
}

fn native_key(frame: &Frame) -> Option<String> {
    if let Some(function) = &frame.function {
        return Some(normalize_native_function(function));
    }
    let offset = frame.offset?;
    let module = frame.build_id.as_deref().or_else(|| {
        let module = frame.module.as_deref()?;
        module.rsplit('/').next()
    })?;
    Some(format!("{module}+{offset:#x}"))
}

/// The keys a problem is indexed under: its first [`INDEX_KEYS`] distinct keys.
pub fn index_keys(keys: &[String]) -> Vec<&str> {
    let mut chosen: Vec<&str> = Vec::with_capacity(INDEX_KEYS);
    for key in keys {
        if !chosen.contains(&key.as_str()) {
            chosen.push(key);
        }
        if chosen.len() == INDEX_KEYS {
            break;
        }
    }
    chosen
}

/// The depth-weighted edit distance of two key sequences, in `[0, 1]` (see the module
/// docs); 1 when either is empty (nothing to compare is not alike).
pub fn distance(a: &[String], b: &[String]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 1.0;
    }
    let weight = |depth: usize| 1.0 / (depth as f64 + 1.0);
    let total = |keys: &[String]| (0..keys.len()).map(weight).sum::<f64>();
    // One row of the table at a time: O(|a|·|b|) time, O(|b|) memory.
    let mut previous: Vec<f64> = std::iter::once(0.0)
        .chain((0..b.len()).scan(0.0, |sum, j| {
            *sum += weight(j);
            Some(*sum)
        }))
        .collect();
    let mut current = vec![0.0; b.len() + 1];
    for (i, key_a) in a.iter().enumerate() {
        current[0] = previous[0] + weight(i);
        for (j, key_b) in b.iter().enumerate() {
            let substitution = if key_a == key_b {
                0.0
            } else {
                weight(i).max(weight(j))
            };
            current[j + 1] = (previous[j] + substitution)
                .min(previous[j + 1] + weight(i))
                .min(current[j] + weight(j));
        }
        std::mem::swap(&mut previous, &mut current);
    }
    (previous[b.len()] / total(a).max(total(b))).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    fn core(functions: &[&str]) -> Problem {
        let mut problem = Problem::new(ProblemKind::Core, "test");
        problem.frames = functions
            .iter()
            .map(|function| Frame::named(function))
            .collect();
        problem
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn distance_weighs_edits_by_their_depth() {
        let a = keys(&["leaf", "middle", "outer", "main"]);
        // Weights 1, 1/2, 1/3, 1/4: 25/12 in all.
        let total = 1.0 + 0.5 + 1.0 / 3.0 + 0.25;
        assert_eq!(distance(&a, &a), 0.0);
        // Another caller, third from the top.
        let other_caller = keys(&["leaf", "middle", "other", "main"]);
        assert!(close(distance(&a, &other_caller), (1.0 / 3.0) / total));
        // The crash elsewhere, same callers: far.
        let elsewhere = keys(&["memcpy", "middle", "outer", "main"]);
        assert!(close(distance(&a, &elsewhere), 1.0 / total));
        assert!(distance(&a, &elsewhere) > distance(&a, &other_caller));
        // A frame more, second from the top (the heavier sequence divides).
        let one_more = keys(&["leaf", "helper", "middle", "outer", "main"]);
        assert!(close(distance(&a, &one_more), 0.5 / (total + 0.2)));
        assert_eq!(distance(&a, &keys(&["x", "y"])), 1.0);
        assert_eq!(distance(&a, &[]), 1.0);
        assert_eq!(distance(&[], &[]), 1.0);
        // Symmetric.
        assert!(close(distance(&one_more, &a), distance(&a, &one_more)));
    }

    #[test]
    fn keys_drop_the_machinery_and_normalize_like_signatures() {
        let problem = core(&[
            "__pthread_kill_implementation",
            "__GI_raise",
            "abort",
            "__libc_message",
            "check_header",
            "parse",
            "parse",
            "main",
        ]);
        // `__libc_message` normalizes to `message`, which is machinery too.
        assert_eq!(
            frame_keys(&problem),
            keys(&["check_header", "parse", "main"])
        );
        assert_eq!(
            index_keys(&frame_keys(&problem)),
            ["check_header", "parse", "main"]
        );
    }

    #[test]
    fn a_frame_without_a_name_is_its_module_and_offset() {
        let mut problem = core(&["leaf"]);
        problem.frames.push(Frame {
            build_id: Some("abcd".into()),
            module: Some("/usr/lib/libx.so".into()),
            offset: Some(0x10),
            ..Frame::default()
        });
        problem.frames.push(Frame {
            module: Some("/usr/lib/liby.so".into()),
            offset: Some(0x20),
            ..Frame::default()
        });
        assert_eq!(
            frame_keys(&problem),
            keys(&["leaf", "abcd+0x10", "liby.so+0x20"])
        );
    }

    #[test]
    fn keys_are_bounded() {
        let names: Vec<String> = (0..100).map(|index| format!("f{index}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(frame_keys(&core(&names)).len(), SIMILAR_FRAMES_MAX);
        assert_eq!(index_keys(&frame_keys(&core(&names))).len(), INDEX_KEYS);
    }
}

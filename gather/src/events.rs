//! Events, like libreport's event scripts: commands the operator configures to run when a
//! problem is created, when an incident of a known problem is counted, and when an upload
//! finishes. Each gets the problem's fields in environment variables (`CRASHMESH_*`) and
//! the path of its JSON (`CRASHMESH_PROBLEM_JSON`), runs with a time limit and an output
//! cap, and its output and exit status are kept with the incident (`event/<on>-<n>.txt`).
//!
//! Invariant: an event never blocks or fails capture. Commands run on threads of their
//! own after the incident is recorded; a failure is logged and kept as output, nothing
//! more.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crashmesh_protocol::Problem;
use crashmesh_store::Store;
use serde::{Deserialize, Serialize};

use crashmesh_capture::config::ByteSize;

/// When an event command runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The first incident of a new problem was recorded.
    ProblemCreated,
    /// Another incident of a known problem was counted.
    Incident,
    /// The problem's report reached the endpoint.
    Uploaded,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ProblemCreated => "problem_created",
            EventKind::Incident => "incident",
            EventKind::Uploaded => "uploaded",
        }
    }
}

/// `[[events]]`: one command for one kind of event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventHook {
    pub on: EventKind,
    /// Program and arguments (no shell; use `["sh", "-c", "…"]` for one).
    pub command: Vec<String>,
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    #[serde(default = "default_output_bytes_max")]
    pub output_bytes_max: ByteSize,
}

fn default_timeout_secs() -> u64 {
    30
}

fn default_output_bytes_max() -> ByteSize {
    ByteSize(1024 * 1024)
}

/// What an event is about.
#[derive(Clone, Debug)]
pub struct EventContext {
    pub kind: EventKind,
    pub problem_id: String,
    pub report_id: String,
    pub count: u64,
    pub node: String,
    pub problem: Problem,
}

/// The environment an event command gets.
pub fn environment(context: &EventContext, json_path: &Path) -> Vec<(String, String)> {
    let problem = &context.problem;
    let mut variables = vec![
        ("CRASHMESH_EVENT", context.kind.as_str().to_string()),
        ("CRASHMESH_PROBLEM_ID", context.problem_id.clone()),
        ("CRASHMESH_REPORT_ID", context.report_id.clone()),
        ("CRASHMESH_COUNT", context.count.to_string()),
        ("CRASHMESH_NODE", context.node.clone()),
        ("CRASHMESH_KIND", problem.kind.to_string()),
        ("CRASHMESH_SIGNATURE", problem.signature.clone()),
        ("CRASHMESH_REASON", problem.reason.clone()),
        ("CRASHMESH_PROBLEM_JSON", json_path.display().to_string()),
    ];
    if let Some(executable) = &problem.executable {
        variables.push(("CRASHMESH_EXECUTABLE", executable.clone()));
    }
    if let Some(function) = problem.crash_function() {
        variables.push(("CRASHMESH_CRASH_FUNCTION", function.to_string()));
    }
    variables
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect()
}

/// Run every hook configured for `context.kind` on threads of their own; each one's
/// output is attached to the incident when it ends.
pub fn fire(hooks: &[EventHook], context: EventContext, store: Arc<Store>, scratch_dir: &Path) {
    let matching: Vec<(usize, EventHook)> = hooks
        .iter()
        .enumerate()
        .filter(|(_, hook)| hook.on == context.kind)
        .map(|(i, h)| (i, h.clone()))
        .collect();
    if matching.is_empty() {
        return;
    }
    let scratch_dir = scratch_dir.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("event".into())
        .spawn(move || {
            for (index, hook) in matching {
                let attachment = run_one(&hook, index, &context, &scratch_dir);
                let name = format!("event/{}-{index}.txt", context.kind.as_str());
                let stored = store
                    .put_blob_bytes(&attachment)
                    .and_then(|blob| store.add_attachments(&context.report_id, vec![(name, blob)]));
                if let Err(error) = stored {
                    tracing::warn!(%error, "cannot keep an event's output");
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start an event thread");
    }
}

/// Run one hook; gives back what is kept: the command, its status and its output.
fn run_one(hook: &EventHook, index: usize, context: &EventContext, scratch_dir: &Path) -> Vec<u8> {
    let _ = std::fs::create_dir_all(scratch_dir);
    let json_path = scratch_dir.join(format!(
        "event-{}-{index}-{}.json",
        context.kind.as_str(),
        std::process::id()
    ));
    let written = std::fs::write(
        &json_path,
        serde_json::to_vec_pretty(&context.problem).expect("problem serializes"),
    );
    let mut kept = format!("command: {:?}\n", hook.command).into_bytes();
    if let Err(error) = written {
        kept.extend_from_slice(
            format!("cannot write {}: {error}\n", json_path.display()).as_bytes(),
        );
        return kept;
    }
    let environment = environment(context, &json_path);
    let mut command = hook.command.clone();
    // run_capped takes the program and arguments; the environment goes through `env`.
    let mut with_environment = vec!["env".to_string()];
    with_environment.extend(
        environment
            .iter()
            .map(|(key, value)| format!("{key}={value}")),
    );
    with_environment.append(&mut command);
    match crate::logs::run_capped(
        &with_environment,
        Duration::from_secs(hook.timeout_secs),
        hook.output_bytes_max.0,
    ) {
        Ok((output, status)) => {
            if !status.contains("exit status: 0") {
                tracing::warn!(command = ?hook.command, %status, "event command failed");
            }
            kept.extend_from_slice(format!("status: {status}\n--- output ---\n").as_bytes());
            kept.extend_from_slice(&output);
        }
        Err(error) => {
            tracing::warn!(command = ?hook.command, %error, "event command did not run");
            kept.extend_from_slice(format!("error: {error}\n").as_bytes());
        }
    }
    let _ = std::fs::remove_file(&json_path);
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(kind: EventKind) -> EventContext {
        let mut problem = Problem::new(crashmesh_protocol::ProblemKind::Core, "SIGSEGV in leaf");
        problem.signature = "v1:abc".into();
        problem.executable = Some("/usr/bin/csd".into());
        EventContext {
            kind,
            problem_id: "p1".into(),
            report_id: "r1".into(),
            count: 2,
            node: "n1".into(),
            problem,
        }
    }

    #[test]
    fn a_command_sees_the_fields_and_the_json_and_its_output_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let hook = EventHook {
            on: EventKind::Incident,
            command: vec!["sh".into(), "-c".into(), "echo $CRASHMESH_EVENT $CRASHMESH_COUNT $CRASHMESH_EXECUTABLE; grep -c leaf $CRASHMESH_PROBLEM_JSON; exit 3".into()],
            timeout_secs: 5,
            output_bytes_max: ByteSize(4096),
        };
        let kept = String::from_utf8(run_one(&hook, 0, &context(EventKind::Incident), dir.path()))
            .unwrap();
        assert!(kept.contains("incident 2 /usr/bin/csd\n1\n"), "{kept}");
        assert!(kept.contains("exit status: 3"), "{kept}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the JSON file is removed"
        );
    }

    #[test]
    fn a_hanging_or_missing_command_is_bounded_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let hanging = EventHook {
            on: EventKind::ProblemCreated,
            command: vec!["sleep".into(), "30".into()],
            timeout_secs: 1,
            output_bytes_max: ByteSize(10),
        };
        let started = std::time::Instant::now();
        let kept = String::from_utf8(run_one(
            &hanging,
            0,
            &context(EventKind::ProblemCreated),
            dir.path(),
        ))
        .unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(kept.contains("killed after the time limit"), "{kept}");
        let missing = EventHook {
            command: vec!["/nonexistent/hook".into()],
            ..hanging
        };
        let kept = String::from_utf8(run_one(
            &missing,
            0,
            &context(EventKind::ProblemCreated),
            dir.path(),
        ))
        .unwrap();
        assert!(
            kept.contains("status:") || kept.contains("error:"),
            "{kept}"
        );
    }
}

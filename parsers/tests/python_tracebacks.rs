//! Python tracebacks: written ones (chained, 3.11 carets, dotted types, SyntaxError, log
//! prefixes) and real ones produced by running `python3`.

use crashmesh_parsers::python::{
    ChainRelation, PythonLimits, parse_python_tracebacks, parse_python_tracebacks_detailed,
};
use crashmesh_protocol::model::ProblemKind;

const CHAINED_311: &str = r#"Traceback (most recent call last):
  File "/opt/storage/agent/store.py", line 9, in get_config
    return load(path)
           ^^^^^^^^^^
  File "/opt/storage/agent/store.py", line 5, in load
    with open(path) as f:
         ^^^^^^^^^^
FileNotFoundError: [Errno 2] No such file or directory: '/etc/agent/x.json'

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/opt/storage/agent/main.py", line 15, in main
    get_config("/etc/agent/x.json")
  File "/opt/storage/agent/store.py", line 11, in get_config
    raise StoreError(f"config missing:\n{path}") from e
agent.errors.StoreError: config missing:
/etc/agent/x.json

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/usr/lib/python3.11/runpy.py", line 198, in _run_module_as_main
    return _run_code(code, main_globals, None,
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/opt/storage/agent/main.py", line 20, in <module>
    main()
  File "/opt/storage/agent/main.py", line 17, in main
    return cfg["b"] + compute(1, 2)
           ~~~^^^^^
KeyError: 'b'
"#;

#[test]
fn chained_exceptions_report_the_outermost_and_keep_the_chain() {
    let problems = parse_python_tracebacks(CHAINED_311);
    assert_eq!(problems.len(), 1);
    let problem = &problems[0];
    assert_eq!(problem.kind, ProblemKind::Python);
    assert_eq!(problem.exception_type.as_deref(), Some("KeyError"));
    assert_eq!(problem.message.as_deref(), Some("'b'"));
    assert_eq!(
        problem.reason,
        "KeyError: 'b' (while handling agent.errors.StoreError: config missing:, caused by FileNotFoundError: [Errno 2] No such file or directory: '/etc/agent/x.json')"
    );
    // Innermost first; caret lines are neither frames nor code.
    let functions: Vec<&str> = problem
        .frames
        .iter()
        .map(|f| f.function.as_deref().unwrap())
        .collect();
    assert_eq!(functions, ["main", "<module>", "_run_module_as_main"]);
    assert_eq!(problem.frames[0].line, Some(17));
    assert_eq!(
        problem.frames[0].code.as_deref(),
        Some(r#"return cfg["b"] + compute(1, 2)"#)
    );
    assert_eq!(
        problem.frames[2].code.as_deref(),
        Some("return _run_code(code, main_globals, None,")
    );
    assert_eq!(
        problem.frames[0].file.as_deref(),
        Some("/opt/storage/agent/main.py")
    );
    assert_eq!(
        problem.executable.as_deref(),
        Some("/usr/lib/python3.11/runpy.py")
    );
    assert_eq!(problem.version.as_deref(), Some("3.11"));
    // The whole chain is in the text.
    let text = problem.text.as_deref().unwrap();
    assert!(text.contains("FileNotFoundError"));
    assert!(text.contains("The above exception was the direct cause"));
    assert!(text.ends_with("KeyError: 'b'"));

    let detailed = parse_python_tracebacks_detailed(CHAINED_311, &PythonLimits::default());
    let chain = &detailed[0].chain;
    assert_eq!(chain.len(), 3);
    assert_eq!(chain[0].relation_to_next, Some(ChainRelation::DirectCause));
    assert_eq!(
        chain[1].relation_to_next,
        Some(ChainRelation::DuringHandling)
    );
    assert_eq!(chain[1].exception_type, "agent.errors.StoreError");
    assert_eq!(
        chain[1].message.as_deref(),
        Some("config missing:\n/etc/agent/x.json")
    );
    assert_eq!(chain[2].relation_to_next, None);
}

#[test]
fn signatures_ignore_line_numbers_and_directories() {
    let moved = CHAINED_311
        .replace("/opt/storage/agent/", "/srv/agent-2.1/")
        .replace("line 17", "line 23");
    let a = parse_python_tracebacks(CHAINED_311);
    let b = parse_python_tracebacks(&moved);
    assert_eq!(a[0].signature, b[0].signature);
    let other = CHAINED_311.replace("KeyError: 'b'", "IndexError: list index out of range");
    assert_ne!(parse_python_tracebacks(&other)[0].signature, a[0].signature);
}

#[test]
fn many_tracebacks_in_one_log_with_prefixes() {
    let log = r#"2024-03-01 10:00:00,001 INFO mgr: starting
2024-03-01 10:00:01,002 ERROR mgr: handler failed
Traceback (most recent call last):
  File "/usr/share/ceph/mgr/balancer/module.py", line 812, in serve
    self.optimize(plan)
  File "/usr/share/ceph/mgr/balancer/module.py", line 977, in optimize
    raise ValueError("no pools")
ValueError: no pools
2024-03-01 10:00:02,003 INFO mgr: retrying
Mar  1 10:00:03 node7 ceph-mgr[4242]: Traceback (most recent call last):
Mar  1 10:00:03 node7 ceph-mgr[4242]:   File "/usr/lib/python3.9/threading.py", line 973, in _bootstrap_inner
Mar  1 10:00:03 node7 ceph-mgr[4242]:     self.run()
Mar  1 10:00:03 node7 ceph-mgr[4242]:   File "/usr/share/ceph/mgr/mgr_module.py", line 55, in run
Mar  1 10:00:04 node7 ceph-mgr[4242]:     self.fn()
Mar  1 10:00:04 node7 ceph-mgr[4242]: rados.ObjectNotFound: [errno 2] RADOS object not found (error opening pool 'x')
Mar  1 10:00:05 node7 systemd[1]: ceph-mgr.service: Main process exited, code=exited, status=1/FAILURE
"#;
    let problems = parse_python_tracebacks(log);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert_eq!(problems[0].exception_type.as_deref(), Some("ValueError"));
    assert_eq!(problems[0].message.as_deref(), Some("no pools"));
    assert_eq!(problems[0].frames[0].function.as_deref(), Some("optimize"));
    assert_eq!(
        problems[1].exception_type.as_deref(),
        Some("rados.ObjectNotFound")
    );
    assert_eq!(problems[1].frames.len(), 2);
    assert_eq!(problems[1].frames[0].function.as_deref(), Some("run"));
    assert_eq!(problems[1].frames[0].code.as_deref(), Some("self.fn()"));
    assert!(!problems[1].text.as_deref().unwrap().contains("node7"));
    assert_eq!(problems[1].version.as_deref(), Some("3.9"));
}

#[test]
fn syntax_errors_with_and_without_a_traceback() {
    let bare = r#"  File "/opt/tool/broken.py", line 1
    def f(:
          ^
SyntaxError: invalid syntax
"#;
    let problems = parse_python_tracebacks(bare);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].exception_type.as_deref(), Some("SyntaxError"));
    assert_eq!(problems[0].frames[0].line, Some(1));
    assert_eq!(problems[0].frames[0].function, None);
    assert_eq!(problems[0].frames[0].code.as_deref(), Some("def f(:"));

    let imported = r#"Traceback (most recent call last):
  File "/opt/tool/main.py", line 3, in <module>
    import broken
  File "/opt/tool/broken.py", line 4
    return x +
              ^
SyntaxError: invalid syntax
"#;
    let problems = parse_python_tracebacks(imported);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].frames.len(), 2);
    assert_eq!(
        problems[0].frames[0].file.as_deref(),
        Some("/opt/tool/broken.py")
    );
    assert_eq!(problems[0].frames[0].function, None);
    assert_eq!(problems[0].frames[0].code.as_deref(), Some("return x +"));
}

#[test]
fn recursion_errors_are_bounded() {
    let mut text = String::from("Traceback (most recent call last):\n");
    for _ in 0..3 {
        text.push_str("  File \"/x/r.py\", line 2, in f\n    return f()\n");
    }
    text.push_str("  [Previous line repeated 996 more times]\n");
    for depth in 0..1_000 {
        text.push_str(&format!(
            "  File \"/x/r.py\", line {depth}, in g{depth}\n    g()\n"
        ));
    }
    text.push_str("RecursionError: maximum recursion depth exceeded\n");
    let limits = PythonLimits::default();
    let tracebacks = parse_python_tracebacks_detailed(&text, &limits);
    assert_eq!(tracebacks.len(), 1);
    let exception = &tracebacks[0].chain[0];
    assert_eq!(exception.exception_type, "RecursionError");
    assert_eq!(exception.frames.len(), limits.frames_per_exception_max);
    // The innermost frames are the ones kept.
    assert_eq!(exception.frames[0].function.as_deref(), Some("g999"));
}

#[test]
fn garbage_and_truncated_input_do_not_panic() {
    for text in [
        "",
        "Traceback (most recent call last):",
        "Traceback (most recent call last):\n  File \"x\", line 99999999999999999999, in f\n",
        "Traceback (most recent call last):\n  File \"x\", line 1, in f\n    x()\n\n\nDuring handling of the above exception, another exception occurred:\n",
        "  File \"x\", line 1\n    ?\nNotASyntaxError: x",
        "\u{0}\u{ffff}Traceback (most recent call last):\n\u{0}",
    ] {
        let _ = parse_python_tracebacks(text);
    }
    let truncated = parse_python_tracebacks(
        "Traceback (most recent call last):\n  File \"a.py\", line 1, in f\n    f()\n",
    );
    assert!(truncated.is_empty(), "no exception line, no problem");
}

#[test]
fn real_python_tracebacks() {
    let directory =
        std::env::temp_dir().join(format!("crashmesh-parsers-python-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let script = directory.join("real_crash.py");
    std::fs::write(
        &script,
        r#"
import json

class StoreError(Exception):
    pass

def load(path):
    with open(path) as f:
        return json.load(f)

def get_config(path):
    try:
        return load(path)
    except FileNotFoundError as error:
        raise StoreError(f"config missing:\n{path}") from error

def main():
    cfg = {"a": 1}
    try:
        get_config("/nonexistent/crashmesh.json")
    except StoreError:
        return cfg["b"] + 1

main()
"#,
    )
    .unwrap();
    let output = std::process::Command::new("python3")
        .arg(&script)
        .output()
        .expect("python3 runs (the project's Python hook needs it too)");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let problems = parse_python_tracebacks(&stderr);
    assert_eq!(problems.len(), 1, "{stderr}");
    let problem = &problems[0];
    assert_eq!(problem.exception_type.as_deref(), Some("KeyError"));
    assert_eq!(problem.frames[0].function.as_deref(), Some("main"));
    assert_eq!(problem.frames[1].function.as_deref(), Some("<module>"));
    assert_eq!(
        problem.frames[0].code.as_deref(),
        Some(r#"return cfg["b"] + 1"#)
    );
    assert!(problem.reason.contains("StoreError"), "{}", problem.reason);
    assert!(
        problem.reason.contains("FileNotFoundError"),
        "{}",
        problem.reason
    );

    let broken = directory.join("broken.py");
    std::fs::write(&broken, "def f(:\n    pass\n").unwrap();
    let output = std::process::Command::new("python3")
        .arg(&broken)
        .output()
        .unwrap();
    let problems = parse_python_tracebacks(&String::from_utf8_lossy(&output.stderr));
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].exception_type.as_deref(), Some("SyntaxError"));
    std::fs::remove_dir_all(&directory).unwrap();
}

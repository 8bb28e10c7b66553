//! The endpoint killed with SIGKILL (real processes): a report that was answered is never
//! lost and never doubled.
//!
//! The endpoint commits each ingest batch to redb without a sync and makes it durable by
//! appending it to `DATA_DIR/ingest.journal` before the uploads are answered; the
//! database is checkpointed every `[storage] checkpoint_ms` and at a clean stop.
//!
//! - With a ten-minute interval, between start and SIGKILL the journal is the only durable
//!   record of what was answered. After the restart every report, incident, chunk (an
//!   attachment reads back byte for byte) and bug number answered before the kill is there
//!   exactly once, with one bug comment per report or update that added incidents (a
//!   batch run twice would comment twice); repeats of the same uploads are answered at
//!   once as known and change nothing; the next new problem gets a bug number never
//!   handed out before. A clean stop checkpoints and leaves the journal empty, and what it
//!   made durable is all there on the next start.
//! - Garbage at the journal's end (random bytes, or a torn entry's header) is ignored: the
//!   server starts and everything answered is there, also over two crashes.
//! - With a 20 ms interval, the kill finds some batches durable in the database and the
//!   rest only in the journal: replay brings back the latter and doubles nothing.
//! - Killed while four threads upload reports with attachments (chunks answered before
//!   their pack lane writes them), every report answered comes back with its attachment
//!   byte for byte, one not answered comes back whole or not at all, and uploaded again
//!   every report is there exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crashmesh_endpoint_client::{ChunkData, Client, chunk_blob};
use crashmesh_tests::{CoreManifest, NodeDir};
use serde_json::{Value, json};

/// No checkpoint while the test runs: the journal is the only durability between start
/// and SIGKILL.
const CONFIG_TOML: &str = "[storage]\ncheckpoint_ms = 600000\n";
const CLUSTER: &str = "crash-test";
const JOURNAL_FILE: &str = "ingest.journal";
/// How long a stopping (or starting) server may take before the test gives up on it.
const SERVER_WAIT_SECS_MAX: u64 = 30;
/// Threads uploading at once, so that batches hold several jobs (group commit).
const UPLOAD_THREADS: usize = 4;

/// `crashmesh endpoint run` on a data dir; killed (SIGKILL) when dropped.
struct Server {
    child: Child,
    url: String,
    /// Kept open: the server's stdout is a pipe, and a write to a closed one fails.
    _stdout: std::io::BufReader<ChildStdout>,
}

impl Server {
    /// Starts the endpoint and reads the URL from its first JSON line; its log goes to
    /// `ROOT/endpoint.log` (appended, one file over every start).
    fn start(dir: &NodeDir) -> Server {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path(dir))
            .expect("open the endpoint log");
        let mut child = dir
            .command(&["--json", "endpoint", "run", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start crashmesh endpoint run");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        let url = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|first| first["url"].as_str().map(str::to_string));
        let Some(url) = url else {
            let _ = child.kill();
            let status = child.wait();
            panic!(
                "the endpoint did not start ({read:?}, first line {line:?}, {status:?}); log:\n{}",
                log_text(dir)
            );
        };
        Server {
            child,
            url,
            _stdout: stdout,
        }
    }

    /// SIGKILL: no clean stop, no checkpoint.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL the endpoint");
        self.child.wait().expect("reap the endpoint");
    }

    /// SIGINT, as an operator's Ctrl-C or a service manager's stop; gives back how it
    /// ended.
    fn interrupt(mut self) -> ExitStatus {
        // SAFETY: a plain kill(2) on our own child, which has not been reaped yet.
        let sent = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        assert_eq!(sent, 0, "SIGINT the endpoint");
        let deadline = Instant::now() + Duration::from_secs(SERVER_WAIT_SECS_MAX);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the endpoint") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the endpoint did not stop within {SERVER_WAIT_SECS_MAX} s of SIGINT"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_path(dir: &NodeDir) -> PathBuf {
    dir.root.path().join("endpoint.log")
}

fn log_text(dir: &NodeDir) -> String {
    std::fs::read_to_string(log_path(dir)).unwrap_or_default()
}

fn journal_path(dir: &NodeDir) -> PathBuf {
    dir.data_dir.join(JOURNAL_FILE)
}

/// Bytes of the journal; 0 when there is none.
fn journal_bytes(dir: &NodeDir) -> u64 {
    std::fs::metadata(journal_path(dir)).map_or(0, |metadata| metadata.len())
}

/// xorshift64: the same "random" bytes on every run.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A log file's text, `len` bytes, its own for each `seed` (so no chunk is shared between
/// attachments), and UTF-8 so the attachment route's answer reads back as text.
fn attachment_text(seed: u64, len: usize) -> Vec<u8> {
    let mut random = Xorshift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut text = String::with_capacity(len + 128);
    let mut line = 0u64;
    while text.len() < len {
        let _ = writeln!(
            text,
            "{line:08} vstorage-chunk[{seed}]: I/O error at sector {:016x}, retry {:x}",
            random.next(),
            random.next() % 16
        );
        line += 1;
    }
    text.truncate(len);
    text.into_bytes()
}

/// A report id: 64 lower-case hex digits, one per (test, index).
fn report_id(test: u64, index: u64) -> String {
    format!("{test:08x}{index:056x}")
}

fn signature(problem: usize) -> String {
    format!("v1:core:crash_test_{problem}")
}

fn incident(node: &str, id: &str, time_ms: u64) -> Value {
    json!({
        "node": node,
        "time_ms": time_ms,
        "report_id": id,
        "version": "1.0",
        "labels": { "suite": "endpoint_crash" },
    })
}

/// A report as an aggregator uploads it, with every field written out (the protocol's
/// JSON skips none).
fn manifest(
    report_id: &str,
    problem: usize,
    incidents: Vec<Value>,
    attachments: Vec<Value>,
) -> Value {
    CoreManifest {
        report_id,
        cluster: CLUSTER,
        signature: &signature(problem),
        reason: &format!("SIGSEGV in crash_test_{problem}"),
        executable: "/usr/bin/crash-test",
        frames: json!([{
            "address": "0x5555000010a0",
            "function": format!("crash_test_{problem}"),
            "module": "/usr/bin/crash-test",
            "offset": 32,
            "length": null,
            "build_id": null,
            "file": null,
            "line": null,
            "code": null,
            "reliable": true,
            "found_by": "cfi",
            "stack": null,
        }]),
        incidents: Value::Array(incidents),
        attachments: Value::Array(attachments),
    }
    .json()
}

/// Attachments as (name, bytes).
type Attachments = Vec<(String, Vec<u8>)>;

/// One report to upload: its manifest, its chunks, and its attachments' names and bytes.
struct Report {
    id: String,
    manifest: Value,
    chunks: Vec<ChunkData>,
    attachments: Attachments,
}

/// The reports of one round: `count` of them over `problems` signatures, one incident
/// each; every `attachment_every`-th carries a log of `attachment_bytes`.
fn reports(
    test: u64,
    first_index: u64,
    count: u64,
    problems: usize,
    attachment_every: u64,
    attachment_bytes: usize,
) -> Vec<Report> {
    (first_index..first_index + count)
        .map(|index| {
            let id = report_id(test, index);
            let node = format!("node-{}", index % 5);
            let incidents = vec![incident(
                &node,
                &format!("{node}:crash-{test}-{index}"),
                1_790_000_000_000 + index * 1000,
            )];
            let mut attachments = Vec::new();
            let mut chunks = Vec::new();
            let mut attachment_json = Vec::new();
            if index % attachment_every == attachment_every - 1 {
                let name = format!("{node}/journal.log");
                let bytes = attachment_text(test << 32 | index, attachment_bytes);
                let (blob, blob_chunks) = chunk_blob(&bytes);
                attachment_json.push(json!({ "name": name, "blob": blob }));
                chunks = blob_chunks;
                attachments.push((name, bytes));
            }
            Report {
                manifest: manifest(&id, index as usize % problems, incidents, attachment_json),
                id,
                chunks,
                attachments,
            }
        })
        .collect()
}

/// What the endpoint answered, in the terms a test checks.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Answered {
    problem_id: String,
    known: bool,
    bug: Option<u64>,
}

/// Uploads a report the way an aggregator does (manifest, missing chunks, completion);
/// panics unless it ends answered 200.
fn upload(client: &Client, report: &Report) -> Answered {
    let manifest = serde_json::from_value(report.manifest.clone())
        .unwrap_or_else(|error| panic!("report {}: not a manifest: {error}", report.id));
    let reply = client
        .upload(&manifest, &report.chunks)
        .unwrap_or_else(|error| panic!("upload of report {}: {error}", report.id));
    Answered {
        problem_id: reply.problem_id,
        known: reply.known,
        bug: reply.bug.map(|bug| bug.id),
    }
}

/// Sends an incident update; panics unless it is answered 200.
fn update(client: &Client, update: &Value) -> Answered {
    let typed = serde_json::from_value(update.clone())
        .unwrap_or_else(|error| panic!("not an incident update: {error}: {update}"));
    let reply = client
        .update(&typed)
        .unwrap_or_else(|error| panic!("incident update {update}: {error}"));
    Answered {
        problem_id: reply.problem_id,
        known: reply.known,
        bug: reply.bug.map(|bug| bug.id),
    }
}

/// What a problem's answers promised.
#[derive(Debug, Default)]
struct ProblemLedger {
    bug: Option<u64>,
    reports: BTreeSet<String>,
    incidents: BTreeSet<String>,
    /// Reports and updates that added incidents: each writes one comment on the bug (the
    /// first report's is the "opened" one).
    comments: usize,
}

/// Everything the endpoint answered, to check against what it serves after a restart.
#[derive(Default)]
struct Ledger {
    problems: BTreeMap<String, ProblemLedger>,
    /// Report id → (its problem id, its attachments).
    reports: BTreeMap<String, (String, Attachments)>,
    /// Every report uploaded, for repeats.
    manifests: Vec<Value>,
    updates: Vec<Value>,
}

fn incident_ids(incidents: &Value) -> Vec<String> {
    incidents
        .as_array()
        .expect("incidents")
        .iter()
        .map(|incident| incident["report_id"].as_str().expect("an id").to_string())
        .collect()
}

impl Ledger {
    fn problem(&mut self, answered: &Answered, what: &str) -> &mut ProblemLedger {
        let problem = self
            .problems
            .entry(answered.problem_id.clone())
            .or_default();
        assert!(answered.bug.is_some(), "{what}: answered without a bug");
        match problem.bug {
            None => problem.bug = answered.bug,
            Some(bug) => assert_eq!(
                answered.bug,
                Some(bug),
                "{what}: problem {} answered with another bug",
                answered.problem_id
            ),
        }
        problem
    }

    fn report(&mut self, report: &Report, answered: &Answered) {
        let what = format!("report {}", report.id);
        let new = self.problem(answered, &what).reports.is_empty();
        assert_eq!(
            answered.known, !new,
            "{what}: `known` must say whether its problem was seen before"
        );
        let problem = self.problem(answered, &what);
        assert!(problem.reports.insert(report.id.clone()), "{what} twice");
        let mut added = false;
        for id in incident_ids(&report.manifest["incidents"]) {
            added |= problem.incidents.insert(id);
        }
        problem.comments += usize::from(added);
        self.reports.insert(
            report.id.clone(),
            (answered.problem_id.clone(), report.attachments.clone()),
        );
        self.manifests.push(report.manifest.clone());
    }

    fn update(&mut self, update: &Value, answered: &Answered) {
        let report_id = update["report_id"].as_str().expect("report id");
        assert_eq!(
            Some(&answered.problem_id),
            self.reports.get(report_id).map(|(problem, _)| problem),
            "the update of report {report_id} answered another problem"
        );
        let problem = self.problem(answered, &format!("update of {report_id}"));
        let mut added = false;
        for id in incident_ids(&update["incidents"]) {
            added |= problem.incidents.insert(id);
        }
        problem.comments += usize::from(added);
        self.updates.push(update.clone());
    }
}

/// Uploads `reports`: the first of each problem alone (so that the bug numbers come in a
/// known order), the rest from [`UPLOAD_THREADS`] threads at once.
fn upload_all(client: &Client, reports: &[Report], ledger: &mut Ledger) {
    let mut firsts = BTreeSet::new();
    let (first, rest): (Vec<&Report>, Vec<&Report>) = reports
        .iter()
        .partition(|report| firsts.insert(report.manifest["signature"].to_string()));
    for report in first {
        let answered = upload(client, report);
        ledger.report(report, &answered);
    }
    let answers: Vec<(&Report, Answered)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..UPLOAD_THREADS)
            .map(|thread| {
                let mine: Vec<&Report> = rest
                    .iter()
                    .skip(thread)
                    .step_by(UPLOAD_THREADS)
                    .copied()
                    .collect();
                let client = client.clone();
                scope.spawn(move || {
                    mine.into_iter()
                        .map(|report| (report, upload(&client, report)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|thread| thread.join().expect("an upload thread"))
            .collect()
    });
    for (report, answered) in answers {
        ledger.report(report, &answered);
    }
}

fn get_json(client: &Client, path: &str) -> Value {
    let answer = client
        .get(path)
        .unwrap_or_else(|error| panic!("GET {path}: {error}"));
    assert_eq!(answer.status, 200, "GET {path}: {}", answer.body);
    serde_json::from_str(&answer.body)
        .unwrap_or_else(|error| panic!("GET {path}: not JSON ({error}): {}", answer.body))
}

fn sorted_strings(values: &Value) -> Vec<String> {
    let mut strings: Vec<String> = values
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {values}"))
        .iter()
        .map(|value| value.as_str().expect("a string").to_string())
        .collect();
    strings.sort();
    strings
}

/// Checks that the endpoint at `client` holds exactly what `ledger` was answered: every
/// problem with its bug, each report and incident once, each attachment's bytes.
fn check_recorded(client: &Client, ledger: &Ledger, when: &str) {
    let listed = get_json(client, "/api/v1/problems?interesting=all&limit=1000");
    let listed: BTreeMap<String, &Value> = listed["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|problem| (problem["id"].as_str().expect("id").to_string(), problem))
        .collect();
    assert_eq!(
        listed.keys().collect::<Vec<_>>(),
        ledger.problems.keys().collect::<Vec<_>>(),
        "{when}: the problems listed are not the ones answered"
    );
    for (id, expected) in &ledger.problems {
        let summary = listed[id];
        assert_eq!(
            summary["count"].as_u64(),
            Some(expected.incidents.len() as u64),
            "{when}: problem {id} counts other than the incidents answered (lost or doubled)"
        );
        assert_eq!(
            summary["bug"]["id"].as_u64(),
            expected.bug,
            "{when}: problem {id} has another bug than the one answered"
        );
        let detail = get_json(client, &format!("/api/v1/problems/{id}"));
        let mut expected_reports: Vec<&String> = expected.reports.iter().collect();
        expected_reports.sort();
        assert_eq!(
            sorted_strings(&detail["reports"])
                .iter()
                .collect::<Vec<_>>(),
            expected_reports,
            "{when}: problem {id} lists other reports than the ones answered (each once)"
        );
        let mut incidents = incident_ids(&detail["incidents"]);
        incidents.sort();
        assert_eq!(
            incidents.iter().collect::<Vec<_>>(),
            expected.incidents.iter().collect::<Vec<_>>(),
            "{when}: problem {id} lists other incidents than the ones answered (each once)"
        );
        let comments = detail["bug_detail"]["comments"]
            .as_array()
            .map_or(0, Vec::len);
        assert_eq!(
            comments, expected.comments,
            "{when}: bug {:?} of problem {id} has {comments} comments, one per report or \
             update that added incidents is {} (a batch run twice comments twice)",
            expected.bug, expected.comments
        );
    }
    for (report_id, (problem_id, attachments)) in &ledger.reports {
        let stored = get_json(client, &format!("/api/v1/reports/{report_id}"));
        assert_eq!(
            stored["problem_id"].as_str(),
            Some(problem_id.as_str()),
            "{when}: report {report_id} is recorded under another problem"
        );
        for (name, bytes) in attachments {
            let path = format!("/reports/{report_id}/attachments/{name}");
            let answer = client
                .get(&path)
                .unwrap_or_else(|error| panic!("{when}: GET {path}: {error}"));
            assert_eq!(answer.status, 200, "{when}: GET {path}: {}", answer.body);
            assert!(
                answer.body.as_bytes() == bytes.as_slice(),
                "{when}: attachment {name} of report {report_id} reads back {} bytes, not the \
                 {} uploaded (its chunks or their index were lost)",
                answer.body.len(),
                bytes.len()
            );
        }
    }
}

/// Every report and update again: each answered at once (200: its chunks are known, it
/// is recorded) as known, with the same problem and bug; then nothing has changed.
fn check_repeats_change_nothing(client: &Client, admin: &Client, ledger: &Ledger, when: &str) {
    for manifest in &ledger.manifests {
        let report_id = manifest["report_id"].as_str().expect("report id");
        let body = serde_json::to_vec(manifest).expect("a manifest serializes");
        let answer = client
            .post("/api/v1/reports", &body)
            .unwrap_or_else(|error| panic!("{when}: repeat of report {report_id}: {error}"));
        assert_eq!(
            answer.status, 200,
            "{when}: a repeat of report {report_id} must be answered at once (its chunks are \
             stored): {}",
            answer.body
        );
        let reply = answer.reply().expect("an upload reply");
        let (problem_id, _) = &ledger.reports[report_id];
        assert!(
            reply.known,
            "{when}: a repeat of report {report_id} is not known"
        );
        assert_eq!(
            &reply.problem_id, problem_id,
            "{when}: repeat of {report_id}"
        );
        assert_eq!(
            reply.bug.map(|bug| bug.id),
            ledger.problems[problem_id].bug,
            "{when}: a repeat of report {report_id} is answered with another bug"
        );
    }
    for repeated in &ledger.updates {
        let answered = update(client, repeated);
        assert!(answered.known, "{when}: a repeated update is not known");
        assert_eq!(
            answered.bug, ledger.problems[&answered.problem_id].bug,
            "{when}: a repeated update is answered with another bug"
        );
    }
    check_recorded(admin, ledger, &format!("{when}, after the repeats"));
}

/// A report of a new problem is given a bug number never given before.
fn check_next_bug_is_new(client: &Client, ledger: &mut Ledger, test: u64, problem: usize) {
    let id = report_id(test, 1_000_000);
    let report = Report {
        manifest: manifest(
            &id,
            problem,
            vec![incident(
                "node-9",
                &format!("node-9:fresh-{test}"),
                1_790_000_100_000,
            )],
            Vec::new(),
        ),
        id,
        chunks: Vec::new(),
        attachments: Vec::new(),
    };
    let answered = upload(client, &report);
    let highest = ledger
        .problems
        .values()
        .filter_map(|problem| problem.bug)
        .max()
        .unwrap_or(0);
    assert!(!answered.known, "a new signature is a new problem");
    assert_eq!(
        answered.bug,
        Some(highest + 1),
        "the bug numbers answered before the kill go up to {highest}: the next one is new"
    );
    ledger.report(&report, &answered);
}

/// A client of the endpoint with its admin token: the bug comments every cluster's
/// incidents made are the admin's to read.
fn admin(dir: &NodeDir, server: &Server) -> Client {
    let token = std::fs::read_to_string(dir.data_dir.join("admin.token")).expect("admin.token");
    Client::new(&server.url, token.trim())
}

fn token(dir: &NodeDir) -> String {
    let made = dir.json(&["endpoint", "token", "create", CLUSTER]);
    made["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {made}"))
        .to_string()
}

/// An incident update of `report` with two new incidents and one it already has.
fn update_of(report: &Report) -> Value {
    let mut incidents = vec![
        incident(
            "node-7",
            &format!("node-7:later-{}", report.id),
            1_790_000_500_000,
        ),
        incident(
            "node-8",
            &format!("node-8:later-{}", report.id),
            1_790_000_600_000,
        ),
    ];
    incidents.extend(
        report.manifest["incidents"]
            .as_array()
            .expect("incidents")
            .iter()
            .cloned(),
    );
    json!({
        "report_id": report.id,
        "cluster_id": CLUSTER,
        "term": 1,
        "signature": report.manifest["signature"],
        "incidents": incidents,
    })
}

#[test]
fn answered_reports_survive_sigkill_exactly_once() {
    const TEST: u64 = 1;
    const PROBLEMS: usize = 3;
    let dir = NodeDir::new(CONFIG_TOML);
    let server = Server::start(&dir);
    let token = token(&dir);
    let client = Client::new(&server.url, &token);

    // 40 reports over 3 problems, every 10th with a 300 kB log (several chunks, stored
    // in a pack and indexed by the batch), and one incident update.
    let reports = reports(TEST, 0, 40, PROBLEMS, 10, 300 * 1024);
    let mut ledger = Ledger::default();
    upload_all(&client, &reports, &mut ledger);
    let updated = &reports[4];
    let update_json = update_of(updated);
    let answered = update(&client, &update_json);
    ledger.update(&update_json, &answered);
    assert_eq!(ledger.problems.len(), PROBLEMS);
    check_recorded(&admin(&dir, &server), &ledger, "before the kill");

    server.kill();
    let journal_bytes_at_kill = journal_bytes(&dir);
    assert!(
        journal_bytes_at_kill > 0,
        "after SIGKILL with no checkpoint, the answered batches are in {} (it is empty or \
         absent)",
        journal_path(&dir).display()
    );

    let server = Server::start(&dir);
    let client = Client::new(&server.url, &token);
    check_recorded(&admin(&dir, &server), &ledger, "after SIGKILL and restart");
    check_repeats_change_nothing(
        &client,
        &admin(&dir, &server),
        &ledger,
        "after SIGKILL and restart",
    );
    check_next_bug_is_new(&client, &mut ledger, TEST, PROBLEMS);

    let status = server.interrupt();
    assert!(
        status.success(),
        "SIGINT stops the endpoint cleanly: {status}; log:\n{}",
        log_text(&dir)
    );
    assert_eq!(
        journal_bytes(&dir),
        0,
        "a clean stop checkpoints the database and empties the journal"
    );

    // What the checkpoint made durable is all there, with nothing left to replay.
    let server = Server::start(&dir);
    check_recorded(
        &admin(&dir, &server),
        &ledger,
        "after a clean stop and restart",
    );
    server.kill();
}

#[test]
fn a_torn_append_at_the_journal_end_is_ignored() {
    const TEST: u64 = 2;
    const PROBLEMS: usize = 2;
    let dir = NodeDir::new(CONFIG_TOML);
    let server = Server::start(&dir);
    let token = token(&dir);
    let client = Client::new(&server.url, &token);
    let mut ledger = Ledger::default();
    upload_all(
        &client,
        &reports(TEST, 0, 12, PROBLEMS, 6, 100 * 1024),
        &mut ledger,
    );
    server.kill();
    assert!(
        journal_bytes(&dir) > 0,
        "the answered batches are journaled"
    );

    // Garbage where the next entry would start: what a crash in the middle of an append
    // leaves (never answered).
    let mut random = Xorshift(0x5EED_0000_0000_0001);
    let garbage: Vec<u8> = (0..173).map(|_| random.next() as u8).collect();
    append(&dir, &garbage);
    let server = Server::start(&dir);
    let client = Client::new(&server.url, &token);
    check_recorded(
        &admin(&dir, &server),
        &ledger,
        "after random bytes at the journal's end",
    );

    // More answered after that start, then a torn entry: the header of an entry whose
    // payload never made it to the disk.
    upload_all(
        &client,
        &reports(TEST, 100, 6, PROBLEMS, 3, 50 * 1024),
        &mut ledger,
    );
    server.kill();
    let mut torn = b"CMJ1".to_vec();
    torn.extend_from_slice(&4096u32.to_le_bytes());
    torn.extend((0..8 + 100).map(|_| random.next() as u8));
    append(&dir, &torn);
    let server = Server::start(&dir);
    let client = Client::new(&server.url, &token);
    check_recorded(
        &admin(&dir, &server),
        &ledger,
        "after a torn entry at the journal's end",
    );
    check_repeats_change_nothing(
        &client,
        &admin(&dir, &server),
        &ledger,
        "after a torn entry at the journal's end",
    );
    let status = server.interrupt();
    assert!(
        status.success(),
        "SIGINT: {status}; log:\n{}",
        log_text(&dir)
    );
    assert_eq!(journal_bytes(&dir), 0, "a clean stop empties the journal");
}

#[test]
fn reports_answered_across_checkpoints_survive_sigkill_exactly_once() {
    // Checkpoints every 20 ms while reports come in rounds 30 ms apart: at the kill some
    // batches are durable in the database and the rest only in the journal (a kill may
    // even fall between a checkpoint and the journal's truncation). Replay must bring
    // back the second kind and leave the first as it is.
    const TEST: u64 = 3;
    const PROBLEMS: usize = 2;
    const ROUNDS: u64 = 8;
    let dir = NodeDir::new("[storage]\ncheckpoint_ms = 20\n");
    let server = Server::start(&dir);
    let token = token(&dir);
    let client = Client::new(&server.url, &token);
    let mut ledger = Ledger::default();
    for round in 0..ROUNDS {
        let reports = reports(TEST, round * 100, 5, PROBLEMS, 5, 40 * 1024);
        upload_all(&client, &reports, &mut ledger);
        let update_json = update_of(&reports[0]);
        let answered = update(&client, &update_json);
        ledger.update(&update_json, &answered);
        std::thread::sleep(Duration::from_millis(30));
    }
    server.kill();
    let server = Server::start(&dir);
    let client = Client::new(&server.url, &token);
    check_recorded(
        &admin(&dir, &server),
        &ledger,
        "after checkpoints, SIGKILL and restart",
    );
    check_repeats_change_nothing(
        &client,
        &admin(&dir, &server),
        &ledger,
        "after checkpoints, SIGKILL and restart",
    );
    server.kill();
}

#[test]
fn a_sigkill_in_the_middle_of_uploads_loses_no_answered_report_and_doubles_none() {
    // A chunk's PUT is answered before its pack lane has written it; a report is answered
    // only once its chunks are written and synced. Killed while four threads upload
    // reports of 400 kB each, the endpoint must bring back every report it answered, its
    // attachment byte for byte; one it did not answer comes back whole or not at all; and
    // once every report is uploaded again, each is there exactly once.
    const TEST: u64 = 4;
    const PROBLEMS: usize = 3;
    const COUNT: u64 = 120;
    const ANSWERED_BEFORE_KILL: usize = 12;
    let dir = NodeDir::new(CONFIG_TOML);
    let server = Server::start(&dir);
    let token = token(&dir);
    let client = Client::new(&server.url, &token);
    let reports = reports(TEST, 0, COUNT, PROBLEMS, 1, 400 * 1024);
    let answered = std::sync::Mutex::new(Vec::<(usize, String)>::new());
    let killed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        for thread in 0..UPLOAD_THREADS {
            let (client, reports, answered, killed) =
                (client.clone(), &reports, &answered, &killed);
            scope.spawn(move || {
                for index in (thread..reports.len()).step_by(UPLOAD_THREADS) {
                    let report = &reports[index];
                    let manifest =
                        serde_json::from_value(report.manifest.clone()).expect("a manifest");
                    match client.upload(&manifest, &report.chunks) {
                        Ok(reply) => answered.lock().unwrap().push((index, reply.problem_id)),
                        Err(_) if killed.load(std::sync::atomic::Ordering::SeqCst) => return,
                        Err(error) => {
                            panic!("upload of report {} before the kill: {error}", report.id)
                        }
                    }
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(SERVER_WAIT_SECS_MAX);
        while answered.lock().unwrap().len() < ANSWERED_BEFORE_KILL {
            assert!(
                Instant::now() < deadline,
                "no {ANSWERED_BEFORE_KILL} reports answered in time"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        killed.store(true, std::sync::atomic::Ordering::SeqCst);
        server.kill();
    });
    let answered = answered.into_inner().unwrap();
    assert!(
        answered.len() < reports.len(),
        "every report was answered before the kill: nothing was in flight"
    );

    let server = Server::start(&dir);
    let client = Client::new(&server.url, &token);
    let answered_ids: BTreeSet<usize> = answered.iter().map(|(index, _)| *index).collect();
    let check_whole = |report: &Report, answer: &crashmesh_endpoint_client::Answer| {
        for (name, bytes) in &report.attachments {
            let path = format!("/reports/{}/attachments/{name}", report.id);
            let attachment = client
                .get(&path)
                .unwrap_or_else(|error| panic!("GET {path}: {error}"));
            assert!(
                attachment.status == 200 && attachment.body.as_bytes() == bytes.as_slice(),
                "report {} is recorded ({}) but its attachment {name} reads back {} {} bytes, \
                 not the {} uploaded",
                report.id,
                answer.status,
                attachment.status,
                attachment.body.len(),
                bytes.len()
            );
        }
    };
    for (index, problem_id) in &answered {
        let report = &reports[*index];
        let answer = client
            .get(&format!("/api/v1/reports/{}", report.id))
            .expect("GET the report");
        assert_eq!(
            answer.status, 200,
            "report {} was answered before the kill and is lost: {}",
            report.id, answer.body
        );
        assert_eq!(
            answer.json()["problem_id"].as_str(),
            Some(problem_id.as_str())
        );
        check_whole(report, &answer);
    }
    for (index, report) in reports.iter().enumerate() {
        if answered_ids.contains(&index) {
            continue;
        }
        let answer = client
            .get(&format!("/api/v1/reports/{}", report.id))
            .expect("GET the report");
        match answer.status {
            404 => {}
            200 => check_whole(report, &answer),
            status => panic!(
                "report {}: GET answered {status}: {}",
                report.id, answer.body
            ),
        }
    }
    // Every report again, then each problem counts each of its reports' incidents once.
    for report in &reports {
        upload(&client, report);
    }
    let listed = get_json(&client, "/api/v1/problems?interesting=all&limit=1000");
    let counts: BTreeMap<String, u64> = listed["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|problem| {
            (
                problem["signature"]
                    .as_str()
                    .expect("signature")
                    .to_string(),
                problem["count"].as_u64().expect("count"),
            )
        })
        .collect();
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for report in &reports {
        let signature = report.manifest["signature"].as_str().expect("signature");
        *expected.entry(signature.to_string()).or_default() += 1;
    }
    assert_eq!(
        counts, expected,
        "after the kill and the uploads again, a report is lost or doubled"
    );
    server.kill();
}

fn append(dir: &NodeDir, bytes: &[u8]) {
    // The file is written ahead of its entries (zeros): the next entry would start where
    // the frames (magic, payload length, checksum, payload) stop.
    let path = journal_path(dir);
    let file = std::fs::read(&path).expect("read the journal");
    let mut end = 0;
    while file.len() >= end + 16 && &file[end..end + 4] == b"CMJ1" {
        let payload = u32::from_le_bytes(file[end + 4..end + 8].try_into().unwrap()) as usize;
        end += 16 + payload;
    }
    assert!(end > 0 && end <= file.len(), "no entries in the journal");
    let journal = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open the journal");
    std::os::unix::fs::FileExt::write_all_at(&journal, bytes, end as u64)
        .expect("write after the journal's entries");
}

//! The upload API through real HTTP on loopback: a real server on 127.0.0.1:0, a real
//! client.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use crashmesh_protocol::report::IncidentUpdate;

const T0: u64 = 1_790_000_000_000;

#[test]
fn a_report_uploads_once_and_a_retry_changes_nothing() {
    let harness = Harness::start();
    let client = harness.client("c1");
    let log = log_bytes("a", 600_000);
    let (manifest, chunks) = report(
        "c1",
        1,
        "r1",
        problem("v1:core:leaf", "leaf"),
        vec![incident("node-1", "e1", T0, None)],
        &log,
    );
    assert!(chunks.len() >= 2, "a multi-chunk attachment");

    // First the manifest: every chunk is missing.
    let body = serde_json::to_vec(&manifest).unwrap();
    let answer = client.post("/api/v1/reports", &body).unwrap();
    assert_eq!(answer.status, 202, "{}", answer.body);
    let reply = answer.reply().unwrap();
    assert_eq!(reply.missing_chunks.len(), chunks.len());
    assert!(!reply.known);
    // Completing early says what is still missing.
    let complete = format!("/api/v1/reports/{}/complete", manifest.report_id);
    let answer = client.post(&complete, b"").unwrap();
    assert_eq!(answer.status, 202);
    assert_eq!(answer.reply().unwrap().missing_chunks.len(), chunks.len());
    // The chunks, then completion.
    for chunk in &chunks {
        let answer = client
            .put(&format!("/api/v1/chunks/{}", chunk.id), &chunk.compressed)
            .unwrap();
        assert_eq!(answer.status, 204, "{}", answer.body);
    }
    let answer = client.post(&complete, b"").unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let first = answer.reply().unwrap();
    assert!(!first.known);
    assert!(first.missing_chunks.is_empty());
    let bug = first.bug.clone().expect("a new problem opens a bug");
    assert_eq!(bug.status, "open");

    // A retry of the whole upload, and a second aggregator with the same report.
    let again = client.upload(&manifest, &chunks).unwrap();
    assert_eq!(again.problem_id, first.problem_id);
    assert!(again.known);
    let mut second_aggregator = manifest.clone();
    second_aggregator.term = 2;
    let again = client.upload(&second_aggregator, &chunks).unwrap();
    assert_eq!(again.problem_id, first.problem_id);

    let problems = harness.problems("");
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0]["count"], 1);
    assert_eq!(problems[0]["id"], first.problem_id.as_str());
    assert_eq!(problems[0]["nodes"], serde_json::json!(["node-1"]));
    assert_eq!(problems[0]["clusters"], serde_json::json!(["c1"]));
    assert_eq!(problems[0]["kind"], "core");
    assert_eq!(problems[0]["bug"]["status"], "open");
    let bug = harness
        .admin()
        .get(&format!("/api/v1/bugs/{}", bug.id))
        .unwrap()
        .json();
    assert_eq!(bug["comments"].as_array().unwrap().len(), 1, "{bug}");

    // The stored report and its attachment come back as sent.
    let stored = harness
        .admin()
        .get(&format!("/api/v1/reports/{}", manifest.report_id))
        .unwrap();
    assert_eq!(
        stored.json()["manifest"]["report_id"],
        manifest.report_id.as_str()
    );
    let attachment = harness
        .admin()
        .get(&format!(
            "/reports/{}/attachments/node-1/journal.log",
            manifest.report_id
        ))
        .unwrap();
    assert_eq!(attachment.status, 200);
    assert_eq!(attachment.body.as_bytes(), &log[..]);
}

#[test]
fn a_known_problem_adds_incidents_and_comments_and_a_cluster_sends_its_chunks_once() {
    let harness = Harness::start();
    let client = harness.client("c1");
    let other = harness.client("c2");
    let log = log_bytes("shared", 300_000);
    let (first, chunks) = report(
        "c1",
        1,
        "r1",
        problem("v1:core:leaf", "leaf"),
        vec![incident("node-1", "e1", T0, Some("1.0"))],
        &log,
    );
    let reply = client.upload(&first, &chunks).unwrap();
    let bug_id = reply.bug.unwrap().id;
    let stored = harness.chunks_stored();

    // Another cluster hits the same bug with the same log bytes: it is not told that c1
    // has them, so it sends them (verified, kept once on disk) …
    let (second, _) = report(
        "c2",
        1,
        "r2",
        problem("v1:core:leaf", "leaf"),
        vec![
            incident("node-7", "e1", T0 + 3_600_000, Some("1.0")),
            incident("node-8", "e1", T0 + 7_200_000, Some("1.0")),
        ],
        &log,
    );
    let answer = other
        .post("/api/v1/reports", &serde_json::to_vec(&second).unwrap())
        .unwrap();
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(
        answer.reply().unwrap().missing_chunks.len(),
        chunks.len(),
        "every chunk, though c1 stored them"
    );
    let reply = other.upload(&second, &chunks).unwrap();
    assert!(reply.known);
    assert_eq!(reply.bug.as_ref().unwrap().id, bug_id);
    assert_eq!(harness.chunks_stored(), stored, "the bytes are kept once");
    // … once: a report of c2 naming them again sends none.
    let (third, _) = report(
        "c2",
        1,
        "r3",
        problem("v1:core:leaf", "leaf"),
        // (An incident recorded already: it counts once.)
        vec![incident("node-7", "e1", T0 + 3_600_000, Some("1.0"))],
        &log,
    );
    let answer = other
        .post("/api/v1/reports", &serde_json::to_vec(&third).unwrap())
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);

    // Incident updates: new ones count, repeats do not.
    let update = IncidentUpdate {
        report_id: first.report_id.clone(),
        cluster_id: "c1".into(),
        term: 1,
        signature: first.signature.clone(),
        incidents: vec![incident("node-2", "e9", T0 + 10_000_000, None)],
    };
    client.update(&update).unwrap();
    client.update(&update).unwrap();

    let problems = harness.problems("");
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0]["count"], 4);
    assert_eq!(problems[0]["clusters"], serde_json::json!(["c1", "c2"]));
    assert_eq!(
        problems[0]["nodes"],
        serde_json::json!(["node-1", "node-2", "node-7", "node-8"])
    );
    let bug = harness
        .admin()
        .get(&format!("/api/v1/bugs/{bug_id}"))
        .unwrap()
        .json();
    let comments = bug["comments"].as_array().unwrap();
    assert_eq!(comments.len(), 3, "{bug}");
    assert!(
        comments[1]["text"]
            .as_str()
            .unwrap()
            .contains("node-7, node-8")
    );
    assert!(comments[1]["text"].as_str().unwrap().contains("c2"));

    // An update for a report never uploaded is refused.
    let mut unknown = update.clone();
    unknown.report_id = hex_id("never");
    let answer = client
        .post("/api/v1/incidents", &serde_json::to_vec(&unknown).unwrap())
        .unwrap();
    assert_eq!(answer.status, 404);
}

#[test]
fn workarounds_reach_the_cluster_and_a_fixed_bug_seen_in_a_newer_version_reopens() {
    let harness = Harness::start();
    let client = harness.client("c1");
    let (first, chunks) = report(
        "c1",
        1,
        "r1",
        problem("v1:core:leaf", "leaf"),
        vec![incident("node-1", "e1", T0, Some("1.0"))],
        b"tiny log\n",
    );
    let bug = client.upload(&first, &chunks).unwrap().bug.unwrap();

    let answer = harness
        .admin()
        .post(
            &format!("/api/v1/bugs/{}", bug.id),
            br#"{"status":"fixed","workaround":"restart vstorage-csd with --no-leaf"}"#,
        )
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    // Not with a cluster token.
    let answer = client
        .post(&format!("/api/v1/bugs/{}", bug.id), br#"{"status":"open"}"#)
        .unwrap();
    assert_eq!(answer.status, 401);

    // The same version again: a comment, still fixed.
    let update = |entry: &str, version: &str| IncidentUpdate {
        report_id: first.report_id.clone(),
        cluster_id: "c1".into(),
        term: 1,
        signature: first.signature.clone(),
        incidents: vec![incident("node-3", entry, T0 + 1000, Some(version))],
    };
    let reply = client.update(&update("e2", "1.0")).unwrap();
    assert_eq!(reply.bug.as_ref().unwrap().status, "fixed");
    assert_eq!(
        reply.workaround.as_deref(),
        Some("restart vstorage-csd with --no-leaf")
    );
    // A newer version: a regression.
    let reply = client.update(&update("e3", "1.2")).unwrap();
    assert_eq!(reply.bug.as_ref().unwrap().status, "open");
    let problems = harness.problems("");
    assert_eq!(problems[0]["bug"]["regression"], true);
    let bug = harness
        .admin()
        .get(&format!("/api/v1/bugs/{}", bug.id))
        .unwrap()
        .json();
    let last = bug["comments"].as_array().unwrap().last().unwrap()["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        last.contains("regression") && last.contains("1.2"),
        "{last}"
    );
}

#[test]
fn fencing_refuses_a_lower_term_and_admits_equal_and_higher_ones() {
    let harness = Harness::start();
    let client = harness.client("c1");
    let (manifest, chunks) = report(
        "c1",
        5,
        "r1",
        problem("v1:core:a", "a"),
        vec![incident("node-1", "e1", T0, None)],
        b"log\n",
    );
    client.upload(&manifest, &chunks).unwrap();
    let (stale, stale_chunks) = report(
        "c1",
        4,
        "r2",
        problem("v1:core:b", "b"),
        vec![incident("node-2", "e1", T0, None)],
        b"other log\n",
    );
    let answer = client
        .post("/api/v1/reports", &serde_json::to_vec(&stale).unwrap())
        .unwrap();
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(answer.json()["code"], "stale_term");
    let stale_update = IncidentUpdate {
        report_id: manifest.report_id.clone(),
        cluster_id: "c1".into(),
        term: 4,
        signature: manifest.signature.clone(),
        incidents: vec![incident("node-9", "e1", T0, None)],
    };
    let answer = client
        .post(
            "/api/v1/incidents",
            &serde_json::to_vec(&stale_update).unwrap(),
        )
        .unwrap();
    assert_eq!(answer.status, 409);
    let mut current = stale.clone();
    current.term = 6;
    client.upload(&current, &stale_chunks).unwrap();
    assert_eq!(harness.problems("").len(), 2);
    assert_eq!(
        harness
            .problems("")
            .iter()
            .map(|p| p["count"].as_u64().unwrap())
            .sum::<u64>(),
        2
    );
}

#[test]
fn rules_hide_uninteresting_problems_and_filters_select() {
    let harness = Harness::start_with(|config| {
        config.rules = vec![crashmesh_endpoint::recording::rules::Rule {
            executable: Some("/usr/bin/test-*".into()),
            ..Default::default()
        }];
    });
    let client = harness.client("c1");
    let mut boring = problem("v1:core:boring", "boring");
    boring.executable = Some("/usr/bin/test-runner".into());
    let (manifest, chunks) = report(
        "c1",
        1,
        "r1",
        boring,
        vec![incident("node-1", "e1", T0, None)],
        b"x\n",
    );
    let reply = client.upload(&manifest, &chunks).unwrap();
    assert!(reply.bug.is_none(), "no bug for an uninteresting problem");
    let mut labelled = incident("node-2", "e1", T0 + 5, None);
    labelled.labels.insert("test_run".into(), "t2".into());
    let (manifest, chunks) = report(
        "c1",
        1,
        "r2",
        problem("v1:core:real", "real"),
        vec![labelled],
        b"y\n",
    );
    client.upload(&manifest, &chunks).unwrap();

    assert_eq!(harness.problems("").len(), 1);
    assert_eq!(harness.problems("?interesting=all").len(), 2);
    let hidden = harness.problems("?interesting=false");
    assert_eq!(hidden.len(), 1);
    assert_eq!(
        hidden[0]["uninteresting_rule"],
        "executable=/usr/bin/test-*"
    );
    assert_eq!(hidden[0]["count"], 1, "kept and counted");
    assert_eq!(harness.problems("?label=test_run=t2").len(), 1);
    assert_eq!(
        harness.problems("?label=test_run=t1&interesting=all").len(),
        1
    );
    assert_eq!(harness.problems("?label=test_run&interesting=all").len(), 2);
    assert_eq!(harness.problems("?cluster=c1").len(), 1);
    assert_eq!(harness.problems("?cluster=c9").len(), 0);
    assert_eq!(harness.problems("?kind=python").len(), 0);
    assert_eq!(harness.problems("?status=open").len(), 1);
    assert_eq!(harness.problems("?status=none&interesting=all").len(), 1);
    let one = harness
        .admin()
        .get(&format!(
            "/api/v1/problems/{}",
            hidden[0]["id"].as_str().unwrap()
        ))
        .unwrap();
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["problem"]["frames"][0]["function"], "boring");
}

/// A tiny HTTP receiver: collects the JSON bodies POSTed to it. It holds each request,
/// unanswered, until `gate` is let go (its sender dropped).
fn webhook_receiver(gate: Receiver<()>) -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(64) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; length];
            let complete = reader.read_exact(&mut body).is_ok();
            // Blocks until the test lets go; after that, returns at once.
            let _ = gate.recv();
            if complete {
                sink.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap_or_default());
            }
            let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        }
    });
    (url, received)
}

#[test]
fn webhooks_get_new_bug_and_comment_events_and_a_dead_one_never_blocks_ingest() {
    let (release, gate) = channel::<()>();
    let (url, received) = webhook_receiver(gate);
    // A second URL where nothing listens: its failures are logged, ingest goes on.
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/", listener.local_addr().unwrap())
    };
    let harness = Harness::start_with(|config| {
        config.webhooks.urls = vec![dead, url];
        // Longer than the client's own timeout: were ingest to wait on the held
        // webhook, the upload below would fail rather than finish late.
        config.webhooks.timeout_ms = 600_000;
    });
    let client = harness.client("c1");
    let (manifest, chunks) = report(
        "c1",
        1,
        "r1",
        problem("v1:core:hook", "hook"),
        vec![incident("node-1", "e1", T0, None)],
        b"z\n",
    );
    client.upload(&manifest, &chunks).unwrap();
    client
        .update(&IncidentUpdate {
            report_id: manifest.report_id.clone(),
            cluster_id: "c1".into(),
            term: 1,
            signature: manifest.signature.clone(),
            incidents: vec![incident("node-2", "e2", T0 + 1, None)],
        })
        .unwrap();
    // Both were answered while the receiver has answered no webhook at all.
    assert!(
        received.lock().unwrap().is_empty(),
        "the receiver answered before it was let go"
    );
    drop(release);
    let delivered = wait_until(Duration::from_secs(60), || {
        received.lock().unwrap().len() >= 2
    });
    let events = received.lock().unwrap().clone();
    assert!(delivered, "{events:?}");
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["event"], "new_bug");
    assert_eq!(events[0]["signature"], "v1:core:hook");
    assert_eq!(events[1]["event"], "comment");
    assert!(events[1]["text"].as_str().unwrap().contains("node-2"));
    let metrics = harness.admin().get("/metrics").unwrap().body;
    assert!(
        metrics.contains("crashmesh_endpoint_webhooks_failed_total 2"),
        "{metrics}"
    );
}

#[test]
fn frames_without_names_are_named_from_the_symbol_directory() {
    // This test binary is an ELF with a symbol table and a build-id: it stands for the
    // debug file a vendor keeps.
    let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    use object::{Object, ObjectSymbol};
    let file = object::File::parse(&*exe).unwrap();
    let build_id: String = file
        .build_id()
        .unwrap()
        .expect("the test binary has a build-id")
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let symbol = file
        .symbols()
        .find(|symbol| {
            symbol.kind() == object::SymbolKind::Text
                && symbol.size() > 64
                && symbol
                    .name()
                    .is_ok_and(|name| name.contains("webhook_receiver"))
        })
        .expect("a known function");
    let symbols = tempfile::tempdir().unwrap();
    let dir = symbols.path().join("buildid").join(&build_id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(std::env::current_exe().unwrap(), dir.join("debuginfo")).unwrap();
    let symbols_dir = symbols.path().to_path_buf();
    let harness = Harness::start_with(move |config| config.symbols_dir = Some(symbols_dir));
    let client = harness.client("c1");
    let mut unnamed = problem("v1:core:unnamed", "x");
    unnamed.frames[0].function = None;
    unnamed.frames[0].offset = Some(symbol.address() + 8);
    unnamed.frames[0].build_id = Some(build_id.clone());
    let (manifest, chunks) = report(
        "c1",
        1,
        "r1",
        unnamed,
        vec![incident("node-1", "e1", T0, None)],
        b"l\n",
    );
    let reply = client.upload(&manifest, &chunks).unwrap();
    let detail = harness
        .admin()
        .get(&format!("/api/v1/problems/{}", reply.problem_id))
        .unwrap()
        .json();
    let function = detail["problem"]["frames"][0]["function"].as_str().unwrap();
    assert!(function.contains("webhook_receiver"), "{function}");
    assert_eq!(detail["problem"]["frames"][0]["offset"], 8);
}

#[test]
fn export_writes_reports_as_json_and_attachments_as_plain_files() {
    let harness = Harness::start();
    let client = harness.client("c1");
    let log = log_bytes("export", 400_000);
    let (manifest, chunks) = report(
        "c1",
        1,
        "r1",
        problem("v1:core:e", "e"),
        vec![incident("node-1", "e1", T0, None)],
        &log,
    );
    client.upload(&manifest, &chunks).unwrap();
    // The export runs while the server runs: through its socket, as the CLI does.
    let out = harness.dir.path().join("export");
    let config = crashmesh_endpoint::EndpointConfig {
        data_dir: harness.dir.path().join("endpoint"),
        ..Default::default()
    };
    let (summary, through_server) = crashmesh_endpoint::local::run(
        &config,
        &crashmesh_endpoint::local::AdminRequest::Export { out: out.clone() },
    )
    .unwrap();
    assert!(through_server);
    let summary: crashmesh_endpoint::export::ExportSummary =
        serde_json::from_value(summary).unwrap();
    assert_eq!(
        (summary.reports, summary.attachments, summary.problems),
        (1, 1, 1)
    );
    let dir = out.join("reports").join(&manifest.report_id);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["manifest"]["cluster_id"], "c1");
    assert_eq!(
        std::fs::read(dir.join("attachments/node-1/journal.log")).unwrap(),
        log
    );
    let problems: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("problems.json")).unwrap()).unwrap();
    assert_eq!(problems["problems"].as_array().unwrap().len(), 1);
}

#[test]
fn metrics_count_what_happened() {
    let harness = Harness::start();
    let client = harness.client("c1");
    let (manifest, chunks) = report(
        "c1",
        1,
        "r1",
        problem("v1:core:m", "m"),
        vec![incident("node-1", "e1", T0, None)],
        &log_bytes("m", 200_000),
    );
    client.upload(&manifest, &chunks).unwrap();
    let _ = harness.anonymous().post("/api/v1/reports", b"{}");
    let metrics = harness.admin().get("/metrics").unwrap();
    assert_eq!(metrics.status, 200);
    for line in [
        "crashmesh_endpoint_reports_completed_total 1",
        "crashmesh_endpoint_problems_new_total 1",
        "crashmesh_endpoint_bugs_opened_total 1",
        "crashmesh_endpoint_requests_refused_total 1",
        "# TYPE crashmesh_endpoint_pending_reports gauge",
        // The completed report's chunks were written before it was recorded.
        "crashmesh_endpoint_chunks_writing 0",
    ] {
        assert!(metrics.body.contains(line), "{line} in\n{}", metrics.body);
    }
    assert!(metrics.body.contains(&format!(
        "crashmesh_endpoint_chunks_stored_total {}",
        chunks.len()
    )));
}

#[test]
fn chunks_answered_while_no_pack_can_be_written_are_kept_and_their_report_waits_for_them() {
    let harness = Harness::start();
    let client = harness.client("c1");
    // No pack is open yet: without their directory the lanes cannot start one.
    let packs = harness
        .dir
        .path()
        .join("endpoint")
        .join("blobs")
        .join("packs");
    std::fs::remove_dir(&packs).unwrap();
    let (manifest, chunks) = report(
        "c1",
        1,
        "r1",
        problem("v1:core:w", "w"),
        vec![incident("node-1", "e1", T0, None)],
        &log_bytes("w", 600_000),
    );
    let expected = chunks.clone();
    let uploading = std::thread::spawn(move || client.upload(&manifest, &chunks));
    // The chunks were answered and wait in memory; the completion waits for their writes.
    let writing = format!("crashmesh_endpoint_chunks_writing {}", expected.len());
    let waiting = "crashmesh_endpoint_completions_waiting_for_chunks 1";
    let waited = wait_until(Duration::from_secs(60), || {
        let metrics = harness.metrics_text();
        metrics.contains(&writing) && metrics.contains(waiting)
    });
    assert!(
        waited,
        "{writing} and {waiting} in\n{}",
        harness.metrics_text()
    );
    assert!(
        !uploading.is_finished(),
        "the report was recorded before its chunks were written"
    );
    assert!(harness.problems("").is_empty());
    assert_eq!(
        chunk_bytes(&harness, &expected[0].id),
        expected[0].compressed,
        "a chunk being written is read from memory"
    );
    // Once the directory is back, a lane's next try writes them and the report is recorded.
    std::fs::create_dir(&packs).unwrap();
    let reply = uploading.join().unwrap().unwrap();
    assert!(!reply.known);
    assert_eq!(harness.chunks_stored(), expected.len());
    for chunk in &expected {
        assert_eq!(chunk_bytes(&harness, &chunk.id), chunk.compressed);
    }
    assert_eq!(harness.problems("").len(), 1);
}

/// A stored chunk's bytes, through the admin API.
fn chunk_bytes(harness: &Harness, id: &str) -> Vec<u8> {
    ureq::get(format!("{}/api/v1/chunks/{id}", harness.url))
        .header("Authorization", format!("Bearer {}", harness.admin))
        .call()
        .unwrap()
        .body_mut()
        .read_to_vec()
        .unwrap()
}

/// A core problem whose crashing thread is `functions`, top first.
fn problem_of_frames(signature: &str, functions: &[&str]) -> crashmesh_protocol::Problem {
    let mut problem = problem(signature, functions[0]);
    problem.frames = functions
        .iter()
        .enumerate()
        .map(|(index, function)| crashmesh_protocol::Frame {
            address: Some(0x5555_0000_1000 + index as u64 * 0x100),
            function: Some(function.to_string()),
            module: Some("/usr/bin/vstorage-csd".into()),
            offset: Some(0x10),
            reliable: true,
            ..crashmesh_protocol::Frame::default()
        })
        .collect();
    problem
}

#[test]
fn a_problem_lists_the_problems_alike_that_its_viewer_may_see_nearest_first() {
    let harness = Harness::start();
    let (c1, c2) = (harness.client("c1"), harness.client("c2"));
    let upload =
        |client: &crashmesh_endpoint_client::Client, cluster: &str, seed: &str, frames: &[&str]| {
            let (manifest, chunks) = report(
                cluster,
                1,
                seed,
                problem_of_frames(&format!("v1:core:{seed}"), frames),
                vec![incident("node-1", seed, T0, None)],
                b"log\n",
            );
            client.upload(&manifest, &chunks).unwrap().problem_id
        };
    let a = upload(&c1, "c1", "a", &["leaf", "middle", "outer", "main"]);
    // The same bug through another caller, and with one more frame.
    let b = upload(&c1, "c1", "b", &["leaf", "middle", "other", "main"]);
    let d = upload(
        &c1,
        "c1",
        "d",
        &["leaf", "helper", "middle", "outer", "main"],
    );
    // Another bug that only shares `main`, and the abort machinery that is dropped.
    let c = upload(&c1, "c1", "c", &["abort", "parse", "read", "main"]);
    // Another cluster's problem, like b.
    let e = upload(&c2, "c2", "e", &["leaf", "middle", "other", "main"]);

    let similar = |viewer: &crashmesh_endpoint_client::Client, id: &str| -> Vec<(String, f64)> {
        let answer = viewer.get(&format!("/api/v1/problems/{id}")).unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json()["similar"]
            .as_array()
            .unwrap()
            .iter()
            .map(|similar| {
                (
                    similar["id"].as_str().unwrap().to_string(),
                    similar["distance"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    // Depth-weighted distances (protocol::similarity): another caller third from the top
    // is nearer than a frame more second from the top.
    let (caller, frame_more) = ((1.0 / 3.0) / (25.0 / 12.0), 0.5 / (25.0 / 12.0 + 0.2));
    let ids = |found: &[(String, f64)]| -> Vec<String> {
        found.iter().map(|(id, _)| id.clone()).collect()
    };
    let admin = similar(&harness.admin(), &a);
    // The admin sees every cluster's, nearest first (equals by incidents, then by id).
    let mut equals = [b.clone(), e.clone()];
    equals.sort();
    assert_eq!(
        ids(&admin),
        [equals[0].clone(), equals[1].clone(), d.clone()]
    );
    assert!((admin[0].1 - caller).abs() < 1e-9 && (admin[2].1 - frame_more).abs() < 1e-9);
    // A cluster sees its own problems only: c1 never hears of e, c2 of a, b or d.
    assert_eq!(ids(&similar(&c1, &a)), [b.clone(), d.clone()]);
    assert_eq!(similar(&c2, &e), []);
    assert!(similar(&c1, &c).is_empty());
    // The problem page shows them with links.
    let page = harness.admin().get(&format!("/problems/{a}")).unwrap().body;
    assert!(page.contains("similar problems"), "{page}");
    assert!(
        page.contains(&format!("<a href=\"/problems/{b}\">")),
        "{page}"
    );
    assert!(
        !page.contains(&format!("<a href=\"/problems/{c}\">")),
        "{page}"
    );
}

#[test]
fn an_admin_merge_makes_two_problems_one_and_each_signature_lands_in_it_from_then_on() {
    // No checkpoint during the test: a copy of the data dir is what a crash leaves.
    let harness = Harness::start_with(|config| config.storage.checkpoint_ms = 600_000);
    let (c1, c2, admin) = (harness.client("c1"), harness.client("c2"), harness.admin());
    let upload = |client: &crashmesh_endpoint_client::Client,
                  cluster: &str,
                  seed: &str,
                  signature: &str,
                  frames: &[&str],
                  nodes: &[&str]| {
        let incidents = nodes
            .iter()
            .enumerate()
            .map(|(index, node)| incident(node, &format!("{seed}-{node}"), T0 + index as u64, None))
            .collect();
        let (manifest, chunks) = report(
            cluster,
            1,
            seed,
            problem_of_frames(signature, frames),
            incidents,
            b"log\n",
        );
        let reply = client.upload(&manifest, &chunks).unwrap();
        (manifest, reply.problem_id)
    };
    let (_, a) = upload(
        &c1,
        "c1",
        "a1",
        "v1:core:a",
        &["leaf", "middle", "outer", "main"],
        &["n1", "n2"],
    );
    // One bug under a second signature (another caller), seen by both clusters.
    let (b_report, b) = upload(
        &c1,
        "c1",
        "b1",
        "v1:core:b",
        &["leaf", "middle", "other", "main"],
        &["n3"],
    );
    upload(
        &c2,
        "c2",
        "b2",
        "v1:core:b",
        &["leaf", "middle", "other", "main"],
        &["m1"],
    );
    let problem = |viewer: &crashmesh_endpoint_client::Client, id: &str| {
        let answer = viewer.get(&format!("/api/v1/problems/{id}")).unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json()
    };
    let b_bug = problem(&admin, &b)["bug"]["id"].as_u64().unwrap();
    let a_bug = problem(&admin, &a)["bug"]["id"].as_u64().unwrap();
    let merge = |viewer: &crashmesh_endpoint_client::Client, from: &str, into: &str| {
        viewer
            .post(
                &format!("/api/v1/problems/{from}/merge"),
                format!("{{\"into\":\"{into}\"}}").as_bytes(),
            )
            .unwrap()
    };
    // Only the admin merges.
    assert_eq!(
        merge(&c1, &b, &a).status,
        401,
        "a cluster token is not the admin's"
    );
    let merged = merge(&admin, &b, &a);
    assert_eq!(merged.status, 200, "{}", merged.body);
    assert_eq!(merged.json()["into"], a.as_str());

    // Every incident, node and cluster once; a's bug kept, b's closed as its duplicate.
    let whole = problem(&admin, &a);
    assert_eq!(whole["count"], 4, "{whole:#}");
    assert_eq!(whole["clusters"], serde_json::json!(["c1", "c2"]));
    assert_eq!(whole["nodes"], serde_json::json!(["m1", "n1", "n2", "n3"]));
    assert_eq!(whole["bug"]["id"], a_bug);
    let closed = admin.get(&format!("/api/v1/bugs/{b_bug}")).unwrap().json();
    assert_eq!(closed["status"], "closed", "{closed:#}");
    assert!(
        closed
            .to_string()
            .contains(&format!("duplicate of bug {a_bug}")),
        "{closed:#}"
    );
    // b's id shows a; each cluster sees its own share.
    assert_eq!(problem(&admin, &b)["id"], a.as_str());
    assert_eq!(problem(&c1, &a)["count"], 3);
    assert_eq!(problem(&c2, &a)["count"], 1);
    assert_eq!(problem(&c2, &b)["id"], a.as_str());
    let listed = harness.problems("");
    assert_eq!(listed.len(), 1, "{listed:#?}");

    // From now on b's signature lands in a: a new report, an update of b's old report.
    let (_, later) = upload(
        &c1,
        "c1",
        "b3",
        "v1:core:b",
        &["leaf", "middle", "other", "main"],
        &["n4"],
    );
    assert_eq!(later, a);
    let update = |incidents| IncidentUpdate {
        report_id: b_report.report_id.clone(),
        cluster_id: "c1".into(),
        term: 1,
        signature: b_report.signature.clone(),
        incidents,
    };
    let answered = c1
        .update(&update(vec![incident("n5", "b1-n5", T0 + 9, None)]))
        .unwrap();
    assert_eq!(answered.problem_id, a);
    // An incident already counted before the merge is not counted again.
    c1.update(&update(vec![incident("n3", "b1-n3", T0, None)]))
        .unwrap();
    assert_eq!(problem(&admin, &a)["count"], 6);

    // Refusals: again, into itself, an unknown problem.
    assert_eq!(merge(&admin, &b, &a).status, 409);
    assert_eq!(merge(&admin, &a, &b).status, 400, "b is a now");
    assert_eq!(merge(&admin, &a, "00000000000000ff").status, 404);
    let metrics = harness.metrics_text();
    assert!(
        metrics.contains("crashmesh_endpoint_problems_merged_total 1"),
        "{metrics}"
    );

    // A crash now (no checkpoint since): the journal replays the merge.
    let data_dir = harness.dir.path().join("endpoint");
    let copy = harness.dir.path().join("crashed");
    copy_dir(&data_dir, &copy, "");
    let (db, _) = crashmesh_endpoint::recording::open_database(&copy).unwrap();
    assert_eq!(db.resolve(&b).unwrap(), a);
    assert!(db.problem(&b).unwrap().is_none());
    assert_eq!(db.problem(&a).unwrap().unwrap().count, 6);
}

#[test]
fn the_admin_merges_from_the_similar_problems_of_a_page() {
    let harness = Harness::start();
    let c1 = harness.client("c1");
    let mut ids = Vec::new();
    for (seed, frames) in [
        ("a", ["leaf", "middle", "outer", "main"]),
        ("b", ["leaf", "middle", "other", "main"]),
    ] {
        let (manifest, chunks) = report(
            "c1",
            1,
            seed,
            problem_of_frames(&format!("v1:core:{seed}"), &frames),
            vec![incident("n1", seed, T0, None)],
            b"log\n",
        );
        ids.push(c1.upload(&manifest, &chunks).unwrap().problem_id);
    }
    let (a, b) = (&ids[0], &ids[1]);
    let session = harness.sign_in(&harness.admin).unwrap();
    let page = |session: &str| {
        raw_http(
            &harness.address(),
            &format!(
                "GET /problems/{a} HTTP/1.1\r\nHost: x\r\nCookie: crashmesh_session={session}\r\n\
                 Connection: close\r\n\r\n"
            ),
        )
    };
    let shown = page(&session);
    assert!(
        shown
            .body
            .contains(&format!("action=\"/problems/{a}/merge\"")),
        "{}",
        shown.body
    );
    // A cluster's page lists the similar problem, with no merge button.
    let cluster_session = {
        let token = harness
            .admin()
            .post("/api/v1/tokens", b"{\"cluster\":\"c1\"}")
            .unwrap()
            .json()["token"]
            .as_str()
            .unwrap()
            .to_string();
        harness.sign_in(&token).unwrap()
    };
    let theirs = page(&cluster_session).body;
    assert!(
        theirs.contains("similar problems") && !theirs.contains("/merge"),
        "{theirs}"
    );
    // The form, posted from the dashboard's own page.
    let body = format!("from={b}");
    let posted = raw_http(
        &harness.address(),
        &format!(
            "POST /problems/{a}/merge HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\n\
             Cookie: crashmesh_session={session}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len(),
            host = harness.address()
        ),
    );
    assert_eq!(posted.status, 303, "{}", posted.body);
    assert_eq!(harness.problems("").len(), 1);
    assert_eq!(harness.problems("")[0]["count"], 2);
}

#[test]
fn a_scheme_2_signature_joins_the_problem_its_crash_had_under_scheme_1() {
    use crashmesh_protocol::signature::native_signature;
    let harness = Harness::start();
    let (c1, c2) = (harness.client("c1"), harness.client("c2"));
    let frames = ["leaf", "middle", "outer", "main"];
    // Before the upgrade: scheme 1, from the frames' names.
    let mut before = problem_of_frames("", &frames);
    before.signature = native_signature(&before.frames, before.signal).0;
    let (manifest, chunks) = report(
        "c1",
        1,
        "old",
        before,
        vec![incident("n1", "e1", T0, None)],
        b"a\n",
    );
    let old = c1.upload(&manifest, &chunks).unwrap().problem_id;
    // After it, on another cluster: scheme 2 for the same crash.
    let after = problem_of_frames("v2:00112233445566778899aabbccddeeff00112233", &frames);
    let (manifest, chunks) = report(
        "c2",
        1,
        "new",
        after.clone(),
        vec![incident("m1", "e2", T0, None)],
        b"b\n",
    );
    let reply = c2.upload(&manifest, &chunks).unwrap();
    assert_eq!(reply.problem_id, old);
    assert!(reply.known);
    // And again, from the first cluster.
    let (manifest, chunks) = report(
        "c1",
        1,
        "newer",
        after,
        vec![incident("n2", "e3", T0, None)],
        b"c\n",
    );
    assert_eq!(c1.upload(&manifest, &chunks).unwrap().problem_id, old);
    let problems = harness.problems("");
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0]["count"], 3);
}

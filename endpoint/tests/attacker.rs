//! The endpoint as an attacker meets it: no token, a wrong token, another cluster's token,
//! slow clients holding half-sent bodies, one cluster filling the pending uploads, links
//! planted where exports write. Each test is one finding of the review; each failed on the
//! code before the fix. Two clusters, `acme` and `globex`, each mark everything of theirs
//! with their name, so a body that carries the other's data is found by a substring.

mod common;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use crashmesh_endpoint::error::EndpointError;
use crashmesh_endpoint::local::{AdminRequest, run};
use crashmesh_endpoint_client::{ChunkData, Client};
use crashmesh_protocol::report::{IncidentUpdate, ReportManifest};

const T0: u64 = 1_790_000_000_000;

/// What the two clusters stored.
struct World {
    acme: Client,
    globex: Client,
    /// Both clusters' reports of one signature.
    shared_problem: String,
    acme_problem: String,
    globex_problem: String,
    acme_reports: Vec<String>,
    globex_reports: Vec<String>,
    acme_chunks: Vec<String>,
    globex_chunks: Vec<String>,
    globex_bug: u64,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn upload(client: &Client, (manifest, chunks): &(ReportManifest, Vec<ChunkData>)) -> String {
    client.upload(manifest, chunks).unwrap().problem_id
}

/// A small report of `cluster`: one incident, one attachment of `seed`'s bytes, `problem`.
fn small(
    cluster: &str,
    seed: &str,
    problem: crashmesh_protocol::Problem,
) -> (ReportManifest, Vec<ChunkData>) {
    report(
        cluster,
        1,
        seed,
        problem,
        vec![incident(&format!("{cluster}-node"), seed, T0, None)],
        seed.as_bytes(),
    )
}

/// `acme` and `globex` each report a problem of their own and one they share, with a
/// `proc/environ` attachment holding a secret; `globex` sends an incident update.
fn two_clusters(harness: &Harness) -> World {
    let acme = harness.client("acme");
    let globex = harness.client("globex");
    let mut world = World {
        shared_problem: String::new(),
        acme_problem: String::new(),
        globex_problem: String::new(),
        acme_reports: Vec::new(),
        globex_reports: Vec::new(),
        acme_chunks: Vec::new(),
        globex_chunks: Vec::new(),
        globex_bug: 0,
        acme,
        globex,
    };
    for name in ["acme", "globex"] {
        let shared = report_with(
            name,
            1,
            &format!("{name}-shared"),
            problem("v1:core:shared", "shared_function"),
            &format!("{name}-node-1"),
            &[
                (
                    "proc/environ",
                    format!("SECRET={name}-hunter2\n").as_bytes(),
                ),
                ("node-1/journal.log", &log_bytes(name, 20_000)),
            ],
        );
        let own = report_with(
            name,
            1,
            &format!("{name}-own"),
            problem(
                &format!("v1:core:{name}_only"),
                &format!("{name}_only_function"),
            ),
            &format!("{name}-node-2"),
            &[(
                "proc/environ",
                format!("TOKEN={name}-only-secret\n").as_bytes(),
            )],
        );
        let client = if name == "acme" {
            &world.acme
        } else {
            &world.globex
        };
        world.shared_problem = upload(client, &shared);
        let own_problem = upload(client, &own);
        let reports = vec![shared.0.report_id.clone(), own.0.report_id.clone()];
        let chunks: Vec<String> = shared
            .1
            .iter()
            .chain(&own.1)
            .map(|chunk| chunk.id.clone())
            .collect();
        if name == "acme" {
            world.acme_problem = own_problem;
            world.acme_reports = reports;
            world.acme_chunks = chunks;
        } else {
            world.globex_problem = own_problem;
            world.globex_reports = reports;
            world.globex_chunks = chunks;
            let update = IncidentUpdate {
                report_id: shared.0.report_id.clone(),
                cluster_id: "globex".into(),
                term: 1,
                signature: shared.0.signature.clone(),
                incidents: vec![incident("globex-node-3", "e9", T0 + 5000, Some("1.1"))],
            };
            world.globex.update(&update).unwrap();
        }
    }
    let detail = harness
        .admin()
        .get(&format!("/api/v1/problems/{}", world.globex_problem))
        .unwrap()
        .json();
    world.globex_bug = detail["bug"]["id"].as_u64().unwrap();
    world
}

/// What of `other`'s a body of `viewer`'s must never hold.
fn secrets_of(world: &World, other: &str) -> Vec<String> {
    let (reports, chunks, problem) = if other == "globex" {
        (
            &world.globex_reports,
            &world.globex_chunks,
            &world.globex_problem,
        )
    } else {
        (&world.acme_reports, &world.acme_chunks, &world.acme_problem)
    };
    let mut secrets = vec![other.to_string()];
    secrets.extend(reports.iter().cloned());
    secrets.extend(chunks.iter().cloned());
    secrets.push(problem.clone());
    secrets
}

fn assert_holds_none(body: &str, secrets: &[String], context: &str) {
    for secret in secrets {
        assert!(
            !body.contains(secret.as_str()),
            "{context}: the body holds {secret:?}: {body}"
        );
    }
}

#[test]
fn reads_without_a_token_or_with_a_wrong_one_are_refused() {
    let harness = Harness::start();
    let world = two_clusters(&harness);
    let wrong = Client::new(&harness.url, "cmt_0123456789abcdef");
    let report = &world.acme_reports[0];
    let paths = [
        "/".to_string(),
        "/api/v1/problems".into(),
        format!("/api/v1/problems/{}", world.shared_problem),
        format!("/problems/{}", world.shared_problem),
        format!("/api/v1/reports/{report}"),
        format!("/api/v1/bugs/{}", world.globex_bug),
        format!("/reports/{report}/attachments/proc/environ"),
        format!("/api/v1/chunks/{}", world.acme_chunks[0]),
        "/metrics".into(),
    ];
    for path in &paths {
        for client in [&harness.anonymous(), &wrong] {
            let answer = client.get(path).unwrap();
            assert_eq!(answer.status, 401, "{path}: {}", answer.body);
            assert_holds_none(&answer.body, &secrets_of(&world, "acme"), path);
            assert_holds_none(&answer.body, &secrets_of(&world, "globex"), path);
            assert!(!answer.body.contains("hunter2"), "{path}");
        }
    }
    // The metrics token reads the metrics and nothing else; a cluster's token no metrics.
    let metrics = Client::new(&harness.url, &harness.metrics);
    assert_eq!(metrics.get("/metrics").unwrap().status, 200);
    assert_eq!(harness.admin().get("/metrics").unwrap().status, 200);
    assert_eq!(world.acme.get("/metrics").unwrap().status, 401);
    assert_eq!(metrics.get("/api/v1/problems").unwrap().status, 401);
    // Health stays public.
    assert_eq!(harness.anonymous().get("/healthz").unwrap().status, 200);
    // So does the sign-in page, which holds nothing stored.
    let signin = harness.anonymous().get("/signin").unwrap();
    assert_eq!(signin.status, 200);
    assert!(!signin.body.contains("shared_function"));
}

#[test]
fn a_cluster_sees_its_own_problems_reports_attachments_and_bugs_only() {
    let harness = Harness::start();
    let world = two_clusters(&harness);
    let globex_secrets = secrets_of(&world, "globex");
    let acme = &world.acme;

    // The list: its own problem and the shared one, with its own counts and names.
    let list = acme.get("/api/v1/problems?interesting=all").unwrap();
    assert_eq!(list.status, 200);
    assert_holds_none(&list.body, &globex_secrets, "the list");
    let problems = list.json()["problems"].as_array().unwrap().clone();
    let ids: BTreeSet<&str> = problems.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        BTreeSet::from([world.shared_problem.as_str(), world.acme_problem.as_str()])
    );
    let shared = problems
        .iter()
        .find(|p| p["id"] == world.shared_problem.as_str())
        .unwrap();
    assert_eq!(shared["count"], 1, "acme's incident only: {shared}");
    assert_eq!(shared["clusters"], serde_json::json!(["acme"]));
    assert_eq!(shared["nodes"], serde_json::json!(["acme-node-1"]));
    // Asking for the other cluster by name finds nothing.
    let filtered = acme.get("/api/v1/problems?cluster=globex").unwrap();
    assert_eq!(filtered.json()["problems"], serde_json::json!([]));

    // The shared problem's detail and page: acme's incidents, reports, attachments.
    for path in [
        format!("/api/v1/problems/{}", world.shared_problem),
        format!("/problems/{}", world.shared_problem),
    ] {
        let answer = acme.get(&path).unwrap();
        assert_eq!(answer.status, 200, "{path}");
        assert!(answer.body.contains("acme-node-1"), "{path}");
        if path.starts_with("/problems/") {
            assert!(
                answer.body.contains("acme-hunter2"),
                "the own preview: {path}"
            );
        }
        assert_holds_none(&answer.body, &globex_secrets, &path);
        assert!(!answer.body.contains("globex-hunter2"), "{path}");
    }
    // The bug of the shared problem is visible (the feedback feature) without the
    // endpoint's comments, which name globex's nodes.
    let shared_bug = acme
        .get(&format!("/api/v1/problems/{}", world.shared_problem))
        .unwrap()
        .json()["bug"]["id"]
        .as_u64()
        .unwrap();
    let bug = acme.get(&format!("/api/v1/bugs/{shared_bug}")).unwrap();
    assert_eq!(bug.status, 200);
    assert_holds_none(&bug.body, &globex_secrets, "the shared bug");
    // The admin sees what acme may not: the test would fail if nothing were there.
    let admin_bug = harness
        .admin()
        .get(&format!("/api/v1/bugs/{shared_bug}"))
        .unwrap();
    assert!(
        admin_bug.body.contains("globex-node-1"),
        "{}",
        admin_bug.body
    );

    // globex's own problem, reports, attachments and bug are not found.
    for path in [
        format!("/api/v1/problems/{}", world.globex_problem),
        format!("/problems/{}", world.globex_problem),
        format!("/api/v1/reports/{}", world.globex_reports[0]),
        format!("/api/v1/reports/{}", world.globex_reports[1]),
        format!(
            "/reports/{}/attachments/proc/environ",
            world.globex_reports[0]
        ),
        format!(
            "/reports/{}/attachments/proc/environ",
            world.globex_reports[1]
        ),
        format!("/api/v1/bugs/{}", world.globex_bug),
    ] {
        let answer = acme.get(&path).unwrap();
        assert_eq!(answer.status, 404, "{path}: {}", answer.body);
        // (The refusal may name what the path named.)
        let secrets: Vec<String> = globex_secrets
            .iter()
            .filter(|secret| !path.contains(secret.as_str()))
            .cloned()
            .collect();
        assert_holds_none(&answer.body, &secrets, &path);
        assert!(!answer.body.contains("hunter2") && !answer.body.contains("only-secret"));
    }
    // Its own attachment comes back.
    let own = acme
        .get(&format!(
            "/reports/{}/attachments/proc/environ",
            world.acme_reports[0]
        ))
        .unwrap();
    assert_eq!(own.body, "SECRET=acme-hunter2\n");
    // The admin sees both clusters.
    let all = harness.problems("?interesting=all");
    assert_eq!(all.len(), 3);
    let shared = all
        .iter()
        .find(|p| p["id"] == world.shared_problem.as_str())
        .unwrap();
    assert_eq!(shared["count"], 3);
    assert_eq!(shared["clusters"], serde_json::json!(["acme", "globex"]));
}

#[test]
fn another_clusters_manifest_for_a_stored_report_id_is_refused_before_the_committer() {
    let harness = Harness::start();
    let acme = harness.client("acme");
    let globex = harness.client("globex");
    let (mine, chunks) = report_with(
        "acme",
        1,
        "acme-r1",
        problem("v1:core:f", "f"),
        "acme-node-1",
        &[("proc/environ", b"SECRET=acme\n")],
    );
    acme.upload(&mine, &chunks).unwrap();
    let batches = harness
        .state()
        .metrics
        .commit_batches
        .load(std::sync::atomic::Ordering::SeqCst);
    let mut claim = mine.clone();
    claim.cluster_id = "globex".into();
    claim.incidents[0].node = "globex-fake-node".into();
    let answer = post_manifest(&globex, &claim);
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(answer.json()["code"], "foreign_report");
    // The early check answered: the committer saw nothing.
    assert_eq!(
        harness
            .state()
            .metrics
            .commit_batches
            .load(std::sync::atomic::Ordering::SeqCst),
        batches
    );
    assert_eq!(
        harness.metric("crashmesh_endpoint_refused_total{reason=\"foreign_report\"}"),
        1
    );
    // acme's report is as it was.
    let stored = harness
        .admin()
        .get(&format!("/api/v1/reports/{}", mine.report_id))
        .unwrap()
        .json();
    assert_eq!(stored["manifest"]["cluster_id"], "acme");
    assert!(!serde_json::to_string(&stored).unwrap().contains("globex"));
}

#[test]
fn the_committer_refuses_another_clusters_report_id_inside_its_transaction() {
    let harness = Harness::start();
    let acme = harness.client("acme");
    let (mine, chunks) = report_with(
        "acme",
        1,
        "acme-r1",
        problem("v1:core:f", "f"),
        "acme-node-1",
        &[("a.log", b"acme\n")],
    );
    let reply = acme.upload(&mine, &chunks).unwrap();
    // Straight to the committer, as a request past the server's early check would get.
    let committer = &harness.state().committer;
    let mut claim = mine.clone();
    claim.cluster_id = "globex".into();
    claim.incidents[0].node = "globex-fake-node".into();
    let refused = runtime().block_on(committer.complete(Arc::new(claim), None));
    assert!(
        matches!(refused, Err(EndpointError::ForeignReport { .. })),
        "{refused:?}"
    );
    let update = IncidentUpdate {
        report_id: mine.report_id.clone(),
        cluster_id: "globex".into(),
        term: 1,
        signature: mine.signature.clone(),
        incidents: vec![incident("globex-fake-node", "x", T0, Some("9.0"))],
    };
    let refused = runtime().block_on(committer.update(update));
    assert!(
        matches!(refused, Err(EndpointError::ForeignReport { .. })),
        "{refused:?}"
    );
    let problem = harness
        .admin()
        .get(&format!("/api/v1/problems/{}", reply.problem_id))
        .unwrap()
        .json();
    assert_eq!(problem["count"], 1);
    assert_eq!(problem["clusters"], serde_json::json!(["acme"]));
}

#[test]
fn a_report_id_claimed_first_by_another_cluster_is_refused_visibly_not_dropped() {
    let harness = Harness::start();
    let acme = harness.client("acme");
    let globex = harness.client("globex");
    let (real, real_chunks) = report_with(
        "acme",
        1,
        "acme-future",
        problem("v1:core:f", "f"),
        "acme-node-1",
        &[("a.log", b"acme's evidence\n")],
    );
    let mut claim = real.clone();
    claim.cluster_id = "globex".into();
    claim.attachments.clear();
    claim.incidents[0].node = "globex-node".into();
    globex.upload(&claim, &[]).unwrap();
    // acme's real report is refused and counted, not answered "already stored".
    let answer = post_manifest(&acme, &real);
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(answer.json()["code"], "foreign_report");
    assert!(acme.upload(&real, &real_chunks).is_err());
    assert!(harness.metric("crashmesh_endpoint_refused_total{reason=\"foreign_report\"}") >= 1);
}

#[test]
fn two_clusters_completing_one_report_id_at_once_store_it_once() {
    let harness = Harness::start();
    let clients = [harness.client("acme"), harness.client("globex")];
    let manifests: Vec<_> = ["acme", "globex"]
        .iter()
        .map(|cluster| {
            let mut made = report_with(
                cluster,
                1,
                "contested",
                problem("v1:core:f", "f"),
                &format!("{cluster}-node"),
                &[("a.log", format!("{cluster}'s log\n").as_bytes())],
            );
            made.0.report_id = hex_id("contested");
            made
        })
        .collect();
    // Both pending (neither stored yet, so no early check refuses either), chunks sent.
    for (client, (manifest, chunks)) in clients.iter().zip(&manifests) {
        let answer = post_manifest(client, manifest);
        assert_eq!(answer.status, 202, "{}", answer.body);
        for chunk in chunks {
            let put = client
                .put(&format!("/api/v1/chunks/{}", chunk.id), &chunk.compressed)
                .unwrap();
            assert_eq!(put.status, 204, "{}", put.body);
        }
    }
    // Both complete at once.
    let path = format!("/api/v1/reports/{}/complete", hex_id("contested"));
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = clients
            .iter()
            .map(|client| scope.spawn(|| client.post(&path, b"").unwrap().status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut sorted = statuses.clone();
    sorted.sort();
    assert_eq!(sorted, vec![200, 409], "{statuses:?}");
    let winner = if statuses[0] == 200 { "acme" } else { "globex" };
    let stored = harness
        .admin()
        .get(&format!("/api/v1/reports/{}", hex_id("contested")))
        .unwrap()
        .json();
    assert_eq!(stored["manifest"]["cluster_id"], winner);
    let problems = harness.problems("");
    assert_eq!(problems[0]["count"], 1, "{problems:?}");
}

#[test]
fn another_clusters_incident_update_is_refused_and_a_fixed_bug_stays_fixed() {
    let harness = Harness::start();
    let acme = harness.client("acme");
    let globex = harness.client("globex");
    let (mine, chunks) = report_with(
        "acme",
        1,
        "acme-r1",
        problem("v1:core:f", "f"),
        "acme-node-1",
        &[("a.log", b"acme\n")],
    );
    let reply = acme.upload(&mine, &chunks).unwrap();
    let bug = reply.bug.unwrap().id;
    let fixed = harness
        .admin()
        .post(&format!("/api/v1/bugs/{bug}"), br#"{"status":"fixed"}"#)
        .unwrap();
    assert_eq!(fixed.status, 200);
    let update = IncidentUpdate {
        report_id: mine.report_id.clone(),
        cluster_id: "globex".into(),
        term: 1,
        signature: mine.signature.clone(),
        incidents: vec![incident("globex-fake-node", "x", T0 + 1, Some("9.0"))],
    };
    let answer = globex
        .post("/api/v1/incidents", &serde_json::to_vec(&update).unwrap())
        .unwrap();
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(answer.json()["code"], "foreign_report");
    let problem = harness
        .admin()
        .get(&format!("/api/v1/problems/{}", reply.problem_id))
        .unwrap()
        .json();
    assert_eq!(problem["count"], 1);
    assert_eq!(problem["nodes"], serde_json::json!(["acme-node-1"]));
    assert_eq!(problem["bug"]["status"], "fixed");
    assert_eq!(problem["bug"]["regression"], false);
}

#[test]
fn a_term_far_ahead_is_refused_and_does_not_lock_the_cluster_out() {
    use crashmesh_endpoint::recording::record::TERM_STEP_MAX;
    let harness = Harness::start();
    let acme = harness.client("acme");
    let made = |seed: &str, term: u64| {
        report_with(
            "acme",
            term,
            seed,
            problem("v1:core:f", "f"),
            "acme-node-1",
            &[("a.log", seed.as_bytes())],
        )
    };
    let (locking, _) = made("lock", u64::MAX);
    let answer = post_manifest(&acme, &locking);
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(answer.json()["code"], "term_too_far");
    // Past the server's check, the committer refuses it too.
    let refused = runtime().block_on(harness.state().committer.complete(Arc::new(locking), None));
    assert!(
        matches!(refused, Err(EndpointError::TermTooFar { .. })),
        "{refused:?}"
    );
    // The cluster is not locked out.
    let (next, chunks) = made("next", 1);
    acme.upload(&next, &chunks).unwrap();
    // One step is allowed, more is not.
    let (far, chunks) = made("far", 2 + TERM_STEP_MAX);
    assert!(acme.upload(&far, &chunks).is_err());
    let (step, chunks) = made("step", 1 + TERM_STEP_MAX);
    acme.upload(&step, &chunks).unwrap();
    assert_eq!(
        harness.metric("crashmesh_endpoint_refused_total{reason=\"term_too_far\"}"),
        2
    );
}

#[test]
fn chunk_presence_is_no_oracle_across_clusters() {
    let harness = Harness::start();
    let acme = harness.client("acme");
    let globex = harness.client("globex");
    let secret = b"password=correct horse battery staple\n";
    let (mine, chunks) = report_with(
        "acme",
        1,
        "acme-r1",
        problem("v1:core:f", "f"),
        "acme-node-1",
        &[("etc/app.conf", secret)],
    );
    acme.upload(&mine, &chunks).unwrap();
    let stored = &chunks[0].id;
    let never = hex_id("never stored");
    // A PUT with no body: the same answer for acme's chunk as for one never stored.
    let answers: Vec<(u16, serde_json::Value)> = [stored, &never]
        .iter()
        .map(|id| {
            let answer = globex.put(&format!("/api/v1/chunks/{id}"), b"").unwrap();
            (answer.status, answer.json()["code"].clone())
        })
        .collect();
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].0, 409);
    // A GET: the same refusal.
    for id in [stored, &never] {
        assert_eq!(
            globex.get(&format!("/api/v1/chunks/{id}")).unwrap().status,
            401
        );
    }
    // A manifest naming acme's chunk is told it is missing, and the report cannot be
    // completed without the bytes.
    let (guess, _) = report_with(
        "globex",
        1,
        "globex-guess",
        problem("v1:core:g", "g"),
        "globex-node",
        &[("etc/app.conf", secret)],
    );
    let answer = post_manifest(&globex, &guess);
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.reply().unwrap().missing_chunks, vec![stored.clone()]);
    let complete = globex
        .post(
            &format!("/api/v1/reports/{}/complete", guess.report_id),
            b"",
        )
        .unwrap();
    assert_eq!(complete.status, 202, "{}", complete.body);
    // Wrong bytes under the id are refused; the right ones (globex had them) are verified.
    let bad = globex
        .put(
            &format!("/api/v1/chunks/{stored}"),
            &chunks[0].compressed[1..],
        )
        .unwrap();
    assert_eq!(bad.status, 400);
    globex.upload(&guess, &chunks).unwrap();
}

/// Sends the head of a request whose body is `len` bytes, and none of the body.
fn head_only(harness: &Harness, head: &str, len: usize) -> RawAnswer {
    let mut stream = std::net::TcpStream::connect(harness.address()).unwrap();
    write!(
        stream,
        "{head}\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n",
        harness.address()
    )
    .unwrap();
    read_answer(&mut stream)
}

#[test]
fn a_16_mib_body_without_a_token_is_refused_401_before_it_is_sent() {
    let harness = Harness::start();
    let world = two_clusters(&harness);
    let len = 16 << 20;
    let chunk = &world.acme_chunks[0];
    let problem = &world.shared_problem;
    for (request, token) in [
        ("POST /api/v1/reports HTTP/1.1".to_string(), None),
        ("POST /api/v1/incidents HTTP/1.1".into(), None),
        (format!("PUT /api/v1/chunks/{chunk} HTTP/1.1"), None),
        ("POST /api/v1/tokens HTTP/1.1".into(), None),
        ("POST /api/v1/bugs/1 HTTP/1.1".into(), None),
        (
            format!("POST /api/v1/problems/{problem}/core-request HTTP/1.1"),
            None,
        ),
        (format!("POST /problems/{problem}/bug HTTP/1.1"), None),
        (
            format!("POST /problems/{problem}/core-request HTTP/1.1"),
            None,
        ),
        (
            format!("POST /api/v1/problems/{problem}/merge HTTP/1.1"),
            None,
        ),
        (format!("POST /problems/{problem}/merge HTTP/1.1"), None),
        (
            format!("POST /api/v1/problems/{problem}/merge HTTP/1.1"),
            Some(world.acme.token()),
        ),
        // A cluster's token on the admin's routes: refused as well, unread.
        (
            "POST /api/v1/tokens HTTP/1.1".into(),
            Some(world.acme.token()),
        ),
        (
            "POST /api/v1/bugs/1 HTTP/1.1".into(),
            Some(world.acme.token()),
        ),
        ("POST /api/v1/reports HTTP/1.1".into(), Some("cmt_wrong")),
    ] {
        let head = match token {
            Some(token) => format!("{request}\r\nAuthorization: Bearer {token}"),
            None => request.clone(),
        };
        let answer = head_only(&harness, &head, len);
        assert!(
            answer.status == 401 || answer.status == 403,
            "{request}: {answer:?}"
        );
    }
    // The sign-in form (whose body is the token) refuses a body this large from its
    // Content-Length alone.
    let answer = head_only(
        &harness,
        &format!(
            "POST /signin HTTP/1.1\r\nOrigin: http://{}",
            harness.address()
        ),
        len,
    );
    assert_eq!(answer.status, 413, "{answer:?}");
}

#[test]
fn a_slow_body_is_cut_at_its_deadline_and_the_server_keeps_serving() {
    let harness = Harness::start_with(|config| config.limits.body_read_secs_max = 2);
    let acme = harness.client("acme");
    let mut held = Vec::new();
    for head in [
        "POST /api/v1/reports HTTP/1.1",
        "POST /api/v1/incidents HTTP/1.1",
    ] {
        let mut stream = std::net::TcpStream::connect(harness.address()).unwrap();
        write!(
            stream,
            "{head}\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 1000000\r\n\r\n{{\"format",
            acme.token()
        )
        .unwrap();
        held.push(stream);
    }
    for mut stream in held {
        let answer = read_answer(&mut stream);
        assert_eq!(answer.status, 408, "{answer:?}");
        assert_eq!(answer.header("connection").as_deref(), Some("close"));
        // The server closed the connection: the rest of the body is not waited for.
        use std::io::Read as _;
        let mut rest = [0u8; 16];
        assert_eq!(stream.read(&mut rest).unwrap_or(0), 0);
    }
    assert_eq!(
        harness.metric("crashmesh_endpoint_refused_total{reason=\"body_timeout\"}"),
        2
    );
    let (manifest, chunks) = small("acme", "r1", problem("v1:core:f", "f"));
    acme.upload(&manifest, &chunks).unwrap();
}

#[test]
fn half_sent_bodies_of_one_cluster_hold_a_bounded_number_of_bytes() {
    let harness = Harness::start_with(|config| {
        config.limits.cluster_body_bytes_in_flight_max = 3 << 20;
        config.limits.body_read_secs_max = 600;
    });
    let acme = harness.client("acme");
    let globex = harness.client("globex");
    let half_sent = |client: &Client| {
        let mut stream = std::net::TcpStream::connect(harness.address()).unwrap();
        write!(
            stream,
            "POST /api/v1/reports HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Length: {}\r\n\r\n{{\"format",
            client.token(),
            1 << 20
        )
        .unwrap();
        stream
    };
    // Three of 1 MiB are being read; the fourth is refused from its headers alone.
    let held: Vec<_> = (0..3).map(|_| half_sent(&acme)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while harness.metric("crashmesh_endpoint_body_bytes_receiving") < 3 << 20 {
        assert!(
            Instant::now() < deadline,
            "the three bodies were never being read"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut refused = half_sent(&acme);
    let answer = read_answer(&mut refused);
    assert_eq!(answer.status, 429, "{answer:?}");
    // Another cluster is not held up.
    let (manifest, chunks) = small("globex", "g1", problem("v1:core:f", "f"));
    globex.upload(&manifest, &chunks).unwrap();
    // Once they are gone, acme sends again.
    drop(held);
    let (manifest, chunks) = small("acme", "a1", problem("v1:core:f", "f"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(error) = acme.upload(&manifest, &chunks) {
        assert!(
            Instant::now() < deadline,
            "acme's budget never came back: {error}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn one_cluster_filling_its_pending_quota_gets_429_while_another_still_uploads() {
    let harness = Harness::start_with(|config| {
        config.limits.cluster_pending_reports_max = 3;
        // No report goes idle during the test.
        config.limits.pending_report_idle_secs_max = 3600;
    });
    let acme = harness.client("acme");
    let globex = harness.client("globex");
    let pending = |client: &Client, cluster: &str, seed: &str| {
        let (manifest, chunks) = small(cluster, seed, problem("v1:core:f", "f"));
        (post_manifest(client, &manifest), manifest, chunks)
    };
    for seed in ["a1", "a2", "a3"] {
        assert_eq!(pending(&acme, "acme", seed).0.status, 202);
    }
    let (full, _, _) = pending(&acme, "acme", "a4");
    assert_eq!(full.status, 429, "{}", full.body);
    assert_eq!(full.json()["code"], "too_many_requests");
    // globex is not held up by acme's quota.
    let (answer, manifest, chunks) = pending(&globex, "globex", "g1");
    assert_eq!(answer.status, 202, "{}", answer.body);
    globex.upload(&manifest, &chunks).unwrap();
}

#[test]
fn pending_manifests_hold_a_bounded_number_of_bytes() {
    let harness = Harness::start_with(|config| {
        config.limits.cluster_pending_manifest_bytes_max = 600_000;
        config.limits.pending_manifest_bytes_max = 1_000_000;
    });
    let acme = harness.client("acme");
    let globex = harness.client("globex");
    let big = |client: &Client, cluster: &str, seed: &str| {
        let mut made = problem("v1:core:f", "f");
        made.text = Some(String::from_utf8(log_bytes(seed, 250_000)).unwrap());
        post_manifest(client, &small(cluster, seed, made).0).status
    };
    assert_eq!(big(&acme, "acme", "a1"), 202);
    assert_eq!(big(&acme, "acme", "a2"), 202);
    assert_eq!(big(&acme, "acme", "a3"), 429, "acme's bytes are full");
    assert_eq!(big(&globex, "globex", "g1"), 202);
    assert_eq!(
        big(&globex, "globex", "g2"),
        429,
        "every cluster's bytes are full"
    );
    let held = harness.metric("crashmesh_endpoint_pending_manifest_bytes");
    assert!((500_000..=1_000_000).contains(&held), "{held}");
}

#[test]
fn a_pending_report_that_stopped_making_progress_gives_its_place_back() {
    let harness = Harness::start_with(|config| {
        config.limits.cluster_pending_reports_max = 1;
        config.limits.pending_report_idle_secs_max = 1;
    });
    let acme = harness.client("acme");
    let post =
        |seed: &str| post_manifest(&acme, &small("acme", seed, problem("v1:core:f", "f")).0).status;
    assert_eq!(post("stalled"), 202);
    assert_eq!(post("next"), 429);
    // Once the first has been idle past its limit, the next one takes its place.
    let deadline = Instant::now() + Duration::from_secs(60);
    while post("next") != 202 {
        assert!(
            Instant::now() < deadline,
            "the idle report was never forgotten"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn endpoint_config(harness: &Harness) -> crashmesh_endpoint::EndpointConfig {
    harness.config.clone()
}

#[test]
fn export_writes_a_file_a_and_a_directory_a_b_of_one_report() {
    let harness = Harness::start();
    let acme = harness.client("acme");
    let (manifest, chunks) = report_with(
        "acme",
        1,
        "r1",
        problem("v1:core:f", "f"),
        "acme-node",
        &[("a", b"the file a\n"), ("a/b", b"the file a/b\n")],
    );
    acme.upload(&manifest, &chunks).unwrap();
    let out = harness.dir.path().join("export");
    let (summary, _) = run(
        &endpoint_config(&harness),
        &AdminRequest::Export { out: out.clone() },
    )
    .unwrap();
    assert_eq!(summary["attachments"], 2, "{summary}");
    let dir = out.join("reports").join(&manifest.report_id);
    assert_eq!(
        std::fs::read_to_string(dir.join("attachments/a~")).unwrap(),
        "the file a\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("attachments/a/b")).unwrap(),
        "the file a/b\n"
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("attachments.json")).unwrap()).unwrap();
    assert_eq!(index[0]["name"], "a");
    assert_eq!(index[0]["file"], "attachments/a~");
    assert_eq!(index[1]["file"], "attachments/a/b");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.join("attachments/a/b"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn an_export_refuses_a_link_planted_where_it_writes() {
    let harness = Harness::start();
    let acme = harness.client("acme");
    let (manifest, chunks) = report(
        "acme",
        1,
        "r1",
        problem("v1:core:f", "f"),
        vec![incident("acme-node", "e1", T0, None)],
        b"l\n",
    );
    acme.upload(&manifest, &chunks).unwrap();
    let elsewhere = harness.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    for planted in ["problems.json", "reports"] {
        let out = harness.dir.path().join(format!("out-{planted}"));
        std::fs::create_dir(&out).unwrap();
        let target = elsewhere.join(planted);
        std::os::unix::fs::symlink(&target, out.join(planted)).unwrap();
        let refused = run(&endpoint_config(&harness), &AdminRequest::Export { out });
        assert!(
            matches!(&refused, Err(EndpointError::Exists { .. })),
            "{planted}: {refused:?}"
        );
        assert!(!target.exists(), "{planted}: written through the link");
    }
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}

#[test]
fn every_answer_carries_nosniff_a_content_security_policy_and_no_framing() {
    let harness = Harness::start();
    let address = harness.address();
    for (path, token) in [
        ("/", None),
        ("/", Some(harness.admin.as_str())),
        ("/api/v1/problems", Some(harness.admin.as_str())),
        ("/api/v1/problems/ffff", Some(harness.admin.as_str())),
        ("/healthz", None),
        ("/static/dashboard.css", None),
    ] {
        let authorization = token
            .map(|token| format!("Authorization: Bearer {token}\r\n"))
            .unwrap_or_default();
        let answer = raw_http(
            &address,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: {address}\r\n{authorization}Connection: close\r\n\r\n"
            ),
        );
        assert_eq!(
            answer.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
        assert_eq!(answer.header("x-frame-options").as_deref(), Some("DENY"));
        let policy = answer.header("content-security-policy").unwrap();
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
        assert!(policy.contains("default-src 'none'"), "{policy}");
        assert!(!policy.contains("unsafe-inline"), "{policy}");
        // Nothing inline for the policy to block.
        assert!(!answer.body.contains("<script") && !answer.body.contains("style=\""));
        assert!(!answer.body.contains("<style"), "{path}");
    }
}

#[test]
fn the_dashboard_forms_need_the_admin_and_a_page_of_the_dashboard_itself() {
    let harness = Harness::start();
    let acme = harness.client("acme");
    let (manifest, chunks) = report(
        "acme",
        1,
        "r1",
        problem("v1:core:f", "f"),
        vec![incident("acme-node", "e1", T0, None)],
        b"l\n",
    );
    let problem_id = acme.upload(&manifest, &chunks).unwrap().problem_id;
    let address = harness.address();
    let admin_session = harness.sign_in(&harness.admin).unwrap();
    let acme_session = harness.sign_in(acme.token()).unwrap();
    assert_eq!(harness.sign_in("cmt_wrong"), Err(401));
    let form = |extra_headers: &str| {
        let body = "status=fixed&workaround=w";
        raw_http(
            &address,
            &format!(
                "POST /problems/{problem_id}/bug HTTP/1.1\r\nHost: {address}\r\n{extra_headers}\
                 Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .status
    };
    let cookie = |session: &str| format!("Cookie: crashmesh_session={session}\r\n");
    // Cross-site, or with neither Origin nor Sec-Fetch-Site: refused.
    assert_eq!(
        form(&format!(
            "{}Origin: http://evil.example\r\n",
            cookie(&admin_session)
        )),
        403
    );
    assert_eq!(
        form(&format!(
            "{}Sec-Fetch-Site: cross-site\r\n",
            cookie(&admin_session)
        )),
        403
    );
    assert_eq!(form(&cookie(&admin_session)), 403);
    // A cluster's session, even from the page: refused; no session: 401.
    assert_eq!(
        form(&format!(
            "{}Sec-Fetch-Site: same-origin\r\n",
            cookie(&acme_session)
        )),
        403
    );
    assert_eq!(form("Sec-Fetch-Site: same-origin\r\n"), 401);
    // The admin's session from the dashboard's own page, or the admin's bearer token.
    assert_eq!(
        form(&format!(
            "{}Origin: http://{address}\r\n",
            cookie(&admin_session)
        )),
        303
    );
    assert_eq!(
        form(&format!("Authorization: Bearer {}\r\n", harness.admin)),
        303
    );
    // Signing in from another site is refused, and the cookie is what it should be.
    let answer = raw_http(
        &address,
        &format!(
            "POST /signin HTTP/1.1\r\nHost: {address}\r\nOrigin: http://evil.example\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 8\r\n\
             Connection: close\r\n\r\ntoken=x&"
        ),
    );
    assert_eq!(answer.status, 403);
    let body = format!("token={}", harness.admin);
    let answer = raw_http(
        &address,
        &format!(
            "POST /signin HTTP/1.1\r\nHost: {address}\r\nSec-Fetch-Site: same-origin\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    let set_cookie = answer.header("set-cookie").unwrap();
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    assert!(
        !set_cookie.contains(&harness.admin),
        "the cookie is not the token"
    );
}

/// A deterministic generator for the property test (splitmix64).
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

/// Who asks, in the property test.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Asker {
    Nobody,
    WrongToken,
    MetricsToken,
    Acme,
    AcmeSession,
    Globex,
    Admin,
}

#[test]
fn random_routes_and_tokens_never_return_another_clusters_data() {
    let seed: u64 = std::env::var("CRASHMESH_AUTHZ_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(0x00c0_ffee);
    let cases: usize = std::env::var("CRASHMESH_AUTHZ_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(400);
    let harness = Harness::start();
    let world = two_clusters(&harness);
    let acme_session = harness.sign_in(world.acme.token()).unwrap();
    let address = harness.address();
    let mut random = Seeded(seed);
    let problems = [
        world.shared_problem.clone(),
        world.acme_problem.clone(),
        world.globex_problem.clone(),
        "0123456789abcdef".to_string(),
    ];
    let reports: Vec<String> = world
        .acme_reports
        .iter()
        .chain(&world.globex_reports)
        .cloned()
        .chain([hex_id("no such report")])
        .collect();
    let chunks: Vec<String> = world
        .acme_chunks
        .iter()
        .chain(&world.globex_chunks)
        .cloned()
        .chain([hex_id("no such chunk")])
        .collect();
    let askers = [
        Asker::Nobody,
        Asker::WrongToken,
        Asker::MetricsToken,
        Asker::Acme,
        Asker::AcmeSession,
        Asker::Globex,
        Asker::Admin,
    ];
    for case in 0..cases {
        let asker = *random.pick(&askers);
        let (method, path) = match random.next() % 10 {
            0 => ("GET", "/api/v1/problems?interesting=all".to_string()),
            1 => (
                "GET",
                format!("/api/v1/problems/{}", random.pick(&problems)),
            ),
            2 => ("GET", format!("/problems/{}", random.pick(&problems))),
            3 => ("GET", "/?interesting=all".to_string()),
            4 => ("GET", format!("/api/v1/reports/{}", random.pick(&reports))),
            5 => ("GET", format!("/api/v1/bugs/{}", 1 + random.next() % 5)),
            6 => (
                "GET",
                format!(
                    "/reports/{}/attachments/{}",
                    random.pick(&reports),
                    random.pick(&["proc/environ", "node-1/journal.log"])
                ),
            ),
            7 => ("GET", format!("/api/v1/chunks/{}", random.pick(&chunks))),
            8 => ("PUT", format!("/api/v1/chunks/{}", random.pick(&chunks))),
            _ => ("GET", "/metrics".to_string()),
        };
        let credential = match asker {
            Asker::Nobody => String::new(),
            Asker::WrongToken => format!("Authorization: Bearer cmt_{:016x}\r\n", random.next()),
            Asker::MetricsToken => format!("Authorization: Bearer {}\r\n", harness.metrics),
            Asker::Acme => format!("Authorization: Bearer {}\r\n", world.acme.token()),
            Asker::AcmeSession => format!("Cookie: crashmesh_session={acme_session}\r\n"),
            Asker::Globex => format!("Authorization: Bearer {}\r\n", world.globex.token()),
            Asker::Admin => format!("Authorization: Bearer {}\r\n", harness.admin),
        };
        let answer = raw_http(
            &address,
            &format!(
                "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{credential}\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        );
        let context = format!(
            "seed {seed} (CRASHMESH_AUTHZ_SEED={seed}), case {case}: {asker:?} {method} {path} \
             → {}",
            answer.status
        );
        match asker {
            Asker::Nobody | Asker::WrongToken => {
                assert_eq!(answer.status, 401, "{context}");
            }
            Asker::MetricsToken => {
                let allowed = path == "/metrics";
                assert_eq!(answer.status, if allowed { 200 } else { 401 }, "{context}");
            }
            Asker::Acme | Asker::AcmeSession | Asker::Globex => {
                let (other, other_problem) = if asker == Asker::Globex {
                    ("acme", &world.acme_problem)
                } else {
                    ("globex", &world.globex_problem)
                };
                // (An error may name what the path named: the asker knows that already.)
                let secrets: Vec<String> = secrets_of(&world, other)
                    .into_iter()
                    .filter(|secret| !path.contains(secret.as_str()))
                    .collect();
                assert_holds_none(&answer.body, &secrets, &context);
                assert!(
                    !answer.body.contains(&format!("{other}-hunter2"))
                        && !answer.body.contains(&format!("{other}-only-secret")),
                    "{context}"
                );
                let refused = [401, 404, 409];
                if path.contains(other_problem.as_str())
                    || secrets_of(&world, other)
                        .iter()
                        .any(|secret| path.contains(secret.as_str()))
                    || path.starts_with("/api/v1/chunks/") && method == "GET"
                    || path == "/metrics"
                {
                    assert!(refused.contains(&answer.status), "{context}");
                }
                // A PUT without a body answers the same for another cluster's chunk as for
                // one never stored: no oracle. (Uploads take the bearer token only.)
                if method == "PUT" && asker == Asker::AcmeSession {
                    assert_eq!(answer.status, 401, "{context}");
                } else if method == "PUT" {
                    let id = path.trim_start_matches("/api/v1/chunks/");
                    let own = if asker == Asker::Globex {
                        &world.globex_chunks
                    } else {
                        &world.acme_chunks
                    };
                    let expected = if own.iter().any(|chunk| chunk == id) {
                        200
                    } else {
                        409
                    };
                    assert_eq!(answer.status, expected, "{context}");
                }
            }
            Asker::Admin if method == "PUT" => {
                // The admin's token is no cluster's: it uploads nothing.
                assert_eq!(answer.status, 401, "{context}");
            }
            Asker::Admin => {
                assert!(answer.status != 401 && answer.status != 403, "{context}");
                if path.starts_with("/api/v1/problems?") || path.starts_with("/?") {
                    assert!(answer.body.contains("globex") && answer.body.contains("acme"));
                }
            }
        }
    }
}

//! The dashboard as a browser renders it: headless Chromium (Debian's `chromium`) loads
//! the real server's pages and the rendered DOM must hold the problems, the chart and the
//! backtrace. Chromium missing is a failure, not a skip: CI installs it.

mod common;

use std::process::Command;

use common::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const T0: u64 = 1_790_000_000_000;

fn rendered_dom(url: &str) -> String {
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: apt-get install -y chromium"
    );
    let profile = tempfile::tempdir().unwrap();
    let output = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn chromium_renders_the_problems_the_chart_and_the_backtrace() {
    let harness = Harness::start();
    let client = harness.client("c1");
    let log = b"2026-11-26T16:00:00 node-1 vstorage-csd[42]: <b>chunk map</b> lost\n";
    let (first, chunks) = report(
        "c1",
        1,
        "r1",
        problem("v1:core:csd_flush", "csd_flush_journal"),
        vec![
            incident("node-1", "e1", T0, Some("1.0")),
            incident("node-2", "e1", T0 + 3_600_000, Some("1.0")),
            incident("node-3", "e1", T0 + 4 * 3_600_000, Some("1.0")),
        ],
        log,
    );
    let reply = client.upload(&first, &chunks).unwrap();
    let (second, chunks) = report(
        "c1",
        1,
        "r2",
        problem("v1:core:mds_commit", "mds_commit_txn"),
        vec![incident("node-4", "e1", T0 + 1000, None)],
        b"mds log\n",
    );
    client.upload(&second, &chunks).unwrap();

    let index = rendered_dom(&format!("{}/", harness.url));
    assert!(index.contains("id=\"problems\""), "{index}");
    assert_eq!(index.matches("class=\"problem\"").count(), 2, "{index}");
    assert!(index.contains("SIGSEGV in csd_flush_journal"));
    assert!(index.contains("SIGSEGV in mds_commit_txn"));
    // Sorted by last seen: the problem seen last (node-3, four hours in) comes first.
    assert!(index.find("csd_flush_journal").unwrap() < index.find("mds_commit_txn").unwrap());
    let by_count = rendered_dom(&format!("{}/?sort=count&kind=core", harness.url));
    assert!(by_count.find("csd_flush_journal").unwrap() < by_count.find("mds_commit_txn").unwrap());
    let filtered = rendered_dom(&format!("{}/?label=test_run%3Dnone", harness.url));
    assert_eq!(filtered.matches("class=\"problem\"").count(), 0);

    let page = rendered_dom(&format!("{}/problems/{}", harness.url, reply.problem_id));
    // The chart: an inline SVG with one bar per hour that had incidents.
    let chart_start = page.find("<svg id=\"incidents-chart\"").expect("the chart");
    let chart = &page[chart_start..page[chart_start..].find("</svg>").unwrap() + chart_start];
    assert_eq!(chart.matches("class=\"bar\"").count(), 3, "{chart}");
    // The backtrace.
    let backtrace = &page[page.find("id=\"backtrace\"").expect("the backtrace")..];
    assert!(backtrace.contains("csd_flush_journal+0x14"));
    assert!(backtrace.contains("0x555500001234"));
    assert!(backtrace.contains("main+0x40"));
    // Nodes, the bug, and the correlated log, escaped.
    for node in ["node-1", "node-2", "node-3"] {
        assert!(page.contains(&format!("<li>{node}</li>")), "{node}");
    }
    assert!(page.contains("id=\"bug\""));
    assert!(page.contains("#1 open"));
    assert!(
        page.contains("&lt;b&gt;chunk map&lt;/b&gt; lost"),
        "the log, escaped"
    );
    assert!(!page.contains("<b>chunk map</b>"));
}

#[test]
fn the_dashboard_form_sets_status_and_workaround_with_the_admin_token() {
    let harness = Harness::start();
    let client = harness.client("c1");
    let (manifest, chunks) = report(
        "c1",
        1,
        "r1",
        problem("v1:core:f", "f"),
        vec![incident("node-1", "e1", T0, None)],
        b"l\n",
    );
    let reply = client.upload(&manifest, &chunks).unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let path = format!("{}/problems/{}/bug", harness.url, reply.problem_id);
    let refused = agent
        .post(&path)
        .send_form([
            ("status", "fixed"),
            ("workaround", "w"),
            ("admin_token", "nope"),
        ])
        .unwrap();
    assert_eq!(refused.status(), 401);
    let done = agent
        .post(&path)
        .send_form([
            ("status", "fixed"),
            ("workaround", "reboot <now>"),
            ("admin_token", harness.admin.as_str()),
        ])
        .unwrap();
    assert_eq!(done.status(), 303);
    let page = rendered_dom(&format!("{}/problems/{}", harness.url, reply.problem_id));
    assert!(page.contains("#1 fixed"), "{page}");
    assert!(page.contains("reboot &lt;now&gt;"));
    let reply = client.upload(&manifest, &chunks).unwrap();
    assert_eq!(reply.workaround.as_deref(), Some("reboot <now>"));
}

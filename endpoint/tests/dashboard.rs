//! The dashboard as a browser renders it: headless Chromium (Debian's `chromium`) driven
//! over the DevTools protocol (`--remote-debugging-pipe`: JSON messages on file
//! descriptors 3 and 4) signs in through the sign-in page as a person would — the token
//! typed into the field, the button clicked, the session cookie kept by the browser — and
//! the rendered DOM must hold that token's view: the problems, the chart, the backtrace,
//! and no other cluster's problem. Chromium missing is a failure, not a skip: CI installs
//! it.

mod common;

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const T0: u64 = 1_790_000_000_000;
/// How long one DevTools answer or page load may take on a loaded machine.
const BROWSER_WAIT_SECS: u64 = 90;

/// A headless Chromium and one page of it, driven over the DevTools pipe.
struct Browser {
    child: Child,
    to_browser: std::fs::File,
    from_browser: Receiver<Value>,
    events: VecDeque<Value>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Browser {
    fn start() -> Browser {
        assert!(
            std::path::Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: apt-get install -y chromium"
        );
        let profile = tempfile::tempdir().unwrap();
        // The browser reads commands on fd 3 and writes answers on fd 4.
        let (commands_read, commands_write) = pipe();
        let (answers_read, answers_write) = pipe();
        let (commands_fd, answers_fd) = (commands_read.as_raw_fd(), answers_write.as_raw_fd());
        let mut command = Command::new(CHROMIUM);
        command
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
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        unsafe {
            command.pre_exec(move || {
                // Out of the way of 3 and 4 first, then onto them (dup2 clears CLOEXEC).
                let commands = libc::fcntl(commands_fd, libc::F_DUPFD, 10);
                let answers = libc::fcntl(answers_fd, libc::F_DUPFD, 10);
                if commands < 0
                    || answers < 0
                    || libc::dup2(commands, 3) < 0
                    || libc::dup2(answers, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("run chromium");
        drop((commands_read, answers_write));
        let (sender, from_browser) = std::sync::mpsc::channel();
        let answers = std::fs::File::from(answers_read);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(answers);
            loop {
                let mut message = Vec::new();
                match reader.read_until(0, &mut message) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                message.pop();
                if let Ok(value) = serde_json::from_slice::<Value>(&message)
                    && sender.send(value).is_err()
                {
                    return;
                }
            }
        });
        let mut browser = Browser {
            child,
            to_browser: std::fs::File::from(commands_write),
            from_browser,
            events: VecDeque::new(),
            next_id: 1,
            session: String::new(),
            _profile: profile,
        };
        let target = browser.call("Target.createTarget", json!({ "url": "about:blank" }));
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = browser.call(
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_string();
        browser.call("Page.enable", json!({}));
        browser
    }

    fn receive(&mut self, deadline: Instant) -> Value {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.from_browser.recv_timeout(left) {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout) => panic!("chromium did not answer in time"),
            Err(RecvTimeoutError::Disconnected) => panic!("chromium exited"),
        }
    }

    /// Sends a command (to the page's session once attached) and waits for its answer.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to_browser.write_all(&bytes).unwrap();
        let deadline = Instant::now() + Duration::from_secs(BROWSER_WAIT_SECS);
        loop {
            let answer = self.receive(deadline);
            if answer["id"] == json!(id) {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
            self.events.push_back(answer);
        }
    }

    /// Waits for the page's next load (after a navigation the caller started).
    fn wait_for_load(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(BROWSER_WAIT_SECS);
        loop {
            let event = match self.events.pop_front() {
                Some(event) => event,
                None => self.receive(deadline),
            };
            if event["method"] == "Page.loadEventFired" {
                return;
            }
        }
    }

    fn goto(&mut self, url: &str) -> String {
        self.events.clear();
        self.call("Page.navigate", json!({ "url": url }));
        self.wait_for_load();
        self.dom()
    }

    /// Runs `expression` in the page (as a person's clicks and typing would act).
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        assert!(
            result["exceptionDetails"].is_null(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Runs `expression`, which makes the page navigate (a click on a submit button),
    /// and waits for the new page.
    fn submit(&mut self, expression: &str) -> String {
        self.events.clear();
        self.eval(expression);
        self.wait_for_load();
        self.dom()
    }

    fn dom(&mut self) -> String {
        self.eval("document.documentElement.outerHTML")
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Signs in through the sign-in page: the token typed into its field, the button
    /// clicked. Gives the page the browser lands on.
    fn sign_in(&mut self, base_url: &str, token: &str) -> String {
        let page = self.goto(&format!("{base_url}/"));
        assert!(page.contains("id=\"signin-form\""), "{page}");
        self.submit(&format!(
            "document.getElementById('token').value = {}; document.getElementById('signin').click()",
            json!(token)
        ))
    }

    /// Signs out with the button every page of a session has.
    fn sign_out(&mut self, base_url: &str) -> String {
        self.goto(&format!("{base_url}/"));
        self.submit("document.getElementById('signout').click()")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn chromium_signs_in_and_renders_the_problems_the_chart_and_the_backtrace() {
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

    let mut browser = Browser::start();
    // Without a session every page is the sign-in page.
    let refused = browser.goto(&format!("{}/problems/{}", harness.url, reply.problem_id));
    assert!(refused.contains("id=\"signin-form\""), "{refused}");
    assert!(!refused.contains("csd_flush_journal"), "{refused}");
    // A wrong token stays there.
    let wrong = browser.sign_in(&harness.url, "cmt_0000");
    assert!(wrong.contains("unknown token"), "{wrong}");

    let index = browser.sign_in(&harness.url, &harness.admin);
    assert!(index.contains("id=\"problems\""), "{index}");
    assert!(index.contains("id=\"viewer\">admin<"), "{index}");
    assert_eq!(index.matches("class=\"problem\"").count(), 2, "{index}");
    assert!(index.contains("SIGSEGV in csd_flush_journal"));
    assert!(index.contains("SIGSEGV in mds_commit_txn"));
    // Sorted by last seen: the problem seen last (node-3, four hours in) comes first.
    assert!(index.find("csd_flush_journal").unwrap() < index.find("mds_commit_txn").unwrap());
    let by_count = browser.goto(&format!("{}/?sort=count&kind=core", harness.url));
    assert!(by_count.find("csd_flush_journal").unwrap() < by_count.find("mds_commit_txn").unwrap());
    let filtered = browser.goto(&format!("{}/?label=test_run%3Dnone", harness.url));
    assert_eq!(filtered.matches("class=\"problem\"").count(), 0);

    let page = browser.goto(&format!("{}/problems/{}", harness.url, reply.problem_id));
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
    // The stylesheet (the page's only style) applied: the header is dark.
    let header = browser.eval("getComputedStyle(document.querySelector('header')).backgroundColor");
    assert_eq!(header, json!("rgb(29, 35, 48)"));

    // Signed out, the pages are closed again.
    let out = browser.sign_out(&harness.url);
    assert!(out.contains("id=\"signin-form\""), "{out}");
    let closed = browser.goto(&format!("{}/", harness.url));
    assert!(!closed.contains("csd_flush_journal"), "{closed}");
}

#[test]
fn a_cluster_signed_in_sees_its_own_problem_and_the_admin_sees_both() {
    let harness = Harness::start();
    let c1 = harness.client("c1");
    let c2 = harness.client("c2");
    let c1_token = c1.token().to_string();
    let (mine, chunks) = report(
        "c1",
        1,
        "r1",
        problem("v1:core:c1_only", "c1_only_function"),
        vec![incident("c1-node-1", "e1", T0, None)],
        b"c1 log\n",
    );
    let mine = c1.upload(&mine, &chunks).unwrap();
    let (theirs, chunks) = report(
        "c2",
        1,
        "r2",
        problem("v1:core:c2_only", "c2_only_function"),
        vec![incident("c2-node-1", "e1", T0, None)],
        b"c2 secret log\n",
    );
    let theirs = c2.upload(&theirs, &chunks).unwrap();

    let mut browser = Browser::start();
    let index = browser.sign_in(&harness.url, &c1_token);
    assert!(index.contains("id=\"viewer\">cluster c1<"), "{index}");
    assert_eq!(index.matches("class=\"problem\"").count(), 1, "{index}");
    assert!(index.contains("c1_only_function"), "{index}");
    assert!(!index.contains("c2_only_function"), "{index}");
    assert!(!index.contains(&theirs.problem_id), "{index}");
    let page = browser.goto(&format!("{}/problems/{}", harness.url, mine.problem_id));
    assert!(
        page.contains("c1-node-1") && !page.contains("c2-node-1"),
        "{page}"
    );
    // A cluster gets no admin form.
    assert!(!page.contains("id=\"bug-form\""), "{page}");
    let other = browser.goto(&format!("{}/problems/{}", harness.url, theirs.problem_id));
    assert!(!other.contains("c2_only_function"), "{other}");

    browser.sign_out(&harness.url);
    let index = browser.sign_in(&harness.url, &harness.admin);
    assert_eq!(index.matches("class=\"problem\"").count(), 2, "{index}");
    assert!(index.contains("c1_only_function") && index.contains("c2_only_function"));
}

#[test]
fn the_admin_sets_status_and_workaround_through_the_page_and_the_cluster_is_told() {
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
    let mut browser = Browser::start();
    browser.sign_in(&harness.url, &harness.admin);
    let page = browser.goto(&format!("{}/problems/{}", harness.url, reply.problem_id));
    assert!(page.contains("id=\"bug-form\""), "{page}");
    let page = browser.submit(
        "const form = document.getElementById('bug-form'); \
         form.querySelector('select[name=status]').value = 'fixed'; \
         form.querySelector('input[name=workaround]').value = 'reboot <now>'; \
         form.querySelector('button').click()",
    );
    assert!(page.contains("#1 fixed"), "{page}");
    assert!(page.contains("reboot &lt;now&gt;"), "{page}");
    let reply = client.upload(&manifest, &chunks).unwrap();
    assert_eq!(reply.workaround.as_deref(), Some("reboot <now>"));
}

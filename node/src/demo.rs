//! `crashmesh demo`: a whole cluster and its endpoint on loopback, from one command.
//!
//! Layout under `--data-dir DIR` (default: a new `/var/tmp/crashmesh-demo-PID`):
//! `DIR/endpoint` (the endpoint's data, `endpoint.log`), `DIR/cluster` (the cluster CA,
//! node certificates), `DIR/node-1…N` (each node's data dir, `config.toml`, `node.log`),
//! `DIR/app` (the program that crashes).
//!
//! Every part is the real thing run as a child process of this one: `crashmesh endpoint
//! run`, `crashmesh node run` per node (mutual TLS over QUIC on 127.0.0.1). The crashes:
//! - **Native**: one small C program (compiled with gcc) crashes with SIGSEGV on every
//!   node. The kernel's `core_pattern` is machine-wide and each node has its own data dir,
//!   so the kernel cannot hand the core to each node; instead the program runs under gdb,
//!   which stops it at the signal, writes its core (`generate-core-file`) and, while the
//!   process is still held, runs that node's `crashmesh hook core %P %I %i %s %t %c %u %g
//!   %h %e` with the core on stdin — what the kernel does through the pipe.
//! - **Python**: one uncaught exception per node, in a python3 that imported the node's
//!   hook module (`crashmesh_hook.py`, as `crashmesh install` would put it).
//!
//! The summary (`--json`: one line) has `endpoint`, `dashboard`, `admin_token_file` (the
//! dashboard signs in with that token, or the cluster's), `nodes`, `problems`,
//! `incidents`, `bytes_uploaded` (request bodies the aggregators sent: manifests, chunks,
//! incident updates) and `bytes_naive` (for every incident at the endpoint, its problem's
//! whole report — manifest plus every chunk compressed — as a per-node uploader would send
//! it), `ours_over_naive`, `data_dir`, `crash_source`, `problem_list` (each problem's
//! `id`, `kind`, `signature`, `count`, `nodes` as the endpoint lists them), `privacy`
//! (`internal` or `customer`) and, in customer mode, `customer_id` and `scrub`: the
//! endpoint's scrub summaries of every report added up (`removed`, `pseudonymized`,
//! `dropped_attachments`, `rules`: counts per rule).
//!
//! `--privacy customer`: every node runs with `[privacy] mode = "customer"` (the cluster's
//! `privacy.key`, customer id [`DEMO_CUSTOMER_ID`]), and the crashing programs carry
//! planted secrets ([`DEMO_CANARIES`]: an API token in the environment, a password on the
//! command line) so what reaches the endpoint can be checked for them.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crashmesh_mesh::certs::{self, ClusterPaths};
use crashmesh_mesh::uploader::UploadStats;

/// The cluster id of the demo.
pub const DEMO_CLUSTER_ID: &str = "demo";
/// The customer id of a demo in customer mode.
pub const DEMO_CUSTOMER_ID: &str = "demo-customer";
/// Secrets planted in customer mode: (environment variable, value), and the value of the
/// crasher's `--password` argument.
pub const DEMO_CANARIES: (&str, &str, &str) =
    ("DEMO_API_TOKEN", "canary-env-0d5e1f", "canary-cli-7b2c9a");
/// The most nodes a demo starts.
pub const DEMO_NODES_MAX: usize = 32;
/// How long the nodes may take to elect an aggregator.
pub const ELECTION_WAIT_SECS: u64 = 60;
/// How long the problems may take to reach the endpoint after the crashes.
pub const UPLOAD_WAIT_SECS: u64 = 120;
/// How long the demo waits for every node to show the endpoint's answer.
pub const FEEDBACK_WAIT_SECS: u64 = 20;
/// How long a stopped child may take to exit before it is killed.
pub const CHILD_STOP_WAIT_MS: u64 = 5_000;

/// The program every node sees crash.
const CRASHER_SOURCE: &str = r#"#include <stdio.h>
#include <string.h>

/* A null dereference two calls deep: the same bug on every node. */
__attribute__((noinline)) static void store_reading(volatile int *slot, int value) { *slot = value; }
__attribute__((noinline)) static void record_sample(volatile int *table, int value) {
    store_reading(table, value);
}
int main(int argc, char **argv) {
    volatile int *table = NULL;
    printf("demo-crasher: recording a sample\n");
    fflush(stdout);
    record_sample(table, argc + (int)strlen(argv[0]));
    return 0;
}
"#;

/// The Python program every node sees fail.
const PYTHON_APP: &str = r#"import crashmesh_hook  # the node's hook, as `crashmesh install` puts it


def parse_setting(text):
    return int(text)


def load_config():
    return parse_setting("not-a-number")


load_config()
"#;

/// What `crashmesh demo` was asked.
#[derive(Clone, Debug)]
pub struct DemoArgs {
    pub nodes: usize,
    pub once: bool,
    /// `--privacy customer`.
    pub customer: bool,
    pub json: bool,
    pub data_dir: Option<PathBuf>,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Children stopped (SIGTERM, then SIGKILL after [`CHILD_STOP_WAIT_MS`]) when dropped.
#[derive(Default)]
struct Children(Vec<(String, Child)>);

impl Children {
    fn stop(&mut self) {
        for (_, child) in &self.0 {
            // SAFETY: kill(2) on the pid of a child we still own (not yet waited for).
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_millis(CHILD_STOP_WAIT_MS);
        for (name, child) in &mut self.0 {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        tracing::warn!(child = %name, "did not stop in time; killed");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        self.0.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_udp_ports(count: usize) -> Result<Vec<u16>> {
    let sockets = (0..count)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    sockets
        .iter()
        .map(|socket| Ok(socket.local_addr()?.port()))
        .collect()
}

fn free_tcp_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn log_file(path: &Path) -> Result<std::fs::File> {
    std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))
}

fn say(args: &DemoArgs, text: impl AsRef<str>) {
    if !args.json {
        println!("{}", text.as_ref());
    }
}

/// Runs the demo (see the module documentation).
pub fn run(args: &DemoArgs) -> Result<ExitCode> {
    if args.nodes == 0 || args.nodes > DEMO_NODES_MAX {
        bail!("--nodes must be 1 to {DEMO_NODES_MAX}");
    }
    let root = match &args.data_dir {
        Some(dir) => std::path::absolute(dir)?,
        None => PathBuf::from(format!("/var/tmp/crashmesh-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let exe = std::env::current_exe().context("finding this program")?;
    let mut children = Children::default();
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_interrupt as *const () as libc::sighandler_t,
        );
    }

    // The endpoint: a token for the cluster first (the database is free), then the server.
    let endpoint_dir = root.join("endpoint");
    std::fs::create_dir_all(&endpoint_dir)?;
    let token_output = Command::new(&exe)
        .arg("--data-dir")
        .arg(&endpoint_dir)
        .args(["--json", "endpoint", "token", "create", DEMO_CLUSTER_ID])
        .stderr(Stdio::inherit())
        .output()
        .context("crashmesh endpoint token create")?;
    if !token_output.status.success() {
        bail!("crashmesh endpoint token create failed");
    }
    let token: Value = serde_json::from_slice(&token_output.stdout)?;
    let token = token["token"]
        .as_str()
        .context("no token in `endpoint token create` output")?
        .to_string();
    let listen = format!("127.0.0.1:{}", free_tcp_port()?);
    let mut endpoint = Command::new(&exe)
        .arg("--data-dir")
        .arg(&endpoint_dir)
        .args(["--json", "endpoint", "run", "--listen", &listen])
        .stdout(Stdio::piped())
        .stderr(log_file(&endpoint_dir.join("endpoint.log"))?)
        .spawn()
        .context("starting crashmesh endpoint run")?;
    let mut first_line = String::new();
    BufReader::new(endpoint.stdout.take().context("endpoint stdout")?)
        .read_line(&mut first_line)?;
    children.0.push(("endpoint".to_string(), endpoint));
    let url = serde_json::from_str::<Value>(&first_line)
        .ok()
        .and_then(|value| value["url"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("http://{listen}"));
    say(
        args,
        format!("endpoint: {url} (data in {})", endpoint_dir.display()),
    );

    // The cluster: CA, node certificates, configs, daemons.
    let cluster_paths = ClusterPaths::of_data_dir(&root);
    if !cluster_paths.cluster_file().exists() {
        certs::init_cluster(&cluster_paths, Some(DEMO_CLUSTER_ID)).context("cluster init")?;
    }
    if !cluster_paths.privacy_key().exists() {
        std::fs::write(
            cluster_paths.privacy_key(),
            crashmesh_mesh::certs::new_key_text()?,
        )?;
    }
    let privacy_section = if args.customer {
        format!(
            "[privacy]\nmode = \"customer\"\ncustomer_id = \"{DEMO_CUSTOMER_ID}\"\nkey_file = \"{}\"\n",
            cluster_paths.privacy_key().display()
        )
    } else {
        String::new()
    };
    let ports = free_udp_ports(args.nodes)?;
    let names: Vec<String> = (1..=args.nodes)
        .map(|index| format!("node-{index}"))
        .collect();
    let members: Vec<String> = names
        .iter()
        .zip(&ports)
        .map(|(name, port)| format!("{{ name = \"{name}\", address = \"127.0.0.1:{port}\" }}"))
        .collect();
    let mut node_dirs = Vec::new();
    for (name, port) in names.iter().zip(&ports) {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)?;
        let (cert, key) = (
            cluster_paths.nodes_dir().join(format!("{name}.pem")),
            cluster_paths.nodes_dir().join(format!("{name}.key")),
        );
        if !cert.exists() || !key.exists() {
            certs::issue_node(&cluster_paths, name, &cluster_paths.nodes_dir())
                .with_context(|| format!("cluster issue {name}"))?;
        }
        let config = format!(
            r#"# Written by `crashmesh demo`.
[node]
name = "{name}"
# A demo in a temporary directory keeps its evidence whatever the disk's free space:
# with the default 15 % reserve a fuller disk would evict every core at once.
[store]
max_bytes = "1 GiB"
keep_free_percent = 0
[detect.kmsg]
enabled = false
[detect.kdump]
enabled = false
[detect.pstore]
enabled = false
[detect.hs_err]
enabled = false
[detect.vm_guest]
enabled = false
[gather]
enabled = true
before_secs = 300
after_secs = 2
[[gather.rules]]
files = ["{storage_log}"]
journal = false
[cluster]
enabled = true
listen = "127.0.0.1:{port}"
members = [{members}]
log_window_before_secs = 300
log_window_after_secs = 2
log_wait_secs = 15
ca_cert = "{ca_cert}"
cluster_file = "{cluster_file}"
node_cert = "{cert}"
node_key = "{key}"
[upload]
endpoint = "{url}"
token = "{token}"
{privacy_section}"#,
            members = members.join(", "),
            storage_log = dir.join("storage.log").display(),
            ca_cert = cluster_paths.ca_cert().display(),
            cluster_file = cluster_paths.cluster_file().display(),
            cert = cert.display(),
            key = key.display(),
        );
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config)?;
        let child = Command::new(&exe)
            .arg("--data-dir")
            .arg(&dir)
            .arg("--config")
            .arg(&config_path)
            .args(["node", "run"])
            .stdout(Stdio::null())
            .stderr(log_file(&dir.join("node.log"))?)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        children.0.push((name.clone(), child));
        node_dirs.push((name.clone(), dir, config_path));
    }
    say(
        args,
        format!(
            "cluster {DEMO_CLUSTER_ID}: {} nodes on 127.0.0.1 ports {ports:?}",
            args.nodes
        ),
    );
    let aggregator = wait_for_aggregator(&exe, &node_dirs)?;
    say(args, format!("aggregator elected: {aggregator}"));

    // The crashes.
    let app_dir = root.join("app");
    std::fs::create_dir_all(&app_dir)?;
    let crasher = compile_crasher(&app_dir)?;
    let python_app = app_dir.join("demo_app.py");
    std::fs::write(&python_app, PYTHON_APP)?;
    let python = which("python3");
    for (name, dir, _) in &node_dirs {
        write_storage_log(&dir.join("storage.log"), name)?;
    }
    for (name, dir, config) in &node_dirs {
        crash_under_gdb(
            &exe,
            &crasher,
            dir,
            config,
            &app_dir.join(format!("core.{name}")),
            args.customer,
        )
        .with_context(|| format!("crashing the demo program for {name}"))?;
        if let Some(python) = &python {
            python_exception(python, &python_app, dir, args.customer)
                .with_context(|| format!("the Python exception for {name}"))?;
        }
    }
    let crash_source = "a real SIGSEGV of a gcc-compiled program, held by gdb, whose core \
        (generate-core-file) was fed on stdin to each node's `crashmesh hook core` as the \
        kernel's core_pattern pipe would (core_pattern is machine-wide, each node has its own \
        data dir)";
    say(args, format!("crashes: {crash_source}"));
    if python.is_some() {
        say(
            args,
            "plus one uncaught Python exception per node, through the node's hook module",
        );
    } else {
        say(args, "no python3 on PATH: no Python exceptions");
    }
    let expected_incidents = node_dirs.len() as u64 * if python.is_some() { 2 } else { 1 };

    // The endpoint fills up. Its reads need a token: the admin's sees every cluster.
    let admin_token_file = endpoint_dir.join("admin.token");
    let admin_token = std::fs::read_to_string(&admin_token_file)
        .with_context(|| format!("the endpoint's admin token {}", admin_token_file.display()))?;
    let client = crashmesh_endpoint_client::Client::new(&url, admin_token.trim());
    let deadline = Instant::now() + Duration::from_secs(UPLOAD_WAIT_SECS);
    let problems = loop {
        let problems: Vec<Value> = client
            .get("/api/v1/problems")
            .ok()
            .map(|answer| {
                answer.json()["problems"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        let incidents: u64 = problems.iter().filter_map(|p| p["count"].as_u64()).sum();
        if incidents >= expected_incidents {
            break problems;
        }
        if Instant::now() > deadline || INTERRUPTED.load(Ordering::SeqCst) {
            bail!(
                "the endpoint has {incidents} of {expected_incidents} incidents after \
                 {UPLOAD_WAIT_SECS} s; see {}/node-*/node.log",
                root.display()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    // The last acknowledgements may still be on their way to the stats file, and the
    // endpoint's answers on their way to every node.
    std::thread::sleep(Duration::from_millis(300));
    let feedback_deadline = Instant::now() + Duration::from_secs(FEEDBACK_WAIT_SECS);
    let feedback_nodes = loop {
        let count = nodes_with_feedback(&exe, &node_dirs);
        if count == node_dirs.len()
            || Instant::now() > feedback_deadline
            || INTERRUPTED.load(Ordering::SeqCst)
        {
            break count;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let incidents: u64 = problems.iter().filter_map(|p| p["count"].as_u64()).sum();
    let mut bytes_uploaded = 0;
    let mut full_report_bytes = std::collections::BTreeMap::<String, u64>::new();
    for (_, dir, _) in &node_dirs {
        let stats = UploadStats::load(dir);
        bytes_uploaded += stats.bytes_sent;
        for (signature, bytes) in stats.full_report_bytes {
            let entry = full_report_bytes.entry(signature).or_insert(0);
            *entry = (*entry).max(bytes);
        }
    }
    let bytes_naive: u64 = problems
        .iter()
        .map(|problem| {
            let count = problem["count"].as_u64().unwrap_or(0);
            let signature = problem["signature"].as_str().unwrap_or("");
            count * full_report_bytes.get(signature).copied().unwrap_or(0)
        })
        .sum();
    let scrub = if args.customer {
        Some(scrub_totals(&client, &problems))
    } else {
        None
    };
    let summary = json!({
        "privacy": if args.customer { "customer" } else { "internal" },
        "customer_id": if args.customer { Some(DEMO_CUSTOMER_ID) } else { None },
        "scrub": scrub,
        "endpoint": url,
        "dashboard": format!("{url}/"),
        "admin_token_file": admin_token_file,
        "nodes": args.nodes,
        "aggregator": aggregator,
        "problems": problems.len(),
        "incidents": incidents,
        "bytes_uploaded": bytes_uploaded,
        "bytes_naive": bytes_naive,
        "ours_over_naive": if bytes_naive > 0 { bytes_uploaded as f64 / bytes_naive as f64 } else { 0.0 },
        "data_dir": root,
        "crash_source": crash_source,
        "python": python.is_some(),
        "feedback_nodes": feedback_nodes,
        "problem_list": problems
            .iter()
            .map(|problem| json!({
                "id": problem["id"],
                "kind": problem["kind"],
                "signature": problem["signature"],
                "count": problem["count"],
                "nodes": problem["nodes"],
            }))
            .collect::<Vec<_>>(),
    });
    if args.json {
        println!("{summary}");
    } else {
        for problem in &problems {
            println!(
                "problem {} [{}] {} — {} incident(s) from {}",
                problem["id"].as_str().unwrap_or("?"),
                problem["kind"].as_str().unwrap_or("?"),
                problem["signature"].as_str().unwrap_or("?"),
                problem["count"],
                problem["nodes"]
            );
        }
        println!(
            "{} problem(s), {incidents} incident(s) at the endpoint; {bytes_uploaded} bytes left \
             the cluster, per-node upload would have sent {bytes_naive}",
            problems.len()
        );
        if let Some(scrub) = &scrub {
            println!(
                "customer mode ({DEMO_CUSTOMER_ID}): {} secret(s) removed, {} name(s) \
                 pseudonymized, {} attachment(s) withheld before upload; per rule: {}",
                scrub["removed"],
                scrub["pseudonymized"],
                scrub["dropped_attachments"],
                scrub["rules"]
            );
        }
        println!(
            "dashboard: {url}/ — sign in with the admin token in {} (every cluster), or the \
             cluster's token (its problems only)",
            admin_token_file.display()
        );
    }
    if !args.once {
        say(args, "serving until interrupted (Ctrl-C)");
        while !INTERRUPTED.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    children.stop();
    Ok(ExitCode::SUCCESS)
}

/// A storage daemon's log on each node, with lines around the crash: what the peers'
/// correlated logs bring to the report.
fn write_storage_log(path: &Path, node: &str) -> Result<()> {
    let now = chrono::Utc::now();
    let mut text = String::new();
    for (seconds_ago, line) in [
        (
            90,
            format!("csd[4242]: {node}: chunk server 7 joined, 112 chunks"),
        ),
        (
            30,
            format!("csd[4242]: {node}: WARN replication to chunk server 7 slow (2.4 s)"),
        ),
        (
            5,
            format!("csd[4242]: {node}: ERROR lost connection to chunk server 7"),
        ),
    ] {
        let at = now - chrono::Duration::seconds(seconds_ago);
        text.push_str(&format!("{} {line}\n", at.format("%Y-%m-%dT%H:%M:%S%.3fZ")));
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// How many nodes show the endpoint's answer about `problem_id` (through the aggregator's
/// feedback) in `crashmesh problems show`.
fn nodes_with_feedback(exe: &Path, nodes: &[(String, PathBuf, PathBuf)]) -> usize {
    nodes
        .iter()
        .filter(|(_, dir, config)| {
            let json = |args: &[&str]| -> Option<Value> {
                let output = Command::new(exe)
                    .arg("--data-dir")
                    .arg(dir)
                    .arg("--config")
                    .arg(config)
                    .args(args)
                    .output()
                    .ok()?;
                serde_json::from_slice(&output.stdout).ok()
            };
            let Some(list) = json(&["problems", "list", "--json"]) else {
                return false;
            };
            let ids: Vec<String> = list["problems"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|problem| problem["id"].as_str().map(str::to_string))
                .collect();
            !ids.is_empty()
                && ids.iter().all(|id| {
                    json(&["problems", "show", id, "--json"])
                        .is_some_and(|shown| !shown["endpoint"].is_null())
                })
        })
        .count()
}

/// The endpoint's scrub summaries of every report of `problems`, added up.
fn scrub_totals(client: &crashmesh_endpoint_client::Client, problems: &[Value]) -> Value {
    let (mut removed, mut pseudonymized, mut dropped) = (0u64, 0u64, 0u64);
    let mut rules = std::collections::BTreeMap::<String, u64>::new();
    for problem in problems {
        let Some(id) = problem["id"].as_str() else {
            continue;
        };
        let Ok(answer) = client.get(&format!("/api/v1/problems/{id}")) else {
            continue;
        };
        let detail = answer.json();
        for report in detail["privacy"]["reports"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let scrub = &report["scrub"];
            removed += scrub["removed"].as_u64().unwrap_or(0);
            pseudonymized += scrub["replaced"].as_u64().unwrap_or(0);
            dropped += scrub["dropped_attachments"].as_u64().unwrap_or(0);
            for (rule, count) in scrub["rules"].as_object().into_iter().flatten() {
                *rules.entry(rule.clone()).or_insert(0) += count.as_u64().unwrap_or(0);
            }
        }
    }
    json!({
        "removed": removed,
        "pseudonymized": pseudonymized,
        "dropped_attachments": dropped,
        "rules": rules,
    })
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Waits until every node names the same aggregator; gives its name.
fn wait_for_aggregator(exe: &Path, nodes: &[(String, PathBuf, PathBuf)]) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(ELECTION_WAIT_SECS);
    loop {
        let mut seen = Vec::new();
        for (_, dir, config) in nodes {
            let output = Command::new(exe)
                .arg("--data-dir")
                .arg(dir)
                .arg("--config")
                .arg(config)
                .args(["--json", "status"])
                .stderr(Stdio::null())
                .output()?;
            let status: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
            seen.push(status["cluster"]["aggregator"].as_str().map(str::to_string));
        }
        if let Some(Some(first)) = seen.first()
            && seen.iter().all(|name| name.as_deref() == Some(first))
        {
            return Ok(first.clone());
        }
        if Instant::now() > deadline || INTERRUPTED.load(Ordering::SeqCst) {
            bail!("no aggregator agreed on within {ELECTION_WAIT_SECS} s (seen {seen:?})");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn compile_crasher(app_dir: &Path) -> Result<PathBuf> {
    let source = app_dir.join("demo-crasher.c");
    std::fs::write(&source, CRASHER_SOURCE)?;
    let binary = app_dir.join("demo-crasher");
    // Built reproducibly (no directory of this run in the binary), as distributions
    // build packages: every demo's crasher is the same build, with the same build-id, so
    // its crashes have the same signature in every run.
    let output = Command::new("gcc")
        .args(["-g", "-O0", "-fno-omit-frame-pointer"])
        .arg(format!(
            "-ffile-prefix-map={}=/crashmesh-demo",
            app_dir.display()
        ))
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .output()
        .context("running gcc (the demo compiles its crashing program)")?;
    if !output.status.success() {
        bail!("gcc failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(binary)
}

/// Runs the crasher under gdb; at the SIGSEGV, writes its core and runs the node's hook
/// with it while the process is held (see the module documentation).
fn crash_under_gdb(
    exe: &Path,
    crasher: &Path,
    data_dir: &Path,
    config: &Path,
    core: &Path,
    customer: bool,
) -> Result<()> {
    let (env_name, env_value, password) = DEMO_CANARIES;
    let (environment, arguments) = if customer {
        (
            format!("set environment {env_name}={env_value}\n"),
            format!(" --password {password}"),
        )
    } else {
        (String::new(), String::new())
    };
    let script = format!(
        r#"{environment}run{arguments}
python
import gdb, os, subprocess, time
pid = gdb.selected_inferior().pid
gdb.execute("generate-core-file {core}", to_string=True)
with open("{core}", "rb") as core:
    done = subprocess.run(["{exe}", "--data-dir", "{data_dir}", "--config", "{config}",
        "hook", "core", str(pid), str(pid), str(pid), "11", str(int(time.time())),
        "18446744073709551615", str(os.getuid()), str(os.getgid()), "demo", "demo-crasher"],
        stdin=core)
print("HOOK_EXIT", done.returncode)
end
kill
"#,
        core = core.display(),
        exe = exe.display(),
        data_dir = data_dir.display(),
        config = config.display(),
    );
    let script_path = core.with_extension("gdb");
    std::fs::write(&script_path, script)?;
    let output = Command::new("gdb")
        .args([
            "-nx",
            "-batch",
            "-ex",
            "set debuginfod enabled off",
            "-ex",
            "set pagination off",
            "-x",
        ])
        .arg(&script_path)
        .arg(crasher)
        .stdin(Stdio::null())
        .output()
        .context("running gdb (the demo crashes its program under gdb)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !stdout.contains("HOOK_EXIT 0") {
        bail!(
            "the hook did not take the core: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let _ = std::fs::remove_file(core);
    Ok(())
}

/// One uncaught exception in a python3 that imported the node's hook module.
fn python_exception(python: &Path, app: &Path, data_dir: &Path, customer: bool) -> Result<()> {
    let module_dir = data_dir.join("python-hook");
    std::fs::create_dir_all(&module_dir)?;
    let module = crashmesh_capture::python::HOOK_MODULE
        .replace(
            "@SOCKET@",
            &crashmesh_capture::python::socket_path(data_dir, Path::new("")).to_string_lossy(),
        )
        .replace(
            "@SPOOL@",
            &crashmesh_capture::spool::Spool::new(data_dir)
                .root
                .to_string_lossy(),
        );
    std::fs::write(
        module_dir.join(crashmesh_capture::python::MODULE_FILE),
        module,
    )?;
    let mut command = Command::new(python);
    command.arg(app);
    if customer {
        let (env_name, env_value, password) = DEMO_CANARIES;
        command
            .env(env_name, env_value)
            .args(["--password", password]);
    }
    let status = command
        .env("PYTHONPATH", &module_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        bail!("the Python program did not fail");
    }
    Ok(())
}

//! Real-process mode: the endpoint and N `crashmesh node run` daemons on loopback (as
//! `crashmesh demo` sets them up: `cluster init/issue` certificates, one config per node),
//! problems written into the nodes' spools as the Python hook writes them when its daemon
//! is down (a complete, durable entry: the capture guarantee does not depend on the
//! daemon), and faults from a seeded schedule: `kill -9` and restart, `SIGSTOP` and
//! `SIGCONT`. After the faults, everything is resumed and restarted, and the endpoint's
//! `GET /api/v1/problems` (and each problem's detail) must show every problem once with
//! every incident.
//!
//! Unlike the simulation, timing comes from the machine: the schedule is seeded, the
//! interleaving is not.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crashmesh_protocol::rng::DeterministicRng;
use serde::Serialize;
use serde_json::Value;

/// Why a real run could not be carried out (not a finding: findings are in
/// [`RealOutcome`]).
#[derive(Debug, thiserror::Error)]
pub enum RealError {
    /// A file or socket operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A process could not be started.
    #[error("starting {what}: {source}")]
    Start {
        /// Which process.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// A `crashmesh` command failed.
    #[error("crashmesh {args} failed: {stderr}")]
    Command {
        /// Its arguments.
        args: String,
        /// What it printed.
        stderr: String,
    },
    /// A command's output or the endpoint's answer lacked something.
    #[error("{0}")]
    Output(String),
    /// The endpoint's HTTP API failed.
    #[error("the endpoint: {0}")]
    Http(#[from] ureq::Error),
    /// No `crashmesh` binary was found.
    #[error("no crashmesh binary next to {0} (build it: cargo build -p crashmesh)")]
    NoBinary(PathBuf),
    /// The configuration is unusable.
    #[error("{0}")]
    Invalid(String),
    /// The system clock is before 1970.
    #[error(transparent)]
    Clock(#[from] std::time::SystemTimeError),
}

/// A real run's result.
pub type Result<T> = std::result::Result<T, RealError>;

/// The cluster id of the real-process cluster.
pub const REAL_CLUSTER_ID: &str = "simulator-real";
/// The most node processes `real` starts.
pub const REAL_NODES_MAX: usize = 32;
/// How long the cluster may take, after healing, to get every incident to the endpoint.
pub const CONVERGENCE_BOUND_SECS: u64 = 120;
/// Time between two scheduled actions (a problem or a fault), in ms.
const ACTION_INTERVAL_MS: u64 = 250;
/// Distinct bugs the problems are drawn from.
const BUGS_LEN: u64 = 4;
/// The spool format the Python hook writes.
const SPOOL_FORMAT_VERSION: u32 = 1;

/// What a real run is.
#[derive(Clone, Debug)]
pub struct RealConfig {
    /// Node processes.
    pub nodes: usize,
    /// Seconds of problems and faults.
    pub duration_secs: u64,
    /// The seed of the schedule.
    pub seed: u64,
    /// The `crashmesh` binary.
    pub crashmesh: PathBuf,
    /// Where to keep everything (default: a temporary directory, removed at the end).
    pub data_dir: Option<PathBuf>,
}

/// What a real run found; the JSON line.
#[derive(Clone, Debug, Serialize)]
pub struct RealOutcome {
    /// Node processes.
    pub nodes: usize,
    /// The seed.
    pub seed: u64,
    /// Problems written into spools (each a durable entry).
    pub incidents_written: u64,
    /// Distinct bugs among them.
    pub bugs_written: u64,
    /// Incidents the endpoint counts.
    pub incidents_at_endpoint: u64,
    /// Incidents written but not counted at the endpoint.
    pub lost_reports: u64,
    /// Problems beyond one per bug, plus incidents counted beyond those written.
    pub duplicate_problems: u64,
    /// `kill -9` sent.
    pub kills: u64,
    /// `SIGSTOP` sent (each followed by a `SIGCONT`).
    pub pauses: u64,
    /// Seconds from healing until the endpoint had everything (None: not within the bound).
    pub converged_secs: Option<f64>,
    /// Wall-clock seconds of the whole run.
    pub wall_secs: f64,
}

impl RealOutcome {
    /// True when nothing was lost or counted twice and the run converged.
    pub fn passed(&self) -> bool {
        self.lost_reports == 0 && self.duplicate_problems == 0 && self.converged_secs.is_some()
    }

    /// The human summary.
    pub fn table(&self) -> String {
        format!(
            "real: {} nodes, {} s in all (seed {}): {} incidents of {} bugs written, {} at the endpoint; \
             lost {}, duplicates {}; kills {}, pauses {}; converged {}\n",
            self.nodes,
            self.wall_secs.round(),
            self.seed,
            self.incidents_written,
            self.bugs_written,
            self.incidents_at_endpoint,
            self.lost_reports,
            self.duplicate_problems,
            self.kills,
            self.pauses,
            self.converged_secs
                .map_or("never".to_string(), |secs| format!("after {secs:.1} s")),
        )
    }
}

/// `crashmesh` next to this executable (`target/{debug,release}/`), or one directory up
/// (this executable may be a test binary in `deps/`).
pub fn crashmesh_next_to_this_executable() -> Result<PathBuf> {
    let this = std::env::current_exe()?;
    let mut dir = this.parent().map(Path::to_path_buf);
    while let Some(candidate_dir) = dir {
        let candidate = candidate_dir.join("crashmesh");
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = candidate_dir.parent().map(Path::to_path_buf);
        if candidate_dir
            .file_name()
            .is_some_and(|name| name == "target")
        {
            break;
        }
    }
    Err(RealError::NoBinary(this))
}

/// One child process, killed when dropped.
struct Process {
    name: String,
    child: Child,
}

impl Process {
    fn signal(&self, signal: libc::c_int) {
        // SAFETY: signalling our own child by its pid; the child is not yet reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, signal);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        tracing::debug!(name = %self.name, "stopped");
    }
}

struct RealNode {
    name: String,
    data_dir: PathBuf,
    config: PathBuf,
    process: Option<Process>,
    paused_until: Option<Instant>,
    restart_at: Option<Instant>,
}

fn free_port(udp: bool) -> Result<u16> {
    Ok(if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    })
}

fn crashmesh_json(binary: &Path, data_dir: &Path, args: &[&str]) -> Result<Value> {
    let output = Command::new(binary)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--json")
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| RealError::Start {
            what: format!("crashmesh {args:?}"),
            source,
        })?;
    if !output.status.success() {
        return Err(RealError::Command {
            args: format!("{args:?}"),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|error| RealError::Output(format!("the output of crashmesh {args:?}: {error}")))
}

fn start_node(binary: &Path, node: &RealNode) -> Result<Process> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node.data_dir.join("node.log"))?;
    let child = Command::new(binary)
        .arg("--data-dir")
        .arg(&node.data_dir)
        .arg("--config")
        .arg(&node.config)
        .args(["node", "run"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|source| RealError::Start {
            what: node.name.clone(),
            source,
        })?;
    Ok(Process {
        name: node.name.clone(),
        child,
    })
}

/// A Python traceback of bug `bug`: the same bug gives the same signature on every node.
fn traceback(bug: u64, serial: u64) -> String {
    format!(
        "Traceback (most recent call last):\n  File \"/opt/storaged/main.py\", line 10, in <module>\n    main()\n  \
         File \"/opt/storaged/main.py\", line 7, in main\n    crashmesh_sim_bug_{bug}_replica()\n  \
         File \"/opt/storaged/replica.py\", line {line}, in crashmesh_sim_bug_{bug}_replica\n    raise SimBug{bug}Error(\"replica {serial} lost\")\n\
         SimBug{bug}Error: replica {serial} lost\n",
        line = 40 + bug
    )
}

/// Writes one complete, durable spool entry, as the Python hook does without its daemon.
fn write_problem(data_dir: &Path, bug: u64, serial: u64) -> Result<()> {
    let spool = data_dir.join("spool");
    let time_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let pid = 100_000 + serial as u32;
    let id = format!("{time_ms:013}-{pid}-sim{serial:08x}");
    let temporary = spool.join("tmp").join(&id);
    let final_dir = spool.join("new").join(&id);
    std::fs::create_dir_all(temporary.join("python"))?;
    std::fs::create_dir_all(spool.join("new"))?;
    let meta = serde_json::json!({
        "format_version": SPOOL_FORMAT_VERSION,
        "id": id,
        "source": "python",
        "time_ms": time_ms,
        "pid": pid,
        "uid": 0,
        "executable": "/usr/bin/python3",
        "comm": "python3",
        "notes": ["written by crashmesh-simulator real"],
        "proc_files": ["python/argv.json", "traceback.txt"],
    });
    for (name, content) in [
        ("traceback.txt", traceback(bug, serial)),
        (
            "python/argv.json",
            "[\"/opt/storaged/main.py\"]".to_string(),
        ),
        ("meta.json", meta.to_string()),
    ] {
        let path = temporary.join(name);
        std::fs::write(&path, content)?;
        std::fs::File::open(&path)?.sync_all()?;
    }
    for dir in [temporary.join("python"), temporary.clone()] {
        std::fs::File::open(&dir)?.sync_all()?;
    }
    std::fs::rename(&temporary, &final_dir)?;
    std::fs::File::open(spool.join("new"))?.sync_all()?;
    Ok(())
}

/// The endpoint's problems, each with its detail's text (to find which bug it is), read
/// with the admin token (every cluster's).
fn endpoint_problems(url: &str, admin_token: &str) -> Result<Vec<(Value, String)>> {
    let authorization = format!("Bearer {admin_token}");
    let list: Value = ureq::get(&format!("{url}/api/v1/problems"))
        .header("Authorization", &authorization)
        .call()?
        .body_mut()
        .read_json::<Value>()?;
    let mut problems = Vec::new();
    for problem in list["problems"].as_array().cloned().unwrap_or_default() {
        let id = problem["id"].as_str().unwrap_or_default().to_string();
        let detail = ureq::get(&format!("{url}/api/v1/problems/{id}"))
            .header("Authorization", &authorization)
            .call()?
            .body_mut()
            .read_to_string()?;
        problems.push((problem, detail));
    }
    Ok(problems)
}

/// (lost, duplicates, incidents counted) against what was written per bug.
fn compare(written: &BTreeMap<u64, u64>, problems: &[(Value, String)]) -> (u64, u64, u64) {
    let mut counted: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut unknown_incidents = 0;
    let mut total = 0;
    for (problem, detail) in problems {
        let count = problem["count"].as_u64().unwrap_or(0);
        total += count;
        let bug = (0..BUGS_LEN).find(|bug| detail.contains(&format!("crashmesh_sim_bug_{bug}_")));
        match bug {
            Some(bug) => {
                let entry = counted.entry(bug).or_default();
                entry.0 += 1;
                entry.1 += count;
            }
            None => unknown_incidents += count,
        }
    }
    let mut lost = 0;
    let mut duplicates = unknown_incidents;
    for (bug, &written_count) in written {
        let (problems_of_bug, count) = counted.get(bug).copied().unwrap_or((0, 0));
        lost += written_count.saturating_sub(count);
        duplicates += count.saturating_sub(written_count) + problems_of_bug.saturating_sub(1);
    }
    (lost, duplicates, total)
}

/// Runs the real cluster; the processes are stopped when this returns.
pub fn run(config: &RealConfig) -> Result<RealOutcome> {
    if !(1..=REAL_NODES_MAX).contains(&config.nodes) {
        return Err(RealError::Invalid(format!(
            "--nodes must be within 1..={REAL_NODES_MAX}"
        )));
    }
    let started = Instant::now();
    let temporary = tempfile::Builder::new()
        .prefix("crashmesh-simulator-real-")
        .tempdir_in("/var/tmp")
        .or_else(|_| tempfile::tempdir())?;
    let root = match &config.data_dir {
        Some(dir) => std::path::absolute(dir)?,
        None => temporary.path().to_path_buf(),
    };
    std::fs::create_dir_all(&root)?;
    let binary = &config.crashmesh;

    // The endpoint.
    let endpoint_dir = root.join("endpoint");
    std::fs::create_dir_all(&endpoint_dir)?;
    let token = crashmesh_json(
        binary,
        &endpoint_dir,
        &["endpoint", "token", "create", REAL_CLUSTER_ID],
    )?["token"]
        .as_str()
        .ok_or_else(|| RealError::Output("no token in `endpoint token create`".into()))?
        .to_string();
    let listen = format!("127.0.0.1:{}", free_port(false)?);
    let mut endpoint_child = Command::new(binary)
        .arg("--data-dir")
        .arg(&endpoint_dir)
        .args(["--json", "endpoint", "run", "--listen", &listen])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(endpoint_dir.join("endpoint.log"))?)
        .spawn()
        .map_err(|source| RealError::Start {
            what: "the endpoint".into(),
            source,
        })?;
    let mut first_line = String::new();
    BufReader::new(
        endpoint_child
            .stdout
            .take()
            .ok_or_else(|| RealError::Output("no endpoint stdout".into()))?,
    )
    .read_line(&mut first_line)?;
    let _endpoint = Process {
        name: "endpoint".into(),
        child: endpoint_child,
    };
    let url = serde_json::from_str::<Value>(&first_line)
        .ok()
        .and_then(|value| value["url"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("http://{listen}"));
    // Made by the endpoint before it listens.
    let admin_token = std::fs::read_to_string(endpoint_dir.join("admin.token"))?
        .trim()
        .to_string();

    // The cluster: CA, certificates, configs, daemons.
    let ca_dir = root.join("ca");
    std::fs::create_dir_all(&ca_dir)?;
    crashmesh_json(
        binary,
        &ca_dir,
        &["cluster", "init", "--cluster-id", REAL_CLUSTER_ID],
    )?;
    let ports: Vec<u16> = (0..config.nodes)
        .map(|_| free_port(true))
        .collect::<Result<_>>()?;
    let names: Vec<String> = (1..=config.nodes).map(|i| format!("node-{i}")).collect();
    let members: Vec<String> = names
        .iter()
        .zip(&ports)
        .map(|(name, port)| format!("{{ name = \"{name}\", address = \"127.0.0.1:{port}\" }}"))
        .collect();
    let mut nodes = Vec::new();
    for (name, port) in names.iter().zip(&ports) {
        let issued = crashmesh_json(binary, &ca_dir, &["cluster", "issue", name])?;
        let data_dir = root.join(name);
        std::fs::create_dir_all(&data_dir)?;
        let node_config = format!(
            r#"# Written by crashmesh-simulator real.
[node]
name = "{name}"
# What is kept must not depend on this machine's free space.
[store]
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
enabled = false
[cluster]
enabled = true
listen = "127.0.0.1:{port}"
members = [{members}]
ca_cert = "{ca_cert}"
cluster_file = "{cluster_file}"
node_cert = "{cert}"
node_key = "{key}"
[upload]
endpoint = "{url}"
token = "{token}"
"#,
            members = members.join(", "),
            ca_cert = ca_dir.join("cluster").join("ca.pem").display(),
            cluster_file = ca_dir.join("cluster").join("cluster.json").display(),
            cert = issued["cert"]
                .as_str()
                .ok_or_else(|| RealError::Output("no cert issued".into()))?,
            key = issued["key"]
                .as_str()
                .ok_or_else(|| RealError::Output("no key issued".into()))?,
        );
        let config_path = data_dir.join("config.toml");
        std::fs::write(&config_path, node_config)?;
        let mut node = RealNode {
            name: name.clone(),
            data_dir,
            config: config_path,
            process: None,
            paused_until: None,
            restart_at: None,
        };
        node.process = Some(start_node(binary, &node)?);
        nodes.push(node);
    }

    // Problems and faults, on a seeded schedule.
    let mut rng = DeterministicRng::new(config.seed);
    let mut written: BTreeMap<u64, u64> = BTreeMap::new();
    let (mut serial, mut kills, mut pauses) = (0u64, 0u64, 0u64);
    let until = Instant::now() + Duration::from_secs(config.duration_secs);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(ACTION_INTERVAL_MS));
        let now = Instant::now();
        for node in &mut nodes {
            if node.paused_until.is_some_and(|at| at <= now) {
                if let Some(process) = &node.process {
                    process.signal(libc::SIGCONT);
                }
                node.paused_until = None;
            }
            if node.restart_at.is_some_and(|at| at <= now) {
                node.process = Some(start_node(binary, node)?);
                node.restart_at = None;
            }
        }
        let index = rng.range_u64(0, config.nodes as u64) as usize;
        match rng.range_u64(0, 14) {
            0 => {
                // kill -9, restarted 1-4 s later.
                let node = &mut nodes[index];
                if node.process.is_some() && node.paused_until.is_none() {
                    node.process = None;
                    node.restart_at =
                        Some(now + Duration::from_millis(rng.range_u64(1_000, 4_000)));
                    kills += 1;
                }
            }
            1 => {
                let node = &mut nodes[index];
                if let Some(process) = &node.process
                    && node.paused_until.is_none()
                {
                    process.signal(libc::SIGSTOP);
                    node.paused_until =
                        Some(now + Duration::from_millis(rng.range_u64(1_000, 5_000)));
                    pauses += 1;
                }
            }
            2 => {
                // A burst: one bug on every node.
                let bug = rng.range_u64(0, BUGS_LEN);
                for node in &nodes {
                    serial += 1;
                    write_problem(&node.data_dir, bug, serial)?;
                    *written.entry(bug).or_default() += 1;
                }
            }
            3..=9 => {
                let bug = rng.range_u64(0, BUGS_LEN).min(rng.range_u64(0, BUGS_LEN));
                serial += 1;
                write_problem(&nodes[index].data_dir, bug, serial)?;
                *written.entry(bug).or_default() += 1;
            }
            _ => {}
        }
    }

    // Heal: resume and restart everyone, then wait for the endpoint to have everything.
    for node in &mut nodes {
        if node.paused_until.take().is_some()
            && let Some(process) = &node.process
        {
            process.signal(libc::SIGCONT);
        }
        if node.process.is_none() {
            node.process = Some(start_node(binary, node)?);
            node.restart_at = None;
        }
    }
    let healed = Instant::now();
    let incidents_written: u64 = written.values().sum();
    let mut last = (incidents_written, 0, 0);
    let mut converged_secs = None;
    while healed.elapsed() < Duration::from_secs(CONVERGENCE_BOUND_SECS) {
        std::thread::sleep(Duration::from_millis(500));
        match endpoint_problems(&url, &admin_token) {
            Ok(problems) => {
                last = compare(&written, &problems);
                if last.0 == 0 {
                    converged_secs = Some(healed.elapsed().as_secs_f64());
                    break;
                }
            }
            Err(error) => tracing::warn!(%error, "the endpoint did not answer"),
        }
    }
    // A last look a moment later: a duplicate may still have been on its way.
    if converged_secs.is_some() {
        std::thread::sleep(Duration::from_secs(2));
        last = compare(&written, &endpoint_problems(&url, &admin_token)?);
    }
    drop(nodes);
    let (lost_reports, duplicate_problems, incidents_at_endpoint) = last;
    Ok(RealOutcome {
        nodes: config.nodes,
        seed: config.seed,
        incidents_written,
        bugs_written: written.len() as u64,
        incidents_at_endpoint,
        lost_reports,
        duplicate_problems,
        kills,
        pauses,
        converged_secs,
        wall_secs: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparing_finds_losses_and_duplicates() {
        let written = BTreeMap::from([(0, 3), (1, 2)]);
        let problem = |bug: u64, count: u64| {
            (
                serde_json::json!({"count": count}),
                format!("frames ... crashmesh_sim_bug_{bug}_replica ..."),
            )
        };
        assert_eq!(
            compare(&written, &[problem(0, 3), problem(1, 2)]),
            (0, 0, 5)
        );
        assert_eq!(
            compare(&written, &[problem(0, 2), problem(1, 2)]),
            (1, 0, 4)
        );
        assert_eq!(
            compare(&written, &[problem(0, 3), problem(1, 2), problem(1, 1)]),
            (0, 2, 6)
        );
    }
}

//! A real partition: five `crashmesh node run` daemons, each in a network namespace of its
//! own, joined by veth links to a bridge (the endpoint listens on the bridge's address in
//! the root namespace). The test cuts the cluster in two by moving two nodes' links to a
//! second bridge that reaches nothing else:
//! - the minority (2 of 5) never holds an aggregator, and its problems wait in its spool;
//! - the majority (3 of 5) has an aggregator and uploads its own incidents;
//! - after healing, all five agree on one aggregator and the endpoint ends with one problem
//!   holding all five incidents.
//!
//! Needs root (namespaces, veth, bridges); everything it creates carries this process's id
//! in its name and is removed on drop, also when the test fails.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crashmesh_tests::*;
use serde_json::Value;

const CLUSTER_ID: &str = "partition-test";
const NODES: usize = 5;
const MINORITY: [usize; 2] = [1, 2];
const MESH_PORT: u16 = 7710;
const ENDPOINT_PORT: u16 = 8470;
/// Bounds are generous: the machine is shared and noisy. The figures are printed.
const ELECTION_BOUND: Duration = Duration::from_secs(45);
const UPLOAD_BOUND: Duration = Duration::from_secs(60);
/// Once all agree after healing, the minority's waiting incidents reach the endpoint within
/// this (the links' stalled connections are replaced within seconds, not left to QUIC's
/// idle timeout).
const HEAL_BOUND: Duration = Duration::from_secs(20);

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        output.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The namespaces, links and bridges of one test run; removed on drop.
struct Net {
    tag: u32,
    subnet: String,
}

impl Net {
    fn new() -> Net {
        let tag = std::process::id() % 100_000;
        let net = Net {
            tag,
            subnet: format!("10.213.{}", tag % 250),
        };
        net.cleanup();
        for (index, side) in ["a", "b"].into_iter().enumerate() {
            ip(&["link", "add", &net.bridge(side), "type", "bridge"]);
            // A bridge without an address of its own takes the lowest of its ports', so
            // moving links between bridges would change the endpoint's MAC under the
            // nodes' ARP caches (their SYNs then go nowhere until the entries expire).
            let mac = format!(
                "02:6d:{:02x}:{:02x}:{:02x}:{index:02x}",
                (tag >> 16) & 0xff,
                (tag >> 8) & 0xff,
                tag & 0xff
            );
            ip(&["link", "set", &net.bridge(side), "address", &mac]);
            ip(&["link", "set", &net.bridge(side), "up"]);
        }
        ip(&[
            "addr",
            "add",
            &format!("{}.254/24", net.subnet),
            "dev",
            &net.bridge("a"),
        ]);
        for node in 1..=NODES {
            let namespace = net.namespace(node);
            ip(&["netns", "add", &namespace]);
            ip(&[
                "link",
                "add",
                &net.host_link(node),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &namespace,
            ]);
            ip(&[
                "link",
                "set",
                &net.host_link(node),
                "master",
                &net.bridge("a"),
            ]);
            ip(&["link", "set", &net.host_link(node), "up"]);
            let inside = |args: &[&str]| {
                let mut all = vec!["netns", "exec", &namespace, "ip"];
                all.extend_from_slice(args);
                ip(&all);
            };
            inside(&["link", "set", "lo", "up"]);
            inside(&[
                "addr",
                "add",
                &format!("{}/24", net.address(node)),
                "dev",
                "eth0",
            ]);
            inside(&["link", "set", "eth0", "up"]);
        }
        net
    }

    fn bridge(&self, side: &str) -> String {
        format!("cmbr{}{side}", self.tag)
    }

    fn namespace(&self, node: usize) -> String {
        format!("cm-part-{}-{node}", self.tag)
    }

    fn host_link(&self, node: usize) -> String {
        format!("cmv{}n{node}", self.tag)
    }

    fn address(&self, node: usize) -> String {
        format!("{}.{node}", self.subnet)
    }

    /// Puts `node`'s link on bridge `side` ("a": the cluster and the endpoint; "b": cut off).
    fn attach(&self, node: usize, side: &str) {
        ip(&[
            "link",
            "set",
            &self.host_link(node),
            "master",
            &self.bridge(side),
        ]);
    }

    fn cleanup(&self) {
        for node in 1..=NODES {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.namespace(node)])
                .stderr(Stdio::null())
                .status();
            let _ = Command::new("ip")
                .args(["link", "del", &self.host_link(node)])
                .stderr(Stdio::null())
                .status();
        }
        for side in ["a", "b"] {
            let _ = Command::new("ip")
                .args(["link", "del", &self.bridge(side)])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.cleanup();
    }
}

struct PartitionNode {
    index: usize,
    dir: NodeDir,
    daemon: Option<Daemon>,
}

impl PartitionNode {
    fn name(&self) -> String {
        format!("node-{}", self.index)
    }

    fn cluster(&self) -> Option<Value> {
        let status = self.dir.try_json(&["status"])?;
        let cluster = status["cluster"].clone();
        (cluster["running"] == true).then_some(cluster)
    }
}

/// `GET path` on the endpoint (HTTP/1.0 over a plain socket); the body as JSON.
/// A GET of the endpoint's API with `token` (the cluster's sees its own problems).
fn endpoint_get(address: &str, path: &str, token: &str) -> Option<Value> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let body = response.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}

/// (problems, incidents) at the endpoint.
fn endpoint_counts(address: &str, token: &str) -> (usize, u64) {
    let problems = endpoint_get(address, "/api/v1/problems", token)
        .and_then(|answer| answer["problems"].as_array().cloned())
        .unwrap_or_default();
    let incidents = problems
        .iter()
        .filter_map(|problem| problem["count"].as_u64())
        .sum();
    (problems.len(), incidents)
}

/// When every node of `nodes` names the same aggregator (one of them, which says so).
fn agreed(nodes: &[&PartitionNode]) -> Option<(String, u64)> {
    let clusters: Vec<Value> = nodes
        .iter()
        .map(|node| node.cluster())
        .collect::<Option<_>>()?;
    let aggregator = clusters[0]["aggregator"].as_str()?.to_string();
    let term = clusters[0]["term"].as_u64()?;
    let all_agree = clusters
        .iter()
        .all(|cluster| cluster["aggregator"] == aggregator.as_str() && cluster["term"] == term);
    let holder_agrees = nodes
        .iter()
        .zip(&clusters)
        .any(|(node, cluster)| node.name() == aggregator && cluster["role"] == "aggregator");
    (all_agree && holder_agrees).then_some((aggregator, term))
}

fn wait_agreed(nodes: &[&PartitionNode], bound: Duration) -> Option<(String, u64)> {
    let mut found = None;
    wait_until(bound, || {
        found = agreed(nodes);
        found.is_some()
    });
    found
}

fn logs(nodes: &[PartitionNode], endpoint: &NodeDir) -> String {
    let mut text: String = nodes
        .iter()
        .map(|node| format!("--- {} ---\n{}", node.name(), node.dir.daemon_log()))
        .collect();
    text.push_str(&format!(
        "--- endpoint ---\n{}",
        std::fs::read_to_string(endpoint.root.path().join("endpoint.log")).unwrap_or_default()
    ));
    text
}

#[test]
fn a_minority_partition_elects_nobody_its_problems_wait_and_everything_converges_after_healing() {
    let net = Net::new();
    let started = Instant::now();

    // The cluster's CA, the endpoint and its token.
    let ca = NodeDir::new("");
    ca.json(&["cluster", "init", "--cluster-id", CLUSTER_ID]);
    let endpoint = NodeDir::new("");
    let token = endpoint.json(&["endpoint", "token", "create", CLUSTER_ID])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let endpoint_address = format!("{}.254:{ENDPOINT_PORT}", net.subnet);
    let _endpoint_daemon = Daemon {
        child: endpoint
            .command(&["endpoint", "run", "--listen", &endpoint_address])
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(endpoint.root.path().join("endpoint.log")).unwrap(),
            ))
            .spawn()
            .expect("start the endpoint"),
    };

    // Five nodes, each in its namespace.
    let mut nodes: Vec<PartitionNode> = (1..=NODES)
        .map(|index| {
            let name = format!("node-{index}");
            let issued = ca.json(&["cluster", "issue", &name]);
            let config = MeshNodeConfig {
                name: &name,
                listen: format!("{}:{MESH_PORT}", net.address(index)),
                members: (1..=NODES)
                    .map(|member| {
                        (
                            format!("node-{member}"),
                            format!("{}:{MESH_PORT}", net.address(member)),
                        )
                    })
                    .collect(),
                ca_data_dir: &ca.data_dir,
                issued: &issued,
                cluster_extra: "log_wait_secs = 3\n",
                upload: Some((format!("http://{endpoint_address}"), token.clone())),
            }
            .to_toml();
            let dir = NodeDir::new(&config);
            let mut command = Command::new("ip");
            command
                .args(["netns", "exec", &net.namespace(index)])
                .arg(crashmesh_binary())
                .arg("--data-dir")
                .arg(&dir.data_dir)
                .arg("--config")
                .arg(&dir.config)
                .args(["node", "run"])
                .stdout(Stdio::null())
                .stderr(Stdio::from(
                    std::fs::File::create(dir.root.path().join("daemon.log")).unwrap(),
                ));
            let daemon = Daemon {
                child: command.spawn().expect("start a node in its namespace"),
            };
            PartitionNode {
                index,
                dir,
                daemon: Some(daemon),
            }
        })
        .collect();

    let all: Vec<&PartitionNode> = nodes.iter().collect();
    let Some((first, first_term)) = wait_agreed(&all, ELECTION_BOUND) else {
        panic!("five nodes never agreed\n{}", logs(&nodes, &endpoint));
    };
    println!(
        "partition: {first} aggregator of term {first_term} after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Cut nodes 1 and 2 off.
    let cut_at = Instant::now();
    for node in MINORITY {
        net.attach(node, "b");
    }
    let majority: Vec<&PartitionNode> = nodes
        .iter()
        .filter(|node| !MINORITY.contains(&node.index))
        .collect();
    let minority: Vec<&PartitionNode> = nodes
        .iter()
        .filter(|node| MINORITY.contains(&node.index))
        .collect();
    let Some((majority_aggregator, majority_term)) = wait_agreed(&majority, ELECTION_BOUND)
        .filter(|(aggregator, _)| !minority.iter().any(|node| &node.name() == aggregator))
        .or_else(|| {
            // The old aggregator was in the minority: the majority elects another.
            let mut found = None;
            wait_until(ELECTION_BOUND, || {
                found = agreed(&majority).filter(|(aggregator, _)| {
                    !minority.iter().any(|node| &node.name() == aggregator)
                });
                found.is_some()
            });
            found
        })
    else {
        panic!(
            "the majority never agreed on one of its own\n{}",
            logs(&nodes, &endpoint)
        );
    };
    println!(
        "partition: majority aggregator {majority_aggregator} (term {majority_term}) {:.1} s after the cut",
        cut_at.elapsed().as_secs_f64()
    );

    // The same problem on every node while cut.
    for node in &nodes {
        spool_python_entry(&node.dir, &format!("py-cut-{}", node.index), now_ms());
    }
    // The majority's three incidents go up; the minority's two wait.
    let mut counts = (0, 0);
    let majority_up = wait_until(UPLOAD_BOUND, || {
        counts = endpoint_counts(&endpoint_address, &token);
        counts == (1, 3)
    });
    assert!(
        majority_up,
        "endpoint has {counts:?}, wanted 1 problem with the majority's 3 incidents\n{}",
        logs(&nodes, &endpoint)
    );
    // Over several seconds: no minority node holds the aggregator role, each still has
    // its incident pending, and the endpoint holds no more than the majority's.
    let watch_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < watch_until {
        for node in &minority {
            if let Some(cluster) = node.cluster() {
                assert_ne!(
                    cluster["role"],
                    "aggregator",
                    "{} leads a minority: {cluster}\n{}",
                    node.name(),
                    logs(&nodes, &endpoint)
                );
            }
        }
        assert_eq!(endpoint_counts(&endpoint_address, &token), (1, 3));
        std::thread::sleep(Duration::from_millis(500));
    }
    for node in &minority {
        let cluster = node.cluster().expect("the minority node answers");
        assert_eq!(
            cluster["pending_incidents"],
            1,
            "{}: {cluster}",
            node.name()
        );
    }

    // Heal.
    let healed_at = Instant::now();
    for node in MINORITY {
        net.attach(node, "a");
    }
    let Some((healed_aggregator, healed_term)) = wait_agreed(&all, ELECTION_BOUND) else {
        panic!("no agreement after healing\n{}", logs(&nodes, &endpoint));
    };
    let converged = wait_until(HEAL_BOUND, || {
        counts = endpoint_counts(&endpoint_address, &token);
        counts == (1, NODES as u64)
            && nodes.iter().all(|node| {
                node.cluster()
                    .is_some_and(|cluster| cluster["pending_incidents"] == 0)
            })
    });
    assert!(
        converged,
        "after healing the endpoint has {counts:?}, wanted 1 problem with {NODES} incidents\n{}\n{}",
        nodes
            .iter()
            .map(|node| format!("{}: {:?}\n", node.name(), node.cluster()))
            .collect::<String>(),
        logs(&nodes, &endpoint)
    );
    println!(
        "partition: healed; {healed_aggregator} (term {healed_term}) agreed by all; every incident \
         at the endpoint {:.1} s after healing",
        healed_at.elapsed().as_secs_f64()
    );
    for node in &mut nodes {
        if let Some(mut daemon) = node.daemon.take() {
            daemon.kill();
        }
    }
}

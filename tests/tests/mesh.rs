//! The mesh with real processes on loopback: `crashmesh cluster init|issue`, then N
//! `crashmesh node run` daemons with `[cluster]` configs, watched through
//! `crashmesh status --json` (its `cluster` object). They elect exactly one aggregator,
//! elect another with a higher term when it is killed (kill -9), and refuse a node whose
//! certificate comes from another CA while the cluster carries on.
//!
//! Timing bounds are generous (machines are noisy); the figures are printed.

use std::time::{Duration, Instant};

use crashmesh_tests::*;
use serde_json::Value;

/// The cluster id both CAs use: the refusal must come from the CA, not from the id.
const CLUSTER_ID: &str = "mesh-test";
/// How long a healthy cluster may take to elect its first aggregator.
const FIRST_ELECTION_BOUND: Duration = Duration::from_secs(30);
/// How long the survivors may take to elect a new aggregator (the design's goal).
const FAILOVER_BOUND: Duration = Duration::from_secs(10);

/// A CA made by `crashmesh cluster init` in its own data dir.
struct Ca {
    dir: NodeDir,
}

impl Ca {
    fn new() -> Ca {
        let dir = NodeDir::new("");
        dir.json(&["cluster", "init", "--cluster-id", CLUSTER_ID]);
        Ca { dir }
    }
}

/// One node's config: every detector off (they would read this machine), the mesh on.
fn node_config(ca: &Ca, name: &str, port: u16, members: &[(String, u16)]) -> String {
    let issued = ca.dir.json(&["cluster", "issue", name]);
    MeshNodeConfig {
        name,
        listen: format!("127.0.0.1:{port}"),
        members: members
            .iter()
            .map(|(member, port)| (member.clone(), format!("127.0.0.1:{port}")))
            .collect(),
        ca_data_dir: &ca.dir.data_dir,
        issued: &issued,
        cluster_extra: "",
        upload: None,
    }
    .to_toml()
}

struct MeshNode {
    name: String,
    dir: NodeDir,
    daemon: Option<Daemon>,
}

impl MeshNode {
    /// The `cluster` object of `status --json`, once the daemon answers with its mesh.
    fn cluster(&self) -> Option<Value> {
        let status = self.dir.try_json(&["status"])?;
        let cluster = status["cluster"].clone();
        (cluster["running"] == true).then_some(cluster)
    }

    fn kill(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.kill();
        }
    }
}

/// Starts `count` nodes `node-1…` of one CA; `impostors` names those whose certificate
/// comes from `other_ca` instead (same names, same cluster id, another CA).
fn start_cluster(count: usize, impostors: &[&str]) -> (Vec<MeshNode>, Ca, Ca) {
    let ca = Ca::new();
    let other_ca = Ca::new();
    let ports = free_udp_ports(count);
    let members: Vec<(String, u16)> = (1..=count)
        .map(|index| (format!("node-{index}"), ports[index - 1]))
        .collect();
    let nodes = members
        .iter()
        .map(|(name, port)| {
            let issuer = if impostors.contains(&name.as_str()) {
                &other_ca
            } else {
                &ca
            };
            let dir = NodeDir::new(&node_config(issuer, name, *port, &members));
            let daemon = dir.start_daemon();
            MeshNode {
                name: name.clone(),
                dir,
                daemon: Some(daemon),
            }
        })
        .collect();
    (nodes, ca, other_ca)
}

/// When every node of `nodes` reports the same aggregator (one of them) and term, and
/// that node says it is the aggregator: `(aggregator, term)`.
fn agreed_aggregator(nodes: &[&MeshNode]) -> Option<(String, u64)> {
    let clusters: Vec<Value> = nodes
        .iter()
        .map(|node| node.cluster())
        .collect::<Option<_>>()?;
    let aggregator = clusters[0]["aggregator"].as_str()?.to_string();
    let term = clusters[0]["term"].as_u64()?;
    let agreed = clusters
        .iter()
        .all(|cluster| cluster["aggregator"] == aggregator.as_str() && cluster["term"] == term);
    let holder = nodes
        .iter()
        .zip(&clusters)
        .find(|(node, _)| node.name == aggregator);
    let holder_agrees = holder.is_some_and(|(_, cluster)| cluster["role"] == "aggregator");
    let others_follow = nodes
        .iter()
        .zip(&clusters)
        .filter(|(node, _)| node.name != aggregator)
        .all(|(_, cluster)| cluster["role"] == "follower");
    (agreed && holder_agrees && others_follow).then_some((aggregator, term))
}

fn logs(nodes: &[MeshNode]) -> String {
    nodes
        .iter()
        .map(|node| format!("--- {} ---\n{}", node.name, node.dir.daemon_log()))
        .collect()
}

fn wait_for_agreement(nodes: &[&MeshNode], bound: Duration) -> Option<(String, u64)> {
    let mut agreed = None;
    wait_until(bound, || {
        agreed = agreed_aggregator(nodes);
        agreed.is_some()
    });
    agreed
}

fn member_states(cluster: &Value) -> Vec<(String, String)> {
    cluster["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|member| {
            (
                member["name"].as_str().unwrap().to_string(),
                member["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Elects, kills the aggregator, elects again; prints the figures.
fn elect_then_fail_over(count: usize) {
    let started = Instant::now();
    let (mut nodes, _ca, _other_ca) = start_cluster(count, &[]);
    let all: Vec<&MeshNode> = nodes.iter().collect();
    let Some((first, first_term)) = wait_for_agreement(&all, FIRST_ELECTION_BOUND) else {
        panic!(
            "{count} nodes never agreed on one aggregator\n{}",
            logs(&nodes)
        );
    };
    let elected_after = started.elapsed();
    // Every member is seen alive by every node, and the status lists each once.
    let everyone_alive = wait_until(Duration::from_secs(15), || {
        all.iter().all(|node| {
            node.cluster().is_some_and(|cluster| {
                let states = member_states(&cluster);
                states.len() == count && states.iter().all(|(_, state)| state == "alive")
            })
        })
    });
    assert!(everyone_alive, "members not all alive\n{}", logs(&nodes));

    let killed_at = Instant::now();
    let aggregator_index = nodes.iter().position(|node| node.name == first).unwrap();
    nodes[aggregator_index].kill();
    let survivors: Vec<&MeshNode> = nodes.iter().filter(|node| node.daemon.is_some()).collect();
    let mut next = None;
    wait_until(FAILOVER_BOUND, || {
        next = agreed_aggregator(&survivors).filter(|(_, term)| *term > first_term);
        next.is_some()
    });
    let Some((second, second_term)) = next else {
        panic!(
            "no new aggregator within {FAILOVER_BOUND:?} after killing {first}\n{}",
            logs(&nodes)
        );
    };
    let failover_after = killed_at.elapsed();
    assert_ne!(second, first);
    assert!(second_term > first_term);
    println!(
        "mesh {count} nodes: first aggregator {first} (term {first_term}) after {:.1} s from spawn; \
         after kill -9, {second} (term {second_term}) within {:.1} s",
        elected_after.as_secs_f64(),
        failover_after.as_secs_f64()
    );
}

#[test]
fn three_nodes_elect_one_aggregator_and_another_when_it_is_killed() {
    elect_then_fail_over(3);
}

#[test]
fn five_nodes_elect_one_aggregator_and_another_when_it_is_killed() {
    elect_then_fail_over(5);
}

#[test]
fn a_node_with_another_cas_certificate_is_refused_and_the_cluster_carries_on() {
    // node-3 has the right name and cluster id, but its certificate is of another CA.
    let (nodes, _ca, _other_ca) = start_cluster(3, &["node-3"]);
    let honest: Vec<&MeshNode> = nodes[..2].iter().collect();
    let Some((aggregator, _term)) = wait_for_agreement(&honest, FIRST_ELECTION_BOUND) else {
        panic!("the two honest nodes never agreed\n{}", logs(&nodes));
    };
    assert_ne!(aggregator, "node-3");
    // For a while longer: the impostor never appears alive to anyone honest, and it is
    // never anybody's aggregator (not even its own: it can reach no majority).
    let watch_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < watch_until {
        for node in &honest {
            let cluster = node.cluster().expect("an honest node answers");
            let states = member_states(&cluster);
            let impostor = states.iter().find(|(name, _)| name == "node-3").unwrap();
            assert_ne!(
                impostor.1,
                "alive",
                "{}: {cluster}\n{}",
                node.name,
                logs(&nodes)
            );
            assert_ne!(cluster["aggregator"], "node-3");
        }
        if let Some(cluster) = nodes[2].cluster() {
            assert!(
                cluster["aggregator"].is_null(),
                "the impostor found an aggregator: {cluster}"
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // The honest nodes said why: the transport refused the impostor's certificate.
    let refused = wait_until(Duration::from_secs(10), || {
        honest
            .iter()
            .all(|node| node.dir.daemon_log().contains("refused a peer"))
    });
    assert!(refused, "the refusal was not logged\n{}", logs(&nodes));
    // And they carry on: the same aggregator, both alive.
    assert!(agreed_aggregator(&honest).is_some_and(|(now, _)| now == aggregator));
}

#[test]
fn the_same_problem_on_every_node_is_announced_to_the_aggregator_as_one_problem() {
    let (nodes, _ca, _other_ca) = start_cluster(3, &[]);
    let all: Vec<&MeshNode> = nodes.iter().collect();
    let Some((aggregator, _)) = wait_for_agreement(&all, FIRST_ELECTION_BOUND) else {
        panic!("no aggregator\n{}", logs(&nodes));
    };
    for (index, node) in nodes.iter().enumerate() {
        spool_python_entry(&node.dir, &format!("py-{index}"), now_ms());
    }
    let holder = nodes.iter().find(|node| node.name == aggregator).unwrap();
    // One problem at the aggregator with the three incidents (nothing uploads yet: the
    // uploader comes with the next slice, so they stay pending).
    let mut last = Value::Null;
    let consolidated = wait_until(Duration::from_secs(20), || {
        last = holder.cluster().unwrap_or(Value::Null);
        last["problems"]
            .as_array()
            .is_some_and(|problems| problems.len() == 1 && problems[0]["pending_incidents"] == 3)
    });
    assert!(consolidated, "aggregator's view: {last}\n{}", logs(&nodes));
}

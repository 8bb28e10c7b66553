//! Shared by the endpoint's test suites: a real server on 127.0.0.1:0 in a temp dir,
//! a real HTTP client, and reports with real chunks.
#![allow(dead_code)]

use std::collections::BTreeMap;

use crashmesh_endpoint::client::{ChunkData, Client, chunk_blob};
use crashmesh_endpoint::{EndpointConfig, RunningServer, ServerMode};
use crashmesh_protocol::report::{Attachment, Incident, REPORT_FORMAT_VERSION, ReportManifest};
use crashmesh_protocol::{Frame, Problem, ProblemKind};

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub server: Option<RunningServer>,
    pub url: String,
    pub admin: String,
}

impl Harness {
    pub fn start() -> Harness {
        Harness::start_with(|_| {})
    }

    pub fn start_with(tweak: impl FnOnce(&mut EndpointConfig)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EndpointConfig {
            listen: "127.0.0.1:0".into(),
            data_dir: dir.path().join("endpoint"),
            workers: 2,
            ..EndpointConfig::default()
        };
        tweak(&mut config);
        let server = crashmesh_endpoint::start(config, ServerMode::Real).unwrap();
        Harness {
            url: server.url.clone(),
            admin: server.admin_token.clone(),
            server: Some(server),
            dir,
        }
    }

    /// A client with no valid token.
    pub fn anonymous(&self) -> Client {
        Client::new(&self.url, "")
    }

    pub fn admin(&self) -> Client {
        Client::new(&self.url, &self.admin)
    }

    /// A token for `cluster`, made through the admin API.
    pub fn client(&self, cluster: &str) -> Client {
        let answer = self
            .admin()
            .post(
                "/api/v1/tokens",
                format!("{{\"cluster\":\"{cluster}\"}}").as_bytes(),
            )
            .unwrap();
        assert_eq!(answer.status, 201, "{}", answer.body);
        let token = answer.json()["token"].as_str().unwrap().to_string();
        Client::new(&self.url, &token)
    }

    pub fn problems(&self, query: &str) -> Vec<serde_json::Value> {
        let answer = self
            .anonymous()
            .get(&format!("/api/v1/problems{query}"))
            .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json()["problems"].as_array().unwrap().clone()
    }

    /// Chunk records in the local pack files (a refused chunk leaves none).
    pub fn chunks_stored(&self) -> usize {
        let state = self.server.as_ref().unwrap().state.as_ref().unwrap();
        match &state.blobs {
            crashmesh_endpoint::blobs::Blobs::Local(packs) => packs.records().unwrap().len(),
            crashmesh_endpoint::blobs::Blobs::Objects(_) => panic!("local storage only"),
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
    }
}

pub fn hex_id(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex().to_string()
}

/// A log of about `len` bytes that does not compress away and differs by `seed`.
pub fn log_bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 100);
    let mut counter = 0u64;
    while out.len() < len {
        let hash = blake3::hash(format!("{seed}-{counter}").as_bytes());
        out.extend_from_slice(
            format!(
                "2026-11-26T16:{:02}:{:02} node vstorage-csd[{counter}]: chunk {} ok\n",
                counter % 60,
                counter % 59,
                hash.to_hex()
            )
            .as_bytes(),
        );
        counter += 1;
    }
    out.truncate(len);
    out
}

pub fn problem(signature: &str, function: &str) -> Problem {
    let mut problem = Problem::new(ProblemKind::Core, format!("SIGSEGV in {function}"));
    problem.signature = signature.into();
    problem.signal = Some(11);
    problem.executable = Some("/usr/bin/vstorage-csd".into());
    problem.package = Some("vstorage 1.0".into());
    problem.frames = vec![
        Frame {
            address: Some(0x5555_0000_1234),
            function: Some(function.into()),
            module: Some("/usr/bin/vstorage-csd".into()),
            offset: Some(0x14),
            reliable: true,
            ..Frame::default()
        },
        Frame {
            address: Some(0x5555_0000_2000),
            function: Some("main".into()),
            module: Some("/usr/bin/vstorage-csd".into()),
            offset: Some(0x40),
            reliable: true,
            ..Frame::default()
        },
    ];
    problem
}

pub fn incident(node: &str, entry: &str, time_ms: u64, version: Option<&str>) -> Incident {
    Incident {
        node: node.into(),
        time_ms,
        report_id: format!("{node}:{entry}"),
        version: version.map(str::to_string),
        labels: BTreeMap::from([("test_run".to_string(), "t1".to_string())]),
    }
}

/// A report of `problem` from `cluster` with one log attachment.
pub fn report(
    cluster: &str,
    term: u64,
    report_seed: &str,
    problem: Problem,
    incidents: Vec<Incident>,
    log: &[u8],
) -> (ReportManifest, Vec<ChunkData>) {
    let (blob, chunks) = chunk_blob(log);
    let manifest = ReportManifest {
        format_version: REPORT_FORMAT_VERSION,
        report_id: hex_id(report_seed),
        cluster_id: cluster.into(),
        term,
        customer_id: None,
        signature: problem.signature.clone(),
        kind: problem.kind,
        problem,
        incidents,
        attachments: vec![Attachment {
            name: "node-1/journal.log".into(),
            blob,
        }],
        scrub: None,
        created_ms: 1_790_000_000_000,
    };
    (manifest, chunks)
}

//! Shared by the endpoint's test suites: a real server on 127.0.0.1:0 in a temp dir,
//! a real HTTP client, and reports with real chunks.
#![allow(dead_code)]

use std::collections::BTreeMap;

use crashmesh_endpoint::{EndpointConfig, RunningServer, ServerMode};
use crashmesh_endpoint_client::{Answer, ChunkData, Client, chunk_blob};
use crashmesh_protocol::report::{Attachment, Incident, REPORT_FORMAT_VERSION, ReportManifest};
use crashmesh_protocol::{Frame, Problem, ProblemKind};

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub server: Option<RunningServer>,
    pub url: String,
    pub admin: String,
    pub metrics: String,
    pub config: EndpointConfig,
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
        let server = crashmesh_endpoint::start(config.clone(), ServerMode::Real).unwrap();
        Harness {
            url: server.url.clone(),
            admin: server.admin_token.clone(),
            metrics: server.metrics_token.clone(),
            server: Some(server),
            dir,
            config,
        }
    }

    /// The server's shared state (its committer, metrics, database).
    pub fn state(&self) -> &crashmesh_endpoint::http::AppState {
        self.server.as_ref().unwrap().state.as_ref().unwrap()
    }

    /// `host:port` of the server.
    pub fn address(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    /// A dashboard session for `token`, signed in as the sign-in page's form does: the
    /// session cookie's value, or the status of the refusal.
    pub fn sign_in(&self, token: &str) -> Result<String, u16> {
        let body = format!("token={token}&next=%2F");
        let answer = raw_http(
            &self.address(),
            &format!(
                "POST /signin HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len(),
                host = self.address()
            ),
        );
        if answer.status != 303 {
            return Err(answer.status);
        }
        let cookie = answer.header("set-cookie").expect("a session cookie");
        let value = cookie
            .split(';')
            .next()
            .unwrap()
            .strip_prefix("crashmesh_session=")
            .unwrap();
        Ok(value.to_string())
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

    /// The metrics as the metrics token reads them.
    pub fn metrics_text(&self) -> String {
        let answer = Client::new(&self.url, &self.metrics)
            .get("/metrics")
            .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body
    }

    /// A counter of `/metrics` (0 when absent).
    pub fn metric(&self, line_start: &str) -> u64 {
        self.metrics_text()
            .lines()
            .find_map(|line| line.strip_prefix(line_start)?.trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn problems(&self, query: &str) -> Vec<serde_json::Value> {
        let answer = self
            .admin()
            .get(&format!("/api/v1/problems{query}"))
            .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json()["problems"].as_array().unwrap().clone()
    }

    /// Chunk records in the local pack files (a refused chunk leaves none).
    pub fn chunks_stored(&self) -> usize {
        let state = self.server.as_ref().unwrap().state.as_ref().unwrap();
        match &state.blobs {
            crashmesh_endpoint::storage::blobs::Blobs::Local(packs) => {
                packs.records().unwrap().len()
            }
            crashmesh_endpoint::storage::blobs::Blobs::Objects(_) => panic!("local storage only"),
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

/// A manifest of `cluster` (its id from `report_seed`) with these incidents and attachments.
pub fn manifest(
    cluster: &str,
    term: u64,
    report_seed: &str,
    problem: Problem,
    incidents: Vec<Incident>,
    attachments: Vec<Attachment>,
) -> ReportManifest {
    ReportManifest {
        format_version: REPORT_FORMAT_VERSION,
        report_id: hex_id(report_seed),
        cluster_id: cluster.into(),
        term,
        customer_id: None,
        signature: problem.signature.clone(),
        kind: problem.kind,
        problem,
        incidents,
        attachments,
        scrub: None,
        created_ms: 1_790_000_000_000,
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
    report_of(
        cluster,
        term,
        report_seed,
        problem,
        incidents,
        &[("node-1/journal.log", log)],
    )
}

/// A report of `cluster` with the attachments given (name, bytes), one incident on `node`.
pub fn report_with(
    cluster: &str,
    term: u64,
    report_seed: &str,
    problem: Problem,
    node: &str,
    attachments: &[(&str, &[u8])],
) -> (ReportManifest, Vec<ChunkData>) {
    let incidents = vec![incident(node, report_seed, 1_790_000_000_000, Some("1.0"))];
    report_of(cluster, term, report_seed, problem, incidents, attachments)
}

fn report_of(
    cluster: &str,
    term: u64,
    report_seed: &str,
    problem: Problem,
    incidents: Vec<Incident>,
    attachments: &[(&str, &[u8])],
) -> (ReportManifest, Vec<ChunkData>) {
    let mut chunks = Vec::new();
    let attachments = attachments
        .iter()
        .map(|(name, bytes)| {
            let (blob, blob_chunks) = chunk_blob(bytes);
            chunks.extend(blob_chunks);
            Attachment {
                name: name.to_string(),
                blob,
            }
        })
        .collect();
    let manifest = manifest(cluster, term, report_seed, problem, incidents, attachments);
    (manifest, chunks)
}

/// Posts a manifest (the first step of an upload) and gives the answer.
pub fn post_manifest(client: &Client, manifest: &ReportManifest) -> Answer {
    client
        .post("/api/v1/reports", &serde_json::to_vec(manifest).unwrap())
        .unwrap()
}

/// An HTTP answer read off a raw connection.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawAnswer {
    /// A header's value (the first of that name).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    }
}

/// Reads one answer (head, then a `Content-Length` body) off `stream`.
pub fn read_answer(stream: &mut std::net::TcpStream) -> RawAnswer {
    use std::io::Read as _;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .unwrap();
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    while !bytes.ends_with(b"\r\n\r\n") {
        let read = stream.read(&mut byte).expect("an answer");
        assert!(
            read == 1,
            "the connection closed before an answer: {bytes:?}"
        );
        bytes.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&bytes).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status");
    let mut answer = RawAnswer {
        status,
        head,
        body: String::new(),
    };
    let len: usize = answer
        .header("content-length")
        .and_then(|len| len.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).unwrap();
    answer.body = String::from_utf8_lossy(&body).to_string();
    answer
}

/// Sends `request` as it is on a new connection and reads the answer.
pub fn raw_http(address: &str, request: &str) -> RawAnswer {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    read_answer(&mut stream)
}

/// Polls `condition` until it holds or `timeout` passes; whether it held.
pub fn wait_until(timeout: std::time::Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Copies a data dir as a crash would leave it: whatever reached the files.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path, skip: &str) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == skip || name == "endpoint.sock" {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(&name), skip);
        } else {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

/// A TCP port nothing listens on now, on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

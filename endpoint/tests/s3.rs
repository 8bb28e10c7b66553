//! The endpoint on S3-compatible storage: a real S3 server (moto's `moto_server`) on
//! 127.0.0.1, the real endpoint configured with `[storage] kind = "s3"`, uploads through
//! the real HTTP API, and the bucket read back through the S3 API itself.
//!
//! `moto_server` comes from PATH (or `$MOTO_SERVER`); `.ci/run` installs it. Without it
//! the tests say so and pass, unless `CI` is set: there a missing server is a failure.

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use crashmesh_endpoint::EndpointConfig;
use crashmesh_endpoint::config::{S3Config, StorageKind};
use crashmesh_endpoint_client::ChunkData;
use futures_util::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};

const T0: u64 = 1_790_000_000_000;
const BUCKET: &str = "crashmesh-test";
/// How long `moto_server` may take to start listening (it imports a lot of Python).
const SERVER_START_SECS_MAX: u64 = 120;
/// Ports tried when another process takes the one picked.
const SERVER_START_ATTEMPTS_MAX: usize = 3;
/// How long an upload is retried after the S3 server came back.
const RECOVERY_SECS_MAX: u64 = 60;

/// `moto_server` on PATH (or `$MOTO_SERVER`); `None` when it is absent and `CI` is not
/// set, after saying why the test is skipped.
fn moto_server_binary() -> Option<PathBuf> {
    let found = match std::env::var_os("MOTO_SERVER") {
        Some(path) => Some(PathBuf::from(path)),
        None => std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("moto_server"))
                .find(|candidate| candidate.is_file())
        }),
    };
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "moto_server is not on PATH and CI is set: .ci/run installs it \
             (python3 -m venv target/ci-python && target/ci-python/bin/pip install 'moto[server]')"
        );
        eprintln!(
            "SKIPPED: moto_server is not on PATH (pip install 'moto[server]'); the S3 storage \
             test needs a real S3-compatible server"
        );
    }
    found
}

/// A running `moto_server` on loopback, killed on drop.
struct S3Server {
    child: Option<Child>,
    binary: PathBuf,
    port: u16,
    log: PathBuf,
}

impl S3Server {
    /// Starts the server on a free port and creates [`BUCKET`] through the S3 API.
    fn start(binary: PathBuf, dir: &std::path::Path) -> S3Server {
        let mut server = S3Server {
            child: None,
            binary,
            port: 0,
            log: dir.join("moto_server.log"),
        };
        for attempt in 1..=SERVER_START_ATTEMPTS_MAX {
            server.port = free_port();
            match server.spawn_and_wait() {
                Ok(()) => {
                    server.create_bucket();
                    return server;
                }
                Err(error) if attempt < SERVER_START_ATTEMPTS_MAX => {
                    eprintln!(
                        "moto_server on port {} failed ({error}); another port",
                        server.port
                    );
                }
                Err(error) => panic!("moto_server did not start: {error}"),
            }
        }
        unreachable!("the last attempt panics")
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the process on `self.port` and waits until it accepts connections.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(&self.log).unwrap();
        let mut child = Command::new(&self.binary)
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|error| format!("spawn {}: {error}", self.binary.display()))?;
        let address: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(SERVER_START_SECS_MAX);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                return Err(format!("exited with {status}: {log}"));
            }
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("not listening after {SERVER_START_SECS_MAX} s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `CreateBucket` (moto does not check signatures).
    fn create_bucket(&self) {
        let response = ureq::put(format!("{}/{BUCKET}", self.url()))
            .send(&[] as &[u8])
            .expect("CreateBucket");
        assert_eq!(response.status(), 200);
    }

    /// Kills the server (SIGKILL) and waits for it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port: an empty server (moto keeps nothing), with the
    /// bucket created again.
    fn restart(&mut self) {
        self.kill();
        self.spawn_and_wait().expect("moto_server restarts");
        self.create_bucket();
    }

    /// The endpoint's storage configuration for this server.
    fn storage(&self, config: &mut EndpointConfig, retry_secs_max: u64) {
        config.storage.kind = StorageKind::S3;
        config.storage.s3 = Some(S3Config {
            bucket: BUCKET.into(),
            endpoint: Some(self.url()),
            region: Some("us-east-1".into()),
            access_key_id: Some("testing".into()),
            secret_access_key: Some("testing".into()),
            allow_http: true,
            retry_secs_max,
        });
    }

    /// Every object under `chunks/` with its bytes, listed and read through the S3 API
    /// (ListObjectsV2 and GetObject), not through the endpoint.
    fn objects(&self) -> BTreeMap<String, Vec<u8>> {
        let store = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_endpoint(self.url())
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .with_allow_http(true)
            .build()
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let prefix = object_store::path::Path::from("chunks");
            let listed: Vec<_> = store.list(Some(&prefix)).collect().await;
            let mut objects = BTreeMap::new();
            for meta in listed {
                let meta = meta.expect("ListObjectsV2");
                let bytes = store
                    .get(&meta.location)
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                objects.insert(meta.location.to_string(), bytes.to_vec());
            }
            objects
        })
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn object_key(id: &str) -> String {
    format!("chunks/{}/{}", &id[..2], &id[2..])
}

fn chunk_objects(chunks: &[ChunkData]) -> BTreeMap<String, Vec<u8>> {
    chunks
        .iter()
        .map(|chunk| (object_key(&chunk.id), chunk.compressed.clone()))
        .collect()
}

#[test]
fn chunks_land_in_the_bucket_once_and_read_back() {
    let Some(binary) = moto_server_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(binary, dir.path());
    let mut harness = Harness::start_with(|config| s3.storage(config, 10));
    let client = harness.client("c1");
    let log = log_bytes("s3", 900_000);
    let (manifest, chunks) = report(
        "c1",
        1,
        "r1",
        problem("v1:core:leaf", "leaf"),
        vec![incident("node-1", "e1", T0, None)],
        &log,
    );
    assert!(chunks.len() >= 2, "a multi-chunk attachment");

    let answer = post_manifest(&client, &manifest);
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.reply().unwrap().missing_chunks.len(), chunks.len());

    // A chunk whose bytes are another chunk's: refused, and nothing reaches the bucket.
    let answer = client
        .put(
            &format!("/api/v1/chunks/{}", chunks[0].id),
            &chunks[1].compressed,
        )
        .unwrap();
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(answer.json()["code"], "bad_chunk");
    assert!(s3.objects().is_empty(), "a refused chunk is not stored");

    // The real chunks, then completion: every chunk is an object named by its id, holding
    // the zstd frame as sent.
    for chunk in &chunks {
        let answer = client
            .put(&format!("/api/v1/chunks/{}", chunk.id), &chunk.compressed)
            .unwrap();
        assert_eq!(answer.status, 204, "{}", answer.body);
    }
    let complete = format!("/api/v1/reports/{}/complete", manifest.report_id);
    let answer = client.post(&complete, b"").unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let first = answer.reply().unwrap();
    assert!(!first.known);
    let stored = s3.objects();
    assert_eq!(stored, chunk_objects(&chunks));

    // Re-uploads are idempotent: the manifest alone is answered (nothing missing), a
    // chunk sent again is "already stored", and the bucket is unchanged.
    let answer = post_manifest(&client, &manifest);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let again = answer.reply().unwrap();
    assert!(again.known);
    assert_eq!(again.problem_id, first.problem_id);
    let answer = client
        .put(
            &format!("/api/v1/chunks/{}", chunks[0].id),
            &chunks[0].compressed,
        )
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let again = client.upload(&manifest, &chunks).unwrap();
    assert_eq!(again.problem_id, first.problem_id);
    assert_eq!(s3.objects(), stored);
    let problems = harness.problems("");
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0]["count"], 1);

    // Read back through the endpoint: the attachment view and a chunk as stored.
    let attachment = harness
        .admin()
        .get(&format!(
            "/reports/{}/attachments/node-1/journal.log",
            manifest.report_id
        ))
        .unwrap();
    assert_eq!(attachment.status, 200, "{}", attachment.body);
    assert_eq!(attachment.body.as_bytes(), &log[..]);
    let page = harness
        .admin()
        .get(&format!("/problems/{}", first.problem_id))
        .unwrap();
    assert_eq!(page.status, 200);
    assert!(page.body.contains("journal.log"), "{}", page.body);

    // And through `endpoint export`, once the server is stopped.
    harness.server.take().unwrap().stop();
    let mut config = EndpointConfig {
        data_dir: harness.dir.path().join("endpoint"),
        ..EndpointConfig::default()
    };
    s3.storage(&mut config, 10);
    let out = dir.path().join("export");
    let summary = crashmesh_endpoint::export::export(&config, &out).unwrap();
    assert_eq!(summary.reports, 1);
    assert_eq!(summary.attachments, 1);
    let exported = std::fs::read(
        out.join("reports")
            .join(&manifest.report_id)
            .join("attachments/node-1/journal.log"),
    )
    .unwrap();
    assert_eq!(exported, log);
}

#[test]
fn an_unreachable_bucket_is_answered_503_nothing_is_recorded_and_the_endpoint_keeps_serving() {
    let Some(binary) = moto_server_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut s3 = S3Server::start(binary, dir.path());
    // Retried for a second at most, so the refusals come quickly.
    let harness = Harness::start_with(|config| s3.storage(config, 1));
    let client = harness.client("c1");
    let (first, first_chunks) = report(
        "c1",
        1,
        "r1",
        problem("v1:core:leaf", "leaf"),
        vec![incident("node-1", "e1", T0, None)],
        &log_bytes("first", 300_000),
    );
    let reply = client.upload(&first, &first_chunks).unwrap();
    let first_problem = reply.problem_id;

    // A second report is half sent when the S3 server dies.
    let log = log_bytes("second", 900_000);
    let (second, chunks) = report(
        "c1",
        1,
        "r2",
        problem("v1:core:other", "other"),
        vec![incident("node-2", "e1", T0 + 1000, None)],
        &log,
    );
    assert!(chunks.len() >= 2, "a multi-chunk attachment");
    let answer = post_manifest(&client, &second);
    assert_eq!(answer.status, 202, "{}", answer.body);
    let answer = client
        .put(
            &format!("/api/v1/chunks/{}", chunks[0].id),
            &chunks[0].compressed,
        )
        .unwrap();
    assert_eq!(answer.status, 204, "{}", answer.body);
    s3.kill();

    // Every request that needs the bucket is answered 503 with a reason and Retry-After…
    let answer = client
        .put(
            &format!("/api/v1/chunks/{}", chunks[1].id),
            &chunks[1].compressed,
        )
        .unwrap();
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.json()["code"], "storage", "{}", answer.body);
    // (A completion with a chunk missing needs no bucket: the report waits for it.)
    let complete = format!("/api/v1/reports/{}/complete", second.report_id);
    let answer = client.post(&complete, b"").unwrap();
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(
        answer.reply().unwrap().missing_chunks,
        chunks[1..]
            .iter()
            .map(|chunk| chunk.id.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    let (third, third_chunks) = report(
        "c1",
        1,
        "r3",
        problem("v1:core:third", "third"),
        vec![incident("node-3", "e1", T0 + 2000, None)],
        &log_bytes("third", 100_000),
    );
    // (Which chunks a manifest lacks comes from the database: the cluster's own.)
    let answer = post_manifest(&client, &third);
    assert_eq!(answer.status, 202, "{}", answer.body);
    let error = client.upload(&third, &third_chunks).unwrap_err();
    assert!(error.to_string().contains("503"), "{error}");

    // …nothing of the half-sent report is recorded, and the endpoint keeps serving.
    let health = harness.admin().get("/healthz").unwrap();
    assert_eq!(health.status, 200);
    let problems = harness.problems("");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0]["id"], first_problem.as_str());
    assert_eq!(problems[0]["count"], 1);
    for report in [&second, &third] {
        let answer = harness
            .admin()
            .get(&format!("/api/v1/reports/{}", report.report_id))
            .unwrap();
        assert_eq!(answer.status, 404, "{}", answer.body);
    }
    let page = harness.admin().get("/").unwrap();
    assert_eq!(page.status, 200);
    let metrics = harness.admin().get("/metrics").unwrap();
    assert_eq!(metrics.status, 200);

    // The server comes back empty (moto keeps nothing): the aggregator's retry sends the
    // whole report again and it is recorded, every chunk in the bucket.
    s3.restart();
    let deadline = Instant::now() + Duration::from_secs(RECOVERY_SECS_MAX);
    let reply = loop {
        match client.upload(&second, &chunks) {
            Ok(reply) => break reply,
            Err(error) if Instant::now() < deadline => {
                eprintln!("retrying after the restart: {error}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(error) => panic!("no recovery after the S3 server came back: {error}"),
        }
    };
    assert!(!reply.known);
    assert_eq!(s3.objects(), chunk_objects(&chunks));
    assert_eq!(harness.problems("").len(), 2);
    let attachment = harness
        .admin()
        .get(&format!(
            "/reports/{}/attachments/node-1/journal.log",
            second.report_id
        ))
        .unwrap();
    assert_eq!(attachment.status, 200, "{}", attachment.body);
    assert_eq!(attachment.body.as_bytes(), &log[..]);
}

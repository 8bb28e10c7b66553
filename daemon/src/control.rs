//! The daemon's local control socket (`<data dir>/crashmesh.sock`): the daemon owns the
//! index, so while it runs the CLI asks it; when it does not run, the CLI opens the index
//! itself. Both paths run the same [`handle`], so they cannot disagree.
//!
//! Protocol: one JSON request line, one JSON response line. Requests are capped at
//! [`REQUEST_BYTES_MAX`]; the socket is root-only (mode 0600).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crashmesh_store::{CheckReport, ProblemDetail, ProblemSummary, Store, StoreStatus};
use serde::{Deserialize, Serialize};

/// The largest request line the daemon reads.
pub const REQUEST_BYTES_MAX: u64 = 1024 * 1024;
/// The largest response line the CLI reads.
pub const RESPONSE_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// How long the CLI waits for the daemon's answer.
pub const RESPONSE_TIMEOUT_SECS: u64 = 60;
/// How long a client may take to send its whole request.
pub const REQUEST_DEADLINE_MS: u64 = 5_000;
/// Requests served at once; more connections wait to be accepted.
pub const CONNECTIONS_MAX: usize = 16;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Problems,
    Problem {
        id: String,
    },
    ExportCore {
        id: String,
        out: PathBuf,
    },
    Status,
    Check,
    /// The mesh as the daemon sees it (see [`crashmesh_mesh::actor::MeshView`]).
    Mesh,
    /// The endpoint's last answer about a problem (kept by an aggregator that uploaded it).
    EndpointReply {
        problem_id: String,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "answer", content = "value", rename_all = "snake_case")]
pub enum Response {
    Problems(Vec<ProblemSummary>),
    Problem(Option<Box<ProblemDetail>>),
    Exported {
        bytes: u64,
    },
    Status(StoreStatus),
    Check(CheckReport),
    /// `None`: no mesh runs (standalone, or no daemon).
    Mesh(Option<crashmesh_mesh::actor::MeshView>),
    EndpointReply(Option<crashmesh_protocol::report::UploadReply>),
    Error(String),
}

/// The socket of a data dir.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("crashmesh.sock")
}

/// Answer one request from the store.
pub fn handle(store: &Store, request: Request) -> Response {
    let result = match request {
        Request::Problems => store.problems().map(Response::Problems),
        Request::Problem { id } => store
            .problem(&id)
            .map(|detail| Response::Problem(detail.map(Box::new))),
        Request::ExportCore { id, out } => export_core(store, &id, &out),
        Request::Status => store.status().map(Response::Status),
        Request::Check => store.check(true).map(Response::Check),
        // Only the daemon knows the mesh ([`serve`] answers it there).
        Request::Mesh => Ok(Response::Mesh(None)),
        Request::EndpointReply { problem_id } => Ok(Response::EndpointReply(
            crashmesh_mesh::uploader::endpoint_reply(store, &problem_id),
        )),
    };
    result.unwrap_or_else(|error| Response::Error(error.to_string()))
}

fn export_core(
    store: &Store,
    id: &str,
    out: &Path,
) -> Result<Response, crashmesh_store::StoreError> {
    let Some(detail) = store.problem(id)? else {
        return Ok(Response::Error(format!("no problem {id:?}")));
    };
    let core = detail
        .incidents
        .iter()
        .filter_map(|incident| incident.core.as_ref())
        .find(|core| core.state == crashmesh_store::EvidenceState::Kept);
    let Some(core) = core else {
        return Ok(Response::Error(format!("problem {id} has no kept core")));
    };
    // A new file, owner only, never written through a link planted at the path.
    let mut file = match crashmesh_untrusted::create_private(out) {
        Ok(file) => file,
        Err(error) => return Ok(Response::Error(error.to_string())),
    };
    store.read_blob(&core.blob, &mut file)?;
    Ok(Response::Exported {
        bytes: core.len_bytes,
    })
}

/// Ask the running daemon. `None` when no daemon listens on the data dir's socket.
pub fn ask(data_dir: &Path, request: &Request) -> Option<Result<Response, String>> {
    let mut stream = UnixStream::connect(socket_path(data_dir)).ok()?;
    Some(exchange(&mut stream, request))
}

fn exchange(stream: &mut UnixStream, request: &Request) -> Result<Response, String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(RESPONSE_TIMEOUT_SECS)))
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_vec(request).expect("request serializes");
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(|error| format!("daemon socket: {error}"))?;
    let mut answer = Vec::new();
    BufReader::new(stream.take(RESPONSE_BYTES_MAX))
        .read_until(b'\n', &mut answer)
        .map_err(|error| format!("daemon socket: {error}"))?;
    serde_json::from_slice(&answer)
        .map_err(|error| format!("daemon answered something else: {error}"))
}

/// Serve requests until the listener fails; each connection gets one answer.
pub async fn serve(
    listener: tokio::net::UnixListener,
    store: std::sync::Arc<Store>,
    mesh: crashmesh_mesh::actor::SharedMeshView,
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let store = store.clone();
        let mesh = mesh.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let (reader, mut writer) = stream.into_split();
            let mut line = Vec::new();
            let mut reader = tokio::io::BufReader::new(reader.take(REQUEST_BYTES_MAX));
            let read = tokio::time::timeout(
                Duration::from_millis(REQUEST_DEADLINE_MS),
                reader.read_until(b'\n', &mut line),
            )
            .await;
            if !matches!(read, Ok(Ok(_))) {
                return;
            }
            let response = match serde_json::from_slice::<Request>(&line) {
                Ok(Request::Mesh) => Response::Mesh(
                    mesh.lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .clone(),
                ),
                Ok(request) => tokio::task::spawn_blocking(move || handle(&store, request))
                    .await
                    .unwrap_or_else(|error| Response::Error(format!("request failed: {error}"))),
                Err(error) => Response::Error(format!("malformed request: {error}")),
            };
            let mut bytes = serde_json::to_vec(&response).expect("response serializes");
            bytes.push(b'\n');
            let _ = writer.write_all(&bytes).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crashmesh_protocol::{Problem, ProblemKind};
    use crashmesh_store::{NewIncident, StoreConfig};

    #[test]
    fn an_exported_core_is_a_new_owner_only_file_never_written_through_a_link() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store"), StoreConfig::default()).unwrap();
        let mut core = b"\x7fELF".to_vec();
        core.extend(std::iter::repeat_n(7u8, 10_000));
        let blob = store.put_blob_bytes(&core).unwrap();
        let mut problem = Problem::new(ProblemKind::Core, "SIGSEGV in f");
        problem.signature = "v1:2222222222222222222222222222222222222222".into();
        store
            .record_incident(NewIncident {
                report_id: "n1:1".into(),
                time_ms: 1_700_000_000_000,
                node: "n1".into(),
                problem,
                executable: None,
                pid: Some(1),
                uid: Some(0),
                signal: Some(11),
                core: Some(blob),
                core_truncated: false,
                attachments: Vec::new(),
                labels: Default::default(),
            })
            .unwrap();
        let id = store.problems().unwrap()[0].id.clone();
        let export = |out: &Path| {
            handle(
                &store,
                Request::ExportCore {
                    id: id.clone(),
                    out: out.to_path_buf(),
                },
            )
        };
        // A link planted where the core goes (dangling or not) is refused, its target
        // untouched; so is an existing file.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        for (name, target) in [
            ("link", victim.clone()),
            ("dangling", dir.path().join("new")),
        ] {
            let link = dir.path().join(name);
            std::os::unix::fs::symlink(&target, &link).unwrap();
            match export(&link) {
                Response::Error(error) => assert!(error.contains("exists"), "{error}"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert!(!dir.path().join("new").exists());
        assert!(matches!(export(&victim), Response::Error(_)));
        // A new path gets the core, 0600.
        let out = dir.path().join("core.out");
        assert!(matches!(export(&out), Response::Exported { .. }));
        assert_eq!(std::fs::read(&out).unwrap(), core);
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

//! The CLI's writes (`token create`, `bug set`, `core-request`), whether or not a server
//! runs on the data dir.
//!
//! Only one process writes the metadata database (see [`crate::db`]). With no server
//! running, the CLI opens it and makes the change itself. While `crashmesh endpoint run`
//! has it, the CLI hands the same request to the server over `DATA_DIR/endpoint.sock`, a
//! Unix socket only its owner may use (as `DATA_DIR/admin.token` is the owner's only),
//! and the server makes the change with the same code.
//!
//! Invariants: one request per connection, one JSON line each way, the request at most
//! [`ADMIN_REQUEST_BYTES_MAX`]; a malformed request gets an error answer and the server
//! carries on; every change goes through [`execute`], whoever asked.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::db::Db;
use crate::error::EndpointError;

/// The largest request line the server reads.
pub const ADMIN_REQUEST_BYTES_MAX: u64 = 64 * 1024;
/// How long one connection may take to send its request or read its answer.
const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A change the CLI asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum AdminRequest {
    /// A token for a cluster (`token create`).
    CreateToken { cluster: String },
    /// Ask (or stop asking) for a core of a problem (`core-request`).
    SetCoreRequest { problem: String, requested: bool },
    /// Change a bug's status or workaround (`bug set`).
    SetBug {
        id: u64,
        status: Option<String>,
        workaround: Option<String>,
    },
}

/// The answer on the socket: the change's JSON, or why it failed.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum AdminAnswer {
    Done(serde_json::Value),
    Failed { error: String, code: String },
}

/// The socket of the server running on `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("endpoint.sock")
}

/// Makes the change on `db` and returns what the CLI prints with `--json`.
pub fn execute(db: &Db, request: &AdminRequest) -> Result<serde_json::Value, EndpointError> {
    let now_ms = crate::ingest::now_ms();
    match request {
        AdminRequest::CreateToken { cluster } => {
            let token = crate::auth::create_cluster_token(db, cluster)?;
            Ok(serde_json::json!({ "cluster": cluster, "token": token }))
        }
        AdminRequest::SetCoreRequest { problem, requested } => {
            db.set_core_request(problem, *requested, now_ms)?;
            let requested = db.core_requested(problem)?.is_some();
            Ok(serde_json::json!({ "problem_id": problem, "core_requested": requested }))
        }
        AdminRequest::SetBug {
            id,
            status,
            workaround,
        } => {
            let bug = db.set_bug(*id, status.as_deref(), workaround.as_deref(), now_ms)?;
            serde_json::to_value(bug).map_err(|error| EndpointError::Database(error.to_string()))
        }
    }
}

/// Makes the change: on the database when no server has it, else through the server's
/// socket. The second element tells which (true: the running server made it).
pub fn run(
    data_dir: &Path,
    request: &AdminRequest,
) -> Result<(serde_json::Value, bool), EndpointError> {
    match Db::open(data_dir) {
        Ok(db) => Ok((execute(&db, request)?, false)),
        Err(EndpointError::InUse { path }) => {
            let socket = socket_path(data_dir);
            let answer = ask(&socket, request).map_err(|error| {
                EndpointError::Config(format!(
                    "{path} is in use by a running server, and its socket {} does not \
                     answer: {error}",
                    socket.display()
                ))
            })?;
            match answer {
                AdminAnswer::Done(value) => Ok((value, true)),
                AdminAnswer::Failed { error, code } => Err(remote_error(error, &code)),
            }
        }
        Err(error) => Err(error),
    }
}

/// A server's refusal as the error it was (so the CLI says the same either way).
fn remote_error(error: String, code: &str) -> EndpointError {
    match code {
        "bad_request" => EndpointError::BadRequest(error),
        "not_found" => EndpointError::NotFound(error),
        _ => EndpointError::Database(error),
    }
}

fn ask(socket: &Path, request: &AdminRequest) -> std::io::Result<AdminAnswer> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(ADMIN_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(ADMIN_IO_TIMEOUT))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    serde_json::from_str(&answer).map_err(std::io::Error::other)
}

/// The server's side of the socket, on its own thread until [`AdminSocket::stop`].
pub struct AdminSocket {
    path: PathBuf,
    stopping: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminSocket {
    /// Listens on `DATA_DIR/endpoint.sock` (owner only) and answers with `db`. The caller
    /// holds `db` as its writer, so a socket file there is a dead server's: replaced.
    pub fn start(data_dir: &Path, db: Arc<Db>) -> Result<AdminSocket, EndpointError> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = socket_path(data_dir);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(EndpointError::io("remove", &path, error)),
        }
        let listener =
            UnixListener::bind(&path).map_err(|error| EndpointError::io("bind", &path, error))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|error| EndpointError::io("restrict", &path, error))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let stopping = stopping.clone();
            std::thread::Builder::new()
                .name("admin-socket".into())
                .spawn(move || serve(listener, &db, &stopping))
                .map_err(|error| EndpointError::io("spawn", Path::new("admin socket"), error))?
        };
        Ok(AdminSocket {
            path,
            stopping,
            thread: Some(thread),
        })
    }

    /// Stops answering, removes the socket and lets go of the database.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept.
        let _ = UnixStream::connect(&self.path);
        let _ = thread.join();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn serve(listener: UnixListener, db: &Db, stopping: &AtomicBool) {
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        match stream {
            Ok(stream) => {
                if let Err(error) = answer(stream, db) {
                    tracing::warn!(%error, "an admin socket connection failed");
                }
            }
            Err(error) => tracing::warn!(%error, "the admin socket cannot accept"),
        }
    }
}

fn answer(stream: UnixStream, db: &Db) -> std::io::Result<()> {
    stream.set_read_timeout(Some(ADMIN_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(ADMIN_IO_TIMEOUT))?;
    let mut line = Vec::new();
    BufReader::new((&stream).take(ADMIN_REQUEST_BYTES_MAX)).read_until(b'\n', &mut line)?;
    let answer = match serde_json::from_slice::<AdminRequest>(&line) {
        Err(error) => AdminAnswer::Failed {
            error: format!("not an admin request: {error}"),
            code: "bad_request".into(),
        },
        Ok(request) => match execute(db, &request) {
            Ok(value) => {
                tracing::info!(?request, "admin change made for the CLI");
                AdminAnswer::Done(value)
            }
            Err(error) => AdminAnswer::Failed {
                code: error.code().into(),
                error: error.to_string(),
            },
        },
    };
    let mut out = serde_json::to_vec(&answer)?;
    out.push(b'\n');
    (&stream).write_all(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_goes_to_the_database_or_through_the_running_servers_socket() {
        let dir = tempfile::tempdir().unwrap();
        // No server: the CLI writes itself.
        let (created, through_server) = run(
            dir.path(),
            &AdminRequest::CreateToken {
                cluster: "c1".into(),
            },
        )
        .unwrap();
        assert!(!through_server);
        let first = created["token"].as_str().unwrap().to_string();

        // A server holds the database: the same request goes through its socket.
        let db = Arc::new(Db::open(dir.path()).unwrap());
        assert!(matches!(
            Db::open(dir.path()),
            Err(EndpointError::InUse { .. })
        ));
        let socket = AdminSocket::start(dir.path(), db.clone()).unwrap();
        let (created, through_server) = run(
            dir.path(),
            &AdminRequest::CreateToken {
                cluster: "c2".into(),
            },
        )
        .unwrap();
        assert!(through_server);
        let second = created["token"].as_str().unwrap();
        for (token, cluster) in [(first.as_str(), "c1"), (second, "c2")] {
            assert_eq!(
                db.cluster_of_token(&crate::auth::token_hash(token))
                    .unwrap()
                    .as_deref(),
                Some(cluster)
            );
        }
        // A refusal comes back as the same error.
        let refused = run(
            dir.path(),
            &AdminRequest::SetBug {
                id: 99,
                status: Some("closed".into()),
                workaround: None,
            },
        );
        assert!(
            matches!(refused, Err(EndpointError::NotFound(_))),
            "{refused:?}"
        );
        // A reader works beside the writer and sees its commits.
        let reader = Db::open_for_reading(dir.path()).unwrap();
        assert_eq!(
            reader
                .cluster_of_token(&crate::auth::token_hash(second))
                .unwrap()
                .as_deref(),
            Some("c2")
        );
        // Garbage on the socket gets an error, and the server carries on.
        let mut stream = UnixStream::connect(socket_path(dir.path())).unwrap();
        stream
            .write_all(b"{\"command\":\"drop_tables\"}\n")
            .unwrap();
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply).unwrap();
        assert!(reply.contains("not an admin request"), "{reply}");
        assert!(
            run(
                dir.path(),
                &AdminRequest::CreateToken {
                    cluster: "c3".into()
                }
            )
            .unwrap()
            .1
        );

        // Stopped, the socket is gone and the database free again.
        socket.stop();
        drop(reader);
        drop(db);
        assert!(!socket_path(dir.path()).exists());
        assert!(
            !run(
                dir.path(),
                &AdminRequest::CreateToken {
                    cluster: "c4".into()
                }
            )
            .unwrap()
            .1
        );
    }
}

//! The CLI's requests, reads (`bug show`, `bug list`, `export`) and changes (`token
//! create`, `bug set`, `core-request`), whether or not a server runs on the data dir.
//!
//! Only one process may open the metadata database (see [`crate::storage::db`]), not even
//! to read.
//! With no server running, the CLI opens it and answers the request itself. While
//! `crashmesh endpoint run` has it, the CLI hands the same request to the server over
//! `DATA_DIR/endpoint.sock`, a Unix socket only its owner may use (as
//! `DATA_DIR/admin.token` is the owner's only), and the server answers it with the same
//! code, on its own database and blob storage.
//!
//! Invariants: one request per connection, one JSON line each way, the request at most
//! [`ADMIN_REQUEST_BYTES_MAX`]; a malformed request gets an error answer and the server
//! carries on; every request goes through [`execute`], whoever asked.
//!
//! An export can take long. The server runs it on a thread of its own, at most
//! [`EXPORTS_IN_FLIGHT_MAX`] at once (another is refused), so the socket keeps answering
//! the other requests meanwhile; the CLI waits for its answer up to
//! [`EXPORT_ANSWER_TIMEOUT`]. The server writes the files, as its own user, under the
//! directory named, which must be absolute (the CLI's working directory is not the
//! server's).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::EndpointConfig;
use crate::error::EndpointError;
use crate::http::auth;
use crate::recording::open_database;
use crate::storage::blobs::Blobs;
use crate::storage::db::{COMMENTS_PER_BUG_MAX, Db};
use crate::time::now_ms;

/// The largest request line the server reads.
pub const ADMIN_REQUEST_BYTES_MAX: u64 = 64 * 1024;
/// How long one connection may take to send its request or read its answer (an export's
/// answer excepted), and the server to write one.
const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the CLI waits for a running server's export to finish.
pub const EXPORT_ANSWER_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Exports a server runs at once for the CLI.
pub const EXPORTS_IN_FLIGHT_MAX: usize = 1;

/// A request of the CLI: a read or a change.
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
    /// A bug with its latest comments (`bug show`).
    ShowBug { id: u64 },
    /// Every bug, newest first (`bug list`).
    ListBugs,
    /// Every report and attachment written under `out`, an absolute path (`export`).
    Export { out: PathBuf },
}

/// The answer on the socket: the request's JSON, or why it failed.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum AdminAnswer {
    Done(serde_json::Value),
    Failed { error: String, code: String },
}

/// What [`execute`] answers with.
#[derive(Clone)]
pub struct AdminContext {
    /// The metadata database, held as its writer.
    pub db: Arc<Db>,
    /// The blob storage on `db`, for exports; `None` where it is not open (the CLI
    /// without a server opens it only for an export).
    pub blobs: Option<Blobs>,
    /// The base URL of bug links.
    pub public_url: String,
}

/// The socket of the server running on `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("endpoint.sock")
}

fn to_json(value: &impl Serialize) -> Result<serde_json::Value, EndpointError> {
    serde_json::to_value(value).map_err(|error| EndpointError::Database(error.to_string()))
}

/// Answers the request (making the change, for a change) and returns what the CLI prints
/// with `--json`.
pub fn execute(
    context: &AdminContext,
    request: &AdminRequest,
) -> Result<serde_json::Value, EndpointError> {
    let db = &context.db;
    let now_ms = now_ms();
    match request {
        AdminRequest::CreateToken { cluster } => {
            let token = auth::create_cluster_token(db, cluster)?;
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
        } => to_json(&db.set_bug(*id, status.as_deref(), workaround.as_deref(), now_ms)?),
        AdminRequest::ShowBug { id } => {
            let view = db
                .bug_view(*id, COMMENTS_PER_BUG_MAX)?
                .ok_or_else(|| EndpointError::NotFound(format!("no bug {id}")))?;
            to_json(&view)
        }
        AdminRequest::ListBugs => Ok(serde_json::json!({ "bugs": db.bugs()? })),
        AdminRequest::Export { out } => {
            if !out.is_absolute() {
                return Err(EndpointError::BadRequest(format!(
                    "the export directory {} is not an absolute path",
                    out.display()
                )));
            }
            let blobs = context.blobs.as_ref().ok_or_else(|| {
                EndpointError::Config("an export needs the blob storage, which is not open".into())
            })?;
            to_json(&crate::export::export_from(
                db,
                blobs,
                &context.public_url,
                out,
            )?)
        }
    }
}

/// Answers the request: on the database when no server has it, else through the server's
/// socket. The second element tells which (true: the running server answered).
pub fn run(
    config: &EndpointConfig,
    request: &AdminRequest,
) -> Result<(serde_json::Value, bool), EndpointError> {
    match open_database(&config.data_dir) {
        Ok((db, _journal)) => {
            let db = Arc::new(db);
            // Only an export reads chunks; the other requests leave the storage alone.
            let blobs = match request {
                AdminRequest::Export { .. } => {
                    Some(Blobs::open(&config.storage, &config.data_dir, db.clone())?)
                }
                _ => None,
            };
            let context = AdminContext {
                db,
                blobs,
                public_url: config.public_url(None),
            };
            Ok((execute(&context, request)?, false))
        }
        Err(EndpointError::InUse { path }) => {
            let socket = socket_path(&config.data_dir);
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

/// An error as the socket carries it: the kinds [`remote_error`] rebuilds go as their
/// detail, the others as their whole message.
fn failed(error: &EndpointError) -> AdminAnswer {
    let text = match error {
        EndpointError::BadRequest(detail)
        | EndpointError::NotFound(detail)
        | EndpointError::TooMany(detail)
        | EndpointError::Conflict(detail)
        | EndpointError::Config(detail)
        | EndpointError::Storage(detail)
        | EndpointError::Database(detail) => detail.clone(),
        EndpointError::Exists { path } => path.clone(),
        other => other.to_string(),
    };
    AdminAnswer::Failed {
        error: text,
        code: error.code().into(),
    }
}

/// A server's refusal as the error it was (so the CLI says the same either way).
fn remote_error(error: String, code: &str) -> EndpointError {
    match code {
        "bad_request" => EndpointError::BadRequest(error),
        "not_found" => EndpointError::NotFound(error),
        "too_many_requests" => EndpointError::TooMany(error),
        "conflict" => EndpointError::Conflict(error),
        "config" => EndpointError::Config(error),
        "storage" => EndpointError::Storage(error),
        "exists" => EndpointError::Exists { path: error },
        _ => EndpointError::Database(error),
    }
}

fn ask(socket: &Path, request: &AdminRequest) -> std::io::Result<AdminAnswer> {
    let mut stream = UnixStream::connect(socket)?;
    let answer_timeout = match request {
        AdminRequest::Export { .. } => EXPORT_ANSWER_TIMEOUT,
        _ => ADMIN_IO_TIMEOUT,
    };
    stream.set_read_timeout(Some(answer_timeout))?;
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
    /// Listens on `DATA_DIR/endpoint.sock` (owner only) and answers with `db` and `blobs`
    /// (the server's own: a second [`Blobs`] would open the packs as a second writer);
    /// bug links start with `public_url`. The caller holds `db` as its writer, so a
    /// socket file there is a dead server's: replaced.
    pub fn start(
        data_dir: &Path,
        db: Arc<Db>,
        blobs: Blobs,
        public_url: String,
    ) -> Result<AdminSocket, EndpointError> {
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
        let context = AdminContext {
            db,
            blobs: Some(blobs),
            public_url,
        };
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let stopping = stopping.clone();
            std::thread::Builder::new()
                .name("admin-socket".into())
                .spawn(move || serve(listener, &context, &stopping))
                .map_err(|error| EndpointError::io("spawn", Path::new("admin socket"), error))?
        };
        Ok(AdminSocket {
            path,
            stopping,
            thread: Some(thread),
        })
    }

    /// Stops answering, waits for an export in progress, removes the socket and lets go
    /// of the database and the blob storage.
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

/// The exports running for the CLI, each on its own thread.
#[derive(Default)]
struct Exports {
    /// Exports not yet done; an export counts itself out before it answers, so that the
    /// CLI may start the next one as soon as it has the answer.
    running: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Exports {
    /// Runs the export on its own thread and answers on `stream`; refuses it when
    /// [`EXPORTS_IN_FLIGHT_MAX`] run.
    fn start(
        &mut self,
        stream: UnixStream,
        context: &AdminContext,
        request: AdminRequest,
    ) -> std::io::Result<()> {
        for thread in self.threads.extract_if(.., |thread| thread.is_finished()) {
            let _ = thread.join();
        }
        if self.running.load(Ordering::SeqCst) >= EXPORTS_IN_FLIGHT_MAX {
            return reply(
                &stream,
                &failed(&EndpointError::TooMany(format!(
                    "{EXPORTS_IN_FLIGHT_MAX} export(s) already running; try again when done"
                ))),
            );
        }
        self.running.fetch_add(1, Ordering::SeqCst);
        let running = self.running.clone();
        let context = context.clone();
        let spawned = std::thread::Builder::new()
            .name("admin-export".into())
            .spawn(move || {
                let answer = answer_request(&context, &request);
                running.fetch_sub(1, Ordering::SeqCst);
                if let Err(error) = reply(&stream, &answer) {
                    tracing::warn!(%error, "cannot answer the CLI's export");
                }
            });
        match spawned {
            Ok(thread) => {
                self.threads.push(thread);
                Ok(())
            }
            Err(error) => {
                self.running.fetch_sub(1, Ordering::SeqCst);
                Err(error)
            }
        }
    }

    /// Waits for the exports running.
    fn wait(self) {
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

fn serve(listener: UnixListener, context: &AdminContext, stopping: &AtomicBool) {
    let mut exports = Exports::default();
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            break;
        }
        match stream {
            Ok(stream) => {
                if let Err(error) = answer(stream, context, &mut exports) {
                    tracing::warn!(%error, "an admin socket connection failed");
                }
            }
            Err(error) => tracing::warn!(%error, "the admin socket cannot accept"),
        }
    }
    exports.wait();
}

fn answer(
    stream: UnixStream,
    context: &AdminContext,
    exports: &mut Exports,
) -> std::io::Result<()> {
    // The write timeout bounds each write, not the connection: an answer written after a
    // long export has it all.
    stream.set_read_timeout(Some(ADMIN_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(ADMIN_IO_TIMEOUT))?;
    let mut line = Vec::new();
    BufReader::new((&stream).take(ADMIN_REQUEST_BYTES_MAX)).read_until(b'\n', &mut line)?;
    let request = match serde_json::from_slice::<AdminRequest>(&line) {
        Ok(request) => request,
        Err(error) => {
            return reply(
                &stream,
                &AdminAnswer::Failed {
                    error: format!("not an admin request: {error}"),
                    code: "bad_request".into(),
                },
            );
        }
    };
    match request {
        AdminRequest::Export { .. } => exports.start(stream, context, request),
        _ => reply(&stream, &answer_request(context, &request)),
    }
}

fn answer_request(context: &AdminContext, request: &AdminRequest) -> AdminAnswer {
    match execute(context, request) {
        Ok(value) => {
            tracing::info!(?request, "answered the CLI");
            AdminAnswer::Done(value)
        }
        Err(error) => failed(&error),
    }
}

fn reply(mut stream: &UnixStream, answer: &AdminAnswer) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(answer)?;
    out.push(b'\n');
    stream.write_all(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(data_dir: &Path) -> EndpointConfig {
        EndpointConfig {
            data_dir: data_dir.to_path_buf(),
            ..Default::default()
        }
    }

    /// The socket a server holding `db` would start.
    fn start_socket(config: &EndpointConfig, db: &Arc<Db>) -> AdminSocket {
        let blobs = Blobs::open(&config.storage, &config.data_dir, db.clone()).unwrap();
        AdminSocket::start(&config.data_dir, db.clone(), blobs, config.public_url(None)).unwrap()
    }

    #[test]
    fn a_request_goes_to_the_database_or_through_the_running_servers_socket() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        // No server: the CLI writes and reads itself.
        let (created, through_server) = run(
            &config,
            &AdminRequest::CreateToken {
                cluster: "c1".into(),
            },
        )
        .unwrap();
        assert!(!through_server);
        let first = created["token"].as_str().unwrap().to_string();
        assert_eq!(
            run(&config, &AdminRequest::ListBugs).unwrap(),
            (serde_json::json!({ "bugs": [] }), false)
        );

        // A server holds the database: the same requests go through its socket.
        let db = Arc::new(Db::open(dir.path()).unwrap());
        assert!(matches!(
            Db::open(dir.path()),
            Err(EndpointError::InUse { .. })
        ));
        let socket = start_socket(&config, &db);
        let (created, through_server) = run(
            &config,
            &AdminRequest::CreateToken {
                cluster: "c2".into(),
            },
        )
        .unwrap();
        assert!(through_server);
        let second = created["token"].as_str().unwrap();
        for (token, cluster) in [(first.as_str(), "c1"), (second, "c2")] {
            assert_eq!(
                db.cluster_of_token(&auth::token_hash(token))
                    .unwrap()
                    .as_deref(),
                Some(cluster)
            );
        }
        // A refusal comes back as the same error.
        let refused = run(
            &config,
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
        // Reads go through the socket too (nothing else may open the database), and see
        // what the server has.
        assert_eq!(
            run(&config, &AdminRequest::ListBugs).unwrap(),
            (serde_json::json!({ "bugs": [] }), true)
        );
        let missing = run(&config, &AdminRequest::ShowBug { id: 7 });
        match missing {
            Err(EndpointError::NotFound(detail)) => assert_eq!(detail, "no bug 7"),
            other => panic!("{other:?}"),
        }
        // An export too, written by the server with its own blob storage.
        let out = dir.path().join("export");
        let (summary, through_server) =
            run(&config, &AdminRequest::Export { out: out.clone() }).unwrap();
        assert!(through_server);
        assert_eq!(
            serde_json::from_value::<crate::export::ExportSummary>(summary).unwrap(),
            crate::export::ExportSummary::default()
        );
        assert!(out.join("problems.json").is_file());
        let relative = run(
            &config,
            &AdminRequest::Export {
                out: "export".into(),
            },
        );
        assert!(
            matches!(relative, Err(EndpointError::BadRequest(_))),
            "{relative:?}"
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
                &config,
                &AdminRequest::CreateToken {
                    cluster: "c3".into()
                }
            )
            .unwrap()
            .1
        );

        // Stopped, the socket is gone and the database free again.
        socket.stop();
        drop(db);
        assert!(!socket_path(dir.path()).exists());
        assert!(
            !run(
                &config,
                &AdminRequest::CreateToken {
                    cluster: "c4".into()
                }
            )
            .unwrap()
            .1
        );
        let out = dir.path().join("export-alone");
        let (summary, through_server) =
            run(&config, &AdminRequest::Export { out: out.clone() }).unwrap();
        assert!(!through_server);
        assert_eq!(summary["reports"], 0, "{summary}");
        assert!(out.join("problems.json").is_file());
    }

    #[test]
    fn a_long_export_holds_up_neither_the_socket_nor_the_next_export() {
        use std::os::unix::ffi::OsStrExt as _;
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let db = Arc::new(Db::open(dir.path()).unwrap());
        // A report whose one chunk is in the legacy layout (a file per chunk), as a FIFO:
        // the export waits there until the test writes the chunk into it.
        let raw = b"a log line of the held report\n".repeat(8);
        let chunk_id = blake3::hash(&raw).to_hex().to_string();
        let compressed = zstd::bulk::compress(&raw, 3).unwrap();
        let chunk_dir = dir.path().join("blobs/chunks").join(&chunk_id[..2]);
        std::fs::create_dir_all(&chunk_dir).unwrap();
        let fifo = chunk_dir.join(&chunk_id[2..]);
        let fifo_name = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo_name.as_ptr(), 0o600) }, 0);
        let report_id = "ab".repeat(32);
        let problem = crashmesh_protocol::Problem::new(
            crashmesh_protocol::ProblemKind::Core,
            "SIGSEGV in held",
        );
        let manifest = crashmesh_protocol::report::ReportManifest {
            format_version: crashmesh_protocol::report::REPORT_FORMAT_VERSION,
            report_id: report_id.clone(),
            cluster_id: "c1".into(),
            term: 1,
            customer_id: None,
            signature: "v1:core:held".into(),
            kind: problem.kind,
            problem,
            incidents: Vec::new(),
            attachments: vec![crashmesh_protocol::report::Attachment {
                name: "node-1/journal.log".into(),
                blob: crashmesh_protocol::report::BlobManifest {
                    blob_id: chunk_id.clone(),
                    len_bytes: raw.len() as u64,
                    chunks: vec![(chunk_id.clone(), raw.len() as u32)],
                },
            }],
            scrub: None,
            created_ms: 0,
        };
        {
            let txn = db.begin_write().unwrap();
            let row = crate::storage::db::ReportRow::encode_parts(&manifest, "0123456789abcdef", 1)
                .unwrap();
            txn.open_table(crate::storage::db::REPORTS)
                .unwrap()
                .insert(report_id.as_str(), row.as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let socket = start_socket(&config, &db);
        // Should the test fail, the export is let go (else stopping the socket would wait
        // for it forever): a writer that comes and goes gives its read an end.
        struct LetGo(PathBuf);
        impl Drop for LetGo {
            fn drop(&mut self) {
                use std::os::unix::fs::OpenOptionsExt as _;
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&self.0);
            }
        }
        let _let_go = LetGo(fifo.clone());
        let out = dir.path().join("export");
        let held = {
            let config = config.clone();
            let out = out.clone();
            std::thread::spawn(move || run(&config, &AdminRequest::Export { out }))
        };
        // It has reached the chunk once it wrote the report's JSON.
        let report_json = out.join("reports").join(&report_id).join("report.json");
        let begun = (0..2000).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            report_json.is_file()
        });
        assert!(begun, "{:?}", held.is_finished().then(|| held.join()));
        let second = run(
            &config,
            &AdminRequest::Export {
                out: dir.path().join("second"),
            },
        );
        assert!(
            matches!(second, Err(EndpointError::TooMany(_))),
            "{second:?}"
        );
        // The socket answers beside the export.
        assert_eq!(
            run(&config, &AdminRequest::ListBugs).unwrap(),
            (serde_json::json!({ "bugs": [] }), true)
        );
        // Let go of the export: the chunk arrives, it finishes and answers, and the next
        // may start.
        std::fs::write(&fifo, &compressed).unwrap();
        let (summary, through_server) = held.join().unwrap().unwrap();
        assert!(through_server);
        assert_eq!(summary["attachments"], 1, "{summary}");
        assert_eq!(
            std::fs::read(
                out.join("reports")
                    .join(&report_id)
                    .join("attachments/node-1/journal.log")
            )
            .unwrap(),
            raw
        );
        // The chunk as a plain file from now on.
        std::fs::remove_file(&fifo).unwrap();
        std::fs::write(&fifo, &compressed).unwrap();
        assert!(
            run(
                &config,
                &AdminRequest::Export {
                    out: dir.path().join("third"),
                },
            )
            .unwrap()
            .1
        );
        socket.stop();
    }

    #[test]
    fn a_refusal_through_the_socket_reads_as_it_would_without_a_server() {
        let errors = [
            EndpointError::BadRequest("status \"x\"".into()),
            EndpointError::NotFound("no bug 7".into()),
            EndpointError::TooMany("1 export(s) already running".into()),
            EndpointError::Conflict("c".into()),
            EndpointError::Config("[storage.s3] missing".into()),
            EndpointError::Storage("s3 down".into()),
            EndpointError::Database("d".into()),
            EndpointError::Exists {
                path: "/out/problems.json".into(),
            },
        ];
        for error in errors {
            let AdminAnswer::Failed { error: text, code } = failed(&error) else {
                unreachable!()
            };
            let rebuilt = remote_error(text, &code);
            assert_eq!(rebuilt.code(), error.code());
            assert_eq!(rebuilt.to_string(), error.to_string());
        }
        // Other kinds keep their whole message.
        let io = EndpointError::io(
            "create",
            Path::new("/out"),
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        let AdminAnswer::Failed { error: text, code } = failed(&io) else {
            unreachable!()
        };
        assert!(
            remote_error(text, &code)
                .to_string()
                .contains("create /out"),
            "{io}"
        );
    }
}

//! The HTTP server: routes, authentication, limits, and the upload protocol.
//!
//! Upload protocol (JSON bodies; `Authorization: Bearer <cluster token>`):
//! 1. `POST /api/v1/reports` with a [`ReportManifest`] → `202` and an [`UploadReply`] whose
//!    `missing_chunks` lists what to send, or `200` and the final reply when nothing is
//!    missing (the report is then recorded at once).
//! 2. `PUT /api/v1/chunks/{id}` per missing chunk: the body is the chunk as the node's
//!    store keeps it, one zstd frame; its decompressed bytes must hash (blake3) to `id`.
//!    `204` stored; `200` already stored.
//! 3. `POST /api/v1/reports/{id}/complete` → `200` and the final reply, or `202` with the
//!    chunks still missing.
//!
//! Later incidents: `POST /api/v1/incidents` with an [`IncidentUpdate`] → `200`.
//!
//! Refusals are JSON `{"error", "code"}`: 400 malformed, 401 token, 403 another cluster's
//! report, 404 unknown, 409 stale term / unwanted chunk, 413 over a limit, 429 over the
//! cluster's rate or the pending-upload limit.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::{ServerHandle, Service};
use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use crashmesh_protocol::Problem;
use crashmesh_protocol::report::{IncidentUpdate, ReportManifest, UploadReply, is_hex_id};
use futures_util::StreamExt;
use serde::Deserialize;

use crate::auth::{self, Auth};
use crate::blobs::Blobs;
use crate::chunk_buffer::ChunkBuffer;
use crate::config::EndpointConfig;
use crate::db::Db;
use crate::error::EndpointError;
use crate::ingest::{Committer, IngestContext};
use crate::metrics::Metrics;
use crate::pending::Pending;
use crate::ratelimit::RateLimiter;
use crate::symbolize::{self, Symbolizer};
use crate::webhook::Webhooks;

/// What the server does with requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerMode {
    /// The endpoint.
    Real,
    /// Reads every upload body and answers a fixed reply without doing the work: the
    /// benchmark's baseline for the cost of HTTP itself.
    Null,
}

/// Everything the handlers share.
pub struct AppState {
    pub config: EndpointConfig,
    pub db: Arc<Db>,
    pub blobs: Blobs,
    pub auth: Auth,
    pub pending: Pending,
    pub rate: RateLimiter,
    pub committer: Committer,
    pub metrics: Arc<Metrics>,
    pub symbolizer: Option<Arc<Symbolizer>>,
    pub public_url: String,
    /// The highest term seen per cluster, for early refusals.
    pub terms: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

/// A server running on its own thread.
pub struct RunningServer {
    /// The address it listens on.
    pub address: SocketAddr,
    /// `http(s)://address`.
    pub url: String,
    /// The admin token (dashboard writes, `/api/v1/bugs`, `/api/v1/tokens`).
    pub admin_token: String,
    /// The state, for tests and the CLI.
    pub state: Option<web::Data<AppState>>,
    /// The CLI's way in while the server has the database (`DATA_DIR/endpoint.sock`).
    admin_socket: Option<crate::local::AdminSocket>,
    handle: ServerHandle,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// Stops accepting, finishes requests in flight, and waits for the threads: once it
    /// returns, the database is free for another open.
    pub fn stop(self) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        runtime.block_on(self.handle.stop(true));
        let _ = self.thread.join();
        // Everything that holds the database lets go of it before this returns.
        if let Some(state) = self.state {
            state.committer.stop();
        }
        if let Some(socket) = self.admin_socket {
            socket.stop();
        }
    }

    /// Waits until the server stops (a signal).
    pub fn wait(self) -> std::io::Result<()> {
        let served = self
            .thread
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the server thread panicked")));
        if let Some(state) = self.state {
            state.committer.stop();
        }
        if let Some(socket) = self.admin_socket {
            socket.stop();
        }
        served
    }
}

fn tls_config(tls: &crate::config::TlsConfig) -> Result<rustls::ServerConfig, EndpointError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|certs| certs.collect())
        .map_err(|error| EndpointError::Config(format!("{}: {error}", tls.cert_file.display())))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|error| EndpointError::Config(format!("{}: {error}", tls.key_file.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|error| EndpointError::Config(format!("TLS: {error}")))
}

/// Installs aws-lc-rs as the process's rustls provider (webhooks to https URLs use it);
/// harmless when one is installed already.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Opens the data dir and starts the server on its own thread.
pub fn start(config: EndpointConfig, mode: ServerMode) -> Result<RunningServer, EndpointError> {
    install_crypto_provider();
    let listener = TcpListener::bind(&config.listen).map_err(|error| EndpointError::Io {
        what: "listen on",
        path: config.listen.clone(),
        source: error,
    })?;
    let address = listener
        .local_addr()
        .map_err(|error| EndpointError::io("listen", std::path::Path::new("socket"), error))?;
    let public_url = config.public_url(Some(address));
    let url = {
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{address}")
    };
    let tls = config.tls.as_ref().map(tls_config).transpose()?;
    let workers = if config.workers == 0 {
        std::thread::available_parallelism().map_or(2, |count| count.get())
    } else {
        config.workers
    };
    let limits = config.limits.clone();
    let mut admin_socket = None;
    let (state, admin_token) = match mode {
        ServerMode::Real => {
            let db = Arc::new(Db::open(&config.data_dir)?);
            let blobs = Blobs::open(&config, db.clone())?;
            admin_socket = Some(crate::local::AdminSocket::start(
                &config.data_dir,
                db.clone(),
                blobs.clone(),
                public_url.clone(),
            )?);
            let admin_token = auth::admin_token(&config.data_dir)?;
            let metrics = Arc::new(Metrics::default());
            let webhooks = Webhooks::start(&config.webhooks, metrics.clone());
            let committer = Committer::start(
                db.clone(),
                config.rules.clone().into(),
                IngestContext {
                    blobs: blobs.clone(),
                    public_url: public_url.clone(),
                    webhooks,
                    metrics: metrics.clone(),
                    // At least 1 ms: the committer waits this long for a job when idle.
                    checkpoint_interval: Duration::from_millis(config.storage.checkpoint_ms.max(1)),
                },
            )?;
            let state = AppState {
                blobs,
                auth: Auth::new(db.clone(), &admin_token),
                pending: Pending::new(
                    limits.pending_reports_max,
                    Duration::from_secs(limits.pending_report_secs_max),
                ),
                rate: RateLimiter::new(
                    limits.cluster_reports_per_sec_max,
                    limits.cluster_reports_burst_max,
                ),
                committer,
                symbolizer: config
                    .symbols_dir
                    .clone()
                    .map(|dir| Arc::new(Symbolizer::new(dir))),
                metrics,
                db,
                public_url,
                terms: Default::default(),
                config,
            };
            (Some(web::Data::new(state)), admin_token)
        }
        ServerMode::Null => (None, String::new()),
    };
    let factory_state = state.clone();
    let (handle_sender, handle_receiver) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    let app = App::new();
                    match &factory_state {
                        Some(state) => {
                            app.configure(|config| routes(config, state.clone(), &limits))
                        }
                        None => app.configure(|config| null_routes(config, &limits)),
                    }
                })
                .workers(workers)
                .backlog(4096)
                .max_connections(25_000);
                let server = match tls {
                    Some(tls) => server.listen_rustls_0_23(listener, tls)?,
                    None => server.listen(listener)?,
                }
                .run();
                let _ = handle_sender.send(server.handle());
                server.await
            })
        })
        .map_err(|error| EndpointError::io("spawn", std::path::Path::new("http thread"), error))?;
    let handle = handle_receiver
        .recv()
        .map_err(|_| EndpointError::Config("the server did not start".into()))?;
    tracing::info!(%url, ?mode, "endpoint listening");
    Ok(RunningServer {
        address,
        url,
        admin_token,
        state,
        admin_socket,
        handle,
        thread,
    })
}

fn routes(
    config: &mut web::ServiceConfig,
    state: web::Data<AppState>,
    limits: &crate::config::Limits,
) {
    let metrics = state.metrics.clone();
    config.app_data(state).service(
        web::scope("")
            .wrap_fn(move |request, service| {
                let metrics = metrics.clone();
                let response = service.call(request);
                async move {
                    let response = response.await?;
                    let status = response.status();
                    if status.is_client_error() || status.is_server_error() {
                        Metrics::add(&metrics.requests_refused, 1);
                    }
                    Ok(response)
                }
            })
            // Chunks first: the most frequent request, matched before the patterns above
            // it would be tried.
            .service(
                web::resource("/api/v1/chunks/{id}")
                    .route(web::put().to(put_chunk))
                    .route(web::get().to(get_chunk)),
            )
            .service(
                web::resource("/api/v1/reports")
                    .app_data(web::PayloadConfig::new(limits.manifest_bytes_max))
                    .route(web::post().to(post_report)),
            )
            .service(
                web::resource("/api/v1/reports/{id}/complete")
                    .app_data(web::PayloadConfig::new(4096))
                    .route(web::post().to(complete_report)),
            )
            .service(web::resource("/api/v1/reports/{id}").route(web::get().to(get_report)))
            .service(
                web::resource("/api/v1/incidents")
                    .app_data(web::PayloadConfig::new(limits.update_bytes_max))
                    .route(web::post().to(post_incidents)),
            )
            .service(
                web::resource("/api/v1/problems")
                    .route(web::get().to(crate::dashboard::api_problems)),
            )
            .service(
                web::resource("/api/v1/problems/{id}")
                    .route(web::get().to(crate::dashboard::api_problem)),
            )
            .service(
                web::resource("/api/v1/problems/{id}/core-request")
                    .app_data(web::PayloadConfig::new(4096))
                    .route(web::post().to(crate::dashboard::api_core_request)),
            )
            .service(
                web::resource("/api/v1/bugs/{id}")
                    .app_data(web::PayloadConfig::new(64 * 1024))
                    .route(web::get().to(crate::dashboard::api_bug))
                    .route(web::post().to(crate::dashboard::api_set_bug)),
            )
            .service(
                web::resource("/api/v1/tokens")
                    .app_data(web::PayloadConfig::new(4096))
                    .route(web::post().to(post_token)),
            )
            .service(web::resource("/metrics").route(web::get().to(metrics_text)))
            .service(web::resource("/healthz").route(web::get().to(|| async { "ok\n" })))
            .service(web::resource("/").route(web::get().to(crate::dashboard::index)))
            .service(
                web::resource("/problems/{id}")
                    .route(web::get().to(crate::dashboard::problem_page)),
            )
            .service(
                web::resource("/problems/{id}/core-request")
                    .app_data(web::FormConfig::default().limit(4096))
                    .route(web::post().to(crate::dashboard::form_core_request)),
            )
            .service(
                web::resource("/problems/{id}/bug")
                    .app_data(web::FormConfig::default().limit(64 * 1024))
                    .route(web::post().to(crate::dashboard::form_set_bug)),
            )
            .service(
                web::resource("/reports/{report}/attachments/{name:.*}")
                    .route(web::get().to(crate::dashboard::attachment)),
            ),
    );
}

fn null_routes(config: &mut web::ServiceConfig, limits: &crate::config::Limits) {
    async fn read_and_answer(body: web::Bytes) -> HttpResponse {
        let reply = UploadReply {
            problem_id: "0000000000000000".into(),
            known: false,
            bug: None,
            workaround: None,
            missing_chunks: Vec::new(),
        };
        std::hint::black_box(&body);
        HttpResponse::Ok().json(reply)
    }
    async fn read_chunk(body: web::Bytes) -> HttpResponse {
        std::hint::black_box(&body);
        HttpResponse::NoContent().finish()
    }
    config
        .service(
            web::resource("/api/v1/reports")
                .app_data(web::PayloadConfig::new(limits.manifest_bytes_max))
                .route(web::post().to(read_and_answer)),
        )
        .service(
            web::resource("/api/v1/reports/{id}/complete").route(web::post().to(read_and_answer)),
        )
        .service(
            web::resource("/api/v1/chunks/{id}")
                .app_data(web::PayloadConfig::new(limits.chunk_body_bytes_max))
                .route(web::put().to(read_chunk)),
        )
        .service(
            web::resource("/api/v1/incidents")
                .app_data(web::PayloadConfig::new(limits.update_bytes_max))
                .route(web::post().to(read_and_answer)),
        )
        .service(web::resource("/healthz").route(web::get().to(|| async { "ok (null)\n" })));
}

fn bearer(request: &HttpRequest) -> Option<&str> {
    auth::bearer(
        request
            .headers()
            .get("authorization")
            .and_then(|value| value.to_str().ok()),
    )
}

impl AppState {
    /// The cluster of the request's token, charged against its rate when `rated`.
    fn cluster(&self, request: &HttpRequest, rated: bool) -> Result<String, EndpointError> {
        let cluster = self.auth.cluster(bearer(request))?;
        if rated && !self.rate.allow(&cluster, Instant::now()) {
            return Err(EndpointError::TooMany(format!(
                "cluster {cluster:?} is over {} reports per second",
                self.config.limits.cluster_reports_per_sec_max
            )));
        }
        Ok(cluster)
    }

    /// Refuses a term lower than the cluster's highest seen (an early answer from memory;
    /// the committer checks again against the database in the transaction that writes).
    fn check_term(&self, cluster: &str, term: u64) -> Result<(), EndpointError> {
        let cached = self.terms.lock().unwrap().get(cluster).copied();
        let highest = match cached {
            Some(highest) => highest,
            None => self.db.term(cluster)?,
        };
        {
            let mut terms = self.terms.lock().unwrap();
            if terms.len() >= crate::ratelimit::CLUSTERS_TRACKED_MAX {
                terms.clear();
            }
            terms.insert(cluster.to_string(), highest.max(term));
        }
        if term < highest {
            return Err(EndpointError::StaleTerm {
                cluster: cluster.to_string(),
                term,
                highest,
            });
        }
        Ok(())
    }

    /// What is known about a problem now, for a reply before completion.
    fn current_reply(
        &self,
        problem_id: &str,
        missing_chunks: Vec<String>,
    ) -> Result<UploadReply, EndpointError> {
        let row = self.db.problem(problem_id)?;
        let bug = match row.as_ref().and_then(|row| row.bug) {
            Some(id) => self.db.bug(id)?,
            None => None,
        };
        Ok(UploadReply {
            problem_id: problem_id.to_string(),
            known: row.is_some(),
            bug: bug.as_ref().map(|bug| bug.to_ref(&self.public_url)),
            workaround: bug.and_then(|bug| bug.workaround),
            missing_chunks,
        })
    }

    /// The analysis to keep when it is not the manifest's problem as sent: that problem
    /// re-symbolized, where symbols are configured and it wants them.
    async fn analysis(&self, manifest: &ReportManifest) -> Result<Option<Problem>, EndpointError> {
        let Some(symbolizer) = &self.symbolizer else {
            return Ok(None);
        };
        if !symbolize::wants_symbols(&manifest.problem) {
            return Ok(None);
        }
        let mut problem = manifest.problem.clone();
        let symbolizer = symbolizer.clone();
        problem = web::block(move || {
            symbolizer.problem(&mut problem);
            problem
        })
        .await
        .map_err(|error| EndpointError::Database(format!("symbolizer: {error}")))?;
        Ok(Some(problem))
    }

    /// Records a report whose chunks are all stored.
    async fn finish(&self, manifest: Arc<ReportManifest>) -> Result<UploadReply, EndpointError> {
        let analysis = self.analysis(&manifest).await?;
        let result = self.committer.complete(manifest.clone(), analysis).await;
        if matches!(&result, Ok(_) | Err(EndpointError::StaleTerm { .. })) {
            self.pending.remove(&manifest.report_id);
        }
        result
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, EndpointError> {
    serde_json::from_slice(body)
        .map_err(|error| EndpointError::BadRequest(format!("{what} is not valid JSON: {error}")))
}

fn check_cluster(token_cluster: &str, named: &str) -> Result<(), EndpointError> {
    if token_cluster != named {
        return Err(EndpointError::WrongCluster {
            token_cluster: token_cluster.to_string(),
            named: named.to_string(),
        });
    }
    Ok(())
}

async fn post_report(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, EndpointError> {
    let cluster = state.cluster(&request, true)?;
    let manifest: ReportManifest = parse_json("the manifest", &body)?;
    manifest.validate()?;
    let chunk_count = manifest.chunk_count();
    if chunk_count > state.config.limits.chunks_per_report_max {
        return Err(EndpointError::TooLarge {
            what: "chunks per report",
            value: chunk_count as u64,
            limit: state.config.limits.chunks_per_report_max as u64,
        });
    }
    check_cluster(&cluster, &manifest.cluster_id)?;
    state.check_term(&cluster, manifest.term)?;
    let manifest = Arc::new(manifest);
    // A report already stored has all its chunks: it goes straight to the committer,
    // which answers a repeat without storing anything again.
    let missing = state.blobs.missing(&manifest.chunk_ids()).await?;
    if missing.is_empty() {
        let reply = state.finish(manifest).await?;
        return Ok(HttpResponse::Ok().json(reply));
    }
    let problem_id = crashmesh_store::problem_id_for(&manifest.signature, &manifest.report_id);
    state
        .pending
        .insert(manifest.clone(), missing.clone(), Instant::now())?;
    let reply = state.current_reply(&problem_id, missing)?;
    Ok(HttpResponse::Accepted().json(reply))
}

fn report_id_of(path: &str) -> Result<String, EndpointError> {
    if !is_hex_id(path) {
        return Err(EndpointError::BadRequest(format!(
            "report id {path:?} is not 64 lower-case hex digits"
        )));
    }
    Ok(path.to_string())
}

async fn complete_report(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, EndpointError> {
    let cluster = state.cluster(&request, true)?;
    let report_id = report_id_of(&path)?;
    if let Some((manifest, missing)) = state.pending.get(&report_id) {
        check_cluster(&cluster, &manifest.cluster_id)?;
        let missing = if missing.is_empty() {
            missing
        } else {
            let ids: Vec<&str> = missing.iter().map(String::as_str).collect();
            state.blobs.missing(&ids).await?
        };
        if !missing.is_empty() {
            let problem_id =
                crashmesh_store::problem_id_for(&manifest.signature, &manifest.report_id);
            let reply = state.current_reply(&problem_id, missing)?;
            return Ok(HttpResponse::Accepted().json(reply));
        }
        let reply = state.finish(manifest).await?;
        return Ok(HttpResponse::Ok().json(reply));
    }
    match state.db.report(&report_id)? {
        Some(stored) => {
            check_cluster(&cluster, &stored.manifest.cluster_id)?;
            let mut reply = state.current_reply(&stored.problem_id, Vec::new())?;
            reply.known = true;
            Ok(HttpResponse::Ok().json(reply))
        }
        None => Err(EndpointError::NotFound(format!(
            "report {report_id} (post its manifest first)"
        ))),
    }
}

async fn get_report(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, EndpointError> {
    let report_id = report_id_of(&path)?;
    match state.db.report(&report_id)? {
        Some(row) => Ok(HttpResponse::Ok().json(serde_json::json!({
            "report_id": report_id,
            "problem_id": row.problem_id,
            "received_ms": row.received_ms,
            "manifest": row.manifest,
        }))),
        None => Err(EndpointError::NotFound(format!("report {report_id}"))),
    }
}

async fn put_chunk(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
    mut payload: web::Payload,
) -> Result<HttpResponse, EndpointError> {
    let cluster = state.cluster(&request, false)?;
    let id = path.into_inner();
    if !is_hex_id(&id) {
        return Err(EndpointError::BadRequest(format!(
            "chunk id {id:?} is not 64 lower-case hex digits"
        )));
    }
    let chunk_bytes_max = state.config.limits.chunk_body_bytes_max;
    let too_large = |value: u64| EndpointError::TooLarge {
        what: "chunk body bytes",
        value,
        limit: chunk_bytes_max as u64,
    };
    let announced = request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if let Some(announced) = announced.filter(|len| *len > chunk_bytes_max as u64) {
        return Err(too_large(announced));
    }
    if !state.pending.wants(&cluster, &id) {
        if state.blobs.has(&id).await? {
            return Ok(HttpResponse::Ok().finish());
        }
        return Err(EndpointError::Conflict(format!(
            "no pending report of cluster {cluster:?} names chunk {id}"
        )));
    }
    // The body goes straight into the buffer its pack record is written from.
    let mut chunk = ChunkBuffer::with_limit(announced.map_or(chunk_bytes_max, |len| len as usize));
    while let Some(piece) = payload.next().await {
        let piece = piece
            .map_err(|error| EndpointError::BadRequest(format!("reading chunk {id}: {error}")))?;
        chunk
            .extend(&piece)
            .map_err(|_| too_large((chunk.frame().len() + piece.len()) as u64))?;
    }
    let compressed_len = chunk.frame().len();
    let raw_len = state.blobs.put_verified(&id, chunk).await?;
    state.pending.arrived(&cluster, &id);
    Metrics::add(&state.metrics.chunks_stored, 1);
    Metrics::add(&state.metrics.chunk_bytes_received, compressed_len as u64);
    Metrics::add(&state.metrics.payload_bytes_stored, raw_len as u64);
    Ok(HttpResponse::NoContent().finish())
}

async fn get_chunk(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, EndpointError> {
    state.auth.admin(bearer(&request))?;
    let bytes = state.blobs.get(&path).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/zstd")
        .body(bytes))
}

async fn post_incidents(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, EndpointError> {
    let cluster = state.cluster(&request, true)?;
    let update: IncidentUpdate = parse_json("the incident update", &body)?;
    update.validate()?;
    check_cluster(&cluster, &update.cluster_id)?;
    state.check_term(&cluster, update.term)?;
    let reply = state.committer.update(update).await?;
    Ok(HttpResponse::Ok().json(reply))
}

#[derive(Deserialize)]
struct TokenRequest {
    cluster: String,
}

async fn post_token(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, EndpointError> {
    state.auth.admin(bearer(&request))?;
    let wanted: TokenRequest = parse_json("the token request", &body)?;
    let token = auth::create_cluster_token(&state.db, &wanted.cluster)?;
    Ok(HttpResponse::build(StatusCode::CREATED)
        .json(serde_json::json!({ "cluster": wanted.cluster, "token": token })))
}

async fn metrics_text(state: web::Data<AppState>) -> HttpResponse {
    let body = state.metrics.render(&[
        (
            "pending_reports",
            "Reports waiting for their chunks",
            state.pending.len() as u64,
        ),
        (
            "chunks_writing",
            "Chunks received and not yet written to their pack",
            state.blobs.chunks_writing() as u64,
        ),
    ]);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(body)
}

/// Used by the dashboard module.
pub(crate) fn admin_of(state: &AppState, token: Option<&str>) -> Result<(), EndpointError> {
    state.auth.admin(token)
}

/// Used by the dashboard module.
pub(crate) fn bearer_of(request: &HttpRequest) -> Option<&str> {
    bearer(request)
}

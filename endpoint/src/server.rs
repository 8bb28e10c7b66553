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
//! Refusals are JSON `{"error", "code"}`: 400 malformed, 401 token, 403 a manifest naming
//! another cluster than its token's, 404 unknown, 408 a body not received in time, 409
//! stale term, term too far ahead, another cluster's report id, unwanted chunk, 413 over a
//! limit, 429 over the cluster's rate or its (or the global) pending-upload limit.
//!
//! Who may do what: every route that returns stored data needs a token (bearer, or the
//! dashboard's session cookie, [`crate::auth`]); a cluster's token sees its own problems,
//! reports, attachments and bugs only ([`Viewer`]), the admin's everything; writes other
//! than uploads need the admin's; `/metrics` the metrics or the admin token; `/healthz` is
//! public. Invariants: a request's token is checked from its headers before any of its
//! body is read ([`read_body`] comes after the check in every handler that takes one), a
//! body has [`crate::config::Limits::body_read_secs_max`] to arrive, and every response
//! carries `nosniff`, a Content-Security-Policy without inline script or style, and
//! `frame-ancestors 'none'` ([`security_headers`]).

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

use crate::auth::{self, Auth, Credential, Viewer};
use crate::blobs::Blobs;
use crate::chunk_buffer::ChunkBuffer;
use crate::config::EndpointConfig;
use crate::db::Db;
use crate::error::EndpointError;
use crate::inflight::{BodyBudget, Reservation};
use crate::ingest::{Committer, IngestContext};
use crate::metrics::Metrics;
use crate::pending::{Pending, PendingLimits};
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
    /// Body bytes being read, per cluster and over all.
    pub bodies: BodyBudget,
    pub rate: RateLimiter,
    pub committer: Committer,
    pub metrics: Arc<Metrics>,
    pub symbolizer: Option<Arc<Symbolizer>>,
    pub public_url: String,
    /// The highest term admitted per cluster (as the committer answered), for early
    /// refusals.
    pub terms: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Session cookies get `Secure` (served over TLS, or behind an `https` public URL).
    pub secure_cookies: bool,
}

/// A server running on its own thread.
pub struct RunningServer {
    /// The address it listens on.
    pub address: SocketAddr,
    /// `http(s)://address`.
    pub url: String,
    /// The admin token (every read; dashboard writes, `/api/v1/bugs`, `/api/v1/tokens`).
    pub admin_token: String,
    /// The metrics token (`/metrics` only).
    pub metrics_token: String,
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
    let (state, admin_token, metrics_token) = match mode {
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
            let metrics_token = auth::metrics_token(&config.data_dir)?;
            let session_key = auth::session_key(&config.data_dir)?;
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
                auth: Auth::new(db.clone(), &admin_token, &metrics_token, session_key),
                pending: Pending::new(PendingLimits {
                    reports_max: limits.pending_reports_max,
                    cluster_reports_max: limits.cluster_pending_reports_max,
                    manifest_bytes_max: limits.pending_manifest_bytes_max,
                    cluster_manifest_bytes_max: limits.cluster_pending_manifest_bytes_max,
                    age_max: Duration::from_secs(limits.pending_report_secs_max),
                    idle_max: Duration::from_secs(limits.pending_report_idle_secs_max),
                }),
                bodies: BodyBudget::new(
                    limits.cluster_body_bytes_in_flight_max,
                    limits.body_bytes_in_flight_max,
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
                secure_cookies: config.tls.is_some() || public_url.starts_with("https://"),
                public_url,
                terms: Default::default(),
                config,
            };
            (Some(web::Data::new(state)), admin_token, metrics_token)
        }
        ServerMode::Null => (None, String::new(), String::new()),
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
                        Some(state) => app.configure(|config| routes(config, state.clone())),
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
        metrics_token,
        state,
        admin_socket,
        handle,
        thread,
    })
}

/// The headers every answer carries: no sniffing of a served attachment into HTML, no
/// script at all and styles from the server's own stylesheet only (the dashboard has no
/// script and no inline style), forms posted to the server alone, never framed, no
/// referrer leaving with a link, nothing of it cached.
pub const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("x-content-type-options", "nosniff"),
    (
        "content-security-policy",
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
];

/// Adds [`SECURITY_HEADERS`] to an answer.
fn security_headers(headers: &mut actix_web::http::header::HeaderMap) {
    use actix_web::http::header::{HeaderName, HeaderValue};
    for (name, value) in SECURITY_HEADERS {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
}

/// The endpoint's routes. Every handler that takes a body reads it itself, after its
/// token check ([`read_body`]): no route has a body extractor.
fn routes(config: &mut web::ServiceConfig, state: web::Data<AppState>) {
    let metrics = state.metrics.clone();
    config.app_data(state).service(
        web::scope("")
            .wrap_fn(move |request, service| {
                let metrics = metrics.clone();
                let response = service.call(request);
                async move {
                    let mut response = response.await?;
                    let status = response.status();
                    if status.is_client_error() || status.is_server_error() {
                        Metrics::add(&metrics.requests_refused, 1);
                        let code = response
                            .response()
                            .error()
                            .and_then(|error| error.as_error::<EndpointError>())
                            .map_or(
                                if status.is_client_error() {
                                    "other_client"
                                } else {
                                    "other_server"
                                },
                                EndpointError::code,
                            );
                        metrics.refused(code);
                    }
                    security_headers(response.headers_mut());
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
            .service(web::resource("/api/v1/reports").route(web::post().to(post_report)))
            .service(
                web::resource("/api/v1/reports/{id}/complete")
                    .route(web::post().to(complete_report)),
            )
            .service(web::resource("/api/v1/reports/{id}").route(web::get().to(get_report)))
            .service(web::resource("/api/v1/incidents").route(web::post().to(post_incidents)))
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
                    .route(web::post().to(crate::dashboard::api_core_request)),
            )
            .service(
                web::resource("/api/v1/bugs/{id}")
                    .route(web::get().to(crate::dashboard::api_bug))
                    .route(web::post().to(crate::dashboard::api_set_bug)),
            )
            .service(web::resource("/api/v1/tokens").route(web::post().to(post_token)))
            .service(web::resource("/metrics").route(web::get().to(metrics_text)))
            .service(web::resource("/healthz").route(web::get().to(|| async { "ok\n" })))
            .service(
                web::resource("/static/dashboard.css")
                    .route(web::get().to(crate::dashboard::stylesheet)),
            )
            .service(
                web::resource("/signin")
                    .route(web::get().to(crate::dashboard::signin_page))
                    .route(web::post().to(crate::dashboard::signin)),
            )
            .service(web::resource("/signout").route(web::post().to(crate::dashboard::signout)))
            .service(web::resource("/").route(web::get().to(crate::dashboard::index)))
            .service(
                web::resource("/problems/{id}")
                    .route(web::get().to(crate::dashboard::problem_page)),
            )
            .service(
                web::resource("/problems/{id}/core-request")
                    .route(web::post().to(crate::dashboard::form_core_request)),
            )
            .service(
                web::resource("/problems/{id}/bug")
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

/// The dashboard session cookie's value, if the request has one.
pub(crate) fn session_cookie(request: &HttpRequest) -> Option<&str> {
    request
        .headers()
        .get_all(actix_web::http::header::COOKIE)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            pair.trim()
                .strip_prefix(auth::SESSION_COOKIE)?
                .strip_prefix('=')
        })
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    crate::ingest::now_ms() / 1000
}

/// Who a body's bytes are counted against in [`BodyBudget`]: a cluster, or (the admin's
/// requests and the sign-in form) nobody's in particular.
pub(crate) const NO_CLUSTER: &str = "";

/// Reads a request's body, at most `bytes_max` (413 above, refused from `Content-Length`
/// before reading when it says so), within the body deadline (408), its bytes reserved
/// against `owner`'s share of [`BodyBudget`] while the reservation given back is held (429
/// when they do not fit). Handlers call it only after they checked the request's token:
/// nothing of a body is read for a request that would be refused for its token.
pub(crate) async fn read_body<'a>(
    state: &'a AppState,
    request: &HttpRequest,
    mut payload: web::Payload,
    what: &'static str,
    bytes_max: usize,
    owner: &str,
) -> Result<(web::Bytes, Reservation<'a>), EndpointError> {
    let too_large = |value: u64| EndpointError::TooLarge {
        what,
        value,
        limit: bytes_max as u64,
    };
    let announced = content_length(request);
    if let Some(announced) = announced.filter(|len| *len > bytes_max as u64) {
        return Err(too_large(announced));
    }
    let reservation = state
        .bodies
        .reserve(owner, announced.map_or(bytes_max, |len| len as usize))?;
    let mut body =
        web::BytesMut::with_capacity(announced.map_or(0, |len| len as usize).min(bytes_max));
    with_body_deadline(state, async {
        while let Some(piece) = payload.next().await {
            let piece = piece
                .map_err(|error| EndpointError::BadRequest(format!("reading {what}: {error}")))?;
            if body.len() + piece.len() > bytes_max {
                return Err(too_large((body.len() + piece.len()) as u64));
            }
            body.extend_from_slice(&piece);
        }
        Ok(())
    })
    .await??;
    Ok((body.freeze(), reservation))
}

/// Runs a body's reading within [`crate::config::Limits::body_read_secs_max`]: a client
/// that sends its body too slowly (or stops) is answered 408 and its connection closed,
/// rather than holding the buffer and the worker for as long as it likes.
pub(crate) async fn with_body_deadline<T>(
    state: &AppState,
    reading: impl std::future::Future<Output = T>,
) -> Result<T, EndpointError> {
    let secs = state.config.limits.body_read_secs_max.max(1);
    tokio::time::timeout(Duration::from_secs(secs), reading)
        .await
        .map_err(|_| EndpointError::BodyTimeout { secs })
}

fn content_length(request: &HttpRequest) -> Option<u64> {
    request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
}

impl AppState {
    /// The cluster of the request's bearer token, charged against its rate when `rated`.
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

    /// Who the request speaks for, and how it said so: its bearer token, else the
    /// dashboard's session cookie (a bearer header that does not verify is refused, not
    /// passed over for the cookie).
    pub(crate) fn caller(
        &self,
        request: &HttpRequest,
    ) -> Result<(Viewer, Credential), EndpointError> {
        if request.headers().contains_key("authorization") {
            return Ok((self.auth.viewer(bearer(request))?, Credential::Bearer));
        }
        let cookie = session_cookie(request).ok_or(EndpointError::Unauthorized)?;
        Ok((self.auth.session(cookie, now_secs())?, Credential::Session))
    }

    /// Ok when the request speaks for the admin, by its bearer token or (from the
    /// dashboard's own pages only, [`same_origin`]) its session.
    pub(crate) fn admin_form(&self, request: &HttpRequest) -> Result<(), EndpointError> {
        let (viewer, credential) = self.caller(request)?;
        if !viewer.is_admin() {
            return Err(EndpointError::Forbidden(
                "this needs the admin token".into(),
            ));
        }
        if credential == Credential::Session {
            same_origin(request)?;
        }
        Ok(())
    }

    /// The highest term admitted for the cluster, from memory or the database.
    fn highest_term(&self, cluster: &str) -> Result<u64, EndpointError> {
        if let Some(highest) = self.terms.lock().unwrap().get(cluster).copied() {
            return Ok(highest);
        }
        let highest = self.db.term(cluster)?;
        self.note_term(cluster, highest);
        Ok(highest)
    }

    /// Remembers a term the committer admitted for the cluster.
    fn note_term(&self, cluster: &str, term: u64) {
        let mut terms = self.terms.lock().unwrap();
        if terms.len() >= crate::ratelimit::CLUSTERS_TRACKED_MAX && !terms.contains_key(cluster) {
            terms.clear();
        }
        let highest = terms.entry(cluster.to_string()).or_insert(term);
        *highest = (*highest).max(term);
    }

    /// Refuses a term below the cluster's highest admitted, or too far above it (an early
    /// answer; the committer checks again in the transaction that writes).
    fn check_term(&self, cluster: &str, term: u64) -> Result<(), EndpointError> {
        crate::ingest::check_term_step(cluster, term, self.highest_term(cluster)?)
    }

    /// Refuses a report id another cluster stored (an early answer; the committer checks
    /// again in the transaction that writes).
    fn check_report_owner(&self, cluster: &str, report_id: &str) -> Result<(), EndpointError> {
        match self.db.report(report_id)? {
            Some(stored) => crate::ingest::check_owner(&stored, cluster),
            None => Ok(()),
        }
    }

    /// The chunks among `ids` the cluster has not sent (nor named in a report of its own
    /// stored before): whether another cluster stored them is never told, so every cluster
    /// sends (and has verified) the bytes of the chunks it names once.
    fn missing_for(&self, cluster: &str, ids: &[&str]) -> Result<Vec<String>, EndpointError> {
        for id in ids {
            if !is_hex_id(id) {
                return Err(EndpointError::BadRequest(format!("bad chunk id {id:?}")));
            }
        }
        let owned = self.db.cluster_has_chunks(cluster, ids)?;
        let mut seen = std::collections::HashSet::new();
        Ok(ids
            .iter()
            .zip(owned)
            .filter(|(id, owned)| !owned && seen.insert(**id))
            .map(|(id, _)| id.to_string())
            .collect())
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
        let cluster = manifest.cluster_id.as_str();
        let refused_for_good = |result: &Result<UploadReply, EndpointError>| {
            matches!(
                result,
                Ok(_)
                    | Err(EndpointError::StaleTerm { .. })
                    | Err(EndpointError::TermTooFar { .. })
                    | Err(EndpointError::ForeignReport { .. })
            )
        };
        if let Err(error) = self.check_report_owner(cluster, &manifest.report_id) {
            self.pending.remove(cluster, &manifest.report_id);
            return Err(error);
        }
        let analysis = self.analysis(&manifest).await?;
        let result = self.committer.complete(manifest.clone(), analysis).await;
        if result.is_ok() {
            self.note_term(cluster, manifest.term);
        }
        if refused_for_good(&result) {
            self.pending.remove(cluster, &manifest.report_id);
        }
        result
    }
}

/// Refuses a form whose page is not one of the server's own: `Sec-Fetch-Site` must say
/// `same-origin`, or (a browser without it) `Origin` must name the host asked. With the
/// session cookie's `SameSite=Strict`, a page of another site can make the browser neither
/// send the session nor pass this check.
pub(crate) fn same_origin(request: &HttpRequest) -> Result<(), EndpointError> {
    let headers = request.headers();
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        if site == "same-origin" {
            return Ok(());
        }
        return Err(EndpointError::Forbidden(format!(
            "a form posted from another site (Sec-Fetch-Site: {site})"
        )));
    }
    let Some(origin) = header("origin") else {
        return Err(EndpointError::Forbidden(
            "a form posted without Origin or Sec-Fetch-Site".into(),
        ));
    };
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    match (origin_host, header("host")) {
        (Some(origin_host), Some(host)) if origin_host == host => Ok(()),
        _ => Err(EndpointError::Forbidden(format!(
            "a form posted from another site (Origin: {origin})"
        ))),
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
    payload: web::Payload,
) -> Result<HttpResponse, EndpointError> {
    let cluster = state.cluster(&request, true)?;
    let (body, _held) = read_body(
        &state,
        &request,
        payload,
        "manifest bytes",
        state.config.limits.manifest_bytes_max,
        &cluster,
    )
    .await?;
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
    state.check_report_owner(&cluster, &manifest.report_id)?;
    let manifest = Arc::new(manifest);
    // A report already stored has all its chunks: it goes straight to the committer,
    // which answers a repeat without storing anything again.
    let missing = state.missing_for(&cluster, &manifest.chunk_ids())?;
    if missing.is_empty() {
        let reply = state.finish(manifest).await?;
        return Ok(HttpResponse::Ok().json(reply));
    }
    let problem_id = crashmesh_store::problem_id_for(&manifest.signature, &manifest.report_id);
    state.pending.insert(
        manifest.clone(),
        body.len(),
        missing.clone(),
        Instant::now(),
    )?;
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
    if let Some((manifest, missing)) = state.pending.get(&cluster, &report_id) {
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
            crate::ingest::check_owner(&stored, &cluster)?;
            let mut reply = state.current_reply(&stored.problem_id, Vec::new())?;
            reply.known = true;
            Ok(HttpResponse::Ok().json(reply))
        }
        None => Err(EndpointError::NotFound(format!(
            "report {report_id} (post its manifest first)"
        ))),
    }
}

/// A stored report `viewer` may see: the admin any, a cluster its own (another's is not
/// found, as one never stored).
pub(crate) fn report_for(
    state: &AppState,
    viewer: &Viewer,
    report_id: &str,
) -> Result<crate::db::ReportRow, EndpointError> {
    let not_found = || EndpointError::NotFound(format!("report {report_id}"));
    let row = state.db.report(report_id)?.ok_or_else(not_found)?;
    match viewer.cluster() {
        Some(cluster) if row.manifest.cluster_id != cluster => Err(not_found()),
        _ => Ok(row),
    }
}

async fn get_report(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, EndpointError> {
    let (viewer, _) = state.caller(&request)?;
    let report_id = report_id_of(&path)?;
    let row = report_for(&state, &viewer, &report_id)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "report_id": report_id,
        "problem_id": row.problem_id,
        "received_ms": row.received_ms,
        "manifest": row.manifest,
    })))
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
    let announced = content_length(&request);
    if let Some(announced) = announced.filter(|len| *len > chunk_bytes_max as u64) {
        return Err(too_large(announced));
    }
    if !state.pending.wants(&cluster, &id) {
        // Answered from what the cluster itself stored, never from whether another did.
        if state.db.cluster_has_chunks(&cluster, &[id.as_str()])?[0] {
            return Ok(HttpResponse::Ok().finish());
        }
        return Err(EndpointError::Conflict(format!(
            "no pending report of cluster {cluster:?} names chunk {id}"
        )));
    }
    let body_bytes = announced.map_or(chunk_bytes_max, |len| len as usize);
    let _held = state.bodies.reserve(&cluster, body_bytes)?;
    // The body goes straight into the buffer its pack record is written from.
    let mut chunk = ChunkBuffer::with_limit(body_bytes);
    with_body_deadline(&state, async {
        while let Some(piece) = payload.next().await {
            let piece = piece.map_err(|error| {
                EndpointError::BadRequest(format!("reading chunk {id}: {error}"))
            })?;
            chunk
                .extend(&piece)
                .map_err(|_| too_large((chunk.frame().len() + piece.len()) as u64))?;
        }
        Ok::<(), EndpointError>(())
    })
    .await??;
    let compressed_len = chunk.frame().len();
    // Stored by another cluster already: this cluster's bytes are verified all the same,
    // and kept once.
    let raw_len = if state.blobs.has(&id).await? {
        crate::blobs::check_chunk(&id, chunk.frame())?
    } else {
        state.blobs.put_verified(&id, chunk).await?
    };
    state.pending.arrived(&cluster, &id, Instant::now());
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
    payload: web::Payload,
) -> Result<HttpResponse, EndpointError> {
    let cluster = state.cluster(&request, true)?;
    let (body, _held) = read_body(
        &state,
        &request,
        payload,
        "incident update bytes",
        state.config.limits.update_bytes_max,
        &cluster,
    )
    .await?;
    let update: IncidentUpdate = parse_json("the incident update", &body)?;
    update.validate()?;
    check_cluster(&cluster, &update.cluster_id)?;
    state.check_term(&cluster, update.term)?;
    state.check_report_owner(&cluster, &update.report_id)?;
    let reply = state.committer.update(update.clone()).await?;
    state.note_term(&cluster, update.term);
    Ok(HttpResponse::Ok().json(reply))
}

/// Body bytes of the small admin requests (a token, a bug change, a core request, forms).
pub(crate) const SMALL_BODY_BYTES_MAX: usize = 64 * 1024;

#[derive(Deserialize)]
struct TokenRequest {
    cluster: String,
}

async fn post_token(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, EndpointError> {
    state.auth.admin(bearer(&request))?;
    let (body, _held) = read_body(
        &state,
        &request,
        payload,
        "token request bytes",
        4096,
        NO_CLUSTER,
    )
    .await?;
    let wanted: TokenRequest = parse_json("the token request", &body)?;
    let token = auth::create_cluster_token(&state.db, &wanted.cluster)?;
    Ok(HttpResponse::build(StatusCode::CREATED)
        .json(serde_json::json!({ "cluster": wanted.cluster, "token": token })))
}

/// `GET /metrics` (the metrics or the admin token): counters over all clusters, none per
/// cluster.
async fn metrics_text(
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, EndpointError> {
    state.auth.metrics(bearer(&request))?;
    let body = state.metrics.render(&[
        (
            "pending_reports",
            "Reports waiting for their chunks",
            state.pending.len() as u64,
        ),
        (
            "pending_manifest_bytes",
            "Manifest bytes held by the reports waiting for their chunks",
            state.pending.manifest_bytes() as u64,
        ),
        (
            "body_bytes_receiving",
            "Body bytes reserved by the requests whose bodies are being read",
            state.bodies.reserved_bytes() as u64,
        ),
        (
            "chunks_writing",
            "Chunks received and not yet written to their pack",
            state.blobs.chunks_writing() as u64,
        ),
    ]);
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(body))
}

/// Used by the dashboard module.
pub(crate) fn bearer_of(request: &HttpRequest) -> Option<&str> {
    bearer(request)
}

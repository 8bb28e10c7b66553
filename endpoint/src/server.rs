//! The endpoint as one running server: [`start`] opens the storage of the data dir
//! (replaying what a crash left in the journal), starts the committer, the admin socket
//! the CLI talks to, and the HTTP server; [`RunningServer::stop`] stops them in the
//! order that lets go of the database last.
//!
//! This module is above the layers and puts them together; none of them uses it.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::web;

use crate::config::EndpointConfig;
use crate::error::EndpointError;
use crate::http::AppState;
use crate::http::auth::{self, Auth};
use crate::http::inflight::BodyBudget;
use crate::http::listen::{self, Listening};
use crate::http::pending::{Pending, PendingLimits};
use crate::http::ratelimit::RateLimiter;
use crate::local::AdminSocket;
use crate::recording::metrics::Metrics;
use crate::recording::symbolize::Symbolizer;
use crate::recording::webhook::Webhooks;
use crate::recording::{Committer, IngestContext, open_database};
use crate::storage::blobs::Blobs;

/// What the server does with requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerMode {
    /// The endpoint.
    Real,
    /// Reads every upload body and answers a fixed reply without doing the work: the
    /// benchmark's baseline for the cost of HTTP itself.
    Null,
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
    admin_socket: Option<AdminSocket>,
    http: Listening,
}

impl RunningServer {
    /// Stops accepting, finishes requests in flight, and waits for the threads: once it
    /// returns, the database is free for another open.
    pub fn stop(self) {
        let RunningServer {
            state,
            admin_socket,
            http,
            ..
        } = self;
        http.stop();
        let_go(state, admin_socket);
    }

    /// Waits until the server stops (a signal).
    pub fn wait(self) -> std::io::Result<()> {
        let RunningServer {
            state,
            admin_socket,
            http,
            ..
        } = self;
        let served = http.wait();
        let_go(state, admin_socket);
        served
    }
}

/// Everything that holds the database lets go of it, once the HTTP server stopped: the
/// committer (which checkpoints), then the admin socket.
fn let_go(state: Option<web::Data<AppState>>, admin_socket: Option<AdminSocket>) {
    if let Some(state) = state {
        state.committer.stop();
    }
    if let Some(socket) = admin_socket {
        socket.stop();
    }
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
    let tls = config.tls.as_ref().map(listen::tls_config).transpose()?;
    let workers = if config.workers == 0 {
        std::thread::available_parallelism().map_or(2, |count| count.get())
    } else {
        config.workers
    };
    let limits = config.limits.clone();
    let mut admin_socket = None;
    let (state, admin_token, metrics_token) = match mode {
        ServerMode::Real => {
            let (db, journal) = open_database(&config.data_dir)?;
            let db = Arc::new(db);
            let blobs = Blobs::open(&config.storage, &config.data_dir, db.clone())?;
            admin_socket = Some(AdminSocket::start(
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
                journal,
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
                limits: limits.clone(),
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
                symbolizer: {
                    let mut symbols = config.symbols.clone();
                    if symbols.dir.is_none() {
                        symbols.dir = config.symbols_dir.clone();
                    }
                    symbols
                        .enabled()
                        .then(|| Arc::new(Symbolizer::new(symbols, &config.data_dir)))
                },
                metrics,
                db,
                secure_cookies: config.tls.is_some() || public_url.starts_with("https://"),
                public_url,
                terms: Default::default(),
            };
            (Some(web::Data::new(state)), admin_token, metrics_token)
        }
        ServerMode::Null => (None, String::new(), String::new()),
    };
    let http = listen::listen(listener, tls, workers, state.clone(), limits)?;
    tracing::info!(%url, ?mode, "endpoint listening");
    Ok(RunningServer {
        address,
        url,
        admin_token,
        metrics_token,
        state,
        admin_socket,
        http,
    })
}

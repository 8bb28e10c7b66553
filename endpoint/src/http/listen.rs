//! The HTTP server's thread: actix-web's workers on a listener bound by the caller, with
//! TLS (rustls on the aws-lc-rs provider) when configured.
//!
//! Invariant: [`Listening::stop`] returns only once the thread has ended, every request
//! in flight finished, so whatever the handlers hold (the database) can be let go next.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, web};

use crate::error::EndpointError;
use crate::http::routes::{null_routes, routes};
use crate::http::state::AppState;
use crate::http::{Limits, TlsConfig};

/// Connections the server queues before it accepts them.
const BACKLOG_CONNECTIONS_MAX: u32 = 4096;
/// Connections each worker holds at once.
const WORKER_CONNECTIONS_MAX: usize = 25_000;

/// The certificate chain and key of `tls` as rustls serves them.
pub fn tls_config(tls: &TlsConfig) -> Result<rustls::ServerConfig, EndpointError> {
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

/// The HTTP server running on its own thread.
pub struct Listening {
    handle: ServerHandle,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
}

/// Serves `listener` with `workers` threads: the endpoint's routes on `state`, or with no
/// state the null routes of [`crate::server::ServerMode::Null`] (bodies within `limits`).
pub fn listen(
    listener: TcpListener,
    tls: Option<rustls::ServerConfig>,
    workers: usize,
    state: Option<web::Data<AppState>>,
    limits: Limits,
) -> Result<Listening, EndpointError> {
    let (handle_sender, handle_receiver) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    let app = App::new();
                    match &state {
                        Some(state) => app.configure(|config| routes(config, state.clone())),
                        None => app.configure(|config| null_routes(config, &limits)),
                    }
                })
                .workers(workers)
                .backlog(BACKLOG_CONNECTIONS_MAX)
                .max_connections(WORKER_CONNECTIONS_MAX);
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
    Ok(Listening { handle, thread })
}

impl Listening {
    /// Stops accepting, finishes the requests in flight and waits for the thread.
    pub fn stop(self) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        runtime.block_on(self.handle.stop(true));
        let _ = self.thread.join();
    }

    /// Waits until the server stops (a signal).
    pub fn wait(self) -> std::io::Result<()> {
        self.thread
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the server thread panicked")))
    }
}

//! The HTTP layer: the routes ([`routes`]), who may do what, and every limit on what comes
//! in.
//!
//! - [`upload`]: the upload protocol (manifests, chunks, completions, incident updates);
//! - [`api`]: the JSON API's reads and the admin's writes; [`html`]: the dashboard's
//!   pages; [`forms`]: the dashboard's forms, sign-in and sign-out;
//! - [`state`]: what the handlers share; [`request`]: what a request's headers say;
//!   [`auth`]: tokens and sessions; [`error`]: errors as HTTP answers;
//! - [`pending`], [`inflight`], [`ratelimit`]: uploads waiting for chunks, body bytes
//!   being read, each cluster's rate; [`listen`]: the server's thread and TLS.
//!
//! Who may do what: every route that returns stored data needs a token (bearer, or the
//! dashboard's session cookie, [`auth`]); a cluster's token sees its own problems,
//! reports, attachments and bugs only ([`crate::storage::Viewer`]), the admin's
//! everything; writes other than uploads need the admin's; `/metrics` the metrics or the
//! admin token; `/healthz` is public.
//!
//! Invariants: this layer records nothing itself (uploads become committer jobs of the
//! recording layer) and nothing below it knows HTTP; a request's token is checked from its
//! headers before any of its body is read (`state::read_body` comes after the check in
//! every handler that takes one), a body has [`Limits::body_read_secs_max`] to arrive,
//! and every response carries `nosniff`, a Content-Security-Policy without inline script
//! or style, and `frame-ancestors 'none'` ([`routes::SECURITY_HEADERS`]).

pub mod api;
pub mod auth;
pub mod error;
pub mod forms;
pub mod html;
pub mod inflight;
pub mod listen;
pub mod pending;
pub mod ratelimit;
pub mod request;
pub mod routes;
pub mod state;
pub mod upload;

use std::path::PathBuf;

use crashmesh_protocol::chunk::CHUNK_COMPRESSED_BYTES_MAX;
use crashmesh_protocol::report::CHUNKS_PER_REPORT_MAX;
use serde::{Deserialize, Serialize};

pub use state::AppState;

/// Certificate and key, PEM.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, PEM.
    pub cert_file: PathBuf,
    /// The private key, PEM.
    pub key_file: PathBuf,
}

/// Limits on inputs; each named with its unit last.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest manifest body (413 above).
    pub manifest_bytes_max: usize,
    /// Largest chunk body, compressed (413 above).
    pub chunk_body_bytes_max: usize,
    /// Largest incident update body (413 above).
    pub update_bytes_max: usize,
    /// Chunks one report may name (413 above).
    pub chunks_per_report_max: usize,
    /// Reports, completions and updates per second per cluster (429 above).
    pub cluster_reports_per_sec_max: u32,
    /// Burst allowance of the per-cluster rate.
    pub cluster_reports_burst_max: u32,
    /// Reports waiting for their chunks, over all clusters (429 above).
    pub pending_reports_max: usize,
    /// Reports of one cluster waiting for their chunks (429 above, for that cluster only).
    pub cluster_pending_reports_max: usize,
    /// Manifest bytes held by the reports waiting for their chunks, over all clusters.
    pub pending_manifest_bytes_max: usize,
    /// Manifest bytes held by one cluster's reports waiting for their chunks.
    pub cluster_pending_manifest_bytes_max: usize,
    /// How long a report may wait for its chunks before it is forgotten.
    pub pending_report_secs_max: u64,
    /// How long a waiting report may go without a chunk of it arriving before it is
    /// forgotten (when room is needed).
    pub pending_report_idle_secs_max: u64,
    /// How long a request's body may take to arrive, from its headers (408 and the
    /// connection closed after).
    pub body_read_secs_max: u64,
    /// Body bytes one cluster's requests may be sending at once (by `Content-Length`, else
    /// the route's limit), reserved before a body is read (429 above).
    pub cluster_body_bytes_in_flight_max: usize,
    /// Body bytes all requests may be sending at once (429 above).
    pub body_bytes_in_flight_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            manifest_bytes_max: 16 << 20,
            chunk_body_bytes_max: CHUNK_COMPRESSED_BYTES_MAX as usize,
            update_bytes_max: 4 << 20,
            chunks_per_report_max: CHUNKS_PER_REPORT_MAX,
            cluster_reports_per_sec_max: 5000,
            cluster_reports_burst_max: 10_000,
            pending_reports_max: 4096,
            cluster_pending_reports_max: 256,
            pending_manifest_bytes_max: 256 << 20,
            cluster_pending_manifest_bytes_max: 64 << 20,
            pending_report_secs_max: 3600,
            pending_report_idle_secs_max: 600,
            body_read_secs_max: 60,
            cluster_body_bytes_in_flight_max: 64 << 20,
            body_bytes_in_flight_max: 512 << 20,
        }
    }
}

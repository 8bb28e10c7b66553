//! crashmesh's upload endpoint: the vendor's server where consolidated reports land.
//!
//! It receives [`crashmesh_protocol::report::ReportManifest`]s and their chunks over HTTP,
//! groups reports into problems by signature, keeps a small bug tracker, answers each
//! upload with what it knows (bug, workaround), and serves a dashboard and `/metrics`.
//!
//! # Layout
//! ```text
//! DATA_DIR/endpoint.redb     metadata: tokens, cluster terms, reports, problems, incidents, bugs
//! DATA_DIR/admin.token       the admin token (every read, and the writes), 0600
//! DATA_DIR/metrics.token     the metrics token (`/metrics` only), 0600
//! DATA_DIR/session.key       signs the dashboard's session cookies, 0600
//! DATA_DIR/ingest.journal    the ingest batches since the last checkpoint of endpoint.redb
//!                            (what makes an answered report durable; see `storage::journal`)
//! DATA_DIR/endpoint.sock     while the server runs: the CLI's requests go through it, 0600
//! DATA_DIR/blobs/packs/NNNNNNNN.pack   chunks as received, one zstd frame each, appended
//!                            by the pack lane, O_DIRECT where the file system takes it
//!                            (local storage; `chunks_v1` in endpoint.redb locates them)
//! ```
//!
//! # Layers
//! ```text
//!   server, local, export, config    the top: start it all; the CLI's socket; exports;
//!        │                           the configuration assembled from each layer's part
//!        ▼
//!   http/       routes, upload, api, html, forms, state, request, auth, error,
//!        │      pending, inflight, ratelimit, listen
//!        ▼
//!   recording/  ingest (the committer), record (one batch), replay, rules, symbolize,
//!        │      webhook, metrics
//!        ▼
//!   storage/    db, journal, packs, blobs, chunk_buffer
//!
//!   error, time, version             below every layer, using none
//! ```
//! An arrow is "uses": a module uses its own layer and the layers below it, never one
//! above (`tests/layers.rs` reads the sources and fails on an arrow pointing up, or on a
//! cycle between two files). So:
//! - **Storage keeps bytes and rows, and knows nothing of what they mean.** Opening the
//!   database opens its tables; the server and the CLI open it through
//!   [`recording::open_database`], which first replays what a crash left in the journal.
//! - **Recording is the one writer of what an upload means**, behind the committer's
//!   queue ([`recording::Committer`]); what a batch writes is in one place
//!   ([`recording::record`]), run the same by the committer and by a replay.
//! - **Nothing below HTTP knows HTTP**: no actix-web in storage or recording; an error's
//!   HTTP status is the HTTP layer's ([`http::error`]).
//! - **The top puts the layers together and holds no logic of theirs**: [`server`]
//!   starts and stops them in order, [`local`] answers the CLI with the same code as the
//!   API, [`config`] assembles each layer's own configuration type.
//!
//! # Invariants
//! - **Nothing half stored.** A report is visible (in reports, problems, incidents, bugs)
//!   only after the one redb transaction that records all of it commits, and only once
//!   every chunk it names is in blob storage (written and synced: a chunk's PUT is
//!   answered before the pack lane writes it, and the commit waits for the lane). A
//!   refused request changes nothing.
//! - **Nothing answered is lost.** An upload is answered only once its batch is in the
//!   synced ingest journal (or a durable commit); opening the database after a crash
//!   replays what the last durable commit lacks.
//! - **Chunks are verified before they are kept**: a chunk is stored under its id only
//!   after its bytes decompressed (within the chunk limit) and hashed to that id.
//! - **Idempotent by id.** A report id is recorded once; an incident is recorded once per
//!   (cluster, incident report id). A retry, or a second aggregator with the same report,
//!   gets the same answer and changes nothing more.
//! - **Fencing.** Per cluster the highest term seen is kept with the data it admitted; a
//!   request with a lower term, or one more than [`recording::record::TERM_STEP_MAX`]
//!   higher, is refused (409) inside the transaction that would write it.
//! - **A cluster sees only itself.** Every read needs a token ([`http::auth`]); a cluster's token
//!   reads its own reports, attachments and its own rows of the problems it shares with
//!   others, and the bugs of those problems; a report id belongs to the cluster that
//!   stored it first (another's manifest or update for it is refused, in the transaction
//!   too); a chunk counts as present for a cluster only when one of its reports names it.
//! - **The token before the body.** A request's token is checked from its headers before
//!   any of its body is read, and a body has a deadline.
//! - **Ingest never waits on the outside**: webhooks go through a bounded queue to their
//!   own thread; a full queue drops the event and logs it.
//! - Every input is bounded: body bytes and time, chunks per report, incidents, pending
//!   uploads (per cluster and over all, in number and manifest bytes), and a per-cluster
//!   rate (413, 408 and 429).

pub mod config;
pub mod error;
pub mod export;
pub mod http;
pub mod local;
pub mod recording;
pub mod server;
pub mod storage;
pub mod time;
pub mod version;

pub use config::EndpointConfig;
pub use error::EndpointError;
pub use server::{RunningServer, ServerMode, start};

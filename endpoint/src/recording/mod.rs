//! The recording layer: what an upload means. A report becomes a problem's incidents, a
//! bug opened or commented, a regression, webhook events; all of it written by one
//! committer, in one transaction per batch, durable through the ingest journal.
//!
//! - [`ingest`]: the committer thread, its queue, the journal's syncer and checkpoints;
//! - [`record`]: what one batch writes (grouping by signature, fencing by term, report ids
//!   owned by their first cluster, bugs and regressions);
//! - [`replay`]: opening the database after a crash, replaying the journal's batches;
//! - [`rules`]: rules marking problems uninteresting; [`symbolize`]: re-symbolization
//!   from a symbol directory; [`webhook`]: events out; [`metrics`]: the counters.
//!
//! Invariants: this layer uses the storage layer below it and nothing above it (no HTTP,
//! no actix-web, no server): requests reach it as [`ingest::Committer`] jobs and the
//! answers it gives. Everything a batch writes is in [`record`], for the committer and
//! the replay alike, so a replay writes what the first run did.

pub mod ingest;
pub mod metrics;
pub mod record;
pub mod replay;
pub mod rules;
pub mod symbolize;
pub mod webhook;

pub use ingest::{Committer, IngestContext};
pub use replay::open_database;

//! The daemon: `crashmesh node run`. It indexes what the hook and the detectors leave in
//! the spool, analyses cores in an isolated child, keeps the store inside its quota,
//! gathers each incident's logs, answers the CLI over its control socket, starts the
//! detectors and, in a cluster, the mesh.
//!
//! - [`actors`]: the daemon's actors and [`actors::run`].
//! - [`ingest`]: spool entry → analysis → store, and the incident announced to the mesh.
//! - [`analyze`]: analysis of one piece of evidence, offline or in a limited child.
//! - [`control`]: the CLI's socket; the daemon owns the index while it runs.
//! - [`package`]: which package owns an executable.
//! - [`config`]: the node's one configuration file, assembled from every room's part.
//!
//! The daemon takes its configuration and a clock ([`Settings`],
//! `crashmesh_capture::clock::Clock`), never the command line's context; the CLI sits
//! above it.

use std::path::PathBuf;

pub mod actors;
pub mod analyze;
pub mod config;
pub mod control;
pub mod ingest;
pub mod package;

pub use actors::{open_store, run};

/// What the daemon runs with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub config: config::Config,
    /// The file the configuration came from, passed on to the analysis child.
    pub config_file: Option<PathBuf>,
    pub data_dir: PathBuf,
    /// The `crashmesh` binary that runs isolated analyses.
    pub binary: PathBuf,
}

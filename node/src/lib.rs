//! The crashmesh node: the core_pattern hook, detectors, the daemon and the CLI's work.
//! `main.rs` only dispatches; everything it calls lives here, so it can be tested.

pub mod analyze;
pub mod cli;
pub mod cluster_cmd;
pub mod commands;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod endpoint_cmd;
pub mod ingest;
pub mod malloc;
pub mod package;
pub mod table;

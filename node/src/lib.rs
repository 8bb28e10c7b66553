//! The `crashmesh` binary: the command line over the node's rooms (`crashmesh-capture`,
//! `-detect`, `-gather`, `-mesh`, `-daemon`) and the endpoint. `main.rs` only dispatches;
//! each command's work is in [`commands`], [`cluster_cmd`], [`endpoint_cmd`] and [`demo`],
//! its human output through [`table`].

pub mod cli;
pub mod cluster_cmd;
pub mod commands;
pub mod demo;
pub mod endpoint_cmd;
pub mod malloc;
pub mod table;

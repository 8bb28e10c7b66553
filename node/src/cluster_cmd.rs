//! `crashmesh cluster init|issue`: the cluster CA and node certificates (see `certs`).
//!
//! `--json` output (one line, stable):
//! - `cluster init`: `cluster_id`, `ca_cert`, `ca_key`, `cluster_file`, `privacy_key` (paths), `not_after`
//!   (`YYYY-MM-DD`).
//! - `cluster issue NODE`: `node`, `cluster_id`, `cert`, `key`, `ca_cert` (paths),
//!   `not_after`.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::{Context as _, Result};

use crate::cli::ClusterCommand;
use crate::commands::Context;
use crashmesh_mesh::certs::{self, ClusterPaths};

/// Runs one `cluster` command.
pub fn cluster(context: &Context, command: &ClusterCommand) -> Result<ExitCode> {
    let paths = ClusterPaths::of_data_dir(&context.data_dir);
    match command {
        ClusterCommand::Init { cluster_id } => {
            let outcome =
                certs::init_cluster(&paths, cluster_id.as_deref()).context("cluster init")?;
            if context.json {
                print_json(&outcome)?;
            } else {
                println!(
                    "cluster {}: CA {} (key {}, valid until {})",
                    outcome.cluster_id,
                    outcome.ca_cert.display(),
                    outcome.ca_key.display(),
                    outcome.not_after
                );
            }
        }
        ClusterCommand::Issue { node, out } => {
            let out_dir = match out {
                Some(dir) => std::path::absolute(dir).unwrap_or_else(|_| dir.clone()),
                None => paths.nodes_dir(),
            };
            let outcome = certs::issue_node(&paths, node, &out_dir)
                .with_context(|| format!("cluster issue {node}"))?;
            if context.json {
                print_json(&outcome)?;
            } else {
                println!(
                    "node {} of cluster {}: certificate {}, key {} (valid until {})",
                    outcome.node,
                    outcome.cluster_id,
                    outcome.cert.display(),
                    outcome.key.display(),
                    outcome.not_after
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, value)?;
    writeln!(stdout)?;
    Ok(())
}

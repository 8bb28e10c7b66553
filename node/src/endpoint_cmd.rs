//! `crashmesh endpoint …`: thin glue over the `crashmesh-endpoint` library. Here
//! `--config` names the endpoint's own TOML file (see `crashmesh_endpoint::config`) and
//! `--data-dir` overrides its `data_dir`.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use crashmesh_endpoint::db::Db;
use crashmesh_endpoint::{EndpointConfig, ServerMode};

use crate::cli::{EndpointBugCommand, EndpointCommand, EndpointTokenCommand, GlobalArgs};

/// Runs one endpoint command and gives the exit code.
pub fn run(global: &GlobalArgs, what: &EndpointCommand) -> ExitCode {
    match run_command(global, what) {
        Ok(code) => code,
        Err(error) => crate::commands::fail(&error),
    }
}

fn load_config(global: &GlobalArgs) -> Result<EndpointConfig> {
    let mut config = EndpointConfig::load(global.config.as_deref())
        .context("reading the endpoint configuration")?;
    if let Some(data_dir) = &global.data_dir {
        config.data_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.clone());
    }
    Ok(config)
}

fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

fn run_command(global: &GlobalArgs, what: &EndpointCommand) -> Result<ExitCode> {
    let mut config = load_config(global)?;
    match what {
        EndpointCommand::Run { listen, null } => {
            if let Some(listen) = listen {
                config.listen = listen.clone();
            }
            let mode = if *null {
                ServerMode::Null
            } else {
                ServerMode::Real
            };
            let data_dir = config.data_dir.clone();
            let server =
                crashmesh_endpoint::start(config, mode).context("starting the endpoint")?;
            if global.json {
                print_json(&serde_json::json!({
                    "url": server.url,
                    "listen": server.address.to_string(),
                    "mode": if *null { "null" } else { "real" },
                    "admin_token_file": data_dir.join("admin.token"),
                }));
            } else {
                println!("crashmesh endpoint listening on {}", server.url);
            }
            server.wait().context("serving")?;
        }
        EndpointCommand::Token(EndpointTokenCommand::Create { cluster }) => {
            let db = Db::open(&config.data_dir).context("opening the endpoint database")?;
            let token = crashmesh_endpoint::auth::create_cluster_token(&db, cluster)?;
            if global.json {
                print_json(&serde_json::json!({ "cluster": cluster, "token": token }));
            } else {
                println!("{token}");
                eprintln!(
                    "(the token for cluster {cluster}; only its hash is kept, so note it now)"
                );
            }
        }
        EndpointCommand::Export { out } => {
            let summary = crashmesh_endpoint::export::export(&config, out)
                .with_context(|| format!("exporting to {}", out.display()))?;
            if global.json {
                print_json(&serde_json::to_value(&summary)?);
            } else {
                println!(
                    "exported {} report(s), {} attachment(s), {} bytes, {} problem(s) to {}",
                    summary.reports,
                    summary.attachments,
                    summary.bytes,
                    summary.problems,
                    out.display()
                );
            }
        }
        EndpointCommand::CoreRequest { problem, off } => {
            let db = Db::open(&config.data_dir).context("opening the endpoint database")?;
            db.set_core_request(problem, !off, crashmesh_endpoint::ingest::now_ms())?;
            let requested = db.core_requested(problem)?.is_some();
            if global.json {
                print_json(&serde_json::json!({
                    "problem_id": problem,
                    "core_requested": requested,
                }));
            } else if requested {
                println!("problem {problem}: a core is requested");
            } else {
                println!("problem {problem}: no core requested");
            }
        }
        EndpointCommand::Bug(command) => {
            let db = Db::open(&config.data_dir).context("opening the endpoint database")?;
            match command {
                EndpointBugCommand::Set {
                    id,
                    status,
                    workaround,
                } => {
                    let bug = db.set_bug(
                        *id,
                        status.as_deref(),
                        workaround.as_deref(),
                        crashmesh_endpoint::ingest::now_ms(),
                    )?;
                    if global.json {
                        print_json(&serde_json::to_value(&bug)?);
                    } else {
                        println!("bug {}: {}", bug.id, bug.status);
                    }
                }
                EndpointBugCommand::Show { id } => {
                    let view = db
                        .bug_view(*id, crashmesh_endpoint::db::COMMENTS_PER_BUG_MAX)?
                        .with_context(|| format!("no bug {id}"))?;
                    let bug = &view.bug;
                    if global.json {
                        print_json(&serde_json::to_value(&view)?);
                    } else {
                        println!("bug {} [{}] {}", bug.id, bug.status, bug.title);
                        println!("  problem: {}", bug.problem_id);
                        if bug.regression {
                            println!("  regression");
                        }
                        println!(
                            "  workaround: {}",
                            bug.workaround.as_deref().unwrap_or("none")
                        );
                        for comment in &view.comments {
                            println!(
                                "  {} {}: {}",
                                crashmesh_endpoint::dashboard::format_time_ms(comment.time_ms),
                                comment.author,
                                comment.text
                            );
                        }
                    }
                }
                EndpointBugCommand::List => {
                    let bugs = db.bugs()?;
                    if global.json {
                        print_json(&serde_json::json!({ "bugs": bugs }));
                    } else {
                        for bug in &bugs {
                            println!(
                                "{:>6}  {:<9} {}{}",
                                bug.id,
                                bug.status,
                                bug.title,
                                if bug.regression { "  (regression)" } else { "" }
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

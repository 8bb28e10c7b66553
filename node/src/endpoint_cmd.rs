//! `crashmesh endpoint …`: thin glue over the `crashmesh-endpoint` library. Here
//! `--config` names the endpoint's own TOML file (see `crashmesh_endpoint::config`) and
//! `--data-dir` overrides its `data_dir`.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use crashmesh_endpoint::export::ExportSummary;
use crashmesh_endpoint::local::AdminRequest;
use crashmesh_endpoint::storage::db::{BugRow, Comment};
use crashmesh_endpoint::{EndpointConfig, ServerMode};
use serde::Deserialize;

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

/// A read or a change of the endpoint's data: answered here, or by the server running on
/// it (see `crashmesh_endpoint::local`). `what` says what was asked, for errors.
fn admin_request(
    config: &EndpointConfig,
    request: AdminRequest,
    what: &str,
) -> Result<serde_json::Value> {
    let (answer, through_server) =
        crashmesh_endpoint::local::run(config, &request).context(what.to_string())?;
    if through_server {
        tracing::debug!(?request, "the running endpoint answered");
    }
    Ok(answer)
}

/// A change to the endpoint's database.
fn admin_change(config: &EndpointConfig, request: AdminRequest) -> Result<serde_json::Value> {
    admin_request(config, request, "changing the endpoint database")
}

/// A read of the endpoint's database.
fn admin_read(config: &EndpointConfig, request: AdminRequest) -> Result<serde_json::Value> {
    admin_request(config, request, "reading the endpoint database")
}

/// `bug show`'s answer: `BugView`'s JSON.
#[derive(Deserialize)]
struct ShownBug {
    #[serde(flatten)]
    bug: BugRow,
    comments: Vec<Comment>,
}

/// `bug list`'s answer.
#[derive(Deserialize)]
struct ListedBugs {
    bugs: Vec<BugRow>,
}

/// An answer as the type it was made from.
fn typed<T: serde::de::DeserializeOwned>(answer: &serde_json::Value) -> Result<T> {
    T::deserialize(answer).context("an unexpected answer from the endpoint")
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
            let token = admin_change(
                &config,
                AdminRequest::CreateToken {
                    cluster: cluster.clone(),
                },
            )?;
            if global.json {
                print_json(&token);
            } else {
                println!("{}", token["token"].as_str().unwrap_or_default());
                eprintln!(
                    "(the token for cluster {cluster}; only its hash is kept, so note it now)"
                );
            }
        }
        EndpointCommand::Export { out } => {
            // A running server writes the files: its working directory is not ours.
            let absolute_out = std::path::absolute(out)
                .with_context(|| format!("the export directory {}", out.display()))?;
            let answer = admin_request(
                &config,
                AdminRequest::Export { out: absolute_out },
                &format!("exporting to {}", out.display()),
            )?;
            if global.json {
                print_json(&answer);
            } else {
                let summary: ExportSummary = typed(&answer)?;
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
            let answer = admin_change(
                &config,
                AdminRequest::SetCoreRequest {
                    problem: problem.clone(),
                    requested: !off,
                },
            )?;
            if global.json {
                print_json(&answer);
            } else if answer["core_requested"] == true {
                println!("problem {problem}: a core is requested");
            } else {
                println!("problem {problem}: no core requested");
            }
        }
        EndpointCommand::Bug(command) => match command {
            EndpointBugCommand::Set {
                id,
                status,
                workaround,
            } => {
                let bug = admin_change(
                    &config,
                    AdminRequest::SetBug {
                        id: *id,
                        status: status.clone(),
                        workaround: workaround.clone(),
                    },
                )?;
                if global.json {
                    print_json(&bug);
                } else {
                    println!(
                        "bug {}: {}",
                        bug["id"],
                        bug["status"].as_str().unwrap_or_default()
                    );
                }
            }
            EndpointBugCommand::Show { id } => {
                let answer = admin_read(&config, AdminRequest::ShowBug { id: *id })?;
                if global.json {
                    print_json(&answer);
                } else {
                    let view: ShownBug = typed(&answer)?;
                    let bug = &view.bug;
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
                            crashmesh_endpoint::time::format_time_ms(comment.time_ms),
                            comment.author,
                            comment.text
                        );
                    }
                }
            }
            EndpointBugCommand::List => {
                let answer = admin_read(&config, AdminRequest::ListBugs)?;
                if global.json {
                    print_json(&answer);
                } else {
                    let listed: ListedBugs = typed(&answer)?;
                    for bug in &listed.bugs {
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
        },
    }
    Ok(ExitCode::SUCCESS)
}

//! `crashmesh`: the node binary. This file is a table of contents: parse the command
//! line, set up logging, hand each command to the module that does the work.

use std::process::ExitCode;

use clap::Parser;
use crashmesh::cli::{Cli, Command, ConfigCommand, HookCommand, NodeCommand};
use crashmesh::commands::{self, Context};

fn main() -> ExitCode {
    // Evidence belongs to root: whatever this process creates is its owner's alone unless
    // the code says otherwise (the Python hook's files, the Python socket); see
    // docs/security.md.
    // SAFETY: umask only sets this process's file creation mask.
    unsafe { libc::umask(0o077) };
    crashmesh::malloc::tune();
    // The only TLS provider (aws-lc-rs; ARCHITECTURE.md): installed before anything builds a rustls config.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    // The hook runs with the kernel's stderr (nowhere); it logs into the data dir itself.
    let is_hook = matches!(cli.command, Command::Hook(_));
    if !is_hook {
        commands::init_logging();
    }
    if let Command::Endpoint(what) = &cli.command {
        return crashmesh::endpoint_cmd::run(&cli.global, what);
    }
    if let Command::Demo {
        nodes,
        once,
        privacy,
    } = &cli.command
    {
        let args = crashmesh::demo::DemoArgs {
            nodes: *nodes,
            once: *once,
            customer: privacy.as_deref() == Some("customer"),
            json: cli.global.json,
            data_dir: cli.global.data_dir.clone(),
        };
        return crashmesh::demo::run(&args).unwrap_or_else(|error| commands::fail(&error));
    }
    let context = match Context::new(&cli.global) {
        Ok(context) => context,
        Err(error) => return commands::fail(&error),
    };
    let result = match cli.command {
        Command::Hook(HookCommand::Core { args }) => commands::hook_core(&context, &args),
        Command::Node(NodeCommand::Run { once }) => commands::node_run(&context, once),
        Command::Install(args) => commands::install(&context, &args),
        Command::Uninstall => commands::uninstall(&context),
        Command::Analyze(what) => commands::analyze(&context, &what),
        Command::Problems(what) => commands::problems(&context, &what),
        Command::Status => commands::status(&context),
        Command::Store(what) => commands::store(&context, &what),
        Command::Config(ConfigCommand::Defaults) => commands::config_defaults(),
        Command::Config(ConfigCommand::Show) => commands::config_show(&context),
        Command::Cluster(what) => crashmesh::cluster_cmd::cluster(&context, &what),
        Command::Privacy(what) => commands::privacy(&context, &what),
        Command::Endpoint(_) => unreachable!("handled above: the endpoint has its own data dir"),
        Command::Demo { .. } => unreachable!("handled above: the demo makes its own data dirs"),
    };
    match result {
        Ok(code) => code,
        Err(error) => commands::fail(&error),
    }
}

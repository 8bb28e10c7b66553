//! `crashmesh-simulator`: the command line over the simulator library.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use crashmesh_simulator::campaign::{self, CampaignConfig};
use crashmesh_simulator::faults::Sabotage;
use crashmesh_simulator::{real, scale};

#[derive(Parser)]
#[command(
    name = "crashmesh-simulator",
    about = "Fault injection for whole crashmesh clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A deterministic campaign: simulated clusters, faults drawn from each seed.
    Run {
        /// Run seeds 0..N.
        #[arg(long, default_value_t = 200, conflicts_with = "seed")]
        seeds: u64,
        /// Run this one seed (replay).
        #[arg(long)]
        seed: Option<u64>,
        /// Nodes per cluster.
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Switch a safety mechanism off: none, no-fencing, no-dedup.
        #[arg(long, default_value = "none")]
        sabotage: String,
        /// Worker threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        workers: usize,
        /// End with one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// How messages, memory and election time grow with the cluster size.
    Scale {
        /// Cluster sizes, comma-separated.
        #[arg(long, default_value = "10,100,1000", value_delimiter = ',')]
        nodes: Vec<usize>,
        /// Simulated seconds per size.
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// Write the plot here (SVG).
        #[arg(long, default_value = "scale.svg")]
        svg: std::path::PathBuf,
        /// The seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// One JSON line per size, then the table as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Real `crashmesh` processes on loopback, killed, stopped and restarted.
    Real {
        /// Node processes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Seconds of faults and problems.
        #[arg(long, default_value_t = 20)]
        duration: u64,
        /// The seed the fault schedule is drawn from.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The `crashmesh` binary (default: next to this executable).
        #[arg(long)]
        crashmesh: Option<std::path::PathBuf>,
        /// Keep the data directory here instead of a temporary one.
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// End with one JSON line.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,crashmesh_store=error")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("crashmesh-simulator: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run {
            seeds,
            seed,
            nodes,
            sabotage,
            workers,
            json,
        } => {
            let Some(sabotage) = Sabotage::parse(&sabotage) else {
                bail!("unknown --sabotage {sabotage:?} (none, no-fencing, no-dedup)");
            };
            if !(1..=1_000).contains(&nodes) {
                bail!("--nodes must be within 1..=1000");
            }
            let seeds: Vec<u64> = match seed {
                Some(seed) => vec![seed],
                None => (0..seeds).collect(),
            };
            let config = CampaignConfig {
                seeds,
                sabotage,
                workers,
                progress: true,
                ..CampaignConfig::new(0..0, nodes)
            };
            let started = std::time::Instant::now();
            let single = seed.is_some();
            let summary = campaign::run_campaign(&config, |report| {
                println!("{}", campaign::seed_line(report));
                if !report.passed() && (single || !json) {
                    eprint!("{}", campaign::failure_text(report));
                }
            });
            for report in summary.failures.iter().take(if single { 0 } else { 5 }) {
                if json {
                    eprint!("{}", campaign::failure_text(report));
                }
            }
            print!("{}", summary.table());
            println!("wall time {:.1} s", started.elapsed().as_secs_f64());
            if json {
                println!("{}", summary.to_json());
            }
            Ok(if summary.failed() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Scale {
            nodes,
            duration,
            svg,
            seed,
            json,
        } => {
            let rows = scale::measure(&nodes, duration * 1_000, seed);
            print!("{}", scale::table(&rows));
            std::fs::write(&svg, scale::plot(&rows))
                .with_context(|| format!("writing {}", svg.display()))?;
            println!("plot: {}", svg.display());
            if json {
                for row in &rows {
                    println!("{}", serde_json::to_string(row)?);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Real {
            nodes,
            duration,
            seed,
            crashmesh,
            data_dir,
            json,
        } => {
            let binary = match crashmesh {
                Some(path) => path,
                None => real::crashmesh_next_to_this_executable()?,
            };
            let outcome = real::run(&real::RealConfig {
                nodes,
                duration_secs: duration,
                seed,
                crashmesh: binary,
                data_dir,
            })?;
            print!("{}", outcome.table());
            if json {
                println!("{}", serde_json::to_string(&outcome)?);
            }
            Ok(if outcome.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

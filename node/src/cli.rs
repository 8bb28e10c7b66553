//! The command line: every command takes `--data-dir` and `--config`, and `--json`
//! where it prints.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "crashmesh",
    version,
    about = "Crash and problem reporter for hyperconverged clusters"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone, Default)]
pub struct GlobalArgs {
    /// The data directory (spool and index); default: `[node] data_dir`.
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The configuration file; default: the embedded defaults.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print JSON instead of tables (stable, documented fields).
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The node daemon.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Handlers the kernel runs.
    #[command(subcommand)]
    Hook(HookCommand),
    /// Point the kernel's core_pattern at crashmesh (remembering the previous value).
    Install(InstallArgs),
    /// Restore the core_pattern that was there before `install`.
    Uninstall,
    /// Analyse one file offline.
    #[command(subcommand)]
    Analyze(AnalyzeCommand),
    /// The problems this node has recorded.
    #[command(subcommand)]
    Problems(ProblemsCommand),
    /// The node's state: spool, quota, daemon.
    Status,
    /// The store's integrity.
    #[command(subcommand)]
    Store(StoreCommand),
    /// The configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The cluster's CA and node certificates (mutual TLS between nodes).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// The upload endpoint (the vendor's server).
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// What leaves the cluster (`[privacy]`, customer mode).
    #[command(subcommand)]
    Privacy(PrivacyCommand),
    /// A whole cluster plus its endpoint on loopback: real crashes, one upload per problem.
    Demo {
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Exit after the summary instead of serving until interrupted.
        #[arg(long)]
        once: bool,
        /// `customer`: the nodes run in customer mode (reports scrubbed before they
        /// leave; secrets planted in the crashing program's environment and arguments).
        #[arg(long, value_name = "MODE", value_parser = ["internal", "customer"])]
        privacy: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Run the daemon: index spool entries, analyse, keep quotas.
    Run {
        /// Index what is in the spool, then exit.
        #[arg(long)]
        once: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum HookCommand {
    /// The core_pattern pipe handler: `%P %I %i %s %t %c %u %g %h %e`, core on stdin.
    Core {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The binary the kernel runs (default: this one).
    #[arg(long)]
    pub binary: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum AnalyzeCommand {
    /// An ELF core, plain or zstd-compressed.
    Core {
        file: PathBuf,
        /// Where the crashed process's binaries are (a container's root).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Where a compressed core is decompressed (default: the system's temporary
        /// directory; the daemon passes its data dir's `scratch/`).
        #[arg(long)]
        scratch_dir: Option<PathBuf>,
        /// The most bytes a compressed core may decompress to (the daemon passes what its
        /// quota and free-space floor leave); a larger core is not analysed.
        #[arg(long)]
        scratch_bytes_max: Option<u64>,
        /// Where debug files fetched from debuginfod are kept (default: the data dir's
        /// `debuginfod/`); servers come from `[analysis] debuginfod_urls`.
        #[arg(long)]
        debuginfod_cache: Option<PathBuf>,
    },
    /// A kernel log (dmesg, syslog, journal): every oops, panic, warning, MCE, hung task…
    Oops { file: PathBuf },
    /// Saved Python tracebacks.
    Python { file: PathBuf },
    /// A JVM fatal error log (`hs_err_pid*.log`).
    HsErr { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum ProblemsCommand {
    /// One line per problem, last seen first.
    List,
    /// One problem with its frames and incidents (an id prefix is enough).
    Show { id: String },
    /// Write the earliest kept core of a problem (the one its frames come from),
    /// decompressed, to a file (for gdb).
    Core {
        id: String,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Verify the index against the chunks; repair what can be repaired; exit 1 on damage
    /// that could not be repaired.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the embedded default configuration, documented.
    Defaults,
    /// Print the configuration in effect.
    Show,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Create the cluster CA and cluster id in `<data dir>/cluster/` (never overwrites).
    Init {
        /// The cluster id (default: a random one).
        #[arg(long, value_name = "ID")]
        cluster_id: Option<String>,
    },
    /// Issue a node certificate and key signed by the cluster CA (`NODE.pem`, `NODE.key`).
    Issue {
        /// The node's name: its certificate's DNS name and its member name.
        node: String,
        /// Where to write them (default: `<data dir>/cluster/nodes/`).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Serve the upload API, the dashboard and /metrics.
    Run {
        /// Address to listen on (default: `listen` in the config, 127.0.0.1:8470).
        #[arg(long)]
        listen: Option<String>,
        /// Read every upload and answer without doing the work (benchmark baseline).
        #[arg(long)]
        null: bool,
    },
    /// Cluster tokens.
    #[command(subcommand)]
    Token(EndpointTokenCommand),
    /// Write every stored report as JSON and its attachments as plain files (while the
    /// server runs, it writes them, as its own user, through `DATA_DIR/endpoint.sock`).
    Export {
        #[arg(long)]
        out: PathBuf,
    },
    /// The built-in bug tracker.
    #[command(subcommand)]
    Bug(EndpointBugCommand),
    /// Ask clusters for a core of a problem (customer mode, `cores = "on_request"`), or
    /// stop asking with `--off`. While the endpoint runs, it makes the change (through
    /// `DATA_DIR/endpoint.sock`).
    CoreRequest {
        problem: String,
        #[arg(long)]
        off: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PrivacyCommand {
    /// Show an incident's report as the aggregator would upload it under this node's
    /// `[privacy]` (scrubbed in customer mode). REPORT: a problem id (or prefix; its first
    /// incident) or an incident's report id (`NODE:ENTRY`). Reads the store directly, so
    /// the daemon of this data dir must be stopped.
    Preview {
        report: String,
        /// Bytes of each attachment's scrubbed text shown.
        #[arg(long, default_value_t = 4096)]
        text_bytes_max: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum EndpointTokenCommand {
    /// Make a token for a cluster and print it (only its hash is kept).
    Create { cluster: String },
}

#[derive(Debug, Subcommand)]
pub enum EndpointBugCommand {
    /// Set a bug's status and/or workaround (an empty workaround removes it).
    Set {
        id: u64,
        /// open, confirmed, fixed, closed or wontfix.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        workaround: Option<String>,
    },
    /// One bug with its comments.
    Show { id: u64 },
    /// Every bug, newest first.
    List,
}

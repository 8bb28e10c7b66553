//! The work behind each command of the CLI. Every function returns the process's exit
//! code or an error that `main` prints with its context.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use crate::cli::{AnalyzeCommand, GlobalArgs, InstallArgs, ProblemsCommand, StoreCommand};
use crate::table::{Table, format_time_ms, safe};
use crashmesh_capture::hook;
use crashmesh_capture::install::{self, Change, KernelFiles};
use crashmesh_daemon::analyze::{self, AnalysisOutput, CoreContext};
use crashmesh_daemon::config::{Config, DEFAULT_CONFIG_TOML};
use crashmesh_daemon::control::{self, Request, Response};

/// What every command needs: the configuration and where the data lives.
pub struct Context {
    pub config: Config,
    pub config_file: Option<PathBuf>,
    pub data_dir: PathBuf,
    /// True when `--data-dir` was given (install then writes it into core_pattern).
    pub data_dir_given: bool,
    pub json: bool,
}

impl Context {
    pub fn new(global: &GlobalArgs) -> Result<Context> {
        let config_file = global.config.as_ref().map(|path| absolute(path));
        let config = Config::load(config_file.as_deref())?;
        let data_dir = absolute(global.data_dir.as_ref().unwrap_or(&config.node.data_dir));
        Ok(Context {
            config,
            config_file,
            data_dir,
            data_dir_given: global.data_dir.is_some(),
            json: global.json,
        })
    }

    /// Where scratch files (decompressed cores) go: inside the data dir, so they count
    /// against the quota and are cleaned at start.
    pub fn scratch_dir(&self) -> PathBuf {
        self.data_dir.join("scratch")
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Logs go to stderr; `RUST_LOG` picks the level (default: info). Colours only on a
/// terminal: a journal or a log file gets plain text.
pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Print an error with its causes and give the failure exit code.
pub fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("crashmesh: error: {error:#}");
    ExitCode::FAILURE
}

fn print_json(value: &impl Serialize) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, value)?;
    writeln!(stdout)?;
    Ok(())
}

/// `crashmesh hook core …`: never fails loudly (the kernel would not show it); the
/// outcome goes to `<data dir>/hook.log`.
pub fn hook_core(context: &Context, args: &[String]) -> Result<ExitCode> {
    // core_pattern has no room for --config: install remembered it in the data dir.
    let remembered = match &context.config_file {
        Some(_) => None,
        None => install::read_state(&context.data_dir.join("install.json"))
            .and_then(|state| state.config_file),
    };
    let config = match &remembered {
        Some(path) => Config::load(Some(path)).unwrap_or_else(|_| context.config.clone()),
        None => context.config.clone(),
    };
    let outcome = hook::CoreArgs::parse(args).and_then(|core_args| {
        hook::run(
            &config.capture,
            &context.data_dir,
            &core_args,
            &mut std::io::stdin().lock(),
        )
    });
    let line = match &outcome {
        Ok(outcome) => format!(
            "{} hook core {args:?}: {outcome:?}\n",
            format_time_ms(crashmesh_capture::clock::now_ms())
        ),
        Err(error) => format!(
            "{} hook core {args:?}: FAILED: {error}\n",
            format_time_ms(crashmesh_capture::clock::now_ms())
        ),
    };
    append_capped(
        &context.data_dir.join("hook.log"),
        line.as_bytes(),
        1024 * 1024,
    );
    Ok(if outcome.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Append to a log file, starting it again when it passes `bytes_max`.
fn append_capped(path: &Path, bytes: &[u8], bytes_max: u64) {
    let too_big = std::fs::metadata(path)
        .map(|meta| meta.len() > bytes_max)
        .unwrap_or(false);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(!too_big)
        .write(true)
        .truncate(too_big)
        .open(path);
    if let Ok(mut file) = file {
        let _ = file.write_all(bytes);
    }
}

fn print_changes(context: &Context, changes: &[Change]) -> Result<()> {
    if context.json {
        return print_json(&serde_json::json!({ "changes": changes }));
    }
    for change in changes {
        if change.changed {
            println!("{}: {:?} -> {:?}", change.setting, change.from, change.to);
        } else {
            println!("{}: unchanged ({:?})", change.setting, change.to);
        }
    }
    Ok(())
}

/// `crashmesh install`.
pub fn install(context: &Context, args: &InstallArgs) -> Result<ExitCode> {
    let binary = match &args.binary {
        Some(binary) => absolute(binary),
        None => std::env::current_exe().context("cannot find this binary's path")?,
    };
    let data_dir = context.data_dir_given.then_some(context.data_dir.as_path());
    let pattern = install::hook_pattern(&binary, data_dir)?;
    std::fs::create_dir_all(&context.data_dir)
        .with_context(|| format!("creating {}", context.data_dir.display()))?;
    let mut changes = install::install(
        &KernelFiles::default(),
        &context.data_dir.join("install.json"),
        &pattern,
        context.config_file.as_deref(),
    )?;
    if context.config.python.enabled {
        changes.extend(install_python_hook(context)?);
    }
    print_changes(context, &changes)?;
    Ok(ExitCode::SUCCESS)
}

/// `crashmesh uninstall`.
pub fn uninstall(context: &Context) -> Result<ExitCode> {
    let mut changes = install::uninstall(
        &KernelFiles::default(),
        &context.data_dir.join("install.json"),
    )?;
    changes.extend(uninstall_python_hook(context)?);
    print_changes(context, &changes)?;
    Ok(ExitCode::SUCCESS)
}

fn python_state_file(context: &Context) -> PathBuf {
    context.data_dir.join("python-hook.json")
}

/// Install the Python hook, remembering where, so uninstall removes exactly that.
fn install_python_hook(context: &Context) -> Result<Vec<Change>> {
    let interpreters = crashmesh_capture::python::interpreters(&context.config.python.interpreters);
    let mut sites: Vec<PathBuf> = std::fs::read(python_state_file(context))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let mut changes = Vec::new();
    let socket =
        crashmesh_capture::python::socket_path(&context.data_dir, &context.config.python.socket);
    for (site, result) in
        crashmesh_capture::python::install(&interpreters, &context.data_dir, &socket)
    {
        let setting = format!("python hook in {}", site.display());
        match result {
            Ok(()) => {
                let changed = !sites.contains(&site);
                if changed {
                    sites.push(site);
                }
                changes.push(Change {
                    setting,
                    from: if changed { "absent" } else { "installed" }.into(),
                    to: "installed".into(),
                    changed,
                });
            }
            Err(error) => {
                tracing::warn!(%setting, %error, "python hook not installed");
                changes.push(Change {
                    setting,
                    from: "absent".into(),
                    to: format!("absent ({error})"),
                    changed: false,
                });
            }
        }
    }
    std::fs::write(
        python_state_file(context),
        serde_json::to_vec_pretty(&sites)?,
    )?;
    Ok(changes)
}

fn uninstall_python_hook(context: &Context) -> Result<Vec<Change>> {
    let Ok(bytes) = std::fs::read(python_state_file(context)) else {
        return Ok(Vec::new());
    };
    let sites: Vec<PathBuf> = serde_json::from_slice(&bytes).unwrap_or_default();
    let removed = crashmesh_capture::python::uninstall(&sites);
    std::fs::remove_file(python_state_file(context))?;
    Ok(sites
        .iter()
        .map(|site| Change {
            setting: format!("python hook in {}", site.display()),
            from: "installed".into(),
            to: "absent".into(),
            changed: removed.iter().any(|path| path.starts_with(site)),
        })
        .collect())
}

/// `crashmesh node run`: the daemon, on this command line's configuration and the wall
/// clock.
pub fn node_run(context: &Context, once: bool) -> Result<ExitCode> {
    let settings = crashmesh_daemon::Settings {
        config: context.config.clone(),
        config_file: context.config_file.clone(),
        data_dir: context.data_dir.clone(),
        binary: std::env::current_exe().context("cannot find this binary's path")?,
    };
    crashmesh_daemon::run(
        &settings,
        std::sync::Arc::new(crashmesh_capture::clock::WallClock),
        once,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `crashmesh analyze core|oops|python|hs-err FILE`.
pub fn analyze(context: &Context, what: &AnalyzeCommand) -> Result<ExitCode> {
    let problems = match what {
        AnalyzeCommand::Core {
            file,
            root,
            scratch_dir,
            scratch_bytes_max,
            debuginfod_cache,
        } => {
            if !file.exists() {
                bail!("{}: no such file", file.display());
            }
            let scratch = analyze::Scratch {
                dir: scratch_dir.clone().unwrap_or_else(std::env::temp_dir),
                bytes_max: scratch_bytes_max.unwrap_or(u64::MAX),
            };
            let core_context = CoreContext { root: root.clone() };
            let debuginfod_cache = debuginfod_cache
                .clone()
                .unwrap_or_else(|| context.data_dir.join("debuginfod"));
            vec![analyze::analyze_core_here(
                file,
                &core_context,
                &context.config.analysis,
                &scratch,
                Some(&debuginfod_cache),
            )]
        }
        AnalyzeCommand::Oops { file } => {
            analyze::analyze_text(analyze::TextKind::KernelLog, &read_text(file)?)
        }
        AnalyzeCommand::Python { file } => {
            analyze::analyze_text(analyze::TextKind::Python, &read_text(file)?)
        }
        AnalyzeCommand::HsErr { file } => {
            analyze::analyze_text(analyze::TextKind::HsErr, &read_text(file)?)
        }
    };
    if context.json {
        print_json(&AnalysisOutput { problems })?;
    } else if problems.is_empty() {
        println!("no problems found");
    } else {
        for problem in &problems {
            print!("{}", describe_problem(problem));
            println!();
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Text files are read lossily (a kernel log may hold binary garbage) and capped.
fn read_text(path: &Path) -> Result<String> {
    const TEXT_FILE_BYTES_MAX: u64 = 256 * 1024 * 1024;
    let bytes = crashmesh_capture::procsnap::read_capped(path, TEXT_FILE_BYTES_MAX)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A problem for people: reason, signature and the frames as a backtrace. Every field a
/// crash or a log chose passes [`safe`] (no terminal control reaches the terminal).
pub fn describe_problem(problem: &crashmesh_protocol::Problem) -> String {
    let mut text = format!("{}: {}\n", problem.kind, safe(&problem.reason));
    text.push_str(&format!("  signature: {}\n", safe(&problem.signature)));
    if let Some(executable) = &problem.executable {
        text.push_str(&format!("  executable: {}\n", safe(executable)));
    }
    if let Some(exception) = &problem.exception_type {
        text.push_str(&format!(
            "  exception: {}: {}\n",
            safe(exception),
            safe(problem.message.as_deref().unwrap_or(""))
        ));
    }
    if let Some(version) = &problem.version {
        text.push_str(&format!("  version: {}\n", safe(version)));
    }
    if let Some(flags) = problem
        .taint_flags
        .as_ref()
        .filter(|flags| !flags.is_empty())
    {
        text.push_str(&format!("  tainted: {}\n", safe(&flags.join(""))));
    }
    if let Some(error) = &problem.analysis_error {
        text.push_str(&format!("  analysis error: {}\n", safe(error)));
    }
    for (index, frame) in problem.frames.iter().enumerate() {
        let address = frame
            .address
            .map(|a| format!("{a:#018x}"))
            .unwrap_or_else(|| "?".repeat(18));
        let function = safe(frame.function.as_deref().unwrap_or("??"));
        let mut line = format!(
            "  #{index:<3} {address} {}{function}",
            if frame.reliable { "" } else { "? " }
        );
        if let Some(offset) = frame.offset.filter(|_| frame.function.is_some()) {
            line.push_str(&format!("+{offset:#x}"));
        }
        if let Some(module) = &frame.module {
            line.push_str(&format!(" ({})", safe(module)));
        }
        if let (Some(file), Some(number)) = (&frame.file, frame.line) {
            line.push_str(&format!(" at {}:{number}", safe(file)));
        }
        text.push_str(&line);
        text.push('\n');
    }
    text
}

/// `crashmesh config defaults`.
pub fn config_defaults() -> Result<ExitCode> {
    print!("{DEFAULT_CONFIG_TOML}");
    Ok(ExitCode::SUCCESS)
}

/// `crashmesh config show`.
pub fn config_show(context: &Context) -> Result<ExitCode> {
    if context.json {
        print_json(&context.config)?;
    } else {
        print!("{}", toml::to_string_pretty(&context.config)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// `crashmesh privacy preview REPORT`: the report as it would leave the cluster.
///
/// `--json` prints the [`crashmesh_mesh::customer::Preview`]: `mode`, `manifest` (the report's
/// manifest as uploaded: `customer_id`, `problem`, `incidents`, `attachments`, `scrub`
/// with counts per rule) and `texts` (attachment name → scrubbed text, cut).
pub fn privacy(context: &Context, what: &crate::cli::PrivacyCommand) -> Result<ExitCode> {
    let crate::cli::PrivacyCommand::Preview {
        report,
        text_bytes_max,
    } = what;
    if control::ask(&context.data_dir, &Request::Status).is_some() {
        bail!(
            "the daemon of {} holds the store: stop it for a preview",
            context.data_dir.display()
        );
    }
    let store = crashmesh_daemon::open_store(&context.config, &context.data_dir)?;
    let report_id = if report.contains(':') {
        report.clone()
    } else {
        let detail = store
            .problem(report)?
            .with_context(|| format!("no problem or incident {report:?} in this store"))?;
        detail
            .incidents
            .first()
            .map(|incident| incident.report_id.clone())
            .context("the problem has no incident")?
    };
    let node = store
        .incident(&report_id)?
        .map(|incident| incident.node)
        .unwrap_or_else(|| context.config.node_name());
    let cluster_file = if context.config.cluster.cluster_file.as_os_str().is_empty() {
        crashmesh_mesh::certs::ClusterPaths::of_data_dir(&context.data_dir).cluster_file()
    } else {
        context.config.cluster.cluster_file.clone()
    };
    let cluster_id = crashmesh_mesh::certs::read_cluster_file(&cluster_file)
        .map(|file| file.cluster_id)
        .unwrap_or_else(|_| "standalone".to_string());
    let preview = crashmesh_mesh::customer::preview(
        &store,
        &context.config.privacy,
        &context.data_dir,
        &report_id,
        &node,
        &cluster_id,
        *text_bytes_max,
    )?;
    if context.json {
        print_json(&preview)?;
        return Ok(ExitCode::SUCCESS);
    }
    let manifest = &preview.manifest;
    println!(
        "mode: {}",
        match preview.mode {
            crashmesh_mesh::customer::PrivacyMode::Internal => "internal",
            crashmesh_mesh::customer::PrivacyMode::Customer => "customer",
        }
    );
    println!(
        "customer: {}",
        manifest.customer_id.as_deref().unwrap_or("-")
    );
    println!("reason: {}", safe(&manifest.problem.reason));
    println!("signature: {}", safe(&manifest.signature));
    for incident in &manifest.incidents {
        println!("incident: {} on {}", incident.report_id, incident.node);
    }
    if let Some(scrub) = &manifest.scrub {
        println!(
            "scrubbed: {} removed, {} pseudonymized, {} attachment(s) withheld (cores: {})",
            scrub.removed, scrub.replaced, scrub.dropped_attachments, scrub.cores
        );
        for (rule, count) in &scrub.rules {
            println!("  {rule}: {count}");
        }
    }
    for attachment in &manifest.attachments {
        println!(
            "attachment: {} ({} bytes)",
            safe(&attachment.name),
            attachment.blob.len_bytes
        );
    }
    for (name, text) in &preview.texts {
        // The attachment's lines as they are, each one's control characters escaped.
        println!("--- {}", safe(name));
        for line in text.lines() {
            println!("{}", safe(line));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Ask the daemon when it runs, else open the index here (the same [`control::handle`]).
fn query(context: &Context, request: Request) -> Result<Response> {
    if let Some(answer) = control::ask(&context.data_dir, &request) {
        return answer.map_err(|error| anyhow::anyhow!(error));
    }
    if !context.data_dir.join("index.redb").exists() && !matches!(request, Request::Check) {
        bail!(
            "no crashmesh data in {} (nothing captured yet, or another --data-dir)",
            context.data_dir.display()
        );
    }
    let store = crashmesh_daemon::open_store(&context.config, &context.data_dir)?;
    Ok(control::handle(&store, request))
}

fn expect_answer(response: Response) -> Result<Response> {
    match response {
        Response::Error(message) => bail!("{message}"),
        other => Ok(other),
    }
}

/// `crashmesh problems list|show|core`.
pub fn problems(context: &Context, what: &ProblemsCommand) -> Result<ExitCode> {
    match what {
        ProblemsCommand::List => {
            let Response::Problems(mut problems) =
                expect_answer(query(context, Request::Problems)?)?
            else {
                bail!("unexpected answer to problems list");
            };
            problems.sort_by_key(|problem| std::cmp::Reverse(problem.last_seen));
            if context.json {
                return print_json(&serde_json::json!({ "problems": problems }))
                    .map(|_| ExitCode::SUCCESS);
            }
            if problems.is_empty() {
                println!("no problems recorded");
                return Ok(ExitCode::SUCCESS);
            }
            let mut table = Table::new(&[
                "ID",
                "LAST SEEN",
                "COUNT",
                "KIND",
                "FUNCTION",
                "EXECUTABLE / REASON",
            ]);
            for problem in &problems {
                table.row(vec![
                    problem.id.clone(),
                    format_time_ms(problem.last_seen),
                    problem.count.to_string(),
                    problem.kind.to_string(),
                    problem.crash_function.clone().unwrap_or_else(|| "-".into()),
                    problem
                        .executable
                        .clone()
                        .unwrap_or_else(|| problem.reason.clone()),
                ]);
            }
            print!("{}", table.render());
        }
        ProblemsCommand::Show { id } => {
            let Response::Problem(detail) =
                expect_answer(query(context, Request::Problem { id: id.clone() })?)?
            else {
                bail!("unexpected answer to problems show");
            };
            let Some(detail) = detail else {
                bail!("no problem matches {id:?} (see `crashmesh problems list`)")
            };
            // What the endpoint answered, when this node uploaded the problem (an older
            // daemon does not know the request: no answer then).
            let endpoint_reply = match query(
                context,
                Request::EndpointReply {
                    problem_id: detail.summary.id.clone(),
                },
            ) {
                Ok(Response::EndpointReply(reply)) => reply,
                _ => None,
            };
            if context.json {
                let mut value = serde_json::to_value(&detail)?;
                value["endpoint"] = serde_json::to_value(&endpoint_reply)?;
                return print_json(&value).map(|_| ExitCode::SUCCESS);
            }
            let summary = &detail.summary;
            println!("problem {}", summary.id);
            println!(
                "  count: {}  first seen: {}  last seen: {}",
                summary.count,
                format_time_ms(summary.first_seen),
                format_time_ms(summary.last_seen)
            );
            println!(
                "  cores kept: {}  stored: {}",
                summary.cores_kept,
                crashmesh_daemon::config::format_bytes(summary.bytes)
            );
            if let Some(reply) = &endpoint_reply {
                println!(
                    "  endpoint: problem {} ({}){}{}",
                    safe(&reply.problem_id),
                    if reply.known { "known before" } else { "new" },
                    reply
                        .bug
                        .as_ref()
                        .map(
                            |bug| safe(&format!("  bug {} [{}] {}", bug.id, bug.status, bug.url))
                                .into_owned()
                        )
                        .unwrap_or_default(),
                    reply
                        .workaround
                        .as_ref()
                        .map(|workaround| format!("  workaround: {}", safe(workaround)))
                        .unwrap_or_default()
                );
            }
            print!("{}", describe_problem(&detail.problem));
            println!("incidents:");
            let mut table = Table::new(&["TIME", "NODE", "PID", "SIGNAL", "CORE", "REPORT"]);
            for incident in &detail.incidents {
                table.row(vec![
                    format_time_ms(incident.time_ms),
                    incident.node.clone(),
                    incident
                        .pid
                        .map(|pid| pid.to_string())
                        .unwrap_or_else(|| "-".into()),
                    incident
                        .signal
                        .map(crashmesh_coredump::signal_name)
                        .unwrap_or_else(|| "-".into()),
                    incident
                        .core
                        .as_ref()
                        .map(|core| {
                            format!(
                                "{:?} {}",
                                core.state,
                                crashmesh_daemon::config::format_bytes(core.len_bytes)
                            )
                        })
                        .unwrap_or_else(|| "none".into()),
                    incident.report_id.clone(),
                ]);
            }
            print!("{}", table.render());
        }
        ProblemsCommand::Core { id, out } => {
            let out = absolute(out);
            let Response::Exported { bytes } = expect_answer(query(
                context,
                Request::ExportCore {
                    id: id.clone(),
                    out: out.clone(),
                },
            )?)?
            else {
                bail!("unexpected answer to problems core");
            };
            if context.json {
                print_json(&serde_json::json!({ "out": out, "bytes": bytes }))?;
            } else {
                println!("wrote {} bytes of core to {}", bytes, out.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `crashmesh status`.
pub fn status(context: &Context) -> Result<ExitCode> {
    let daemon_running = control::ask(&context.data_dir, &Request::Status).is_some();
    let store_status = match query(context, Request::Status) {
        Ok(Response::Status(status)) => Some(status),
        Ok(Response::Error(message)) => bail!("{message}"),
        Ok(_) => bail!("unexpected answer to status"),
        Err(_) if !context.data_dir.join("index.redb").exists() => None,
        Err(error) => return Err(error),
    };
    let pending = crashmesh_capture::spool::Spool::new(&context.data_dir)
        .list()
        .map(|entries| entries.len())
        .unwrap_or(0);
    let core_pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern")
        .unwrap_or_default()
        .trim_end()
        .to_string();
    let hook_installed =
        core_pattern.starts_with('|') && core_pattern.contains("crashmesh hook core");
    let mesh = match control::ask(&context.data_dir, &Request::Mesh) {
        Some(Ok(Response::Mesh(view))) => view,
        _ => None,
    };
    if context.json {
        return print_json(&serde_json::json!({
            "node": context.config.node_name(),
            "data_dir": context.data_dir,
            "daemon_running": daemon_running,
            "hook_installed": hook_installed,
            "core_pattern": core_pattern,
            "spool_pending": pending,
            "store": store_status,
            "cluster": cluster_json(context, mesh.as_ref()),
        }))
        .map(|_| ExitCode::SUCCESS);
    }
    println!("node: {}", context.config.node_name());
    println!("data dir: {}", context.data_dir.display());
    println!(
        "daemon: {}",
        if daemon_running {
            "running"
        } else {
            "not running"
        }
    );
    println!(
        "hook: {} (core_pattern {core_pattern:?})",
        if hook_installed {
            "installed"
        } else {
            "not installed"
        }
    );
    println!("spool: {pending} entries waiting");
    if let Some(status) = store_status {
        let percent = if status.allowed_bytes > 0 {
            status.used_bytes as f64 * 100.0 / status.allowed_bytes as f64
        } else {
            0.0
        };
        println!(
            "store: {} of {} used ({percent:.0}%), {} problems, {} incidents, {} chunks, {} evicted so far",
            crashmesh_daemon::config::format_bytes(status.used_bytes),
            crashmesh_daemon::config::format_bytes(status.allowed_bytes),
            status.problems,
            status.incidents,
            status.chunks,
            crashmesh_daemon::config::format_bytes(status.evicted_bytes)
        );
        println!(
            "file system: {} free of {}",
            crashmesh_daemon::config::format_bytes(status.fs_free_bytes),
            crashmesh_daemon::config::format_bytes(status.fs_total_bytes)
        );
    } else {
        println!("store: empty");
    }
    print_cluster(context, mesh.as_ref());
    Ok(ExitCode::SUCCESS)
}

/// `status --json`'s `cluster` object: `enabled`, `running` (the daemon's mesh is up),
/// `node`, `cluster_id`, `term`, `aggregator`, `role`, `members` (`name`, `state`: alive,
/// suspect, down or unknown), `pending_incidents` (this node's, not yet uploaded),
/// `problems` (the aggregator's: `signature`, `at_endpoint`, `uploaded_incidents`,
/// `pending_incidents`); the mesh's fields are null when it does not run.
fn cluster_json(
    context: &Context,
    mesh: Option<&crashmesh_mesh::actor::MeshView>,
) -> serde_json::Value {
    let enabled = context.config.cluster.enabled;
    match mesh {
        Some(view) => serde_json::json!({
            "enabled": enabled,
            "running": true,
            "node": view.node,
            "cluster_id": view.cluster_id,
            "term": view.term,
            "aggregator": view.aggregator,
            "role": view.role,
            "members": view.members,
            "pending_incidents": view.pending_incidents,
            "problems": view.problems,
        }),
        None => serde_json::json!({
            "enabled": enabled,
            "running": false,
            "node": context.config.node_name(),
            "cluster_id": null,
            "term": null,
            "aggregator": null,
            "role": null,
            "members": [],
            "pending_incidents": null,
            "problems": [],
        }),
    }
}

fn print_cluster(context: &Context, mesh: Option<&crashmesh_mesh::actor::MeshView>) {
    let Some(view) = mesh else {
        if context.config.cluster.enabled {
            println!("cluster: enabled, but the daemon's mesh is not running");
        } else {
            println!("cluster: standalone (no [cluster] enabled)");
        }
        return;
    };
    println!(
        "cluster {}: term {}, aggregator {}, this node is {}",
        view.cluster_id,
        view.term,
        view.aggregator.as_deref().unwrap_or("(none)"),
        view.role
    );
    for member in &view.members {
        println!("  {:<24} {}", member.name, member.state);
    }
}

/// `crashmesh store check`: exit 1 when damage remains that could not be repaired.
pub fn store(context: &Context, what: &StoreCommand) -> Result<ExitCode> {
    let StoreCommand::Check = what;
    let Response::Check(report) = expect_answer(query(context, Request::Check)?)? else {
        bail!("unexpected answer to store check");
    };
    if context.json {
        print_json(&report)?;
    } else {
        println!(
            "checked {} blobs, {} chunks: {} missing, {} corrupt, {} orphaned files, {} refcount mismatches",
            report.blobs_checked,
            report.chunks_checked,
            report.missing_chunks.len(),
            report.corrupt_chunks.len(),
            report.orphan_files.len(),
            report.refcount_mismatches
        );
        for (what, why) in &report.dropped_references {
            println!("  dropped reference {what}: {why}");
        }
        for problem in &report.unrepaired {
            println!("  NOT REPAIRED: {problem}");
        }
    }
    Ok(if report.unrepaired.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

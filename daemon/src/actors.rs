//! The daemon's actors. Actors are thin: each owns one duty and moves work to the
//! blocking pool (analysis, hashing, index commits never run on an actor's thread).
//!
//! - [`IngestActor`]: indexes complete spool entries (the detector for cores).
//! - [`QuotaActor`]: keeps the store inside its limits between writes.
//! - [`GatherActor`]: gathers each incident's logs once its window has passed.
//! - the control socket answers the CLI (see [`crate::control`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use anyhow::{Context as _, Result};
use crashmesh_store::Store;

use crashmesh_capture::clock::Clock;

use crate::Settings;
use crate::config::Config;
use crate::control;
use crate::ingest::Ingester;
use crashmesh_capture::spool::Spool;

/// How often the spool is looked at for new entries.
pub const SPOOL_POLL_INTERVAL_MS: u64 = 200;
/// How often quotas are enforced besides after every write.
pub const QUOTA_INTERVAL_SECS: u64 = 30;

/// How long a spool writer may go without writing before its entry counts as abandoned:
/// the hook's own time limit and a margin.
pub fn writer_idle_limit(config: &Config) -> Duration {
    Duration::from_secs(config.capture.time_limit_secs + 60)
}

/// Open the store the node's configuration describes.
pub fn open_store(config: &Config, data_dir: &std::path::Path) -> Result<Store> {
    let limits = &config.store;
    let config = crashmesh_store::StoreConfig {
        max_bytes: limits.max_bytes.0,
        keep_free_percent: limits.keep_free_percent,
        max_cores_per_signature: limits.max_cores_per_signature,
        max_age_days: limits.max_age_days,
    };
    Store::open(data_dir, config)
        .with_context(|| format!("opening the store in {}", data_dir.display()))
}

/// Run the daemon until SIGINT/SIGTERM, or with `once` until the spool is empty.
pub fn run(settings: &Settings, clock: Arc<dyn Clock>, once: bool) -> Result<()> {
    let context = settings;
    let tightened = crashmesh_store::make_private(&context.data_dir)
        .with_context(|| format!("making {} private", context.data_dir.display()))?;
    if tightened.changed > 0 {
        tracing::warn!(
            changed = tightened.changed,
            "the data dir held files others could read; they are now the owner's alone"
        );
    }
    for link in &tightened.symlinks {
        tracing::warn!(link = %link.display(), "a symlink in the data dir (not followed)");
    }
    let spool = Spool::new(&context.data_dir);
    spool.create_dirs()?;
    let abandoned = spool.clean_tmp(writer_idle_limit(&context.config))?;
    if abandoned > 0 {
        tracing::info!(
            abandoned,
            "removed spool entries a dead writer left unfinished"
        );
    }
    let _ = std::fs::remove_dir_all(context.data_dir.join("scratch"));
    let store = Arc::new(open_store(&context.config, &context.data_dir)?);
    // The mesh (when `[cluster] enabled`): settings checked before anything starts.
    let mesh_settings = if once {
        None
    } else {
        crashmesh_mesh::actor::MeshSettings::from_config(
            crashmesh_mesh::actor::NodeParts {
                node_name: &context.config.node_name(),
                labels: &context.config.node.labels,
                cluster: &context.config.cluster,
                upload: &context.config.upload,
                events: &context.config.events,
                gather: &context.config.gather,
            },
            &context.data_dir,
        )?
    };
    let (announcements, announcement_receiver) = match &mesh_settings {
        Some(_) => {
            let (sender, receiver) = crashmesh_mesh::actor::announcement_channel();
            (Some(sender), Some(receiver))
        }
        None => (None, None),
    };
    let mesh_view: crashmesh_mesh::actor::SharedMeshView = Default::default();
    let ingester = Arc::new(Ingester {
        store: store.clone(),
        config: context.config.clone(),
        config_file: context.config_file.clone(),
        data_dir: context.data_dir.clone(),
        binary: context.binary.clone(),
        node_name: context.config.node_name(),
        clock: clock.clone(),
        announcements,
    });

    if once {
        loop {
            let summary = ingester.pass()?;
            if summary.recorded + summary.set_aside == 0 {
                break;
            }
        }
        store.enforce_quota(clock.now_ms())?;
        return Ok(());
    }

    let socket = control::socket_path(&context.data_dir);
    let data_dir = context.data_dir.clone();
    let detect_config = context.config.detect.clone();
    let gather_config = context.config.gather.clone();
    let writer_idle_limit = writer_idle_limit(&context.config);
    let proc_file_bytes_max = context.config.capture.proc_file_bytes_max.0;
    let ignore_paths = context.config.capture.ignore_paths.clone();
    let python_socket_config = context.config.python.socket.clone();
    let python_socket_path =
        crashmesh_capture::python::socket_path(&data_dir, &python_socket_config);
    let system = actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    });
    let result: Result<()> = system.block_on(async move {
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket)
            .with_context(|| format!("binding {}", socket.display()))?;
        restrict_to_owner(&socket);
        tokio::spawn(control::serve(listener, store.clone(), mesh_view.clone()));
        if let Some(settings) = mesh_settings {
            let mesh = crashmesh_mesh::actor::start(settings, store.clone(), mesh_view.clone()).await?;
            if let Some(receiver) = announcement_receiver {
                crashmesh_mesh::actor::forward_announcements(receiver, mesh);
            }
        }
        let python_socket = crashmesh_capture::python::socket_path(&data_dir, &python_socket_config);
        match crashmesh_detect::python::listen(&python_socket) {
            Ok(listener) => {
                tokio::spawn(crashmesh_detect::python::serve(
                    listener,
                    data_dir.clone(),
                    proc_file_bytes_max,
                    clock.clone(),
                ));
            }
            Err(error) => {
                tracing::warn!(%error, "the Python socket is off; exceptions of root's processes still reach the spool")
            }
        }
        IngestActor {
            ingester,
            busy: false,
        }
        .start();
        crashmesh_detect::start(crashmesh_detect::DetectContext {
            data_dir: &data_dir,
            config: &detect_config,
            store: store.clone(),
            ignore_paths,
            clock: clock.clone(),
        });
        if gather_config.enabled {
            GatherActor {
                store: store.clone(),
                data_dir: data_dir.clone(),
                config: gather_config,
                clock: clock.clone(),
                busy: false,
            }
            .start();
        }
        QuotaActor {
            store: store.clone(),
            spool: Spool::new(&data_dir),
            writer_idle_limit,
            clock: clock.clone(),
            busy: false,
        }
        .start();
        tracing::info!(socket = %socket.display(), "crashmesh node running");
        wait_for_shutdown().await;
        tracing::info!("shutting down");
        let _ = std::fs::remove_file(&socket);
        let _ = std::fs::remove_file(&python_socket_path);
        Ok(())
    });
    result
}

fn restrict_to_owner(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

async fn wait_for_shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = terminate.recv() => {},
        _ = interrupt.recv() => {},
    }
}

/// Indexes spool entries: one pass at a time, on the blocking pool.
pub struct IngestActor {
    ingester: Arc<Ingester>,
    busy: bool,
}

impl Actor for IngestActor {
    type Context = actix::Context<Self>;

    fn started(&mut self, context: &mut Self::Context) {
        context.run_interval(
            Duration::from_millis(SPOOL_POLL_INTERVAL_MS),
            |actor, context| actor.tick(context),
        );
    }
}

impl IngestActor {
    fn tick(&mut self, context: &mut actix::Context<Self>) {
        if self.busy {
            return;
        }
        self.busy = true;
        let ingester = self.ingester.clone();
        let pass = tokio::task::spawn_blocking(move || ingester.pass());
        context.spawn(
            actix::fut::wrap_future(pass).map(|result, actor: &mut IngestActor, _| {
                actor.busy = false;
                match result {
                    Ok(Ok(summary)) if summary.recorded + summary.set_aside > 0 => {
                        tracing::debug!(?summary, "ingest pass");
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => tracing::error!(%error, "ingest pass failed; will retry"),
                    Err(error) => tracing::error!(%error, "ingest pass panicked; will retry"),
                }
            }),
        );
    }
}

/// Keeps the store inside its quota between writes (the disk may fill from elsewhere).
pub struct QuotaActor {
    store: Arc<Store>,
    /// Abandoned spool entries are cleaned on the same beat.
    spool: Spool,
    writer_idle_limit: Duration,
    clock: Arc<dyn Clock>,
    busy: bool,
}

impl Actor for QuotaActor {
    type Context = actix::Context<Self>;

    fn started(&mut self, context: &mut Self::Context) {
        context.run_interval(
            Duration::from_secs(QUOTA_INTERVAL_SECS),
            |actor, context| {
                if actor.busy {
                    return;
                }
                actor.busy = true;
                let store = actor.store.clone();
                let spool = actor.spool.clone();
                let idle = actor.writer_idle_limit;
                let clock = actor.clock.clone();
                let pass = tokio::task::spawn_blocking(move || {
                    if let Err(error) = spool.clean_tmp(idle) {
                        tracing::warn!(%error, "cannot clean abandoned spool entries");
                    }
                    store.enforce_quota(clock.now_ms())
                });
                context.spawn(actix::fut::wrap_future(pass).map(
                    |result, actor: &mut QuotaActor, _| {
                        actor.busy = false;
                        match result {
                            Ok(Ok(report)) if report.freed_bytes > 0 => {
                                tracing::info!(
                                    freed_bytes = report.freed_bytes,
                                    over = report.still_over_quota,
                                    "quota enforced"
                                )
                            }
                            Ok(Ok(_)) => {}
                            Ok(Err(error)) => tracing::error!(%error, "quota pass failed"),
                            Err(error) => tracing::error!(%error, "quota pass panicked"),
                        }
                    },
                ));
            },
        );
    }
}

/// How often pending log gatherings are looked at.
pub const GATHER_INTERVAL_MS: u64 = 1000;

/// Gathers each incident's logs once the window after it has passed (see
/// [`crashmesh_gather::logs`]), one batch at a time on the blocking pool.
pub struct GatherActor {
    store: Arc<Store>,
    data_dir: PathBuf,
    config: crashmesh_gather::logs::GatherConfig,
    clock: Arc<dyn Clock>,
    busy: bool,
}

impl Actor for GatherActor {
    type Context = actix::Context<Self>;

    fn started(&mut self, context: &mut Self::Context) {
        context.run_interval(
            Duration::from_millis(GATHER_INTERVAL_MS),
            |actor, context| {
                if actor.busy {
                    return;
                }
                actor.busy = true;
                let (store, data_dir, config, clock) = (
                    actor.store.clone(),
                    actor.data_dir.clone(),
                    actor.config.clone(),
                    actor.clock.clone(),
                );
                let pass = tokio::task::spawn_blocking(move || {
                    gather_due(&store, &data_dir, &config, clock.now_ms())
                });
                context.spawn(actix::fut::wrap_future(pass).map(
                    |result, actor: &mut GatherActor, _| {
                        actor.busy = false;
                        if let Err(error) = result {
                            tracing::error!(%error, "gather pass panicked");
                        }
                    },
                ));
            },
        );
    }
}

/// Run every due gathering: store what it found on its incident, then drop the job.
pub fn gather_due(
    store: &Store,
    data_dir: &std::path::Path,
    config: &crashmesh_gather::logs::GatherConfig,
    now_ms: u64,
) {
    for (path, job) in crashmesh_gather::logs::due_jobs(data_dir, now_ms) {
        let gathered = crashmesh_gather::logs::gather(config, &job, now_ms);
        let mut attachments = Vec::new();
        let mut notes = gathered.notes;
        for (name, bytes) in gathered.attachments {
            match store.put_blob_bytes(&bytes) {
                Ok(blob) => attachments.push((name, blob)),
                Err(error) => notes.push(format!("{name}: not stored: {error}")),
            }
        }
        if !notes.is_empty() {
            match store.put_blob_bytes((notes.join("\n") + "\n").as_bytes()) {
                Ok(blob) => attachments.push(("gather/notes.txt".to_string(), blob)),
                Err(error) => tracing::warn!(%error, "cannot store gather notes"),
            }
        }
        match store.add_attachments(&job.report_id, attachments) {
            Ok(added) => tracing::info!(report = %job.report_id, added, "logs gathered"),
            Err(error) => tracing::warn!(report = %job.report_id, %error, "gathered logs not kept"),
        }
        if let Err(error) = std::fs::remove_file(&path) {
            tracing::warn!(%error, "cannot remove a finished gather job");
        }
    }
}

//! The detector's work on one spool entry: analyse it, store its evidence as blobs,
//! record the incident in the index, and only then delete the entry.
//!
//! Invariant: an entry leaves the spool only after the index commit that records it
//! (report ids make recording idempotent, so a crash in between re-records nothing). An
//! entry that cannot be read is moved to `spool/bad/` with the reason beside it, so it is
//! kept for a person and never retried forever.

use std::io::BufReader;
use std::path::{Path, PathBuf};

use crashmesh_protocol::{Problem, ProblemKind};
use crashmesh_store::{NewIncident, Recorded, Store};

use crate::analyze::{self, CoreContext};
use crate::config::Config;
use crashmesh_capture::spool::{Entry, EntryMeta, Source, Spool};

/// Entries handled per pass, so that a flood cannot starve the quota pass.
pub const ENTRIES_PER_PASS_MAX: usize = 64;

/// Everything the ingest needs, shared by the daemon's actors.
pub struct Ingester {
    pub store: std::sync::Arc<Store>,
    pub config: Config,
    pub config_file: Option<PathBuf>,
    pub data_dir: PathBuf,
    /// The `crashmesh` binary that runs isolated analyses.
    pub binary: PathBuf,
    pub node_name: String,
    /// The wall clock (when an entry waited since, quota passes).
    pub clock: std::sync::Arc<dyn crashmesh_capture::clock::Clock>,
    /// Where new incidents are announced to the mesh (`None`: standalone).
    pub announcements: Option<tokio::sync::mpsc::Sender<crashmesh_protocol::wire::Announcement>>,
}

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PassSummary {
    pub recorded: usize,
    pub new_problems: usize,
    pub set_aside: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] crashmesh_store::StoreError),
    #[error(transparent)]
    Spool(#[from] crashmesh_capture::spool::SpoolError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Ingester {
    /// Index up to [`ENTRIES_PER_PASS_MAX`] complete spool entries.
    pub fn pass(&self) -> Result<PassSummary, IngestError> {
        let spool = Spool::new(&self.data_dir);
        let mut summary = PassSummary::default();
        for listed in spool.list()?.into_iter().take(ENTRIES_PER_PASS_MAX) {
            match listed {
                Ok(entry) if self.waits_for_its_original(&spool, &entry) => continue,
                Ok(entry) => {
                    if let Some((recorded, problem)) = self.already_recorded(&entry)? {
                        // Recorded before a crash that came before the entry's removal:
                        // finish what that pass did not.
                        tracing::info!(entry = %entry.meta.id, problem = %recorded.problem_id, "spool entry already recorded; removed");
                        discard_entry(&spool, &entry.dir)?;
                        self.after_recording(&entry.meta, &recorded, problem);
                        continue;
                    }
                    let (recorded, problem) = self.ingest(&entry)?;
                    summary.recorded += 1;
                    summary.new_problems += usize::from(recorded.new_problem);
                    tracing::info!(
                        entry = %entry.meta.id,
                        problem = %recorded.problem_id,
                        new = recorded.new_problem,
                        count = recorded.count,
                        core_kept = recorded.core_kept,
                        "recorded incident"
                    );
                    discard_entry(&spool, &entry.dir)?;
                    self.after_recording(&entry.meta, &recorded, problem);
                }
                Err((dir, error)) => {
                    tracing::warn!(entry = %dir.display(), %error, "unreadable spool entry set aside in spool/bad");
                    set_aside(&spool, &dir, &error.to_string())?;
                    summary.set_aside += 1;
                }
            }
        }
        if summary.recorded > 0 {
            // After the entries left the spool: their bytes must not make room for themselves
            // by evicting evidence.
            self.store.enforce_quota(self.clock.now_ms())?;
        }
        Ok(summary)
    }

    /// A crash-loop repeat is counted on the problem of the capture it repeats, so that
    /// capture must be indexed first; it may still be streaming its core. It is waited
    /// for as long as the hook may take, no longer.
    fn waits_for_its_original(&self, spool: &Spool, entry: &Entry) -> bool {
        let Some(original) = &entry.meta.repeat_of else {
            return false;
        };
        let pending =
            spool.new_dir().join(original).exists() || spool.tmp_dir().join(original).exists();
        let waited_ms = self.clock.now_ms().saturating_sub(entry.meta.time_ms);
        pending && waited_ms < (self.config.capture.time_limit_secs + 60) * 1000
    }

    /// The incident of an entry the index already holds (and its problem), if any.
    fn already_recorded(&self, entry: &Entry) -> Result<Option<(Recorded, Problem)>, IngestError> {
        let Some(incident) = self.store.incident(&self.report_id(&entry.meta.id))? else {
            return Ok(None);
        };
        let Some(detail) = self.store.problem(&incident.problem_id)? else {
            return Ok(None);
        };
        let core_kept = incident
            .core
            .as_ref()
            .is_some_and(|core| core.state == crashmesh_store::EvidenceState::Kept);
        Ok(Some((
            Recorded {
                problem_id: incident.problem_id,
                new_problem: false,
                count: detail.summary.count,
                core_kept,
            },
            detail.problem,
        )))
    }

    fn report_id(&self, entry_id: &str) -> String {
        format!("{}:{entry_id}", self.node_name)
    }

    /// What follows a new incident: its logs are gathered once the window after it has
    /// passed (a durable job), and the configured events fire. Neither can fail capture.
    fn after_recording(&self, meta: &EntryMeta, recorded: &Recorded, problem: Problem) {
        let report_id = self.report_id(&meta.id);
        self.announce(&report_id, &problem);
        if self.config.gather.enabled && meta.suppressed_count.is_none() {
            let job = crashmesh_gather::logs::GatherJob {
                report_id: report_id.clone(),
                kind: problem.kind.to_string(),
                executable: problem.executable.clone(),
                time_ms: meta.time_ms,
                due_ms: meta.time_ms + self.config.gather.after_secs * 1000,
            };
            if let Err(error) = crashmesh_gather::logs::queue_job(&self.data_dir, &job) {
                tracing::warn!(%error, report = %report_id, "cannot queue log gathering");
            }
        }
        let kind = if recorded.new_problem {
            crashmesh_gather::events::EventKind::ProblemCreated
        } else {
            crashmesh_gather::events::EventKind::Incident
        };
        let context = crashmesh_gather::events::EventContext {
            kind,
            problem_id: recorded.problem_id.clone(),
            report_id,
            count: recorded.count,
            node: self.node_name.clone(),
            problem,
        };
        crashmesh_gather::events::fire(
            &self.config.events,
            context,
            self.store.clone(),
            &self.data_dir.join("scratch"),
        );
    }

    /// Tells the mesh about a new incident (never blocks: a full queue is logged; the
    /// incident stays in the store).
    fn announce(&self, report_id: &str, problem: &Problem) {
        let Some(announcements) = &self.announcements else {
            return;
        };
        let incident = match self.store.incident(report_id) {
            Ok(Some(incident)) => incident,
            Ok(None) => return,
            Err(error) => {
                return tracing::warn!(report = %report_id, %error, "incident not announced to the mesh");
            }
        };
        let announcement = crashmesh_mesh::report::announcement(
            &crashmesh_protocol::wire::NodeId(self.node_name.clone()),
            &self.config.node.labels,
            &incident,
            problem,
        );
        if let Err(error) = announcements.try_send(announcement) {
            tracing::warn!(report = %report_id, %error, "incident not announced to the mesh");
        }
    }

    /// Index one entry; idempotent by its report id. Gives back the problem it was
    /// recorded as.
    pub fn ingest(&self, entry: &Entry) -> Result<(Recorded, Problem), IngestError> {
        let meta = &entry.meta;
        let problem = self.problem_of(entry)?;
        if let Some(extra) = meta.suppressed_count.filter(|&extra| extra > 0) {
            // A flood's held-back occurrences count on the problem they repeat.
            if let Some(summary) = self.store.problem_of_signature(&problem.signature)? {
                let count = self
                    .store
                    .add_repeat_count(&summary.id, extra, meta.time_ms)?;
                let recorded = Recorded {
                    problem_id: summary.id,
                    new_problem: false,
                    count,
                    core_kept: false,
                };
                return Ok((recorded, problem));
            }
        }
        let mut attachments = Vec::new();
        let meta_path = entry.dir.join("meta.json");
        attachments.push(("meta.json".to_string(), self.put_file(&meta_path)?));
        for relative in &meta.proc_files {
            let path = entry.dir.join(relative);
            if path.is_file() {
                attachments.push((relative.clone(), self.put_file(&path)?));
            }
        }
        let core =
            match &meta.core {
                Some(core) if self.wants_core(&problem.signature)? => {
                    let path = entry.dir.join(&core.file);
                    let file = std::fs::File::open(&path).map_err(|source| IngestError::Io {
                        path: path.clone(),
                        source,
                    })?;
                    let mut decoder = zstd::stream::read::Decoder::new(BufReader::new(file))
                        .map_err(|source| IngestError::Io {
                            path: path.clone(),
                            source,
                        })?;
                    Some(self.store.put_blob(&mut decoder)?)
                }
                _ => None,
            };
        let incident = NewIncident {
            report_id: self.report_id(&meta.id),
            time_ms: meta.time_ms,
            node: self.node_name.clone(),
            executable: meta
                .executable
                .clone()
                .or_else(|| problem.executable.clone()),
            pid: meta.pid,
            uid: meta.uid,
            signal: meta.signal,
            core,
            core_truncated: meta
                .core
                .as_ref()
                .is_some_and(|core| core.truncated.is_some()),
            attachments,
            labels: self.config.node.labels.clone(),
            problem: problem.clone(),
        };
        let recorded = self.store.record_incident(incident)?;
        Ok((recorded, problem))
    }

    /// Is a core of this signature still wanted (fewer than max_cores_per_signature kept)?
    fn wants_core(&self, signature: &str) -> Result<bool, IngestError> {
        let kept = self
            .store
            .problem_of_signature(signature)?
            .map(|summary| summary.cores_kept);
        Ok(kept.is_none_or(|kept| kept < self.config.store.max_cores_per_signature))
    }

    /// Where the analysis child decompresses a core: the data dir's `scratch/`, so the
    /// copy counts against the quota, at most what the quota and the hook's free-space
    /// floor (`capture.min_free_bytes`) leave.
    fn scratch(&self) -> analyze::Scratch {
        let bytes_max = match self.store.status() {
            Ok(status) => status.allowed_bytes.saturating_sub(status.used_bytes).min(
                status
                    .fs_free_bytes
                    .saturating_sub(self.config.capture.min_free_bytes.0),
            ),
            Err(error) => {
                tracing::warn!(%error, "cannot measure the store; cores are not decompressed");
                0
            }
        };
        analyze::Scratch {
            dir: self.data_dir.join("scratch"),
            bytes_max,
        }
    }

    fn put_file(&self, path: &Path) -> Result<crashmesh_store::BlobId, IngestError> {
        let file = std::fs::File::open(path).map_err(|source| IngestError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(self.store.put_blob(&mut BufReader::new(file))?)
    }

    /// The entry's problem: analysed by its writer, analysed now from the core, or, for a
    /// crash without a core, the problem its executable last had (a crash loop).
    fn problem_of(&self, entry: &Entry) -> Result<Problem, IngestError> {
        let meta = &entry.meta;
        if let Some(problem) = &meta.problem {
            return Ok(problem.clone());
        }
        if meta.source == Source::Python {
            return Ok(crashmesh_detect::python::problem_of_entry(&entry.dir, meta)
                .unwrap_or_else(|| {
                    analyze::failed_problem(
                        ProblemKind::Python,
                        "no traceback could be parsed",
                        meta.executable.as_deref(),
                    )
                }));
        }
        if let Some(core) = &meta.core {
            let context = CoreContext {
                root: meta
                    .root
                    .as_ref()
                    .map(PathBuf::from)
                    .filter(|root| root.exists()),
            };
            let core_path = entry.dir.join(&core.file);
            let mut problem = analyze::analyze_core_isolated(
                &self.binary,
                &core_path,
                &context,
                self.config_file.as_deref(),
                &self.config.analysis,
                &self.scratch(),
                &self.data_dir.join("debuginfod"),
            )
            .unwrap_or_else(|error| {
                tracing::warn!(entry = %meta.id, %error, "core analysis failed; recording the incident without frames");
                analyze::failed_core_problem(&error.to_string(), meta.executable.as_deref(), meta.signal)
            });
            if let Some(truncated) = &core.truncated {
                problem
                    .analysis_error
                    .get_or_insert_with(|| format!("core truncated: {truncated}"));
            }
            if problem.executable.is_none() {
                problem.executable = meta.executable.clone();
            }
            if problem.package.is_none() {
                problem.package = problem
                    .executable
                    .as_deref()
                    .and_then(|exe| crate::package::owner(Path::new(exe)));
            }
            return Ok(problem);
        }
        if let Some(original) = &meta.repeat_of {
            let incident = self.store.incident(&self.report_id(original))?;
            if let Some(incident) = incident
                && let Some(detail) = self.store.problem(&incident.problem_id)?
            {
                return Ok(detail.problem);
            }
        }
        if meta.repeat
            && let Some(previous) = self.latest_problem_of(meta)?
        {
            return Ok(previous);
        }
        Ok(coreless_problem(meta))
    }

    fn latest_problem_of(&self, meta: &EntryMeta) -> Result<Option<Problem>, IngestError> {
        let Some(executable) = meta.executable.as_deref() else {
            return Ok(None);
        };
        let latest = self
            .store
            .problems()?
            .into_iter()
            .filter(|summary| {
                summary.kind == ProblemKind::Core
                    && summary.executable.as_deref() == Some(executable)
            })
            .max_by_key(|summary| summary.last_seen);
        let Some(latest) = latest else {
            return Ok(None);
        };
        Ok(self.store.problem(&latest.id)?.map(|detail| detail.problem))
    }
}

/// The problem of a crash whose core was dropped (low disk, RLIMIT_CORE 0, …): grouped by
/// executable and signal, the only facts there are.
fn coreless_problem(meta: &EntryMeta) -> Problem {
    let reason = meta.core_dropped.as_deref().unwrap_or("no core");
    let mut problem = analyze::failed_core_problem(
        &format!("no core: {reason}"),
        meta.executable.as_deref(),
        meta.signal,
    );
    problem.reason = format!(
        "{} in {} (no core: {reason})",
        crashmesh_coredump::signal_name(meta.signal.unwrap_or(0)),
        meta.executable
            .as_deref()
            .or(meta.comm.as_deref())
            .unwrap_or("?")
    );
    problem
}

fn set_aside(spool: &Spool, dir: &Path, reason: &str) -> Result<(), IngestError> {
    let bad = spool.root.join("bad");
    std::fs::create_dir_all(&bad).map_err(|source| IngestError::Io {
        path: bad.clone(),
        source,
    })?;
    let name = dir
        .file_name()
        .map(|name| name.to_owned())
        .unwrap_or_default();
    let target = bad.join(&name);
    std::fs::rename(dir, &target).map_err(|source| IngestError::Io {
        path: target.clone(),
        source,
    })?;
    let _ = std::fs::write(target.with_extension("reason"), reason);
    Ok(())
}

/// Removes a recorded entry from the spool at once: renamed into `spool/tmp/` (one atomic
/// step, so a crash never leaves a half-deleted entry in `new/` whose `meta.json` names a
/// core that is gone), then deleted there; a leftover is cleaned like any dead writer's.
fn discard_entry(spool: &Spool, dir: &Path) -> Result<(), IngestError> {
    let name = dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let trash = spool.tmp_dir().join(format!(".done-{name}"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IngestError::Io { path, source }
    };
    std::fs::create_dir_all(spool.tmp_dir()).map_err(io(&spool.tmp_dir()))?;
    std::fs::rename(dir, &trash).map_err(io(dir))?;
    std::fs::remove_dir_all(&trash).map_err(io(&trash))
}

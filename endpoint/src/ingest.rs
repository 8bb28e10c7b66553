//! Recording reports and incident updates: grouping into problems, rules, bugs,
//! regressions, fencing — all in one redb write transaction per batch.
//!
//! One committer thread owns every write of ingest. Requests queue jobs to it (bounded,
//! [`QUEUE_LEN_MAX`]); it takes up to [`BATCH_JOBS_MAX`] at a time, runs them in one
//! transaction and commits once (group commit), then answers each. Invariants:
//! - each job checks everything that can refuse it (term, report, signature) before it
//!   writes anything, so a refused job leaves nothing behind in the shared transaction;
//! - a storage error aborts the whole batch and every job in it is answered with it
//!   (the callers retry; nothing of the batch was committed);
//! - webhook events are sent only after the commit that made them true.

use std::collections::{BTreeSet, HashMap};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use crashmesh_protocol::Problem;
use crashmesh_protocol::report::{Incident, IncidentUpdate, ReportManifest, UploadReply};
use redb::{ReadableTable, Table, WriteTransaction};
use tokio::sync::oneshot;

use crate::db::{
    ANALYSES, BUGS, BugRow, COMMENTS, Db, HOURS_PER_PROBLEM_MAX, INCIDENTS, IncidentRow, META,
    META_NEXT_BUG, PROBLEMS, ProblemRow, RECENT_INCIDENTS_MAX, REPORTS, REPORTS_PER_PROBLEM_MAX,
    ReportRow, TERMS, decode, encode, encode_with, insert_bounded, save_bug,
};
use crate::error::EndpointError;
use crate::metrics::Metrics;
use crate::rules::Rule;
use crate::webhook::{Event, Webhooks};

/// Jobs waiting for the committer; more are refused with 429.
pub const QUEUE_LEN_MAX: usize = 4096;
/// Jobs in one transaction.
pub const BATCH_JOBS_MAX: usize = 512;

/// What the committer needs besides the database.
pub struct IngestContext {
    /// Chunk storage: before a batch that records reports commits, the chunks stored so
    /// far are made durable and indexed in the same transaction, so a recorded report
    /// never names a chunk a power cut could lose.
    pub blobs: crate::blobs::Blobs,
    pub rules: Vec<Rule>,
    pub public_url: String,
    pub webhooks: Webhooks,
    pub metrics: Arc<Metrics>,
}

enum Job {
    Complete {
        manifest: Arc<ReportManifest>,
        /// `None`: the manifest's problem as sent.
        analysis: Option<Box<Problem>>,
        answer: oneshot::Sender<Result<UploadReply, EndpointError>>,
    },
    Update {
        update: IncidentUpdate,
        answer: oneshot::Sender<Result<UploadReply, EndpointError>>,
    },
}

/// What the committer thread receives.
enum Command {
    Run(Job),
    /// Finish what came before and end the thread ([`Committer::stop`]).
    Stop,
}

/// The handle requests use to reach the committer thread.
#[derive(Clone)]
pub struct Committer {
    sender: SyncSender<Command>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

impl Committer {
    /// Starts the committer thread.
    pub fn start(db: Arc<Db>, context: IngestContext) -> Committer {
        let (sender, receiver) = sync_channel(QUEUE_LEN_MAX);
        let thread = std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || commit_loop(&db, &context, receiver))
            .expect("spawn the committer thread");
        Committer {
            sender,
            thread: Arc::new(Mutex::new(Some(thread))),
        }
    }

    /// Lets the jobs queued so far finish, then ends the thread, which lets go of the
    /// database (a server stopped in a process that opens the database next).
    pub fn stop(&self) {
        let Some(thread) = self.thread.lock().unwrap().take() else {
            return;
        };
        if self.sender.send(Command::Stop).is_ok() {
            let _ = thread.join();
        }
    }

    fn submit(&self, job: Job) -> Result<(), EndpointError> {
        match self.sender.try_send(Command::Run(job)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                Err(EndpointError::TooMany("the ingest queue is full".into()))
            }
            Err(TrySendError::Disconnected(_)) => {
                Err(EndpointError::Database("the committer stopped".into()))
            }
        }
    }

    /// Records a report whose chunks are all stored; `analysis` replaces the manifest's
    /// problem when given (re-symbolized).
    pub async fn complete(
        &self,
        manifest: Arc<ReportManifest>,
        analysis: Option<Problem>,
    ) -> Result<UploadReply, EndpointError> {
        let (answer, receiver) = oneshot::channel();
        self.submit(Job::Complete {
            manifest,
            analysis: analysis.map(Box::new),
            answer,
        })?;
        receiver
            .await
            .map_err(|_| EndpointError::Database("the committer stopped".into()))?
    }

    /// Records an incident update.
    pub async fn update(&self, update: IncidentUpdate) -> Result<UploadReply, EndpointError> {
        let (answer, receiver) = oneshot::channel();
        self.submit(Job::Update { update, answer })?;
        receiver
            .await
            .map_err(|_| EndpointError::Database("the committer stopped".into()))?
    }
}

fn commit_loop(db: &Db, context: &IngestContext, receiver: Receiver<Command>) {
    let mut cache = RowCache::default();
    while let Ok(Command::Run(first)) = receiver.recv() {
        let mut jobs = vec![first];
        let mut stop = false;
        while jobs.len() < BATCH_JOBS_MAX {
            match receiver.try_recv() {
                Ok(Command::Run(job)) => jobs.push(job),
                Ok(Command::Stop) => {
                    stop = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let mut results = Vec::with_capacity(jobs.len());
        let mut events = Vec::new();
        let outcome = run_batch(db, context, &mut cache, &jobs, &mut results, &mut events);
        Metrics::add(&context.metrics.commit_batches, 1);
        match outcome {
            Ok(()) => {
                for (job, result) in jobs.into_iter().zip(results) {
                    answer(job, result);
                }
                for event in events {
                    context.webhooks.send(event);
                }
            }
            Err(error) => {
                tracing::error!(%error, jobs = jobs.len(), "ingest transaction failed");
                for job in jobs {
                    answer(job, Err(EndpointError::Database(error.to_string())));
                }
            }
        }
        if stop {
            return;
        }
    }
}

fn answer(job: Job, result: Result<UploadReply, EndpointError>) {
    let answer = match job {
        Job::Complete { answer, .. } | Job::Update { answer, .. } => answer,
    };
    let _ = answer.send(result);
}

/// True for errors that mean the transaction itself is broken.
fn is_fatal(error: &EndpointError) -> bool {
    matches!(
        error,
        EndpointError::Database(_) | EndpointError::Corrupt { .. } | EndpointError::Io { .. }
    )
}

/// Problem rows as the last commit left them, kept by the committer between batches: only
/// the committer writes problem rows, so a hot problem's row is decoded once, not once per
/// batch. Emptied when a batch fails (its rows may hold what was not committed).
#[derive(Default)]
struct RowCache {
    problems: HashMap<String, ProblemRow>,
}

/// Problem rows the committer keeps between batches.
pub const PROBLEM_ROWS_CACHED_MAX: usize = 4096;

fn run_batch(
    db: &Db,
    context: &IngestContext,
    cache: &mut RowCache,
    jobs: &[Job],
    results: &mut Vec<Result<UploadReply, EndpointError>>,
    events: &mut Vec<Event>,
) -> Result<(), EndpointError> {
    // Every chunk whose PUT was answered before these completions arrived is staged.
    let staged = if jobs.iter().any(|job| matches!(job, Job::Complete { .. })) {
        context.blobs.stage()?
    } else {
        None
    };
    let result = run_batch_rows(db, context, cache, staged.as_ref(), jobs, results, events);
    let rows = match result {
        Ok(rows) => rows,
        Err(error) => {
            cache.problems.clear();
            return Err(error);
        }
    };
    if let (crate::blobs::Blobs::Local(packs), Some(staged)) = (&context.blobs, staged) {
        packs.committed(staged);
    }
    if cache.problems.len() + rows.len() > PROBLEM_ROWS_CACHED_MAX {
        cache.problems.clear();
    }
    cache.problems.extend(rows);
    Ok(())
}

/// The batch's transaction; returns the problem rows it committed.
fn run_batch_rows(
    db: &Db,
    context: &IngestContext,
    cache: &mut RowCache,
    staged: Option<&crate::packs::Staged>,
    jobs: &[Job],
    results: &mut Vec<Result<UploadReply, EndpointError>>,
    events: &mut Vec<Event>,
) -> Result<HashMap<String, ProblemRow>, EndpointError> {
    let txn = db.begin_write()?;
    let rows;
    {
        let mut tables = Tables::open(&txn, &mut cache.problems)?;
        let now = now_ms();
        for job in jobs {
            let mut job_events = Vec::new();
            let result = match job {
                Job::Complete {
                    manifest, analysis, ..
                } => complete(
                    &mut tables,
                    context,
                    manifest,
                    analysis.as_deref().unwrap_or(&manifest.problem),
                    now,
                    &mut job_events,
                ),
                Job::Update { update, .. } => {
                    update_incidents(&mut tables, context, update, now, &mut job_events)
                }
            };
            if let Err(error) = &result
                && is_fatal(error)
            {
                return Err(EndpointError::Database(error.to_string()));
            }
            events.extend(job_events);
            results.push(result);
        }
        rows = tables.flush()?;
        if let Some(staged) = staged {
            crate::packs::Packs::record(&txn, staged)?;
        }
    }
    txn.commit()?;
    Ok(rows)
}

struct Tables<'txn> {
    meta: Table<'txn, &'static str, u64>,
    terms: Table<'txn, &'static str, u64>,
    reports: Table<'txn, &'static str, &'static [u8]>,
    problems: Table<'txn, &'static str, &'static [u8]>,
    analyses: Table<'txn, &'static str, &'static [u8]>,
    incidents: Table<'txn, (&'static str, &'static str), &'static str>,
    bugs: Table<'txn, u64, &'static [u8]>,
    comments: Table<'txn, (u64, u64), &'static [u8]>,
    /// Rows read or changed in this batch, written back once at its end: a hot problem's
    /// row (and its bug) is decoded and encoded once per batch, not once per report.
    problem_rows: HashMap<String, ProblemRow>,
    bug_rows: HashMap<u64, BugRow>,
    /// Rows committed by earlier batches ([`RowCache`]); a row taken from here is put in
    /// `problem_rows`.
    committed_rows: &'txn mut HashMap<String, ProblemRow>,
}

impl<'txn> Tables<'txn> {
    fn open(
        txn: &'txn WriteTransaction,
        committed_rows: &'txn mut HashMap<String, ProblemRow>,
    ) -> Result<Tables<'txn>, EndpointError> {
        Ok(Tables {
            meta: txn.open_table(META)?,
            terms: txn.open_table(TERMS)?,
            reports: txn.open_table(REPORTS)?,
            problems: txn.open_table(PROBLEMS)?,
            analyses: txn.open_table(ANALYSES)?,
            incidents: txn.open_table(INCIDENTS)?,
            bugs: txn.open_table(BUGS)?,
            comments: txn.open_table(COMMENTS)?,
            problem_rows: HashMap::new(),
            bug_rows: HashMap::new(),
            committed_rows,
        })
    }

    /// Writes the rows this batch changed; returns its problem rows.
    fn flush(&mut self) -> Result<HashMap<String, ProblemRow>, EndpointError> {
        let rows = std::mem::take(&mut self.problem_rows);
        for (id, row) in &rows {
            encode_with(row, |bytes| Ok(self.problems.insert(id.as_str(), bytes)?))?;
        }
        for (_, bug) in std::mem::take(&mut self.bug_rows) {
            save_bug(&mut self.bugs, &mut self.comments, bug)?;
        }
        Ok(rows)
    }

    /// A problem's row, taken out of the batch's cache (put it back with `put_problem`).
    fn take_problem(&mut self, id: &str) -> Result<Option<ProblemRow>, EndpointError> {
        if let Some(row) = self.problem_rows.remove(id) {
            return Ok(Some(row));
        }
        if let Some(row) = self.committed_rows.remove(id) {
            return Ok(Some(row));
        }
        self.problem(id)
    }

    /// A bug, taken out of the batch's cache (put it back with `put_bug`).
    fn take_bug(&mut self, id: Option<u64>) -> Result<Option<BugRow>, EndpointError> {
        if let Some(bug) = id.and_then(|id| self.bug_rows.remove(&id)) {
            return Ok(Some(bug));
        }
        self.bug(id)
    }

    fn put_problem(&mut self, row: ProblemRow) {
        self.problem_rows.insert(row.id.clone(), row);
    }

    fn put_bug(&mut self, bug: BugRow) {
        self.bug_rows.insert(bug.id, bug);
    }

    /// Fencing: refuses a term below the cluster's highest; returns whether it is higher.
    fn check_term(&self, cluster: &str, term: u64) -> Result<(), EndpointError> {
        let highest = self
            .terms
            .get(cluster)?
            .map(|value| value.value())
            .unwrap_or(0);
        if term < highest {
            return Err(EndpointError::StaleTerm {
                cluster: cluster.to_string(),
                term,
                highest,
            });
        }
        Ok(())
    }

    fn raise_term(&mut self, cluster: &str, term: u64) -> Result<(), EndpointError> {
        let highest = self
            .terms
            .get(cluster)?
            .map(|value| value.value())
            .unwrap_or(0);
        if term > highest {
            self.terms.insert(cluster, term)?;
        }
        Ok(())
    }

    fn report(&self, report_id: &str) -> Result<Option<ReportRow>, EndpointError> {
        self.reports
            .get(report_id)?
            .map(|value| decode(&format!("report {report_id}"), value.value()))
            .transpose()
    }

    fn problem(&self, id: &str) -> Result<Option<ProblemRow>, EndpointError> {
        if let Some(row) = self
            .problem_rows
            .get(id)
            .or_else(|| self.committed_rows.get(id))
        {
            return Ok(Some(row.clone()));
        }
        self.problems
            .get(id)?
            .map(|value| decode(&format!("problem {id}"), value.value()))
            .transpose()
    }

    fn bug(&self, id: Option<u64>) -> Result<Option<BugRow>, EndpointError> {
        let Some(id) = id else { return Ok(None) };
        if let Some(bug) = self.bug_rows.get(&id) {
            return Ok(Some(bug.clone()));
        }
        self.bugs
            .get(id)?
            .map(|value| decode(&format!("bug {id}"), value.value()))
            .transpose()
    }

    fn next_bug_id(&mut self) -> Result<u64, EndpointError> {
        let next = self
            .meta
            .get(META_NEXT_BUG)?
            .map(|value| value.value())
            .unwrap_or(1);
        self.meta.insert(META_NEXT_BUG, next + 1)?;
        Ok(next)
    }
}

fn reply(
    context: &IngestContext,
    problem_id: &str,
    known: bool,
    bug: Option<&BugRow>,
) -> UploadReply {
    UploadReply {
        problem_id: problem_id.to_string(),
        known,
        bug: bug.map(|bug| bug.to_ref(&context.public_url)),
        workaround: bug.and_then(|bug| bug.workaround.clone()),
        missing_chunks: Vec::new(),
    }
}

/// The version of an incident: its own, else the problem's package or kernel version.
fn incident_version(incident: &Incident, problem: Option<&Problem>) -> Option<String> {
    if incident.version.is_some() {
        return incident.version.clone();
    }
    let problem = problem?;
    if let Some(package) = &problem.package
        && let Some(version) = package.split_whitespace().nth(1)
    {
        return Some(version.to_string());
    }
    problem.version.clone()
}

/// Adds the incidents not yet recorded; returns the new ones.
fn add_incidents(
    tables: &mut Tables,
    row: &mut ProblemRow,
    cluster: &str,
    incidents: &[Incident],
    analysis: Option<&Problem>,
) -> Result<Vec<IncidentRow>, EndpointError> {
    let mut added = Vec::new();
    for incident in incidents {
        let key = (cluster, incident.report_id.as_str());
        if tables.incidents.get(key)?.is_some() {
            continue;
        }
        tables.incidents.insert(key, row.id.as_str())?;
        let version = incident_version(incident, analysis);
        row.count += 1;
        insert_bounded(&mut row.nodes, &incident.node);
        insert_bounded(&mut row.clusters, cluster);
        if let Some(version) = &version {
            insert_bounded(&mut row.versions, version);
        }
        for (key, value) in &incident.labels {
            insert_bounded(&mut row.labels, &format!("{key}={value}"));
        }
        if row.count == 1 {
            row.first_seen = incident.time_ms;
            row.last_seen = incident.time_ms;
        }
        row.first_seen = row.first_seen.min(incident.time_ms);
        row.last_seen = row.last_seen.max(incident.time_ms);
        *row.hourly.entry(incident.time_ms / 3_600_000).or_insert(0) += 1;
        while row.hourly.len() > HOURS_PER_PROBLEM_MAX {
            row.hourly.pop_first();
        }
        let incident_row = IncidentRow {
            cluster: cluster.to_string(),
            node: incident.node.clone(),
            time_ms: incident.time_ms,
            report_id: incident.report_id.clone(),
            version,
            labels: incident.labels.clone(),
        };
        row.recent.push_back(incident_row.clone());
        while row.recent.len() > RECENT_INCIDENTS_MAX {
            row.recent.pop_front();
        }
        added.push(incident_row);
    }
    Ok(added)
}

fn describe_incidents(added: &[IncidentRow]) -> String {
    let nodes: BTreeSet<&str> = added
        .iter()
        .map(|incident| incident.node.as_str())
        .collect();
    let clusters: BTreeSet<&str> = added
        .iter()
        .map(|incident| incident.cluster.as_str())
        .collect();
    let versions: BTreeSet<&str> = added
        .iter()
        .filter_map(|incident| incident.version.as_deref())
        .collect();
    let first = added
        .iter()
        .map(|incident| incident.time_ms)
        .min()
        .unwrap_or(0);
    let last = added
        .iter()
        .map(|incident| incident.time_ms)
        .max()
        .unwrap_or(0);
    let join = |set: &BTreeSet<&str>| {
        if set.is_empty() {
            "-".to_string()
        } else {
            set.iter().copied().collect::<Vec<_>>().join(", ")
        }
    };
    format!(
        "{} incident(s); nodes: {}; clusters: {}; versions: {}; time: {} .. {}",
        added.len(),
        join(&nodes),
        join(&clusters),
        join(&versions),
        crate::dashboard::format_time_ms(first),
        crate::dashboard::format_time_ms(last),
    )
}

fn event(
    context: &IngestContext,
    kind: &'static str,
    bug: &BugRow,
    row: &ProblemRow,
    text: String,
    now: u64,
) -> Event {
    Event {
        event: kind,
        bug_id: bug.id,
        bug_url: bug.to_ref(&context.public_url).url,
        status: bug.status.clone(),
        problem_id: row.id.clone(),
        signature: row.signature.clone(),
        kind: row.kind.to_string(),
        reason: row.reason.clone(),
        text,
        time_ms: now,
    }
}

/// What a known problem's bug does with new incidents: a comment, and a reopening as a
/// regression when the bug was closed and an incident runs a newer version than the
/// newest seen when it was closed.
fn comment_on_bug(
    context: &IngestContext,
    bug: &mut BugRow,
    row: &ProblemRow,
    added: &[IncidentRow],
    now: u64,
    events: &mut Vec<Event>,
) {
    let text = describe_incidents(added);
    bug.comment(now, "endpoint", text.clone());
    events.push(event(context, "comment", bug, row, text, now));
    if !bug.is_closed() {
        return;
    }
    let Some(closed_max) = bug.closed_version_max.clone() else {
        return;
    };
    let newer = added
        .iter()
        .filter_map(|incident| incident.version.as_ref())
        .filter(|version| crate::version::compare(version, &closed_max).is_gt())
        .max_by(|a, b| crate::version::compare(a, b));
    if let Some(version) = newer {
        let text = format!(
            "regression: seen again in version {version}, newer than {closed_max} (the newest \
             seen when it was marked {}); reopened",
            bug.status
        );
        bug.status = "open".into();
        bug.regression = true;
        bug.closed_version_max = None;
        bug.comment(now, "endpoint", text.clone());
        Metrics::add(&context.metrics.bugs_reopened, 1);
        events.push(event(context, "regression", bug, row, text, now));
    }
}

fn complete(
    tables: &mut Tables,
    context: &IngestContext,
    manifest: &ReportManifest,
    analysis: &Problem,
    now: u64,
    events: &mut Vec<Event>,
) -> Result<UploadReply, EndpointError> {
    let cluster = manifest.cluster_id.as_str();
    tables.check_term(cluster, manifest.term)?;
    if let Some(stored) = tables.report(&manifest.report_id)? {
        // A retry or a second aggregator: same answer, nothing more stored.
        tables.raise_term(cluster, manifest.term)?;
        let row = tables.problem(&stored.problem_id)?;
        let bug = tables.bug(row.as_ref().and_then(|row| row.bug))?;
        Metrics::add(&context.metrics.reports_repeated, 1);
        return Ok(reply(context, &stored.problem_id, true, bug.as_ref()));
    }
    tables.raise_term(cluster, manifest.term)?;
    let problem_id = crashmesh_store::problem_id_for(&manifest.signature, &manifest.report_id);
    let existing = tables.take_problem(&problem_id)?;
    let known = existing.is_some();
    let uninteresting = crate::rules::first_match(&context.rules, analysis);
    let mut row = existing.unwrap_or_else(|| ProblemRow {
        id: problem_id.clone(),
        signature: manifest.signature.clone(),
        kind: manifest.kind,
        reason: analysis.reason.clone(),
        crash_function: analysis.crash_function().map(str::to_string),
        executable: analysis.executable.clone(),
        count: 0,
        nodes: BTreeSet::new(),
        clusters: BTreeSet::new(),
        versions: BTreeSet::new(),
        labels: BTreeSet::new(),
        first_seen: 0,
        last_seen: 0,
        interesting: true,
        uninteresting_rule: None,
        bug: None,
        reports: Vec::new(),
        hourly: Default::default(),
        recent: Default::default(),
    });
    row.interesting = uninteresting.is_none();
    row.uninteresting_rule = uninteresting;
    if row.reports.len() < REPORTS_PER_PROBLEM_MAX {
        row.reports.push(manifest.report_id.clone());
    }
    let added = add_incidents(
        tables,
        &mut row,
        cluster,
        &manifest.incidents,
        Some(analysis),
    )?;
    Metrics::add(&context.metrics.incidents_recorded, added.len() as u64);
    let mut bug = tables.take_bug(row.bug)?;
    if !known {
        tables
            .analyses
            .insert(problem_id.as_str(), encode(analysis)?.as_slice())?;
        Metrics::add(&context.metrics.problems_new, 1);
    }
    match &mut bug {
        None if row.interesting => {
            let id = tables.next_bug_id()?;
            let text = format!("opened: {}", describe_incidents(&added));
            let mut new_bug = BugRow {
                id,
                problem_id: problem_id.clone(),
                title: row.reason.clone(),
                status: "open".into(),
                workaround: None,
                regression: false,
                created_ms: now,
                updated_ms: now,
                closed_version_max: None,
                comments_total: 0,
                unsaved_comments: Vec::new(),
            };
            new_bug.comment(now, "endpoint", text.clone());
            row.bug = Some(id);
            Metrics::add(&context.metrics.bugs_opened, 1);
            events.push(event(context, "new_bug", &new_bug, &row, text, now));
            bug = Some(new_bug);
        }
        None => {}
        Some(bug) if !added.is_empty() => {
            comment_on_bug(context, bug, &row, &added, now, events);
        }
        Some(_) => {}
    }
    let reply = reply(context, &problem_id, known, bug.as_ref());
    if let Some(bug) = bug {
        tables.put_bug(bug);
    }
    tables.put_problem(row);
    ReportRow::with_encoded_parts(manifest, &problem_id, now, |bytes| {
        Ok(tables.reports.insert(manifest.report_id.as_str(), bytes)?)
    })?;
    Metrics::add(&context.metrics.reports_completed, 1);
    Ok(reply)
}

fn update_incidents(
    tables: &mut Tables,
    context: &IngestContext,
    update: &IncidentUpdate,
    now: u64,
    events: &mut Vec<Event>,
) -> Result<UploadReply, EndpointError> {
    let cluster = update.cluster_id.as_str();
    tables.check_term(cluster, update.term)?;
    let Some(report) = tables.report(&update.report_id)? else {
        return Err(EndpointError::NotFound(format!(
            "report {} (upload it before its incident updates)",
            update.report_id
        )));
    };
    if report.manifest.signature != update.signature {
        return Err(EndpointError::Conflict(format!(
            "report {} has another signature",
            update.report_id
        )));
    }
    let Some(mut row) = tables.take_problem(&report.problem_id)? else {
        return Err(EndpointError::Corrupt {
            what: format!("report {}", update.report_id),
            detail: format!("its problem {} is missing", report.problem_id),
        });
    };
    tables.raise_term(cluster, update.term)?;
    let analysis: Option<Problem> = tables
        .analyses
        .get(row.id.as_str())?
        .map(|value| decode("analysis", value.value()))
        .transpose()?;
    let added = add_incidents(
        tables,
        &mut row,
        cluster,
        &update.incidents,
        analysis.as_ref(),
    )?;
    Metrics::add(&context.metrics.incidents_recorded, added.len() as u64);
    let mut bug = tables.take_bug(row.bug)?;
    if let Some(bug) = &mut bug
        && !added.is_empty()
    {
        comment_on_bug(context, bug, &row, &added, now, events);
    }
    let reply = reply(context, &row.id, true, bug.as_ref());
    if let Some(bug) = bug {
        tables.put_bug(bug);
    }
    tables.put_problem(row);
    Ok(reply)
}
